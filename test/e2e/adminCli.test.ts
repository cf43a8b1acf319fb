import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CommandHandler } from '../../src/commands/handler';
import { userDecider } from '../../src/commands/users/decider';
import { createPostgresEventStore } from '../../src/eventstore/postgres';
import { userStream } from '../../src/events/users';
import { uuidV7Ids } from '../../src/platform/clock';
import { testConfig } from '../../src/platform/config';
import { openDatabase } from '../../src/platform/db';
import { createLogger } from '../../src/platform/logger';
import { migrateToLatest } from '../../src/platform/migrate';

const root = path.resolve(__dirname, '../..');
const logger = createLogger({ LOG_LEVEL: 'silent' });

/** `npm run admin -- create <username>` as an operator runs it, on an embedded database of its own. */
describe('npm run admin', () => {
  let dataDir: string;
  beforeAll(() => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'admin-cli-'));
  });
  afterAll(() => fs.rmSync(dataDir, { recursive: true, force: true }));

  function admin(args: string[], stdin?: string): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/admin.ts', ...args], {
        cwd: root,
        env: { ...process.env, DATABASE_URL: '', REDIS_URL: '', DATA_DIR: dataDir, LOG_LEVEL: 'warn' },
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.stdin.end(stdin ?? '');
      child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    });
  }

  /** The user's stream, read from the data directory once the CLI has exited. */
  async function userState(userId: string) {
    const db = await openDatabase(testConfig({ DATA_DIR: dataDir }), logger);
    try {
      await migrateToLatest(db.db);
      const store = createPostgresEventStore(db, { logger });
      const commands = new CommandHandler(store, { ids: uuidV7Ids });
      const { state } = await commands.read(userDecider, userStream(userId));
      return { state };
    } finally {
      await db.close();
    }
  }

  it('creates an admin with the password from stdin, and promotes an existing user once', async () => {
    const created = await admin(['create', 'root_admin', '--password-stdin'], 'a long enough password\n');
    expect(created.code).toBe(0);
    const userId = /\(([^)]+)\)/.exec(created.stdout)?.[1];
    expect(created.stdout).toMatch(/^created admin root_admin/);
    expect(created.stdout).not.toContain('a long enough password');
    const { state } = await userState(userId!);
    expect(state).toMatchObject({ username: 'root_admin', permission: 2 });

    const again = await admin(['create', 'root_admin', '--password-stdin'], 'another password\n');
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/was already an admin; password unchanged/);
  }, 60_000);

  it('generates and prints a password once when none is given', async () => {
    const created = await admin(['create', 'second_admin']);
    expect(created.code).toBe(0);
    expect(created.stdout).toMatch(/^password: \S{20,}$/m);
  }, 60_000);

  it('refuses bad usage with exit code 2', async () => {
    expect((await admin(['create'])).code).toBe(2);
    expect((await admin(['create', 'no spaces allowed'])).code).toBe(2);
    expect((await admin(['create', 'short_pw', '--password-stdin'], 'short\n')).code).toBe(2);
  }, 60_000);
});
