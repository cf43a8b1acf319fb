import OpenAI, { APIConnectionError, APIConnectionTimeoutError, APIError } from 'openai';
import { createParser } from 'eventsource-parser';
import type {
  ChatCompletionChunk,
  ChatCompletionCreateParamsStreaming,
  ChatCompletionMessageParam,
  ChatCompletionTool,
} from 'openai/resources/chat/completions';
import type { ReasoningEffort } from 'openai/resources/shared';
import type { Logger } from '../logger';
import { undiciFetch } from './undiciFetch';
import {
  FINISH_REASONS,
  LlmAborted,
  ProviderError,
  type FinishReason,
  type GenerationParams,
  type LlmProvider,
  type StreamItem,
  type StreamRequest,
  type TokenLogprob,
  type TokenProbability,
  type ToolCallDelta,
  type Usage,
} from './types';

export interface OpenAIProviderOptions {
  /** The provider's id in the catalog (named in errors and logs). */
  id: string;
  baseURL: string;
  /** Servers without auth (Ollama, a bare vLLM) still get a placeholder: the SDK requires one. */
  apiKey?: string | undefined;
  /**
   * Longest wait for the response, and then between two chunks of it (a keep-alive comment
   * counts): a provider that stops sending fails the generation instead of holding it (and its
   * credits) forever.
   */
  idleTimeoutMs: number;
  /** `max_completion_tokens` for OpenAI's reasoning models, which refuse `max_tokens`. */
  maxTokensParam?: 'max_tokens' | 'max_completion_tokens' | undefined;
  headers?: Record<string, string> | undefined;
  logger?: Logger | undefined;
}

/**
 * Whether a provider's `finish_reason` is one we pass on. Others (the functions API's
 * `function_call`, a server's own word) are not: the caller then says `stop` or `length`.
 */
const isFinishReason = (reason: string): reason is FinishReason =>
  (FINISH_REASONS as readonly string[]).includes(reason);

/** How much longer than the idle timeout the SDK waits for a response before giving up itself. */
const SDK_TIMEOUT_SLACK_MS = 1_000;

/** HTTP statuses worth another attempt: timeouts, conflicts, rate limits, server trouble. */
const RETRYABLE_STATUS = (status: number) =>
  status === 408 || status === 409 || status === 429 || status >= 500;

/**
 * Any OpenAI-compatible endpoint (OpenAI, DeepSeek, DashScope compatible mode, vLLM, Ollama)
 * through the official SDK. The SDK does not retry (`maxRetries: 0`): only the caller knows
 * whether output has gone out, so retrying is `withRetryBeforeFirstToken`'s job.
 */
export function createOpenAIProvider(options: OpenAIProviderOptions): LlmProvider {
  const client = new OpenAI({
    apiKey: options.apiKey || 'none',
    baseURL: options.baseURL,
    // Never pick up the OPENAI_* variables of the environment: each provider says what it uses.
    organization: null,
    project: null,
    adminAPIKey: null,
    webhookSecret: null,
    maxRetries: 0,
    // Our idle timer decides (see `streamCompletion`); the SDK's own, for the wait for the response
    // only, is a backstop past it. The same length raced ours, a timer firing a fraction of a
    // millisecond early: the provider's silence then failed as a broken connection.
    timeout: options.idleTimeoutMs + SDK_TIMEOUT_SLACK_MS,
    fetch: undiciFetch(),
    ...(options.headers ? { defaultHeaders: options.headers } : {}),
    ...(options.logger ? { logger: options.logger.child({ provider: options.id }) } : {}),
    logLevel: 'warn',
  });
  return { stream: (req) => streamCompletion(client, options, req) };
}

