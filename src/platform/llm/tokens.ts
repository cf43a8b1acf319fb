import { decode, encode } from 'gpt-tokenizer/encoding/o200k_base';
import type { ChatMessageInput, ResponseFormat, ToolCall, ToolOptions } from './types';

/**
 * Token counting with a real tokenizer (o200k_base, the encoding of current OpenAI models). Other
 * providers' tokenizers differ by a few percent; the count sizes holds and charges replies whose
 * provider reports no usage, so it only has to be close and deterministic.
 */

/** OpenAI's cookbook: every message costs its content plus ~3 tokens of framing… */
export const TOKENS_PER_MESSAGE = 3;
/** …and every reply is primed with `<|start|>assistant<|message|>`. */
export const REPLY_PRIMING_TOKENS = 3;
/** An image part, counted flat: the price of a low-detail image at OpenAI. */
export const TOKENS_PER_IMAGE = 85;

// User text is data: `<|endoftext|>` in a message is counted as the text it is, never refused.
const asText = { disallowedSpecial: new Set<string>() };

/**
 * The longest run of spaces, or of anything but spaces, that is encoded at once. The encoder's time
 * grows with the square of a run's length (200,000 letters in a row took 24 s of the one thread,
 * 200,000 spaces 17 s, and as many Chinese characters overflowed its stack), and a prompt is counted
 * before anything else is checked. Longer runs are encoded in pieces of this length: their count may
 * differ by a token per piece, which only such runs (a long URL, base64, a stress test) ever see.
 */
export const MAX_RUN = 500;
// Each tried only where a run starts: tried at every place inside one, a run of 500 costs 500²/2.
const LONG_RUNS = new RegExp(`(?<!\\S)\\S{${MAX_RUN + 1},}|(?<!\\s)\\s{${MAX_RUN + 1},}`, 'gu');

/** Token ids of `text`. */
export function encodeText(text: string): number[] {
  const runs = [...text.matchAll(LONG_RUNS)];
  if (runs.length === 0) return encode(text, asText);
  const ids: number[] = [];
  const add = (piece: string) => {
    if (piece !== '') for (const id of encode(piece, asText)) ids.push(id);
  };
  let at = 0;
  for (const run of runs) {
    add(text.slice(at, run.index));
    // By code points, so no surrogate pair is cut in two.
    const chars = Array.from(run[0]);
    for (let i = 0; i < chars.length; i += MAX_RUN) add(chars.slice(i, i + MAX_RUN).join(''));
    at = run.index + run[0].length;
  }
  add(text.slice(at));
  return ids;
}

/** Tokens of a piece of text. */
export function countTextTokens(text: string): number {
  return text === '' ? 0 : encodeText(text).length;
}

/**
 * Tokens of a chat prompt, framing included, as the provider will bill it (approximately): the
 * messages, the calls and answers of tools in them, and the functions offered, counted as their
 * JSON (providers render them in a syntax of their own, of about that size; told to call none, the
 * model is still shown them).
 */
export function countPromptTokens(messages: readonly ChatMessageInput[], tools?: ToolOptions): number {
  let total = REPLY_PRIMING_TOKENS;
  for (const m of messages) total += countMessageTokens(m);
  return total + countToolsTokens(tools);
}

/** Tokens of the functions offered to a model, and of the choice among them: a prompt's part. */
export function countToolsTokens(tools: ToolOptions | undefined): number {
  if (!tools || tools.tools.length === 0) return 0;
  const choice = tools.choice === undefined ? 0 : countTextTokens(JSON.stringify(tools.choice));
  return countTextTokens(JSON.stringify(tools.tools)) + choice;
}

/** Tokens of one message of a prompt, its framing included: a prompt's count is the sum of its messages'. */
export function countMessageTokens(m: ChatMessageInput): number {
  let total = TOKENS_PER_MESSAGE + countTextTokens(m.role);
  if (m.name !== undefined) total += countTextTokens(m.name);
  if (m.tool_calls) total += countToolCallTokens(m.tool_calls);
  if (m.tool_call_id !== undefined) total += countTextTokens(m.tool_call_id);
  if (m.reasoning_content !== undefined) total += countTextTokens(m.reasoning_content);
  if (m.content === null) return total;
  if (typeof m.content === 'string') return total + countTextTokens(m.content);
  for (const part of m.content) total += part.type === 'text' ? countTextTokens(part.text) : TOKENS_PER_IMAGE;
  return total;
}

/** Tokens of the instructions a JSON reply adds to the prompt: its schema, counted as JSON. */
export function countResponseFormatTokens(format: ResponseFormat | undefined): number {
  return format ? countTextTokens(JSON.stringify(format)) : 0;
}

/** Tokens of the calls a model made: each call's name and arguments, and its framing. */
export function countToolCallTokens(calls: readonly Pick<ToolCall, 'function'>[]): number {
  let total = 0;
  for (const c of calls) {
    total += TOKENS_PER_MESSAGE + countTextTokens(c.function.name) + countTextTokens(c.function.arguments);
  }
  return total;
}

/**
 * The text of each token of `text`, in order: joined, they give `text` back. A token that ends
 * inside a multi-byte character has `''`, and the next one carries the whole character.
 *
 * gpt-tokenizer decodes through one shared streaming TextDecoder, so a partial character left by one
 * decode would leak into the next. Decoding the whole text in one synchronous pass (nothing can
 * interleave) and ending on a character boundary leaves that decoder clean.
 */
export function tokenPieces(text: string): string[] {
  return encodeText(text).map((token) => decode([token]));
}
