import { countMessageTokens, REPLY_PRIMING_TOKENS, TOKENS_PER_IMAGE } from './tokens';
import type { ChatMessageInput, ModelInfo } from './types';

/**
 * The part of a context window a fitted history leaves free beyond the reply's budget. Our count
 * is o200k's; a provider's own tokenizer may count the same text a few percent higher, and a
 * history fitted to the last token would then be refused by the provider, every time.
 */
export const CONTEXT_MARGIN = 0.05;

type WindowOf = Pick<ModelInfo, 'contextLength' | 'defaultMaxTokens' | 'maxOutputTokens' | 'imageTokens'>;

/**
 * What one image may count, unless a model's catalog entry says (`image_tokens`): GPT-4o's most at
 * high detail. It scales an image into 2048 × 2048, then its short side to 768, and counts 170 per
 * 512-pixel tile and 85: a tall screenshot is 2 × 4 tiles, 1,445 tokens. The prompt's count takes an
 * image at 85, the low-detail price, which neither a hold nor the fit to the window can trust.
 */
export const IMAGE_TOKENS_AT_MOST = 1_445;

/** A message's tokens as the prompt's count takes them, and its images. */
export interface MessageSize {
  tokens: number;
  images: number;
}

/** A prompt message's image parts. */
function imagesOf(m: ChatMessageInput): number {
  let images = 0;
  if (Array.isArray(m.content)) for (const p of m.content) if (p.type === 'image_url') images++;
  return images;
}

/** The size of a prompt's message (`countMessageTokens`, and its image parts). */
export function messageSize(m: ChatMessageInput): MessageSize {
  return { tokens: countMessageTokens(m), images: imagesOf(m) };
}

/** A prompt's image parts, in all its messages. */
export function countImages(messages: readonly ChatMessageInput[]): number {
  let images = 0;
  for (const m of messages) images += imagesOf(m);
  return images;
}

/**
 * The tokens a prompt's `images` may take beyond its count, which takes each at `TOKENS_PER_IMAGE`:
 * up to the model's `imageTokens` each. A hold covers them, as it covers the most output a reply may
 * take. Held at the low-detail price, a prompt of large pictures left the rest to be charged from
 * whatever the account had left, and forgiven beyond it. The charge still follows the provider's usage.
 */
export function imageAllowance(images: number, imageTokens: number): number {
  return images * beyondCount(imageTokens);
}

const beyondCount = (imageTokens: number) => Math.max(0, imageTokens - TOKENS_PER_IMAGE);

/** A chat's history as it goes to the model. */
export interface FittedHistory<M = ChatMessageInput> {
  messages: M[];
  /** Messages of the conversation left out, the oldest ones, so that the rest fits. */
  omitted: number;
  /** Tokens of the prompt that goes (`countPromptTokens` of `messages`). */
  promptTokens: number;
  /** Its image parts (`countImages` of `messages`). */
  images: number;
}

/**
 * A chat's history cut to the model's context window, as chat apps cut it, so that a long chat
 * goes on being answered instead of being refused for good once it outgrows the window.
 *
 * The prompt must leave room for the reply's output budget (what the chat asks for, else the
 * model's default, at most its maximum) and for `CONTEXT_MARGIN`, each image taken at the
 * model's `imageTokens`. While it does not, the oldest messages of the conversation are left out.
 * The chat's opening messages (its preset's instructions and examples) and its last message are
 * always kept, and a kept conversation that lost messages starts on a user's message (an answer
 * whose question was left out goes with it). Should the opening and the last message alone leave
 * too little room, they go as they are: the output budget then shrinks to what is left, or the
 * prompt is refused as too long.
 *
 * Messages are sized from the newest back, and none older than the first that does not fit, so a
 * long chat costs a count of about one context window, not of its whole history. `sizeOf` sizes
 * the message at an index (`messageSize`, or a cache of its sizes); each is asked for once at
 * most. Given it, the messages may be of any shape (a chat's own, turned into a prompt's once
 * fitted, so that only those sent are).
 */
export function fitHistory(
  messages: readonly ChatMessageInput[],
  opening: number,
  model: WindowOf,
  requestedMaxTokens?: number,
): FittedHistory;
export function fitHistory<M extends { role: string }>(
  messages: readonly M[],
  opening: number,
  model: WindowOf,
  requestedMaxTokens: number | undefined,
  sizeOf: (index: number) => MessageSize,
): FittedHistory<M>;
export function fitHistory<M extends { role: string }>(
  messages: readonly M[],
  opening: number,
  model: WindowOf,
  requestedMaxTokens?: number,
  // Without `sizeOf`, the first overload says the messages are a prompt's.
  sizeOf: (index: number) => MessageSize = (i) => messageSize(messages[i] as unknown as ChatMessageInput),
): FittedHistory<M> {
  const output = Math.min(requestedMaxTokens ?? model.defaultMaxTokens, model.maxOutputTokens);
  const limit = model.contextLength - output - Math.ceil(model.contextLength * CONTEXT_MARGIN);
  const last = messages.length - 1;
  const head = Math.max(0, Math.min(opening, last));
  // `tokens` is the prompt's count; `taken` is what the fit takes, images at their most.
  let tokens = REPLY_PRIMING_TOKENS;
  let taken = REPLY_PRIMING_TOKENS;
  let images = 0;
  const sizes = new Map<number, MessageSize>();
  const add = (i: number, size = sizeOf(i)) => {
    sizes.set(i, size);
    tokens += size.tokens;
    images += size.images;
    taken += atMost(size, model.imageTokens);
  };
  for (let i = 0; i < head; i++) add(i);
  if (last < 0) return { messages: [], omitted: 0, promptTokens: tokens, images };
  add(last);
  let start = last;
  for (; start > head; start--) {
    const before = sizeOf(start - 1);
    if (taken + atMost(before, model.imageTokens) > limit) break;
    add(start - 1, before);
  }
  if (start === head) return { messages: [...messages], omitted: 0, promptTokens: tokens, images };
  for (; start < last && messages[start]!.role !== 'user'; start++) {
    const dropped = sizes.get(start)!;
    tokens -= dropped.tokens;
    images -= dropped.images;
  }
  return {
    messages: [...messages.slice(0, head), ...messages.slice(start)],
    omitted: start - head,
    promptTokens: tokens,
    images,
  };
}

const atMost = (size: MessageSize, imageTokens: number) =>
  size.tokens + size.images * beyondCount(imageTokens);