async function* streamCompletion(
  client: OpenAI,
  options: OpenAIProviderOptions,
  req: StreamRequest,
): AsyncGenerator<StreamItem> {
  if (req.signal.aborted) throw new LlmAborted();
  // One signal for the SDK: the caller's abort, or our idle timer. The timer is lazy: a chunk only
  // notes its time, and the timer, when it fires, looks how long the provider has been silent
  // (not two timers set and cleared per chunk, hundreds per reply).
  const idle = new AbortController();
  const signal = AbortSignal.any([req.signal, idle.signal]);
  let timer: NodeJS.Timeout | undefined;
  /** Since when the provider has sent nothing; null while our reader holds a delta (its time is not the provider's). */
  let silentSince: number | null = null;
  const check = () => {
    // The reader holds a delta: no timer until it asks for the next (an abandoned reader keeps none).
    if (silentSince === null) {
      timer = undefined;
      return;
    }
    const quiet = performance.now() - silentSince;
    if (quiet < options.idleTimeoutMs) {
      timer = setTimeout(check, options.idleTimeoutMs - quiet);
      return;
    }
    timer = undefined;
    idle.abort();
  };
  const arm = () => {
    silentSince = performance.now();
    timer ??= setTimeout(check, options.idleTimeoutMs);
  };
  let afterOutput = false;
  let finished = false;
  let finish: FinishReason | undefined;
  let usage: Usage | undefined;
  const failure = (message: string, retryable: boolean, extra: { status?: number; cause?: unknown } = {}) =>
    new ProviderError(`${options.id}: ${message}`, {
      retryable,
      afterOutput,
      provider: options.id,
      ...extra,
    });

  arm();
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  /** The body was read to its end: nothing left to cancel. */
  let ended = false;
  try {
    // The SDK makes the request and turns a refusal into its error; the body it answers is read
    // here (see `sseEvents`), at about half the CPU of the SDK's own stream per reply.
    const response = await client.chat.completions.create(requestBody(req, options), { signal }).asResponse();
    if (!response.body) throw failure('the response had no body', true);
    reader = response.body.getReader();
    // A comment (a keep-alive some servers send while the model thinks) shows the provider is there.
    const events = sseEvents(arm);
    while (!signal.aborted) {
      const read = await reader.read();
      if (read.done) {
        ended = true;
        break;
      }
      for (const data of events.feed(read.value)) {
        // Chunks that arrived in the same read as the abort are dropped: nothing goes out after it.
        if (signal.aborted) break;
        arm();
        const chunk = chunkOf(data, response.headers);
        if (chunk.usage) {
          usage = {
            prompt_tokens: chunk.usage.prompt_tokens,
            completion_tokens: chunk.usage.completion_tokens,
          };
        }
        const choice = chunk.choices?.[0];
        if (choice?.finish_reason) {
          finished = true;
          if (isFinishReason(choice.finish_reason)) finish = choice.finish_reason;
        }
        for (const item of outputOf(choice, req.logprobs !== undefined)) {
          // The reader's wait is not the provider's: a slow reader is no silent provider.
          afterOutput = true;
          silentSince = null;
          yield item;
          arm();
        }
      }
    }
  } catch (err) {
    if (req.signal.aborted) throw new LlmAborted();
    if (idle.signal.aborted) {
      throw failure(`no ${reader ? 'data' : 'response'} for ${options.idleTimeoutMs} ms`, true);
    }
    if (err instanceof ProviderError) throw err;
    throw toProviderError(err, options.id, afterOutput);
  } finally {
    clearTimeout(timer);
    // A reader that stopped early, or a failure: the connection is closed, not left streaming.
    if (reader && !ended) reader.cancel().catch(() => undefined);
  }
  // An abort that ended the reading between two reads: say which abort it was.
  if (req.signal.aborted) throw new LlmAborted();
  if (idle.signal.aborted) throw failure(`no data for ${options.idleTimeoutMs} ms`, true);
  if (!finished) throw failure('the stream ended before the model finished its reply', true);
  if (finish) yield { finish };
  if (usage) yield { usage };
}

/** The longest event a provider may send, in characters: past it, the stream is broken. */
const MAX_EVENT_CHARS = 16 * 1024 * 1024;

/**
 * The events of an SSE body, fed its bytes as they arrive: each feed answers the data of the
 * events it completed, none after `[DONE]` (what follows it is read and ignored, as the SDK does).
 * A character split across two reads is decoded whole; an event longer than `MAX_EVENT_CHARS`
 * fails the feed. `onComment` is called for each comment line.
 */
function sseEvents(onComment: () => void): { feed(bytes: Uint8Array): string[] } {
  let events: string[] = [];
  let broken: Error | undefined;
  let done = false;
  const parser = createParser({
    onEvent: (event) => {
      if (done || event.data.startsWith('[DONE]')) done = true;
      else events.push(event.data);
    },
    onError: (err) => {
      if (err.type === 'max-buffer-size-exceeded') broken = err;
    },
    onComment,
    maxBufferSize: MAX_EVENT_CHARS,
  });
  const decoder = new TextDecoder();
  return {
    feed(bytes) {
      parser.feed(decoder.decode(bytes, { stream: true }));
      if (broken) throw broken;
      const completed = events;
      events = [];
      return completed;
    },
  };
}

