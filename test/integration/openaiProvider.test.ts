import http from 'node:http';
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import { testConfig } from '../../src/platform/config';
import { createModelCatalog } from '../../src/platform/llm/catalog';
import { createOpenAIProvider } from '../../src/platform/llm/openaiProvider';
import { withRetryBeforeFirstToken } from '../../src/platform/llm/retry';
import { countPromptTokens, tokenPieces } from '../../src/platform/llm/tokens';
import {
  LlmAborted,
  ProviderError,
  type ChatMessageInput,
  type FinishReason,
  type GenerationParams,
  type LlmProvider,
  type ModelInfo,
  type ResponseFormat,
  type TokenLogprob,
  type ToolCallDelta,
  type ToolOptions,
  type Usage,
} from '../../src/platform/llm/types';
import { fakeLogprob, startFakeOpenAI, type FakeOpenAI } from '../support/fakes/openai';

const KEY = 'sk-test-fake-key';
const REPLY = 'Bonjour! Ça va très bien, merci. 你好 🎉';

const model: ModelInfo = {
  id: 'fake-chat',
  provider: 'fake',
  upstream: 'fake-upstream-1',
  contextLength: 8192,
  defaultMaxTokens: 256,
  maxOutputTokens: 1024,
  promptPrice: 100,
  completionPrice: 200,
  imageTokens: 1445,
  local: false,
};
const messages: ChatMessageInput[] = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: [{ type: 'text', text: 'How are you?' }] },
];

let fake: FakeOpenAI;
beforeEach(async () => {
  fake = await startFakeOpenAI({ apiKey: KEY, reply: REPLY });
});
afterEach(() => fake.close());

const providerFor = (overrides: Partial<Parameters<typeof createOpenAIProvider>[0]> = {}) =>
  createOpenAIProvider({ id: 'fake', baseURL: fake.url, apiKey: KEY, idleTimeoutMs: 10_000, ...overrides });

