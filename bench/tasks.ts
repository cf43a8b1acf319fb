import fs from 'node:fs';
import { request } from 'undici';
import {
  exited,
  firstLine,
  freePort,
  onEachDatabase,
  percentile,
  serverDatabase,
  startProcess,
  waitUntilUp,
  type BenchContext,
} from './support';

const STREAMS = 200;
/** The fake's pace: one token every 10 ms, as a fast hosted model streams. */
const TOKEN_DELAY_MS = 10;
/** Unmeasured tasks before the first-token samples (compiling the code paths, not warming caches). */
const WARMUP_TASKS = 10;
/** The pause before each first-token sample taken on an idle service. */
const IDLE_PAUSE_MS = 100;

/**
 * Task streaming through the service against the fake provider (each in its own process, so the
 * service's CPU is its own): the time to first token through the service minus straight to the
 * fake (POST /tasks + GET /tasks/{id}/stream up to the first delta, against one streaming request
 * to the fake), and completed tasks/s with 200 streams at once, with the service's CPU per task.
 */
export const tasksBench = (ctx: BenchContext): Promise<void> => onEachDatabase(ctx, tasksOn);

async function tasksOn(ctx: BenchContext, serverUrl: string | undefined): Promise<void> {
  const samples = ctx.quick ? 30 : 200;
  // --quick keeps to two minutes in all: the embedded figures get the shorter run.
  const seconds = ctx.quick ? (serverUrl ? 8 : 4) : 30;
  const server = serverUrl ? await serverDatabase(serverUrl) : undefined;
  const fake = await startProcess(['--import', 'tsx', 'bench/fakeProvider.ts', String(TOKEN_DELAY_MS)], {});
  const fakeUrl = (await firstLine(fake)).trim();
  const port = await freePort();
  const models = {
    providers: [{ id: 'fake', type: 'openai', base_url: fakeUrl, api_key: 'bench' }],
    models: [
      {
        id: 'fake-model',
        provider: 'fake',
        context_length: 128_000,
        default_max_tokens: 256,
        max_output_tokens: 1024,
        prompt_price: 1,
        completion_price: 2,
      },
    ],
  };
  // BENCH_SPLIT=1 (server only): the instance taking requests runs no read models; a second one
  // runs them (with the reactors and the sweeper), as a deployment that scales HTTP apart would.
  const split = Boolean(server && process.env.BENCH_SPLIT === '1');
  const env = (httpPort: number, projections: boolean) => ({
    PORT: String(httpPort),
    PROJECTIONS_ENABLED: String(projections),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'warn',
    NODE_ENV: 'production',
    JWT_SECRET: 'bench-secret-bench-secret-bench-secret-01',
    EMBEDDED_DB_PORT: '0',
    ...(server ? { DATABASE_URL: server.url, DATABASE_POOL_SIZE: '40' } : { DATA_DIR: 'memory://' }),
    MODELS_JSON: JSON.stringify(models),
    RATE_LIMITS_ENABLED: 'false',
    TASKS_MAX_RUNNING_PER_USER: '1000',
    SIGNUP_CREDITS: '100000000',
  });
  // As `npm start` runs it.
  const serveArgs = [
    '--max-semi-space-size=32',
    ...(process.env.BENCH_CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir=' + process.env.BENCH_CPU_PROF] : []),
    '--import',
    'tsx',
    'src/cli/serve.ts',
  ];
  const service = await startProcess(serveArgs, env(port, !split));
  const projector = split ? await startProcess(serveArgs, env(await freePort(), true)) : undefined;
  const setup = split ? ', HTTP and read models in two processes' : '';
  const base = `http://127.0.0.1:${port}/api/v1`;
  try {
    await waitUntilUp(`http://127.0.0.1:${port}/health`);
    // A user per stream, as people chat: one user's streams would contend for its slots and ledger.
    const idleSamples = Math.min(samples, 100);
    const all = await benchChats(base, STREAMS + WARMUP_TASKS + idleSamples, { chatsPerUser: 1 });
    const users = all.slice(0, STREAMS);
    const warmupUsers = all.slice(STREAMS, STREAMS + WARMUP_TASKS);
    const idleUsers = all.slice(STREAMS + WARMUP_TASKS);

    // Time to first token, one at a time: straight to the fake, then through the service. A few
    // tasks first, unmeasured, on users of their own: the code paths of a task are compiled, and
    // each measured task is still its user's first (nothing of its chat or slots is cached).
    for (const u of warmupUsers) await runTask(base, u);
    for (let i = 0; i < WARMUP_TASKS; i++) await completionFirstToken(fakeUrl);
    const direct: number[] = [];
    const through: number[] = [];
    const answered: number[] = [];
    const whole: number[] = [];
    /** Each back-to-back sample as it came: its first token, and when its POST was answered. */
    const inOrder: { first: number; answered: number }[] = [];
    for (let i = 0; i < samples; i++) direct.push(await completionFirstToken(fakeUrl));
    // The floor of what a task can add: a task is two requests (POST, then its stream), and an
    // HTTP round trip to the service that touches nothing (GET /health) is part of each.
    const bare: number[] = [];
    for (let i = 0; i < samples; i++) bare.push(await roundTrip(`http://127.0.0.1:${port}/health`));
    for (let i = 0; i < samples; i++) {
      const r = await runTask(base, users[i % STREAMS]!);
      through.push(r.firstTokenMs);
      answered.push(r.answeredMs);
      whole.push(r.doneMs);
      inOrder.push({ first: r.firstTokenMs, answered: r.answeredMs });
    }
    // The same again with a pause before each task: each then starts on an idle service, where
    // back to back it meets the read models catching up on the task before it.
    const idle: number[] = [];
    for (const u of idleUsers) {
      await new Promise((resolve) => setTimeout(resolve, IDLE_PAUSE_MS));
      idle.push((await runTask(base, u)).firstTokenMs);
    }
    // The same streaming request as straight to the fake, through the service's `/chat/completions`
    // (held, charged and settled like a task): what the service adds to one request, where a
    // chat's task is two (its POST, then its stream).
    for (const u of warmupUsers) await completionFirstToken(base, u.auth);
    const completions: number[] = [];
    for (let i = 0; i < samples; i++)
      completions.push(await completionFirstToken(base, users[i % STREAMS]!.auth));
    for (const a of [direct, through, answered, idle, whole, bare, completions]) a.sort((x, y) => x - y);
    // What the service adds: its times less the fake's typical one. Both percentiles subtract the
    // median, since the fake's slowest answers are hiccups of their own: p99 less p99 once reported
    // a p99 below the p50.
    const p50 = percentile(through, 50) - percentile(direct, 50);
    const p99 = percentile(through, 99) - percentile(direct, 50);
    const db = server ? 'PostgreSQL' : 'PGlite';
    const median = (a: number[]) => percentile(a, 50).toFixed(1);
    ctx.note(
      `tasks (${db}): first token p50 ${median(through)} ms from the POST, which was answered at ` +
        `${median(answered)} ms; straight to the fake ${median(direct)} ms; the task done (reply ` +
        `saved, charged, slots freed) at ${median(whole)} ms`,
    );
    // The slowest samples, which make the p99: where each was, and how much of it was the POST.
    const slowest = inOrder
      .map((r, i) => ({ ...r, i }))
      .sort((x, y) => y.first - x.first)
      .slice(0, 3)
      .map((r) => `#${r.i + 1} ${r.first.toFixed(1)} ms (answered at ${r.answered.toFixed(1)})`);
    ctx.note(`tasks (${db}): slowest first tokens back to back, of ${samples}: ${slowest.join(', ')}`);
    ctx.note(
      `tasks (${db}): an HTTP round trip to the service doing nothing (GET /health) p50 ${median(bare)} ms; ` +
        `the two of a task less the fake's answer: ${(2 * percentile(bare, 50) - percentile(direct, 50)).toFixed(1)} ms ` +
        `added before any database work`,
    );
    ctx.figures.push({
      suite: 'tasks',
      name: `added time to first token p50, ${db}${setup}`,
      value: p50,
      unit: 'ms',
      reference: { name: 'direct to the fake, p50 ms', value: percentile(direct, 50) },
      target: '< 5 ms',
      met: p50 < 5,
    });
    ctx.figures.push({
      suite: 'tasks',
      name: `added time to first token p99, ${db}${setup}`,
      value: p99,
      unit: 'ms',
      reference: {
        name: `direct to the fake, p50 ms (its p99: ${percentile(direct, 99).toFixed(1)} ms)`,
        value: percentile(direct, 50),
      },
      target: '< 25 ms',
      met: p99 < 25,
    });
    for (const p of [50, 99]) {
      ctx.figures.push({
        suite: 'tasks',
        name: `added time to first token p${p}, ${IDLE_PAUSE_MS} ms between tasks, ${db}${setup}`,
        value: percentile(idle, p) - percentile(direct, 50),
        unit: 'ms',
        reference: { name: 'direct to the fake, p50 ms', value: percentile(direct, 50) },
      });
    }
    for (const p of [50, 99]) {
      ctx.figures.push({
        suite: 'tasks',
        name: `added time to first token p${p}, the same request through /chat/completions, ${db}${setup}`,
        value: percentile(completions, p) - percentile(direct, 50),
        unit: 'ms',
        reference: { name: 'direct to the fake, p50 ms', value: percentile(direct, 50) },
      });
    }

    // Throughput: 200 streams at once, each starting its next task when the last is done. Counted
    // over `seconds` after a warm-up (the streams ramping up, the JIT, the pool growing): the
    // tasks finished in that window, and the CPU spent in it.
    const serviceCpu = () => cpuMs(service.pid!) + (projector ? cpuMs(projector.pid!) : 0);
    const snapshot = () => ({
      at: Date.now(),
      service: serviceCpu(),
      machine: machineBusyMs(),
      database: server ? postgresCpuMs() : NaN,
      fake: cpuMs(fake.pid!),
      serviceSystem: cpuMs(service.pid!, 'system'),
      serviceOwn: cpuMs(service.pid!),
      serviceMain: cpuMs(service.pid!, 'all', service.pid),
      load: process.cpuUsage(),
    });
    const warmupMs = ctx.quick ? 2_000 : 5_000;
    let window: 'warming' | 'counting' | 'over' = 'warming';
    let first = snapshot();
    let last = first;
    const opening = setTimeout(() => {
      first = snapshot();
      window = 'counting';
    }, warmupMs);
    const closing = setTimeout(
      () => {
        last = snapshot();
        window = 'over';
      },
      warmupMs + seconds * 1000,
    );
    let completed = 0;
    let failed = 0;
    /** Where a task's time went under load: its POST answered, first and last token, done. */
    const phases = {
      answered: [] as number[],
      first: [] as number[],
      last: [] as number[],
      done: [] as number[],
    };
    const reasons = new Map<string, number>();
    await Promise.all(
      users.map(async (u) => {
        while (window !== 'over') {
          // Its phases are a sample of the load only if it started in the window: the first tasks
          // start all at once, and wait behind each other for seconds.
          const startedIn = window;
          const r = await runTask(base, u).catch((err: unknown) => {
            const why = err instanceof Error ? err.message.slice(0, 80) : String(err);
            reasons.set(why, (reasons.get(why) ?? 0) + 1);
            return null;
          });
          if (window !== 'counting') continue;
          if (r?.done) {
            completed++;
            if (startedIn !== 'counting') continue;
            phases.answered.push(r.answeredMs);
            phases.first.push(r.firstTokenMs);
            phases.last.push(r.lastTokenMs);
            phases.done.push(r.doneMs);
          } else failed++;
        }
      }),
    );
    clearTimeout(opening);
    clearTimeout(closing);
    const elapsed = (last.at - first.at) / 1000;
    const cpu = last.service - first.service;
    const machineCpu = last.machine - first.machine;
    const databaseCpu = last.database - first.database;
    const fakeCpu = last.fake - first.fake;
    const systemCpu = last.serviceSystem - first.serviceSystem;
    const mainCpu = last.serviceMain - first.serviceMain;
    const otherThreadsCpu = last.serviceOwn - first.serviceOwn - mainCpu;
    const loadCpu = (last.load.user - first.load.user + last.load.system - first.load.system) / 1000;
    const rate = completed / elapsed;
    ctx.figures.push({
      suite: 'tasks',
      name: `completed tasks/s, ${STREAMS} concurrent streams, ${db}${setup}`,
      value: rate,
      unit: 'tasks/s',
      target: '>= 300',
      met: rate >= 300,
    });
    ctx.figures.push({
      suite: 'tasks',
      name: `service CPU per completed task, ${db}${setup}`,
      value: completed > 0 ? cpu / completed : NaN,
      unit: 'ms',
    });
    ctx.figures.push({
      suite: 'tasks',
      name: `machine CPU per completed task (service, database, load and fake), ${db}${setup}`,
      value: completed > 0 ? machineCpu / completed : NaN,
      unit: 'ms',
    });
    const share = (ms: number) => (completed > 0 ? (ms / completed).toFixed(2) : 'n/a');
    ctx.note(
      `tasks (${db}): CPU per task — service ${share(cpu)} ms (${share(systemCpu)} ms of it in the kernel), ${server ? `PostgreSQL ${share(databaseCpu)} ms, ` : ''}` +
        `load generator ${share(loadCpu)} ms, fake provider ${share(fakeCpu)} ms, machine ${share(machineCpu)} ms`,
    );
    // The event loop is one thread: busy all the time, it is the limit whatever the cores. The other
    // threads are V8's (garbage collection, compiling) and libuv's pool.
    ctx.note(
      `tasks (${db}): the service's main thread ${share(mainCpu)} ms per task, busy ${((mainCpu / (elapsed * 1000)) * 100).toFixed(0)}% ` +
        `of the time; its other threads ${share(otherThreadsCpu)} ms per task`,
    );
    ctx.note(
      `tasks: ${completed} completed, ${failed} not, in ${elapsed.toFixed(1)} s; replies of ~20 tokens at ${TOKEN_DELAY_MS} ms/token`,
    );
    // With the streams kept busy, throughput is 200 over a task's time: where that time goes (of
    // the tasks started in the window).
    for (const a of Object.values(phases)) a.sort((x, y) => x - y);
    const at = (a: number[]) => `${percentile(a, 50).toFixed(0)} / ${percentile(a, 99).toFixed(0)}`;
    ctx.note(
      `tasks (${db}): under load, p50 / p99 ms from the POST: answered ${at(phases.answered)}, first token ` +
        `${at(phases.first)}, last token ${at(phases.last)}, done ${at(phases.done)}`,
    );
    for (const [why, n] of reasons) ctx.note(`tasks: ${n} × ${why}`);
  } finally {
    service.kill('SIGTERM');
    projector?.kill('SIGTERM');
    fake.kill('SIGTERM');
    await Promise.all([exited(service), exited(fake), ...(projector ? [exited(projector)] : [])]);
    await server?.drop();
  }
}

export interface BenchUser {
  auth: string;
  chatId: string;
}

/**
 * `count` chats, each with a user's first message, spread over users of `chatsPerUser` chats each:
 * signing up hashes a password (argon2id, deliberately slow), so the users are few.
 */
export async function benchChats(
  base: string,
  count: number,
  options: { model?: string; chatsPerUser?: number } = {},
): Promise<BenchUser[]> {
  const perUser = options.chatsPerUser ?? 10;
  const auths = await Promise.all(
    Array.from({ length: Math.ceil(count / perUser) }, (_, i) => newUser(base, i)),
  );
  const chats: BenchUser[] = [];
  // Twenty at a time: the service is still starting its read models.
  for (let i = 0; i < count; i += 20) {
    chats.push(
      ...(await Promise.all(
        Array.from({ length: Math.min(20, count - i) }, (_, j) =>
          newChat(base, auths[Math.floor((i + j) / perUser)]!, options.model ?? 'fake-model'),
        ),
      )),
    );
  }
  return chats;
}

async function newUser(base: string, i: number): Promise<string> {
  const username = `bench_${process.pid}_${i}`;
  const password = 'bench-password';
  await call(base, 'POST', '/users', undefined, { username, password });
  const form = new URLSearchParams({ username, password });
  const token = await fetch(`${base}/session/oauth2/token`, { method: 'POST', body: form });
  return `Bearer ${((await token.json()) as { access_token: string }).access_token}`;
}

async function newChat(base: string, auth: string, model: string): Promise<BenchUser> {
  const preset = await call(base, 'POST', '/presets', auth, {
    name: 'bench',
    description: '',
    model,
    parameters: { max_tokens: 64 },
    messages: [{ role: 'system', content: 'Be brief.' }],
    public: false,
  });
  const chat = await call(base, 'POST', '/chats', auth, { preset_id: String(preset.id) });
  await call(base, 'POST', `/chats/${String(chat.id)}/messages`, auth, {
    content: [{ type: 'text', text: 'What is event sourcing?' }],
  });
  return { auth, chatId: String(chat.id) };
}

async function call(base: string, method: string, route: string, auth: string | undefined, body: object) {
  const res = await fetch(`${base}${route}`, {
    method,
    headers: { 'content-type': 'application/json', ...(auth ? { authorization: auth } : {}) },
    body: JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`${method} ${route}: ${res.status} ${await res.text()}`);
  return (await res.json()) as Record<string, unknown>;
}

/**
 * The measured requests go by undici's `request`, not `fetch`: the load generator shares the
 * machine with the service, and `fetch`'s Request/Response and web streams cost it more than twice
 * the CPU per task for the same bytes on the wire. The fake is timed the same way.
 */
async function send(
  url: string,
  options: { method?: 'GET' | 'POST'; auth?: string; body?: object } = {},
): Promise<{ status: number; body: AsyncIterable<Buffer> & { text(): Promise<string> } }> {
  const res = await request(url, {
    method: options.method ?? 'GET',
    headers: {
      ...(options.body ? { 'content-type': 'application/json' } : {}),
      ...(options.auth ? { authorization: options.auth } : {}),
    },
    ...(options.body ? { body: JSON.stringify(options.body) } : {}),
  });
  return { status: res.statusCode, body: res.body as never };
}

/** One task: POST, then its stream to the end. Time to first token and the POST's answer are from the POST. */
async function runTask(
  base: string,
  u: BenchUser,
): Promise<{ firstTokenMs: number; answeredMs: number; lastTokenMs: number; doneMs: number; done: boolean }> {
  const t0 = performance.now();
  const posted = await send(`${base}/tasks`, { method: 'POST', auth: u.auth, body: { chat_id: u.chatId } });
  const answer = await posted.body.text();
  if (posted.status !== 201) throw new Error(`POST /tasks: ${posted.status} ${answer}`);
  const created = JSON.parse(answer) as { id: string };
  const answeredMs = performance.now() - t0;
  const res = await send(`${base}/tasks/${created.id}/stream`, { auth: u.auth });
  if (res.status !== 200) {
    await res.body.text();
    throw new Error(`stream: ${res.status}`);
  }
  let first = NaN;
  let last = NaN;
  let text = '';
  const decoder = new TextDecoder();
  for await (const chunk of res.body) {
    const piece = decoder.decode(chunk, { stream: true });
    text += piece;
    if (Number.isNaN(first) && text.includes('event: delta')) first = performance.now() - t0;
    if (piece.includes('event: delta')) last = performance.now() - t0;
  }
  return {
    firstTokenMs: first,
    answeredMs,
    lastTokenMs: last,
    doneMs: performance.now() - t0,
    done: text.includes('event: done'),
  };
}

/** One request answered in full, timed as a task's requests are (sent, body read). */
async function roundTrip(url: string): Promise<number> {
  const t0 = performance.now();
  await (await send(url)).body.text();
  return performance.now() - t0;
}

/**
 * One streaming chat completion, timed up to its first content chunk: straight to the fake, or the
 * same request through the service's `/chat/completions` (as a user, charged to their credits).
 */
async function completionFirstToken(baseUrl: string, auth = 'Bearer bench'): Promise<number> {
  const t0 = performance.now();
  const res = await send(`${baseUrl}/chat/completions`, {
    method: 'POST',
    auth,
    body: {
      model: 'fake-model',
      stream: true,
      stream_options: { include_usage: true },
      messages: [{ role: 'user', content: 'What is event sourcing?' }],
    },
  });
  if (res.status !== 200)
    throw new Error(`${baseUrl}/chat/completions: ${res.status} ${await res.body.text()}`);
  let first = NaN;
  let text = '';
  const decoder = new TextDecoder();
  for await (const chunk of res.body) {
    text += decoder.decode(chunk, { stream: true });
    if (Number.isNaN(first) && /"content":"[^"]/.test(text)) first = performance.now() - t0;
  }
  // Read to its end, as a task's stream is, so the next request reuses the connection: leaving
  // early would make each sample pay for a new one, and flatter what the service adds.
  return first;
}

/** CPU time every core of the machine spent busy (not idle or waiting), in ms, from /proc/stat. */
function machineBusyMs(): number {
  try {
    const cpu = fs
      .readFileSync('/proc/stat', 'utf8')
      .split('\n')[0]!
      .trim()
      .split(/\s+/)
      .slice(1)
      .map(Number);
    // user nice system idle iowait irq softirq steal …: all but idle and iowait, in clock ticks (100/s).
    const busy = cpu.slice(0, 8).reduce((a, b) => a + b, 0) - cpu[3]! - cpu[4]!;
    return busy * 10;
  } catch {
    return NaN;
  }
}

/** CPU time of every PostgreSQL server process on the machine, in ms, from /proc (Linux; NaN elsewhere). */
function postgresCpuMs(): number {
  try {
    let total = 0;
    for (const pid of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      let stat: string;
      try {
        stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      } catch {
        continue; // ended meanwhile
      }
      if (!stat.includes('(postgres)')) continue;
      const fields = stat.split(') ')[1]!.split(' ');
      total += (Number(fields[11]) + Number(fields[12])) * 10;
    }
    return total;
  } catch {
    return NaN;
  }
}

/**
 * CPU time of a process (user + system, or its system part), in ms, from /proc (Linux; NaN
 * elsewhere); of one of its threads only when `thread` is given (the main thread's id is the pid).
 */
function cpuMs(pid: number, part: 'all' | 'system' = 'all', thread?: number): number {
  try {
    const path = thread === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${thread}/stat`;
    const fields = fs.readFileSync(path, 'utf8').split(') ')[1]!.split(' ');
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command name; in clock ticks (100/s).
    return ((part === 'all' ? Number(fields[11]) : 0) + Number(fields[12])) * 10;
  } catch {
    return NaN;
  }
}
