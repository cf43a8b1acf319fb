import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { LRUCache } from 'lru-cache';
import { countMessageTokens, countPromptTokens, tokenPieces } from '../../../src/platform/llm/tokens';
import type { ChatMessageInput } from '../../../src/platform/llm/types';

/**
 * A fake OpenAI-compatible server speaking the real wire format, so the real `openai` SDK (and any
 * client) runs against it: `POST /v1/chat/completions` streamed as SSE `chat.completion.chunk`s
 * (the usage chunk with `choices: []` when `stream_options.include_usage`, then `data: [DONE]`) or
 * as one JSON `chat.completion`; `GET /v1/models`. Its behaviour can be changed between requests:
 * slow, dropping the connection, without usage, failing, or hanging.
 */

export interface FakeBehaviour {
  /** The reply; streamed one token (o200k_base) per chunk. */
  reply: string;
  /**
   * Chunks to send as they are, one per chunk, instead of the reply's tokens (each counted as one
   * token): text no tokenizer gives back, such as half of a surrogate pair.
   */
  pieces?: string[] | undefined;
  /** Fixed pace: pause between two chunks, scheduled from the first so it does not drift. */
  tokenDelayMs: number;
  /** Pause after the headers before the first token. */
  firstTokenDelayMs: number;
  /** Destroy the connection after this many content chunks (no finish, no usage, no [DONE]). */
  dropAfterTokens?: number | undefined;
  /** Send no usage chunk even when the request asks for one. */
  omitUsage: boolean;
  /** Answer with this error status; only the next `times` requests when given, else all. */
  fail?: { status: number; times?: number; message?: string; retryAfterSeconds?: number } | undefined;
  /** `true`: never answer. `'after-headers'`: send the headers (and role chunk), then nothing. */
  hang: boolean | 'after-headers';
  /** `finish_reason` to end with instead of `stop` (or `length` when cut at the request's maximum). */
  finishReason?: string | undefined;
  /** Usage to report instead of the counted one. */
  usage?: { prompt_tokens?: number; completion_tokens?: number } | undefined;
  /**
   * Calls of tools to make after the reply's text (`reply: ''` for calls alone), ending with
   * `tool_calls` unless `finishReason` says otherwise. Streamed as OpenAI does: a call's first
   * chunk has its index, id (when given here), type and name, the next ones its arguments, a token
   * (o200k_base) per chunk; each chunk counts as one token, and its name as one more.
   */
  toolCalls?: { id?: string; name: string; arguments: string }[] | undefined;
  /**
   * Reasoning to show before the reply, a token per chunk, as DeepSeek streams it
   * (`delta.reasoning_content`, or `delta.reasoning` with `reasoningField`); each chunk counts as
   * one token. Not streamed, it is `message.reasoning_content`.
   */
  reasoning?: string | undefined;
  reasoningField?: 'reasoning_content' | 'reasoning' | undefined;
  /** When a request asks for log probabilities: each text chunk's `logprobs.content`, as it is. */
  logprobsContent?: unknown[] | undefined;
}

export interface FakeRequest {
  body: ChatRequestBody;
  headers: http.IncomingHttpHeaders;
  /** Content chunks written so far. */
  chunksSent: number;
  /** The answer was complete (for a stream: up to `[DONE]`). */
  completed: boolean;
  /** The client closed the connection before the answer was complete. */
  closedByClient: boolean;
  /** The fake dropped the connection (`dropAfterTokens`). */
  dropped: boolean;
  /** Settles when the connection or the answer ends, whichever first. */
  closed: Promise<void>;
}

interface ChatRequestBody {
  model?: string;
  messages?: ChatMessageInput[];
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
  max_tokens?: number;
  max_completion_tokens?: number;
  [key: string]: unknown;
}

export interface FakeOpenAIOptions extends Partial<FakeBehaviour> {
  /** Required bearer key; unset = any. */
  apiKey?: string;
  /** Model ids of `GET /v1/models`. */
  models?: string[];
  /**
   * Whether each request is kept in `requests` (the default). A benchmark's fake serves thousands
   * of requests and keeps none, so that its own collector's work does not grow with the run.
   */
  keepRequests?: boolean;
}

