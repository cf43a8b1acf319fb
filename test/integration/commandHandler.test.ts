import { CommandHandler, StreamMoved } from '../../src/commands/handler';
import type { EventStore, ReadStreamOptions } from '../../src/eventstore/port';
import { uuidV7Ids } from '../../src/platform/clock';
import { ConcurrencyConflict, BadRequest } from '../../src/platform/errors';
import { counterDecider, type CounterCommand } from '../support/counter';
import { openTestStore, testDatabases, type TestDatabase } from '../support/databases';

const increment = (by: number, actorId = 'user-1'): CounterCommand => ({
  type: 'Increment',
  data: { by },
  metadata: { now: new Date(), actorId, requestId: 'req-1' },
});

/** Counts what the handler reads, to prove reads stay small as a stream grows. */
function countingStore(inner: EventStore) {
  const counts = { eventsRead: 0, reads: 0 };
  const store: EventStore = {
    ...inner,
    async readStream(name: string, opts?: ReadStreamOptions) {
      const events = await inner.readStream(name, opts);
      counts.reads++;
      counts.eventsRead += events.length;
      return events;
    },
  };
  return { store, counts };
}

describe.each(testDatabases())('command handler on %s', (kind) => {
  let t: TestDatabase;
  let store: EventStore;
  beforeAll(async () => {
    ({ store, ...t } = await openTestStore(kind));
  });
  afterAll(() => t.close());

  it('reads, folds, decides and appends, answering with the last global position', async () => {
    const handler = new CommandHandler(store, { ids: uuidV7Ids });
    const first = await handler.handle(counterDecider, 'counter-a', increment(2));
    const second = await handler.handle(counterDecider, 'counter-a', increment(5));
    expect(second.state.value).toBe(7);
    expect(second.nextExpectedRevision).toBe(1n);
    expect(second.position).toBeGreaterThan(first.position);
    const stored = await store.readStream('counter-a');
    expect(stored.map((e) => e.data)).toEqual([
      expect.objectContaining({ by: 2 }),
      expect.objectContaining({ by: 5 }),
    ]);
    expect(stored[1]!.position).toBe(second.position);
    expect(stored[1]!.metadata).toMatchObject({ actorId: 'user-1', requestId: 'req-1', schemaVersion: 1 });
  });

  it('appends nothing when the decider decides nothing, and rethrows domain errors untouched', async () => {
    const handler = new CommandHandler(store, { ids: uuidV7Ids });
    const reset = await handler.handle(counterDecider, 'counter-empty', {
      type: 'Reset',
      data: {},
      metadata: { now: new Date() },
    });
    expect(reset.events).toEqual([]);
    expect(await store.readStream('counter-empty')).toEqual([]);
    await expect(handler.handle(counterDecider, 'counter-empty', increment(-1))).rejects.toBeInstanceOf(
      BadRequest,
    );
  });

  it('decides again on a conflict with another instance, so no increment is lost', async () => {
    // Two handlers = two service instances with their own caches, racing on one stream.
    const a = new CommandHandler(store, { ids: uuidV7Ids, maxRetries: 50 });
    const b = new CommandHandler(store, { ids: uuidV7Ids, maxRetries: 50 });
    await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        (i % 2 ? a : b).handle(counterDecider, 'counter-race', increment(1)),
      ),
    );
    const events = await store.readStream('counter-race');
    expect(events).toHaveLength(40);
    expect(events.map((e) => e.revision)).toEqual(Array.from({ length: 40 }, (_, i) => BigInt(i)));
    const final = await a.handle(counterDecider, 'counter-race', increment(1));
    expect(final.state.value).toBe(41);
  });

  it('gives up with a 409 ConcurrencyConflict after its bounded retries', async () => {
    // Another writer appends to the stream before each of our appends: every attempt conflicts.
    const rival = new CommandHandler(store, { ids: uuidV7Ids });
    const racing: EventStore = {
      ...store,
      async append(name, events, expected) {
        await rival.handle(counterDecider, name, increment(1, 'rival'));
        return store.append(name, events, expected);
      },
    };
    const handler = new CommandHandler(racing, { ids: uuidV7Ids, maxRetries: 2 });
    const error = await handler
      .handle(counterDecider, 'counter-contended', increment(1))
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConcurrencyConflict);
    expect((error as ConcurrencyConflict).status).toBe(409);
    const events = await store.readStream('counter-contended');
    expect(events.every((e) => e.metadata.actorId === 'rival')).toBe(true);
    expect(events).toHaveLength(3);
  });

  it('reads only the events appended since its cached state, however long the stream', async () => {
    const { store: counted, counts } = countingStore(store);
    const handler = new CommandHandler(counted, { ids: uuidV7Ids });
    await store.append(
      'counter-long',
      Array.from({ length: 500 }, () => ({
        id: uuidV7Ids.next(),
        type: 'CounterIncremented',
        data: { by: 1, incrementedAt: new Date().toISOString() },
        metadata: { occurredAt: new Date().toISOString(), schemaVersion: 1 },
      })),
      'no_stream',
    );
    await handler.handle(counterDecider, 'counter-long', increment(1));
    expect(counts.eventsRead).toBe(500);
    counts.eventsRead = 0;
    for (let i = 0; i < 20; i++) await handler.handle(counterDecider, 'counter-long', increment(1));
    expect(counts.eventsRead).toBe(0);
    // An append by another instance is picked up as one newer event, not a re-read.
    await new CommandHandler(store, { ids: uuidV7Ids }).handle(counterDecider, 'counter-long', increment(10));
    const after = await handler.handle(counterDecider, 'counter-long', increment(1));
    expect(counts.eventsRead).toBe(1);
    expect(after.state.value).toBe(500 + 1 + 20 + 10 + 1);
  });

  it('appends on its cached state in one round trip, and decides again on the stored stream when that state was stale', async () => {
    const { store: counted, counts } = countingStore(store);
    const a = new CommandHandler(counted, { ids: uuidV7Ids });
    const b = new CommandHandler(store, { ids: uuidV7Ids });
    await a.handle(counterDecider, 'counter-cached', increment(1));
    counts.reads = 0;
    await a.handle(counterDecider, 'counter-cached', increment(1));
    expect(counts.reads).toBe(0);

    // Stale and deciding something: the append conflicts, the stream is read, nothing is lost.
    await b.handle(counterDecider, 'counter-cached', increment(5));
    const after = await a.handle(counterDecider, 'counter-cached', increment(1));
    expect(after.state.value).toBe(8);

    // Stale and deciding nothing: a no-op on an old state is not trusted. A resets to 0 and caches
    // it; B adds 3; A's Reset would be a no-op on its cache, but the stored counter is 3.
    await a.handle(counterDecider, 'counter-cached', {
      type: 'Reset',
      data: {},
      metadata: { now: new Date() },
    });
    await b.handle(counterDecider, 'counter-cached', increment(3));
    const reset = await a.handle(counterDecider, 'counter-cached', {
      type: 'Reset',
      data: {},
      metadata: { now: new Date() },
    });
    expect(reset.events.map((e) => e.type)).toEqual(['CounterReset']);
    expect(reset.state.value).toBe(0);
  });

  it('creates a stream named by a new id without reading it, and decides on what is stored when it existed after all', async () => {
    const { store: counted, counts } = countingStore(store);
    const a = new CommandHandler(counted, { ids: uuidV7Ids });
    const created = await a.handle(counterDecider, 'counter-new-1', increment(2), { newStream: true });
    expect(counts.reads).toBe(0);
    expect(created.nextExpectedRevision).toBe(0n);
    expect((await store.readStream('counter-new-1')).map((e) => e.data)).toEqual([
      expect.objectContaining({ by: 2 }),
    ]);

    // Not new after all (another instance wrote it): `no_stream` conflicts, the stream is read and
    // the command decided on it, so nothing written before is lost or written over.
    await new CommandHandler(store, { ids: uuidV7Ids }).handle(counterDecider, 'counter-new-2', increment(5));
    const second = await a.handle(counterDecider, 'counter-new-2', increment(1), { newStream: true });
    expect(counts.reads).toBe(1);
    expect(second.state.value).toBe(6);
    expect(await store.readStream('counter-new-2')).toHaveLength(2);

    // A refusal on the empty state is not trusted either: it is decided again on the stored stream.
    await expect(
      a.handle(counterDecider, 'counter-new-3', increment(-1), { newStream: true }),
    ).rejects.toBeInstanceOf(BadRequest);
    expect(counts.reads).toBe(2);
  });

  it('appends at the revision its caller read, and never past it: a stream moved since is refused, not decided again', async () => {
    const { store: counted, counts } = countingStore(store);
    const a = new CommandHandler(counted, { ids: uuidV7Ids });
    const b = new CommandHandler(store, { ids: uuidV7Ids });

    // Read empty, taken empty: one round trip, no read.
    const created = await a.handle(counterDecider, 'counter-at-1', increment(2), { atRevision: -1n });
    expect(created.nextExpectedRevision).toBe(0n);
    expect(counts.reads).toBe(0);

    // Still at the revision read (cached here): appended.
    const read = await a.read(counterDecider, 'counter-at-1');
    const next = await a.handle(counterDecider, 'counter-at-1', increment(1), { atRevision: read.revision });
    expect(next.state.value).toBe(3);

    // Moved on by another instance since it was read: refused, with nothing written.
    const stale = await a.read(counterDecider, 'counter-at-1');
    await b.handle(counterDecider, 'counter-at-1', increment(10));
    const moved = await a
      .handle(counterDecider, 'counter-at-1', increment(1), { atRevision: stale.revision })
      .catch((e: unknown) => e);
    expect(moved).toBeInstanceOf(StreamMoved);
    expect((moved as StreamMoved).status).toBe(409);
    // Moved on here (cached past it): refused without a round trip.
    const reads = counts.reads;
    await expect(
      a.handle(counterDecider, 'counter-at-1', increment(1), { atRevision: stale.revision }),
    ).rejects.toBeInstanceOf(StreamMoved);
    expect(counts.reads).toBe(reads);
    // Read empty, written meanwhile elsewhere: refused too.
    await b.handle(counterDecider, 'counter-at-2', increment(1));
    await expect(
      a.handle(counterDecider, 'counter-at-2', increment(1), { atRevision: -1n }),
    ).rejects.toBeInstanceOf(StreamMoved);
    expect((await store.readStream('counter-at-1')).map((e) => (e.data as { by: number }).by)).toEqual([
      2, 1, 10,
    ]);
    expect(await store.readStream('counter-at-2')).toHaveLength(1);
    // The cache was left right: the next command reads what came after and decides on it.
    const after = await a.handle(counterDecider, 'counter-at-1', increment(1));
    expect(after.state.value).toBe(14);
  });

  it('warms streams beside other work, so that commands on them then take one round trip each', async () => {
    const { store: counted, counts } = countingStore(store);
    const handler = new CommandHandler(counted, { ids: uuidV7Ids });
    // One stream with events (another instance's), one not written yet.
    await new CommandHandler(store, { ids: uuidV7Ids }).handle(
      counterDecider,
      'counter-warm-1',
      increment(4),
    );
    await Promise.all([
      handler.warm(counterDecider, 'counter-warm-1'),
      handler.warm(counterDecider, 'counter-warm-2'),
    ]);
    expect(counts.reads).toBe(2);
    // Cached already: nothing is read again.
    await handler.warm(counterDecider, 'counter-warm-2');
    expect(counts.reads).toBe(2);
    const [one, two] = await Promise.all([
      handler.handle(counterDecider, 'counter-warm-1', increment(1)),
      handler.handle(counterDecider, 'counter-warm-2', increment(1)),
    ]);
    expect(counts.reads).toBe(2);
    expect([one.state.value, two.state.value]).toEqual([5, 1]);
    expect(await store.readStream('counter-warm-2')).toHaveLength(1);
  });

  it('warms without failing when the store cannot be read, leaving the command to meet it', async () => {
    const broken: EventStore = {
      ...store,
      readStream: () => Promise.reject(new Error('the database is away')),
    };
    const handler = new CommandHandler(broken, { ids: uuidV7Ids });
    await expect(handler.warm(counterDecider, 'counter-warm-broken')).resolves.toBeUndefined();
    await expect(handler.handle(counterDecider, 'counter-warm-broken', increment(1))).rejects.toThrow(
      'the database is away',
    );
  });

  it('foresees what a command would decide on the cached state, reading and writing nothing', async () => {
    const { store: counted, counts } = countingStore(store);
    const handler = new CommandHandler(counted, { ids: uuidV7Ids });
    const reset: CounterCommand = { type: 'Reset', data: {}, metadata: { now: new Date() } };
    expect(handler.foresee(counterDecider, 'counter-foresee', increment(1))).toBeUndefined();
    await handler.handle(counterDecider, 'counter-foresee', increment(2));
    const reads = counts.reads;
    expect(handler.foresee(counterDecider, 'counter-foresee', increment(1))).toEqual([
      expect.objectContaining({ type: 'CounterIncremented' }),
    ]);
    expect(handler.foresee(counterDecider, 'counter-foresee', increment(-1))).toBe('refused');
    expect(handler.foresee(counterDecider, 'counter-foresee', reset)).toEqual([
      expect.objectContaining({ type: 'CounterReset' }),
    ]);
    expect(counts.reads).toBe(reads);
    expect(await store.readStream('counter-foresee')).toHaveLength(1);

    // A command under way here is not in the cache yet: no guess until it has ended.
    const under = handler.handle(counterDecider, 'counter-foresee', increment(1));
    expect(handler.foresee(counterDecider, 'counter-foresee', increment(1))).toBe('changing');
    await under;
    expect(handler.foresee(counterDecider, 'counter-foresee', increment(1))).toEqual([
      expect.objectContaining({ type: 'CounterIncremented' }),
    ]);
  });

  it('runs concurrent commands on one stream in one process one after another, without conflicts', async () => {
    const appends: unknown[] = [];
    const watching: EventStore = {
      ...store,
      async append(name, events, expected) {
        appends.push(expected);
        return store.append(name, events, expected);
      },
    };
    const handler = new CommandHandler(watching, { ids: uuidV7Ids, maxRetries: 0 });
    const results = await Promise.all(
      Array.from({ length: 25 }, () => handler.handle(counterDecider, 'counter-local', increment(1))),
    );
    expect(results.map((r) => r.state.value).sort((x, y) => x - y)).toEqual(
      Array.from({ length: 25 }, (_, i) => i + 1),
    );
    expect(appends).toHaveLength(25);
  });
});
