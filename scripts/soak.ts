import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { exited, freePort } from '../bench/support';
import { drive, newActor, sleep, start } from './crash';

/**
 * `npm run soak -- [--minutes 10] [--users 20]`: mixed load (messages, tasks streamed to the end or
 * left early) against the service on its embedded default (or DATABASE_URL), printing the service's
 * RSS and event-loop lag every 10 s. Memory must stay flat: growth after the first fifth of the run
 * (the warm-up) above 10% fails it (exit 1).
 */
async function soak(minutes: number, users: number): Promise<number> {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}/api/v1`;
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'soak-'));
  const service = await start(
    {
      PORT: String(port),
      HOST: '127.0.0.1',
      EMBEDDED_DB_PORT: '0',
      LOG_LEVEL: 'warn',
      RATE_LIMITS_ENABLED: 'false',
      SIGNUP_CREDITS: '100000000',
      LOCAL_MODEL_DELAY_MS: '5',
      ...(process.env.DATABASE_URL
        ? { JWT_SECRET: 'soak-secret-soak-secret-soak-secret-0123' }
        : { DATA_DIR: dataDir }),
    },
    base,
  );
  try {
    const actors = await Promise.all(Array.from({ length: users }, (_, i) => newActor(base, i)));
    const until = Date.now() + minutes * 60_000;
    let steps = 0;
    const load = Promise.all(
      actors.map(async (a) => {
        while (Date.now() < until) {
          await drive(base, a, [], []).catch(() => undefined);
          steps++;
        }
      }),
    );
    const samples: { at: number; rss: number; lag: number }[] = [];
    console.log('minute  rss MB  event-loop lag p99 ms  steps');
    while (Date.now() < until) {
      await sleep(10_000);
      const rss = rssMb(service.pid!);
      const lag = await lagP99Ms(base);
      const at = (minutes * 60_000 - (until - Date.now())) / 60_000;
      samples.push({ at, rss, lag });
      console.log(
        `${at.toFixed(1).padStart(6)}  ${rss.toFixed(0).padStart(6)}  ${lag.toFixed(1).padStart(21)}  ${steps}`,
      );
    }
    await load;
    const warm = samples.filter((s) => s.at >= minutes / 5);
    const first = warm[0]?.rss ?? NaN;
    const last = warm.at(-1)?.rss ?? NaN;
    const growth = (last - first) / first;
    console.log(
      `RSS after warm-up ${first.toFixed(0)} MB → ${last.toFixed(0)} MB: ${(growth * 100).toFixed(1)}%`,
    );
    return growth < 0.1 ? 0 : 1;
  } finally {
    service.kill('SIGTERM');
    await exited(service);
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

function rssMb(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN) / 1024;
}

/** The service's own measure (prom-client's nodejs_eventloop_lag_p99_seconds on /metrics). */
async function lagP99Ms(base: string): Promise<number> {
  const text = await (await fetch(`${base.replace('/api/v1', '')}/metrics`)).text();
  const value = /^nodejs_eventloop_lag_p99_seconds\S*\s+([\d.e+-]+)/m.exec(text)?.[1];
  return value === undefined ? NaN : Number(value) * 1000;
}

const { values } = parseArgs({
  options: { minutes: { type: 'string', default: '10' }, users: { type: 'string', default: '20' } },
});
soak(Number(values.minutes), Number(values.users)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
