import type { Command, Decider } from '../handler';
import {
  UserContentSchema,
  type ChatEvent,
  type ChatMessage,
  type ContentPart,
  type MessageStatus,
} from '../../events/chats';
import type { PresetParameters, TemplateMessage } from '../../events/presets';
import { BadRequest, NotFound } from '../../platform/errors';

export class ChatNotFound extends NotFound {}
export class InvalidMessage extends BadRequest {}
export class InvalidChat extends BadRequest {}

export const MAX_TITLE_LENGTH = 200;

export interface Chat {
  chatId: string;
  ownerId: string;
  presetId: string;
  title: string;
  model: string;
  parameters: PresetParameters;
  startedAt: string;
  updatedAt: string;
}

/** One chat with its whole history (hidden messages too): what a reply is generated from. */
export interface ChatState {
  chat: Chat | null;
  deleted: boolean;
  messages: ChatMessage[];
  /** How many of `messages` the chat started with: its preset's, kept when a long history is cut. */
  opening: number;
  messageIds: Set<string>;
  /** Tasks whose reply is in the chat: a reply is appended once. */
  taskIds: Set<string>;
}

export const initialChat = (): ChatState => ({
  chat: null,
  deleted: false,
  messages: [],
  opening: 0,
  messageIds: new Set(),
  taskIds: new Set(),
});

/** What a chat copies from its preset when it starts. */
export interface PresetSnapshot {
  presetId: string;
  name: string;
  model: string;
  parameters: PresetParameters;
  messages: TemplateMessage[];
}

export type ChatCommand =
  | Command<
      'StartChat',
      {
        chatId: string;
        ownerId: string;
        title: string | null;
        preset: PresetSnapshot;
        /** One id per preset message, in order. */
        messageIds: string[];
      }
    >
  | Command<'RenameChat', { chatId: string; userId: string; title: string }>
  | Command<'DeleteChat', { chatId: string; userId: string }>
  | Command<
      'SendMessage',
      { chatId: string; userId: string; messageId: string; content: ContentPart[]; visible: boolean }
    >
  | Command<
      'AppendAssistantMessage',
      {
        chatId: string;
        userId: string;
        messageId: string;
        taskId: string;
        text: string;
        status: MessageStatus;
      }
    >;

/** The chat's owner sees it; anyone else is told it does not exist. */
export function chatOwnedBy(s: ChatState, userId: string): s is ChatState & { chat: Chat } {
  return s.chat !== null && !s.deleted && s.chat.ownerId === userId;
}

function validTitle(title: string): string {
  const trimmed = title.trim();
  if (trimmed.length < 1 || trimmed.length > MAX_TITLE_LENGTH) {
    throw new InvalidChat(`title must be 1–${MAX_TITLE_LENGTH} characters.`);
  }
  return trimmed;
}

function validContent(content: unknown): ContentPart[] {
  const parsed = UserContentSchema.safeParse(content);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  const where = ['content', ...(issue?.path ?? [])].map(String).join('.');
  throw new InvalidMessage(`${where}: ${issue?.message ?? 'invalid'}`);
}

/**
 * A chat's rules. Every command but StartChat names its user, and a chat that is missing, deleted
 * or someone else's is the same 404. Sends are idempotent on the message id and replies on the
 * task id, so a retried request or a re-run process step appends once.
 */
