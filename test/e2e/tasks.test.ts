import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import OpenAI from 'openai';
import type { NewEvent } from '../../src/eventstore/port';
import { chatStream } from '../../src/events/chats';
import { taskStream } from '../../src/events/tasks';
import { ledgerStream } from '../../src/events/ledger';
import { allResources } from '../../src/http/resources';
import { CONTEXT_MARGIN, IMAGE_TOKENS_AT_MOST } from '../../src/platform/llm/context';
import {
  countPromptTokens,
  countTextTokens,
  tokenPieces,
  TOKENS_PER_IMAGE,
} from '../../src/platform/llm/tokens';
import type { ChatMessageInput } from '../../src/platform/llm/types';
import { allProjectors } from '../../src/projections';
import { listOverdueTasks } from '../../src/queries/tasks';
import { taskDecider } from '../../src/commands/tasks/decider';
import { chatDecider } from '../../src/commands/chats/decider';
import { ledgerDecider } from '../../src/commands/ledger/decider';
import { chatSlotStream, userSlotsStream } from '../../src/commands/tasks/slots';
import { sql } from 'kysely';
import sharp from 'sharp';
import supertest from 'supertest';
import { CommandHandler } from '../../src/commands/handler';
import { TaskFlow } from '../../src/commands/tasks/flow';
import { createApp } from '../../src/http/app';
import { uuidV7Ids } from '../../src/platform/clock';
import { DependencyDown } from '../../src/platform/errors';
import { createTestApp, taskFlowOf, type TestApp } from '../support/app';
import { fakeLogprob, startFakeOpenAI, type FakeOpenAI } from '../support/fakes/openai';

const API = '/api/v1';
const REPLY = 'The quick brown fox jumps over the lazy dog, and then it naps in the warm afternoon sun.';
/** Credits per 1M tokens: large enough that every reply visibly costs something. */
const PROMPT_PRICE = 100_000;
const COMPLETION_PRICE = 200_000;

let fake: FakeOpenAI;
let t: TestApp;
let server: http.Server;
let baseUrl: string;
let redis: Redis | undefined;

beforeAll(async () => {
  fake = await startFakeOpenAI({ reply: REPLY, tokenDelayMs: 0, firstTokenDelayMs: 0 });
  const models = {
    default_model: 'fake-model',
    providers: [{ id: 'fake', type: 'openai', base_url: fake.url, api_key: 'test-key' }],
    models: [
      {
        id: 'fake-model',
        provider: 'fake',
        context_length: 8192,
        default_max_tokens: 100,
        max_output_tokens: 1000,
        prompt_price: PROMPT_PRICE,
        completion_price: COMPLETION_PRICE,
      },
      {
        id: 'fake-luxury',
        provider: 'fake',
        upstream: 'fake-model',
        context_length: 8192,
        default_max_tokens: 1000,
        max_output_tokens: 1000,
        prompt_price: 1_000_000,
        completion_price: 5_000_000,
      },
      {
        // A window a few turns of a chat outgrow.
        id: 'fake-narrow',
        provider: 'fake',
        upstream: 'fake-model',
        context_length: 700,
        default_max_tokens: 100,
        max_output_tokens: 200,
        prompt_price: PROMPT_PRICE,
        completion_price: COMPLETION_PRICE,
      },
      {
        // Used by the metrics test alone, so its counts are its own.
        id: 'fake-metered',
        provider: 'fake',
        upstream: 'fake-model',
        context_length: 8192,
        default_max_tokens: 100,
        max_output_tokens: 1000,
        prompt_price: PROMPT_PRICE,
        completion_price: COMPLETION_PRICE,
      },
      {
        id: 'local-echo',
        provider: 'local',
        context_length: 8192,
        default_max_tokens: 100,
        max_output_tokens: 1000,
        prompt_price: PROMPT_PRICE,
        completion_price: COMPLETION_PRICE,
      },
    ],
  };
  // With Redis, task output goes through Redis Streams and cancels through its pub/sub.
  redis = process.env.REDIS_URL ? new Redis(process.env.REDIS_URL) : undefined;
  t = await createTestApp({
    deps: redis ? { redis } : {},
    resources: [...allResources],
    projectors: allProjectors,
    config: {
      MODELS_JSON: JSON.stringify(models),
      LLM_RETRY_BASE_DELAY_MS: 5,
      SSE_HEARTBEAT_MS: 100,
      // Shorter than the model's idle timeout below, so a model slow to start can be waited past.
      COMPLETION_OPEN_WAIT_MS: 300,
      // A provider that stops sending fails the task this soon.
      LLM_IDLE_TIMEOUT_MS: 1_000,
    },
  });
  const handle = t.app.callback();
  server = http.createServer((req, res) => void handle(req, res));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}${API}`;
});

afterEach(() =>
  fake.setBehaviour({
    reply: REPLY,
    tokenDelayMs: 0,
    firstTokenDelayMs: 0,
    fail: undefined,
    omitUsage: false,
    dropAfterTokens: undefined,
    hang: false,
    usage: undefined,
    pieces: undefined,
    finishReason: undefined,
    toolCalls: undefined,
    reasoning: undefined,
    reasoningField: undefined,
    logprobsContent: undefined,
  }),
);

afterAll(async () => {
  server?.closeAllConnections();
  await new Promise((resolve) => server?.close(resolve));
  await t?.close();
  await redis?.quit();
  await fake?.close();
});

let users = 0;
/** A registered user (with the sign-up credits, 1000) and their bearer header. */
async function newUser(): Promise<{ id: string; auth: string }> {
  const username = `tasker_${process.pid}_${++users}`;
  const created = await t.http.post(`${API}/users`).send({ username, password: 'correct horse battery' });
  expect(created.status).toBe(201);
  const token = await t.http
    .post(`${API}/session/oauth2/token`)
    .type('form')
    .send({ username, password: 'correct horse battery' });
  expect(token.status).toBe(200);
  return {
    id: (created.body as { id: string }).id,
    auth: `Bearer ${(token.body as { access_token: string }).access_token}`,
  };
}

/** A chat from a private preset of `model` that opens with `opening`, with nothing sent in it yet. */
async function presetChat(
  auth: string,
  model = 'fake-model',
  opening: readonly { role: string; content: string }[] = [{ role: 'system', content: 'You are terse.' }],
): Promise<string> {
  const preset = await t.http
    .post(`${API}/presets`)
    .set('Authorization', auth)
    .send({
      name: 'Helper',
      description: '',
      model,
      parameters: { temperature: 0.2 },
      messages: opening,
      public: false,
    });
  expect(preset.status).toBe(201);
  const chat = await t.http
    .post(`${API}/chats`)
    .set('Authorization', auth)
    .send({ preset_id: (preset.body as { id: string }).id });
  expect(chat.status).toBe(201);
  return (chat.body as { id: string }).id;
}

/** Sends a user message (its parts as API.md has them) to a chat. */
async function sendMessage(
  auth: string,
  chatId: string,
  content: ({ type: 'text'; text: string } | { type: 'image'; url: string })[],
  visible = true,
): Promise<void> {
  const sent = await t.http
    .post(`${API}/chats/${chatId}/messages`)
    .set('Authorization', auth)
    .send({ content, visible });
  expect(sent.status).toBe(201);
}

/** A chat (from a private preset) with one user message, ready for a reply. */
async function newChat(auth: string, model = 'fake-model'): Promise<string> {
  const chatId = await presetChat(auth, model);
  await sendMessage(auth, chatId, [{ type: 'text', text: 'Tell me about foxes.' }]);
  return chatId;
}

interface Started {
  id: string;
  hold: number;
}
async function startTask(auth: string, chatId: string, expected = 201, model?: string) {
  const res = await t.http
    .post(`${API}/tasks`)
    .set('Authorization', auth)
    .send({ chat_id: chatId, ...(model ? { model } : {}) });
  expect(res.status).toBe(expected);
  return res.body as Started;
}

interface SseEvent {
  event: string;
  data: Record<string, unknown>;
}
/** Reads a whole task stream (supertest buffers text/event-stream until it ends). */
async function stream(
  auth: string,
  taskId: string,
): Promise<{ status: number; events: SseEvent[]; headers: Record<string, string> }> {
  const res = await t.http.get(`${API}/tasks/${taskId}/stream`).set('Authorization', auth).buffer(true);
  return {
    status: res.status,
    events: parseSse(res.text ?? ''),
    headers: res.headers,
  };
}

function parseSse(text: string): SseEvent[] {
  return text
    .split('\n\n')
    .filter((block) => block.includes('data:'))
    .map((block) => {
      const lines = block.split('\n');
      const event = lines.find((l) => l.startsWith('event: '))?.slice(7) ?? 'message';
      const data = lines.find((l) => l.startsWith('data: '))!.slice(6);
      return { event, data: JSON.parse(data) as Record<string, unknown> };
    });
}

async function eventually<T>(read: () => Promise<T>, ok: (v: T) => boolean, what: string): Promise<T> {
  const until = Date.now() + 10_000;
  for (;;) {
    const v = await read();
    if (ok(v)) return v;
    if (Date.now() > until) throw new Error(`not reached: ${what}; last ${JSON.stringify(v)}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

type TaskView = {
  status: string;
  cost: number | null;
  message_id: string | null;
  usage: { prompt_tokens: number; completion_tokens: number } | null;
};
/** Waits until the fake has sent `n` tokens of the request that came after the first `asked`. */
const tokensSent = (asked: number, n: number) =>
  eventually(
    () => Promise.resolve(fake.requests[asked]?.chunksSent ?? 0),
    (sent) => sent >= n,
    `${n} tokens sent`,
  );

const task = async (auth: string, id: string) =>
  (await t.http.get(`${API}/tasks/${id}`).set('Authorization', auth)).body as TaskView;
const finished = (auth: string, id: string) =>
  eventually(
    () => task(auth, id),
    (v) => !['running', 'queued'].includes(v.status),
    `task ${id} finished`,
  );
type Credits = {
  balance: number;
  held: number;
  available: number;
  history: { items: { type: string; ref: string | null; amount: number }[] };
};
const credits = async (auth: string) =>
  (await t.http.get(`${API}/users/me/credits`).set('Authorization', auth)).body as Credits;
/** Once the user's credits show no hold and `spent` gone of the 1,000 they signed up with. */
const settledSpending = (auth: string, spent: number, what: string) =>
  eventually(
    () => credits(auth),
    (c) => c.held === 0 && c.balance === 1000 - spent,
    what,
  );
/** A chat's messages as the read model has them: none while the chat itself is not projected yet (404). */
const messages = async (auth: string, chatId: string) =>
  (
    (await t.http.get(`${API}/chats/${chatId}/messages`).set('Authorization', auth)).body as {
      items?: { id: string; role: string; content: { type: string; text?: string }[] }[];
    }
  ).items ?? [];

/** The chat's last message, once the chats read model has caught up with `messageId` (if given). */
const lastMessage = (auth: string, chatId: string, messageId?: string | null) =>
  eventually(
    async () => (await messages(auth, chatId)).at(-1),
    (m) => m !== undefined && (messageId ? m.id === messageId : true),
    `message ${messageId ?? 'last'} projected`,
  ).then((m) => m!);

/** The ledger events of a user, from the store (never the read model). */
async function ledgerEvents(userId: string) {
  const out: { type: string; data: Record<string, unknown> }[] = [];
  for (const e of await t.deps.store.readStream(ledgerStream(userId)))
    out.push({ type: e.type, data: e.data as Record<string, unknown> });
  return out;
}

/**
 * The global position of a task's last settlement step: its reply saved, its hold captured or
 * released, its chat's and its user's slots freed.
 */
async function settlementEnd(userId: string, chatId: string, taskId: string): Promise<bigint> {
  const steps: Record<string, string[]> = {
    [chatStream(chatId)]: ['MessageSent'],
    [ledgerStream(userId)]: ['CreditsCaptured', 'CreditsReleased'],
    [chatSlotStream(chatId)]: ['TaskSlotFreed'],
    [userSlotsStream(userId)]: ['TaskSlotFreed'],
  };
  const found: string[] = [];
  let end = 0n;
  for (const [name, types] of Object.entries(steps)) {
    for (const e of await t.deps.store.readStream(name)) {
      const d = e.data as { taskId?: string; holdId?: string };
      if (!types.includes(e.type) || (d.taskId ?? d.holdId) !== taskId) continue;
      found.push(e.type);
      if (e.position > end) end = e.position;
    }
  }
  // A failed task with nothing generated saves no reply.
  expect(found.filter((type) => type === 'TaskSlotFreed')).toHaveLength(2);
  expect(found.some((type) => type.startsWith('Credits'))).toBe(true);
  return end;
}

/** A second instance on the test app's store, with a command handler of its own: nothing it does waits on the app's. */
function secondInstance(config: Partial<TestApp['deps']['config']> = {}) {
  const commands = new CommandHandler(t.deps.store, { ids: uuidV7Ids });
  const flow = taskFlowOf(
    { ...t.deps, config: { ...t.deps.config, ...config }, buffer: t.deps.buffer! },
    commands,
  );
  return {
    commands,
    flow,
    http: supertest(createApp({ ...t.deps, commands, tasks: flow }, [...allResources]).callback()),
  };
}

/** Runs `before` ahead of each append (it may wait, or throw instead); restore the spy when done. */
function interceptAppends(before: (name: string, events: readonly NewEvent[]) => Promise<void>) {
  const store = t.deps.store;
  const append = store.append.bind(store);
  return jest.spyOn(store, 'append').mockImplementation(async (name, events, expected) => {
    await before(name, events);
    return append(name, events, expected);
  });
}

/** Once the chat's slot was last freed (its reply saved): `what` names it in a failure. */
const chatSlotFreed = (chatId: string, what: string) =>
  eventually(
    async () => (await t.deps.store.readStream(chatSlotStream(chatId))).at(-1)?.type,
    (type) => type === 'TaskSlotFreed',
    what,
  );

/** Makes each append `slow` picks wait 300 ms (`onSlow` told first); restore the spy when done. */
function slowAppends(slow: (name: string, events: readonly NewEvent[]) => boolean, onSlow?: () => void) {
  return interceptAppends(async (name, events) => {
    if (!slow(name, events)) return;
    onSlow?.();
    await new Promise((resolve) => setTimeout(resolve, 300));
  });
}

/** The user's one task settled: one hold, captured once, none left open. */
async function expectChargedOnce(u: { id: string; auth: string }): Promise<void> {
  await eventually(
    () => credits(u.auth),
    (c) => c.held === 0,
    'settled',
  );
  const types = (await ledgerEvents(u.id)).map((e) => e.type);
  expect(types.filter((x) => x === 'CreditsReserved')).toHaveLength(1);
  expect(types.filter((x) => x === 'CreditsCaptured')).toHaveLength(1);
}

/** What `call` was rejected with (an SDK's error); a call that succeeds fails the test. */
const failureOf = <E>(call: Promise<unknown>): Promise<E> =>
  call.then(
    () => {
      throw new Error('expected the call to fail');
    },
    (e: unknown) => e as E,
  );

const creditsFor = (tokens: number, price: number) => Math.ceil((tokens * price) / 1_000_000);

interface RecordedCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}
/** The official client, as a user's app makes it: our base URL, the access token as its key. */
const clientOf = (u: { auth: string }) =>
  new OpenAI({ apiKey: u.auth.slice('Bearer '.length), baseURL: baseUrl, maxRetries: 0 });

/** The failure recorded for a user's only task (a completion that failed has no id to find it by). */
async function failedTaskOf(userId: string) {
  const holdId = (await ledgerEvents(userId)).find((e) => e.type === 'CreditsReserved')!.data
    .holdId as string;
  const failed = (await t.deps.store.readStream(taskStream(holdId))).find((e) => e.type === 'TaskFailed')!;
  return failed.data as { taskId: string; cost: number; usage: { completionTokens: number } };
}

/** What the task of a completion recorded (a completion's id is `chatcmpl-` and its task's id). */
async function recordedTask(completionId: string) {
  const taskId = completionId.replace(/^chatcmpl-/, '');
  const events = await t.deps.store.readStream(taskStream(taskId));
  const created = events.find((e) => e.type === 'TaskCreated')!.data as {
    promptTokens: number;
    hold: number;
  };
  const completed = events.find((e) => e.type === 'TaskCompleted')?.data as
    | {
        content: string;
        usage: { promptTokens: number; completionTokens: number };
        cost: number;
        usageSource: string;
        finishReason?: string;
        toolCalls?: RecordedCall[];
        reasoning?: string;
      }
    | undefined;
  return { taskId, created, completed };
}

/** A non-streamed completion of one short question, answered with the fake's reply. */
async function answered(u: { auth: string }) {
  const completion = await t.http
    .post(`${API}/chat/completions`)
    .set('Authorization', u.auth)
    .send({ model: 'fake-model', messages: [{ role: 'user', content: 'Hi.' }] });
  expect(completion.status).toBe(200);
  expect(
    (completion.body as { choices: { message: { content: string } }[] }).choices[0]!.message.content,
  ).toBe(REPLY);
  return completion;
}

/** The types of the events of a completion's task, in order. */
const recordedTaskEvents = async (completionId: string) =>
  (await t.deps.store.readStream(taskStream(completionId.replace(/^chatcmpl-/, '')))).map((e) => e.type);

/** The ledger's movements on one hold, as `[type, amount]`. */
const holdMovements = async (userId: string, holdId: string) =>
  (await ledgerEvents(userId)).filter((e) => e.data.holdId === holdId).map((e) => [e.type, e.data.amount]);

interface StreamedCall {
  id: string | undefined;
  type: string | undefined;
  name: string | undefined;
  arguments: string;
}
/**
 * A streamed completion put together as a client does: its text, its calls by index (id, type and
 * name from a call's first piece, the arguments from all of them), the chunks of each call, and
 * whether text or a call came in each chunk, in order.
 */
async function readStreamed(chunks: AsyncIterable<OpenAI.ChatCompletionChunk>) {
  const read = {
    id: '',
    text: '',
    calls: [] as StreamedCall[],
    chunksPerCall: [] as number[],
    order: [] as ('text' | 'call')[],
    finishes: [] as string[],
    usage: undefined as OpenAI.CompletionUsage | undefined,
  };
  for await (const c of chunks) {
    read.id = c.id;
    if (c.usage) read.usage = c.usage;
    const choice = c.choices[0];
    if (!choice) continue;
    if (choice.finish_reason) read.finishes.push(choice.finish_reason);
    if (choice.delta.content) {
      read.text += choice.delta.content;
      read.order.push('text');
    }
    for (const piece of choice.delta.tool_calls ?? []) {
      read.order.push('call');
      const call = read.calls[piece.index];
      if (call) {
        // Only a call's first piece names it.
        expect(piece).toEqual({ index: piece.index, function: { arguments: expect.any(String) } });
        call.arguments += piece.function!.arguments;
      } else {
        read.calls[piece.index] = {
          id: piece.id,
          type: piece.type,
          name: piece.function?.name,
          arguments: piece.function?.arguments ?? '',
        };
      }
      read.chunksPerCall[piece.index] = (read.chunksPerCall[piece.index] ?? 0) + 1;
    }
  }
  return read;
}

