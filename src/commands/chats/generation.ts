import { chatStream, type ChatMessage, type MessageStatus } from '../../events/chats';
import type { PresetParameters } from '../../events/presets';
import type { CommandHandler, CommandMetadata } from '../handler';
import { ChatNotFound, chatDecider, chatOwnedBy } from './decider';

/** A chat as a model reply is generated from it: every message, hidden system ones included, in order. */
export interface ChatForGeneration {
  chatId: string;
  ownerId: string;
  presetId: string;
  title: string;
  model: string;
  parameters: PresetParameters;
  /** The command handler's cached messages themselves: never to be changed. */
  messages: readonly Readonly<ChatMessage>[];
  /** How many of `messages` open the chat (its preset's). */
  opening: number;
  /** The chat stream's revision and global position this history was read at. */
  revision: bigint;
  position: bigint;
}

/**
 * Loads a chat's whole history from its event stream (through the command handler's cached state,
 * so it is current without waiting for a projection). A chat that is missing, deleted or not the
 * user's is ChatNotFound (404).
 */
export async function loadChatForGeneration(
  commands: CommandHandler,
  chatId: string,
  userId: string,
): Promise<ChatForGeneration> {
  const { state, revision, position } = await commands.read(chatDecider, chatStream(chatId));
  if (!chatOwnedBy(state, userId)) throw new ChatNotFound(`No chat ${chatId}.`);
  const { chat } = state;
  return {
    chatId: chat.chatId,
    ownerId: chat.ownerId,
    presetId: chat.presetId,
    title: chat.title,
    model: chat.model,
    parameters: chat.parameters,
    // The messages themselves are not copied (a long chat's would be, for every reply): read only.
    // The array is, since the cached one grows as the chat's next events are folded in.
    messages: state.messages.slice(),
    opening: state.opening,
    revision,
    position,
  };
}

/**
 * Saves a task's reply as an assistant message. Idempotent on the task id (and the message id): a
 * process step run twice appends once. A chat deleted meanwhile takes nothing and answers `appended: false`.
 */
export async function appendAssistantMessage(
  commands: CommandHandler,
  input: {
    chatId: string;
    userId: string;
    messageId: string;
    taskId: string;
    text: string;
    status: MessageStatus;
  },
  metadata: CommandMetadata,
): Promise<{ appended: boolean; position: bigint }> {
  const r = await commands.handle(chatDecider, chatStream(input.chatId), {
    type: 'AppendAssistantMessage',
    data: input,
    metadata,
  });
  return { appended: r.events.length > 0, position: r.position };
}
