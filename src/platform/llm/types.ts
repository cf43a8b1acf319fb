/**
 * The model layer's contract: a catalog of models with prices, and providers that stream a reply.
 * The task flow and `/chat/completions` are written against these types only, so a provider can be
 * the OpenAI SDK against any compatible endpoint, or the built-in local model.
 */

import { storableText } from '../text';

export type ChatContentPart =
  | { type: 'text'; text: string }
  | { type: 'image_url'; image_url: { url: string; detail?: 'auto' | 'low' | 'high' | undefined } };

/** A function the model called, in OpenAI's shape: `arguments` is JSON text, as the model wrote it. */
export interface ToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

/**
 * A chat message in the OpenAI wire shape, as it is sent upstream. An assistant message may carry
 * the calls its model made (its content then may be null); a `tool` message answers one of them.
 */
export interface ChatMessageInput {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string | ChatContentPart[] | null;
  /** Who says it, among speakers of the same role (completions only). */
  name?: string | undefined;
  tool_calls?: ToolCall[] | undefined;
  tool_call_id?: string | undefined;
  /**
   * An assistant message's reasoning, sent back: DeepSeek's thinking mode asks for it on a turn that
   * called tools (and older reasoning models refuse it: the client knows which it talks to).
   */
  reasoning_content?: string | undefined;
}

/** What a function and a reply format both have: a name, what it is for, and a strict flag. */
interface Described {
  name: string;
  description?: string | undefined;
  strict?: boolean | null | undefined;
}

/** A function the model may call, in OpenAI's shape (`parameters` is a JSON Schema). */
export interface ToolDefinition {
  type: 'function';
  function: Described & { parameters?: Record<string, unknown> | undefined };
}

export type ToolChoice = 'none' | 'auto' | 'required' | { type: 'function'; function: { name: string } };

/** The functions offered to the model, and how it may use them (OpenAI's `tools`, `tool_choice`, `parallel_tool_calls`). */
export interface ToolOptions {
  tools: ToolDefinition[];
  choice?: ToolChoice | undefined;
  parallel?: boolean | undefined;
}

/**
 * The shape the reply must take (OpenAI's `response_format`): any JSON object, or JSON that follows
 * a schema. Plain text needs none.
 */
export type ResponseFormat =
  | { type: 'json_object' }
  | {
      type: 'json_schema';
      json_schema: Described & { schema?: Record<string, unknown> | undefined };
    };

/**
 * A piece of a tool call as it streams: the first piece of a call has its `id` and `name`, the
 * next ones more of its `arguments`. `index` tells the calls of one reply apart.
 */
export interface ToolCallDelta {
  index: number;
  id?: string | undefined;
  name?: string | undefined;
  arguments?: string | undefined;
}

/** Sampling parameters; `max_tokens` is always resolved (see `resolveMaxTokens`) before a call. */
export interface GenerationParams {
  temperature?: number | undefined;
  top_p?: number | undefined;
  max_tokens: number;
  presence_penalty?: number | undefined;
  frequency_penalty?: number | undefined;
  stop?: string[] | undefined;
  /** Asks the provider to sample the same way each time (its best effort). */
  seed?: number | undefined;
  /** How long a reasoning model thinks before it answers (OpenAI's values). */
  reasoning_effort?: string | undefined;
  /** Token ids (as the provider numbers them) made more or less likely, from -100 to 100. */
  logit_bias?: Record<string, number> | undefined;
  /** How much a model that takes it says: low, medium or high. */
  verbosity?: 'low' | 'medium' | 'high' | undefined;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
}

/** A model of the catalog. Prices are credits per 1M tokens (may be fractional; costs round up). */
export interface ModelInfo {
  id: string;
  /** The provider's id in the catalog. */
  provider: string;
  /** The model's name at the provider (`model` of the upstream request). */
  upstream: string;
  contextLength: number;
  /** Output tokens reserved and allowed when a request names none. */
  defaultMaxTokens: number;
  /** The most output tokens a request may ask for. */
  maxOutputTokens: number;
  /** Credits per 1M prompt tokens. */
  promptPrice: number;
  /** Credits per 1M completion tokens. */
  completionPrice: number;
  /** The most one image of a prompt may count: holds, and fits to the window, take each at this. */
  imageTokens: number;
  /** Served by the built-in offline model. */
  local: boolean;
}

/**
 * Why a reply ended, as OpenAI's `finish_reason` says it: its natural end or a stop sequence, the
 * output limit, a filter, or calls of the tools it was offered.
 */
export const FINISH_REASONS = ['stop', 'length', 'content_filter', 'tool_calls'] as const;
export type FinishReason = (typeof FINISH_REASONS)[number];