/** A streamed completion of 'Hi.' asked over the wire (fetch), for what the SDK hides: the response's opening. */
const streamedHi = (auth: string, signal?: AbortSignal) =>
  fetch(`${baseUrl}/chat/completions`, {
    method: 'POST',
    headers: { authorization: auth, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'fake-model', messages: [{ role: 'user', content: 'Hi.' }], stream: true }),
    ...(signal ? { signal } : {}),
  });

/** The value of one sample of `/metrics` (0 when the series has none yet). */
async function sample(name: string, labels: Record<string, string> = {}) {
  const text = (await t.http.get('/metrics')).text;
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    const m = /^(\w+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const has = (m[2] ?? '').split(',').filter(Boolean);
    if (wanted.every((w) => has.includes(w))) return Number(m[3]);
  }
  return 0;
}

describe('tasks, end to end against an OpenAI-compatible provider', () => {
  it('holds, streams the reply, saves it as a message, captures the actual cost and releases the rest', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    fake.setBehaviour({ tokenDelayMs: 5 });
    const started = await startTask(u.auth, chatId);
    expect(started.hold).toBeGreaterThan(0);

    const s = await stream(u.auth, started.id);
    expect(s.status).toBe(200);
    expect(s.headers['content-type']).toMatch(/^text\/event-stream/);
    expect(s.headers['x-accel-buffering']).toBe('no');
    // Live, one delta per token; a stream claimed after the end gets the reply at once.
    const deltas = s.events.filter((e) => e.event === 'delta');
    expect(deltas.length).toBeGreaterThanOrEqual(1);
    expect(deltas.map((e) => e.data.content).join('')).toBe(REPLY);
    const done = s.events.at(-1)!;
    expect(done.event).toBe('done');
    const usage = done.data.usage as { prompt_tokens: number; completion_tokens: number };
    // The provider's own count (the fake counts the reply in o200k tokens).
    expect(usage.completion_tokens).toBe(countTextTokens(REPLY));
    const cost =
      creditsFor(usage.prompt_tokens, PROMPT_PRICE) + creditsFor(usage.completion_tokens, COMPLETION_PRICE);
    expect(done.data.cost).toBe(cost);
    expect(cost).toBeLessThan(started.hold);

    const view = await task(u.auth, started.id);
    expect(view).toMatchObject({ status: 'succeeded', cost, message_id: done.data.message_id });
    const reply = await lastMessage(u.auth, chatId, done.data.message_id as string);
    expect(reply).toMatchObject({
      id: done.data.message_id,
      role: 'assistant',
      content: [{ type: 'text', text: REPLY }],
    });

    const after = await eventually(
      () => credits(u.auth),
      (c) => c.held === 0 && c.balance < 1000,
      'capture projected',
    );
    expect(after).toMatchObject({ balance: 1000 - cost, held: 0, available: 1000 - cost });
    const types = (await ledgerEvents(u.id)).map((e) => e.type);
    expect(types.filter((x) => x === 'CreditsReserved')).toHaveLength(1);
    expect(types.filter((x) => x === 'CreditsCaptured')).toHaveLength(1);

    // The model was sent the whole history, the hidden system prompt included.
    const sent = fake.requests.at(-1)!.body;
    expect(sent.stream_options).toEqual({ include_usage: true });
    expect(sent.messages?.map((m) => m.role)).toEqual(['system', 'user']);
  });

  it('charges provider usage when reported, and counts with the tokenizer when not', async () => {
    const u = await newUser();
    fake.setBehaviour({ usage: { prompt_tokens: 40, completion_tokens: 50 } });
    const a = await startTask(u.auth, await newChat(u.auth));
    const done = (await stream(u.auth, a.id)).events.at(-1)!;
    expect(done.data.usage).toEqual({ prompt_tokens: 40, completion_tokens: 50 });
    expect(done.data.cost).toBe(creditsFor(40, PROMPT_PRICE) + creditsFor(50, COMPLETION_PRICE));

    fake.setBehaviour({ usage: undefined, omitUsage: true });
    const b = await startTask(u.auth, await newChat(u.auth));
    const doneB = (await stream(u.auth, b.id)).events.at(-1)!;
    expect((doneB.data.usage as { completion_tokens: number }).completion_tokens).toBe(
      countTextTokens(REPLY),
    );
  });

  it('counts with the tokenizer when the provider reports usage that is not a count', async () => {
    const u = await newUser();
    fake.setBehaviour({ usage: { prompt_tokens: -3, completion_tokens: null as unknown as number } });
    const started = await startTask(u.auth, await newChat(u.auth));
    const done = (await stream(u.auth, started.id)).events.at(-1)!;
    expect(done.event).toBe('done');
    expect((done.data.usage as { completion_tokens: number }).completion_tokens).toBe(countTextTokens(REPLY));
    expect(await task(u.auth, started.id)).toMatchObject({ status: 'succeeded' });
  });

  it('charges no more output than was asked for, however the provider or the tokenizer counts', async () => {
    const u = await newUser();
    /** A completion of at most 5 output tokens, answered with the settled ledger's movements. */
    const complete = async () => {
      const before = (await ledgerEvents(u.id)).length;
      const res = await t.http
        .post(`${API}/chat/completions`)
        .set('Authorization', u.auth)
        .send({
          model: 'fake-model',
          max_tokens: 5,
          messages: [{ role: 'user', content: 'Say something.' }],
        });
      expect(res.status).toBe(200);
      await eventually(
        () => credits(u.auth),
        (c) => c.held === 0,
        'settled',
      );
      const usage = (res.body as { usage: { prompt_tokens: number; completion_tokens: number } }).usage;
      const moved = (await ledgerEvents(u.id)).slice(before);
      const sum = (type: string) =>
        moved.filter((e) => e.type === type).reduce((n, e) => n + (e.data.amount as number), 0);
      return {
        usage,
        reserved: sum('CreditsReserved'),
        paid: sum('CreditsCaptured') + sum('CreditsCharged'),
      };
    };

    // The provider reports far more output than it was asked for.
    fake.setBehaviour({ usage: { prompt_tokens: 12, completion_tokens: 1_000_000 } });
    const reported = await complete();
    expect(reported.usage).toMatchObject({ prompt_tokens: 12, completion_tokens: 5 });
    expect(reported.paid).toBe(creditsFor(12, PROMPT_PRICE) + creditsFor(5, COMPLETION_PRICE));

    // No usage, and the reply counts past 5 tokens with our tokenizer (another model's tokens).
    fake.setBehaviour({ usage: undefined, omitUsage: true });
    expect(countTextTokens(REPLY)).toBeGreaterThan(5);
    const counted = await complete();
    expect(counted.usage.completion_tokens).toBe(5);
    expect(counted.paid).toBeLessThanOrEqual(counted.reserved);

    // Counts whose cost is past any whole number of credits: settled within the limits, not stuck.
    fake.setBehaviour({
      omitUsage: false,
      usage: { prompt_tokens: Number.MAX_SAFE_INTEGER - 1, completion_tokens: Number.MAX_SAFE_INTEGER - 1 },
    });
    const absurd = await complete();
    expect(absurd.usage).toMatchObject({ prompt_tokens: 8192, completion_tokens: 5 });
    expect(absurd.paid).toBe(creditsFor(8192, PROMPT_PRICE) + creditsFor(5, COMPLETION_PRICE));
    const spent = reported.paid + counted.paid + absurd.paid;
    await settledSpending(u.auth, spent, 'the three charges projected');
  });

  it('saves and charges a reply holding NUL or half a surrogate pair, which the database cannot store as sent', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    // A pair split across two chunks stays whole; NUL and a lone half become U+FFFD.
    fake.setBehaviour({ pieces: ['a\u0000b', ' \ud83d', '\ude00 ', 'c\ud800', 'd', '\udc00e'] });
    const started = await startTask(u.auth, chatId);
    const s = await stream(u.auth, started.id);
    const text = 'a\uFFFDb \u{1F600} c\uFFFDd\uFFFDe';
    expect(
      s.events
        .filter((e) => e.event === 'delta')
        .map((e) => e.data.content)
        .join(''),
    ).toBe(text);
    const done = s.events.at(-1)!;
    expect(done.event).toBe('done');
    expect(await task(u.auth, started.id)).toMatchObject({ status: 'succeeded', cost: done.data.cost });
    expect(done.data.cost).toBeGreaterThan(0);
    const reply = await lastMessage(u.auth, chatId, done.data.message_id as string);
    expect(reply.content).toEqual([{ type: 'text', text }]);
    const after = await eventually(
      () => credits(u.auth),
      (c) => c.held === 0,
      'capture projected',
    );
    expect(after.balance).toBe(1000 - (done.data.cost as number));
    // The chat takes its next task at once: nothing was left running.
    await startTask(u.auth, chatId);
  });

  it('answers each task command with X-Event-Position, and each task read honours X-Consistent-After', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    fake.setBehaviour({ tokenDelayMs: 50 });
    const created = await t.http.post(`${API}/tasks`).set('Authorization', u.auth).send({ chat_id: chatId });
    expect(created.status).toBe(201);
    const position = created.headers['x-event-position'] as string;
    expect(position).toMatch(/^\d+$/);
    const id = (created.body as Started).id;
    const read = (after: string) =>
      t.http.get(`${API}/tasks/${id}`).set('Authorization', u.auth).set('X-Consistent-After', after);
    expect((await read(position)).status).toBe(200);
    expect((await read('abc')).status).toBe(400);
    const cancelled = await t.http.post(`${API}/tasks/${id}/cancel`).set('Authorization', u.auth);
    expect(cancelled.status).toBe(202);
    expect(BigInt(cancelled.headers['x-event-position'] as string)).toBeGreaterThan(BigInt(position));
    expect((await read(String(BigInt(position) + 1_000_000n))).status).toBe(504);
    await finished(u.auth, id);
    const completion = await t.http
      .post(`${API}/chat/completions`)
      .set('Authorization', u.auth)
      .send({ model: 'fake-model', messages: [{ role: 'user', content: 'Hi.' }] });
    expect(completion.status).toBe(200);
    // Where its settlement ended: the charge is in what a read given it sees.
    const completedAt = completion.headers['x-event-position'] as string;
    expect(completedAt).toMatch(/^\d+$/);
    const captured = (await t.deps.store.readStream(ledgerStream(u.id))).filter(
      (e) => e.type === 'CreditsCaptured',
    );
    expect(captured.length).toBeGreaterThan(0);
    expect(BigInt(completedAt)).toBeGreaterThanOrEqual(captured.at(-1)!.position);
    const balance = await t.http
      .get(`${API}/users/me/credits`)
      .set('Authorization', u.auth)
      .set('X-Consistent-After', completedAt);
    const charged = captured.reduce((sum, e) => sum + (e.data as { amount: number }).amount, 0);
    expect(balance.body).toMatchObject({ balance: 1000 - charged, held: 0 });
  });

  it('ends a stream claimed on another instance after the task ended with the same position, settling nothing again', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    const { id } = await startTask(u.auth, chatId);
    expect((await finished(u.auth, id)).status).toBe('succeeded');
    const end = await eventually(
      () => settlementEnd(u.id, chatId, id).catch(() => null),
      (p) => p !== null,
      'the task settled',
    );
    // Another instance, with nothing of this task cached and no record of settling it: each step
    // finds itself done, and answers its stream's last event (nothing came after here).
    const { flow, http: other } = secondInstance();
    const appended: string[] = [];
    const append = jest.spyOn(t.deps.store, 'append');
    try {
      const res = await other.get(`${API}/tasks/${id}/stream`).set('Authorization', u.auth).buffer(true);
      expect(res.status).toBe(200);
      // Of this task's streams (the app's own background work may append elsewhere meanwhile).
      const mine = [
        taskStream(id),
        chatStream(chatId),
        ledgerStream(u.id),
        chatSlotStream(chatId),
        userSlotsStream(u.id),
      ];
      for (const [name] of append.mock.calls) if (mine.includes(name)) appended.push(name.split('-')[0]!);
      const done = parseSse(res.text).at(-1)!;
      expect(done.event).toBe('done');
      expect(BigInt(done.data.position as string)).toBe(end);
    } finally {
      append.mockRestore();
      await flow.close();
    }
    expect(appended).toEqual(['task']); // the claim alone
  });

  it('answers a completion with its reply though its settlement cannot be confirmed at once', async () => {
    const u = await newUser();
    const settle = jest
      .spyOn(TaskFlow.prototype, 'settle')
      .mockRejectedValueOnce(new DependencyDown('the store is away for a moment'));
    try {
      const completion = await answered(u);
      expect(settle).toHaveBeenCalledTimes(1);
      // The position of its start, which a read can still be given.
      const taskId = (completion.body as { id: string }).id.slice('chatcmpl-'.length);
      const created = (await t.deps.store.readStream(taskStream(taskId))).find(
        (e) => e.type === 'TaskCreated',
      );
      expect(completion.headers['x-event-position']).toBe(created!.position.toString());
    } finally {
      settle.mockRestore();
    }
    // Charged once all the same (by the instance that generated it).
    const captures = (await ledgerEvents(u.id)).filter((e) => e.type === 'CreditsCaptured');
    expect(captures).toHaveLength(1);
  });

  it('answers a completion whose outcome cannot be read at first, once the store answers again', async () => {
    const u = await newUser();
    const read = jest
      .spyOn(TaskFlow.prototype, 'read')
      .mockRejectedValueOnce(new Error('connection terminated unexpectedly'));
    try {
      await answered(u);
      expect(read.mock.calls.length).toBeGreaterThanOrEqual(2);
    } finally {
      read.mockRestore();
    }
    const captures = (await ledgerEvents(u.id)).filter((e) => e.type === 'CreditsCaptured');
    expect(captures).toHaveLength(1);
  });

  describe('a stream whose output cannot be read on', () => {
    const broken = () =>
      jest.spyOn(t.deps.buffer!, 'read').mockImplementationOnce(async function* () {
        yield* [];
        throw new Error('the buffer is gone');
      });

    it('tells a completion’s client it was cut short, ends it, and stops the reply nobody gets', async () => {
      const u = await newUser();
      fake.setBehaviour({ tokenDelayMs: 20 });
      const read = broken();
      let res;
      try {
        res = await t.http
          .post(`${API}/chat/completions`)
          .set('Authorization', u.auth)
          .send({ model: 'fake-model', messages: [{ role: 'user', content: 'Hi.' }], stream: true })
          .buffer(true)
          .parse((r, done) => {
            let text = '';
            r.on('data', (c: Buffer) => (text += c.toString()));
            r.on('end', () => done(null, text));
          });
      } finally {
        read.mockRestore();
      }
      const data = (res.body as string)
        .split('\n\n')
        .filter((b) => b.startsWith('data: '))
        .map((b) => b.slice(6));
      expect(data.at(-1)).toBe('[DONE]');
      expect(JSON.parse(data.at(-2)!)).toMatchObject({ error: { code: 'generation_failed' } });
      const id = (JSON.parse(data[0]!) as { id: string }).id;
      await eventually(
        () => recordedTaskEvents(id),
        (types) => types.includes('TaskCancelled'),
        'the reply stopped',
      );
    });

    it('tells a task stream’s client the stream broke off, and the task ends as it would have', async () => {
      const u = await newUser();
      const chatId = await newChat(u.auth);
      fake.setBehaviour({ tokenDelayMs: 20 });
      const started = await startTask(u.auth, chatId);
      const read = broken();
      let s;
      try {
        s = await stream(u.auth, started.id);
      } finally {
        read.mockRestore();
      }
      expect(s.events).toHaveLength(1);
      expect(s.events[0]).toEqual({
        event: 'error',
        data: {
          detail: `The stream broke off; the task goes on. GET /tasks/${started.id} shows how it ends.`,
        },
      });
      expect(await finished(u.auth, started.id)).toMatchObject({ status: 'succeeded' });
    });
  });

  it('ends a stream with where its settlement ended, so that reads given it show the reply and the charge', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    const started = await startTask(u.auth, chatId);
    const s = await stream(u.auth, started.id);
    // The claim answers with its position, as every command does.
    const claim = (await t.deps.store.readStream(taskStream(started.id))).find(
      (e) => e.type === 'TaskStreamClaimed',
    );
    expect(s.headers['x-event-position']).toBe(claim!.position.toString());
    const done = s.events.at(-1)!;
    expect(done.event).toBe('done');
    expect(done.data.position).toMatch(/^\d+$/);
    const settledAt = BigInt(done.data.position as string);
    // Exactly where its last step is: the reply, the capture and both slots freed are all at or before it.
    expect(await settlementEnd(u.id, chatId, started.id)).toBe(settledAt);

    const after = { 'X-Consistent-After': settledAt.toString() };
    const cost = done.data.cost as number;
    const balance = await t.http.get(`${API}/users/me/credits`).set('Authorization', u.auth).set(after);
    expect(balance.body).toMatchObject({ balance: 1000 - cost, held: 0, available: 1000 - cost });
    const chat = await t.http.get(`${API}/chats/${chatId}/messages`).set('Authorization', u.auth).set(after);
    expect((chat.body as { items: { id: string }[] }).items.at(-1)!.id).toBe(done.data.message_id);
    const listed = await t.http.get(`${API}/tasks`).set('Authorization', u.auth).set(after);
    expect((listed.body as { items: unknown[] }).items[0]).toMatchObject({
      id: started.id,
      status: 'succeeded',
      cost,
    });

    // A failed task's error says the same: its hold is back once read there.
    fake.setBehaviour({ fail: { status: 500 } });
    const failing = await startTask(u.auth, chatId);
    const f = await stream(u.auth, failing.id);
    expect(f.events.at(-1)!.event).toBe('error');
    const failedAt = BigInt(f.events.at(-1)!.data.position as string);
    expect(await settlementEnd(u.id, chatId, failing.id)).toBe(failedAt);
    const back = await t.http
      .get(`${API}/users/me/credits`)
      .set('Authorization', u.auth)
      .set('X-Consistent-After', failedAt.toString());
    expect(back.body).toMatchObject({ balance: 1000 - cost, held: 0, available: 1000 - cost });
  });

  it('answers 402 when available credits do not cover the hold, and holds nothing', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    const res = await t.http
      .post(`${API}/tasks`)
      .set('Authorization', u.auth)
      .send({ chat_id: chatId, model: 'fake-luxury' });
    expect(res.status).toBe(402);
    expect(res.type).toBe('application/problem+json');
    // Nothing is left taken: the chat takes a task at once.
    const ok = await startTask(u.auth, chatId);
    await stream(u.auth, ok.id);
    expect((await ledgerEvents(u.id)).filter((e) => e.type === 'CreditsReserved')).toHaveLength(1);
  });

  it('holds a prompt’s images at the most a provider may count for them, and charges what it reports', async () => {
    const u = await newUser();
    const chatId = await presetChat(u.auth);
    await sendMessage(u.auth, chatId, [
      { type: 'text', text: 'What are these?' },
      { type: 'image', url: 'https://images.example.com/a.jpg' },
      { type: 'image', url: 'https://images.example.com/b.jpg' },
    ]);
    // The provider counts both pictures at high detail: far above our count of them.
    const reported = 1_900;
    fake.setBehaviour({ usage: { prompt_tokens: reported } });
    const started = (await startTask(u.auth, chatId)) as Started & {
      prompt_tokens: number;
      max_tokens: number;
    };
    const atMost = started.prompt_tokens + 2 * (IMAGE_TOKENS_AT_MOST - TOKENS_PER_IMAGE);
    expect(reported).toBeGreaterThan(started.prompt_tokens);
    expect(reported).toBeLessThan(atMost);
    expect(started.hold).toBe(
      creditsFor(atMost, PROMPT_PRICE) + creditsFor(started.max_tokens, COMPLETION_PRICE),
    );
    const done = (await stream(u.auth, started.id)).events.at(-1)!;
    expect(done.event).toBe('done');
    const cost = done.data.cost as number;
    expect(cost).toBe(
      creditsFor(reported, PROMPT_PRICE) + creditsFor(countTextTokens(REPLY), COMPLETION_PRICE),
    );
    // All of it from the hold: captured, the rest released, nothing charged beyond it.
    expect(await holdMovements(u.id, started.id)).toEqual([
      ['CreditsReserved', started.hold],
      ['CreditsCaptured', cost],
      ['CreditsReleased', started.hold - cost],
    ]);
    expect((await ledgerEvents(u.id)).some((e) => e.type === 'CreditsCharged')).toBe(false);

    // With too little left for what its pictures may cost, a completion is refused before it is asked.
    await t.deps.commands.handle(ledgerDecider, ledgerStream(u.id), {
      type: 'ReserveCredits',
      data: {
        userId: u.id,
        holdId: `elsewhere-${u.id}`,
        amount: 1000 - cost - 150,
        reason: 'another task',
        expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
      },
      metadata: { now: new Date() },
    });
    const picture = (name: string) => ({
      type: 'image_url',
      image_url: { url: `https://images.example.com/${name}` },
    });
    const ask = (content: unknown, model = 'fake-model') =>
      t.http
        .post(`${API}/chat/completions`)
        .set('Authorization', u.auth)
        .send({ model, max_tokens: 10, messages: [{ role: 'user', content }] });
    const calls = fake.requests.length;
    const refused = await ask([{ type: 'text', text: 'And these?' }, picture('c.jpg'), picture('d.jpg')]);
    expect(refused.status).toBe(402);
    expect(fake.requests.length).toBe(calls);
    // The same words alone are held at a few credits, and answered.
    fake.setBehaviour({ usage: undefined });
    expect((await ask('And these?')).status).toBe(200);
    // A narrow window holds no more prompt than the window leaves beside the output.
    expect((await ask([picture('c.jpg'), picture('d.jpg')], 'fake-narrow')).status).toBe(200);
    const holds = (await ledgerEvents(u.id)).filter((e) => e.type === 'CreditsReserved');
    expect(holds.at(-1)!.data.amount).toBe(
      creditsFor(700 - 10, PROMPT_PRICE) + creditsFor(10, COMPLETION_PRICE),
    );
  });

  it('refuses a second running task in one chat (409), and an unknown model (400)', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    fake.setBehaviour({ tokenDelayMs: 20 });
    const first = await startTask(u.auth, chatId);
    await startTask(u.auth, chatId, 409);
    // A refused task holds nothing, not even for a moment: the ledger has the first task's hold alone.
    expect((await ledgerEvents(u.id)).map((e) => e.type)).toEqual(['CreditsGranted', 'CreditsReserved']);
    await startTask(u.auth, await newChat(u.auth), 400, 'no-such-model');
    await stream(u.auth, first.id);
    await finished(u.auth, first.id);
    // Once it is done, the chat takes the next one.
    const next = await startTask(u.auth, chatId);
    await stream(u.auth, next.id);
  });

  it('holds beside taking the slots when they look free, and gives the hold back when one was taken through another instance', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    // The hold's append starts while the slots' are still under way (they are slow here: under way
    // until it has started, however long that takes, or for ten seconds if it waits for them).
    const started: string[] = [];
    const slow = interceptAppends(async (name) => {
      started.push(name);
      if (name.startsWith('chatslot-') || name.startsWith('userslots-')) {
        for (let waited = 0; !started.includes(ledgerStream(u.id)) && waited < 10_000; waited += 10)
          await new Promise((resolve) => setTimeout(resolve, 10));
        started.push(`${name} done`);
      }
    });
    let first: Started;
    try {
      first = await startTask(u.auth, chatId);
    } finally {
      slow.mockRestore();
    }
    const held = started.indexOf(ledgerStream(u.id));
    expect(held).toBeGreaterThanOrEqual(0);
    expect(held).toBeLessThan(started.indexOf(`${chatSlotStream(chatId)} done`));
    await stream(u.auth, first.id);
    await finished(u.auth, first.id);

    // Two other instances, whose caches have the user and the chat free: their own replies there
    // ended. The first allows one reply at a time per user.
    const one = secondInstance({ TASKS_MAX_RUNNING_PER_USER: 1 });
    const two = secondInstance({ TASKS_MAX_RUNNING_PER_USER: 5 });
    try {
      for (const other of [one.http, two.http]) {
        const there = await other.post(`${API}/tasks`).set('Authorization', u.auth).send({ chat_id: chatId });
        expect(there.status).toBe(201);
        await other.get(`${API}/tasks/${(there.body as Started).id}/stream`).set('Authorization', u.auth);
        await finished(u.auth, (there.body as Started).id);
      }
      // This instance starts a reply that runs until it is cancelled.
      fake.setBehaviour({ hang: true });
      const here = await startTask(u.auth, chatId);
      const ledgerBefore = (await ledgerEvents(u.id)).length;

      // The user's slots, as the first cached them, look free: it holds beside them, is refused
      // (429), and gives the hold and the chat's slot back.
      const thirdChat = await newChat(u.auth);
      const limited = await one.http
        .post(`${API}/tasks`)
        .set('Authorization', u.auth)
        .send({ chat_id: thirdChat });
      expect(limited.status).toBe(429);
      const after = (await ledgerEvents(u.id)).slice(ledgerBefore);
      expect(after.map((e) => e.type)).toEqual(['CreditsReserved', 'CreditsReleased']);
      expect(after[1]!.data.holdId).toBe(after[0]!.data.holdId);
      expect((await t.deps.store.readStream(chatSlotStream(thirdChat))).map((e) => e.type)).toEqual([
        'TaskSlotTaken',
        'TaskSlotFreed',
      ]);

      // The chat, busy through this instance, is seen so in its slot, read afresh though the second
      // instance's cache has it free: refused with no hold at all.
      const busy = await two.http.post(`${API}/tasks`).set('Authorization', u.auth).send({ chat_id: chatId });
      expect(busy.status).toBe(409);
      expect(await ledgerEvents(u.id)).toHaveLength(ledgerBefore + 2);

      const cancel = await t.http.post(`${API}/tasks/${here.id}/cancel`).set('Authorization', u.auth);
      expect(cancel.status).toBe(202);
      await finished(u.auth, here.id);
    } finally {
      await Promise.all([one.flow.close(), two.flow.close()]);
    }
  });

  it.each([
    ['taken', false],
    ['still being taken', true],
  ])(
    'holds nothing for the second of two replies asked at once in one chat (a double click), the first one’s slot %s',
    async (_when, slowTake) => {
      const u = await newUser();
      const chatId = await newChat(u.auth);
      fake.setBehaviour({ tokenDelayMs: 20 });
      // The chat is slow to read: both requests have read its slot free before either takes it. The
      // second decides once the first has taken it, or (its slot slow to take) while it is taking it.
      const store = t.deps.store;
      const read = store.readStream.bind(store);
      const slowChat = jest.spyOn(store, 'readStream').mockImplementation(async (name, options) => {
        if (name === chatStream(chatId)) await new Promise((resolve) => setTimeout(resolve, 100));
        return read(name, options);
      });
      const slowSlot = slowAppends((name) => slowTake && name === chatSlotStream(chatId));
      let both: supertest.Response[];
      try {
        both = await Promise.all(
          [0, 1].map(() =>
            t.http.post(`${API}/tasks`).set('Authorization', u.auth).send({ chat_id: chatId }),
          ),
        );
      } finally {
        slowChat.mockRestore();
        slowSlot.mockRestore();
      }
      expect(both.map((r) => r.status).sort()).toEqual([201, 409]);
      expect((await ledgerEvents(u.id)).map((e) => e.type)).toEqual(['CreditsGranted', 'CreditsReserved']);
      const ok = both.find((r) => r.status === 201)!.body as Started;
      await stream(u.auth, ok.id);
      await finished(u.auth, ok.id);
    },
  );

  it.each(['/tasks', '/chat/completions'])(
    'starts nothing on %s for a session found revoked while the start read its chat',
    async (route) => {
      const u = await newUser();
      const chatId = await newChat(u.auth);
      const guard = t.deps.sessionGuard!;
      // The check answers late, after the reads a start makes beside it.
      const late = jest.spyOn(guard, 'check').mockImplementation(async () => {
        await new Promise((resolve) => setTimeout(resolve, 200));
        return { ok: false, reason: 'revoked' };
      });
      let res: supertest.Response;
      try {
        res = await t.http
          .post(`${API}${route}`)
          .set('Authorization', u.auth)
          .send(
            route === '/tasks'
              ? { chat_id: chatId }
              : { model: 'fake-model', messages: [{ role: 'user', content: 'Hi' }] },
          );
      } finally {
        late.mockRestore();
      }
      expect(res.status).toBe(401);
      expect((await ledgerEvents(u.id)).map((e) => e.type)).toEqual(['CreditsGranted']);
      expect(await t.deps.store.readStream(userSlotsStream(u.id))).toEqual([]);
      expect(await t.deps.store.readStream(chatSlotStream(chatId))).toEqual([]);
    },
  );

  it('answers 401 for a chat it cannot find when the session was found revoked, leaving nothing unhandled', async () => {
    const u = await newUser();
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    const late = jest.spyOn(t.deps.sessionGuard!, 'check').mockImplementation(async () => {
      await new Promise((resolve) => setTimeout(resolve, 100));
      return { ok: false, reason: 'revoked' };
    });
    try {
      const res = await t.http
        .post(`${API}/tasks`)
        .set('Authorization', u.auth)
        .send({ chat_id: '01900000-0000-7000-8000-000000000000' });
      expect(res.status).toBe(401);
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(unhandled).toEqual([]);
    } finally {
      late.mockRestore();
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('keeps a running reply’s chat busy on an instance configured with a shorter task life', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    // A rolling deploy that shortens the task life: the other instance would count a slot taken
    // more than 1.5 s ago (its life and grace) as stale, though this one's task runs for 10 minutes.
    const { flow, http: other } = secondInstance({ TASK_TIMEOUT_SECONDS: 1 });
    fake.setBehaviour({ reply: 'word '.repeat(40), tokenDelayMs: 100 });
    try {
      const first = await startTask(u.auth, chatId);
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      const res = await other.post(`${API}/tasks`).set('Authorization', u.auth).send({ chat_id: chatId });
      expect(res.status).toBe(409);
      expect((await t.http.get(`${API}/tasks/${first.id}`).set('Authorization', u.auth)).body).toMatchObject({
        status: 'running',
      });
      await finished(u.auth, first.id);
    } finally {
      await flow.close();
    }
  });

  it('sends a message written in several text parts with its parts apart, not glued into one word', async () => {
    const u = await newUser();
    const chatId = await presetChat(u.auth);
    await sendMessage(u.auth, chatId, [
      { type: 'text', text: 'Tell me about' },
      { type: 'text', text: 'foxes.' },
    ]);
    const started = await startTask(u.auth, chatId);
    await finished(u.auth, started.id);
    expect(fake.requests.at(-1)!.body.messages!.at(-1)).toEqual({
      role: 'user',
      content: 'Tell me about\nfoxes.',
    });
  });

  it('frees a chat for its next reply only once the last reply is in it, for every instance', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    const { flow, http: other } = secondInstance();
    // This instance writes the reply to the chat slowly: a task asked of the other meanwhile must
    // be refused (409), not generated from a history that lacks the reply.
    const slowChat = slowAppends((name) => name === `chat-${chatId}`);
    let next: Started | undefined;
    try {
      await startTask(u.auth, chatId);
      for (let i = 0; i < 1_000 && !next; i++) {
        const res = await other.post(`${API}/tasks`).set('Authorization', u.auth).send({ chat_id: chatId });
        if (res.status === 201) next = res.body as Started;
        else expect(res.status).toBe(409);
      }
      expect(next).toBeDefined();
      await finished(u.auth, next!.id);
    } finally {
      slowChat.mockRestore();
      await flow.close();
    }
    const prompt = fake.requests.at(-1)!.body.messages ?? [];
    expect(prompt.filter((m) => m.role === 'assistant').map((m) => m.content)).toEqual([REPLY]);
  });

  /**
   * A second instance's start of a reply in the chat, its chat read held until `meanwhile` has run
   * (its slot read before it): what the start then answers.
   */
  async function startWhileChatReadIsHeld(auth: string, chatId: string, meanwhile: () => Promise<void>) {
    const second = secondInstance();
    const store = t.deps.store;
    const read = store.readStream.bind(store);
    let held = false;
    const slowChat = jest.spyOn(store, 'readStream').mockImplementation(async (name, options) => {
      const events = await read(name, options);
      if (name === chatStream(chatId) && !held) {
        held = true;
        await meanwhile();
      }
      return events;
    });
    try {
      const res = await second.http.post(`${API}/tasks`).set('Authorization', auth).send({ chat_id: chatId });
      expect(held).toBe(true);
      if (res.status === 201) await finished(auth, (res.body as Started).id);
      return res;
    } finally {
      slowChat.mockRestore();
      await second.flow.close();
    }
  }

  it('refuses a reply asked while the last was being generated, though that one ends before the slot is taken', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    fake.setBehaviour({ tokenDelayMs: 10 });
    const first = await startTask(u.auth, chatId);
    let asked = 0;
    // The start reads the chat's slot taken, then the chat without the first reply; the first reply
    // is saved and its slot freed before the start takes the slot.
    const res = await startWhileChatReadIsHeld(u.auth, chatId, async () => {
      await chatSlotFreed(chatId, 'the first reply’s slot freed');
      asked = fake.requests.length;
    });
    // Not answered from a history without the first reply: refused as when it was asked.
    expect(res.status).toBe(409);
    expect((res.body as { type: string }).type).toBe('/problems/chat-busy');
    expect(fake.requests).toHaveLength(asked);
    await finished(u.auth, first.id);
    expect((await ledgerEvents(u.id)).filter((e) => e.type === 'CreditsReserved')).toHaveLength(1);
    // Its user slot was given back: the chat takes its next reply at once.
    await stream(u.auth, (await startTask(u.auth, chatId)).id);
  });

  it('answers from the chat as it is when another reply came and went between the start’s reads and its taking the slot', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    // The start reads the chat's slot free, then the chat; another reply is asked of this instance,
    // saved and its slot freed before the start takes the slot.
    const res = await startWhileChatReadIsHeld(u.auth, chatId, async () => {
      const other = await startTask(u.auth, chatId);
      await stream(u.auth, other.id);
      await chatSlotFreed(chatId, 'the other reply’s slot freed');
    });
    expect(res.status).toBe(201);
    // Asked with the other reply in its history: the chat was read again.
    const prompt = fake.requests.at(-1)!.body.messages ?? [];
    expect(prompt.filter((m) => m.role === 'assistant').map((m) => m.content)).toEqual([REPLY]);
    // A hold per reply, each settled, and the one taken beside the slot the first time given back.
    await eventually(
      () => credits(u.auth),
      (c) => c.held === 0,
      'settled',
    );
    expect((await ledgerEvents(u.id)).map((e) => e.type)).toEqual([
      'CreditsGranted',
      ...['CreditsReserved', 'CreditsCaptured', 'CreditsReleased'], // the other reply
      ...['CreditsReserved', 'CreditsReleased'], // the first try
      ...['CreditsReserved', 'CreditsCaptured', 'CreditsReleased'],
    ]);
  });

  it('does not try again a start it could not undo, so that no try holds twice', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    let failRelease: ReturnType<typeof interceptAppends> | undefined;
    // As in the test above, another reply comes and goes; then the first try's hold cannot be
    // given back.
    const res = await startWhileChatReadIsHeld(u.auth, chatId, async () => {
      const other = await startTask(u.auth, chatId);
      await stream(u.auth, other.id);
      await chatSlotFreed(chatId, 'the other reply’s slot freed');
      failRelease = interceptAppends(async (_name, events) => {
        if (events.some((e) => e.type === 'CreditsReleased' && e.metadata.reason === 'task not started')) {
          throw new DependencyDown('The database is away.');
        }
      });
    });
    failRelease?.mockRestore();
    expect(res.status).toBe(409);
    expect((res.body as { type: string }).type).toBe('/problems/concurrency-conflict');
    // The first try's hold is left to expire; no second was taken.
    expect((await ledgerEvents(u.id)).map((e) => e.type)).toEqual([
      'CreditsGranted',
      ...['CreditsReserved', 'CreditsCaptured', 'CreditsReleased'],
      'CreditsReserved',
    ]);
  });

  it('holds nothing beside a chat slot freed here after the start read it, and answers from the chat as it is', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    fake.setBehaviour({ tokenDelayMs: 10 });
    const first = await startTask(u.auth, chatId);
    // The next start reads the chat's slot taken and the chat without the first reply; its session
    // check answers once this instance has saved that reply and freed the slot.
    const guard = t.deps.sessionGuard!;
    const check = guard.check.bind(guard);
    const late = jest.spyOn(guard, 'check').mockImplementation(async (...args) => {
      await chatSlotFreed(chatId, 'the first reply’s slot freed');
      return check(...args);
    });
    let res: supertest.Response;
    try {
      res = await t.http.post(`${API}/tasks`).set('Authorization', u.auth).send({ chat_id: chatId });
    } finally {
      late.mockRestore();
    }
    expect(res.status).toBe(201);
    await finished(u.auth, (res.body as Started).id);
    const prompt = fake.requests.at(-1)!.body.messages ?? [];
    expect(prompt.filter((m) => m.role === 'assistant').map((m) => m.content)).toEqual([REPLY]);
    await finished(u.auth, first.id);
    await eventually(
      () => credits(u.auth),
      (c) => c.held === 0,
      'settled',
    );
    // A hold for each reply, and none for the try that found the slot moved on.
    expect((await ledgerEvents(u.id)).map((e) => e.type)).toEqual([
      'CreditsGranted',
      ...['CreditsReserved', 'CreditsCaptured', 'CreditsReleased'],
      ...['CreditsReserved', 'CreditsCaptured', 'CreditsReleased'],
    ]);
  });

  it('finishes, on closing, a task still starting when closing began, before it is closed', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    // A second instance, to be closed while the test app goes on.
    const { commands, flow, http: other } = secondInstance();
    let creating!: () => void;
    const inCreate = new Promise<void>((resolve) => (creating = resolve));
    const slowCreate = slowAppends(
      (_name, events) => events.some((e) => e.type === 'TaskCreated'),
      () => creating(),
    );
    try {
      const posting = other.post(`${API}/tasks`).set('Authorization', u.auth).send({ chat_id: chatId });
      const answered = posting.then((res) => res);
      await inCreate;
      await flow.close(5_000);
      // Closed only once the task that was starting has generated, recorded and settled its reply.
      const res = await answered;
      expect(res.status).toBe(201);
      const id = (res.body as Started).id;
      const { state } = await commands.read(taskDecider, taskStream(id));
      expect(state.outcome?.type).toBe('TaskCompleted');
      expect((await ledgerEvents(u.id)).map((e) => e.type)).toContain('CreditsCaptured');
    } finally {
      slowCreate.mockRestore();
    }
  });

  it('gives back the hold and the slots, and asks no model, when the task cannot be recorded', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    const asked = fake.requests.length;
    const failCreate = interceptAppends(async (_name, events) => {
      if (events.some((e) => e.type === 'TaskCreated')) throw new DependencyDown('The database is away.');
    });
    let res: supertest.Response;
    try {
      res = await t.http.post(`${API}/tasks`).set('Authorization', u.auth).send({ chat_id: chatId });
    } finally {
      failCreate.mockRestore();
    }
    expect(res.status).toBe(503);
    expect(res.type).toBe('application/problem+json');
    expect(fake.requests).toHaveLength(asked);
    // The hold taken for it is released at once, and no task stream was written.
    const ledger = await ledgerEvents(u.id);
    expect(ledger.map((e) => e.type)).toEqual(['CreditsGranted', 'CreditsReserved', 'CreditsReleased']);
    expect(await t.deps.store.readStream(taskStream(String(ledger[1]!.data.holdId)))).toEqual([]);
    // Both slots are free again: the chat takes its next task at once.
    const next = await startTask(u.auth, chatId);
    await stream(u.auth, next.id);
    await finished(u.auth, next.id);
  });

  it('sends heartbeat comments while the model is silent', async () => {
    const u = await newUser();
    fake.setBehaviour({ firstTokenDelayMs: 400 });
    const started = await startTask(u.auth, await newChat(u.auth));
    const res = await t.http
      .get(`${API}/tasks/${started.id}/stream`)
      .set('Authorization', u.auth)
      .buffer(true);
    expect(res.text).toMatch(/^: keep-alive\n\n/m);
    expect(parseSse(res.text).at(-1)!.event).toBe('done');
  });

  it('answers a HEAD on a stream as a GET would, without using up its one read', async () => {
    const u = await newUser();
    const other = await newUser();
    const started = await startTask(u.auth, await newChat(u.auth));
    const head = (auth: string) =>
      t.http.head(`${API}/tasks/${started.id}/stream`).set('Authorization', auth);
    const first = await head(u.auth);
    expect(first.status).toBe(200);
    expect(first.headers['content-type']).toMatch(/^text\/event-stream/);
    expect((await head(other.auth)).status).toBe(404);
    const read = await stream(u.auth, started.id);
    expect(read.status).toBe(200);
    expect(read.events.at(-1)!.event).toBe('done');
    expect((await head(u.auth)).status).toBe(409);
  });

  it('frees a task’s output once its one reader has had it, and keeps a completion’s under an Idempotency-Key for a retry', async () => {
    const u = await newUser();
    const started = await startTask(u.auth, await newChat(u.auth));
    expect((await stream(u.auth, started.id)).events.at(-1)!.event).toBe('done');
    const client = clientOf(u);
    const ask = { model: 'fake-model', messages: [{ role: 'user' as const, content: 'Say something.' }] };
    const taskOf = (completionId: string) => completionId.replace(/^chatcmpl-/, '');
    const answered = taskOf((await client.chat.completions.create(ask)).id);
    let streamed = '';
    for await (const c of await client.chat.completions.create({ ...ask, stream: true })) streamed = c.id;
    // Streamed under a key: a retry streams it again, from this output.
    let kept = '';
    const keyed = await client.chat.completions.create(
      { ...ask, stream: true },
      { headers: { 'Idempotency-Key': `keep-${u.id}` } },
    );
    for await (const c of keyed) kept = taskOf(c.id);
    // Its task's stream, claimed as a chat task's would be, leaves it to the completion.
    expect((await stream(u.auth, kept)).events.at(-1)!.event).toBe('done');
    /**
     * The kinds of the chunks this instance still holds of a task's output, read for `ms` at most:
     * a read ends early at the task's end.
     */
    const held = async (taskId: string, ms = 200) => {
      const stop = new AbortController();
      const timer = setTimeout(() => stop.abort(), ms);
      const chunks: string[] = [];
      for await (const c of t.deps.buffer!.read(taskId, stop.signal)) chunks.push(c.kind);
      clearTimeout(timer);
      return chunks;
    };
    expect(await held(started.id)).toEqual([]);
    expect(await held(answered)).toEqual([]);
    expect(await held(taskOf(streamed))).toEqual([]);
    // Read to its end, however long a loaded machine takes to get there.
    expect((await held(kept, 10_000)).at(-1)).toBe('done');
  });

  it('lets exactly one of 50 parallel stream calls stream; the rest get 409', async () => {
    const u = await newUser();
    fake.setBehaviour({ tokenDelayMs: 5 });
    const started = await startTask(u.auth, await newChat(u.auth));
    const results = await Promise.all(Array.from({ length: 50 }, () => stream(u.auth, started.id)));
    const streamed = results.filter((r) => r.status === 200);
    expect(streamed).toHaveLength(1);
    expect(results.filter((r) => r.status === 409)).toHaveLength(49);
    expect(
      streamed[0]!.events
        .filter((e) => e.event === 'delta')
        .map((e) => e.data.content)
        .join(''),
    ).toBe(REPLY);
    // A late call still 409: the stream was claimed once and for all.
    expect((await stream(u.auth, started.id)).status).toBe(409);
  });

  it('finishes, saves and charges once when the client disconnects mid-stream', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    fake.setBehaviour({ tokenDelayMs: 10 });
    const started = await startTask(u.auth, chatId);
    await new Promise<void>((resolve, reject) => {
      const req = http.get(
        `${baseUrl}/tasks/${started.id}/stream`,
        { headers: { Authorization: u.auth } },
        (res) => {
          res.once('data', () => {
            req.destroy(); // gone after the first delta
            resolve();
          });
        },
      );
      req.on('error', () => undefined);
      setTimeout(() => reject(new Error('no data')), 5_000).unref();
    });
    const view = await finished(u.auth, started.id);
    expect(view.status).toBe('succeeded');
    const reply = await lastMessage(u.auth, chatId, view.message_id);
    expect(reply.content).toEqual([{ type: 'text', text: REPLY }]);
    const ledger = await ledgerEvents(u.id);
    expect(ledger.filter((e) => e.type === 'CreditsCaptured' && e.data.holdId === started.id)).toHaveLength(
      1,
    );
    await eventually(
      () => credits(u.auth),
      (c) => c.balance === 1000 - view.cost!,
      'charged once',
    );
  });

  it('retries a provider failing before the first token, then succeeds', async () => {
    const u = await newUser();
    fake.setBehaviour({ fail: { status: 429, times: 2 } });
    const before = fake.requests.length;
    const started = await startTask(u.auth, await newChat(u.auth));
    const s = await stream(u.auth, started.id);
    expect(s.events.at(-1)!.event).toBe('done');
    expect(fake.requests.length - before).toBe(3);
  });

  it('answers a completion the provider refused as asked with a 400 of its own, holding nothing', async () => {
    const u = await newUser();
    const client = clientOf(u);
    const ask = { model: 'fake-model', messages: [{ role: 'user' as const, content: 'Say something.' }] };
    fake.setBehaviour({ fail: { status: 400, message: "Invalid schema for function 'f'." } });
    const refused = await failureOf<{ status: number; type: string; message: string }>(
      client.chat.completions.create(ask),
    );
    expect(refused).toMatchObject({ status: 400, type: 'invalid_request_error' });
    expect(refused.message).toContain("Invalid schema for function 'f'.");
    // Streamed, the same 400: the response waits for the task's first piece before it opens.
    const streamed = await failureOf<{ status: number; type: string; message: string }>(
      client.chat.completions.create({ ...ask, stream: true }),
    );
    expect(streamed).toMatchObject({ status: 400, type: 'invalid_request_error' });
    expect(streamed.message).toContain("Invalid schema for function 'f'.");
    // The service's own trouble with its provider (its key, here) stays a 502.
    fake.setBehaviour({ fail: { status: 401 } });
    expect((await failureOf<{ status: number }>(client.chat.completions.create(ask))).status).toBe(502);
    await settledSpending(u.auth, 0, 'both holds released');
    expect((await ledgerEvents(u.id)).some((e) => e.type === 'CreditsCaptured')).toBe(false);
  });

  it('stops a streamed completion whose client leaves before its response opened, charging nothing for what nobody got', async () => {
    const u = await newUser();
    // Within COMPLETION_OPEN_WAIT_MS: a response that did not notice its client leave would wait
    // for this first piece, open, and only then find it gone.
    fake.setBehaviour({ firstTokenDelayMs: 250, tokenDelayMs: 50 });
    const asked = fake.requests.length;
    const leaving = new AbortController();
    const sent = streamedHi(u.auth, leaving.signal).catch((err: unknown) => err);
    // Asked of the model, with the response not open yet (its first piece is 250 ms away).
    await eventually(
      () => Promise.resolve(fake.requests.length),
      (n) => n > asked,
      'the model asked',
    );
    leaving.abort();
    expect(await sent).toMatchObject({ name: 'AbortError' });
    await fake.requests[asked]!.closed;
    expect(fake.requests[asked]!.closedByClient).toBe(true);
    expect(fake.requests[asked]!.chunksSent).toBe(0);
    const failed = await eventually(
      async () => (await ledgerEvents(u.id)).map((e) => e.type),
      (types) => types.includes('CreditsReleased'),
      'the hold released',
    );
    expect(failed).not.toContain('CreditsCaptured');
  });

  it('opens a streamed completion whose model is slow to start before its first piece, so the client is not left without an answer', async () => {
    const u = await newUser();
    fake.setBehaviour({ firstTokenDelayMs: 700 }); // past COMPLETION_OPEN_WAIT_MS
    const res = await streamedHi(u.auth);
    expect(res.status).toBe(200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const opening = new TextDecoder().decode((await reader.read()).value);
    expect(opening).toContain('"role":"assistant"');
    // Opened while the model had said nothing yet.
    expect(fake.requests.at(-1)!.chunksSent).toBe(0);
    let rest = '';
    for (let r = await reader.read(); !r.done; r = await reader.read())
      rest += new TextDecoder().decode(r.value);
    expect(rest).toContain('data: [DONE]');
    expect(fake.requests.at(-1)!.chunksSent).toBeGreaterThan(0);
  });

  it('fails the task and releases the whole hold when the provider keeps failing', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    fake.setBehaviour({ fail: { status: 500 } });
    const started = await startTask(u.auth, chatId);
    const s = await stream(u.auth, started.id);
    expect(s.events.at(-1)!.event).toBe('error');
    expect(await task(u.auth, started.id)).toMatchObject({ status: 'failed', cost: 0, message_id: null });
    const ledger = await ledgerEvents(u.id);
    expect(ledger.map((e) => e.type)).toEqual(expect.arrayContaining(['CreditsReserved', 'CreditsReleased']));
    expect(ledger.some((e) => e.type === 'CreditsCaptured')).toBe(false);
    await eventually(
      () => credits(u.auth),
      (c) => c.held === 0 && c.available === 1000,
      'hold released',
    );
    // No reply was saved: the chat's last message, as stored, is still the user's.
    const sent = (await t.deps.store.readStream(chatStream(chatId))).filter((e) => e.type === 'MessageSent');
    expect((sent.at(-1)!.data as { role: string }).role).toBe('user');
  });

  it('fails a task at once on a provider error holding text the store refuses, and frees its chat', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    // NUL, half a surrogate pair and a page more: an upstream's error as it may come.
    fake.setBehaviour({
      fail: { status: 400, message: `Invalid request \u0000 \ud800 ${'x'.repeat(5_000)}` },
    });
    const started = await startTask(u.auth, chatId);
    const s = await stream(u.auth, started.id);
    expect(s.events.at(-1)!.event).toBe('error');
    expect(await task(u.auth, started.id)).toMatchObject({ status: 'failed', cost: 0 });
    const failed = (await t.deps.store.readStream(taskStream(started.id))).find(
      (e) => e.type === 'TaskFailed',
    );
    const reason = (failed!.data as { reason: string }).reason;
    expect(reason).toContain('Invalid request \uFFFD \uFFFD xxx');
    expect(reason.length).toBeLessThan(1_100);
    await settledSpending(u.auth, 0, 'hold released');
    // A completion refused so is the caller's 400, as any refusal, not a wait for the sweeper.
    const refused = await failureOf<{ status: number; message: string }>(
      clientOf(u).chat.completions.create({
        model: 'fake-model',
        messages: [{ role: 'user', content: 'Hi.' }],
      }),
    );
    expect(refused.status).toBe(400);
    expect(refused.message).toContain('Invalid request \uFFFD');
    // The chat is free for the next reply.
    fake.setBehaviour({ fail: undefined });
    const next = await startTask(u.auth, chatId);
    expect((await stream(u.auth, next.id)).events.at(-1)!.event).toBe('done');
    await settledSpending(u.auth, (await task(u.auth, next.id)).cost!, 'the next reply charged');
  });

  it('streams a task claimed after it ended from its outcome, without settling it a second time', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    const { id } = await startTask(u.auth, chatId);
    expect((await finished(u.auth, id)).status).toBe('succeeded');
    // Settled here: the hold resolved and both slots free again, whatever the settlement's order.
    await eventually(
      () =>
        Promise.all(
          [userSlotsStream(u.id), chatSlotStream(chatId), ledgerStream(u.id)].map((s) =>
            t.deps.store.readStream(s),
          ),
        ),
      ([userSlots, chatSlot, ledger]) =>
        userSlots!.at(-1)?.type === 'TaskSlotFreed' &&
        chatSlot!.at(-1)?.type === 'TaskSlotFreed' &&
        ledger!.some((e) => e.type === 'CreditsReleased' && (e.data as { holdId: string }).holdId === id),
      'the task settled',
    );
    const touched: string[] = [];
    let s: Awaited<ReturnType<typeof stream>>;
    const read = jest.spyOn(t.deps.store, 'readStream');
    const append = jest.spyOn(t.deps.store, 'append');
    try {
      s = await stream(u.auth, id);
      expect(s.events.map((e) => e.event)).toEqual(['delta', 'done']);
      expect(s.events[0]!.data.content).toBe(REPLY);
      for (const [name] of [...read.mock.calls, ...append.mock.calls]) touched.push(name.split('-')[0]!);
    } finally {
      read.mockRestore();
      append.mockRestore();
    }
    // The claim and the task's own state; not the chat, the ledger or the slots again.
    expect(new Set(touched)).toEqual(new Set(['task']));
    // Yet its end says where this process's own settlement ended.
    expect(BigInt(s.events[1]!.data.position as string)).toBe(await settlementEnd(u.id, chatId, id));
  });

  it('fails a task whose provider hangs, once the idle timeout passes, and releases its hold', async () => {
    const u = await newUser();
    fake.setBehaviour({ hang: 'after-headers' });
    const started = await startTask(u.auth, await newChat(u.auth));
    const s = await stream(u.auth, started.id);
    expect(s.events.at(-1)!.event).toBe('error');
    expect(await task(u.auth, started.id)).toMatchObject({ status: 'failed', cost: 0 });
    await eventually(
      () => credits(u.auth),
      (c) => c.held === 0 && c.available === 1000,
      'hold released',
    );
  });

  it('saves the partial reply and charges what was generated when the provider drops mid-stream', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    fake.setBehaviour({ dropAfterTokens: 5 });
    const started = await startTask(u.auth, chatId);
    const s = await stream(u.auth, started.id);
    const partial = s.events
      .filter((e) => e.event === 'delta')
      .map((e) => e.data.content)
      .join('');
    expect(partial.length).toBeGreaterThan(0);
    expect(REPLY.startsWith(partial)).toBe(true);
    expect(s.events.at(-1)!.event).toBe('error');
    const view = await task(u.auth, started.id);
    expect(view.status).toBe('failed');
    expect(view.cost).toBeGreaterThan(0);
    expect(await lastMessage(u.auth, chatId, view.message_id)).toMatchObject({
      id: view.message_id,
      role: 'assistant',
      content: [{ type: 'text', text: partial }],
    });
    await settledSpending(u.auth, view.cost!, 'partial charged');
  });

  /**
   * A slow reply that `stop` ends after its first tokens: the reader told, upstream closed, the task
   * cancelled and charged for what was generated. Answers the user, the task, its stream and its view.
   */
  async function stoppedMidReply(stop: (auth: string, chatId: string, taskId: string) => Promise<void>) {
    const u = await newUser();
    fake.setBehaviour({ tokenDelayMs: 100 });
    const chatId = await newChat(u.auth);
    const asked = fake.requests.length;
    const started = await startTask(u.auth, chatId);
    const reading = stream(u.auth, started.id);
    await tokensSent(asked, 2);
    await stop(u.auth, chatId, started.id);
    const s = await reading;
    expect(s.events.at(-1)).toMatchObject({ event: 'error' });
    await fake.requests[asked]!.closed;
    expect(fake.requests[asked]!.closedByClient).toBe(true);
    const view = await finished(u.auth, started.id);
    expect(view.status).toBe('cancelled');
    await settledSpending(u.auth, view.cost ?? 0, 'charged for what was generated');
    return { u, started, s, view };
  }

  it('cancels: upstream stopped, what was generated saved and charged, the rest released', async () => {
    const { u, started } = await stoppedMidReply(async (auth, _chatId, taskId) => {
      expect((await t.http.post(`${API}/tasks/${taskId}/cancel`).set('Authorization', auth)).status).toBe(
        202,
      );
    });
    // A finished task cannot be cancelled again.
    expect((await t.http.post(`${API}/tasks/${started.id}/cancel`).set('Authorization', u.auth)).status).toBe(
      409,
    );
  });

  it('cancels the reply being generated in a chat that is deleted, charging only what was generated', async () => {
    const { s, view } = await stoppedMidReply(async (auth, chatId) => {
      expect((await t.http.delete(`${API}/chats/${chatId}`).set('Authorization', auth)).status).toBe(204);
    });
    expect(s.events.some((e) => e.event === 'delta')).toBe(true);
    expect(view.usage!.completion_tokens).toBeLessThan(tokenPieces(REPLY).length);
    expect(view.cost).toBeGreaterThan(0);
  });

  it('stops a generation whose cancel message never reached its instance, from the cancel in its stream', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    // The task generates on another instance, which looks for lost cancels every 200 ms.
    const { flow, http: other } = secondInstance({ TASK_CANCEL_CHECK_MS: 200 });
    // The message to it is lost (with Redis; without, this instance has no way to send one).
    const lost = redis ? jest.spyOn(redis, 'publish').mockResolvedValue(0) : undefined;
    fake.setBehaviour({ tokenDelayMs: 100 });
    try {
      const asked = fake.requests.length;
      const res = await other.post(`${API}/tasks`).set('Authorization', u.auth).send({ chat_id: chatId });
      expect(res.status).toBe(201);
      const { id } = res.body as Started;
      await tokensSent(asked, 2);
      const cancel = await t.http.post(`${API}/tasks/${id}/cancel`).set('Authorization', u.auth);
      expect(cancel.status).toBe(202);
      if (lost) expect(lost).toHaveBeenCalledWith('tasks:cancel', id);
      await fake.requests[asked]!.closed;
      expect(fake.requests[asked]!.closedByClient).toBe(true);
      const view = await finished(u.auth, id);
      expect(view.status).toBe('cancelled');
      expect(view.usage!.completion_tokens).toBeLessThan(countTextTokens(REPLY));
      await settledSpending(u.auth, view.cost ?? 0, 'settled');
    } finally {
      lost?.mockRestore();
      await flow.close();
    }
  });

  it('closes within its grace though a cancel check hangs on the store', async () => {
    const u = await newUser();
    const { commands, flow, http: other } = secondInstance({ TASK_CANCEL_CHECK_MS: 100 });
    fake.setBehaviour({ tokenDelayMs: 100 });
    const asked = fake.requests.length;
    const res = await other
      .post(`${API}/tasks`)
      .set('Authorization', u.auth)
      .send({ chat_id: await newChat(u.auth) });
    expect(res.status).toBe(201);
    let checking!: () => void;
    const checked = new Promise<void>((resolve) => (checking = resolve));
    // The check's read of the task never comes back (its database gone quiet).
    const read = jest.spyOn(commands, 'read').mockImplementation(() => {
      checking();
      return new Promise(() => undefined);
    });
    try {
      await tokensSent(asked, 1);
      await checked;
      const closing = flow.close(300).then(() => 'closed');
      const hung = new Promise((resolve) => setTimeout(() => resolve('hung'), 5_000).unref());
      expect(await Promise.race([closing, hung])).toBe('closed');
    } finally {
      read.mockRestore();
    }
    // Closed past its grace, it stopped the generation and settled it.
    const view = await finished(u.auth, (res.body as Started).id);
    expect(view.status).toBe('failed');
  });

  it('closes within its grace though a sweep hangs on the store', async () => {
    const { flow } = secondInstance();
    let sweeping!: () => void;
    const swept = new Promise<void>((resolve) => (sweeping = resolve));
    flow.startSweeper(50, () => {
      sweeping();
      return new Promise(() => undefined);
    });
    await swept;
    const closing = flow.close(300).then(() => 'closed');
    const hung = new Promise((resolve) => setTimeout(() => resolve('hung'), 5_000).unref());
    expect(await Promise.race([closing, hung])).toBe('closed');
  });

  it('shows nobody else a task or a chat (404)', async () => {
    const owner = await newUser();
    const other = await newUser();
    const chatId = await newChat(owner.auth);
    await startTask(other.auth, chatId, 404);
    const started = await startTask(owner.auth, chatId);
    expect((await t.http.get(`${API}/tasks/${started.id}`).set('Authorization', other.auth)).status).toBe(
      404,
    );
    expect((await stream(other.auth, started.id)).status).toBe(404);
    expect(
      (await t.http.post(`${API}/tasks/${started.id}/cancel`).set('Authorization', other.auth)).status,
    ).toBe(404);
    // The owner's stream was not claimed by those attempts.
    expect((await stream(owner.auth, started.id)).status).toBe(200);
  });

  it('fails a task whose instance died, past its deadline, and releases its hold (the sweeper)', async () => {
    const u = await newUser();
    const taskId = `orphan-${Date.now()}`;
    const past = new Date(Date.now() - 3_600_000);
    await t.deps.commands.handle(taskDecider, taskStream(taskId), {
      type: 'CreateTask',
      data: {
        taskId,
        userId: u.id,
        chatId: null,
        model: 'fake-model',
        promptTokens: 10,
        maxTokens: 100,
        hold: 25,
        deadlineAt: past.toISOString(),
      },
      metadata: { now: past },
    });
    await t.deps.commands.handle(ledgerDecider, ledgerStream(u.id), {
      type: 'ReserveCredits',
      data: {
        userId: u.id,
        holdId: taskId,
        amount: 25,
        reason: 'task',
        expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
      },
      metadata: { now: new Date() },
    });
    await eventually(
      () => credits(u.auth),
      (c) => c.held === 25,
      'hold projected',
    );
    await eventually(
      () => listOverdueTasks(t.deps.db.db, new Date(), 10),
      (rows) => rows.some((r) => r.id === taskId),
      'task projected',
    );
    const swept = await sample('tasks_swept_total', { model: 'fake-model' });
    const failed = await t.deps.tasks!.sweep((before) => listOverdueTasks(t.deps.db.db, before, 100));
    expect(failed).toBeGreaterThanOrEqual(1);
    // This one at least (another test may have left one of another model).
    const sweptNow = await sample('tasks_swept_total', { model: 'fake-model' });
    expect(sweptNow).toBeGreaterThanOrEqual(swept + 1);
    expect(await task(u.auth, taskId)).toMatchObject({ status: 'failed', cost: 0 });
    await eventually(
      () => credits(u.auth),
      (c) => c.held === 0 && c.available === 1000,
      'orphan hold released',
    );
    // A second sweep changes nothing.
    await t.deps.tasks!.sweep((before) => listOverdueTasks(t.deps.db.db, before, 100));
    expect((await ledgerEvents(u.id)).filter((e) => e.type === 'CreditsReleased')).toHaveLength(1);
    expect(await sample('tasks_swept_total', { model: 'fake-model' })).toBe(sweptNow);
  });

  it('settles an outcome recorded just before a crash (the settlement reactor)', async () => {
    const u = await newUser();
    const chatId = await newChat(u.auth);
    const taskId = `crashed-${Date.now()}`;
    const now = new Date();
    await t.deps.commands.handle(ledgerDecider, ledgerStream(u.id), {
      type: 'ReserveCredits',
      data: {
        userId: u.id,
        holdId: taskId,
        amount: 40,
        reason: 'task',
        expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
      },
      metadata: { now },
    });
    await t.deps.commands.handle(taskDecider, taskStream(taskId), {
      type: 'CreateTask',
      data: {
        taskId,
        userId: u.id,
        chatId,
        model: 'fake-model',
        promptTokens: 10,
        maxTokens: 100,
        hold: 40,
        deadlineAt: new Date(Date.now() + 600_000).toISOString(),
      },
      metadata: { now },
    });
    // The instance records the outcome, then dies before settling it.
    await t.deps.commands.handle(taskDecider, taskStream(taskId), {
      type: 'CompleteTask',
      data: {
        taskId,
        messageId: `m-${taskId}`,
        content: 'Saved by the reactor.',
        usage: { promptTokens: 10, completionTokens: 5 },
        cost: 12,
        usageSource: 'provider',
      },
      metadata: { now },
    });
    await settledSpending(u.auth, 12, 'captured by the reactor');
    expect(await lastMessage(u.auth, chatId, `m-${taskId}`)).toMatchObject({
      id: `m-${taskId}`,
      content: [{ type: 'text', text: 'Saved by the reactor.' }],
    });
    expect((await ledgerEvents(u.id)).filter((e) => e.type === 'CreditsCaptured')).toHaveLength(1);
  });
});