/**
 * What a chunk's choice gives the reader, in order: its reasoning (as the model thought it, before
 * its text), its text with the text's log probabilities when asked for (which may come with no
 * text: a chunk that ends inside a character), and the pieces of its tool calls.
 */
function outputOf(choice: ChatCompletionChunk.Choice | undefined, logprobsAsked: boolean): StreamItem[] {
  const items: StreamItem[] = [];
  const reasoning = reasoningOf(choice?.delta);
  if (reasoning) items.push({ reasoning });
  const delta = choice?.delta?.content;
  const logprobs = logprobsAsked ? logprobsOf(choice?.logprobs) : undefined;
  if (delta || logprobs) items.push({ delta: delta ?? '', ...(logprobs ? { logprobs } : {}) });
  for (const [position, call] of (choice?.delta?.tool_calls ?? []).entries()) {
    const piece = toolCallPiece(call, position);
    if (piece) items.push({ toolCall: piece });
  }
  return items;
}

/** A streamed chunk, or the error the provider sent in its place (as the SDK reads one). */
function chunkOf(data: string, headers: Headers): ChatCompletionChunk {
  const chunk = JSON.parse(data) as ChatCompletionChunk & { error?: unknown };
  if (chunk?.error) throw new APIError(undefined, chunk.error, undefined, headers);
  return chunk;
}

/**
 * The reasoning a delta carries, which the SDK's types do not know: `reasoning_content` (DeepSeek,
 * DashScope, vLLM) or `reasoning` (Ollama, newer vLLM).
 */
function reasoningOf(delta: object | undefined): string | undefined {
  const d = delta as { reasoning_content?: unknown; reasoning?: unknown } | undefined;
  const text = d?.reasoning_content ?? d?.reasoning;
  return typeof text === 'string' && text !== '' ? text : undefined;
}

/**
 * The log probabilities of a chunk's text tokens (`logprobs.content`), as OpenAI shapes them;
 * entries of another shape are left out, and none at all is undefined.
 */
function logprobsOf(logprobs: { content?: unknown } | null | undefined): TokenLogprob[] | undefined {
  if (!Array.isArray(logprobs?.content)) return undefined;
  const tokens = logprobs.content.flatMap((entry: unknown) => {
    const token = probabilityOf(entry);
    if (!token) return [];
    const top = (entry as { top_logprobs?: unknown }).top_logprobs;
    const alternatives = Array.isArray(top) ? top.flatMap((t: unknown) => probabilityOf(t) ?? []) : [];
    return [{ ...token, top_logprobs: alternatives }];
  });
  return tokens.length > 0 ? tokens : undefined;
}

function probabilityOf(entry: unknown): TokenProbability | null {
  const e = entry as { token?: unknown; logprob?: unknown; bytes?: unknown } | null;
  if (typeof e?.token !== 'string' || typeof e.logprob !== 'number' || !Number.isFinite(e.logprob))
    return null;
  const bytes =
    Array.isArray(e.bytes) && e.bytes.every((b) => Number.isInteger(b) && b >= 0 && b <= 255)
      ? (e.bytes as number[])
      : null;
  return { token: e.token, logprob: e.logprob, bytes };
}

/**
 * A streamed piece of a tool call as a `ToolCallDelta`. A server that sends whole calls without
 * `index` (some do) numbers them by their place in the chunk. Answers null for a piece with nothing.
 */
function toolCallPiece(
  call: { index?: number; id?: string; function?: { name?: string; arguments?: string } },
  position: number,
): ToolCallDelta | null {
  const index =
    Number.isSafeInteger(call.index) && (call.index as number) >= 0 ? (call.index as number) : position;
  const id = typeof call.id === 'string' ? call.id : undefined;
  const name = typeof call.function?.name === 'string' ? call.function.name : undefined;
  const args = typeof call.function?.arguments === 'string' ? call.function.arguments : undefined;
  if (!id && !name && !args) return null;
  return {
    index,
    ...(id ? { id } : {}),
    ...(name ? { name } : {}),
    ...(args ? { arguments: args } : {}),
  };
}

