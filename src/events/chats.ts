import { z } from 'zod';
import { MAX_TEXT_LENGTH, PresetParametersSchema } from './presets';

/**
 * Chats' events (stream `chat-{id}`): a chat started from a preset, renamed, deleted, and its
 * messages in order. Every message carries its `seq` (0-based place in the chat), so the read model
 * orders and pages by it without counting.
 */
const id = z.string().min(1).max(200);
const at = z.string().datetime({ offset: true });

export const MAX_URL_LENGTH = 2048;
export const MAX_IMAGES_PER_MESSAGE = 4;
export const MAX_PARTS_PER_MESSAGE = 16;

/** Stored parts: lenient on text length, because a model's reply may be longer than a user may send. */
export const ContentPartSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('text'), text: z.string() }),
  z.object({ type: z.literal('image'), url: z.string().max(MAX_URL_LENGTH) }),
]);
export type ContentPart = z.infer<typeof ContentPartSchema>;

function isHttpUrl(value: string): boolean {
  try {
    const url = new URL(value);
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.hostname !== '';
  } catch {
    return false;
  }
}

/**
 * What a user may send: text of 1–32k characters, images by http(s) URL only (a `javascript:` or
 * `file:` URL must never reach a client or the model), at most a few images.
 */
export const UserContentSchema = z
  .array(
    z.discriminatedUnion('type', [
      z.strictObject({ type: z.literal('text'), text: z.string().min(1).max(MAX_TEXT_LENGTH) }),
      z.strictObject({
        type: z.literal('image'),
        url: z.string().max(MAX_URL_LENGTH).refine(isHttpUrl, 'must be an absolute http or https URL'),
      }),
    ]),
  )
  .min(1)
  .max(MAX_PARTS_PER_MESSAGE)
  .refine(
    (parts) => parts.filter((p) => p.type === 'image').length <= MAX_IMAGES_PER_MESSAGE,
    `at most ${MAX_IMAGES_PER_MESSAGE} images per message`,
  )
  .meta({ id: 'MessageContent' });

export const MessageRoleSchema = z.enum(['user', 'assistant', 'system']);
export type MessageRole = z.infer<typeof MessageRoleSchema>;

/** `partial`: a reply cut short (failed or cancelled) and saved with what had arrived. */
export const MessageStatusSchema = z.enum(['complete', 'partial']);
export type MessageStatus = z.infer<typeof MessageStatusSchema>;

export const ChatMessageSchema = z.object({
  messageId: id,
  seq: z.number().int().min(0),
  role: MessageRoleSchema,
  content: z.array(ContentPartSchema),
  /** Hidden messages (a preset's system prompt) go to the model but are never listed to the user. */
  visible: z.boolean(),
  /** The task whose reply this is (assistant messages from a task), else null. */
  taskId: id.nullable(),
  /** Assistant messages: complete or partial; null for the others. */
  status: MessageStatusSchema.nullable(),
  sentAt: at,
});
export type ChatMessage = z.infer<typeof ChatMessageSchema>;

export const ChatEventSchemas = {
  ChatStarted: z.object({
    chatId: id,
    ownerId: id,
    presetId: id,
    title: z.string().min(1).max(200),
    model: z.string().min(1),
    parameters: PresetParametersSchema,
    /** The preset's messages, copied: the chat's first messages (seq 0…). */
    messages: z.array(ChatMessageSchema),
    startedAt: at,
  }),
  ChatRenamed: z.object({ chatId: id, title: z.string().min(1).max(200), renamedAt: at }),
  ChatDeleted: z.object({ chatId: id, deletedBy: id, deletedAt: at }),
  MessageSent: ChatMessageSchema.extend({ chatId: id }),
} as const;

export type ChatEventType = keyof typeof ChatEventSchemas;
export type ChatEvent = {
  [T in ChatEventType]: { type: T; data: z.infer<(typeof ChatEventSchemas)[T]> };
}[ChatEventType];

export const CHAT_EVENT_TYPES = Object.keys(ChatEventSchemas) as ChatEventType[];

export const chatStream = (chatId: string) => `chat-${chatId}`;