describe('the metrics of tasks', () => {
  const model = 'fake-metered';

  it('counts each model’s tasks: started, running, first output, tokens and credits charged, retries, and how each ended', async () => {
    const u = await newUser();
    const running = await sample('tasks_running');
    // A chat's task, held up mid-reply: it counts as running until it ends.
    fake.setBehaviour({ tokenDelayMs: 20 });
    const chatTask = await startTask(u.auth, await newChat(u.auth, model));
    await eventually(
      () => sample('tasks_running'),
      (n) => n === running + 1,
      'task counted as running',
    );
    const done = (await stream(u.auth, chatTask.id)).events.at(-1)!;
    expect(done.event).toBe('done');
    await eventually(
      () => sample('tasks_running'),
      (n) => n === running,
      'task no longer running',
    );
    const usage = done.data.usage as { prompt_tokens: number; completion_tokens: number };

    // A completion, through the OpenAI SDK.
    fake.setBehaviour({ tokenDelayMs: 0 });
    const completion = await clientOf(u).chat.completions.create({
      model,
      messages: [{ role: 'user', content: 'Say something.' }],
    });
    const completionTask = await recordedTask(completion.id);

    // A task whose provider fails every time it is asked.
    fake.setBehaviour({ fail: { status: 500 } });
    const failing = await startTask(u.auth, await newChat(u.auth, model));
    expect((await stream(u.auth, failing.id)).events.at(-1)!.event).toBe('error');

    // A task cancelled mid-reply, charged for what it generated.
    fake.setBehaviour({ fail: undefined, tokenDelayMs: 100 });
    const asked = fake.requests.length;
    const cancelled = await startTask(u.auth, await newChat(u.auth, model));
    const reading = stream(u.auth, cancelled.id);
    await tokensSent(asked, 2);
    const cancel = await t.http.post(`${API}/tasks/${cancelled.id}/cancel`).set('Authorization', u.auth);
    expect(cancel.status).toBe(202);
    await reading;
    const cut = await finished(u.auth, cancelled.id);
    expect(cut.status).toBe('cancelled');
    expect(cut.cost).toBeGreaterThan(0);

    expect(await sample('tasks_started_total', { model, kind: 'chat' })).toBe(3);
    expect(await sample('tasks_started_total', { model, kind: 'completion' })).toBe(1);
    expect(await sample('tasks_finished_total', { model, status: 'succeeded' })).toBe(2);
    expect(await sample('tasks_finished_total', { model, status: 'failed' })).toBe(1);
    expect(await sample('tasks_finished_total', { model, status: 'cancelled' })).toBe(1);
    expect(await sample('task_duration_seconds_count', { model, status: 'succeeded' })).toBe(2);
    // Three with output; the failed one never had any.
    expect(await sample('task_first_output_seconds_count', { model })).toBe(3);
    // Asked three times in all (LLM_RETRY_ATTEMPTS): two retries.
    expect(await sample('task_provider_retries_total', { model })).toBe(2);
    const completionUsage = completion.usage!;
    expect(await sample('task_tokens_total', { model, side: 'prompt' })).toBe(
      usage.prompt_tokens + completionUsage.prompt_tokens + cut.usage!.prompt_tokens,
    );
    expect(await sample('task_tokens_total', { model, side: 'completion' })).toBe(
      usage.completion_tokens + completionUsage.completion_tokens + cut.usage!.completion_tokens,
    );
    const completionCost = completionTask.completed!.cost;
    expect(completionCost).toBeGreaterThan(0);
    expect(await sample('task_cost_credits_total', { model })).toBe(
      (done.data.cost as number) + completionCost + cut.cost!,
    );
  });
});

