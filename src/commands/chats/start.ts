import { chatStream } from '../../events/chats';
import { presetStream } from '../../events/presets';
import type { IdGenerator } from '../../platform/clock';
import type { CommandHandler, CommandMetadata } from '../handler';
import { PresetNotFound, presetDecider, presetVisibleTo } from '../presets/decider';
import { chatDecider, type Chat, type ChatState } from './decider';

export interface StartedChat {
  chat: Chat;
  state: ChatState;
  /** Global position of ChatStarted, for X-Event-Position. */
  position: bigint;
}

/**
 * Starts a chat from a preset the caller may see (public, or theirs; else 404). The preset is read
 * from its stream and copied into ChatStarted, so later changes to the preset leave the chat as it was.
 */
export async function startChat(
  commands: CommandHandler,
  ids: IdGenerator,
  input: { chatId: string; userId: string; presetId: string; title: string | null },
  metadata: CommandMetadata,
): Promise<StartedChat> {
  const { state } = await commands.read(presetDecider, presetStream(input.presetId));
  if (!presetVisibleTo(state, input.userId)) throw new PresetNotFound(`No preset ${input.presetId}.`);
  const p = state.preset;
  const started = await commands.handle(
    chatDecider,
    chatStream(input.chatId),
    {
      type: 'StartChat',
      data: {
        chatId: input.chatId,
        ownerId: input.userId,
        title: input.title,
        preset: {
          presetId: p.presetId,
          name: p.name,
          model: p.model,
          parameters: p.parameters,
          messages: p.messages,
        },
        messageIds: p.messages.map(() => ids.next()),
      },
      metadata,
    },
    { newStream: true },
  );
  const chat = started.state.chat;
  if (!chat) throw new Error('a chat was started but its state has none');
  return { chat, state: started.state, position: started.position };
}