function requestBody(
  req: StreamRequest,
  options: OpenAIProviderOptions,
): ChatCompletionCreateParamsStreaming {
  const p: GenerationParams = req.params;
  return {
    model: req.model.upstream,
    // Our shape is a subset of the SDK's, except that it does not tell roles apart: an image in a
    // system message is the upstream's to refuse (400).
    messages: req.messages as ChatCompletionMessageParam[],
    stream: true,
    stream_options: { include_usage: true },
    ...(options.maxTokensParam === 'max_completion_tokens'
      ? { max_completion_tokens: p.max_tokens }
      : { max_tokens: p.max_tokens }),
    ...(p.temperature !== undefined ? { temperature: p.temperature } : {}),
    ...(p.top_p !== undefined ? { top_p: p.top_p } : {}),
    ...(p.presence_penalty !== undefined ? { presence_penalty: p.presence_penalty } : {}),
    ...(p.frequency_penalty !== undefined ? { frequency_penalty: p.frequency_penalty } : {}),
    ...(p.stop !== undefined && p.stop.length > 0 ? { stop: p.stop } : {}),
    ...(p.seed !== undefined ? { seed: p.seed } : {}),
    // Without `top_logprobs`, each token comes with no alternatives, as with 0 (not every server takes 0).
    ...(req.logprobs
      ? { logprobs: true, ...(req.logprobs.top > 0 ? { top_logprobs: req.logprobs.top } : {}) }
      : {}),
    // Passed on as asked, beyond the SDK's list: DeepSeek's `max` is not in it.
    ...(p.reasoning_effort !== undefined ? { reasoning_effort: p.reasoning_effort as ReasoningEffort } : {}),
    ...(p.logit_bias !== undefined ? { logit_bias: p.logit_bias } : {}),
    ...(p.verbosity !== undefined ? { verbosity: p.verbosity } : {}),
    ...(req.tools && req.tools.tools.length > 0
      ? {
          tools: req.tools.tools as ChatCompletionTool[],
          ...(req.tools.choice !== undefined ? { tool_choice: req.tools.choice } : {}),
          ...(req.tools.parallel !== undefined ? { parallel_tool_calls: req.tools.parallel } : {}),
        }
      : {}),
    // Our shape is the SDK's, read with optional fields that may be undefined (never sent so).
    ...(req.responseFormat
      ? {
          response_format: req.responseFormat as NonNullable<
            ChatCompletionCreateParamsStreaming['response_format']
          >,
        }
      : {}),
  };
}

/** The SDK's errors as `ProviderError`s: retryable = worth another attempt if nothing went out yet. */
export function toProviderError(err: unknown, provider: string, afterOutput: boolean): ProviderError {
  const base = { provider, afterOutput, cause: err };
  if (err instanceof APIConnectionTimeoutError) {
    return new ProviderError(`${provider}: request timed out`, { ...base, retryable: true });
  }
  if (err instanceof APIConnectionError) {
    return new ProviderError(`${provider}: ${connectionMessage(err)}`, { ...base, retryable: true });
  }
  if (err instanceof APIError) {
    const status = typeof err.status === 'number' ? err.status : undefined;
    return new ProviderError(`${provider}: ${err.message}`, {
      ...base,
      status,
      // No status: an error event inside the stream (e.g. overloaded), worth retrying like a 5xx.
      retryable: status === undefined || RETRYABLE_STATUS(status),
      retryAfterMs: retryAfterMs(err.headers as Headers | undefined),
    });
  }
  // The connection broke while reading the body (undici: "terminated"), or the body was not SSE.
  const message = err instanceof Error ? err.message : String(err);
  return new ProviderError(`${provider}: the stream broke (${message})`, { ...base, retryable: true });
}

function connectionMessage(err: APIConnectionError): string {
  const cause = err.cause as { code?: unknown; cause?: { code?: unknown } } | undefined;
  const code = cause?.code ?? cause?.cause?.code;
  return typeof code === 'string' ? `connection failed (${code})` : 'connection failed';
}

function retryAfterMs(headers: Headers | undefined): number | undefined {
  const ms = Number(headers?.get('retry-after-ms') ?? NaN);
  if (Number.isFinite(ms) && ms >= 0) return ms;
  const seconds = Number(headers?.get('retry-after') ?? NaN);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : undefined;
}
