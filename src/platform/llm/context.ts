import { countMessageTokens, REPLY_PRIMING_TOKENS } from './tokens';
import type { ChatMessageInput, ModelInfo } from './types';

/**
 * The part of a context window a fitted history leaves free beyond the reply's budget. Our count
 * is o200k's; a provider's own tokenizer may count the same text a few percent higher, and a
 * history fitted to the last token would then be refused by the provider, every time.
 */
export const CONTEXT_MARGIN = 0.05;

type WindowOf = Pick<ModelInfo, 'contextLength' | 'defaultMaxTokens' | 'maxOutputTokens'>;

/** A chat's history as it goes to the model. */
export interface FittedHistory<M = ChatMessageInput> {
  messages: M[];
  /** Messages of the conversation left out, the oldest ones, so that the rest fits. */
  omitted: number;
  /** Tokens of the prompt that goes (`countPromptTokens` of `messages`). */
  promptTokens: number;
}

/**
 * A chat's history cut to the model's context window, as chat apps cut it, so that a long chat
 * goes on being answered instead of being refused for good once it outgrows the window.
 *
 * The prompt must leave room for the reply's output budget (what the chat asks for, else the
 * model's default, at most its maximum) and for `CONTEXT_MARGIN`. While it does not, the oldest
 * messages of the conversation are left out. The chat's opening messages (its preset's
 * instructions and examples) and its last message are always kept, and a kept conversation that
 * lost messages starts on a user's message (an answer whose question was left out goes with it).
 * Should the opening and the last message alone leave too little room, they go as they are: the
 * output budget then shrinks to what is left, or the prompt is refused as too long.
 *
 * Messages are counted from the newest back, and none older than the first that does not fit, so
 * a long chat costs a count of about one context window, not of its whole history. `tokensOf`
 * counts the message at an index (`countMessageTokens`, or a cache of its counts); each is asked
 * for once at most. Given it, the messages may be of any shape (a chat's own, turned into a
 * prompt's once fitted, so that only those sent are).
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
  tokensOf: (index: number) => number,
): FittedHistory<M>;
export function fitHistory<M extends { role: string }>(
  messages: readonly M[],
  opening: number,
  model: WindowOf,
  requestedMaxTokens?: number,
  // Without `tokensOf`, the first overload says the messages are a prompt's.
  tokensOf: (index: number) => number = (i) => countMessageTokens(messages[i] as unknown as ChatMessageInput),
): FittedHistory<M> {
  const output = Math.min(requestedMaxTokens ?? model.defaultMaxTokens, model.maxOutputTokens);
  const limit = model.contextLength - output - Math.ceil(model.contextLength * CONTEXT_MARGIN);
  const last = messages.length - 1;
  const head = Math.max(0, Math.min(opening, last));
  let tokens = REPLY_PRIMING_TOKENS;
  for (let i = 0; i < head; i++) tokens += tokensOf(i);
  if (last < 0) return { messages: [], omitted: 0, promptTokens: tokens };
  const counted = new Map<number, number>([[last, tokensOf(last)]]);
  tokens += counted.get(last)!;
  let start = last;
  for (; start > head; start--) {
    const before = tokensOf(start - 1);
    if (tokens + before > limit) break;
    counted.set(start - 1, before);
    tokens += before;
  }
  if (start === head) return { messages: [...messages], omitted: 0, promptTokens: tokens };
  while (start < last && messages[start]!.role !== 'user') tokens -= counted.get(start++)!;
  return {
    messages: [...messages.slice(0, head), ...messages.slice(start)],
    omitted: start - head,
    promptTokens: tokens,
  };
}