interface Outcome {
  deltas: string[];
  /** Each delta's log probabilities (undefined where it had none). */
  logprobs: (TokenLogprob[] | undefined)[];
  reasoning: string[];
  toolCalls: ToolCallDelta[];
  finish: FinishReason | undefined;
  usage: Usage | undefined;
  /** What each item was, in order. */
  kinds: ('delta' | 'toolCall' | 'reasoning' | 'finish' | 'usage')[];
  error: unknown;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function collect(
  provider: LlmProvider,
  /** `onDelta` is awaited: a reader that takes its time with each delta. */
  options: {
    signal?: AbortSignal;
    maxTokens?: number;
    onDelta?: (n: number) => unknown;
    tools?: ToolOptions;
    responseFormat?: ResponseFormat;
    params?: Partial<GenerationParams>;
    messages?: ChatMessageInput[];
    logprobs?: { top: number };
  } = {},
): Promise<Outcome> {
  const out: Outcome = {
    deltas: [],
    logprobs: [],
    reasoning: [],
    toolCalls: [],
    finish: undefined,
    usage: undefined,
    kinds: [],
    error: undefined,
  };
  try {
    const stream = provider.stream({
      model,
      messages: options.messages ?? messages,
      params: { max_tokens: options.maxTokens ?? 256, temperature: 0.2, stop: ['\n\n'], ...options.params },
      tools: options.tools,
      responseFormat: options.responseFormat,
      logprobs: options.logprobs,
      signal: options.signal ?? new AbortController().signal,
    });
    for await (const item of stream) {
      if ('delta' in item) {
        out.kinds.push('delta');
        out.deltas.push(item.delta);
        out.logprobs.push(item.logprobs);
        await options.onDelta?.(out.deltas.length);
      } else if ('reasoning' in item) {
        out.kinds.push('reasoning');
        out.reasoning.push(item.reasoning);
      } else if ('toolCall' in item) {
        out.kinds.push('toolCall');
        out.toolCalls.push(item.toolCall);
      } else if ('finish' in item) {
        out.kinds.push('finish');
        out.finish = item.finish;
      } else {
        out.kinds.push('usage');
        out.usage = item.usage;
      }
    }
  } catch (err) {
    out.error = err;
  }
  return out;
}

describe('OpenAI-compatible provider against the fake server', () => {
  it('streams the deltas in order, then why the reply ended and the usage the provider reported', async () => {
    const out = await collect(providerFor());
    expect(out.error).toBeUndefined();
    expect(out.deltas.join('')).toBe(REPLY);
    expect(out.finish).toBe('stop');
    expect(out.kinds.slice(-2)).toEqual(['finish', 'usage']);
    expect(out.deltas).toEqual(tokenPieces(REPLY).filter((p) => p !== ''));
    expect(out.usage).toEqual({
      prompt_tokens: countPromptTokens(messages),
      completion_tokens: tokenPieces(REPLY).length,
    });

    const [request] = fake.requests;
    expect(request?.headers.authorization).toBe(`Bearer ${KEY}`);
    expect(request?.body).toMatchObject({
      model: 'fake-upstream-1',
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: 256,
      temperature: 0.2,
      stop: ['\n\n'],
      messages,
    });
    expect(request?.completed).toBe(true);
  });

  it('sends max_completion_tokens instead when the provider is configured so', async () => {
    await collect(providerFor({ maxTokensParam: 'max_completion_tokens' }), { maxTokens: 3 });
    expect(fake.requests[0]?.body.max_completion_tokens).toBe(3);
    expect(fake.requests[0]?.body).not.toHaveProperty('max_tokens');
  });

  it('yields the reasoning a model shows before its reply, under either name servers give it', async () => {
    const thought = 'The user greets me; I answer in kind.';
    for (const reasoningField of ['reasoning_content', 'reasoning'] as const) {
      fake.setBehaviour({ reasoning: thought, reasoningField });
      const out = await collect(providerFor());
      expect(out.error).toBeUndefined();
      expect(out.reasoning).toEqual(tokenPieces(thought).filter((p) => p !== ''));
      expect(out.deltas.join('')).toBe(REPLY);
      expect(out.kinds.lastIndexOf('reasoning')).toBeLessThan(out.kinds.indexOf('delta'));
    }
  });

  it('a connection dropped in the reasoning fails without retry: it was output', async () => {
    fake.setBehaviour({ reasoning: 'Let me think about this for a while.', dropAfterTokens: 2 });
    const out = await collect(withRetryBeforeFirstToken(providerFor(), { attempts: 3, baseDelayMs: 1 }));
    expect(out.reasoning).toHaveLength(2);
    expect(out.error).toMatchObject({ name: 'ProviderError', retryable: false, afterOutput: true });
    expect(fake.requests).toHaveLength(1);
  });

  it('asks for a seed and a reasoning effort when given, and for neither when not', async () => {
    await collect(providerFor(), { params: { seed: 42, reasoning_effort: 'low' } });
    await collect(providerFor());
    expect(fake.requests[0]!.body).toMatchObject({ seed: 42, reasoning_effort: 'low' });
    expect(fake.requests[1]!.body).not.toHaveProperty('seed');
    expect(fake.requests[1]!.body).not.toHaveProperty('reasoning_effort');
  });

  it('asks for log probabilities when told to, and yields each text piece with its tokens', async () => {
    const pieces = tokenPieces(REPLY).filter((p) => p !== '');
    const out = await collect(providerFor(), { logprobs: { top: 3 } });
    expect(out.error).toBeUndefined();
    expect(out.deltas).toEqual(pieces);
    expect(out.logprobs).toEqual(pieces.map((p, i) => [fakeLogprob(p, i, 3)]));
    // With no alternatives asked, none is named upstream (not every server takes 0).
    const bare = await collect(providerFor(), { logprobs: { top: 0 } });
    expect(bare.logprobs).toEqual(pieces.map((p, i) => [fakeLogprob(p, i, 0)]));
    // Not asked: none asked upstream, none passed on.
    const none = await collect(providerFor());
    expect(none.logprobs.every((l) => l === undefined)).toBe(true);
    const [asked, askedBare, plain] = fake.requests.map((r) => r.body);
    expect(asked).toMatchObject({ logprobs: true, top_logprobs: 3 });
    expect(askedBare).toMatchObject({ logprobs: true });
    expect(askedBare).not.toHaveProperty('top_logprobs');
    expect(plain).not.toHaveProperty('logprobs');
    expect(plain).not.toHaveProperty('top_logprobs');
  });

  it('passes on the log probabilities of OpenAI’s shape only, and those sent unasked not at all', async () => {
    const good = { token: 'Hi', logprob: -0.5, bytes: [72, 105], top_logprobs: [] };
    fake.setBehaviour({
      reply: 'Hi there',
      logprobsContent: [
        good,
        { token: 1, logprob: -1, bytes: null, top_logprobs: [] },
        { token: 'no number', logprob: '-1', bytes: null, top_logprobs: [] },
        { token: 'x', logprob: -1, bytes: [256], top_logprobs: 'none' },
        {
          token: 'y',
          logprob: -9999,
          top_logprobs: [{ token: 'a' }, { token: 'b', logprob: -3, bytes: null }, null],
        },
        null,
      ],
    });
    const out = await collect(providerFor(), { logprobs: { top: 2 } });
    expect(out.error).toBeUndefined();
    expect(out.deltas.join('')).toBe('Hi there');
    const expected = [
      good,
      { token: 'x', logprob: -1, bytes: null, top_logprobs: [] },
      { token: 'y', logprob: -9999, bytes: null, top_logprobs: [{ token: 'b', logprob: -3, bytes: null }] },
    ];
    expect(out.logprobs).toEqual(out.deltas.map(() => expected));

    // A server that sends them unasked is not listened to.
    const unasked = await collect(providerFor());
    expect(fake.requests.at(-1)!.body).not.toHaveProperty('logprobs');
    expect(unasked.deltas.join('')).toBe('Hi there');
    expect(unasked.logprobs.every((l) => l === undefined)).toBe(true);
  });

  it('passes on the finish reasons it knows, and no other', async () => {
    expect((await collect(providerFor(), { maxTokens: 3 })).finish).toBe('length');
    fake.setBehaviour({ finishReason: 'content_filter' });
    const filtered = await collect(providerFor());
    expect(filtered.error).toBeUndefined();
    expect(filtered.finish).toBe('content_filter');
    fake.setBehaviour({ finishReason: 'tool_calls' });
    expect((await collect(providerFor())).finish).toBe('tool_calls');
    fake.setBehaviour({ finishReason: 'function_call' });
    const other = await collect(providerFor());
    expect(other.error).toBeUndefined();
    expect(other.deltas.join('')).toBe(REPLY);
    expect(other.finish).toBeUndefined();
    expect(other.usage).toBeDefined();
  });

  it('offers the tools as asked, and yields the calls piece by piece after the text', async () => {
    const tools: ToolOptions = {
      tools: [
        {
          type: 'function',
          function: {
            name: 'weather',
            description: 'The weather in a city',
            parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
          },
        },
        { type: 'function', function: { name: 'time' } },
      ],
      choice: { type: 'function', function: { name: 'weather' } },
      parallel: false,
    };
    const args = '{"city":"Zürich 🎉"}';
    fake.setBehaviour({
      reply: 'Let me look.',
      toolCalls: [
        { id: 'call_a', name: 'weather', arguments: args },
        { id: 'call_b', name: 'time', arguments: '{}' },
      ],
    });
    const out = await collect(providerFor(), { tools });
    expect(out.error).toBeUndefined();
    const body = fake.requests[0]!.body;
    expect(body.tools).toEqual(tools.tools);
    expect(body.tool_choice).toEqual(tools.choice);
    expect(body.parallel_tool_calls).toBe(false);
    expect(out.deltas.join('')).toBe('Let me look.');
    expect(out.kinds.slice(-2)).toEqual(['finish', 'usage']);
    expect(out.kinds.indexOf('toolCall')).toBeGreaterThan(out.kinds.lastIndexOf('delta'));
    expect(out.finish).toBe('tool_calls');
    const pieces = tokenPieces(args).filter((p) => p !== '');
    expect(out.toolCalls).toEqual([
      { index: 0, id: 'call_a', name: 'weather' },
      ...pieces.map((a) => ({ index: 0, arguments: a })),
      { index: 1, id: 'call_b', name: 'time' },
      ...tokenPieces('{}').map((a) => ({ index: 1, arguments: a })),
    ]);
  });

  it('asks for the reply format given, and for none when none is', async () => {
    const format = {
      type: 'json_schema' as const,
      json_schema: { name: 'answer', schema: { type: 'object' }, strict: true },
    };
    await collect(providerFor(), { responseFormat: format });
    await collect(providerFor());
    expect(fake.requests[0]!.body.response_format).toEqual(format);
    expect(fake.requests[1]!.body).not.toHaveProperty('response_format');
  });

  it('offers no tools, and no tool options, when none are given', async () => {
    await collect(providerFor(), { tools: { tools: [], choice: 'auto', parallel: true } });
    await collect(providerFor());
    for (const r of fake.requests) {
      expect(r.body).not.toHaveProperty('tools');
      expect(r.body).not.toHaveProperty('tool_choice');
      expect(r.body).not.toHaveProperty('parallel_tool_calls');
    }
  });

  it('sends back the calls of a reply and their answers as they were made', async () => {
    const conversation: ChatMessageInput[] = [
      ...messages,
      {
        role: 'assistant',
        content: null,
        tool_calls: [{ id: 'call_a', type: 'function', function: { name: 'weather', arguments: '{}' } }],
      },
      { role: 'tool', tool_call_id: 'call_a', content: 'Sunny, 21 °C' },
    ];
    const out = await collect(providerFor(), { messages: conversation });
    expect(out.error).toBeUndefined();
    expect(fake.requests[0]!.body.messages).toEqual(conversation);
  });

  it('a connection dropped in a tool call fails without retry, after the pieces that arrived', async () => {
    fake.setBehaviour({
      reply: '',
      toolCalls: [{ id: 'call_a', name: 'weather', arguments: '{"city":"Paris"}' }],
      dropAfterTokens: 2,
    });
    const out = await collect(withRetryBeforeFirstToken(providerFor(), { attempts: 3, baseDelayMs: 1 }));
    expect(out.deltas).toEqual([]);
    expect(out.toolCalls).toHaveLength(2);
    expect(out.error).toMatchObject({ name: 'ProviderError', retryable: false, afterOutput: true });
    expect(fake.requests).toHaveLength(1);
  });

  it('yields no usage when the provider sends none', async () => {
    fake.setBehaviour({ omitUsage: true });
    const out = await collect(providerFor());
    expect(out.error).toBeUndefined();
    expect(out.deltas.join('')).toBe(REPLY);
    expect(out.usage).toBeUndefined();
    expect(out.finish).toBe('stop');
  });

  it('fails with a retryable ProviderError on 429, and the retry helper gets the reply on the next attempt', async () => {
    fake.setBehaviour({ fail: { status: 429, times: 1, retryAfterSeconds: 0 } });
    const raw = await collect(providerFor());
    expect(raw.error).toBeInstanceOf(ProviderError);
    expect(raw.error).toMatchObject({ status: 429, retryable: true, afterOutput: false, retryAfterMs: 0 });
    expect(raw.deltas).toEqual([]);

    fake.setBehaviour({ fail: { status: 429, times: 1 } });
    const retries: number[] = [];
    const provider = withRetryBeforeFirstToken(providerFor(), {
      attempts: 3,
      baseDelayMs: 1,
      onRetry: (err, attempt) => retries.push(attempt, err.status ?? 0),
    });
    const out = await collect(provider);
    expect(out.error).toBeUndefined();
    expect(out.deltas.join('')).toBe(REPLY);
    expect(retries).toEqual([1, 429]);
    expect(fake.requests).toHaveLength(3);
  });

  it('gives up after the configured attempts on a provider that keeps failing with 500', async () => {
    fake.setBehaviour({ fail: { status: 500 } });
    const out = await collect(withRetryBeforeFirstToken(providerFor(), { attempts: 3, baseDelayMs: 1 }));
    expect(out.error).toBeInstanceOf(ProviderError);
    expect(out.error).toMatchObject({ status: 500, retryable: true });
    expect(fake.requests).toHaveLength(3);
  });

  it('does not retry a refused key (401)', async () => {
    const out = await collect(
      withRetryBeforeFirstToken(providerFor({ apiKey: 'sk-wrong' }), { attempts: 3, baseDelayMs: 1 }),
    );
    expect(out.error).toMatchObject({ name: 'ProviderError', status: 401, retryable: false });
    expect(fake.requests).toHaveLength(0); // refused before it counts as a chat request
    expect(String((out.error as Error).message)).not.toContain('sk-wrong');
  });

  it('treats a refused connection as retryable', async () => {
    const closed = await freePort();
    const out = await collect(providerFor({ baseURL: `http://127.0.0.1:${closed}/v1` }));
    expect(out.error).toBeInstanceOf(ProviderError);
    expect(out.error).toMatchObject({ retryable: true, status: undefined });
  });

  it('a connection dropped mid-stream fails without retry, after the deltas that arrived', async () => {
    fake.setBehaviour({ dropAfterTokens: 3 });
    const out = await collect(withRetryBeforeFirstToken(providerFor(), { attempts: 3, baseDelayMs: 1 }));
    expect(out.deltas).toEqual(
      tokenPieces(REPLY)
        .filter((p) => p !== '')
        .slice(0, 3),
    );
    expect(out.error).toBeInstanceOf(ProviderError);
    expect(out.error).toMatchObject({ retryable: false, afterOutput: true });
    expect(out.usage).toBeUndefined();
    expect(fake.requests).toHaveLength(1);
    expect(fake.requests[0]?.dropped).toBe(true);
  });

  it('a connection dropped before the first token is retryable', async () => {
    fake.setBehaviour({ dropAfterTokens: 0 });
    const out = await collect(providerFor());
    expect(out.deltas).toEqual([]);
    expect(out.error).toMatchObject({ name: 'ProviderError', retryable: true, afterOutput: false });
  });

  it('abort stops the upstream request: the fake sees its connection closed', async () => {
    const long = Array.from({ length: 200 }, (_, i) => `word${i}`).join(' ');
    fake.setBehaviour({ reply: long, tokenDelayMs: 20 });
    const controller = new AbortController();
    const out = await collect(providerFor(), {
      signal: controller.signal,
      onDelta: (n) => n === 2 && controller.abort(),
    });
    expect(out.error).toBeInstanceOf(LlmAborted);
    expect(out.deltas.length).toBe(2);
    const [request] = fake.requests;
    await request?.closed;
    expect(request?.closedByClient).toBe(true);
    expect(request?.completed).toBe(false);
    expect(request?.chunksSent).toBeLessThan(tokenPieces(long).length);
  });

  it('an abort while waiting for the response also ends with LlmAborted', async () => {
    fake.setBehaviour({ hang: true });
    const controller = new AbortController();
    const pending = collect(providerFor(), { signal: controller.signal });
    await waitFor(() => fake.requests.length === 1);
    controller.abort();
    const out = await pending;
    expect(out.error).toBeInstanceOf(LlmAborted);
    await fake.requests[0]?.closed;
    expect(fake.requests[0]?.closedByClient).toBe(true);
  });

  it('a provider that never answers, or stops sending, fails retryably after the idle timeout', async () => {
    fake.setBehaviour({ hang: true });
    const silent = await collect(providerFor({ idleTimeoutMs: 150 }));
    expect(silent.error).toMatchObject({ name: 'ProviderError', retryable: true });
    expect((silent.error as Error).message).toMatch(/no response for 150 ms/);

    fake.setBehaviour({ hang: 'after-headers' });
    const stalled = await collect(providerFor({ idleTimeoutMs: 150 }));
    expect(stalled.error).toMatchObject({ name: 'ProviderError', retryable: true });
    await Promise.all(fake.requests.map((r) => r.closed));
    expect(fake.requests.map((r) => r.closedByClient)).toEqual([true, true]);
  });

  it('times the silences of the provider only: a steady reply longer than the idle timeout, or a slow reader, is not cut', async () => {
    fake.setBehaviour({ tokenDelayMs: 40 });
    const started = performance.now();
    const steady = await collect(providerFor({ idleTimeoutMs: 150 }));
    expect(steady.error).toBeUndefined();
    expect(steady.deltas.join('')).toBe(REPLY);
    expect(performance.now() - started).toBeGreaterThan(450); // three idle timeouts, and more

    fake.setBehaviour({ tokenDelayMs: 0 });
    // The reader holds each of the first two deltas past the timeout: its time, not the provider's.
    const slow = await collect(providerFor({ idleTimeoutMs: 150 }), {
      onDelta: (n) => (n <= 2 ? sleep(200) : undefined),
    });
    expect(slow.error).toBeUndefined();
    expect(slow.deltas.join('')).toBe(REPLY);
  });

  it('times the silence again once a reader that held a delta past the timeout asks for more', async () => {
    // One delta, then a second only after half a minute: the reader holds the first past the
    // timeout, and the provider's silence after that is cut.
    fake.setBehaviour({ tokenDelayMs: 30_000 });
    const held = await collect(providerFor({ idleTimeoutMs: 150 }), { onDelta: () => sleep(200) });
    expect(held.deltas).toHaveLength(1);
    expect(held.error).toMatchObject({ name: 'ProviderError', afterOutput: true });
    expect((held.error as Error).message).toMatch(/no data for 150 ms/);
    // Cut, not waited out to the next delta: the client left while the provider had sent the first only.
    const [request] = fake.requests;
    await request?.closed;
    expect(request?.closedByClient).toBe(true);
    expect(request?.chunksSent).toBe(1);
  });

  it('keeps no timer going for a reader that takes a delta and never asks for more', async () => {
    const reader = providerFor({ idleTimeoutMs: 50 })
      .stream({ model, messages, params: { max_tokens: 256 }, signal: new AbortController().signal })
      [Symbol.asyncIterator]();
    expect(await reader.next()).toMatchObject({ done: false, value: { delta: expect.any(String) } });
    // Timers of the idle timeout's length set while the reader holds the delta (a timer that
    // re-arms itself would set one every 50 ms).
    const setTimeoutSpy = jest.spyOn(globalThis, 'setTimeout');
    try {
      await sleep(300);
      expect(setTimeoutSpy.mock.calls.filter(([, ms]) => typeof ms === 'number' && ms <= 50)).toEqual([]);
    } finally {
      setTimeoutSpy.mockRestore();
      await reader.return?.(undefined);
    }
  });
});

describe('an event stream as servers write it', () => {
  /** A server answering every request with `pieces`, written one by one with a pause between. */
  async function serve(pieces: (string | Buffer)[]) {
    const seen = { closedByClient: false, closed: Promise.resolve() };
    const server = http.createServer((req, res) => {
      let settle!: () => void;
      seen.closed = new Promise<void>((resolve) => (settle = resolve));
      let finished = false;
      res.on('close', () => {
        if (!finished) seen.closedByClient = true;
        settle();
      });
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        void (async () => {
          for (const piece of pieces) {
            if (res.destroyed) return;
            res.write(piece);
            await sleep(5);
          }
          finished = true;
          res.end();
        })();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    servers.push(server);
    return { url: `http://127.0.0.1:${port}/v1`, seen };
  }
  const servers: http.Server[] = [];
  afterEach(async () => {
    await Promise.all(
      servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve).closeAllConnections())),
    );
  });

  /** An event of a streamed reply with these fields. */
  const event = (fields: object) =>
    `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', ...fields })}\n\n`;
  const chunk = (delta: object) => event({ choices: [{ index: 0, delta, finish_reason: null }] });
  const finishChunk = event({ choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] });
  const usageChunk = event({ choices: [], usage: { prompt_tokens: 7, completion_tokens: 3 } });

