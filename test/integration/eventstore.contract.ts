import { randomBytes, randomInt } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { uuidv7 } from 'uuidv7';
import {
  START,
  UnstorableText,
  WrongExpectedRevision,
  compareLogPositions,
  type AppendResult,
  type EventFilter,
  type EventMetadata,
  type EventStore,
  type ExpectedRevision,
  type LogPosition,
  type NewEvent,
  type ReadStreamOptions,
  type RecordedEvent,
  type SubscribeOptions,
  type Subscription,
} from '../../src/eventstore/port';

/** What a contract run needs from an adapter. */
export interface OpenedStore {
  store: EventStore;
  close(): Promise<void>;
  /**
   * Keeps a writing transaction (one holding a transaction id) open for `ms` on the store's
   * database, so the oldest running transaction lags behind later commits; `onHeld` is called once
   * it has its id. Only where the store has such transactions and they can overlap with appends.
   */
  holdTransaction?(ms: number, onHeld?: () => void): Promise<void>;
}

/** The behaviour every EventStore adapter promises; run it once per adapter and database. */
export function eventStoreContract(name: string, open: () => Promise<OpenedStore>): void {
  describe(name, () => {
    let opened: OpenedStore;
    let store: EventStore;
    const subscriptions: Subscription[] = [];

    beforeAll(async () => {
      opened = await open();
      store = opened.store;
    });
    afterEach(async () => {
      await Promise.all(subscriptions.splice(0).map((s) => s.stop()));
    });
    afterAll(async () => {
      await opened?.close();
    });

    /** Subscribes, recording everything the handler is told; stopped after each test. */
    function collect(target: EventStore, options: SubscribeOptions = {}): Collector {
      const collector = new Collector();
      const subscription = target.subscribe(collector.handler, options);
      collector.subscription = subscription;
      subscriptions.push(subscription);
      return collector;
    }

    describe('append', () => {
      it('appends one event to a new stream at revision 0 and answers its position', async () => {
        const stream = streamIn('order');
        const result = await store.append(stream, [newEvent()], 'no_stream');

        expect(result.nextExpectedRevision).toBe(0n);
        expect(typeof result.position).toBe('bigint');
        expect(result.logPosition.position).toBe(result.position);
        const [recorded] = await store.readStream(stream);
        expect(recorded?.position).toBe(result.position);
        expect(recorded?.logPosition).toEqual(result.logPosition);
      });

      it('answers revision n-1 and the last event’s position for n events', async () => {
        const stream = streamIn('order');
        const result = await store.append(stream, [newEvent(), newEvent(), newEvent()], 'no_stream');

        expect(result.nextExpectedRevision).toBe(2n);
        const recorded = await store.readStream(stream);
        expect(recorded.map((e) => e.revision)).toEqual([0n, 1n, 2n]);
        expect(recorded[2]!.position).toBe(result.position);
        expect(recorded[2]!.logPosition).toEqual(result.logPosition);
        expect(recorded[0]!.position < recorded[1]!.position).toBe(true);
        expect(recorded[1]!.position < recorded[2]!.position).toBe(true);
      });

      it('gives later appends greater positions, in any stream', async () => {
        const first = await store.append(streamIn('order'), [newEvent()], 'no_stream');
        const second = await store.append(streamIn('invoice'), [newEvent(), newEvent()], 'no_stream');
        const third = await store.append(streamIn('order'), [newEvent()], 'any');

        expect(second.position > first.position).toBe(true);
        expect(third.position > second.position).toBe(true);
        expect(compareLogPositions(second.logPosition, first.logPosition)).toBe(1);
        expect(compareLogPositions(third.logPosition, second.logPosition)).toBe(1);
      });

      it('continues a stream from the revision the previous append answered', async () => {
        const stream = streamIn('order');
        const first = await store.append(stream, [newEvent(), newEvent()], 'no_stream');
        const second = await store.append(stream, [newEvent()], first.nextExpectedRevision);

        expect(second.nextExpectedRevision).toBe(2n);
        expect((await store.readStream(stream)).map((e) => e.revision)).toEqual([0n, 1n, 2n]);
      });
    });

    describe('expected revision', () => {
      async function streamAt(revision: bigint): Promise<string> {
        const stream = streamIn('account');
        const events = Array.from({ length: Number(revision) + 1 }, () => newEvent());
        await store.append(stream, events, 'no_stream');
        return stream;
      }

      it('rejects no_stream when the stream exists, with its actual revision', async () => {
        const stream = await streamAt(1n);
        await expectWrongRevision(store.append(stream, [newEvent()], 'no_stream'), stream, 'no_stream', 1n);
        expect(await store.readStream(stream)).toHaveLength(2);
      });

      it('accepts the exact revision the stream is at', async () => {
        const stream = await streamAt(2n);
        const result = await store.append(stream, [newEvent(), newEvent()], 2n);
        expect(result.nextExpectedRevision).toBe(4n);
        expect(await store.readStream(stream)).toHaveLength(5);
      });

      it('rejects an exact revision behind the stream, with its actual revision, and writes nothing', async () => {
        const stream = await streamAt(2n);
        await expectWrongRevision(store.append(stream, [newEvent()], 1n), stream, 1n, 2n);
        expect(await store.readStream(stream)).toHaveLength(3);
      });

      it('rejects an exact revision ahead of the stream', async () => {
        const stream = await streamAt(0n);
        await expectWrongRevision(store.append(stream, [newEvent()], 5n), stream, 5n, 0n);
        expect(await store.readStream(stream)).toHaveLength(1);
      });

      it('rejects an exact revision on a missing stream, with actual undefined, and creates nothing', async () => {
        const stream = streamIn('account');
        await expectWrongRevision(store.append(stream, [newEvent()], 0n), stream, 0n, undefined);
        expect(await store.readStream(stream)).toEqual([]);
        // The failed append left no trace that would make the stream look created.
        expect((await store.append(stream, [newEvent()], 'no_stream')).nextExpectedRevision).toBe(0n);
      });

      it('rejects stream_exists on a missing stream', async () => {
        const stream = streamIn('account');
        await expectWrongRevision(
          store.append(stream, [newEvent()], 'stream_exists'),
          stream,
          'stream_exists',
          undefined,
        );
        expect(await store.readStream(stream)).toEqual([]);
      });

      it('accepts stream_exists on an existing stream', async () => {
        const stream = await streamAt(0n);
        const result = await store.append(stream, [newEvent()], 'stream_exists');
        expect(result.nextExpectedRevision).toBe(1n);
      });

      it('accepts any on a missing stream and on an existing one', async () => {
        const stream = streamIn('account');
        expect((await store.append(stream, [newEvent()], 'any')).nextExpectedRevision).toBe(0n);
        expect((await store.append(stream, [newEvent(), newEvent()], 'any')).nextExpectedRevision).toBe(2n);
        expect(await store.readStream(stream)).toHaveLength(3);
      });

      it('lets exactly one of several appends at the same revision win', async () => {
        const stream = await streamAt(0n);
        const outcomes = await Promise.allSettled(
          Array.from({ length: 5 }, () => store.append(stream, [newEvent()], 0n)),
        );

        expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
        for (const o of outcomes.filter((o) => o.status === 'rejected')) {
          expect(o.reason).toBeInstanceOf(WrongExpectedRevision);
        }
        expect((await store.readStream(stream)).map((e) => e.revision)).toEqual([0n, 1n]);
      });

      it('lets exactly one of several no_stream appends create the stream', async () => {
        const stream = streamIn('account');
        const outcomes = await Promise.allSettled(
          Array.from({ length: 5 }, () => store.append(stream, [newEvent()], 'no_stream')),
        );

        expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(1);
        for (const o of outcomes.filter((o) => o.status === 'rejected')) {
          expect(o.reason).toBeInstanceOf(WrongExpectedRevision);
        }
        expect(await store.readStream(stream)).toHaveLength(1);
      });

      it('refuses text no read model can store (NUL, half a surrogate pair), and writes nothing', async () => {
        const stream = streamIn('chat');
        await store.append(stream, [newEvent()], 'no_stream');
        const bad = [
          newEvent('MessageSent', { text: 'a\u0000b' }),
          newEvent('MessageSent', { parts: [{ text: 'half \ud800 a pair' }] }),
          newEvent('MessageSent', { ['key\udc00']: 1 }),
          { ...newEvent(), metadata: { ...newEvent().metadata, reason: 'z\u0000' } },
        ];
        for (const e of bad) {
          await expect(store.append(stream, [newEvent(), e], 0n)).rejects.toBeInstanceOf(UnstorableText);
        }
        expect(await store.readStream(stream)).toHaveLength(1);
        // A whole pair is a character like any other.
        await store.append(stream, [newEvent('MessageSent', { text: '\u{1F600}' })], 0n);
        expect((await store.readStream(stream)).at(-1)!.data).toEqual({ text: '\u{1F600}' });
      });
    });

    describe('idempotent append', () => {
      it('answers a re-append of the same events at no_stream as the first time and writes nothing', async () => {
        const stream = streamIn('payment');
        const events = [newEvent(), newEvent()];
        const first = await store.append(stream, events, 'no_stream');
        const again = await store.append(stream, events, 'no_stream');

        expect(again).toEqual(first);
        expect(await store.readStream(stream)).toHaveLength(2);
      });

      it('answers a re-append at the same exact revision as the first time and writes nothing', async () => {
        const stream = streamIn('payment');
        await store.append(stream, [newEvent()], 'no_stream');
        const events = [newEvent(), newEvent()];
        const first = await store.append(stream, events, 0n);
        const again = await store.append(stream, events, 0n);

        expect(first.nextExpectedRevision).toBe(2n);
        expect(again).toEqual(first);
        expect(await store.readStream(stream)).toHaveLength(3);
      });

      it('answers a re-append with any as the first time and writes nothing', async () => {
        const stream = streamIn('payment');
        await store.append(stream, [newEvent()], 'no_stream');
        const events = [newEvent(), newEvent()];
        const first = await store.append(stream, events, 'any');
        const again = await store.append(stream, events, 'any');

        expect(again).toEqual(first);
        expect(await store.readStream(stream)).toHaveLength(3);
      });

      it('rejects the same events at an expected revision they were not appended at', async () => {
        const stream = streamIn('payment');
        await store.append(stream, [newEvent()], 'no_stream');
        const events = [newEvent(), newEvent()];
        await store.append(stream, events, 0n); // now at revision 2

        await expectWrongRevision(store.append(stream, events, 1n), stream, 1n, 2n);
        await expectWrongRevision(store.append(stream, events, 'no_stream'), stream, 'no_stream', 2n);
        expect(await store.readStream(stream)).toHaveLength(3);
      });
    });

    describe('readStream', () => {
      let stream: string;
      let appended: NewEvent[];
      beforeAll(async () => {
        stream = streamIn('chat');
        appended = Array.from({ length: 5 }, (_, i) => newEvent('MessageSent', { n: i }));
        await store.append(stream, appended.slice(0, 2), 'no_stream');
        await store.append(stream, appended.slice(2), 1n);
      });
      const revisions = (events: RecordedEvent[]) => events.map((e) => e.revision);

      it('reads forwards by default', async () => {
        const events = await store.readStream(stream);
        expect(revisions(events)).toEqual([0n, 1n, 2n, 3n, 4n]);
        expect(events.map((e) => e.id)).toEqual(appended.map((e) => e.id));
      });

      it('reads backwards from the end', async () => {
        expect(revisions(await store.readStream(stream, { direction: 'backwards' }))).toEqual([
          4n,
          3n,
          2n,
          1n,
          0n,
        ]);
      });

      it('reads forwards from a revision, inclusive', async () => {
        expect(revisions(await store.readStream(stream, { fromRevision: 2n }))).toEqual([2n, 3n, 4n]);
      });

      it('reads backwards from a revision, inclusive', async () => {
        const events = await store.readStream(stream, { direction: 'backwards', fromRevision: 2n });
        expect(revisions(events)).toEqual([2n, 1n, 0n]);
      });

      it('reads at most maxCount events in either direction', async () => {
        expect(revisions(await store.readStream(stream, { maxCount: 2 }))).toEqual([0n, 1n]);
        expect(revisions(await store.readStream(stream, { direction: 'backwards', maxCount: 2 }))).toEqual([
          4n,
          3n,
        ]);
        expect(revisions(await store.readStream(stream, { fromRevision: 1n, maxCount: 2 }))).toEqual([
          1n,
          2n,
        ]);
      });

      it('reads nothing past the end', async () => {
        expect(await store.readStream(stream, { fromRevision: 5n })).toEqual([]);
      });

      it('reads a missing stream as no events', async () => {
        expect(await store.readStream(streamIn('chat'))).toEqual([]);
      });

      it('answers reads asked for at once each with its own stream, as read alone', async () => {
        const other = streamIn('chat');
        await store.append(other, [newEvent('MessageSent', { n: 'other' })], 'no_stream');
        const asked: [string, ReadStreamOptions?][] = [
          [stream],
          [other],
          [streamIn('chat')],
          [stream, { fromRevision: 3n }],
          [stream, { fromRevision: 5n }],
          [other],
          [stream, { maxCount: 1 }],
          [stream, { direction: 'backwards', maxCount: 2 }],
        ];
        const together = await Promise.all(asked.map(([name, options]) => store.readStream(name, options)));
        const alone: RecordedEvent[][] = [];
        for (const [name, options] of asked) alone.push(await store.readStream(name, options));
        expect(together).toEqual(alone);
        expect(together.map(revisions)).toEqual([
          [0n, 1n, 2n, 3n, 4n],
          [0n],
          [],
          [3n, 4n],
          [],
          [0n],
          [0n],
          [4n, 3n],
        ]);
        expect(together[1]![0]!.data).toEqual({ n: 'other' });
      });

      it('round-trips id, type, data, metadata, stream name, revision and recording time', async () => {
        const target = streamIn('chat');
        const data = {
          text: 'héllo ✓ 你好 "quoted" \\ back',
          count: 42,
          ratio: 1.5,
          negative: -7,
          maxSafe: Number.MAX_SAFE_INTEGER,
          yes: true,
          no: false,
          nothing: null,
          list: [1, 'two', { three: [3, [4]] }],
          nested: { deep: { deeper: { deepest: 'x' } } },
          empty: {},
          emptyList: [],
        };
        const metadata: EventMetadata = {
          occurredAt: '2024-05-06T07:08:09.123Z',
          actorId: 'user-1',
          requestId: null,
          correlationId: 'c-1',
          causationId: 'e-0',
          schemaVersion: 3,
          extra: { tags: ['a', 'b'] },
        };
        const event: NewEvent = { id: uuidv7(), type: 'MessageEdited', data, metadata };
        const before = Date.now();
        const result = await store.append(target, [event], 'no_stream');
        const after = Date.now();

        const [recorded] = await store.readStream(target);
        expect(recorded).toEqual({
          id: event.id,
          type: 'MessageEdited',
          data,
          metadata,
          streamName: target,
          revision: 0n,
          position: result.position,
          logPosition: result.logPosition,
          recordedAt: expect.any(Date),
        });
        // The database clock, not ours: allow for skew and commit time.
        expect(recorded!.recordedAt.getTime()).toBeGreaterThanOrEqual(before - 5_000);
        expect(recorded!.recordedAt.getTime()).toBeLessThanOrEqual(after + 5_000);
      });
    });

    describe('readAll', () => {
      /** Appends to fresh categories after the current head, so the reads see only these events. */
      async function seed() {
        const a = freshCategory();
        const b = freshCategory();
        const from = await endOfLog(store);
        const plan: [string, string][] = [
          [`${a}-1`, 'Opened'],
          [`${b}-1`, 'Opened'],
          [`${a}-1`, 'Renamed'],
          [`${a}-2`, 'Opened'],
          [`${b}-1`, 'Closed'],
          [`${a}-1`, 'Closed'],
        ];
        const events: RecordedEvent[] = [];
        for (const [stream, type] of plan) {
          await store.append(stream, [newEvent(type)], 'any');
          events.push(...(await store.readStream(stream, { direction: 'backwards', maxCount: 1 })));
        }
        await readable(store);
        return { a, b, from, events, ids: events.map((e) => e.id) };
      }

      it('reads an empty remainder of the log as no events, caught up', async () => {
        await store.append(streamIn('order'), [newEvent()], 'no_stream');
        const end = await endOfLog(store);
        const batch = await store.readAll({ from: end });
        expect(batch.events).toEqual([]);
        expect(batch.caughtUp).toBe(true);
        expect(compareLogPositions(batch.next, end)).toBeGreaterThanOrEqual(0);
      });

      it('reads everything after a position, exclusive, in append order, as readStream records it', async () => {
        const { from, events } = await seed();
        const batch = await store.readAll({ from });

        expect(batch.events).toEqual(events);
        expect(batch.caughtUp).toBe(true);
        expect(compareLogPositions(batch.next, events.at(-1)!.logPosition)).toBeGreaterThanOrEqual(0);

        const rest = await store.readAll({ from: events[1]!.logPosition });
        expect(rest.events.map((e) => e.id)).toEqual(events.slice(2).map((e) => e.id));
      });

      it('reads from START when no position is given, and START reaches the first events', async () => {
        const { ids } = await seed();
        const everything = await readEverything(store, START);
        expect(everything.map((e) => e.id)).toEqual(expect.arrayContaining(ids));
        const implicit = await store.readAll({ maxCount: 3 });
        const explicit = await store.readAll({ from: START, maxCount: 3 });
        expect(implicit.events.map((e) => e.id)).toEqual(explicit.events.map((e) => e.id));
        expect(explicit.events.map((e) => e.id)).toEqual(everything.slice(0, 3).map((e) => e.id));
      });

      it('keeps strictly increasing log positions across the whole log', async () => {
        await seed();
        const everything = await readEverything(store, START);
        for (let i = 1; i < everything.length; i++) {
          expect(compareLogPositions(everything[i - 1]!.logPosition, everything[i]!.logPosition)).toBe(-1);
        }
        expect(new Set(everything.map((e) => e.id)).size).toBe(everything.length);
      });

      it('reads at most maxCount events, not caught up, and continues from next', async () => {
        const { from, ids } = await seed();
        const first = await store.readAll({ from, maxCount: 2 });
        expect(first.events.map((e) => e.id)).toEqual(ids.slice(0, 2));
        expect(first.caughtUp).toBe(false);

        const second = await store.readAll({ from: first.next, maxCount: 2 });
        expect(second.events.map((e) => e.id)).toEqual(ids.slice(2, 4));
        expect(second.caughtUp).toBe(false);

        const pages = await readEverything(store, from, undefined, 2);
        expect(pages.map((e) => e.id)).toEqual(ids);
      });

      it('filters by event type', async () => {
        const { from, events } = await seed();
        const batch = await store.readAll({ from, filter: { eventTypes: ['Opened', 'Closed'] } });
        expect(batch.events.map((e) => e.id)).toEqual(
          events.filter((e) => e.type === 'Opened' || e.type === 'Closed').map((e) => e.id),
        );
      });

      it('filters by category, the stream name before the first dash', async () => {
        const { a, from, events } = await seed();
        const multiDash = `${a}-x-y`;
        await store.append(multiDash, [newEvent('Opened')], 'no_stream');
        await readable(store);
        const batch = await store.readAll({ from, filter: { categories: [a] } });
        expect(batch.events.map((e) => e.streamName)).toEqual([
          ...events.filter((e) => e.streamName.startsWith(`${a}-`)).map((e) => e.streamName),
          multiDash,
        ]);

        const byPrefix = await store.readAll({ from, filter: { categories: [`${a}-x`] } });
        expect(byPrefix.events).toEqual([]);
      });

      it('applies type and category filters together', async () => {
        const { a, from, events } = await seed();
        const batch = await store.readAll({ from, filter: { eventTypes: ['Opened'], categories: [a] } });
        const expected = events.filter((e) => e.type === 'Opened' && e.streamName.startsWith(`${a}-`));
        expect(expected).toHaveLength(2);
        expect(batch.events.map((e) => e.id)).toEqual(expected.map((e) => e.id));
      });

      it('treats empty filter lists as matching everything', async () => {
        const { from, ids } = await seed();
        const batch = await store.readAll({ from, filter: { eventTypes: [], categories: [] } });
        expect(batch.events.map((e) => e.id)).toEqual(ids);
      });

      it('moves a filtered reader’s next past the non-matching events when it reaches the end', async () => {
        const { b, from, events } = await seed();
        const lastB = events.filter((e) => e.streamName.startsWith(`${b}-`)).at(-1)!;
        const batch = await store.readAll({ from, filter: { categories: [b] } });

        expect(batch.events).toHaveLength(2);
        expect(batch.caughtUp).toBe(true);
        // The last event is in category a, after the last b event: next must be past it.
        expect(compareLogPositions(lastB.logPosition, events.at(-1)!.logPosition)).toBe(-1);
        expect(compareLogPositions(batch.next, events.at(-1)!.logPosition)).toBeGreaterThanOrEqual(0);

        // And a read from there sees only what comes later.
        const later = await store.append(`${b}-1`, [newEvent('Reopened')], 'any');
        await readable(store);
        const more = await store.readAll({ from: batch.next, filter: { categories: [b] } });
        expect(more.events.map((e) => e.position)).toEqual([later.position]);
      });

      it('moves next past a stretch where nothing matches', async () => {
        const { from, events } = await seed();
        const batch = await store.readAll({ from, filter: { eventTypes: ['NeverHappens'] } });
        expect(batch.events).toEqual([]);
        expect(batch.caughtUp).toBe(true);
        expect(compareLogPositions(batch.next, events.at(-1)!.logPosition)).toBeGreaterThanOrEqual(0);
      });

      it('keeps next at the last event returned when a filtered read stops at maxCount', async () => {
        const { a, from, events } = await seed();
        const inA = events.filter((e) => e.streamName.startsWith(`${a}-`));
        const batch = await store.readAll({ from, maxCount: 1, filter: { categories: [a] } });
        expect(batch.events.map((e) => e.id)).toEqual([inA[0]!.id]);
        expect(batch.caughtUp).toBe(false);
        const rest = await readEverything(store, batch.next, { categories: [a] });
        expect(rest.map((e) => e.id)).toEqual(inA.slice(1).map((e) => e.id));
      });
    });

    describe('count', () => {
      it('counts the events after a position, exclusive, no further than the limit', async () => {
        const cat = freshCategory();
        const from = await endOfLog(store);
        await store.append(`${cat}-1`, [newEvent('A'), newEvent('B'), newEvent('A')], 'no_stream');
        const last = await store.append(`${cat}-2`, [newEvent('A')], 'no_stream');

        expect(await store.count({ from, limit: 100 })).toBe(4);
        expect(await store.count({ from, limit: 3 })).toBe(3);
        expect(await store.count({ from: last.logPosition, limit: 100 })).toBe(0);
        const [second] = await store.readStream(`${cat}-1`, { fromRevision: 1n, maxCount: 1 });
        expect(await store.count({ from: second!.logPosition, limit: 100 })).toBe(2);
      });

      it('counts only the events the filter matches', async () => {
        const cat = freshCategory();
        const other = freshCategory();
        const from = await endOfLog(store);
        await store.append(`${cat}-1`, [newEvent('A'), newEvent('B'), newEvent('A')], 'no_stream');
        await store.append(`${other}-1`, [newEvent('A')], 'no_stream');

        expect(await store.count({ from, filter: { eventTypes: ['A'] }, limit: 100 })).toBe(3);
        expect(await store.count({ from, filter: { categories: [cat] }, limit: 100 })).toBe(3);
        expect(
          await store.count({ from, filter: { eventTypes: ['A'], categories: [cat] }, limit: 100 }),
        ).toBe(2);
        expect(await store.count({ from, filter: { categories: [freshCategory()] }, limit: 100 })).toBe(0);
      });

      it('counts from START when no position is given', async () => {
        await store.append(streamIn('order'), [newEvent()], 'no_stream');
        await readable(store);
        const total = (await readEverything(store, START)).length;
        expect(await store.count({ limit: total + 100 })).toBe(total);
      });
    });

    describe('locate and head', () => {
      it('locates every event’s log position by its public position', async () => {
        const stream = streamIn('task');
        const result = await store.append(stream, [newEvent(), newEvent(), newEvent()], 'no_stream');
        expect(await store.locate(result.position)).toEqual(result.logPosition);
        for (const event of await store.readStream(stream)) {
          expect(await store.locate(event.position)).toEqual(event.logPosition);
        }
      });

      it('locates nothing at a position no event has', async () => {
        const result = await store.append(streamIn('task'), [newEvent()], 'no_stream');
        expect(await store.locate(result.position + 1_000_000n)).toBeUndefined();
        expect(await store.locate(-1n)).toBeUndefined();
      });

      it('puts head at or past every appended event', async () => {
        const results: AppendResult[] = [];
        for (let i = 0; i < 3; i++)
          results.push(await store.append(streamIn('task'), [newEvent()], 'no_stream'));
        const head = await store.head();
        for (const r of results) expect(compareLogPositions(head, r.logPosition)).toBeGreaterThanOrEqual(0);
      });

      it('reads nothing after head once every append has committed', async () => {
        const result = await store.append(streamIn('task'), [newEvent()], 'no_stream');
        const head = await store.head();
        expect(compareLogPositions(head, result.logPosition)).toBeGreaterThanOrEqual(0);
        expect((await store.readAll({ from: head })).events).toEqual([]);
      });

      it('waits in head for an older open transaction, so a read up to head sees every returned append', async () => {
        if (!opened.holdTransaction) return; // only where a transaction can be held open beside appends
        const from = await endOfLog(store);
        let hasId = false;
        const held = opened.holdTransaction(300, () => (hasId = true));
        // The held transaction has its id: the append below commits above it.
        await eventually(() => hasId, 'the held transaction’s id');
        const result = await store.append(streamIn('task'), [newEvent()], 'no_stream');
        const head = await store.head();
        expect(compareLogPositions(head, result.logPosition)).toBeGreaterThanOrEqual(0);
        expect((await readEverything(store, from)).map((e) => e.position)).toContain(result.position);
        await held;
      });

      it('answers ping', async () => {
        await expect(store.ping()).resolves.toBeUndefined();
      });
    });

    describe('subscribe', () => {
      it('catches up from START, then receives live appends', async () => {
        const cat = freshCategory();
        const early = await store.append(`${cat}-1`, [newEvent(), newEvent()], 'no_stream');
        const collector = collect(store, { from: START });
        await collector.settledAt(early.logPosition);
        const caughtUpEvents = collector.events.length;
        expect(collector.ids()).toEqual((await readEverything(store, START)).map((e) => e.id));

        const live1 = await store.append(`${cat}-1`, [newEvent()], 1n);
        const live2 = await store.append(`${cat}-2`, [newEvent(), newEvent()], 'no_stream');
        await collector.settledAt(live2.logPosition);

        const liveEvents = collector.events.slice(caughtUpEvents);
        const expected = [
          ...(await store.readStream(`${cat}-1`, { fromRevision: 2n })),
          ...(await store.readStream(`${cat}-2`)),
        ];
        expect(expected.map((e) => e.position)).toEqual([live1.position, expect.any(BigInt), live2.position]);
        expect(liveEvents).toEqual(expected);
        collector.expectOrderedOnce();
        expect(collector.ids()).toEqual((await readEverything(store, START)).map((e) => e.id));
      });

      it('passes a checkpoint at or past the last event of each batch', async () => {
        const cat = freshCategory();
        const from = await endOfLog(store);
        let last: AppendResult | undefined;
        for (let i = 0; i < 5; i++)
          last = await store.append(`${cat}-${i}`, [newEvent(), newEvent()], 'no_stream');
        const collector = collect(store, { from, batchSize: 3 });
        await collector.settledAt(last!.logPosition);

        expect(collector.events).toHaveLength(10);
        expect(collector.batches.every((b) => b.events.length <= 3)).toBe(true);
        for (const batch of collector.batches) {
          const lastInBatch = batch.events.at(-1);
          if (lastInBatch)
            expect(compareLogPositions(batch.next, lastInBatch.logPosition)).toBeGreaterThanOrEqual(0);
        }
      });

      it('resumes from a checkpoint without seeing anything twice', async () => {
        const cat = freshCategory();
        const filter = { categories: [cat] };
        const first = await store.append(`${cat}-1`, [newEvent(), newEvent(), newEvent()], 'no_stream');
        const before = collect(store, { from: START, filter });
        await before.settledAt(first.logPosition);
        await before.subscription.stop();
        expect(before.events).toHaveLength(3);

        const second = await store.append(`${cat}-1`, [newEvent(), newEvent()], 2n);
        const after = collect(store, { from: before.checkpoint()!, filter });
        await after.settledAt(second.logPosition);

        expect(after.events.map((e) => e.revision)).toEqual([3n, 4n]);
        expect(before.events.length).toBe(3); // a stopped subscription is told nothing more
      });

      it('delivers only events the filter matches, and reports catching up past the rest', async () => {
        const cat = freshCategory();
        const other = freshCategory();
        const collector = collect(store, {
          from: await endOfLog(store),
          filter: { eventTypes: ['Wanted'], categories: [cat] },
        });
        await store.append(
          `${cat}-1`,
          [newEvent('Wanted'), newEvent('Unwanted'), newEvent('Wanted')],
          'no_stream',
        );
        await store.append(`${other}-1`, [newEvent('Wanted')], 'no_stream');
        const tail = await store.append(
          `${cat}-2`,
          [newEvent('Unwanted'), newEvent('Unwanted')],
          'no_stream',
        );
        await collector.settledAt(tail.logPosition);

        expect(collector.events.map((e) => [e.type, e.streamName, e.revision])).toEqual([
          ['Wanted', `${cat}-1`, 0n],
          ['Wanted', `${cat}-1`, 2n],
        ]);
      });

      it('waits for each batch’s handler before delivering the next', async () => {
        const cat = freshCategory();
        let inFlight = 0;
        let overlapped = false;
        const seen: string[] = [];
        const subscription = store.subscribe(
          {
            async onEvents(events) {
              inFlight++;
              if (inFlight > 1) overlapped = true;
              await sleep(15);
              seen.push(...events.map((e) => e.id));
              inFlight--;
            },
          },
          { from: await endOfLog(store), filter: { categories: [cat] }, batchSize: 2 },
        );
        subscriptions.push(subscription);
        const ids: string[] = [];
        for (let i = 0; i < 8; i++) {
          const events = [newEvent(), newEvent(), newEvent()];
          ids.push(...events.map((e) => e.id));
          await store.append(`${cat}-${i % 2}`, events, 'any');
        }
        await eventually(() => seen.length >= ids.length, `${ids.length} events`);
        expect(overlapped).toBe(false);
        expect(seen).toEqual(ids);
      });

      it('stops: stop() and done resolve, and nothing is delivered afterwards', async () => {
        const cat = freshCategory();
        const collector = collect(store, { from: await endOfLog(store), filter: { categories: [cat] } });
        const first = await store.append(`${cat}-1`, [newEvent()], 'no_stream');
        await collector.settledAt(first.logPosition);

        await withinMs(5_000, collector.subscription.stop(), 'stop()');
        await withinMs(1_000, collector.subscription.done, 'done');
        await store.append(`${cat}-1`, [newEvent()], 0n);
        await sleep(300);
        expect(collector.events).toHaveLength(1);
      });

      it('stops promptly while waiting for new events', async () => {
        const from = await endOfLog(store);
        const collector = collect(store, { from });
        // Waiting once it has said it is caught up, however long that took.
        await collector.settledAt(from);
        await withinMs(5_000, collector.subscription.stop(), 'stop() of an idle subscription');
      });
    });

    describe('under concurrent writers', () => {
      // A log of its own: these tests count every event from START.
      let fresh: OpenedStore;
      beforeAll(async () => {
        fresh = await open();
      });
      afterAll(async () => {
        await fresh?.close();
      });

      it('reads an empty log as no events, caught up, and tells a subscriber it is caught up', async () => {
        expect(await fresh.store.readAll()).toEqual({ events: [], next: expect.anything(), caughtUp: true });
        expect(compareLogPositions(await fresh.store.head(), START)).toBeGreaterThanOrEqual(0);
        const collector = collect(fresh.store, { from: START });
        await eventually(() => collector.caughtUps.length > 0, 'onCaughtUp');
        expect(collector.events).toEqual([]);
      });

      it('delivers every event of 8 writers × 1,000 to a subscriber from START exactly once, in log order', async () => {
        const writers = 8;
        const perWriter = 1_000;
        const collector = collect(fresh.store, { from: START, batchSize: 200 });
        const stalling = stallWhile(fresh, 3);
        const appended = await Promise.all(
          Array.from({ length: writers }, (_, w) => writeConcurrently(fresh.store, `w${w}`, perWriter)),
        ).finally(() => stalling.stop());

        await readable(fresh.store);
        const everything = await readEverything(fresh.store, START, undefined, 1_000);
        expect(everything).toHaveLength(writers * perWriter);
        expect(await fresh.store.count({ from: START, limit: 100_000 })).toBe(writers * perWriter);
        expect(new Set(everything.map((e) => e.id))).toEqual(new Set(appended.flat()));
        await collector.settledAt(everything.at(-1)!.logPosition, 60_000);
        await collector.subscription.stop();

        expect(collector.events).toHaveLength(writers * perWriter);
        collector.expectOrderedOnce();
        expect(collector.ids()).toEqual(everything.map((e) => e.id));

        // Every stream, shared ones included, holds gapless revisions and all 8,000 events between them.
        const streams = new Set(everything.map((e) => e.streamName));
        let total = 0;
        for (const stream of streams) {
          const events = await fresh.store.readStream(stream);
          expect(events.map((e) => e.revision)).toEqual(events.map((_, i) => BigInt(i)));
          total += events.length;
        }
        expect(total).toBe(writers * perWriter);
      }, 120_000);

      it('puts head at or past the newest event once the writers are done', async () => {
        // After the test above the log spans many transaction ids (on PGlite from three digits to four).
        await readable(fresh.store);
        const everything = await readEverything(fresh.store, START, undefined, 1_000);
        expect(everything.length).toBeGreaterThan(0);
        const head = await fresh.store.head();
        expect(compareLogPositions(head, everything.at(-1)!.logPosition)).toBeGreaterThanOrEqual(0);
        expect((await fresh.store.readAll({ from: head })).events).toEqual([]);
      });

      it('lets a subscriber stopped halfway resume from its checkpoint and see every event exactly once', async () => {
        await readable(fresh.store);
        const start =
          (await readEverything(fresh.store, START, undefined, 1_000)).at(-1)?.logPosition ?? START;
        const stalling = stallWhile(fresh, 2);
        const writing = Promise.all(
          Array.from({ length: 4 }, (_, w) => writeConcurrently(fresh.store, `r${w}`, 250)),
        ).finally(() => stalling.stop());
        writing.catch(() => undefined); // a failed writer is reported below, at `await writing`

        const first = collect(fresh.store, { from: start, batchSize: 50 });
        await eventually(() => first.events.length >= 500, 'the first half', 60_000);
        await first.subscription.stop();
        const deliveredBeforeStop = first.events.length;
        const second = collect(fresh.store, { from: first.checkpoint()!, batchSize: 50 });

        const appended = (await writing).flat();
        await readable(fresh.store);
        const everything = await readEverything(fresh.store, start, undefined, 1_000);
        expect(everything).toHaveLength(1_000);
        expect(new Set(everything.map((e) => e.id))).toEqual(new Set(appended));
        await second.settledAt(everything.at(-1)!.logPosition, 60_000);

        expect(first.events.length).toBe(deliveredBeforeStop);
        expect([...first.ids(), ...second.ids()]).toEqual(everything.map((e) => e.id));
      }, 120_000);
    });
  });
}

