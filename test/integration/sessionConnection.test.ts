import { sql } from 'kysely';
import { setTimeout as sleep } from 'node:timers/promises';
import { openDatabase } from '../../src/platform/db';
import { createLogger } from '../../src/platform/logger';
import { openTestDatabase, type TestDatabase } from '../support/databases';

const onServer = process.env.DATABASE_URL ? describe : describe.skip;

// The server's one long-lived connection per process, for LISTEN and the advisory locks.
onServer('the session connection on postgres', () => {
  let t: TestDatabase;
  beforeEach(async () => {
    t = await openTestDatabase('postgres');
  });
  afterEach(() => t?.close());

  /** Ends the session connection's backend from another connection, as a server restart would. */
  async function killSession(): Promise<void> {
    const { rows } = await sql<{ pid: number }>`
      select pid from pg_stat_activity
      where datname = current_database() and pid <> pg_backend_pid()
        and query like '%pg_try_advisory_lock%'`.execute(t.db.db);
    expect(rows).toHaveLength(1);
    await sql`select pg_terminate_backend(${rows[0]!.pid}::int)`.execute(t.db.db);
  }

  async function heard(channel: string, got: (string | undefined)[]): Promise<void> {
    for (let i = 0; i < 200 && !got.includes('hello'); i++) {
      await sql`select pg_notify(${channel}, 'hello')`.execute(t.db.db);
      await sleep(50);
    }
    expect(got).toContain('hello');
  }

  it('keeps a listener whose LISTEN meets the connection dying, and hears it once reconnected', async () => {
    let lost = 0;
    t.db.locks.onLost(() => lost++);
    expect(await t.db.locks.tryAcquire('held')).toBe(true);
    await killSession();
    // At once: the connection may not have heard yet that it is gone.
    const got: (string | undefined)[] = [];
    const unlisten = await t.db.listen('session_test', (p) => got.push(p));
    await heard('session_test', got);
    expect(lost).toBe(1);
    // The lock went with the connection; it can be taken again on the new one.
    expect(await t.db.locks.tryAcquire('held')).toBe(true);
    await unlisten();
  });

  it('listens again to every channel after the connection drops', async () => {
    const got: (string | undefined)[] = [];
    await t.db.listen('session_test', (p) => got.push(p));
    await heard('session_test', got);
    got.length = 0;
    expect(await t.db.locks.tryAcquire('held')).toBe(true);
    await killSession();
    await heard('session_test', got);
  });
});

onServer('the pool on postgres', () => {
  it('bounds a connection attempt, not a wait for a free connection, which is load', async () => {
    const t = await openTestDatabase('postgres');
    const db = await openDatabase(
      { ...t.config, DATABASE_POOL_SIZE: 1, DATABASE_CONNECT_TIMEOUT_MS: 200 },
      createLogger({ LOG_LEVEL: 'silent' }),
    );
    try {
      // The one connection is busy for well over the connect timeout; the second query waits for it.
      const [slow, quick] = await Promise.allSettled([
        db.query('select pg_sleep(0.6)', []),
        db.query<{ n: number }>('select 2 as n', []),
      ]);
      expect(slow.status).toBe('fulfilled');
      expect(quick).toEqual({ status: 'fulfilled', value: [{ n: 2 }] });
    } finally {
      await db.close();
      await t.close();
    }
  });
});