  it('reads events cut anywhere across reads, inside a character too, with CRLF lines, comments and names', async () => {
    const body = Buffer.from(
      ': keep-alive\r\n\r\n' +
        chunk({ role: 'assistant', content: '你好' }).replaceAll('\n', '\r\n') +
        'event: message\n' +
        chunk({ content: ' 🎉 ok' }) +
        finishChunk +
        usageChunk +
        'data: [DONE]\n\n',
    );
    // Cut inside 你 (three bytes), between \r and \n, inside "data:", and inside 🎉 (four bytes).
    const cuts = [
      body.indexOf('你') + 1,
      body.indexOf('\r\n\r\ndata') + 1,
      body.indexOf('data: {"id"') + 3,
      body.indexOf('🎉') + 2,
      body.length,
    ].sort((a, b) => a - b);
    const pieces = cuts.map((end, i) => body.subarray(i === 0 ? 0 : cuts[i - 1], end));
    const { url } = await serve(pieces);
    const out = await collect(providerFor({ baseURL: url }));
    expect(out.error).toBeUndefined();
    expect(out.deltas).toEqual(['你好', ' 🎉 ok']);
    expect(out.finish).toBe('stop');
    expect(out.usage).toEqual({ prompt_tokens: 7, completion_tokens: 3 });
  });

