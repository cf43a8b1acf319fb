import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { sql } from 'kysely';
import { CommandHandler } from '../../src/commands/handler';
import { ledgerDecider, type LedgerCommand } from '../../src/commands/ledger/decider';
import { createPostgresEventStore } from '../../src/eventstore/postgres';
import { ledgerStream } from '../../src/events/ledger';
import { uuidV7Ids } from '../../src/platform/clock';
import { testConfig } from '../../src/platform/config';
import { openDatabase, type Db } from '../../src/platform/db';
import { createLogger } from '../../src/platform/logger';
import { migrateToLatest } from '../../src/platform/migrate';
import { ledgerProjector } from '../../src/projections/ledger';
import { createProjectionEngine } from '../../src/projections/runner';

const run = promisify(execFile);
const root = path.resolve(__dirname, '../..');
const logger = createLogger({ LOG_LEVEL: 'silent' });

interface Exit {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * `npm run ledger` as an operator runs it, against the embedded database in a temporary data
 * directory that nothing else holds.
 */
describe('npm run ledger on the embedded database', () => {
  let dataDir: string;
  const env = () => ({
    ...process.env,
    DATABASE_URL: '',
    REDIS_URL: '',
    DATA_DIR: dataDir,
    LOG_LEVEL: 'warn',
  });

  /** Opens the data directory in this process (the CLI is not running meanwhile). */
  async function withDb(work: (db: Db) => Promise<void>): Promise<void> {
    const db = await openDatabase(testConfig({ DATA_DIR: dataDir }), logger);
    try {
      await migrateToLatest(db.db);
      await work(db);
    } finally {
      await db.close();
    }
  }

  async function ledger(args: string[], viaNpm = false): Promise<Exit> {
    const [file, argv] = viaNpm
      ? ['npm', ['run', '--silent', 'ledger', '--', ...args]]
      : [process.execPath, ['--import', 'tsx', 'src/cli/ledger.ts', ...args]];
    try {
      const { stdout, stderr } = await run(file, argv, { cwd: root, env: env() });
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  }

  beforeAll(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ledger-cli-'));
    await withDb(async (db) => {
      const store = createPostgresEventStore(db);
      const commands = new CommandHandler(store, { ids: uuidV7Ids });
      const now = new Date('2026-03-02T10:00:00Z');
      const handle = (userId: string, cmd: Omit<LedgerCommand, 'metadata'>) =>
        commands.handle(ledgerDecider, ledgerStream(userId), { ...cmd, metadata: { now } } as LedgerCommand);
      await handle('ann', {
        type: 'GrantCredits',
        data: { userId: 'ann', grantId: 'g1', amount: 500, reason: 'trial' },
      });
      await handle('ann', {
        type: 'ReserveCredits',
        data: { userId: 'ann', holdId: 'h1', amount: 100, expiresAt: now.toISOString(), reason: 'task' },
      });
      await handle('ann', {
        type: 'CaptureCredits',
        data: { userId: 'ann', holdId: 'h1', cost: 60, excess: 'forgive' },
      });
      const last = await handle('ben', {
        type: 'GrantCredits',
        data: { userId: 'ben', grantId: 'g2', amount: 40, reason: 'trial' },
      });
      const engine = createProjectionEngine({ db, store, logger, projectors: [ledgerProjector] });
      await engine.start();
      expect(await engine.waitFor(['ledger'], last.position, 30_000)).toBe(true);
      await engine.stop();
      await store.close();
    });
  }, 120_000);

  afterAll(() => {
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it('verifies a clean log through npm and exits 0 with the report on stdout', async () => {
    const r = await ledger(['verify'], true);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, events: 5, accounts: 2, breaches: [] });
  }, 60_000);

  it('prints a statement as CSV and reconciles with the projection', async () => {
    const statement = await ledger([
      'statement',
      '--user',
      'ann',
      '--from',
      '2026-03-01',
      '--to',
      '2026-03-03',
      '--csv',
    ]);
    expect(statement.code).toBe(0);
    const lines = statement.stdout.split('\r\n');
    expect(lines[0]).toMatch(/^position,event_id,/);
    expect(lines.at(-2)).toBe(',,2026-03-03T00:00:00.000Z,closing,,,,440,0,440,,,');
    const reconcile = await ledger(['reconcile']);
    expect(reconcile.code).toBe(0);
    expect(JSON.parse(reconcile.stdout)).toMatchObject({ ok: true, accounts: 2 });
  }, 60_000);

  it('refuses a bad command line with usage and exit code 2', async () => {
    const badDate = await ledger([
      'statement',
      '--user',
      'ann',
      '--from',
      '2026-02-30',
      '--to',
      '2026-03-03',
    ]);
    expect(badDate.code).toBe(2);
    expect(badDate.stderr).toMatch(/--from: must be a date/);
    expect(badDate.stderr).toMatch(/usage: npm run ledger/);
    const missing = await ledger(['balance', '--user', 'ann']);
    expect(missing).toMatchObject({ code: 2, stderr: expect.stringMatching(/--at is required/) });
    const unknown = await ledger(['frobnicate']);
    expect(unknown).toMatchObject({ code: 2, stderr: expect.stringMatching(/unknown report frobnicate/) });
  }, 60_000);

  it('exits 1 when the log breaks an invariant or the projection differs', async () => {
    await withDb(async (db) => {
      const store = createPostgresEventStore(db);
      // A release of a hold ann never reserved, appended behind the decider's back.
      await store.append(
        ledgerStream('ann'),
        [
          {
            id: uuidV7Ids.next(),
            type: 'CreditsReleased',
            data: { userId: 'ann', holdId: 'nope', amount: 5, releasedAt: '2026-03-02T11:00:00Z' },
            metadata: { occurredAt: '2026-03-02T11:00:00Z', schemaVersion: 1 },
          },
        ],
        'any',
      );
      await sql`update balances set held = 3 where user_id = 'ben'`.execute(db.db);
      await store.close();
    });
    const verify = await ledger(['verify'], true);
    expect(verify.code).toBe(1);
    const report = JSON.parse(verify.stdout) as { ok: boolean; breaches: { rule: string; stream: string }[] };
    expect(report.ok).toBe(false);
    expect(report.breaches).toContainEqual(
      expect.objectContaining({ rule: 'hold_unknown', stream: 'ledger-ann' }),
    );
    const reconcile = await ledger(['reconcile']);
    expect(reconcile.code).toBe(1);
    expect(JSON.parse(reconcile.stdout).differences).toEqual([
      {
        user_id: 'ben',
        kind: 'mismatch',
        replayed: { posted: 40, held: 0 },
        projected: { posted: 40, held: 3 },
      },
    ]);
  }, 60_000);
});

/**
 * The hold-expiry scheduler as the service runs it: `npm start` starts it with the projections,
 * it gives back a hold past its expiry (a HoldExpired event, replayed by the reports), and SIGTERM
 * stops it with the rest.
 */
describe('npm start expiring holds', () => {
  let dataDir: string;
  let output = '';
  const env = () => ({
    ...process.env,
    DATABASE_URL: '',
    REDIS_URL: '',
    DATA_DIR: dataDir,
    LOG_LEVEL: 'info',
  });

  beforeAll(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ledger-expiry-'));
    const db = await openDatabase(testConfig({ DATA_DIR: dataDir }), logger);
    try {
      await migrateToLatest(db.db);
      const store = createPostgresEventStore(db);
      const commands = new CommandHandler(store, { ids: uuidV7Ids });
      const now = new Date();
      const handle = (cmd: Omit<LedgerCommand, 'metadata'>) =>
        commands.handle(ledgerDecider, ledgerStream('eve'), { ...cmd, metadata: { now } } as LedgerCommand);
      await handle({
        type: 'GrantCredits',
        data: { userId: 'eve', grantId: 'g', amount: 100, reason: 'trial' },
      });
      // Due a moment after the service has started; a second hold far from due.
      const soon = new Date(now.getTime() + 2_000).toISOString();
      const later = new Date(now.getTime() + 86_400_000).toISOString();
      await handle({
        type: 'ReserveCredits',
        data: { userId: 'eve', holdId: 'soon', amount: 30, expiresAt: soon, reason: 'task' },
      });
      await handle({
        type: 'ReserveCredits',
        data: { userId: 'eve', holdId: 'later', amount: 20, expiresAt: later, reason: 'task' },
      });
      await store.close();
    } finally {
      await db.close();
    }
  }, 60_000);

  afterAll(() => {
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it('gives back a hold past its expiry while it serves, and stops cleanly on SIGTERM', async () => {
    const service = spawn(process.execPath, ['--import', 'tsx', 'src/cli/serve.ts'], {
      cwd: root,
      env: { ...env(), PORT: '0', EMBEDDED_DB_PORT: '0', HOLD_EXPIRY_INTERVAL_MS: '200' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    service.stdout.on('data', (d: Buffer) => (output += d.toString()));
    service.stderr.on('data', (d: Buffer) => (output += d.toString()));
    try {
      const deadline = Date.now() + 90_000;
      while (!/"msg":"expired holds swept"/.test(output)) {
        if (Date.now() > deadline || service.exitCode !== null) {
          throw new Error(`the service expired no hold:\n${output}`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(output).toMatch(/"expired":1[,}][^\n]*"msg":"expired holds swept"/);

      // The reports, over the running service's database, replay the expiry.
      const { stdout } = await run(
        process.execPath,
        ['--import', 'tsx', 'src/cli/ledger.ts', 'balance', '--user', 'eve', '--at', '2100-01-01'],
        { cwd: root, env: { ...env(), LOG_LEVEL: 'warn' } },
      );
      expect(JSON.parse(stdout)).toMatchObject({ posted: 100, held: 20, available: 80, events: 4 });
    } finally {
      const exited = new Promise<number | null>((resolve) => service.once('exit', (code) => resolve(code)));
      if (service.exitCode === null) service.kill('SIGTERM');
      expect(await exited).toBe(0);
    }
    expect(output).toMatch(/"msg":"stopped"/);
  }, 150_000);
});