export interface FakeOpenAI {
  /** The base URL, `/v1` included, as the SDK's `baseURL`. */
  url: string;
  /** Every chat completion request, in arrival order. */
  requests: FakeRequest[];
  /** Changes the behaviour for the next requests (unnamed fields keep their value; `fail.times` counts afresh). */
  setBehaviour(change: Partial<FakeBehaviour>): void;
  close(): Promise<void>;
}

const DEFAULT_BEHAVIOUR: FakeBehaviour = {
  reply: 'Hello from the fake model.',
  tokenDelayMs: 0,
  firstTokenDelayMs: 0,
  omitUsage: false,
  hang: false,
};

export async function startFakeOpenAI(options: FakeOpenAIOptions = {}): Promise<FakeOpenAI> {
  const { apiKey, models = ['fake-model'], keepRequests = true, ...initial } = options;
  let behaviour: FakeBehaviour = { ...DEFAULT_BEHAVIOUR, ...initial };
  let failed = 0;
  const requests: FakeRequest[] = [];
  let served = 0;
  const sockets = new Set<Socket>();

  const server = http.createServer((req, res) => {
    void handle(req, res).catch(() => res.destroy());
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '').split('?')[0];
    if (apiKey !== undefined && req.headers.authorization !== `Bearer ${apiKey}`) {
      return sendError(res, 401, 'Incorrect API key provided.', 'invalid_request_error', 'invalid_api_key');
    }
    if (req.method === 'GET' && path === '/v1/models') {
      return sendJson(res, 200, {
        object: 'list',
        data: models.map((id) => ({ id, object: 'model', created: 1_700_000_000, owned_by: 'fake' })),
      });
    }
    if (req.method !== 'POST' || path !== '/v1/chat/completions') {
      return sendError(
        res,
        404,
        `Unknown route ${req.method} ${path}`,
        'invalid_request_error',
        'unknown_url',
      );
    }
    let body: ChatRequestBody;
    try {
      body = JSON.parse(await readBody(req)) as ChatRequestBody;
    } catch {
      return sendError(
        res,
        400,
        'We could not parse the JSON body of your request.',
        'invalid_request_error',
      );
    }
    if (!Array.isArray(body.messages) || typeof body.model !== 'string') {
      return sendError(
        res,
        400,
        "Missing required parameters: 'model' and 'messages'.",
        'invalid_request_error',
      );
    }
    const b = behaviour;
    const record = track(req, res, body);
    if (b.fail && (b.fail.times === undefined || failed < b.fail.times)) {
      failed++;
      markCompleted(record);
      if (b.fail.retryAfterSeconds !== undefined)
        res.setHeader('retry-after', String(b.fail.retryAfterSeconds));
      const rateLimited = b.fail.status === 429;
      sendError(
        res,
        b.fail.status,
        b.fail.message ?? (rateLimited ? 'Rate limit reached for requests.' : 'The server had an error.'),
        rateLimited ? 'requests' : 'server_error',
        rateLimited ? 'rate_limit_exceeded' : null,
      );
      return;
    }
    if (b.hang === true) return; // never answered: the client's timeout or abort ends it
    if (body.stream) return streamReply(res, body, b, record);
    return jsonReply(res, body, b, record);
  }

  function track(req: http.IncomingMessage, res: http.ServerResponse, body: ChatRequestBody): FakeRequest {
    let settle!: () => void;
    const record: FakeRequest = {
      body,
      headers: req.headers,
      chunksSent: 0,
      completed: false,
      closedByClient: false,
      dropped: false,
      closed: new Promise<void>((resolve) => (settle = resolve)),
    };
    res.on('close', () => {
      if (!record.completed && !record.dropped) record.closedByClient = true;
      settle();
    });
    served++;
    if (keepRequests) requests.push(record);
    return record;
  }

  const id = () => `chatcmpl-fake${served}`;

  async function streamReply(
    res: http.ServerResponse,
    body: ChatRequestBody,
    b: FakeBehaviour,
    record: FakeRequest,
  ): Promise<void> {
    const reply = replyFor(body, b);
    const includeUsage = body.stream_options?.include_usage === true && !b.omitUsage;
    const created = Math.floor(Date.now() / 1000);
    const chunk = (choices: unknown[], usage?: unknown) =>
      `data: ${JSON.stringify({
        id: id(),
        object: 'chat.completion.chunk',
        created,
        model: body.model,
        system_fingerprint: 'fp_fake',
        choices,
        ...(includeUsage ? { usage: usage ?? null } : {}),
      })}\n\n`;
    const probabilities = logprobsAsked(body);
    let token = 0;
    const choice = (delta: { content?: string; [field: string]: unknown }, finish: string | null = null) => ({
      index: 0,
      delta,
      logprobs: !delta.content
        ? null
        : b.logprobsContent
          ? { content: b.logprobsContent, refusal: null }
          : probabilities
            ? { content: [fakeLogprob(delta.content, token++, probabilities.top)], refusal: null }
            : null,
      finish_reason: finish,
    });

    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
    });
    res.write(chunk([choice({ role: 'assistant', content: '', refusal: null })]));
    if (b.hang === 'after-headers') return;

    const start = Date.now();
    let sent = 0;
    for (const delta of reply.deltas) {
      if (b.dropAfterTokens !== undefined && sent >= b.dropAfterTokens) return drop(res, record);
      const due = start + b.firstTokenDelayMs + sent * b.tokenDelayMs;
      if (due > Date.now()) await sleepUnlessClosed(due - Date.now(), res);
      if (res.destroyed) return;
      res.write(chunk([choice(delta)]));
      record.chunksSent = ++sent;
    }
    if (b.dropAfterTokens !== undefined && sent >= b.dropAfterTokens) return drop(res, record);
    res.write(chunk([choice({}, reply.finishReason)]));
    if (includeUsage) res.write(chunk([], usageOf(body, reply.tokens, b)));
    res.write('data: [DONE]\n\n');
    markCompleted(record);
    res.end();
  }

  async function jsonReply(
    res: http.ServerResponse,
    body: ChatRequestBody,
    b: FakeBehaviour,
    record: FakeRequest,
  ): Promise<void> {
    const reply = replyFor(body, b);
    const wait = b.firstTokenDelayMs + reply.deltas.length * b.tokenDelayMs;
    if (wait > 0) await sleepUnlessClosed(wait, res);
    if (res.destroyed) return;
    markCompleted(record);
    const text = reply.pieces.join('');
    sendJson(res, 200, {
      id: id(),
      object: 'chat.completion',
      created: Math.floor(Date.now() / 1000),
      model: body.model,
      system_fingerprint: 'fp_fake',
      choices: [
        {
          index: 0,
          message: b.toolCalls
            ? {
                role: 'assistant',
                content: text || null,
                refusal: null,
                tool_calls: b.toolCalls.map((c, i) => ({
                  id: c.id ?? `call_fake${i}`,
                  type: 'function',
                  function: { name: c.name, arguments: c.arguments },
                })),
              }
            : {
                role: 'assistant',
                content: text,
                refusal: null,
                ...(b.reasoning ? { reasoning_content: b.reasoning } : {}),
              },
          logprobs: logprobsAsked(body)
            ? {
                content: reply.pieces.map((p, i) => fakeLogprob(p, i, logprobsAsked(body)!.top)),
                refusal: null,
              }
            : null,
          finish_reason: reply.finishReason,
        },
      ],
      ...(b.omitUsage ? {} : { usage: usageOf(body, reply.tokens, b) }),
    });
  }

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/v1`,
    requests,
    setBehaviour(change) {
      behaviour = { ...behaviour, ...change };
      failed = 0;
    },
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Log probabilities asked for by a request, with how many alternatives. */
function logprobsAsked(body: ChatRequestBody): { top: number } | null {
  if (body.logprobs !== true) return null;
  return { top: typeof body.top_logprobs === 'number' ? body.top_logprobs : 0 };
}

/**
 * The log probability the fake gives the `index`th token of its text, `piece`, with `top`
 * alternatives: the token itself, then made-up ones, each less likely. Deterministic, so a test can
 * compute what it should receive.
 */
export function fakeLogprob(piece: string, index: number, top: number) {
  const probability = (token: string, logprob: number) => ({
    token,
    logprob,
    bytes: [...Buffer.from(token, 'utf8')],
  });
  const logprob = -((index % 7) + 1) / 8;
  return {
    ...probability(piece, logprob),
    top_logprobs: Array.from({ length: top }, (_, k) =>
      k === 0 ? probability(piece, logprob) : probability(`alt${k}`, logprob - k),
    ),
  };
}

/**
 * The reply's token pieces (non-empty ones become chunks), cut at the request's max tokens, then its
 * tool calls' chunks; `deltas` are the chunks' deltas, and `tokens` what the usage counts.
 */
function replyFor(body: ChatRequestBody, b: FakeBehaviour) {
  const all = b.pieces ?? piecesOf(b.reply);
  const max = body.max_completion_tokens ?? body.max_tokens;
  const cut = typeof max === 'number' && max >= 0 && max < all.length;
  const tokens = cut ? all.slice(0, max) : all;
  const pieces = tokens.filter((p) => p !== '');
  const thoughts = b.reasoning ? piecesOf(b.reasoning).filter((p) => p !== '') : [];
  const field = b.reasoningField ?? 'reasoning_content';
  const deltas: { content?: string; [field: string]: unknown }[] = [
    ...thoughts.map((t) => ({ [field]: t })),
    ...pieces.map((content) => ({ content })),
  ];
  let callTokens = 0;
  (b.toolCalls ?? []).forEach((call, index) => {
    const first = { index, ...(call.id ? { id: call.id } : {}), type: 'function' };
    deltas.push({ tool_calls: [{ ...first, function: { name: call.name, arguments: '' } }] });
    const args = tokenPieces(call.arguments).filter((p) => p !== '');
    for (const a of args) deltas.push({ tool_calls: [{ index, function: { arguments: a } }] });
    callTokens += 1 + args.length;
  });
  return {
    pieces,
    deltas,
    tokens: thoughts.length + tokens.length + callTokens,
    finishReason: b.finishReason ?? (b.toolCalls ? 'tool_calls' : cut ? 'length' : 'stop'),
  };
}

function usageOf(body: ChatRequestBody, completionTokens: number, b: FakeBehaviour) {
  const prompt = b.usage?.prompt_tokens ?? promptTokensOf(body.messages ?? []);
  const completion = b.usage?.completion_tokens ?? completionTokens;
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
    prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
    completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0 },
  };
}

/** Texts' token pieces, as counted once: a fake replies with the same text thousands of times. */
const pieces = new LRUCache<string, string[]>({ max: 1_000 });
function piecesOf(text: string): string[] {
  let found = pieces.get(text);
  if (!found) pieces.set(text, (found = tokenPieces(text)));
  return found;
}

/**
 * A prompt's tokens as `countPromptTokens` counts them, each message counted once: a chat's
 * requests repeat its history, which in a long benchmark grows by a reply per request.
 */
const messageTokens = new LRUCache<string, number>({ max: 100_000 });
function promptTokensOf(messages: readonly ChatMessageInput[]): number {
  let total = countPromptTokens([]);
  for (const m of messages) {
    const key = JSON.stringify(m);
    let n = messageTokens.get(key);
    if (n === undefined) messageTokens.set(key, (n = countMessageTokens(m)));
    total += n;
  }
  return total;
}

function markCompleted(record: FakeRequest): void {
  record.completed = true;
}

/** A connection lost mid-stream: no finish, no usage, no [DONE]. */
function drop(res: http.ServerResponse, record: FakeRequest): void {
  record.dropped = true;
  // Closed after what was written has gone out, like a proxy or server dying mid-reply: the
  // client sees the chunks, then a connection closed inside the chunked body.
  res.socket?.end();
}

function sleepUnlessClosed(ms: number, res: http.ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      res.off('close', done);
      resolve();
    }
    res.on('close', done);
  });
}

function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    req.on('data', (c: Buffer) => parts.push(c));
    req.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
    req.on('error', reject);
  });
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function sendError(
  res: http.ServerResponse,
  status: number,
  message: string,
  type: string,
  code: string | null = null,
): void {
  sendJson(res, status, { error: { message, type, param: null, code } });
}