describe('a chat longer than its model’s context window', () => {
  it('leaves out its oldest messages, keeps the preset’s, and holds for what is sent with room for the reply', async () => {
    const u = await newUser();
    const opening = [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'What is a vixen?' },
      { role: 'assistant', content: 'A female fox.' },
    ] as const;
    const chatId = await presetChat(u.auth, 'fake-narrow', opening);
    const question = (i: number) =>
      `Question ${i}: ${'tell me more about foxes and their dens in winter, '.repeat(5)}`;
    const ask = (i: number) => sendMessage(u.auth, chatId, [{ type: 'text', text: question(i) }]);
    const history: ChatMessageInput[] = [...opening];
    for (let i = 0; i < 8; i++) {
      await ask(i);
      const s = await stream(u.auth, (await startTask(u.auth, chatId)).id);
      expect(s.events.at(-1)!.event).toBe('done');
      history.push({ role: 'user', content: question(i) }, { role: 'assistant', content: REPLY });
    }
    await ask(8);
    history.push({ role: 'user', content: question(8) });
    // Whole, the history leaves no room for a reply: it would be refused for good.
    expect(countPromptTokens(history)).toBeGreaterThan(700);
    // The fit reads the chat's cached state, not a copy of it: it must leave it as it was.
    const cached = async () => (await t.deps.commands.read(chatDecider, chatStream(chatId))).state.messages;
    const before = structuredClone(await cached());

    const res = await t.http.post(`${API}/tasks`).set('Authorization', u.auth).send({ chat_id: chatId });
    expect(res.status).toBe(201);
    expect(await cached()).toEqual(before);
    const started = res.body as Started & {
      prompt_tokens: number;
      max_tokens: number;
      omitted_messages: number;
    };
    const omitted = started.omitted_messages;
    expect(omitted).toBeGreaterThan(0);
    const kept = [...opening, ...history.slice(opening.length + omitted)];
    expect(kept[opening.length]!.role).toBe('user');
    expect(started.prompt_tokens).toBe(countPromptTokens(kept));
    // Room for the reply's 100 tokens, and the margin left for other tokenizers' counts.
    const room = 700 - 100 - Math.ceil(700 * CONTEXT_MARGIN);
    expect(started.prompt_tokens).toBeLessThanOrEqual(room);
    // As many as fit: the turn before the first kept one would not have.
    const turnBefore = history.slice(opening.length + omitted - 2, opening.length + omitted);
    expect(countPromptTokens([...kept, ...turnBefore])).toBeGreaterThan(room);
    expect(started.max_tokens).toBe(100);
    expect(started.hold).toBe(
      creditsFor(started.prompt_tokens, PROMPT_PRICE) + creditsFor(100, COMPLETION_PRICE),
    );

    const s = await stream(u.auth, started.id);
    expect(s.events.at(-1)!.event).toBe('done');
    const sent = fake.requests.at(-1)!.body.messages!;
    expect(sent.map((m) => ({ role: m.role, content: m.content }))).toEqual(kept);
    expect(await task(u.auth, started.id)).toMatchObject({ status: 'succeeded', omitted_messages: omitted });
    const listed = await t.http
      .get(`${API}/tasks?limit=1`)
      .set('Authorization', u.auth)
      .set('X-Consistent-After', res.headers['x-event-position'] as string);
    expect((listed.body as { items: unknown[] }).items).toEqual([
      expect.objectContaining({ id: started.id, omitted_messages: omitted }),
    ]);
    const created = (await t.deps.store.readStream(taskStream(started.id)))[0]!;
    expect(created.type).toBe('TaskCreated');
    expect(created.data).toMatchObject({ omittedMessages: omitted, promptTokens: started.prompt_tokens });
    // Nothing is lost from the chat itself: every message is still in it.
    const all = await eventually(
      () => messages(u.auth, chatId),
      (m) => m.length === history.length, // the system prompt is hidden, the reply just saved is not
      'the chat projected',
    );
    expect(all[2]!.content).toEqual([{ type: 'text', text: question(0) }]);
  });

  it('fits the history to the model the task names, hidden messages counted with the rest', async () => {
    const u = await newUser();
    const chatId = await presetChat(u.auth, 'fake-model');
    const say = (text: string, visible = true) =>
      sendMessage(u.auth, chatId, [{ type: 'text', text }], visible);
    const note = `Hidden note: ${'the user keeps foxes and likes short answers. '.repeat(6)}`;
    await say(note, false);
    const questions = Array.from(
      { length: 10 },
      (_, i) => `Q${i}: ${'where do foxes sleep in winter? '.repeat(8)}`,
    );
    for (const q of questions) await say(q);

    // In the narrow window, the oldest go: the hidden note first, and it counts.
    const narrow = await t.http
      .post(`${API}/tasks`)
      .set('Authorization', u.auth)
      .send({ chat_id: chatId, model: 'fake-narrow' });
    expect(narrow.status).toBe(201);
    const { omitted_messages: omitted, prompt_tokens: promptTokens } = narrow.body as {
      omitted_messages: number;
      prompt_tokens: number;
    };
    expect(omitted).toBeGreaterThan(1);
    await stream(u.auth, (narrow.body as Started).id);
    const sentNarrow = fake.requests.at(-1)!.body.messages!;
    expect(sentNarrow.map((m) => m.content)).toEqual(['You are terse.', ...questions.slice(omitted - 1)]);
    expect(promptTokens).toBe(countPromptTokens(sentNarrow));

    // In the chat's own model's window, all of it goes, the hidden note and the reply saved since.
    const wide = await startTask(u.auth, chatId);
    expect((wide as Started & { omitted_messages: number }).omitted_messages).toBe(0);
    await stream(u.auth, wide.id);
    expect(fake.requests.at(-1)!.body.messages!.map((m) => m.content)).toEqual([
      'You are terse.',
      note,
      ...questions,
      REPLY,
    ]);
  });
});

