import { sql } from 'kysely';
import { setTimeout as sleep } from 'node:timers/promises';
import { uuidv7 } from 'uuidv7';
import { createPostgresEventStore } from '../../src/eventstore/postgres';
import { START, type EventFilter, type EventStore, type RecordedEvent } from '../../src/eventstore/port';
import { openDatabase, type Db } from '../../src/platform/db';
import { createLogger } from '../../src/platform/logger';
import { openTestDatabase, testDatabases } from '../support/databases';
import { eventStoreContract, type OpenedStore } from './eventstore.contract';

describe.each(testDatabases())('on %s', (kind) => {
  eventStoreContract('postgres event store', async (): Promise<OpenedStore> => {
    const database = await openTestDatabase(kind);
    const store = createPostgresEventStore(database.db);
    const opened: OpenedStore = {
      store,
      async close() {
        await store.close();
        await database.close();
      },
    };
    // PGlite has one session: a held transaction would only pause every writer, never be overtaken.
    if (kind === 'postgres') {
      opened.holdTransaction = (ms, onHeld) =>
        database.db.db.transaction().execute(async (trx) => {
          await sql`select pg_current_xact_id()`.execute(trx);
          onHeld?.();
          await sleep(ms);
        });
    }
    return opened;
  });
});

describe.each(testDatabases())('stream reads on %s', (kind) => {
  it('asked for at once share one statement; a lone one goes alone', async () => {
    const database = await openTestDatabase(kind);
    const statements: string[] = [];
    const store = createPostgresEventStore(watching(database.db, (name) => statements.push(name)));
    try {
      const streams = Array.from({ length: 30 }, (_, i) => `chat-${uuidv7()}-${i}`);
      for (const [i, stream] of streams.entries()) {
        const events = Array.from({ length: (i % 3) + 1 }, (_, n) => ({
          id: uuidv7(),
          type: 'MessageSent',
          data: { i, n },
          metadata: meta,
        }));
        await store.append(stream, events, 'no_stream');
      }
      statements.length = 0;
      const read = await Promise.all(
        streams.map((stream, i) => store.readStream(stream, { fromRevision: BigInt(i % 2) })),
      );
      expect(statements).toEqual(['eventstore_read_streams']);
      read.forEach((events, i) => {
        const from = i % 2;
        expect(events.map((e) => [e.streamName, e.revision, e.data])).toEqual(
          Array.from({ length: (i % 3) + 1 - from }, (_, k) => [
            streams[i],
            BigInt(from + k),
            { i, n: from + k },
          ]),
        );
      });
      statements.length = 0;
      expect(await store.readStream(streams[2]!)).toHaveLength(3);
      expect(statements).toEqual(['eventstore_read_stream']);
      // A name that text cannot hold fails the shared statement: it fails alone, the others answer.
      const [bad, ...good] = await Promise.allSettled([
        store.readStream('chat-\u0000'),
        ...streams.slice(0, 3).map((stream) => store.readStream(stream)),
      ]);
      expect(bad.status).toBe('rejected');
      expect(good.map((r) => (r.status === 'fulfilled' ? r.value.length : String(r.reason)))).toEqual([
        1, 2, 3,
      ]);
    } finally {
      await store.close();
      await database.close();
    }
  });
});

describe.each(testDatabases())('live subscribers on %s', (kind) => {
  it('share one read per wake, each getting exactly the events its filter matches, in order', async () => {
    const database = await openTestDatabase(kind);
    // Counts the global reads that find events. Reads that find none depend on the server: while a
    // writing transaction is open anywhere on it (another test's migration), subscribers poll.
    let reads = 0;
    const counted = watchingReadAll(database.db, (rows) => {
      // A header row, then the events.
      if (rows > 1) reads++;
    });
    const store = createPostgresEventStore(counted);
    const types = ['A', 'B', 'C', 'D'];
    const filters: EventFilter[] = [
      ...types.map((t) => ({ eventTypes: [t] })),
      { categories: ['left'] },
      { eventTypes: ['A', 'B'], categories: ['right'] },
      {},
      { eventTypes: [] },
    ];
    const seen = filters.map(() => [] as RecordedEvent[]);
    const caughtUp = filters.map(() => false);
    const subscriptions = filters.map((filter, i) =>
      store.subscribe(
        {
          onEvents: async (events) => {
            seen[i]!.push(...events);
          },
          onCaughtUp: () => {
            caughtUp[i] = true;
          },
        },
        { filter },
      ),
    );
    try {
      await until(() => caughtUp.every(Boolean));
      const before = reads;
      const appended: RecordedEvent[] = [];
      for (let i = 0; i < 40; i++) {
        const stream = `${i % 3 === 0 ? 'left' : 'right'}-${i}`;
        await store.append(
          stream,
          [{ id: uuidv7(), type: types[i % 4]!, data: { i }, metadata: meta }],
          'no_stream',
        );
        appended.push(...(await store.readStream(stream)));
        // One wake per append: every subscriber has it before the next.
        await until(() => seen[6]!.length === appended.length);
      }
      await until(() =>
        filters.every((f, i) => seen[i]!.length === appended.filter((e) => passes(f, e)).length),
      );
      filters.forEach((f, i) => {
        expect(seen[i]!.map((e) => e.id)).toEqual(appended.filter((e) => passes(f, e)).map((e) => e.id));
      });
      // Eight subscribers each reading for itself would read each of the 40 appends 8 times.
      expect(reads - before).toBeLessThan(40 * 2);
    } finally {
      await Promise.all(subscriptions.map((s) => s.stop()));
      await store.close();
      await database.close();
    }
  });
});

