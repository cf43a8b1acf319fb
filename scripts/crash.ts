import { execFile, spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { promisify } from 'node:util';
import pg from 'pg';
import { exited, freePort, serverDatabase } from '../bench/support';
import { CommandHandler } from '../src/commands/handler';
import type { EventStore } from '../src/eventstore/port';
import { uuidV7Ids } from '../src/platform/clock';
import { allProjectors } from '../src/projections';

/**
 * The crash test: mixed load (messages, tasks streamed or left, redemptions-free credits) against
 * the service, `kill -9` at a random moment, restart, several times; then every command that was
 * answered 2xx must have its effect, every interrupted task must be settled with its hold given
 * back, `ledger verify` and `ledger reconcile` must pass. Needs the PostgreSQL server (DATABASE_URL).
 *
 * `npm run crash -- [--rounds 5]`; the test suite runs it with two rounds.
 */
const ROOT = path.join(__dirname, '..');
const run = promisify(execFile);
const USERS = 6;
const PASSWORD = 'crash-test-password';

export interface CrashReport {
  rounds: number;
  messages: number;
  tasks: number;
  problems: string[];
}

export interface Actor {
  auth: string;
  chatId: string;
}

export async function crashTest(options: {
  serverUrl: string;
  rounds: number;
  log?: (line: string) => void;
}): Promise<CrashReport> {
  const log = options.log ?? (() => undefined);
  const db = await serverDatabase(options.serverUrl);
  const port = await freePort();
  const base = `http://127.0.0.1:${port}/api/v1`;
  const env = {
    DATABASE_URL: db.url,
    PORT: String(port),
    HOST: '127.0.0.1',
    EMBEDDED_DB_PORT: '0',
    JWT_SECRET: 'crash-test-secret-crash-test-secret-0123',
    LOG_LEVEL: 'error',
    RATE_LIMITS_ENABLED: 'false',
    SIGNUP_CREDITS: '100000',
    LOCAL_MODEL_DELAY_MS: '20',
    TASK_TIMEOUT_SECONDS: '6',
    TASK_SWEEP_INTERVAL_MS: '500',
    HOLD_EXPIRY_INTERVAL_MS: '500',
    REDIS_URL: '',
  };
  const messages: { auth: string; chatId: string; id: string }[] = [];
  const tasks: { auth: string; id: string }[] = [];
  const problems: string[] = [];
  let service = await start(env, base);
  try {
    const actors = await Promise.all(Array.from({ length: USERS }, (_, i) => newActor(base, i)));
    for (let round = 1; round <= options.rounds; round++) {
      let stopping = false;
      const load = Promise.all(
        actors.map(async (a) => {
          while (!stopping) {
            await drive(base, a, messages, tasks).catch(() => undefined);
          }
        }),
      );
      await sleep(1_000 + Math.random() * 2_000);
      service.kill('SIGKILL');
      await exited(service);
      stopping = true;
      await load;
      log(
        `round ${round}: killed with ${messages.length} messages and ${tasks.length} tasks answered so far`,
      );
      service = await start(env, base);
    }

    // Every interrupted task ends (its instance died: the sweeper fails it past its deadline).
    log(`waiting for ${tasks.length} tasks to end`);
    for (const t of tasks) {
      const status = await waitFor(
        async () => ((await get(base, `/tasks/${t.id}`, t.auth)) as { status: string }).status,
        (s) => s !== 'running' && s !== 'queued',
        30_000,
      );
      if (status === 'running' || status === 'queued') problems.push(`task ${t.id} still ${status}`);
      log(`task ${t.id}: ${status}`);
    }
    for (const m of messages) {
      const found = await waitFor(
        async () => (await messageIds(base, m.chatId, m.auth)).has(m.id),
        (ok) => ok,
        10_000,
      );
      if (!found) problems.push(`message ${m.id} answered 201 but not in its chat`);
    }
    for (const a of actors) {
      const credits = await waitFor(
        async () => (await get(base, '/users/me/credits', a.auth)) as { held: number },
        // A hold whose task was never recorded expires a task's life after its deadline.
        (c) => c.held === 0,
        30_000,
      );
      if (credits.held !== 0) problems.push(`a user still has ${credits.held} credits held`);
    }
    for (const report of ['verify', 'reconcile']) {
      const out = await run(process.execPath, ['--import', 'tsx', 'src/cli/ledger.ts', report], {
        cwd: ROOT,
        env: { ...process.env, ...env, LOG_LEVEL: 'warn' },
      }).catch((err: { stdout?: string; code?: number }) => ({ stdout: err.stdout ?? '', failed: err.code }));
      if ('failed' in out) problems.push(`ledger ${report} failed: ${out.stdout.slice(0, 500)}`);
    }
    // Every read model equals a fresh rebuild from the event store.
    const before = await checksums(db.url);
    const rebuilt = await run(
      process.execPath,
      ['--import', 'tsx', 'src/cli/projections.ts', 'rebuild', '--all'],
      {
        cwd: ROOT,
        env: { ...process.env, ...env, LOG_LEVEL: 'warn' },
      },
    ).catch((err: { stderr?: string }) => ({ failed: err.stderr ?? 'failed' }));
    if ('failed' in rebuilt) problems.push(`rebuild failed: ${String(rebuilt.failed).slice(-800)}`);
    const after = await checksums(db.url);
    for (const [table, sum] of before) {
      if (after.get(table) !== sum) problems.push(`read model table ${table} differs from its rebuild`);
    }
    log(`compared ${before.size} read model tables with their rebuild`);
    return { rounds: options.rounds, messages: messages.length, tasks: tasks.length, problems };
  } finally {
    service.kill('SIGTERM');
    await exited(service);
    await db.drop();
  }
}

/** One step of a user's load: a message, a task, its stream read to the end or left early. */
export async function drive(
  base: string,
  a: Actor,
  messages: { auth: string; chatId: string; id: string }[],
  tasks: { auth: string; id: string }[],
): Promise<void> {
  const msg = await post(base, `/chats/${a.chatId}/messages`, a.auth, {
    content: [{ type: 'text', text: `Tell me something, ${Math.random()}` }],
  });
  if (msg.status === 201) messages.push({ auth: a.auth, chatId: a.chatId, id: String(msg.body.id) });
  const task = await post(base, '/tasks', a.auth, { chat_id: a.chatId });
  if (task.status !== 201) {
    await sleep(200);
    return;
  }
  tasks.push({ auth: a.auth, id: String(task.body.id) });
  const abort = new AbortController();
  const res = await fetch(`${base}/tasks/${String(task.body.id)}/stream`, {
    headers: { authorization: a.auth },
    signal: abort.signal,
  });
  const leaveEarly = Math.random() < 0.3;
  for await (const _ of res.body ?? []) {
    if (leaveEarly) {
      abort.abort();
      break;
    }
  }
}

export async function newActor(base: string, i: number): Promise<Actor> {
  const username = `crash_${i}_${Date.now() % 100000}`;
  await post(base, '/users', undefined, { username, password: PASSWORD });
  const token = await fetch(`${base}/session/oauth2/token`, {
    method: 'POST',
    body: new URLSearchParams({ username, password: PASSWORD }),
  });
  const auth = `Bearer ${((await token.json()) as { access_token: string }).access_token}`;
  const preset = await post(base, '/presets', auth, {
    name: 'crash',
    description: '',
    model: 'local-echo',
    parameters: { max_tokens: 40 },
    messages: [{ role: 'system', content: 'Be brief.' }],
    public: false,
  });
  const chat = await post(base, '/chats', auth, { preset_id: String(preset.body.id) });
  return { auth, chatId: String(chat.body.id) };
}

async function post(base: string, route: string, auth: string | undefined, body: object) {
  const res = await fetch(`${base}${route}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(auth ? { authorization: auth } : {}) },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json().catch(() => ({}))) as Record<string, unknown> };
}

async function get(base: string, route: string, auth: string): Promise<unknown> {
  const res = await fetch(`${base}${route}`, { headers: { authorization: auth } });
  return res.json();
}

/** A checksum of every read model table's rows (order-independent), by table. */
async function checksums(url: string): Promise<Map<string, string>> {
  const commands = new CommandHandler({} as EventStore, { ids: uuidV7Ids });
  const tables = allProjectors(commands).flatMap((p) => p.tables);
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const sums = new Map<string, string>();
    for (const table of tables) {
      const { rows } = await client.query<{ sum: string | null; n: string }>(
        `select md5(string_agg(md5(t::text), '' order by md5(t::text))) as sum, count(*) as n from ${table} t`,
      );
      sums.set(table, `${rows[0]?.n}:${rows[0]?.sum}`);
    }
    return sums;
  } finally {
    await client.end();
  }
}

/** Every message id of a chat, page by page. */
async function messageIds(base: string, chatId: string, auth: string): Promise<Set<string>> {
  const ids = new Set<string>();
  let cursor: string | null = null;
  do {
    const query: string = cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
    const page = (await get(base, `/chats/${chatId}/messages?limit=100${query}`, auth)) as {
      items: { id: string }[];
      next_cursor: string | null;
    };
    for (const i of page.items) ids.add(i.id);
    cursor = page.next_cursor;
  } while (cursor);
  return ids;
}

async function waitFor<T>(read: () => Promise<T>, ok: (v: T) => boolean, ms: number): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = await read().catch(() => undefined);
    if (v !== undefined && ok(v)) return v;
    if (Date.now() > until) return v as T;
    await sleep(200);
  }
}

export async function start(env: Record<string, string>, base: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/serve.ts'], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const until = Date.now() + 60_000;
  while (Date.now() < until) {
    const up = await fetch(`${base.replace('/api/v1', '')}/health`).then(
      (r) => r.ok,
      () => false,
    );
    if (up) return child;
    if (child.exitCode !== null) throw new Error(`the service exited with ${child.exitCode}`);
    await sleep(200);
  }
  throw new Error('the service did not start within 60 s');
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

if (require.main === module) {
  const { values } = parseArgs({ options: { rounds: { type: 'string', default: '5' } } });
  const serverUrl = process.env.DATABASE_URL;
  if (!serverUrl) {
    console.error('the crash test needs the PostgreSQL server: set DATABASE_URL');
    process.exit(2);
  }
  crashTest({ serverUrl, rounds: Number(values.rounds), log: (l) => console.log(l) }).then(
    (r) => {
      console.log(JSON.stringify(r, null, 2));
      process.exit(r.problems.length === 0 ? 0 : 1);
    },
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
