import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { testConfig } from '../../src/platform/config';
import { openDatabase } from '../../src/platform/db';
import { createLogger } from '../../src/platform/logger';
import { onServer } from '../support/databases';

const onServerOnly = process.env.DATABASE_URL ? describe : describe.skip;

onServerOnly('the connection pool', () => {
  const serverUrl = process.env.DATABASE_URL!;
  const name = `t_${randomBytes(6).toString('hex')}`;
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  beforeAll(() => onServer(serverUrl, `create database "${name}"`));
  afterAll(() => onServer(serverUrl, `drop database if exists "${name}" with (force)`));

  /** Connections to the test database, counted from outside the pool. */
  async function connections(): Promise<number> {
    const client = new pg.Client({ connectionString: serverUrl });
    await client.connect();
    try {
      const { rows } = await client.query<{ n: string }>(
        'select count(*) as n from pg_stat_activity where datname = $1',
        [name],
      );
      return Number(rows[0]!.n);
    } finally {
      await client.end();
    }
  }

  it.each([2, 0])(
    'keeps DATABASE_POOL_MIN=%i connections open past the idle timeout, closes the rest, and all when closed',
    async (kept) => {
      const db = await openDatabase(
        testConfig({
          DATABASE_URL: url.toString(),
          DATABASE_POOL_SIZE: 6,
          DATABASE_POOL_MIN: kept,
          DATABASE_POOL_IDLE_MS: 200,
        }),
        createLogger({ LOG_LEVEL: 'silent' }),
      );
      try {
        // Six at once open six connections.
        await Promise.all(Array.from({ length: 6 }, () => db.query('select pg_sleep(0.2)', [])));
        expect(await connections()).toBe(6);
        await until(async () => (await connections()) <= kept);
        expect(await connections()).toBe(kept);
        // Well past the timeout, the ones kept are still there.
        await sleep(600);
        expect(await connections()).toBe(kept);
      } finally {
        await db.close();
      }
      // Closed, it closes them all, though only `query` used it (kysely never opened its pool).
      await until(async () => (await connections()) === 0);
      expect(await connections()).toBe(0);
    },
  );
});

async function until(check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check()) && Date.now() < deadline) await sleep(100);
}