  it('counts a comment as a sign of life: a provider sending keep-alives while its model thinks is not cut', async () => {
    // Eight pieces to a comment, each followed by the server's 5 ms pause: a comment about every
    // 40 ms, for about a second, twice the idle timeout (which leaves a stall of the test's own
    // event loop room to pass unnoticed).
    const keepAlives = Array.from({ length: 24 }, () => ': processing\n\n');
    const spaced = keepAlives.flatMap((c) => [c, ...Array.from({ length: 7 }, () => '')]);
    const reply = [chunk({ content: 'at last' }), finishChunk, 'data: [DONE]\n\n'];
    const { url } = await serve([...spaced, ...reply]);
    const out = await collect(providerFor({ baseURL: url, idleTimeoutMs: 500 }));
    expect(out.error).toBeUndefined();
    expect(out.deltas).toEqual(['at last']);

    // The same silence without them is cut.
    const { url: quiet } = await serve([...spaced.map(() => ''), ...reply]);
    const cut = await collect(providerFor({ baseURL: quiet, idleTimeoutMs: 500 }));
    expect(cut.error).toMatchObject({ name: 'ProviderError', retryable: true });
    expect((cut.error as Error).message).toMatch(/no data for 500 ms/);
  });

  it('ignores what comes after [DONE]', async () => {
    const { url } = await serve([
      chunk({ content: 'one' }),
      finishChunk,
      'data: [DONE]\n\n',
      chunk({ content: 'two' }),
    ]);
    const out = await collect(providerFor({ baseURL: url }));
    expect(out.error).toBeUndefined();
    expect(out.deltas).toEqual(['one']);
  });