describe.each(testDatabases())('live subscribers under bursts on %s', (kind) => {
  it('deliver every matching event once, in order, to fast and slow subscribers alike', async () => {
    const database = await openTestDatabase(kind);
    const store = createPostgresEventStore(database.db);
    const filters: EventFilter[] = [
      { eventTypes: ['A'] },
      { eventTypes: ['B'] },
      {},
      { categories: ['left'] },
    ];
    const seen = filters.map(() => [] as RecordedEvent[]);
    const caughtUp = filters.map(() => false);
    const subscriptions = filters.map((filter, i) =>
      store.subscribe(
        {
          onEvents: async (events) => {
            // Every other subscriber is slow: it falls behind the shared reads and rejoins them.
            if (i % 2 === 1) await sleep(15);
            seen[i]!.push(...events);
          },
          onCaughtUp: () => {
            caughtUp[i] = true;
          },
        },
        { filter, batchSize: 7 },
      ),
    );
    try {
      await until(() => caughtUp.every(Boolean));
      // Writers back to back and at once: appends land while reads are in flight.
      const writers = Array.from({ length: 4 }, async (_, w) => {
        for (let i = 0; i < 30; i++) {
          const stream = `${i % 2 === 0 ? 'left' : 'right'}-${w}-${i}`;
          await store.append(
            stream,
            [{ id: uuidv7(), type: i % 3 === 0 ? 'A' : 'B', data: {}, metadata: meta }],
            'no_stream',
          );
        }
      });
      await Promise.all(writers);
      await store.head();
      const all: RecordedEvent[] = [];
      for (let from = START; ;) {
        const batch = await store.readAll({ from, maxCount: 1_000 });
        all.push(...batch.events);
        from = batch.next;
        if (batch.caughtUp) break;
      }
      expect(all).toHaveLength(120);
      await until(
        () => filters.every((f, i) => seen[i]!.length >= all.filter((e) => passes(f, e)).length),
        30_000,
      );
      await sleep(100); // nothing more arrives: no event twice
      filters.forEach((f, i) => {
        expect(seen[i]!.map((e) => e.id)).toEqual(all.filter((e) => passes(f, e)).map((e) => e.id));
      });
    } finally {
      await Promise.all(subscriptions.map((s) => s.stop()));
      await store.close();
      await database.close();
    }
  });
});

describe.each(testDatabases())('live subscribers behind the others on %s', (kind) => {
  it('take what the others read from the stretch kept, not the log again', async () => {
    const database = await openTestDatabase(kind);
    let rowsRead = 0;
    // Each read has a header row before its events.
    const counted = watchingReadAll(database.db, (rows) => (rowsRead += rows - 1));
    const store = createPostgresEventStore(counted, { gatherMs: 5 });
    // Batches that take longer put a subscriber behind the others, each by its own amount.
    const delays = [0, 0, 3, 7, 13, 21];
    const seen = delays.map(() => [] as RecordedEvent[]);
    const caughtUp = delays.map(() => false);
    const subscriptions = delays.map((ms, i) =>
      store.subscribe({
        onEvents: async (events) => {
          if (ms > 0) await sleep(ms);
          seen[i]!.push(...events);
        },
        onCaughtUp: () => {
          caughtUp[i] = true;
        },
      }),
    );
    try {
      await until(() => caughtUp.every(Boolean));
      const before = rowsRead;
      await Promise.all(
        Array.from({ length: 4 }, async (_, w) => {
          for (let i = 0; i < 50; i++) await store.append(`burst-${w}-${i}`, event(), 'no_stream');
        }),
      );
      await until(() => seen.every((s) => s.length >= 200), 30_000);
      await sleep(100); // nothing more arrives: no event twice
      const read = rowsRead - before;
      const all = (await store.readAll({ maxCount: 1_000 })).events.filter((e) =>
        e.streamName.startsWith('burst-'),
      );
      expect(all).toHaveLength(200);
      for (const s of seen) expect(s.map((e) => e.id)).toEqual(all.map((e) => e.id));
      // Six subscribers reading for themselves read most events several times over.
      expect(read).toBeLessThan(200 * 1.5);
    } finally {
      await Promise.all(subscriptions.map((s) => s.stop()));
      await store.close();
      await database.close();
    }
  });
});

