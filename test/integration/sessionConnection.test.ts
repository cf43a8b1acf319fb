import { sql } from 'kysely';
import { setTimeout as sleep } from 'node:timers/promises';
import { openDatabase, openDatabaseForCli } from '../../src/platform/db';
import { isConnectionFailure, isStatementTimeout } from '../../src/platform/errors';
import { createLogger } from '../../src/platform/logger';
import { testConfig } from '../../src/platform/config';
import { openTestDatabase, type TestDatabase } from '../support/databases';
import { createPgCluster } from '../support/pgCluster';

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

  /** The reason `run` failed with (it must fail). */
  async function failure(run: () => Promise<unknown>): Promise<unknown> {
    try {
      await run();
    } catch (err) {
      return err;
    }
    throw new Error('it did not fail');
  }

  it('fails a statement left unanswered past its bound as the database being away, cancels it on the server, and never uses its connection again', async () => {
    const t = await openTestDatabase('postgres');
    // One connection: a statement that waited behind the unanswered one would fail too.
    const db = await openDatabase(
      { ...t.config, DATABASE_POOL_SIZE: 1, DATABASE_POOL_MIN: 0, DATABASE_STATEMENT_TIMEOUT_MS: 300 },
      createLogger({ LOG_LEVEL: 'silent' }),
    );
    try {
      // A statement that runs for seconds stands for a server that stopped answering.
      const direct = await failure(() => db.query('select pg_sleep(10)', []));
      expect(isStatementTimeout(direct)).toBe(true);
      expect(isConnectionFailure(direct)).toBe(true);
      expect(await db.query<{ n: number }>('select 2 as n', [])).toEqual([{ n: 2 }]);

      const built = await failure(() => sql`select pg_sleep(10)`.execute(db.db));
      expect(isConnectionFailure(built)).toBe(true);
      expect((await sql<{ n: number }>`select 3 as n`.execute(db.db)).rows).toEqual([{ n: 3 }]);

      // In a transaction, its rollback is not sent behind it (it would wait as long): the
      // transaction fails at once, and its connection is closed.
      const inTransaction = await failure(() =>
        db.db.transaction().execute(async (trx) => {
          await sql`select pg_sleep(10)`.execute(trx);
        }),
      );
      expect(isConnectionFailure(inTransaction)).toBe(true);
      expect((await sql<{ n: number }>`select 4 as n`.execute(db.db)).rows).toEqual([{ n: 4 }]);
      // And each was cancelled on the server, which would else have run it for its ten seconds
      // (closing the connection does not stop a statement that is not writing to it).
      let running = -1;
      for (let i = 0; i < 50 && running !== 0; i++) {
        if (i > 0) await sleep(100);
        const { rows } = await sql<{ n: string }>`
          select count(*) as n from pg_stat_activity
          where datname = current_database() and query = 'select pg_sleep(10)'
            and state = 'active'`.execute(t.db.db);
        running = Number(rows[0]!.n);
      }
      expect(running).toBe(0);
    } finally {
      await db.close();
      await t.close();
    }
  });

  it('fails the statements of a frozen server within their bound, and serves again once it thaws', async () => {
    const cluster = await createPgCluster();
    const db = await openDatabase(
      testConfig({
        DATABASE_URL: cluster.url,
        DATABASE_POOL_SIZE: 2,
        DATABASE_POOL_MIN: 0,
        DATABASE_CONNECT_TIMEOUT_MS: 500,
        DATABASE_STATEMENT_TIMEOUT_MS: 500,
      }),
      createLogger({ LOG_LEVEL: 'silent' }),
    );
    try {
      // Connections open: two in the pool (two statements at once), and the session connection.
      await Promise.all([db.query('select pg_sleep(0.05)', []), db.query('select pg_sleep(0.05)', [])]);
      expect(await db.locks.tryAcquire('before')).toBe(true);
      await db.locks.release('before');
      cluster.freeze();
      try {
        // Without a bound, each of these waited for as long as the host stayed frozen. Each goes
        // on a connection already open, so it is the statement's bound that ends the wait.
        const failures = [
          await failure(() => db.query('select 2 as n', [])),
          await failure(() => sql`select 3 as n`.execute(db.db)),
          await failure(() => db.locks.tryAcquire('frozen')),
        ];
        for (const err of failures) {
          expect(isStatementTimeout(err)).toBe(true);
          expect(isConnectionFailure(err)).toBe(true);
        }
      } finally {
        cluster.thaw();
      }
      expect(await db.query<{ n: number }>('select 4 as n', [])).toEqual([{ n: 4 }]);
      expect(await db.locks.tryAcquire('after')).toBe(true);
    } finally {
      await db.close();
      await cluster.destroy();
    }
  });

  it('leaves statements unbounded at 0, and in the CLIs, whose operators may run long ones', async () => {
    const t = await openTestDatabase('postgres');
    const config = { ...t.config, DATABASE_POOL_SIZE: 1 };
    const unbounded = await openDatabase(
      { ...config, DATABASE_STATEMENT_TIMEOUT_MS: 0 },
      createLogger({ LOG_LEVEL: 'silent' }),
    );
    const cli = await openDatabaseForCli(
      { ...config, DATABASE_STATEMENT_TIMEOUT_MS: 100 },
      createLogger({ LOG_LEVEL: 'silent' }),
    );
    try {
      expect(await unbounded.query('select pg_sleep(0.3) as slept', [])).toHaveLength(1);
      expect(await cli.query('select pg_sleep(0.3) as slept', [])).toHaveLength(1);
    } finally {
      await unbounded.close();
      await cli.close();
      await t.close();
    }
  });
});