describe('a chat with no message', () => {
  it('answers 400 to a reply asked for, holding nothing and asking no model', async () => {
    const u = await newUser();
    const chatId = await presetChat(u.auth, 'fake-model', []);
    const asked = fake.requests.length;
    const res = await t.http.post(`${API}/tasks`).set('Authorization', u.auth).send({ chat_id: chatId });
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({ type: '/problems/chat-empty', status: 400 });
    expect(fake.requests.length).toBe(asked);
    expect((await ledgerEvents(u.id)).map((e) => e.type)).not.toContain('CreditsReserved');
  });
});

describe('the list of my tasks', () => {
  type Listed = TaskView & {
    id: string;
    chat_id: string | null;
    error: string | null;
    finished_at: string | null;
  };
  const list = async (auth: string, query = '') => {
    const res = await t.http.get(`${API}/tasks${query}`).set('Authorization', auth);
    expect(res.status).toBe(200);
    return res.body as { items: Listed[]; next_cursor: string | null };
  };

  it('shows my tasks newest first, with what each cost and how it ended, in a chat or a status when asked', async () => {
    const u = await newUser();
    const other = await newUser();
    const [a, b] = [await newChat(u.auth), await newChat(u.auth)];
    const ids: string[] = [];
    const run = async (chatId: string) => {
      const started = await startTask(u.auth, chatId);
      await stream(u.auth, started.id);
      ids.push(started.id);
    };
    await run(a);
    fake.setBehaviour({ fail: { status: 500 } });
    await run(a);
    fake.setBehaviour({ fail: undefined });
    await run(b);
    await stream(other.auth, (await startTask(other.auth, await newChat(other.auth))).id);

    const all = await eventually(
      () => list(u.auth),
      (l) => l.items.length === 3 && l.items.every((i) => i.finished_at !== null),
      'the tasks projected',
    );
    expect(all.items.map((i) => i.id)).toEqual([...ids].reverse());
    expect(all.next_cursor).toBeNull();
    // Each as the task itself says, from the read model.
    for (const item of all.items) {
      const one = (await t.http.get(`${API}/tasks/${item.id}`).set('Authorization', u.auth))
        .body as Listed & {
        hold: number;
        model: string;
      };
      expect(item).toMatchObject({
        status: one.status,
        cost: one.cost,
        usage: one.usage,
        message_id: one.message_id,
        error: one.error,
        chat_id: one.chat_id,
        hold: one.hold,
        model: one.model,
      });
    }
    expect(all.items.map((i) => i.status)).toEqual(['succeeded', 'failed', 'succeeded']);
    expect(all.items[0]!.cost).toBeGreaterThan(0);
    expect(all.items[1]).toMatchObject({ cost: 0, message_id: null, error: expect.any(String) as string });

    expect((await list(u.auth, `?chat_id=${a}`)).items.map((i) => i.id)).toEqual([ids[1], ids[0]]);
    expect((await list(u.auth, '?status=failed')).items.map((i) => i.id)).toEqual([ids[1]]);
    expect((await list(u.auth, `?chat_id=${b}&status=failed`)).items).toEqual([]);
    // A status of the contract that none of these is in (a task runs from its start).
    expect((await list(u.auth, '?status=queued')).items).toEqual([]);

    // A page at a time, each item once.
    const paged: string[] = [];
    let cursor: string | null = null;
    do {
      const page = await list(u.auth, `?limit=2${cursor ? `&cursor=${cursor}` : ''}`);
      expect(page.items.length).toBeLessThanOrEqual(2);
      paged.push(...page.items.map((i) => i.id));
      cursor = page.next_cursor;
    } while (cursor);
    expect(paged).toEqual([...ids].reverse());

    // Nobody sees another's tasks, not even by naming the chat.
    const theirs = await list(other.auth);
    expect(theirs.items).toHaveLength(1);
    expect(ids).not.toContain(theirs.items[0]!.id);
    expect((await list(other.auth, `?chat_id=${a}`)).items).toEqual([]);
  });

  it('shows a task still running at once, given the position its creation answered with', async () => {
    const u = await newUser();
    fake.setBehaviour({ tokenDelayMs: 50 });
    const res = await t.http
      .post(`${API}/tasks`)
      .set('Authorization', u.auth)
      .send({ chat_id: await newChat(u.auth) });
    expect(res.status).toBe(201);
    const listed = await t.http
      .get(`${API}/tasks?status=running`)
      .set('Authorization', u.auth)
      .set('X-Consistent-After', res.headers['x-event-position'] as string);
    expect(listed.status).toBe(200);
    expect((listed.body as { items: unknown[] }).items).toEqual([
      {
        id: (res.body as Started).id,
        chat_id: (res.body as { chat_id: string }).chat_id,
        model: 'fake-model',
        status: 'running',
        hold: (res.body as Started).hold,
        usage: null,
        cost: null,
        message_id: null,
        error: null,
        omitted_messages: 0,
        created_at: expect.any(String) as string,
        finished_at: null,
      },
    ]);
    await stream(u.auth, (res.body as Started).id);
  });

  it('refuses a bad filter or page (400) and a missing token (401), as problem+json', async () => {
    const u = await newUser();
    for (const query of [
      '?status=done',
      '?limit=0',
      '?limit=101',
      '?limit=1e1',
      '?limit=0x10',
      '?limit=1&limit=2',
      '?cursor=not-ours',
      `?chat_id=${'x'.repeat(101)}`,
    ]) {
      const res = await t.http.get(`${API}/tasks${query}`).set('Authorization', u.auth);
      expect(res.status).toBe(400);
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(JSON.stringify(res.body)).not.toMatch(/NaN/);
      if (query.startsWith('?limit')) expect(JSON.stringify(res.body)).toMatch(/whole number from 1 to 100/);
    }
    expect((await t.http.get(`${API}/tasks`)).status).toBe(401);
  });
});