// ——— helpers ———

/** A NewEvent with a fresh UUIDv7 and the metadata every event carries. */
export function newEvent(type = 'Tested', data: unknown = { at: Date.now() }): NewEvent {
  return { id: uuidv7(), type, data, metadata: { occurredAt: new Date().toISOString(), schemaVersion: 1 } };
}

/** A category no other test uses (no dash: a category is the stream name before the first one). */
function freshCategory(): string {
  return `c${randomBytes(5).toString('hex')}`;
}

function streamIn(category: string): string {
  return `${category}-${uuidv7()}`;
}

async function expectWrongRevision(
  attempt: Promise<unknown>,
  streamName: string,
  expected: ExpectedRevision,
  actual: bigint | undefined,
): Promise<void> {
  const error = await attempt.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(WrongExpectedRevision);
  const wrong = error as WrongExpectedRevision;
  expect({ streamName: wrong.streamName, expected: wrong.expected, actual: wrong.actual }).toEqual({
    streamName,
    expected,
    actual,
  });
  expect(wrong.message).toContain(streamName);
}

/** Where a reader that has read the whole log stands (what a caught-up read answers as `next`). */
async function endOfLog(store: EventStore): Promise<LogPosition> {
  let at = await store.head();
  for (let page = 0; page < 10_000; page++) {
    const batch = await store.readAll({ from: at, maxCount: 1_000 });
    if (batch.caughtUp) return batch.next;
    at = batch.next;
  }
  throw new Error('readAll never caught up');
}