  it('an error the provider sends in the stream fails with its message: retryable before any output, not after', async () => {
    const error = 'data: {"error":{"message":"The server is overloaded","type":"server_error"}}\n\n';
    const before = await serve([error]);
    const early = await collect(providerFor({ baseURL: before.url }));
    expect(early.error).toBeInstanceOf(ProviderError);
    expect(early.error).toMatchObject({ retryable: true, afterOutput: false, status: undefined });
    expect((early.error as Error).message).toMatch(/overloaded/);

    const after = await serve([chunk({ content: 'half' }), error]);
    const late = await collect(providerFor({ baseURL: after.url }));
    expect(late.deltas).toEqual(['half']);
    expect(late.error).toMatchObject({ name: 'ProviderError', retryable: false, afterOutput: true });
    expect((late.error as Error).message).toMatch(/overloaded/);
  });

  it('a body that is not the events of a reply fails retryably', async () => {
    const { url } = await serve(['data: <html>Bad gateway</html>\n\n']);
    const out = await collect(providerFor({ baseURL: url }));
    expect(out.error).toMatchObject({ name: 'ProviderError', retryable: true, afterOutput: false });
    expect((out.error as Error).message).toMatch(/the stream broke/);
  });

  it('an event that never ends fails once past its limit, instead of being held whole', async () => {
    const piece = 'x'.repeat(1024 * 1024);
    const { url, seen } = await serve(['data: ', ...Array.from({ length: 40 }, () => piece)]);
    const out = await collect(providerFor({ baseURL: url }));
    expect(out.error).toMatchObject({ name: 'ProviderError', retryable: true });
    expect((out.error as Error).message).toMatch(/max buffer size/);
    await seen.closed;
    expect(seen.closedByClient).toBe(true);
  });

