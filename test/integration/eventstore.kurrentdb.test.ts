import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { CommandHandler } from '../../src/commands/handler';
import {
  clientConnectionString,
  createKurrentDbEventStore,
  type KurrentDbEventStore,
} from '../../src/eventstore/kurrentdb';
import { START, type LogPosition, type RecordedEvent } from '../../src/eventstore/port';
import { uuidV7Ids } from '../../src/platform/clock';
import { createLogger } from '../../src/platform/logger';
import { createProjectionEngine } from '../../src/projections/runner';
import {
  counterDecider,
  counterProjector,
  counterRows,
  createCounterTable,
  type CounterCommand,
} from '../support/counter';
import { openTestDatabase } from '../support/databases';
import { startKurrentDbTestServer, type KurrentDbTestServer } from '../support/kurrentdb/server';
import { eventStoreContract, newEvent, type OpenedStore } from './eventstore.contract';

const logger = createLogger({ LOG_LEVEL: 'silent' });

describe('on the in-process KurrentDB test server', () => {
  eventStoreContract('kurrentdb event store', async (): Promise<OpenedStore> => {
    const server = await startKurrentDbTestServer();
    const store = createKurrentDbEventStore(server.url, { logger });
    return {
      store,
      async close() {
        await store.close();
        await server.stop();
      },
    };
  });
});

// A real node is shared by every run: each opened store works under a stream prefix of its own.
const realUrl = process.env.KURRENTDB_TEST_URL;
if (realUrl) {
  describe('on KurrentDB at KURRENTDB_TEST_URL', () => {
    eventStoreContract('kurrentdb event store', async (): Promise<OpenedStore> => {
      const store = createKurrentDbEventStore(realUrl, {
        logger,
        streamPrefix: `t${randomBytes(5).toString('hex')}_`,
      });
      return { store, close: () => store.close() };
    });
  });
}

describe('kurrentdb event store', () => {
  let server: KurrentDbTestServer;
  let store: KurrentDbEventStore;
  beforeEach(async () => {
    server = await startKurrentDbTestServer();
    store = createKurrentDbEventStore(server.url, { logger, retryMs: 50, maxRetryMs: 200 });
  });
  afterEach(async () => {
    await store.close();
    await server.stop();
  });

  it('accepts esdb:// and kurrentdb:// connection strings, with or without discovery', () => {
    expect(clientConnectionString('esdb://127.0.0.1:2113?tls=false')).toBe(
      'kurrentdb://127.0.0.1:2113?tls=false',
    );
    expect(clientConnectionString('esdb+discover://cluster.local:2113')).toBe(
      'kurrentdb+discover://cluster.local:2113',
    );
    expect(clientConnectionString('kurrentdb://a:1,b:2?tls=true')).toBe('kurrentdb://a:1,b:2?tls=true');
  });

  it('works through an esdb:// connection string', async () => {
    const esdb = createKurrentDbEventStore(server.url.replace('kurrentdb://', 'esdb://'), { logger });
    try {
      const result = await esdb.append('order-1', [newEvent()], 'no_stream');
      expect((await store.readStream('order-1')).map((e) => e.position)).toEqual([result.position]);
    } finally {
      await esdb.close();
    }
  });

  it('keeps system events out of reads, counts and subscriptions', async () => {
    expect(server.log.events.some((e) => e.type.startsWith('$'))).toBe(true);
    await store.append('order-1', [newEvent()], 'no_stream');
    const batch = await store.readAll({ from: START });
    expect(batch.events.map((e) => e.streamName)).toEqual(['order-1']);
    expect(await store.count({ from: START, limit: 100 })).toBe(1);
  });

  it('resumes a dropped subscription from its checkpoint, reporting it down meanwhile', async () => {
    const seen: RecordedEvent[] = [];
    let checkpoint: LogPosition = START;
    const subscription = store.subscribe(
      {
        async onEvents(events, next) {
          seen.push(...events);
          checkpoint = next;
        },
      },
      { filter: { categories: ['order'] } },
    );
    try {
      await store.append('order-1', [newEvent(), newEvent()], 'no_stream');
      await until(() => seen.length === 2);
      expect(store.health()).toEqual({ subscriptions: 1, subscriptionsDown: 0 });

      expect(server.dropSubscriptions()).toBe(1);
      await until(() => store.health().subscriptionsDown === 1);
      await store.append('order-1', [newEvent()], 1n);
      await until(() => seen.length === 3 && store.health().subscriptionsDown === 0);

      expect(seen.map((e) => e.revision)).toEqual([0n, 1n, 2n]);
      expect(checkpoint).toEqual(seen[2]!.logPosition);
    } finally {
      await subscription.stop();
    }
    expect(store.health()).toEqual({ subscriptions: 0, subscriptionsDown: 0 });
  });

  it('moves a live subscription’s checkpoint past events it filters out', async () => {
    const checkpoints: LogPosition[] = [];
    const subscription = store.subscribe(
      {
        async onEvents(_events, next) {
          checkpoints.push(next);
        },
      },
      { filter: { eventTypes: ['Wanted'] } },
    );
    try {
      const other = await store.append('order-1', [newEvent('Unwanted')], 'no_stream');
      await until(() => checkpoints.some((c) => c.txid >= other.position));
    } finally {
      await subscription.stop();
    }
  });
});

describe('projections on the kurrentdb event store', () => {
  it('catches up, follows live appends and answers waitFor, with checkpoints in PostgreSQL', async () => {
    const server = await startKurrentDbTestServer();
    const store = createKurrentDbEventStore(server.url, { logger });
    const database = await openTestDatabase('pglite');
    await createCounterTable(database.db.db);
    const handler = new CommandHandler(store, { ids: uuidV7Ids });
    const increment = (by: number): CounterCommand => ({
      type: 'Increment',
      data: { by },
      metadata: { now: new Date() },
    });
    const engine = createProjectionEngine({
      db: database.db,
      store,
      logger,
      projectors: [counterProjector()],
      batchSize: 25,
      standbyRetryMs: 100,
    });
    try {
      for (let i = 0; i < 60; i++) await handler.handle(counterDecider, `counter-${i % 3}`, increment(1));
      await engine.start();
      const last = await handler.handle(counterDecider, 'counter-0', increment(100));
      expect(await engine.waitFor(['counters'], last.position, 30_000)).toBe(true);
      expect(await counterRows(database.db.db)).toEqual([
        { stream_name: 'counter-0', value: 120, events: 21 },
        { stream_name: 'counter-1', value: 20, events: 20 },
        { stream_name: 'counter-2', value: 20, events: 20 },
      ]);

      // An event the projection does not handle: its checkpoint still moves past it.
      const unrelated = await store.append('other-1', [newEvent('SomethingElse')], 'no_stream');
      expect(await engine.waitFor(['counters'], unrelated.position, 10_000)).toBe(true);

      const [status] = await engine.status();
      expect(status).toMatchObject({ name: 'counters', state: 'running', lag: 0, lastError: null });
      expect(status!.checkpoint!.txid).toBeGreaterThanOrEqual(unrelated.position);
    } finally {
      await engine.stop();
      await store.close();
      await database.close();
      await server.stop();
    }
  });
});

async function until(check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(10);
  }
}