/**
 * Waits until every append that has returned is readable. A store may read only below its oldest
 * open writing transaction (PostgreSQL: on the whole server, so another suite's migration holds
 * it back); head() waits for that point to pass the newest event.
 */
async function readable(store: EventStore): Promise<void> {
  await store.head();
}

/** Pages through readAll until it is caught up. */
async function readEverything(
  store: EventStore,
  from: LogPosition,
  filter?: EventFilter,
  pageSize = 500,
): Promise<RecordedEvent[]> {
  const events: RecordedEvent[] = [];
  let at = from;
  for (let page = 0; page < 10_000; page++) {
    const batch = await store.readAll({ from: at, maxCount: pageSize, ...(filter ? { filter } : {}) });
    events.push(...batch.events);
    if (batch.caughtUp) return events;
    if (compareLogPositions(batch.next, at) <= 0) throw new Error('readAll did not move next forward');
    at = batch.next;
  }
  throw new Error('readAll never caught up');
}

/**
 * One writer: appends `count` events in appends of 1–20, mostly to its own streams at the exact
 * revision, sometimes to streams every writer shares with `any`. Answers the ids it wrote.
 */
async function writeConcurrently(store: EventStore, writer: string, count: number): Promise<string[]> {
  const revisions = new Map<string, bigint>();
  const ids: string[] = [];
  while (ids.length < count) {
    const events = Array.from({ length: Math.min(randomInt(1, 21), count - ids.length) }, () =>
      newEvent('Loaded', { writer }),
    );
    const shared = randomInt(10) < 3;
    const stream = shared ? `shared-${randomInt(4)}` : `${writer}-${randomInt(5)}`;
    const expected: ExpectedRevision = shared ? 'any' : (revisions.get(stream) ?? 'no_stream');
    const result = await store.append(stream, events, expected);
    if (!shared) revisions.set(stream, result.nextExpectedRevision);
    ids.push(...events.map((e) => e.id));
  }
  return ids;
}