  it('a reader that stops early closes the connection', async () => {
    const long = Array.from({ length: 200 }, (_, i) => `word${i}`).join(' ');
    fake.setBehaviour({ reply: long, tokenDelayMs: 20 });
    const reader = providerFor()
      .stream({ model, messages, params: { max_tokens: 256 }, signal: new AbortController().signal })
      [Symbol.asyncIterator]();
    expect(await reader.next()).toMatchObject({ done: false, value: { delta: expect.any(String) } });
    await reader.return?.(undefined);
    const [request] = fake.requests;
    await request?.closed;
    expect(request?.closedByClient).toBe(true);
    expect(request?.completed).toBe(false);
  });
});

describe('a configured catalog', () => {
  it('reaches its provider with the key from the environment and the upstream model name', async () => {
    const catalog = createModelCatalog(
      testConfig({
        MODELS_JSON: JSON.stringify({
          providers: [{ id: 'fake', type: 'openai', base_url: fake.url, api_key_env: 'FAKE_PROVIDER_KEY' }],
          models: [
            {
              id: 'chat',
              provider: 'fake',
              upstream: 'fake-upstream-2',
              context_length: 4096,
              default_max_tokens: 100,
              max_output_tokens: 1000,
              prompt_price: 1,
              completion_price: 2,
            },
          ],
        }),
      }),
      { env: { FAKE_PROVIDER_KEY: KEY } },
    );
    const chat = catalog.get('chat')!;
    const deltas: string[] = [];
    for await (const item of catalog.provider(chat).stream({
      model: chat,
      messages,
      params: { max_tokens: 100 },
      signal: new AbortController().signal,
    })) {
      if ('delta' in item) deltas.push(item.delta);
    }
    expect(deltas.join('')).toBe(REPLY);
    expect(fake.requests[0]?.body.model).toBe('fake-upstream-2');
    expect(fake.requests[0]?.headers.authorization).toBe(`Bearer ${KEY}`);
  });
});

describe('the fake server, through the official client', () => {
  it('answers non-streaming requests as one chat.completion with usage, and lists its models', async () => {
    const client = new OpenAI({ apiKey: KEY, baseURL: fake.url, maxRetries: 0 });
    const completion = await client.chat.completions.create({
      model: 'fake-model',
      messages: [{ role: 'user', content: 'Hi' }],
      max_tokens: 4,
    });
    expect(completion.object).toBe('chat.completion');
    expect(completion.choices[0]?.message.content).toBe(tokenPieces(REPLY).slice(0, 4).join(''));
    expect(completion.choices[0]?.finish_reason).toBe('length');
    expect(completion.usage).toMatchObject({ completion_tokens: 4, prompt_tokens: expect.any(Number) });
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(['fake-model']);
  });
});

async function waitFor(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((r) => setTimeout(r, 5));
}

/** A port nothing listens on. */
async function freePort(): Promise<number> {
  const server = http.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
