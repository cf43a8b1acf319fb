import { setTimeout as sleep } from 'node:timers/promises';
import { countPromptTokens, tokenPieces } from './tokens';
import {
  LlmAborted,
  type ChatMessageInput,
  type LlmProvider,
  type StreamItem,
  type StreamRequest,
  type TokenLogprob,
} from './types';

export interface LocalProviderOptions {
  /** Pause before each token, so a reply streams like a model's (0 = as fast as it is read). */
  delayMs: number;
}

/**
 * The built-in model: offline and deterministic, so the whole chat flow (hold, stream, message,
 * capture) works on a fresh machine and in tests. The reply restates the last user message;
 * it streams token by token and reports real token counts, like a provider with usage, and log
 * probabilities when asked (each token was certain). It ends before a stop sequence, as OpenAI's
 * models do: the reply holds none of it, and nothing past it is written or counted. It calls no
 * tools: offered some, it answers in text, as a model may (a request that forces a call is refused
 * before it gets here).
 */
export function createLocalProvider(options: LocalProviderOptions): LlmProvider {
  return {
    stream: (req) => streamLocal(req, options.delayMs),
  };
}

async function* streamLocal(req: StreamRequest, delayMs: number): AsyncGenerator<StreamItem> {
  const { signal } = req;
  throwIfAborted(signal);
  const promptTokens = countPromptTokens(req.messages, req.tools);
  const whole = tokenPieces(beforeStop(localReply(req.messages), req.params.stop));
  const pieces = whole.slice(0, Math.max(0, req.params.max_tokens));
  let completionTokens = 0;
  for (const piece of pieces) {
    if (delayMs > 0) await sleep(delayMs, undefined, { signal }).catch(() => throwIfAborted(signal));
    throwIfAborted(signal);
    completionTokens++;
    if (piece !== '')
      yield { delta: piece, ...(req.logprobs ? { logprobs: [certain(piece, req.logprobs.top)] } : {}) };
  }
  yield { finish: pieces.length < whole.length ? 'length' : 'stop' };
  yield { usage: { prompt_tokens: promptTokens, completion_tokens: completionTokens } };
}

/** The reply up to the first of the stop sequences it holds (all of it when it holds none). */
function beforeStop(reply: string, stop: readonly string[] | undefined): string {
  let end = reply.length;
  for (const sequence of stop ?? []) {
    const at = sequence === '' ? -1 : reply.indexOf(sequence);
    if (at >= 0 && at < end) end = at;
  }
  return reply.slice(0, end);
}

/**
 * A token of the local model's reply, as log probabilities say it: the model is deterministic, so
 * each token it writes was certain (log probability 0), and it had no other. A character split over
 * two tokens is one entry, as it is one piece of the reply.
 */
function certain(piece: string, top: number): TokenLogprob {
  const token = { token: piece, logprob: 0, bytes: [...Buffer.from(piece, 'utf8')] };
  return { ...token, top_logprobs: top > 0 ? [token] : [] };
}

function throwIfAborted(signal: AbortSignal): void {
  if (signal.aborted) throw new LlmAborted();
}

const QUOTE_LIMIT = 200;

/** The reply to a conversation: the same messages always get the same reply. */
export function localReply(messages: readonly ChatMessageInput[]): string {
  const last = [...messages].reverse().find((m) => m.role === 'user');
  if (!last) {
    return 'Hello! I am the built-in local model. Send me a message and I will answer it offline.';
  }
  const parts =
    typeof last.content === 'string' ? [{ type: 'text' as const, text: last.content }] : (last.content ?? []);
  const text = parts
    .flatMap((p) => (p.type === 'text' ? [p.text] : []))
    .join(' ')
    .replace(/\s+/g, ' ')
    .trim();
  const images = parts.filter((p) => p.type === 'image_url').length;
  const words = text === '' ? 0 : text.split(' ').length;
  const quote = text.length > QUOTE_LIMIT ? `${[...text].slice(0, QUOTE_LIMIT).join('')}…` : text;
  const sentences = [
    text === '' ? 'You sent no text.' : `You said: “${quote}”.`,
    `That is ${plural(words, 'word')} and ${plural([...text].length, 'character')}` +
      (images > 0 ? `, with ${plural(images, 'image')}.` : '.'),
    text.endsWith('?')
      ? 'A good question: a real model would answer it; I can only read it back to you.'
      : 'Noted. A real model would continue from here; I can only read it back to you.',
    'I am the built-in local model, which works offline. Configure MODELS_FILE to talk to a real one.',
  ];
  return sentences.join(' ');
}

const plural = (n: number, noun: string) => `${n} ${noun}${n === 1 ? '' : 's'}`;
