import { spawn, execFile, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { CommandHandler } from '../../src/commands/handler';
import type { EventStore } from '../../src/eventstore/port';
import { uuidV7Ids } from '../../src/platform/clock';
import { allProjectors } from '../../src/projections';

const run = promisify(execFile);
const root = path.resolve(__dirname, '../..');

/**
 * The service as `npm start` runs it, on the embedded database in a temporary data directory: it
 * serves HTTP, the CLIs (and any PostgreSQL client) reach its database while it holds it, and
 * SIGTERM stops it cleanly.
 */
describe('npm start on the embedded database, with the CLIs beside it', () => {
  let dataDir: string;
  let service: ChildProcess;
  let output = '';
  let port: number;
  const env = () => ({
    ...process.env,
    DATABASE_URL: '',
    REDIS_URL: '',
    DATA_DIR: dataDir,
    LOG_LEVEL: 'info',
  });

  beforeAll(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'svc-'));
    service = spawn(process.execPath, ['--import', 'tsx', 'src/cli/serve.ts'], {
      cwd: root,
      env: { ...env(), PORT: '0', EMBEDDED_DB_PORT: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    service.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    service.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`service did not start:\n${output}`)), 90_000);
      const check = () => {
        const m = /"port":(\d+)[^\n]*"msg":"serving/.exec(output);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        } else setTimeout(check, 100);
      };
      check();
    });
  }, 120_000);

  afterAll(async () => {
    if (service.exitCode === null) service.kill('SIGKILL');
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it('serves /health, /ready, /openapi.json and /docs', async () => {
    const base = `http://127.0.0.1:${port}`;
    expect(await (await fetch(`${base}/health`)).json()).toEqual({ status: 'ok' });
    const ready = await fetch(`${base}/ready`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ checks: { database: 'up', eventstore: 'up' } });
    expect(((await (await fetch(`${base}/openapi.json`)).json()) as { openapi: string }).openapi).toBe(
      '3.1.0',
    );
    expect(await (await fetch(`${base}/docs`)).text()).toMatch(/swagger/i);
  });

  it('lets the CLIs and psql-like clients use its embedded database while it runs', async () => {
    const migrate = await run(process.execPath, ['--import', 'tsx', 'src/cli/migrate.ts'], {
      cwd: root,
      env: env(),
    });
    expect(migrate.stdout).toMatch(/schema is up to date/);
    const status = await run(
      process.execPath,
      ['--import', 'tsx', 'src/cli/projections.ts', 'status', '--json'],
      {
        cwd: root,
        env: env(),
      },
    );
    const projections = JSON.parse(status.stdout) as { name: string; lag: number; checkpoint: unknown }[];
    // Every read model and reactor of the service, in its order.
    const expected = allProjectors(new CommandHandler({} as EventStore, { ids: uuidV7Ids })).map(
      (p) => p.name,
    );
    expect(projections.map((p) => p.name)).toEqual(expected);
    for (const p of projections) expect(p).toMatchObject({ lag: 0, checkpoint: expect.anything() });

    // A rebuild from the CLI, beside the live tables of the running service, with progress output.
    const rebuild = await run(
      process.execPath,
      ['--import', 'tsx', 'src/cli/projections.ts', 'rebuild', 'ledger'],
      {
        cwd: root,
        env: env(),
      },
    );
    expect(rebuild.stdout).toMatch(/ledger: rebuilt in [\d.]+ s/);
    const unknown = await run(
      process.execPath,
      ['--import', 'tsx', 'src/cli/projections.ts', 'rebuild', 'nope'],
      {
        cwd: root,
        env: env(),
      },
    ).catch((e: { code: number; stderr: string }) => e);
    expect(unknown).toMatchObject({ code: 2, stderr: expect.stringMatching(/unknown projection nope/) });

    const { url } = JSON.parse(fs.readFileSync(path.join(dataDir, 'server.json'), 'utf8')) as { url: string };
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    const res = await client.query<{ n: string }>('select count(*) as n from kysely_migration');
    await client.end();
    expect(Number(res.rows[0]!.n)).toBeGreaterThan(0);
  }, 120_000);

  it('refuses a bad command line with usage and exit code 2', async () => {
    const failed = await run(process.execPath, ['--import', 'tsx', 'src/cli/projections.ts', 'frobnicate'], {
      cwd: root,
      env: env(),
    }).catch((e: { code: number; stderr: string }) => e);
    expect(failed).toMatchObject({ code: 2, stderr: expect.stringMatching(/usage: npm run projections/) });
  }, 60_000);

  it('stops on SIGTERM, finishing cleanly, and leaves the data directory usable by the CLIs', async () => {
    const exited = new Promise<number | null>((resolve) => service.once('exit', (code) => resolve(code)));
    service.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(output).toMatch(/"msg":"stopped"/);
    expect(fs.existsSync(path.join(dataDir, 'server.json'))).toBe(false);
    // Nobody holds the data directory now: the CLI opens it itself.
    const migrate = await run(process.execPath, ['--import', 'tsx', 'src/cli/migrate.ts'], {
      cwd: root,
      env: env(),
    });
    expect(migrate.stdout).toMatch(/schema is up to date/);
  }, 120_000);

  it('stops start-up naming each bad setting', async () => {
    const failed = await run(process.execPath, ['--import', 'tsx', 'src/cli/serve.ts'], {
      cwd: root,
      env: { ...env(), PORT: 'eighty', LOG_LEVEL: 'loud' },
    }).catch((e: { code: number; stderr: string }) => e);
    expect(failed).toMatchObject({ code: 2 });
    expect((failed as { stderr: string }).stderr).toMatch(/PORT/);
    expect((failed as { stderr: string }).stderr).toMatch(/LOG_LEVEL/);
  }, 60_000);
});