/** Keeps `n` transactions cycling open for 0–20 ms each, so commits overtake older open transactions. */
function stallWhile(opened: OpenedStore, n: number): { stop(): Promise<void> } {
  const hold = opened.holdTransaction?.bind(opened);
  if (!hold) return { stop: async () => undefined };
  let running = true;
  const loops = Array.from({ length: n }, async () => {
    while (running) {
      await hold(randomInt(0, 21));
      await sleep(randomInt(0, 6));
    }
  });
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
    },
  };
}

/** Records what a subscription hands its handler. */
class Collector {
  readonly batches: { events: RecordedEvent[]; next: LogPosition }[] = [];
  readonly events: RecordedEvent[] = [];
  readonly caughtUps: LogPosition[] = [];
  readonly errors: unknown[] = [];
  subscription!: Subscription;

  readonly handler = {
    onEvents: async (events: RecordedEvent[], next: LogPosition) => {
      this.batches.push({ events, next });
      this.events.push(...events);
    },
    onCaughtUp: (at: LogPosition) => {
      this.caughtUps.push(at);
    },
    onError: (error: unknown) => {
      this.errors.push(error);
    },
  };

  ids(): string[] {
    return this.events.map((e) => e.id);
  }

  checkpoint(): LogPosition | undefined {
    return this.batches.at(-1)?.next;
  }

  /** Waits until the subscription reports being caught up at or past `at`. */
  async settledAt(at: LogPosition, timeoutMs = 10_000): Promise<void> {
    await eventually(
      () => {
        if (this.errors.length > 0) throw this.errors[0];
        return this.caughtUps.some((c) => compareLogPositions(c, at) >= 0);
      },
      `caught up at ${at.txid}/${at.position}`,
      timeoutMs,
    );
  }

  expectOrderedOnce(): void {
    expect(new Set(this.ids()).size).toBe(this.events.length);
    for (let i = 1; i < this.events.length; i++) {
      const order = compareLogPositions(this.events[i - 1]!.logPosition, this.events[i]!.logPosition);
      if (order !== -1) {
        throw new Error(`event ${i} is not after event ${i - 1} in log order`);
      }
    }
  }
}

async function eventually(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

async function withinMs(ms: number, promise: Promise<unknown>, what: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not resolve within ${ms} ms`)), ms);
  });
  try {
    await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