describe.each(testDatabases())('append notifications on %s', (kind) => {
  it('wake the subscribers of another store at once, and not the appending store’s again with its own', async () => {
    const database = await openTestDatabase(kind);
    // Another process: connections of its own on a server; on PGlite, a second store on its session.
    const otherDb =
      kind === 'postgres'
        ? await openDatabase(database.config, createLogger({ LOG_LEVEL: 'silent' }))
        : database.db;
    let reads = 0;
    const counted = watchingReadAll(database.db, () => reads++);
    // Polling only after a minute: seen before that, an append was seen through its NOTIFY.
    const store = createPostgresEventStore(counted, { idlePollMs: 60_000 });
    const other = createPostgresEventStore(otherDb);
    const { seen, subscription, caughtUp } = follow(store);
    try {
      await caughtUp;
      // Woken by the other store's NOTIFY: its idle poll is a minute away, and `until` gives up after 10 s.
      await other.append('other-1', event(), 'no_stream');
      await until(() => seen.length === 1);
      // Its own append wakes it directly, so its own NOTIFY, however late it arrives, must not wake
      // it again; another's does. (On a server any open transaction makes subscribers poll, so the
      // reads are counted on PGlite only.)
      if (kind === 'pglite') {
        const payloads: (string | undefined)[] = [];
        const unlisten = await database.db.listen('eventstore_appended', (p) => payloads.push(p));
        await store.append('own-1', event(), 'no_stream');
        await until(() => seen.length === 2 && payloads.length === 1);
        await unlisten();
        const quiet = async () => {
          const before = reads;
          await sleep(300);
          return reads - before;
        };
        const notify = (payload: string) =>
          sql`select pg_notify('eventstore_appended', ${payload})`.execute(database.db.db);
        await sleep(50);
        await notify(payloads[0]!);
        expect(await quiet()).toBe(0);
        // Another's wakes it, however long that takes on a loaded machine, and only once.
        const before = reads;
        await notify('another store');
        await until(() => reads > before);
        await sleep(300); // nothing more comes of it
        expect(reads - before).toBe(1);
      }
    } finally {
      await subscription.stop();
      await store.close();
      await other.close();
      if (otherDb !== database.db) await otherDb.close();
      await database.close();
    }
  });
});

// A minute's gathering and idle poll: whatever is read sooner was hurried. On a server, a
// transaction open anywhere on it (another test's) makes subscribers poll instead of gathering,
// so these tests prove the gathering on PGlite; on a server they only show nothing breaks.
const gathering = { idlePollMs: 60_000, gatherMs: 60_000 };

describe.each(testDatabases())('gathering appends on %s', (kind) => {
  it('reads what woke a subscriber only after more may join it, at once when hurried, and stops while gathering', async () => {
    const database = await openTestDatabase(kind);
    const store = createPostgresEventStore(database.db, gathering);
    const { seen, subscription, caughtUp } = follow(store);
    let stopped = false;
    try {
      await caughtUp;
      await store.append('gather-1', event(), 'no_stream');
      await store.append('gather-2', event(), 'no_stream');
      if (kind === 'pglite') {
        await sleep(300);
        expect(seen).toHaveLength(0);
      }
      store.hurry!();
      await until(() => seen.length === 2);
      expect(seen.map((e) => e.streamName)).toEqual(['gather-1', 'gather-2']);
      // Woken again, it gathers for a minute; stopping does not wait for that.
      await store.append('gather-3', event(), 'no_stream');
      await sleep(50);
      const stopping = subscription.stop().then(() => 'stopped');
      expect(await Promise.race([stopping, sleep(5_000, 'still gathering')])).toBe('stopped');
      stopped = true;
    } finally {
      if (!stopped) await subscription.stop();
      await store.close();
      await database.close();
    }
  });

  it('skips the next gathering of a subscriber that was busy when hurried', async () => {
    const database = await openTestDatabase(kind);
    const store = createPostgresEventStore(database.db, gathering);
    // While set, the subscriber's handler waits for it: a runner busy writing its batch.
    let busy: Promise<void> | undefined;
    let release = () => {};
    const { seen, subscription, caughtUp } = follow(store, () => busy);
    try {
      await caughtUp;
      busy = new Promise((resolve) => (release = resolve));
      await store.append('busy-1', event(), 'no_stream');
      store.hurry!();
      await until(() => seen.length === 1);
      // Busy with busy-1, it is woken by busy-2 and hurried: no gathering is under way to end.
      await store.append('busy-2', event(), 'no_stream');
      store.hurry!();
      busy = undefined;
      release();
      // It reads busy-2 at once, not after gathering for a minute.
      await until(() => seen.length === 2);
    } finally {
      release();
      await subscription.stop();
      await store.close();
      await database.close();
    }
  });
});

