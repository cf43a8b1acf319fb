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
import { benchChats } from './tasks';

const CLIENTS = 64;

/**
 * HTTP command throughput: `SendMessage` (POST /chats/{id}/messages) from 64 concurrent clients in a
 * second process, against the same load on a bare Koa handler on this machine; and the latency of a
 * query (GET /chats/{id}/messages) sent one at a time while that load runs.
 */
export const httpBench = (ctx: BenchContext): Promise<void> => onEachDatabase(ctx, httpOn);

async function httpOn(ctx: BenchContext, serverUrl: string | undefined): Promise<void> {
  const seconds = ctx.quick ? 3 : 20;
  const server = serverUrl ? await serverDatabase(serverUrl) : undefined;
  const db = server ? 'PostgreSQL' : 'PGlite';
  const bare = await startProcess(['--import', 'tsx', 'bench/bareKoa.ts'], {});
  const barePort = Number((await firstLine(bare)).trim());
  const port = await freePort();
  const service = await startProcess(['--import', 'tsx', 'src/cli/serve.ts'], {
    PORT: String(port),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'warn',
    NODE_ENV: 'production',
    JWT_SECRET: 'bench-secret-bench-secret-bench-secret-01',
    EMBEDDED_DB_PORT: '0',
    RATE_LIMITS_ENABLED: 'false',
    ...(server ? { DATABASE_URL: server.url, DATABASE_POOL_SIZE: '40' } : { DATA_DIR: 'memory://' }),
  });
  const base = `http://127.0.0.1:${port}/api/v1`;
  try {
    await waitUntilUp(`http://127.0.0.1:${port}/health`);
    const users = await benchChats(base, CLIENTS, { model: 'local-echo', chatsPerUser: 8 });
    const body = JSON.stringify({ content: [{ type: 'text', text: 'A message of a few words.' }] });
    const headers = (auth?: string) => ({
      'content-type': 'application/json',
      ...(auth ? { authorization: auth } : {}),
    });

    const reference = await load({
      targets: [{ url: `http://127.0.0.1:${barePort}/x`, method: 'POST', headers: headers(), body }],
      concurrency: CLIENTS,
      seconds,
    });
    const queries: number[] = [];
    let loading = true;
    const sampling = (async () => {
      const u = users[0]!;
      while (loading) {
        const t0 = performance.now();
        await fetch(`${base}/chats/${u.chatId}/messages?limit=20`, {
          headers: { authorization: u.auth },
        }).then((r) => r.arrayBuffer());
        queries.push(performance.now() - t0);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })();
    const commands = await load({
      targets: users.map((u) => ({
        url: `${base}/chats/${u.chatId}/messages`,
        method: 'POST',
        headers: headers(u.auth),
        body,
      })),
      concurrency: CLIENTS,
      seconds,
    });
    loading = false;
    await sampling;
    queries.sort((a, b) => a - b);
    ctx.figures.push({
      suite: 'http',
      name: `SendMessage commands/s, ${CLIENTS} clients, ${db}`,
      value: commands.perSecond,
      unit: 'commands/s',
      reference: { name: 'bare Koa handler, same load', value: reference.perSecond },
      ratio: commands.perSecond / reference.perSecond,
    });
    ctx.figures.push({
      suite: 'http',
      name: `SendMessage latency p50 / p99, ${db}`,
      value: commands.p50,
      unit: `ms (p99 ${commands.p99.toFixed(1)} ms)`,
    });
    ctx.figures.push({
      suite: 'http',
      name: `query (a chat's messages) under that load, p50 / p99, ${db}`,
      value: percentile(queries, 50),
      unit: `ms (p99 ${percentile(queries, 99).toFixed(1)} ms)`,
    });
    ctx.note(
      `http: commands ${JSON.stringify(commands.statuses)}, ${commands.errors} errors; ${queries.length} queries`,
    );
  } finally {
    service.kill('SIGTERM');
    bare.kill('SIGTERM');
    await Promise.all([exited(service), exited(bare)]);
    await server?.drop();
  }
}

interface LoadResult {
  ok: number;
  errors: number;
  statuses: Record<string, number>;
  perSecond: number;
  p50: number;
  p99: number;
}

async function load(spec: object): Promise<LoadResult> {
  const child = await startProcess(['--import', 'tsx', 'bench/loadgen.ts', JSON.stringify(spec)], {});
  const line = await firstLine(child);
  await exited(child);
  return JSON.parse(line) as LoadResult;
}