describe('/chat/completions with the official openai client', () => {
  it.each([
    ['a provider 5xx through every retry', 500],
    ['the provider refusing our key', 401],
  ])(
    'answers a streamed completion that fails before any output (%s) with the 502 it answers unstreamed',
    async (_what, status) => {
      const u = await newUser();
      const client = clientOf(u);
      const say = [{ role: 'user' as const, content: 'Say something.' }];
      fake.setBehaviour({ fail: { status } });
      const unstreamed = await failureOf<{ status: number }>(
        client.chat.completions.create({ model: 'fake-model', messages: say }),
      );
      expect(unstreamed).toBeInstanceOf(OpenAI.InternalServerError);
      expect(unstreamed.status).toBe(502);
      // Nothing was sent before the failure: the SDK gets the same status, not a 200 stream with an
      // error inside it (a bare APIError, no status, never retried).
      const streamed = await failureOf<{ status: number; headers: Headers }>(
        (async () => {
          const chunks = await client.chat.completions.create({
            model: 'fake-model',
            messages: say,
            stream: true,
          });
          for await (const _ of chunks) {
            // read to the end
          }
        })(),
      );
      expect(streamed).toBeInstanceOf(OpenAI.InternalServerError);
      expect(streamed.status).toBe(502);
      expect(streamed.headers.get('x-should-retry')).toBeNull();
      // Neither was charged.
      await settledSpending(u.auth, 0, 'holds released, nothing charged');
      expect((await ledgerEvents(u.id)).some((e) => e.type === 'CreditsCaptured')).toBe(false);
    },
  );

  it('ends the built-in model’s reply before a stop sequence, charging nothing past it', async () => {
    const messages = [{ role: 'user' as const, content: 'alpha beta gamma' }];
    const whole = await clientOf(await newUser()).chat.completions.create({ model: 'local-echo', messages });
    // The local model's reply quotes the message: the stop sequence is in it.
    expect(whole.choices[0]!.message.content).toContain('beta');
    const u = await newUser();
    const stopped = await clientOf(u).chat.completions.create({
      model: 'local-echo',
      messages,
      stop: ['gamma', 'beta'],
    });
    const content = stopped.choices[0]!.message.content!;
    expect(whole.choices[0]!.message.content!.startsWith(content)).toBe(true);
    expect(content).not.toContain('beta');
    expect(whole.choices[0]!.message.content!.slice(content.length).startsWith('beta')).toBe(true);
    expect(stopped.choices[0]!.finish_reason).toBe('stop');
    expect(stopped.usage!.completion_tokens).toBeLessThan(whole.usage!.completion_tokens);
    const cost =
      creditsFor(stopped.usage!.prompt_tokens, PROMPT_PRICE) +
      creditsFor(stopped.usage!.completion_tokens, COMPLETION_PRICE);
    await settledSpending(u.auth, cost, 'charged what was written');
  });

  it('answers a completion with usage, charged to the caller', async () => {
    const u = await newUser();
    const client = clientOf(u);
    const completion = await client.chat.completions.create({
      model: 'fake-model',
      messages: [{ role: 'user', content: 'Say something.' }],
    });
    expect(completion.object).toBe('chat.completion');
    expect(completion.choices[0]!.message.content).toBe(REPLY);
    expect(completion.choices[0]!.finish_reason).toBe('stop');
    const usage = completion.usage!;
    expect(usage.total_tokens).toBe(usage.prompt_tokens + usage.completion_tokens);
    const cost =
      creditsFor(usage.prompt_tokens, PROMPT_PRICE) + creditsFor(usage.completion_tokens, COMPLETION_PRICE);
    await settledSpending(u.auth, cost, 'completion charged');
  });

  it('streams chunks, then the usage chunk', async () => {
    const u = await newUser();
    const client = clientOf(u);
    const chunks = await client.chat.completions.create({
      model: 'fake-model',
      messages: [{ role: 'user', content: 'Say something.' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage: OpenAI.CompletionUsage | undefined;
    let finish: string | null = null;
    for await (const c of chunks) {
      text += c.choices[0]?.delta.content ?? '';
      finish = c.choices[0]?.finish_reason ?? finish;
      if (c.usage) usage = c.usage;
    }
    expect(text).toBe(REPLY);
    expect(finish).toBe('stop');
    expect(usage?.completion_tokens).toBe(countTextTokens(REPLY));
  });

  it('passes on why the provider ended the reply, streamed or not, and records it with the task', async () => {
    const u = await newUser();
    const client = clientOf(u);
    const ask = { model: 'fake-model', messages: [{ role: 'user' as const, content: 'Say something.' }] };
    const recorded = async (completionId: string) => {
      const events = await t.deps.store.readStream(taskStream(completionId.replace(/^chatcmpl-/, '')));
      return (events.find((e) => e.type === 'TaskCompleted')?.data as { finishReason?: string }).finishReason;
    };
    // A filter upstream ended it, though the output limit was far: the caller hears the provider's word.
    fake.setBehaviour({ finishReason: 'content_filter' });
    const filtered = await client.chat.completions.create(ask);
    expect(filtered.choices[0]!.finish_reason).toBe('content_filter');
    expect(await recorded(filtered.id)).toBe('content_filter');
    const chunks = await client.chat.completions.create({ ...ask, stream: true });
    let id = '';
    const finishes: (string | null)[] = [];
    for await (const c of chunks) {
      id = c.id;
      finishes.push(c.choices[0]?.finish_reason ?? null);
    }
    expect(finishes.filter((f) => f !== null)).toEqual(['content_filter']);
    expect(await recorded(id)).toBe('content_filter');
    // A finish reason of the functions API, which is not offered, is not passed on: the usage
    // against the limit decides.
    fake.setBehaviour({ finishReason: 'function_call' });
    const other = await client.chat.completions.create(ask);
    expect(other.choices[0]!.finish_reason).toBe('stop');
    expect(await recorded(other.id)).toBeUndefined();
    fake.setBehaviour({ finishReason: undefined });
    const cut = await client.chat.completions.create({ ...ask, max_tokens: 3 });
    expect(cut.choices[0]!.finish_reason).toBe('length');
    expect(await recorded(cut.id)).toBe('length');
    // The provider's word wins over the usage either way: a limit of its own short of ours…
    fake.setBehaviour({ finishReason: 'length' });
    const ownLimit = await client.chat.completions.create(ask);
    expect(ownLimit.usage!.completion_tokens).toBeLessThan(100);
    expect(ownLimit.choices[0]!.finish_reason).toBe('length');
    // …and a natural end counted past ours (charged up to ours).
    fake.setBehaviour({ finishReason: 'stop', usage: { completion_tokens: 5_000 } });
    const overCounted = await client.chat.completions.create(ask);
    expect(overCounted.usage!.completion_tokens).toBe(100);
    expect(overCounted.choices[0]!.finish_reason).toBe('stop');
  });

  it('streams a retry with the same Idempotency-Key from the same task, holding and charging nothing more', async () => {
    const u = await newUser();
    const client = clientOf(u);
    const asked = fake.requests.length;
    const read = async () => {
      const { data, response } = await client.chat.completions
        .create(
          {
            model: 'fake-model',
            messages: [{ role: 'user', content: 'Say something.' }],
            stream: true,
            stream_options: { include_usage: true },
          },
          { headers: { 'Idempotency-Key': 'stream-1' } },
        )
        .withResponse();
      let text = '';
      let id = '';
      let usage: OpenAI.CompletionUsage | undefined;
      for await (const c of data) {
        id = c.id;
        text += c.choices[0]?.delta.content ?? '';
        if (c.usage) usage = c.usage;
      }
      return { id, text, usage, replayed: response.headers.get('idempotent-replayed') };
    };
    const first = await read();
    const retry = await read();
    expect(first).toMatchObject({ text: REPLY, replayed: null });
    expect(retry).toEqual({ ...first, replayed: 'true' });
    expect(fake.requests.length).toBe(asked + 1);
    const cost =
      creditsFor(first.usage!.prompt_tokens, PROMPT_PRICE) +
      creditsFor(first.usage!.completion_tokens, COMPLETION_PRICE);
    await settledSpending(u.auth, cost, 'charged');
    await expectChargedOnce(u);
  });

  it('tells an SDK not to retry a failed completion it was charged for, so a retry does not charge again', async () => {
    const u = await newUser();
    const client = new OpenAI({ apiKey: u.auth.slice('Bearer '.length), baseURL: baseUrl }); // retries on 5xx
    fake.setBehaviour({ dropAfterTokens: 3 });
    const asked = fake.requests.length;
    const err = await failureOf<{ status: number; headers: Headers }>(
      client.chat.completions.create({
        model: 'fake-model',
        messages: [{ role: 'user', content: 'Say something.' }],
      }),
    );
    expect(err.status).toBe(502);
    expect(err.headers.get('x-should-retry')).toBe('false');
    expect(fake.requests.length).toBe(asked + 1);
    await expectChargedOnce(u);
    // It says where its settlement ended, as a completed one does: a read given it sees the charge.
    const settledAt = err.headers.get('x-event-position')!;
    const captured = (await ledgerEvents(u.id)).filter((e) => e.type === 'CreditsCaptured');
    const capturedAt = (await t.deps.store.readStream(ledgerStream(u.id))).at(-1)!.position;
    expect(BigInt(settledAt)).toBeGreaterThanOrEqual(capturedAt);
    const read = await t.http
      .get(`${API}/users/me/credits`)
      .set('Authorization', u.auth)
      .set('X-Consistent-After', settledAt);
    expect(read.body).toMatchObject({ balance: 1000 - (captured[0]!.data.amount as number), held: 0 });
  });

  it('goes on from its task when the first attempt failed (5xx) after starting it, charging once', async () => {
    const u = await newUser();
    const asked = fake.requests.length;
    const send = () =>
      t.http
        .post(`${API}/chat/completions`)
        .set('Authorization', u.auth)
        .set('Idempotency-Key', 'fails-once')
        .send({ model: 'fake-model', messages: [{ role: 'user', content: 'Say something.' }] });
    const outcomeOf = jest.spyOn(t.deps.tasks!, 'outcomeOf').mockRejectedValueOnce(new Error('lost'));
    try {
      const failed = await send();
      expect(failed.status).toBe(500);
      const retry = await send();
      expect(retry.status).toBe(200);
      expect(retry.body.choices[0].message.content).toBe(REPLY);
    } finally {
      outcomeOf.mockRestore();
    }
    expect(fake.requests.length).toBe(asked + 1);
    await expectChargedOnce(u);
  });

  it('goes on from the task of a first attempt whose instance stopped renewing its key, charging once', async () => {
    const u = await newUser();
    fake.setBehaviour({ tokenDelayMs: 40 });
    const send = () =>
      t.http
        .post(`${API}/chat/completions`)
        .set('Authorization', u.auth)
        .set('Idempotency-Key', 'slow-1')
        .send({ model: 'fake-model', messages: [{ role: 'user', content: 'Say something.' }] })
        .then((res) => res);
    const first = send();
    const key = () =>
      t.deps.db.db
        .selectFrom('idempotency_keys')
        .select('ref')
        .where('scope', '=', `user:${u.id}`)
        .where('key', '=', 'slow-1');
    // The first attempt has started its task and named it. Its lease then runs out, as when its
    // instance dies (this one goes on, to show both answers are one task's).
    const named = await eventually(
      () => key().executeTakeFirst(),
      (r) => Boolean(r?.ref),
      'task named',
    );
    await t.deps.db.db
      .updateTable('idempotency_keys')
      .set({ created_at: sql<Date>`now() - interval '61 seconds'` })
      .where('scope', '=', `user:${u.id}`)
      .where('key', '=', 'slow-1')
      .execute();
    const retry = await send();
    const answered = await first;
    expect(answered.status).toBe(200);
    expect(retry.status).toBe(200);
    expect(retry.body).toMatchObject({
      id: `chatcmpl-${named!.ref}`,
      choices: [{ message: { content: REPLY } }],
      usage: answered.body.usage,
    });
    expect(answered.body.id).toBe(retry.body.id);
    await expectChargedOnce(u);
  });

  it('refuses without a token (401), without credits (402), and bad input (400), as problem+json', async () => {
    const anonymous = new OpenAI({ apiKey: 'not-a-token', baseURL: baseUrl, maxRetries: 0 });
    await expect(
      anonymous.chat.completions.create({ model: 'fake-model', messages: [{ role: 'user', content: 'x' }] }),
    ).rejects.toMatchObject({ status: 401 });
    const u = await newUser();
    const client = clientOf(u);
    await expect(
      client.chat.completions.create({ model: 'fake-luxury', messages: [{ role: 'user', content: 'x' }] }),
    ).rejects.toMatchObject({ status: 402 });
    const bad = await t.http
      .post(`${API}/chat/completions`)
      .set('Authorization', u.auth)
      .send({ messages: [] });
    expect(bad.status).toBe(400);
    expect(bad.type).toBe('application/problem+json');
  });

  it('stops a completion whose client left, charging what was generated, unless a retry may take it up', async () => {
    fake.setBehaviour({ tokenDelayMs: 50 });
    const full = countTextTokens(REPLY);
    const say = [{ role: 'user' as const, content: 'Say something.' }];
    /** The task of the user's one hold, once it ended, with its settlement done. */
    const ended = async (u: { id: string; auth: string }) => {
      const reserved = await eventually(
        () => ledgerEvents(u.id),
        (es) => es.some((e) => e.type === 'CreditsReserved'),
        'held',
      );
      const taskId = reserved.find((e) => e.type === 'CreditsReserved')!.data.holdId as string;
      const view = await finished(u.auth, taskId);
      await settledSpending(u.auth, view.cost ?? 0, 'settled');
      return view;
    };

    // Streamed, and the SDK's stream aborted after the first words (the Stop button).
    const a = await newUser();
    const client = clientOf(a);
    const stop = new AbortController();
    const stream = await client.chat.completions.create(
      { model: 'fake-model', messages: say, stream: true },
      { signal: stop.signal },
    );
    // The SDK ends the loop (or throws) once aborted; either way the client has left.
    await (async () => {
      for await (const c of stream) if (c.choices[0]?.delta.content) stop.abort();
    })().catch(() => undefined);
    const streamed = await ended(a);
    expect(streamed.status).toBe('cancelled');
    expect(streamed.usage!.completion_tokens).toBeLessThan(full);

    // Not streamed, and the connection closed while the reply was being generated (a timeout).
    const b = await newUser();
    const asked = fake.requests.length;
    const req = http.request(`${baseUrl}/chat/completions`, {
      method: 'POST',
      headers: { Authorization: b.auth, 'content-type': 'application/json' },
    });
    req.on('error', () => undefined);
    req.end(JSON.stringify({ model: 'fake-model', messages: say }));
    // Gone once the model has been asked, while it is still answering (a reply takes a second).
    await eventually(
      () => Promise.resolve(fake.requests.length),
      (n) => n > asked,
      'the model asked',
    );
    req.destroy();
    const waited = await ended(b);
    expect(waited.status).toBe('cancelled');
    expect(waited.usage!.completion_tokens).toBeLessThan(full);

    // Under an Idempotency-Key it goes on, whole, for the retry.
    const c = await newUser();
    await new Promise<void>((resolve) => {
      const req = http.request(`${baseUrl}/chat/completions`, {
        method: 'POST',
        headers: { Authorization: c.auth, 'content-type': 'application/json', 'Idempotency-Key': 'stay-1' },
      });
      req.on('error', () => resolve());
      req.end(JSON.stringify({ model: 'fake-model', messages: say, stream: true }));
      req.on('response', (res) =>
        res.once('data', () => {
          req.destroy();
          resolve();
        }),
      );
    });
    const kept = await ended(c);
    expect(kept.status).toBe('succeeded');
    expect(kept.usage!.completion_tokens).toBe(full);
  });

  it('refuses alternatives without log probabilities, more than one choice, audio, web search, the functions API, unknown reply formats and tool requests that do not hold together, asking and holding nothing, and takes images as data URLs', async () => {
    const u = await newUser();
    const client = clientOf(u);
    const say = [{ role: 'user' as const, content: 'What is the weather?' }];
    const tool = {
      type: 'function' as const,
      function: { name: 'weather', parameters: { type: 'object', properties: {} } },
    };
    const refused: [Record<string, unknown>, string, RegExp?][] = [
      [{ response_format: { type: 'xml' } }, 'response_format.type'],
      [
        { response_format: { type: 'json_schema', json_schema: { schema: {} } } },
        'response_format.json_schema.name',
      ],
      [{ top_logprobs: 2 }, 'top_logprobs', /needs logprobs/],
      [{ logprobs: true, top_logprobs: 21 }, 'top_logprobs'],
      [{ n: 2 }, 'n'],
      [{ modalities: ['text', 'audio'] }, 'modalities.1', /only text/],
      [{ audio: { voice: 'alloy', format: 'mp3' } }, 'audio', /not offered/],
      [{ web_search_options: {} }, 'web_search_options', /not offered/],
      [{ logit_bias: { '50256': 101 } }, 'logit_bias.50256'],
      [{ verbosity: 'terse' }, 'verbosity'],
      [
        { messages: [{ role: 'user', content: [{ type: 'refusal', refusal: 'No.' }] }] },
        'messages.0.content',
      ],
      [{ reasoning_effort: 'very high' }, 'reasoning_effort'],
      [{ messages: [{ ...say[0], reasoning_content: 'Hmm.' }] }, 'messages.0.reasoning_content'],
      [
        {
          messages: [
            ...say,
            {
              role: 'assistant',
              content: null,
              tool_calls: [{ id: 'call_1', type: 'function', function: { name: '', arguments: '{}' } }],
            },
          ],
        },
        'messages.1.tool_calls.0.function.name',
      ],
      [{ seed: 1.5 }, 'seed'],
      [{ functions: [tool.function] }, 'functions', /use tools/],
      [{ function_call: { name: 'weather' } }, 'function_call', /use tool_choice/],
      [
        {
          messages: [...say, { role: 'assistant', content: 'Looking.' }, { role: 'tool', content: 'sunny' }],
        },
        'messages.2.tool_call_id',
      ],
      [{ messages: [{ ...say[0], tool_call_id: 'call_1' }] }, 'messages.0.tool_call_id'],
      [
        {
          messages: [
            {
              ...say[0],
              tool_calls: [
                { id: 'call_1', type: 'function', function: { name: 'weather', arguments: '{}' } },
              ],
            },
          ],
        },
        'messages.0.tool_calls',
      ],
      [{ messages: [{ role: 'user', content: null }] }, 'messages.0.content'],
      [{ tool_choice: 'required' }, 'tool_choice'],
      [
        { tools: [tool], tool_choice: { type: 'function', function: { name: 'forecast' } } },
        'tool_choice.function.name',
      ],
      [{ tools: [tool, tool] }, 'tools.1.function.name'],
      [{ tools: [{ type: 'custom', custom: { name: 'grammar' } }] }, 'tools.0.type'],
    ];
    const before = fake.requests.length;
    for (const [extra, param, message] of refused) {
      const err = await failureOf<{ status: number; param: string; message: string }>(
        client.chat.completions.create({ model: 'fake-model', messages: say, ...extra } as never),
      );
      expect(err).toMatchObject({ status: 400, param });
      if (message) expect(err.message).toMatch(message);
    }
    expect(fake.requests.length).toBe(before); // nothing was asked of the model
    expect((await ledgerEvents(u.id)).map((e) => e.type)).toEqual(['CreditsGranted']); // nor held

    // What asks for nothing more than text passes, and no empty tools go upstream.
    const plain = await client.chat.completions.create({
      model: 'fake-model',
      messages: say,
      tools: [],
      tool_choice: 'none',
      function_call: 'none',
      parallel_tool_calls: true,
      seed: 7,
      reasoning_effort: 'max',
      response_format: { type: 'text' },
      logprobs: false,
      modalities: ['text'],
      logit_bias: { '1000': -100 },
      verbosity: 'low',
      // What changes no reply is taken and not passed on.
      user: 'user-42',
      metadata: { app: 'test' },
      store: false,
      service_tier: 'auto',
      audio: null,
      web_search_options: null,
      stream: null,
      stream_options: { include_usage: null },
    } as never);
    expect(plain.choices[0]!.message.content).toBe(REPLY);
    const upstream = fake.requests.at(-1)!.body;
    expect(upstream).not.toHaveProperty('tools');
    expect(upstream).not.toHaveProperty('tool_choice');
    expect(upstream).not.toHaveProperty('parallel_tool_calls');
    for (const dropped of [
      'modalities',
      'user',
      'metadata',
      'store',
      'service_tier',
      'audio',
      'web_search_options',
    ])
      expect(upstream).not.toHaveProperty(dropped);
    // A seed, a reasoning effort, a bias of tokens and a verbosity go on as asked.
    expect(upstream).toMatchObject({
      seed: 7,
      reasoning_effort: 'max',
      logit_bias: { '1000': -100 },
      verbosity: 'low',
    });

    // Speakers' names go on, and a refusal the model gave comes back to it as its text.
    await client.chat.completions.create({
      model: 'fake-model',
      messages: [
        { role: 'user', name: 'ann', content: 'Tell me a secret.' },
        { role: 'assistant', content: [{ type: 'refusal', refusal: 'I cannot.' }] },
        { role: 'user', name: 'bob', content: 'Why not?' },
      ],
    });
    const conversation = fake.requests.at(-1)!.body.messages as unknown as Record<string, unknown>[];
    expect(conversation).toEqual([
      { role: 'user', name: 'ann', content: 'Tell me a secret.' },
      { role: 'assistant', content: [{ type: 'text', text: 'I cannot.' }] },
      { role: 'user', name: 'bob', content: 'Why not?' },
    ]);

    // An uploaded picture, as apps send it: a data URL, passed upstream as sent, its detail too.
    const picture = `data:image/jpg;base64,${(
      await sharp({ create: { width: 2, height: 2, channels: 3, background: '#f00' } })
        .png()
        .toBuffer()
    ).toString('base64')}`;
    const seen = await client.chat.completions.create({
      model: 'fake-model',
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'What is this?' },
            { type: 'image_url', image_url: { url: picture, detail: 'low' } },
          ],
        },
      ],
    });
    expect(seen.choices[0]!.message.content).toBe(REPLY);
    const sent = fake.requests.at(-1)!.body.messages as unknown as { content: unknown }[];
    expect(sent.at(-1)!.content).toEqual([
      { type: 'text', text: 'What is this?' },
      { type: 'image_url', image_url: { url: picture, detail: 'low' } },
    ]);
    const notImage = await t.http
      .post(`${API}/chat/completions`)
      .set('Authorization', u.auth)
      .send({
        model: 'fake-model',
        messages: [
          {
            role: 'user',
            content: [{ type: 'image_url', image_url: { url: 'data:text/html;base64,PGI+' } }],
          },
        ],
      });
    expect(notImage.status).toBe(400);
  });

  it('tells the SDK what went wrong in OpenAI’s error object, beside the problem', async () => {
    const u = await newUser();
    const client = clientOf(u);
    const anonymous = new OpenAI({ apiKey: 'not-a-token', baseURL: baseUrl, maxRetries: 0 });
    const say = [{ role: 'user' as const, content: 'x' }];
    const cases: [Promise<unknown>, Record<string, unknown>][] = [
      [
        anonymous.chat.completions.create({ model: 'fake-model', messages: say }),
        { status: 401, code: 'invalid_api_key', type: 'invalid_request_error' },
      ],
      [
        client.chat.completions.create({ model: 'fake-luxury', messages: say }),
        { status: 402, code: 'insufficient_quota', type: 'insufficient_quota' },
      ],
      [
        client.chat.completions.create({ model: 'no-such-model', messages: say }),
        { status: 400, code: 'model_not_found' },
      ],
      [client.models.retrieve('no-such-model'), { status: 404, code: 'model_not_found' }],
      [
        client.chat.completions.create({ model: 'fake-model', messages: say, temperature: 9 }),
        { status: 400, type: 'invalid_request_error', param: 'temperature' },
      ],
    ];
    for (const [call, expected] of cases) {
      const err = await failureOf<{ status: number; message: string } & Record<string, unknown>>(call);
      expect(err).toMatchObject(expected);
      // The problem's detail, not "… status code (no body)".
      expect(err.message).not.toMatch(/no body/);
      expect(err.message.length).toBeGreaterThan(String(err.status).length + 5);
    }
    // On the path as the router matches it too.
    const slashed = await t.http.post(`${API}/chat/completions/`).send({ messages: say });
    expect(slashed.status).toBe(401);
    expect(slashed.body.error).toMatchObject({ code: 'invalid_api_key' });
    // The problem itself is as API.md has it.
    const raw = await t.http
      .post(`${API}/chat/completions`)
      .set('Authorization', u.auth)
      .send({ model: 'fake-luxury', messages: say });
    expect(raw.type).toBe('application/problem+json');
    expect(raw.body).toMatchObject({
      type: '/problems/insufficient-credits',
      status: 402,
      error: { type: 'insufficient_quota', code: 'insufficient_quota', message: raw.body.detail },
    });
  });

  describe('with tools', () => {
    const WEATHER = {
      type: 'function' as const,
      function: {
        name: 'get_weather',
        description: 'The weather now in a city.',
        parameters: {
          type: 'object',
          properties: { city: { type: 'string' }, unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
          required: ['city'],
          additionalProperties: false,
        },
        strict: true,
      },
    };
    const CLOCK = {
      type: 'function' as const,
      function: {
        name: 'get_time',
        parameters: { type: 'object', properties: { zone: { type: 'string' } } },
      },
    };
    const ASK = [{ role: 'user' as const, content: 'What is the weather in Paris?' }];
    const asRecorded = (calls: { id: string; name: string; arguments: string }[]) =>
      calls.map((c) => ({ id: c.id, type: 'function', function: { name: c.name, arguments: c.arguments } }));

    it('passes tools to the provider as sent, and answers its calls with no content, charging the usage it reports', async () => {
      const u = await newUser();
      const call = { id: 'call_w1', name: 'get_weather', arguments: '{"city":"Paris"}' };
      fake.setBehaviour({
        reply: '',
        toolCalls: [call],
        usage: { prompt_tokens: 57, completion_tokens: 23 },
      });
      const choice = { type: 'function' as const, function: { name: 'get_weather' } };
      const completion = await clientOf(u).chat.completions.create({
        model: 'fake-model',
        messages: ASK,
        tools: [WEATHER, CLOCK],
        tool_choice: choice,
        parallel_tool_calls: false,
      });
      const sent = fake.requests.at(-1)!.body;
      expect(sent.tools).toEqual([WEATHER, CLOCK]);
      expect(sent.tool_choice).toEqual(choice);
      expect(sent.parallel_tool_calls).toBe(false);

      expect(completion.choices[0]!.finish_reason).toBe('tool_calls');
      expect(completion.choices[0]!.message).toEqual({
        role: 'assistant',
        content: null,
        tool_calls: asRecorded([call]),
        refusal: null,
      });
      expect(completion.usage).toMatchObject({ prompt_tokens: 57, completion_tokens: 23, total_tokens: 80 });

      const cost = creditsFor(57, PROMPT_PRICE) + creditsFor(23, COMPLETION_PRICE);
      const { taskId, created, completed } = await recordedTask(completion.id);
      expect(completed).toMatchObject({
        content: '',
        usage: { promptTokens: 57, completionTokens: 23 },
        usageSource: 'provider',
        cost,
        finishReason: 'tool_calls',
        toolCalls: asRecorded([call]),
      });
      expect(cost).toBeLessThan(created.hold);
      await settledSpending(u.auth, cost, 'the calls charged');
      expect(await holdMovements(u.id, taskId)).toEqual([
        ['CreditsReserved', created.hold],
        ['CreditsCaptured', cost],
        ['CreditsReleased', created.hold - cost],
      ]);
    });

    it('streams calls after the text as OpenAI does, each call named in its first chunk, and ends with tool_calls', async () => {
      const u = await newUser();
      const calls = [
        { id: 'call_w1', name: 'get_weather', arguments: '{"city":"Paris","unit":"celsius"}' },
        { id: 'call_t1', name: 'get_time', arguments: '{"zone":"Europe/Paris"}' },
      ];
      fake.setBehaviour({ reply: 'Let me check.', toolCalls: calls });
      const read = await readStreamed(
        await clientOf(u).chat.completions.create({
          model: 'fake-model',
          messages: ASK,
          tools: [WEATHER, CLOCK],
          parallel_tool_calls: true,
          stream: true,
          stream_options: { include_usage: true },
        }),
      );
      expect(fake.requests.at(-1)!.body.parallel_tool_calls).toBe(true);
      expect(read.text).toBe('Let me check.');
      expect(read.order.lastIndexOf('text')).toBeGreaterThanOrEqual(0);
      expect(read.order.indexOf('call')).toBeGreaterThan(read.order.lastIndexOf('text'));
      expect(read.calls).toEqual(calls.map((c) => ({ ...c, type: 'function' })));
      // Passed on piece by piece as the provider sent them, not whole at the end.
      expect(read.chunksPerCall).toEqual(calls.map((c) => 1 + countTextTokens(c.arguments)));
      expect(read.finishes).toEqual(['tool_calls']);
      // The provider's count (the fake's: the text's tokens, then a token per chunk of a call).
      expect(read.usage?.completion_tokens).toBe(
        countTextTokens('Let me check.') + calls.reduce((n, c) => n + 1 + countTextTokens(c.arguments), 0),
      );
      expect((await recordedTask(read.id)).completed).toMatchObject({
        content: 'Let me check.',
        finishReason: 'tool_calls',
        toolCalls: asRecorded(calls),
      });
      // The SDK's own reader puts the same reply together.
      const final = await clientOf(u)
        .chat.completions.stream({ model: 'fake-model', messages: ASK, tools: [WEATHER, CLOCK] })
        .finalChatCompletion();
      expect(final.choices[0]!.message).toMatchObject({
        content: 'Let me check.',
        tool_calls: asRecorded(calls),
      });
      expect(final.choices[0]!.finish_reason).toBe('tool_calls');
    });

    it('says tool_calls for a reply of calls that its provider ended with stop, or with no reason it passes on', async () => {
      const u = await newUser();
      const call = { id: 'call_w1', name: 'get_weather', arguments: '{"city":"Paris"}' };
      const ask = { model: 'fake-model', messages: ASK, tools: [WEATHER] };
      for (const finishReason of ['stop', 'function_call']) {
        fake.setBehaviour({ reply: '', toolCalls: [call], finishReason });
        const whole = await clientOf(u).chat.completions.create(ask);
        expect(whole.choices[0]!.finish_reason).toBe('tool_calls');
        const read = await readStreamed(await clientOf(u).chat.completions.create({ ...ask, stream: true }));
        expect(read.finishes).toEqual(['tool_calls']);
      }
      // A call cut at the output limit says so.
      fake.setBehaviour({ finishReason: 'length' });
      expect((await clientOf(u).chat.completions.create(ask)).choices[0]!.finish_reason).toBe('length');
    });

    it('charges the pieces of calls a reply made before its provider failed, and releases the rest', async () => {
      const u = await newUser();
      const call = { id: 'call_w1', name: 'get_weather', arguments: '{"city":"Paris","unit":"celsius"}' };
      fake.setBehaviour({ reply: '', toolCalls: [call], dropAfterTokens: 4 });
      const asked = fake.requests.length;
      const err = await failureOf<{ status: number; headers: Headers }>(
        clientOf(u).chat.completions.create({ model: 'fake-model', messages: ASK, tools: [WEATHER] }),
      );
      expect(err.status).toBe(502);
      expect(fake.requests.length).toBe(asked + 1); // after output, never retried
      const failed = await failedTaskOf(u.id);
      expect(failed.usage.completionTokens).toBeGreaterThan(0);
      expect(failed.cost).toBeGreaterThan(0);
      const movements = await holdMovements(u.id, failed.taskId);
      expect(movements).toEqual([
        ['CreditsReserved', expect.any(Number)],
        ['CreditsCaptured', failed.cost],
        ['CreditsReleased', (movements[0]![1] as number) - failed.cost],
      ]);
    });

    it('sends calls and their results back to the provider as given, and holds for them and for the tools offered', async () => {
      const u = await newUser();
      const client = clientOf(u);
      const call = { id: 'call_w1', name: 'get_weather', arguments: '{"city":"Paris"}' };
      fake.setBehaviour({ reply: '', toolCalls: [call] });
      const asked = await client.chat.completions.create({
        model: 'fake-model',
        messages: ASK,
        tools: [WEATHER],
      });
      fake.setBehaviour({ reply: REPLY, toolCalls: undefined });
      const result = '{"temperature_c":18,"sky":"overcast","wind_kmh":12}';
      // A call is sent back as its model named it, which a provider may not have checked.
      const odd = {
        id: 'call_odd',
        type: 'function' as const,
        function: { name: 'functions.get weather', arguments: '' },
      };
      await client.chat.completions.create({
        model: 'fake-model',
        messages: [
          ...ASK,
          { role: 'assistant', content: null, tool_calls: [odd] },
          { role: 'tool', tool_call_id: 'call_odd', content: '?' },
        ],
      });
      const answered = await client.chat.completions.create({
        model: 'fake-model',
        tools: [WEATHER],
        messages: [
          ...ASK,
          asked.choices[0]!.message,
          { role: 'tool', tool_call_id: call.id, content: result },
        ],
      });
      expect(fake.requests.at(-1)!.body.messages).toEqual([
        { role: 'user', content: ASK[0]!.content },
        { role: 'assistant', content: null, tool_calls: asRecorded([call]) },
        { role: 'tool', tool_call_id: call.id, content: result },
      ]);
      expect(answered.choices[0]!.message).toEqual({ role: 'assistant', content: REPLY, refusal: null });
      expect(answered.choices[0]!.finish_reason).toBe('stop');

      const plain = await client.chat.completions.create({ model: 'fake-model', messages: ASK });
      const [withoutTools, withTools, withResult] = await Promise.all(
        [plain, asked, answered].map(async (c) => (await recordedTask(c.id)).created),
      );
      // The tools offered are counted, their schemas at least…
      expect(withTools!.promptTokens - withoutTools!.promptTokens).toBeGreaterThanOrEqual(
        countTextTokens(JSON.stringify(WEATHER.function.parameters)),
      );
      // …and the call and its result sent back.
      expect(withResult!.promptTokens - withTools!.promptTokens).toBeGreaterThanOrEqual(
        countTextTokens(call.arguments) + countTextTokens(result),
      );
      expect(withTools!.hold).toBeGreaterThan(withoutTools!.hold);
      expect(withResult!.hold).toBeGreaterThan(withTools!.hold);
    });

    it('counts calls with the tokenizer when the provider reports no usage, so a call is never free', async () => {
      const u = await newUser();
      const call = { id: 'call_w1', name: 'get_weather', arguments: '{"city":"Paris","unit":"celsius"}' };
      fake.setBehaviour({ reply: '', toolCalls: [call], omitUsage: true });
      const completion = await clientOf(u).chat.completions.create({
        model: 'fake-model',
        messages: ASK,
        tools: [WEATHER],
      });
      expect(completion.choices[0]!.message.tool_calls).toEqual(asRecorded([call]));
      const { taskId, created, completed } = await recordedTask(completion.id);
      expect(completed!.usageSource).toBe('tokenizer');
      // Nothing but the call was generated: its name and arguments are the output charged.
      const output = completed!.usage.completionTokens;
      expect(output).toBeGreaterThanOrEqual(countTextTokens(call.name) + countTextTokens(call.arguments));
      expect(completion.usage).toMatchObject({
        prompt_tokens: created.promptTokens,
        completion_tokens: output,
      });
      const cost = creditsFor(created.promptTokens, PROMPT_PRICE) + creditsFor(output, COMPLETION_PRICE);
      expect(completed!.cost).toBe(cost);
      await settledSpending(u.auth, cost, 'the call charged');
      expect((await holdMovements(u.id, taskId)).filter(([type]) => type === 'CreditsCaptured')).toEqual([
        ['CreditsCaptured', cost],
      ]);
    });

    it('gives each call sent without an id one of its own, the same in the answer and in the record', async () => {
      const u = await newUser();
      const client = clientOf(u);
      const calls = [
        { name: 'get_weather', arguments: '{"city":"Paris"}' },
        { name: 'get_time', arguments: '{"zone":"Europe/Paris"}' },
      ];
      fake.setBehaviour({ reply: '', toolCalls: calls });
      const read = await readStreamed(
        await client.chat.completions.create({
          model: 'fake-model',
          messages: ASK,
          tools: [WEATHER, CLOCK],
          stream: true,
        }),
      );
      const ids = read.calls.map((c) => c.id);
      expect(ids).toEqual([expect.stringMatching(/^call_\w+$/), expect.stringMatching(/^call_\w+$/)]);
      expect(new Set(ids).size).toBe(2);
      expect(read.calls).toEqual(calls.map((c, i) => ({ ...c, id: ids[i], type: 'function' })));
      expect((await recordedTask(read.id)).completed!.toolCalls!.map((c) => c.id)).toEqual(ids);

      const answer = await client.chat.completions.create({
        model: 'fake-model',
        messages: ASK,
        tools: [WEATHER],
      });
      const made = answer.choices[0]!.message.tool_calls!.map((c) => c.id);
      expect(made).toEqual([expect.stringMatching(/^call_\w+$/), expect.stringMatching(/^call_\w+$/)]);
      expect(made.filter((id) => ids.includes(id))).toEqual([]);
      expect((await recordedTask(answer.id)).completed!.toolCalls!.map((c) => c.id)).toEqual(made);
    });

    it('lets the built-in model, which calls no tools, answer in text when offered some, and refuses to make it call one', async () => {
      const u = await newUser();
      const client = clientOf(u);
      const asked = fake.requests.length;
      for (const tool_choice of [
        'required',
        { type: 'function', function: { name: 'get_weather' } },
      ] as const) {
        const err = await failureOf<{ status: number; message: string }>(
          client.chat.completions.create({
            model: 'local-echo',
            messages: ASK,
            tools: [WEATHER],
            tool_choice,
          }),
        );
        expect(err.status).toBe(400);
        expect(err.message).toMatch(/calls no tools/);
      }
      expect((await ledgerEvents(u.id)).map((e) => e.type)).toEqual(['CreditsGranted']);

      const answer = await client.chat.completions.create({
        model: 'local-echo',
        messages: ASK,
        tools: [WEATHER],
        tool_choice: 'auto',
      });
      expect(answer.choices[0]!.message).toEqual({
        role: 'assistant',
        content: expect.stringContaining('You said: “What is the weather in Paris?”'),
        refusal: null,
      });
      expect(answer.choices[0]!.finish_reason).toBe('stop');
      expect(fake.requests.length).toBe(asked);
    });
  });

  describe('with reasoning', () => {
    const THOUGHT = 'The user wants a greeting. A short and friendly one will do.';
    const ASK = [{ role: 'user' as const, content: 'Say hello.' }];
    const pieces = (s: string) => tokenPieces(s).filter((p) => p !== '');

    it('passes the reasoning on before the reply, streamed or not, and records it', async () => {
      const u = await newUser();
      const client = clientOf(u);
      fake.setBehaviour({ reasoning: THOUGHT });
      const chunks = await client.chat.completions.create({
        model: 'fake-model',
        messages: ASK,
        stream: true,
      });
      let id = '';
      const order: string[] = [];
      let thought = '';
      let text = '';
      for await (const c of chunks) {
        id = c.id;
        const delta = c.choices[0]?.delta as { content?: string; reasoning_content?: string } | undefined;
        if (delta?.reasoning_content) {
          order.push('reasoning');
          thought += delta.reasoning_content;
        }
        if (delta?.content) {
          order.push('content');
          text += delta.content;
        }
      }
      expect(thought).toBe(THOUGHT);
      expect(text).toBe(REPLY);
      // Piece by piece, as the provider sent it, all before the reply.
      expect(order).toEqual([
        ...pieces(THOUGHT).map(() => 'reasoning'),
        ...pieces(REPLY).map(() => 'content'),
      ]);
      expect((await recordedTask(id)).completed).toMatchObject({ content: REPLY, reasoning: THOUGHT });

      const whole = await client.chat.completions.create({ model: 'fake-model', messages: ASK });
      expect(whole.choices[0]!.message).toEqual({
        role: 'assistant',
        content: REPLY,
        reasoning_content: THOUGHT,
        refusal: null,
      });
    });

    it('charges the reasoning of a reply cut before any text, and keeps it out of the chat', async () => {
      const u = await newUser();
      const client = clientOf(u);
      fake.setBehaviour({ reasoning: THOUGHT, dropAfterTokens: 3 });
      const err = await failureOf<{ status: number }>(
        client.chat.completions.create({ model: 'fake-model', messages: ASK }),
      );
      expect(err.status).toBe(502);
      const failed = await failedTaskOf(u.id);
      const holdId = failed.taskId;
      expect(failed.usage.completionTokens).toBe(countTextTokens(pieces(THOUGHT).slice(0, 3).join('')));
      expect(failed.cost).toBeGreaterThan(0);
      expect((await holdMovements(u.id, holdId)).map(([type]) => type)).toEqual([
        'CreditsReserved',
        'CreditsCaptured',
        'CreditsReleased',
      ]);

      // In a chat: charged the same way, and no empty reply saved for it.
      const chatId = await newChat(u.auth);
      const started = await startTask(u.auth, chatId);
      const s = await stream(u.auth, started.id);
      expect(s.events.map((e) => e.event)).toEqual(['error']);
      const view = await finished(u.auth, started.id);
      expect(view).toMatchObject({ status: 'failed', message_id: null });
      expect(view.cost).toBeGreaterThan(0);
      const sent = (await t.deps.store.readStream(chatStream(chatId))).filter(
        (e) => e.type === 'MessageSent',
      );
      expect((sent.at(-1)!.data as { role: string }).role).toBe('user');
    });

    it('sends back the reasoning of an assistant message when the client does, counting it in the hold', async () => {
      const u = await newUser();
      const client = clientOf(u);
      const call = { id: 'call_1', type: 'function' as const, function: { name: 'greet', arguments: '{}' } };
      const turn = (reasoning?: string) => [
        ...ASK,
        {
          role: 'assistant' as const,
          content: null,
          tool_calls: [call],
          ...(reasoning ? { reasoning_content: reasoning } : {}),
        },
        { role: 'tool' as const, tool_call_id: 'call_1', content: 'Hello!' },
      ];
      const without = await client.chat.completions.create({ model: 'fake-model', messages: turn() });
      const withIt = await client.chat.completions.create({ model: 'fake-model', messages: turn(THOUGHT) });
      expect(fake.requests.at(-1)!.body.messages![1]).toEqual({
        role: 'assistant',
        content: null,
        tool_calls: [call],
        reasoning_content: THOUGHT,
      });
      const [a, b] = await Promise.all(
        [without, withIt].map(async (c) => (await recordedTask(c.id)).created),
      );
      expect(b!.promptTokens - a!.promptTokens).toBe(countTextTokens(THOUGHT));
    });

    it('charges the reasoning like the reply, counted when the provider reports no usage', async () => {
      const u = await newUser();
      const client = clientOf(u);
      fake.setBehaviour({ reasoning: THOUGHT, omitUsage: true });
      const completion = await client.chat.completions.create({ model: 'fake-model', messages: ASK });
      const { taskId, completed } = await recordedTask(completion.id);
      expect(completed!.usageSource).toBe('tokenizer');
      expect(completed!.usage.completionTokens).toBe(countTextTokens(THOUGHT) + countTextTokens(REPLY));
      expect((await holdMovements(u.id, taskId)).filter(([type]) => type === 'CreditsCaptured')).toEqual([
        ['CreditsCaptured', completed!.cost],
      ]);
    });

    it('keeps a chat to its reply: its stream and its saved message have no reasoning, though it is charged', async () => {
      const u = await newUser();
      const chatId = await newChat(u.auth);
      fake.setBehaviour({ reasoning: THOUGHT });
      const started = await startTask(u.auth, chatId);
      const s = await stream(u.auth, started.id);
      expect([...new Set(s.events.map((e) => e.event))]).toEqual(['delta', 'done']);
      expect(
        s.events
          .filter((e) => e.event === 'delta')
          .map((e) => e.data.content)
          .join(''),
      ).toBe(REPLY);
      const done = s.events.at(-1)!.data as { message_id: string; usage: { completion_tokens: number } };
      expect(done.usage.completion_tokens).toBe(pieces(THOUGHT).length + countTextTokens(REPLY));
      // Its event keeps no reasoning either.
      const completed = (await t.deps.store.readStream(taskStream(started.id))).find(
        (e) => e.type === 'TaskCompleted',
      )!.data;
      expect(completed).not.toHaveProperty('reasoning');
      const saved = await lastMessage(u.auth, chatId, done.message_id);
      expect(saved.content).toEqual([{ type: 'text', text: REPLY }]);
    });
  });

  describe('with log probabilities', () => {
    const ASK = [{ role: 'user' as const, content: 'Say something.' }];
    const pieces = tokenPieces(REPLY).filter((p) => p !== '');

    it('passes on each token’s log probability and its alternatives, streamed or not, as the provider gave them', async () => {
      const u = await newUser();
      const client = clientOf(u);
      const expected = pieces.map((p, i) => fakeLogprob(p, i, 2));
      const chunks = await client.chat.completions.create({
        model: 'fake-model',
        messages: ASK,
        stream: true,
        logprobs: true,
        top_logprobs: 2,
      });
      const streamed: OpenAI.ChatCompletionTokenLogprob[] = [];
      let text = '';
      for await (const c of chunks) {
        const choice = c.choices[0];
        if (!choice?.delta.content) continue;
        text += choice.delta.content;
        // Each with the piece of text it is the tokens of.
        expect(choice.logprobs!.content!.map((l) => l.token).join('')).toBe(choice.delta.content);
        streamed.push(...choice.logprobs!.content!);
      }
      expect(text).toBe(REPLY);
      expect(streamed).toEqual(expected);
      expect(fake.requests.at(-1)!.body).toMatchObject({ logprobs: true, top_logprobs: 2 });

      const whole = await client.chat.completions.create({
        model: 'fake-model',
        messages: ASK,
        logprobs: true,
        top_logprobs: 2,
      });
      expect(whole.choices[0]!.message.content).toBe(REPLY);
      expect(whole.choices[0]!.logprobs).toEqual({ content: expected, refusal: null });
      // Charged as any reply: the probabilities are no tokens of their own.
      expect((await recordedTask(whole.id)).completed!.usage.completionTokens).toBe(
        tokenPieces(REPLY).length,
      );

      // Not asked for: none asked upstream, none answered.
      const plain = await client.chat.completions.create({ model: 'fake-model', messages: ASK });
      expect(plain.choices[0]!.logprobs).toBeNull();
      expect(fake.requests.at(-1)!.body).not.toHaveProperty('logprobs');
      const plainChunks = await client.chat.completions.create({
        model: 'fake-model',
        messages: ASK,
        stream: true,
      });
      for await (const c of plainChunks) if (c.choices[0]) expect(c.choices[0].logprobs).toBeNull();
    });

    it('names no alternatives upstream when none are asked, answers null when the provider gives none, and the local model’s tokens as certain', async () => {
      const u = await newUser();
      const client = clientOf(u);
      // Asked without alternatives: none named upstream, and each token with none.
      const bare = await client.chat.completions.create({
        model: 'fake-model',
        messages: ASK,
        logprobs: true,
      });
      expect(fake.requests.at(-1)!.body).toMatchObject({ logprobs: true });
      expect(fake.requests.at(-1)!.body).not.toHaveProperty('top_logprobs');
      expect(bare.choices[0]!.logprobs).toEqual({
        content: pieces.map((p, i) => fakeLogprob(p, i, 0)),
        refusal: null,
      });
      // A provider that gives none (some ignore the parameter): the reply, without them.
      fake.setBehaviour({ logprobsContent: [] });
      const none = await client.chat.completions.create({
        model: 'fake-model',
        messages: ASK,
        logprobs: true,
      });
      expect(none.choices[0]!.message.content).toBe(REPLY);
      expect(none.choices[0]!.logprobs).toBeNull();

      // The built-in model is deterministic: each token was certain, and had no alternative.
      const local = await client.chat.completions.create({
        model: 'local-echo',
        messages: [{ role: 'user', content: 'Ça va? 你好 🎉' }],
        logprobs: true,
        top_logprobs: 3,
      });
      const tokens = local.choices[0]!.logprobs!.content!;
      expect(tokens.map((l) => l.token).join('')).toBe(local.choices[0]!.message.content);
      for (const l of tokens) {
        expect(l.logprob).toBe(0);
        expect(Buffer.from(l.bytes!).toString('utf8')).toBe(l.token);
        expect(l.top_logprobs).toEqual([{ token: l.token, logprob: 0, bytes: l.bytes }]);
      }
    });
  });

  describe('with a reply format', () => {
    const CITY = {
      type: 'json_schema' as const,
      json_schema: {
        name: 'city',
        description: 'A city and its country.',
        schema: {
          type: 'object',
          properties: { city: { type: 'string' }, country: { type: 'string' } },
          required: ['city', 'country'],
          additionalProperties: false,
        },
        strict: true,
      },
    };
    const ASK = [{ role: 'user' as const, content: 'Where is the Eiffel Tower?' }];

    it('passes the format to the provider as sent, streamed or not, and holds for its schema', async () => {
      const u = await newUser();
      const client = clientOf(u);
      const json = '{"city":"Paris","country":"France"}';
      fake.setBehaviour({ reply: json });
      const shaped = await client.chat.completions.create({
        model: 'fake-model',
        messages: ASK,
        response_format: CITY,
      });
      expect(fake.requests.at(-1)!.body.response_format).toEqual(CITY);
      expect(JSON.parse(shaped.choices[0]!.message.content!)).toEqual({ city: 'Paris', country: 'France' });

      let streamed = '';
      const chunks = await client.chat.completions.create({
        model: 'fake-model',
        messages: ASK,
        response_format: { type: 'json_object' },
        stream: true,
      });
      for await (const c of chunks) streamed += c.choices[0]?.delta.content ?? '';
      expect(fake.requests.at(-1)!.body.response_format).toEqual({ type: 'json_object' });
      expect(streamed).toBe(json);

      const text = await client.chat.completions.create({
        model: 'fake-model',
        messages: ASK,
        response_format: { type: 'text' },
      });
      expect(fake.requests.at(-1)!.body).not.toHaveProperty('response_format');
      const [withSchema, plain] = await Promise.all(
        [shaped, text].map(async (c) => (await recordedTask(c.id)).created),
      );
      expect(withSchema!.promptTokens - plain!.promptTokens).toBeGreaterThanOrEqual(
        countTextTokens(JSON.stringify(CITY.json_schema.schema)),
      );
    });

    it('refuses a JSON reply of the built-in model, which answers in text only, holding nothing', async () => {
      const u = await newUser();
      const client = clientOf(u);
      for (const response_format of [{ type: 'json_object' as const }, CITY]) {
        const err = await failureOf<{ status: number; message: string }>(
          client.chat.completions.create({ model: 'local-echo', messages: ASK, response_format }),
        );
        expect(err.status).toBe(400);
        expect(err.message).toMatch(/text only/);
      }
      expect((await ledgerEvents(u.id)).map((e) => e.type)).toEqual(['CreditsGranted']);
      const answer = await client.chat.completions.create({
        model: 'local-echo',
        messages: ASK,
        response_format: { type: 'text' },
      });
      expect(answer.choices[0]!.message.content).toContain('Where is the Eiffel Tower?');
    });
  });
});