/** A token and how likely the model found it (OpenAI's shape): `bytes` are its UTF-8 bytes, when given. */
export interface TokenProbability {
  token: string;
  /** The natural log of its probability (OpenAI says -9999 for "all but impossible"). */
  logprob: number;
  bytes: number[] | null;
}

/** A token of the reply with its log probability, and the likeliest tokens the model had for its place. */
export interface TokenLogprob extends TokenProbability {
  top_logprobs: TokenProbability[];
}

/**
 * One item of a reply: a piece of its text (with its tokens' log probabilities, when asked for), of
 * a tool call, or of the reasoning a reasoning model shows before it answers (DeepSeek's
 * `reasoning_content`); then, when the provider says them, why it ended and the usage (last).
 */
export type StreamItem =
  | { delta: string; logprobs?: TokenLogprob[] | undefined }
  | { toolCall: ToolCallDelta }
  | { reasoning: string }
  | { finish: FinishReason }
  | { usage: Usage };

export interface StreamRequest {
  model: ModelInfo;
  messages: ChatMessageInput[];
  params: GenerationParams;
  /** Functions the model may call; none offered when absent. */
  tools?: ToolOptions | undefined;
  /** JSON output; text when absent. */
  responseFormat?: ResponseFormat | undefined;
  /**
   * Asks for each output token's log probability, with the `top` likeliest tokens at its place
   * (OpenAI's `logprobs` and `top_logprobs`); none asked when absent.
   */
  logprobs?: { top: number } | undefined;
  /** Aborting stops the upstream request; the iterable then throws an `LlmAborted`. */
  signal: AbortSignal;
}

/**
 * Streams a reply. Failures are `ProviderError`s; an abort through `signal` is an `LlmAborted`.
 * A provider that reports no usage yields no usage item: the caller counts with the tokenizer.
 */
export interface LlmProvider {
  stream(req: StreamRequest): AsyncIterable<StreamItem>;
}

export interface ModelCatalog {
  /** Every model, in configuration order. */
  list(): ModelInfo[];
  get(id: string): ModelInfo | undefined;
  /** The provider serving `model` (one shared client per configured provider). */
  provider(model: ModelInfo): LlmProvider;
  /** The model a request without one uses: `default_model` of the configuration, else the first. */
  default(): ModelInfo;
}

export interface ProviderErrorOptions {
  retryable: boolean;
  /** The upstream HTTP status, when there was a response. */
  status?: number | undefined;
  /** The provider's id in the catalog. */
  provider?: string | undefined;
  /** Part of the reply had been yielded when it failed (never retryable then). */
  afterOutput?: boolean | undefined;
  /** The upstream's `Retry-After`, in ms. */
  retryAfterMs?: number | undefined;
  cause?: unknown;
}

/** The longest message a `ProviderError` keeps: an upstream's error may be a whole HTML page. */
const MAX_PROVIDER_MESSAGE = 1_000;

/**
 * A provider failed. `retryable`: worth another attempt, which is only ever true before any output
 * (429, 5xx, connection refused or reset, timeout); 400/401/404 and anything after output are not.
 * The message never carries credentials. It holds the upstream's words, cut to
 * `MAX_PROVIDER_MESSAGE` and made storable (`storableText`): a task's failure records it, and the
 * event store refuses NUL and half a surrogate pair.
 */
export class ProviderError extends Error {
  override readonly name = 'ProviderError';
  readonly retryable: boolean;
  readonly status?: number;
  readonly provider?: string;
  readonly afterOutput: boolean;
  readonly retryAfterMs?: number;

  constructor(message: string, options: ProviderErrorOptions) {
    const cut =
      message.length > MAX_PROVIDER_MESSAGE ? `${message.slice(0, MAX_PROVIDER_MESSAGE)}…` : message;
    super(storableText(cut), options.cause === undefined ? undefined : { cause: options.cause });
    this.retryable = options.retryable && !options.afterOutput;
    this.afterOutput = options.afterOutput ?? false;
    if (options.status !== undefined) this.status = options.status;
    if (options.provider !== undefined) this.provider = options.provider;
    if (options.retryAfterMs !== undefined) this.retryAfterMs = options.retryAfterMs;
  }
}

/** The caller aborted the stream through its signal. Named `AbortError` like the platform's own. */
export class LlmAborted extends Error {
  override readonly name = 'AbortError';
  constructor(message = 'the generation was aborted') {
    super(message);
  }
}

/** An abort, whether ours (`LlmAborted`) or the platform's (`DOMException` AbortError). */
export const isAbortError = (err: unknown): boolean => err instanceof Error && err.name === 'AbortError';