export function decideChat(cmd: ChatCommand, s: ChatState): ChatEvent[] {
  const now = cmd.metadata.now.toISOString();
  switch (cmd.type) {
    case 'StartChat': {
      const { chatId, ownerId, preset, messageIds } = cmd.data;
      if (s.chat) return []; // the same chat again (a retried request): idempotent
      if (messageIds.length < preset.messages.length) {
        throw new Error('StartChat needs one message id per preset message');
      }
      const title = validTitle(cmd.data.title ?? preset.name);
      const messages = preset.messages.map((m, seq): ChatMessage => ({
        messageId: messageIds[seq]!,
        seq,
        role: m.role,
        content: [{ type: 'text', text: m.content }],
        // A system prompt steers the model; it is not part of the conversation the user sees.
        visible: m.role !== 'system',
        taskId: null,
        status: m.role === 'assistant' ? 'complete' : null,
        sentAt: now,
      }));
      return [
        {
          type: 'ChatStarted',
          data: {
            chatId,
            ownerId,
            presetId: preset.presetId,
            title,
            model: preset.model,
            parameters: preset.parameters,
            messages,
            startedAt: now,
          },
        },
      ];
    }
    case 'RenameChat': {
      const { chatId, userId } = cmd.data;
      if (!chatOwnedBy(s, userId)) throw new ChatNotFound(`No chat ${chatId}.`);
      const title = validTitle(cmd.data.title);
      if (title === s.chat.title) return [];
      return [{ type: 'ChatRenamed', data: { chatId, title, renamedAt: now } }];
    }
    case 'DeleteChat': {
      const { chatId, userId } = cmd.data;
      if (!chatOwnedBy(s, userId)) throw new ChatNotFound(`No chat ${chatId}.`);
      return [{ type: 'ChatDeleted', data: { chatId, deletedBy: userId, deletedAt: now } }];
    }
    case 'SendMessage': {
      const { chatId, userId, messageId, visible } = cmd.data;
      if (!chatOwnedBy(s, userId)) throw new ChatNotFound(`No chat ${chatId}.`);
      if (s.messageIds.has(messageId)) return [];
      const content = validContent(cmd.data.content);
      return [
        {
          type: 'MessageSent',
          data: {
            chatId,
            messageId,
            seq: s.messages.length,
            role: 'user',
            content,
            visible,
            taskId: null,
            status: null,
            sentAt: now,
          },
        },
      ];
    }
    case 'AppendAssistantMessage': {
      const { chatId, userId, messageId, taskId, text, status } = cmd.data;
      if (s.taskIds.has(taskId) || s.messageIds.has(messageId)) return [];
      // Deleted while the reply was generated: there is nowhere to put it, and nothing to retry.
      if (s.deleted && s.chat?.ownerId === userId) return [];
      if (!chatOwnedBy(s, userId)) throw new ChatNotFound(`No chat ${chatId}.`);
      return [
        {
          type: 'MessageSent',
          data: {
            chatId,
            messageId,
            seq: s.messages.length,
            role: 'assistant',
            content: [{ type: 'text', text }],
            visible: true,
            taskId,
            status,
            sentAt: now,
          },
        },
      ];
    }
  }
  const _exhaustive: never = cmd;
  return _exhaustive;
}

function addMessage(s: ChatState, m: ChatMessage): void {
  s.messages.push(m);
  s.messageIds.add(m.messageId);
  if (m.taskId) s.taskIds.add(m.taskId);
}

/** Folds one event into the state (in place: the handler folds only stored events). */
export function evolveChat(s: ChatState, e: ChatEvent): ChatState {
  switch (e.type) {
    case 'ChatStarted': {
      const { messages, startedAt, ...chat } = e.data;
      s.chat = { ...chat, startedAt, updatedAt: startedAt };
      for (const m of messages) addMessage(s, m);
      s.opening = messages.length;
      break;
    }
    case 'ChatRenamed':
      if (s.chat) s.chat = { ...s.chat, title: e.data.title, updatedAt: e.data.renamedAt };
      break;
    case 'ChatDeleted':
      s.deleted = true;
      break;
    case 'MessageSent': {
      const { chatId: _c, ...message } = e.data;
      addMessage(s, message);
      if (s.chat) s.chat = { ...s.chat, updatedAt: e.data.sentAt };
      break;
    }
  }
  return s;
}

export const chatDecider: Decider<ChatState, ChatCommand, ChatEvent> = {
  name: 'chat',
  initialState: initialChat,
  evolve: evolveChat,
  decide: decideChat,
};
