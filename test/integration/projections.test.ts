import { sql } from 'kysely';
import { CommandHandler } from '../../src/commands/handler';
import { createPostgresEventStore } from '../../src/eventstore/postgres';
import type { EventStore } from '../../src/eventstore/port';
import { uuidV7Ids } from '../../src/platform/clock';
import { createLogger } from '../../src/platform/logger';
import { openDatabase, type Db } from '../../src/platform/db';
import { createProjectionEngine, type RunningProjectionEngine } from '../../src/projections/runner';
import type { Projector } from '../../src/projections/types';
import {
  counterDecider,
  counterProjector,
  counterRows,
  createCounterTable,
  type CounterCommand,
} from '../support/counter';
import { openTestDatabase, testDatabases, type TestDatabase } from '../support/databases';

const logger = createLogger({ LOG_LEVEL: 'silent' });
const increment = (by: number): CounterCommand => ({
  type: 'Increment',
  data: { by },
  metadata: { now: new Date() },
});

const somethingElse = () => ({
  id: uuidV7Ids.next(),
  type: 'SomethingElse',
  data: {},
  metadata: { occurredAt: '', schemaVersion: 1 },
});

async function until(check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe.each(testDatabases())('projection engine on %s', (kind) => {
  let t: TestDatabase;
  let store: EventStore;
  let handler: CommandHandler;
  const engines: RunningProjectionEngine[] = [];
  const engine = (projectors: Projector[] = [counterProjector()], db: Db = t.db, s: EventStore = store) => {
    const e = createProjectionEngine({
      db,
      store: s,
      logger,
      projectors,
      batchSize: 50,
      standbyRetryMs: 100,
    });
    engines.push(e);
    return e;
  };

  beforeEach(async () => {
    t = await openTestDatabase(kind);
    await createCounterTable(t.db.db);
    store = createPostgresEventStore(t.db);
    handler = new CommandHandler(store, { ids: uuidV7Ids });
  });
  afterEach(async () => {
    await Promise.all(engines.splice(0).map((e) => e.stop()));
    await store.close();
    await t.close();
  });

  it('catches up from the start, then follows live appends; waitFor backs read-your-writes', async () => {
    for (let i = 0; i < 120; i++) await handler.handle(counterDecider, `counter-${i % 3}`, increment(1));
    const e = engine();
    await e.start();
    const last = await handler.handle(counterDecider, 'counter-0', increment(100));
    expect(await e.waitFor(['counters'], last.position, 30_000)).toBe(true);
    expect(await counterRows(t.db.db)).toEqual([
      { stream_name: 'counter-0', value: 140, events: 41 },
      { stream_name: 'counter-1', value: 40, events: 40 },
      { stream_name: 'counter-2', value: 40, events: 40 },
    ]);
    const [status] = await e.status();
    expect(status).toMatchObject({ name: 'counters', state: 'running', lag: 0, lastError: null });
    expect(status!.checkpoint!.position).toBeGreaterThanOrEqual(last.position);
  });

  it('moves its checkpoint past events it does not handle, so waitFor on them succeeds', async () => {
    const e = engine();
    await e.start();
    const other = await store.append('other-1', [somethingElse()], 'no_stream');
    expect(await e.waitFor(['counters'], other.position, 30_000)).toBe(true);
  });

  it('saves progress through events it does not handle now and then, not per batch, and all of it on stop', async () => {
    // Counts the checkpoint's saves.
    await sql`create table checkpoint_saves (n int)`.execute(t.db.db);
    await sql`create function count_save() returns trigger language plpgsql as
      $$ begin insert into checkpoint_saves values (1); return new; end $$`.execute(t.db.db);
    await sql`create trigger counted after update on projection_checkpoints
      for each row execute function count_save()`.execute(t.db.db);
    const saves = async () =>
      Number(
        (await sql<{ n: string }>`select count(*) as n from checkpoint_saves`.execute(t.db.db)).rows[0]!.n,
      );
    const e = engine();
    await e.start();
    await until(async () => (await e.status())[0]!.state === 'running');
    const before = await saves();
    let last = 0n;
    for (let i = 0; i < 40; i++) {
      const other = await store.append(`other-${i}`, [somethingElse()], 'no_stream');
      last = other.position;
      // Each append read on its own: a batch per append.
      expect(await e.waitFor(['counters'], other.position, 30_000)).toBe(true);
    }
    expect(await saves()).toBeLessThan(before + 20);

    await e.stop();
    const [row] = await t.db.db
      .selectFrom('projection_checkpoints')
      .selectAll()
      .where('name', '=', 'counters')
      .execute();
    expect(BigInt(row!.position)).toBe(last);
  });

  it('lets an instance not running it see progress through unhandled events soon, from the table', async () => {
    // The running instance's subscription polls only after a minute, far past the wait below: that
    // poll alone saved the progress before. Its own appends wake it at once.
    const idle = createPostgresEventStore(t.db, { idlePollMs: 60_000 });
    try {
      const running = engine([counterProjector()], t.db, idle);
      await running.start();
      await until(async () => (await running.status())[0]!.state === 'running');
      const elsewhere = engine(); // never started: it reads the checkpoint from the table
      // A command writing an event this projection handles, then events it does not, at once.
      const handled = await new CommandHandler(idle, { ids: uuidV7Ids }).handle(
        counterDecider,
        'counter-w',
        increment(1),
      );
      expect(await running.waitFor(['counters'], handled.position, 30_000)).toBe(true);
      let last = 0n;
      for (let i = 0; i < 3; i++)
        last = (await idle.append(`other-w${i}`, [somethingElse()], 'no_stream')).position;
      // Well within the subscription's idle poll, however slow the machine.
      expect(await elsewhere.waitFor(['counters'], last, 10_000)).toBe(true);
      await running.stop();
    } finally {
      await idle.close();
    }
  });

  it('hurries a subscription gathering appends: waitFor does not wait for the gathering', async () => {
    // A minute's gathering and idle poll, far past waitFor's five seconds.
    const slow = createPostgresEventStore(t.db, { idlePollMs: 60_000, gatherMs: 60_000 });
    try {
      const e = engine([counterProjector()], t.db, slow);
      await e.start();
      await until(async () => (await e.status())[0]!.state === 'running');
      const r = await new CommandHandler(slow, { ids: uuidV7Ids }).handle(
        counterDecider,
        'counter-h',
        increment(7),
      );
      expect(await e.waitFor(['counters'], r.position, 5_000)).toBe(true);
      expect(await counterRows(t.db.db)).toEqual([{ stream_name: 'counter-h', value: 7, events: 1 }]);
      await e.stop();
    } finally {
      await slow.close();
    }
  });

  it('answers false from waitFor when the projection does not get there in time', async () => {
    const e = engine(); // never started
    const r = await handler.handle(counterDecider, 'counter-x', increment(1));
    expect(await e.waitFor(['counters'], r.position, 200)).toBe(false);
    expect(await e.waitFor(['counters'], 999_999n, 100)).toBe(false);
    // Position 0, before every event, is reached by a projection that has applied nothing.
    expect(await e.waitFor(['counters'], 0n, 100)).toBe(true);
    await expect(e.waitFor(['nope'], r.position, 100)).rejects.toThrow(/unknown projection/);
  });

  it('writes rows and checkpoint together: a failing batch leaves neither, and is applied once when it recovers', async () => {
    let failing = true;
    const base = counterProjector();
    const flaky: Projector = {
      ...base,
      async apply(trx, events) {
        await base.apply(trx, events);
        if (failing) throw new Error('read model write failed');
      },
    };
    const e = createProjectionEngine({ db: t.db, store, logger, projectors: [flaky], batchSize: 50 });
    engines.push(e);
    const r = await handler.handle(counterDecider, 'counter-f', increment(7));
    await e.start();
    await until(async () => (await e.status())[0]!.state === 'failed');
    expect(await counterRows(t.db.db)).toEqual([]);
    expect((await e.status())[0]).toMatchObject({ lastError: 'read model write failed', lag: 1 });
    // Seen from elsewhere too (another instance, the CLI), which runs nothing of it, once the
    // failing runner has written it down (it says so here first, which a lost database cannot hold up).
    const elsewhere = createProjectionEngine({ db: t.db, store, logger, projectors: [flaky], batchSize: 50 });
    await until(async () => (await elsewhere.status())[0]!.lastError !== null);
    expect((await elsewhere.status())[0]).toMatchObject({
      state: 'stopped',
      lastError: 'read model write failed',
    });
    failing = false;
    expect(await e.waitFor(['counters'], r.position, 30_000)).toBe(true);
    expect(await counterRows(t.db.db)).toEqual([{ stream_name: 'counter-f', value: 7, events: 1 }]);
    expect((await elsewhere.status())[0]).toMatchObject({ lastError: null, lag: 0 });
    // An error kept from before (a runner that died failing) is cleared once one runs well again,
    // with nothing to apply, and by a rebuild.
    await e.stop();
    const setError = () =>
      t.db.db
        .updateTable('projection_checkpoints')
        .set({ last_error: 'old bug' })
        .where('name', '=', 'counters')
        .execute();
    await setError();
    expect((await elsewhere.status())[0]!.lastError).toBe('old bug');
    const again = engine([flaky]);
    await again.start();
    await until(async () => (await elsewhere.status())[0]!.lastError === null);
    expect((await again.status())[0]).toMatchObject({ state: 'running', lastError: null });
    await setError();
    await again.rebuild('counters');
    expect((await elsewhere.status())[0]!.lastError).toBeNull();
  });

  it('restarts from its checkpoint after a stop and applies nothing twice', async () => {
    const first = engine();
    await first.start();
    let last = await handler.handle(counterDecider, 'counter-r', increment(1));
    expect(await first.waitFor(['counters'], last.position, 30_000)).toBe(true);
    await first.stop();
    for (let i = 0; i < 30; i++) last = await handler.handle(counterDecider, 'counter-r', increment(1));
    const second = engine();
    await second.start();
    expect(await second.waitFor(['counters'], last.position, 30_000)).toBe(true);
    expect(await counterRows(t.db.db)).toEqual([{ stream_name: 'counter-r', value: 31, events: 31 }]);
  });

  it('runs one runner per projection across processes; a standby takes over when the first stops', async () => {
    // A second process: its own connections (and, on a server, its own lock session).
    const second = kind === 'postgres' ? await openDatabase(t.config, logger) : t.db;
    const secondStore = kind === 'postgres' ? createPostgresEventStore(second) : store;
    try {
      const a = engine();
      await a.start();
      await until(async () => (await a.status())[0]!.state === 'running');
      const b = engine([counterProjector()], second, secondStore);
      await b.start();
      await until(async () => (await b.status())[0]!.state === 'standby');
      let last = await handler.handle(counterDecider, 'counter-s', increment(2));
      expect(await b.waitFor(['counters'], last.position, 30_000)).toBe(true); // via the stored checkpoint
      await a.stop();
      await until(async () => (await b.status())[0]!.state === 'running');
      last = await handler.handle(counterDecider, 'counter-s', increment(3));
      expect(await b.waitFor(['counters'], last.position, 30_000)).toBe(true);
      expect(await counterRows(t.db.db)).toEqual([{ stream_name: 'counter-s', value: 5, events: 2 }]);
      await b.stop();
    } finally {
      if (second !== t.db) {
        await secondStore.close();
        await second.close();
      }
    }
  });

  it('rebuilds beside the live tables while serving and swaps them in; replaying twice gives the same rows', async () => {
    const e = engine();
    await e.start();
    let last = await handler.handle(counterDecider, 'counter-b0', increment(1));
    for (let i = 0; i < 200; i++)
      last = await handler.handle(counterDecider, `counter-b${i % 7}`, increment(i + 1));
    expect(await e.waitFor(['counters'], last.position, 30_000)).toBe(true);
    const before = await counterRows(t.db.db);
    // Damage the live table: a rebuild must restore it from the log.
    await sql`update counters set value = -1`.execute(t.db.db);

    const progress: number[] = [];
    const writes = (async () => {
      for (let i = 0; i < 20; i++) last = await handler.handle(counterDecider, 'counter-b0', increment(1));
    })();
    const reads = (async () => {
      for (let i = 0; i < 10; i++) await counterRows(t.db.db); // the service keeps answering
    })();
    await e.rebuild('counters', (p) => progress.push(p.processed));
    await Promise.all([writes, reads]);
    expect(progress.length).toBeGreaterThan(1);
    expect(progress.at(-1)).toBeGreaterThanOrEqual(201);

    expect(await e.waitFor(['counters'], last.position, 30_000)).toBe(true);
    const after = await counterRows(t.db.db);
    const expected = before.map((r) =>
      r.stream_name === 'counter-b0' ? { ...r, value: r.value + 20, events: r.events + 20 } : r,
    );
    expect(after).toEqual(expected);

    await e.rebuild('counters');
    expect(await e.waitFor(['counters'], last.position, 30_000)).toBe(true);
    expect(await counterRows(t.db.db)).toEqual(after);
    const schemas = await sql<{ n: string }>`
      select count(*) as n from information_schema.schemata where schema_name like 'rebuild_%'`.execute(
      t.db.db,
    );
    expect(Number(schemas.rows[0]!.n)).toBe(0);
  });

  it('swaps in tables that hold what a live runner elsewhere applied after the rebuild’s last read', async () => {
    const e = engine();
    await e.start();
    let last = await handler.handle(counterDecider, 'counter-r0', increment(1));
    for (let i = 0; i < 30; i++)
      last = await handler.handle(counterDecider, `counter-r${i % 3}`, increment(1));
    expect(await e.waitFor(['counters'], last.position, 30_000)).toBe(true);
    // A rebuild run from elsewhere (the CLI): right after its last read, the service takes an event
    // and applies it to the tables about to be swapped out.
    let late: bigint | undefined;
    const cliStore: EventStore = {
      ...store,
      async readAll(options) {
        const batch = await store.readAll(options);
        if (batch.caughtUp && late === undefined) {
          late = (await handler.handle(counterDecider, 'counter-late', increment(5))).position;
          expect(await e.waitFor(['counters'], late, 30_000)).toBe(true);
        }
        return batch;
      },
    };
    await engine([counterProjector()], t.db, cliStore).rebuild('counters');
    expect(late).toBeDefined();
    // Read-your-writes of the late event holds: the swapped-in table has it, nothing else appended.
    expect(await e.waitFor(['counters'], late!, 1_000)).toBe(true);
    expect(await counterRows(t.db.db)).toContainEqual({ stream_name: 'counter-late', value: 5, events: 1 });
    // And the service goes on from there.
    last = await handler.handle(counterDecider, 'counter-late', increment(1));
    expect(await e.waitFor(['counters'], last.position, 30_000)).toBe(true);
    expect(await counterRows(t.db.db)).toContainEqual({ stream_name: 'counter-late', value: 6, events: 2 });
  });

  it('rebuilds at start when the projector version changed', async () => {
    const v1 = engine([counterProjector(1)]);
    await v1.start();
    const r = await handler.handle(counterDecider, 'counter-v', increment(4));
    expect(await v1.waitFor(['counters'], r.position, 30_000)).toBe(true);
    await v1.stop();
    await sql`delete from counters`.execute(t.db.db);
    const v2 = engine([counterProjector(2)]);
    await v2.start();
    expect(await v2.waitFor(['counters'], r.position, 30_000)).toBe(true);
    expect(await counterRows(t.db.db)).toEqual([{ stream_name: 'counter-v', value: 4, events: 1 }]);
    const row = await t.db.db.selectFrom('projection_checkpoints').selectAll().executeTakeFirstOrThrow();
    expect(row.version).toBe(2);
  });
});