const onServer = process.env.DATABASE_URL ? describe : describe.skip;

onServer('appends of two instances to the same streams', () => {
  it('never deadlock, whatever order each instance queued them in', async () => {
    const database = await openTestDatabase('postgres');
    // Two instances' stores on one database, each telling the statements that failed.
    const failures: string[] = [];
    const watched = (): Db =>
      Object.create(database.db, {
        query: {
          value: async (...args: Parameters<Db['query']>) => {
            try {
              return await database.db.query(...args);
            } catch (err) {
              failures.push(`${args[2]}: ${(err as Error).message}`);
              throw err;
            }
          },
        },
      }) as Db;
    const one = createPostgresEventStore(watched());
    const two = createPostgresEventStore(watched());
    try {
      const streams = ['order-a', 'order-b', 'order-c', 'order-d'];
      for (const s of streams) await one.append(s, event(), 'no_stream');
      const modes = ['any', 'stream_exists', 'any', 'stream_exists'] as const;
      for (const mode of modes) {
        // A third writer holds the first stream: each instance's statement takes what it can and
        // waits, so that both are under way when it lets go.
        let held = false;
        const holding = database.db.db.transaction().execute(async (trx) => {
          await sql`select revision from streams where stream_name = ${streams[0]} for update`.execute(trx);
          held = true;
          await sleep(300);
        });
        await until(() => held);
        // Queued in the same turn, each instance's appends share one statement: in opposite orders.
        await Promise.all([
          ...streams.map((s) => one.append(s, event(), mode)),
          ...streams.toReversed().map((s) => two.append(s, event(), mode)),
          holding,
        ]);
      }
      expect(failures).toEqual([]);
      for (const s of streams) expect(await one.readStream(s)).toHaveLength(1 + 2 * modes.length);
    } finally {
      await one.close();
      await two.close();
      await database.close();
    }
  });
});

const meta = { occurredAt: new Date().toISOString(), schemaVersion: 1 };
const event = () => [{ id: uuidv7(), type: 'A', data: {}, metadata: meta }];

/**
 * Subscribes to `store` from the start: what it has seen, and when it first caught up. Each batch's
 * handling ends when `handling` (if given) settles, as a runner's ends when its batch is written.
 */
function follow(store: EventStore, handling?: () => Promise<void> | undefined) {
  const seen: RecordedEvent[] = [];
  let caughtUp!: () => void;
  const reached = new Promise<void>((resolve) => (caughtUp = resolve));
  const subscription = store.subscribe({
    onEvents: async (events) => {
      seen.push(...events);
      await handling?.();
    },
    onCaughtUp: () => caughtUp(),
  });
  return { seen, subscription, caughtUp: reached };
}

/** `db`, telling `onStatement` the name of each named statement it runs. */
function watching(db: Db, onStatement: (name: string) => void): Db {
  return Object.create(db, {
    query: {
      value: (...args: Parameters<Db['query']>) => {
        if (args[2]) onStatement(args[2]);
        return db.query(...args);
      },
    },
  }) as Db;
}

/** `db`, telling `onRead` the number of rows of each read of the log. */
function watchingReadAll(db: Db, onRead: (rows: number) => void): Db {
  return Object.create(db, {
    query: {
      value: async (...args: Parameters<Db['query']>) => {
        const rows = await db.query(...args);
        if (args[2] === 'eventstore_read_all') onRead(rows.length);
        return rows;
      },
    },
  }) as Db;
}

function passes(filter: EventFilter, e: RecordedEvent): boolean {
  if (filter.eventTypes?.length && !filter.eventTypes.includes(e.type)) return false;
  if (filter.categories?.length && !filter.categories.includes(e.streamName.split('-')[0]!)) return false;
  return true;
}

async function until(check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(5);
  }
}
