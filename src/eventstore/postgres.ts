import { randomUUID } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import type { Db } from '../platform/db';
import { gathered } from '../platform/gathered';
import type { Logger } from '../platform/logger';
import type { Database } from '../platform/schema';
import { AppendBatcher, type PendingAppend } from './appendBatcher';
import {
  START,
  WrongExpectedRevision,
  assertStorable,
  compareLogPositions,
  streamCategory,
  type AppendResult,
  type EventFilter,
  type EventMetadata,
  type EventStore,
  type ExpectedRevision,
  type LogPosition,
  type NewEvent,
  type ReadAllBatch,
  type ReadAllOptions,
  type ReadStreamOptions,
  type RecordedEvent,
  type SubscribeOptions,
  type Subscription,
  type SubscriptionHandler,
} from './port';

const CHANNEL = 'eventstore_appended';
/** How long a subscriber waits for a signal before polling anyway (a lost NOTIFY costs at most this). */
const IDLE_POLL_MS = 1_000;
/** Committed events wait behind an older open transaction: look again this soon. */
const BLOCKED_POLL_MS = 5;
/**
 * How long a woken subscriber waits for more appends before it reads (the read models' added lag).
 * Under load every subscriber then reads a batch per interval instead of running a query per
 * append. Longer than a command's few milliseconds, the read models' writes also come after the
 * commands that woke them rather than among their statements. A reader in this process waiting
 * for a read model (read-your-writes) cuts the wait short (`hurry`); while such readers keep
 * coming, the read models read as soon as they are woken, in smaller batches.
 */
const GATHER_MS = 40;
/** How long head() waits for transactions still open below the newest event. */
const HEAD_WAIT_MS = 30_000;
/**
 * The most events of the log's newest stretch kept for live subscribers that fell behind the
 * others (`fromRecent`): a few seconds of a busy log, a few megabytes.
 */
const RECENT_EVENTS = 4_096;
const NOTIFY_INTERVAL_MS = 5;

export interface PostgresEventStoreOptions {
  logger?: Logger;
  /** Append statements in flight at once; appends arriving meanwhile share the next one. */
  maxAppendsInFlight?: number;
  /** Called after every append with its duration in seconds (metrics). */
  onAppend?: (seconds: number, events: number) => void;
  /** How long an idle subscriber waits for a signal before polling anyway; 1 s unless set. */
  idlePollMs?: number;
  /** How long a woken subscriber waits for more appends before it reads; 40 ms unless set. */
  gatherMs?: number;
}

const MAX_BIGINT = 2n ** 63n - 1n;
/** A stream read's count when none is asked for: all of it. */
const WHOLE_STREAM = 2 ** 31 - 1;

/**
 * Appends, one statement each: the `streams` row change carries the expected-revision check (its
 * row lock serialises writers of one stream) and feeds the new revisions to the insert. $1 stream,
 * $2 event count, $3 category, $4 events as a JSON array, $5 expected revision.
 */
const APPEND_SQL: Record<'no_stream' | 'any' | 'stream_exists' | 'exact', string> = (() => {
  const insert = `
    insert into events (event_id, stream_name, revision, category, type, data, metadata)
    select (v.e->>'id')::uuid, $1, s.revision - $2 + v.ord, $3, v.e->>'type', v.e->'data', v.e->'metadata'
    from s, json_array_elements($4::json) with ordinality as v(e, ord)
    order by v.ord
    returning position, txid::text as txid, revision`;
  return {
    no_stream: `with s as (insert into streams (stream_name, revision) values ($1, $2::int - 1)
                on conflict (stream_name) do nothing returning revision) ${insert}`,
    any: `with s as (insert into streams (stream_name, revision) values ($1, $2::int - 1)
          on conflict (stream_name) do update set revision = streams.revision + $2 returning revision) ${insert}`,
    stream_exists: `with s as (update streams set revision = revision + $2 where stream_name = $1
                    returning revision) ${insert}`,
    exact: `with s as (update streams set revision = revision + $2 where stream_name = $1 and revision = $5::bigint
            returning revision) ${insert}`,
  };
})();

// Times come as epoch milliseconds: parsing timestamptz text costs more than the rest of a row.
/**
 * Appends to distinct streams in one statement (group commit): each stream's row change by its
 * expected-revision mode, then every written stream's events. $1 is a JSON array of
 * {i, stream, category, mode, expected, n, events}. A stream whose expectation fails is simply
 * not written; its append is then retried on its own.
 */
const APPEND_BATCH_SQL = `
  with input as (
    select x.i, x.stream, x.category, x.mode, x.expected, x.n, x.events
    from json_to_recordset($1::json) as x(i int, stream text, category text, mode text, expected bigint, n int, events json)
  ),
  created as (
    insert into streams (stream_name, revision)
    select stream, n - 1 from input where mode = 'no_stream'
    on conflict (stream_name) do nothing
    returning stream_name, revision
  ),
  upserted as (
    insert into streams (stream_name, revision)
    select stream, n - 1 from input where mode = 'any'
    on conflict (stream_name) do update set revision = streams.revision + excluded.revision + 1
    returning stream_name, revision
  ),
  updated as (
    update streams s set revision = s.revision + input.n
    from input
    where s.stream_name = input.stream
      and (input.mode = 'stream_exists' or (input.mode = 'exact' and s.revision = input.expected))
    returning s.stream_name, s.revision
  ),
  bumped as (
    select stream_name, revision from created
    union all select stream_name, revision from upserted
    union all select stream_name, revision from updated
  )
  insert into events (event_id, stream_name, revision, category, type, data, metadata)
  select (v.e->>'id')::uuid, input.stream, b.revision - input.n + v.ord, input.category,
         v.e->>'type', v.e->'data', v.e->'metadata'
  from input
  join bumped b on b.stream_name = input.stream
  cross join lateral json_array_elements(input.events) with ordinality as v(e, ord)
  order by input.i, v.ord
  returning stream_name, position, txid::text as txid, revision`;

const EVENT_COLUMNS =
  "position, txid::text as txid, event_id, stream_name, revision, type, data, metadata, date_part('epoch', recorded_at) * 1000 as recorded_ms";
const READ_STREAM_FORWARDS_SQL = `select ${EVENT_COLUMNS} from events
  where stream_name = $1 and revision >= $2::bigint order by revision asc limit $3`;
/**
 * Several streams, each from a revision on, in one statement (one snapshot): the events of the
 * `i`th read (numbered from 1, in the order asked), each read's in revision order.
 */
const READ_STREAMS_SQL = `select e.*, r.i from unnest($1::text[], $2::bigint[]) with ordinality as r(name, from_revision, i)
  cross join lateral (
    select ${EVENT_COLUMNS} from events
    where stream_name = r.name and revision >= r.from_revision order by revision asc
  ) e
  order by r.i, e.revision`;
/** The most stream reads one statement takes; more wait for the next. */
const MAX_READS_TOGETHER = 100;
const READ_STREAM_BACKWARDS_SQL = `select ${EVENT_COLUMNS} from events
  where stream_name = $1 and revision <= $2::bigint order by revision desc limit $3`;
/**
 * A header row, then a batch after ($1, $2) below the oldest running transaction (in log order, as
 * the function's ordered scan returns it; sorting 10,000 wide rows again here cost a third of the
 * read). The header holds the newest event below that point (where a filtered reader may move
 * on to) and whether committed events already wait above it.
 */
const READ_ALL_SQL = `
  with h as materialized (select pg_snapshot_xmin(pg_current_snapshot()) as xmin)
  select null::bigint as position, null as txid, null::uuid as event_id, null as stream_name,
         null::bigint as revision, null as type, null::json as data, null::json as metadata,
         null::float8 as recorded_ms, t.txid::text as tail_txid, t.position as tail_position,
         coalesce((select max(txid) from events) >= h.xmin, false) as blocked
  from h left join lateral (
    select e.txid, e.position from events e where e.txid < h.xmin
    order by e.txid desc, e.position desc limit 1
  ) t on true
  union all
  select b.position, b.txid::text, b.event_id, b.stream_name, b.revision, b.type, b.data, b.metadata,
         date_part('epoch', b.recorded_at) * 1000, null, null, null
  from h, eventstore_read_all($1::xid8, $2::bigint, h.xmin, $3::int, $4::text[], $5::text[]) b`;

/** An event row as an array, in EVENT_COLUMNS order (array rows decode a quarter faster than objects). */
type EventRow = [
  position: string,
  txid: string,
  eventId: string,
  streamName: string,
  revision: string,
  type: string,
  data: unknown,
  metadata: unknown,
  recordedMs: number,
];

function toRecorded(row: EventRow): RecordedEvent {
  const position = BigInt(row[0]);
  return {
    id: row[2],
    type: row[5],
    data: row[6],
    metadata: row[7] as EventMetadata,
    streamName: row[3],
    revision: BigInt(row[4]),
    position,
    logPosition: { txid: BigInt(row[1]), position },
    recordedAt: new Date(row[8]),
  };
}

/**
 * The event store on PostgreSQL (server or PGlite). An append is one statement: the `streams` row
 * is inserted or updated under the expected-revision condition (its row lock serialises writers of
 * one stream) and the events are inserted from the same statement, so there is one round trip and
 * no explicit transaction. Readers order by (txid, position) and read only below
 * `pg_snapshot_xmin(pg_current_snapshot())`: a sequence value is taken before commit, so a smaller
 * position can commit after a larger one, but no transaction older than the oldest running one can
 * still commit.
 */
export function createPostgresEventStore(handle: Db, options: PostgresEventStoreOptions = {}): EventStore {
  const { db } = handle;
  const signal = new Signal();
  // Bumped by `hurry`: it ends the subscribers' gathering, or skips the next one of a subscriber
  // busy when it came (its read may not have held what the waiter wants).
  const hurries = new Signal();
  // Names this store in its notifications: its own appends wake its subscribers directly, so the
  // echo of its own NOTIFY would only wake them again for nothing.
  const origin = randomUUID();
  const idlePollMs = options.idlePollMs ?? IDLE_POLL_MS;
  const gatherMs = options.gatherMs ?? GATHER_MS;
  const notifier = new DebouncedNotify(db, origin, options.logger);
  let unlisten: Promise<() => Promise<void>> | undefined;
  const ensureListening = () => {
    unlisten ??= handle
      .listen(CHANNEL, (from) => {
        if (from !== origin) signal.bump();
      })
      .catch((err: unknown) => {
        options.logger?.warn({ err }, 'cannot LISTEN for appends; subscribers poll');
        return async () => undefined;
      });
    return unlisten;
  };

  /** One append on its own statement, with the conflict and idempotency handling. */
  async function appendOne({ streamName, events, expected }: PendingAppend): Promise<AppendResult> {
    const n = events.length;
    const mode = typeof expected === 'bigint' ? 'exact' : expected;
    const values: unknown[] = [streamName, n, streamCategory(streamName), eventsJson(events)];
    if (typeof expected === 'bigint') values.push(String(expected));
    let rows: { position: string; txid: string; revision: string }[];
    try {
      rows = await handle.query(APPEND_SQL[mode], values, `eventstore_append_${mode}`);
    } catch (err) {
      if (isUniqueViolation(err, 'events_event_id_key')) {
        return (await priorAppend(db, streamName, events, expected)) ?? conflict(db, streamName, expected);
      }
      throw err;
    }
    if (rows.length === 0) {
      return (await priorAppend(db, streamName, events, expected)) ?? conflict(db, streamName, expected);
    }
    return resultOf(rows);
  }

  /**
   * Appends to distinct streams in one statement; those whose expectation failed are left out. The
   * streams go in by name, so that two instances' statements lock the rows they share in the same
   * order: in the order queued, each could hold a row the other waits for, until the database
   * broke the deadlock a second later by failing one.
   */
  async function appendBatch(appends: readonly PendingAppend[]): Promise<Map<PendingAppend, AppendResult>> {
    const byName = appends.toSorted((x, y) => (x.streamName < y.streamName ? -1 : 1));
    const input = byName.map((a, i) => ({
      i,
      stream: a.streamName,
      category: streamCategory(a.streamName),
      mode: typeof a.expected === 'bigint' ? 'exact' : a.expected,
      expected: typeof a.expected === 'bigint' ? String(a.expected) : null,
      n: a.events.length,
      events: eventsPayload(a.events),
    }));
    const rows = await handle.query<{
      stream_name: string;
      position: string;
      txid: string;
      revision: string;
    }>(APPEND_BATCH_SQL, [JSON.stringify(input)], 'eventstore_append_batch');
    const byStream = new Map<string, typeof rows>();
    for (const row of rows) {
      const list = byStream.get(row.stream_name);
      if (list) list.push(row);
      else byStream.set(row.stream_name, [row]);
    }
    const written = new Map<PendingAppend, AppendResult>();
    for (const a of appends) {
      const streamRows = byStream.get(a.streamName);
      if (streamRows) written.set(a, resultOf(streamRows));
    }
    return written;
  }

  const batcher = new AppendBatcher(
    { single: appendOne, batch: appendBatch },
    { maxInFlight: options.maxAppendsInFlight ?? 4, maxBatch: 64 },
  );

  async function append(
    streamName: string,
    events: readonly NewEvent[],
    expected: ExpectedRevision,
  ): Promise<AppendResult> {
    const started = process.hrtime.bigint();
    if (events.length === 0) return appendNothing(db, streamName, expected);
    assertStorable(events);
    const result = await batcher.submit({ streamName, events, expected });
    signal.bump();
    notifier.schedule();
    options.onAppend?.(Number(process.hrtime.bigint() - started) / 1e9, events.length);
    return result;
  }

  /**
   * A whole stream from a revision on (a command reading what was appended since its cached
   * state): the reads gathered share one statement; a lone read goes alone, as before.
   */
  const streamReads = gathered<{ streamName: string; from: bigint }, RecordedEvent[]>(async (reads) => {
    if (reads.length === 1) {
      const [{ streamName, from }] = reads as [{ streamName: string; from: bigint }];
      return [await readOneStream(streamName, from, WHOLE_STREAM)];
    }
    let rows: [...EventRow, i: string][];
    try {
      rows = await handle.query(
        READ_STREAMS_SQL,
        [reads.map((r) => r.streamName), reads.map((r) => String(r.from))],
        'eventstore_read_streams',
        { arrays: true },
      );
    } catch {
      // The statement failed as a whole (a name PostgreSQL cannot take as text, the connection
      // lost): each read goes again on its own, so one read's failure is never another's.
      return Promise.all(
        reads.map((r) =>
          readOneStream(r.streamName, r.from, WHOLE_STREAM).catch((err: unknown) =>
            err instanceof Error ? err : new Error(String(err)),
          ),
        ),
      );
    }
    const events = reads.map((): RecordedEvent[] => []);
    for (const row of rows) events[Number(row[9]) - 1]!.push(toRecorded(row as unknown as EventRow));
    return events;
  }, MAX_READS_TOGETHER);

  /** One stream read in a statement of its own. */
  async function readOneStream(
    streamName: string,
    from: bigint,
    limit: number,
    backwards = false,
  ): Promise<RecordedEvent[]> {
    const rows = await handle.query<EventRow>(
      backwards ? READ_STREAM_BACKWARDS_SQL : READ_STREAM_FORWARDS_SQL,
      [streamName, String(from), limit],
      backwards ? 'eventstore_read_stream_backwards' : 'eventstore_read_stream',
      { arrays: true },
    );
    return rows.map(toRecorded);
  }

  async function readStream(streamName: string, opts: ReadStreamOptions = {}): Promise<RecordedEvent[]> {
    const backwards = opts.direction === 'backwards';
    const limit = opts.maxCount ?? WHOLE_STREAM;
    if (limit <= 0) return [];
    const from = opts.fromRevision ?? (backwards ? MAX_BIGINT : 0n);
    if (!backwards && opts.maxCount === undefined) return streamReads.load({ streamName, from });
    return readOneStream(streamName, from, limit, backwards);
  }

  async function readAll(opts: ReadAllOptions = {}): Promise<ReadAllBatch> {
    const { batch } = await readAllWithPending(opts);
    return batch;
  }

  async function readAllWithPending(
    opts: ReadAllOptions,
  ): Promise<{ batch: ReadAllBatch; blocked: boolean }> {
    const from = opts.from ?? START;
    const limit = Math.max(1, opts.maxCount ?? 1000);
    const types = opts.filter?.eventTypes?.length ? [...opts.filter.eventTypes] : null;
    const categories = opts.filter?.categories?.length ? [...opts.filter.categories] : null;
    // One statement, one snapshot: the batch, the newest safe point (to move a filtered reader on)
    // and whether committed events already wait behind an open transaction.
    type Row = [
      ...Partial<EventRow>,
      tailTxid: string | null,
      tailPosition: string | null,
      blocked: boolean | null,
    ];
    const rows = await handle.query<Row>(
      READ_ALL_SQL,
      [String(from.txid), String(from.position), limit, types, categories],
      'eventstore_read_all',
      { arrays: true },
    );
    // One header row (position null) carries the tail and the blocked flag; the rest are events.
    const header = rows.find((r) => r[0] == null);
    const events = rows.filter((r) => r[0] != null).map((r) => toRecorded(r as unknown as EventRow));
    if (!inLogOrder(events)) events.sort((a, b) => compareLogPositions(a.logPosition, b.logPosition));
    const caughtUp = events.length < limit;
    let next = events.length > 0 ? events[events.length - 1]!.logPosition : from;
    const tailTxid = header?.[9];
    const tailPosition = header?.[10];
    if (caughtUp && tailTxid != null && tailPosition != null) {
      const tail = { txid: BigInt(tailTxid), position: BigInt(tailPosition) };
      if (compareLogPositions(tail, next) > 0) next = tail;
    }
    return { batch: { events, next, caughtUp }, blocked: Boolean(header?.[11]) };
  }

  /**
   * Live subscribers wake together on an append and, having all been caught up at the tail, read
   * from the same point: one unfiltered read serves them all, each keeping what its filter
   * matches, instead of a query per subscriber per wake. A read is joined only if it started
   * at or after the caller's generation of appends, so it cannot miss an append the caller woke for.
   */
  const liveReads = new Map<string, { generation: number; read: Promise<PendingRead> }>();
  type PendingRead = Awaited<ReturnType<typeof readAllWithPending>> & {
    /**
     * Not caught up, but taken from the stretch kept or read at its newest point: the subscriber
     * reads on as a live one rather than catch up with its filter.
     */
    readOn?: boolean;
  };

  function readLive(
    from: LogPosition,
    maxCount: number,
    seen: number,
    filter?: EventFilter,
  ): Promise<PendingRead> {
    const kept = fromRecent(from, maxCount, seen, filter);
    if (kept) return Promise.resolve(kept);
    // At the newest point kept, a subscriber stays live when its batch is not the last: what it
    // reads next is the newest too. Elsewhere it catches up with its filter.
    const atNewest = recent !== undefined && compareLogPositions(from, recent.to) === 0;
    const key = `${from.txid}:${from.position}:${maxCount}`;
    const entry = liveReads.get(key);
    if (!entry) return filtered(startRead(key, from, maxCount), filter, atNewest);
    if (entry.generation >= seen) return filtered(entry.read, filter, atNewest);
    // A read from here is under way, begun before what woke the caller: the caller takes its
    // events from the stretch kept once they are in, and reads on from where they end, rather
    // than read them all again beside it.
    return entry.read.then(() => {
      const found = fromRecent(from, maxCount, seen, filter);
      if (found) return found;
      // It found nothing new: one read from here again, shared by every caller that waited.
      const again = liveReads.get(key);
      if (again && again !== entry && again.generation >= seen) return filtered(again.read, filter, atNewest);
      return filtered(startRead(key, from, maxCount), filter, atNewest);
    });
  }

  function startRead(key: string, from: LogPosition, maxCount: number): Promise<PendingRead> {
    const generation = signal.generation;
    const read = readAllWithPending({ from, maxCount }).then((r) => {
      keep(from, generation, r);
      return r;
    });
    const made = { generation, read };
    liveReads.set(key, made);
    // Kept while in flight and one turn after, for the subscribers woken with this one.
    const forget = () => setImmediate(() => liveReads.get(key) === made && liveReads.delete(key));
    read.then(forget, forget);
    return read;
  }

  const filtered = (
    read: Promise<PendingRead>,
    filter: EventFilter | undefined,
    atNewest: boolean,
  ): Promise<PendingRead> =>
    read.then(({ batch, blocked }) => ({
      batch: {
        events: batch.events.filter((e) => matches(filter, e)),
        next: batch.next,
        caughtUp: batch.caughtUp,
      },
      blocked,
      readOn: atNewest && !batch.caughtUp,
    }));

  /**
   * The log's newest stretch as the live reads found it: every event of (from, to], in log order
   * (a read goes below the oldest running transaction, so what it finds there is complete for
   * good). Under load the subscribers drift apart, a slow batch putting one behind the others, and
   * each then read again events the others had read; one behind now takes them from here, and
   * only reads at the newest point go to the database. Of the read that reached `to`: when it
   * started (`generation`, for a subscriber woken later, who may read from here only up to `to`),
   * whether it was caught up, and whether committed events waited behind an open transaction.
   */
  let recent:
    | {
        from: LogPosition;
        to: LogPosition;
        events: RecordedEvent[];
        generation: number;
        caughtUp: boolean;
        blocked: boolean;
      }
    | undefined;

  /** Adds a live read to the stretch kept: joined to it when it starts within it, else started over. */
  function keep(from: LogPosition, generation: number, { batch, blocked }: PendingRead): void {
    const { events, next, caughtUp } = batch;
    if (recent && compareLogPositions(next, recent.to) <= 0) return; // nothing newer than what is kept
    if (!recent || compareLogPositions(from, recent.from) < 0 || compareLogPositions(from, recent.to) > 0) {
      recent = { from, to: next, events: [...events], generation, caughtUp, blocked };
    } else {
      const newest = recent.to;
      for (const e of events) if (compareLogPositions(e.logPosition, newest) > 0) recent.events.push(e);
      Object.assign(recent, { to: next, generation, caughtUp, blocked });
    }
    if (recent.events.length > 2 * RECENT_EVENTS) {
      const dropped = recent.events.splice(0, recent.events.length - RECENT_EVENTS);
      recent.from = dropped.at(-1)!.logPosition;
    }
  }

  /**
   * A live subscriber's next batch from the stretch kept, when it is within it (behind its newest
   * point). Up to that point only: it counts as caught up there only if the read that reached it
   * started after what woke the subscriber, else it reads on from there.
   */
  function fromRecent(
    from: LogPosition,
    maxCount: number,
    seen: number,
    filter?: EventFilter,
  ): PendingRead | undefined {
    if (!recent || compareLogPositions(from, recent.from) < 0 || compareLogPositions(from, recent.to) >= 0) {
      return undefined;
    }
    const { events } = recent;
    let first = 0;
    for (let end = events.length; first < end;) {
      const mid = (first + end) >>> 1;
      if (compareLogPositions(events[mid]!.logPosition, from) <= 0) first = mid + 1;
      else end = mid;
    }
    const last = Math.min(events.length, first + maxCount);
    const taken = events.slice(first, last);
    const whole = last === events.length;
    const caughtUp = whole && recent.caughtUp && recent.generation >= seen;
    return {
      batch: {
        events: filter ? taken.filter((e) => matches(filter, e)) : taken,
        next: whole ? recent.to : taken.at(-1)!.logPosition,
        caughtUp,
      },
      blocked: caughtUp && recent.blocked,
      readOn: !caughtUp,
    };
  }

  function subscribe(handler: SubscriptionHandler, opts: SubscribeOptions = {}): Subscription {
    let stopped = false;
    let wake: (() => void) | undefined;
    const batchSize = opts.batchSize ?? 500;
    const readOpts = { maxCount: batchSize, ...(opts.filter ? { filter: opts.filter } : {}) };
    const done = (async () => {
      await ensureListening();
      let position = opts.from ?? START;
      // Catching up, a subscriber reads with its filter (an index finds its events in a long log);
      // once caught up, it reads with the others.
      let live = false;
      while (!stopped) {
        const seen = signal.generation;
        const hurried = hurries.generation;
        const read: PendingRead = live
          ? await readLive(position, batchSize, seen, opts.filter)
          : await readAllWithPending({ ...readOpts, from: position });
        const { batch, blocked } = read;
        live = batch.caughtUp || read.readOn === true;
        if (stopped) break;
        if (batch.events.length > 0 || compareLogPositions(batch.next, position) > 0) {
          await handler.onEvents(batch.events, batch.next);
          position = batch.next;
        }
        if (!batch.caughtUp) continue;
        await handler.onCaughtUp?.(position);
        if (stopped) break;
        await signal.waitBeyond(seen, blocked ? BLOCKED_POLL_MS : idlePollMs, (w) => (wake = w));
        // Let the appends of the next few milliseconds join this read.
        if (!stopped && !blocked) await hurries.waitBeyond(hurried, gatherMs, (w) => (wake = w));
      }
    })().catch((err: unknown) => {
      handler.onError?.(err);
      if (!handler.onError) options.logger?.error({ err }, 'subscription stopped');
    });
    return {
      done,
      async stop() {
        stopped = true;
        wake?.();
        await done;
      },
    };
  }

  async function count(opts: { from?: LogPosition; filter?: EventFilter; limit: number }): Promise<number> {
    const from = opts.from ?? START;
    const res = await sql<{ n: string }>`
      select count(*) as n from (
        select 1 from events e
        where (e.txid, e.position) > (${String(from.txid)}::xid8, ${String(from.position)}::bigint)
          ${filterSql(opts.filter)}
        limit ${opts.limit}
      ) x`.execute(db);
    return Number(res.rows[0]?.n ?? 0);
  }

  async function locate(position: bigint): Promise<LogPosition | undefined> {
    const [row] = await handle.query<{ txid: string }>(
      'select txid::text as txid from events where position = $1',
      [String(position)],
      'eventstore_locate',
    );
    return row ? { txid: BigInt(row.txid), position } : undefined;
  }

  /**
   * The newest committed event, once every transaction that could still commit below it has
   * ended, so a reader that reaches head has seen every append that returned before the call.
   * A writing transaction anywhere on the server (another database's migration, a bulk load)
   * holds that point back; head waits for it up to HEAD_WAIT_MS, then answers the newest point
   * that is already complete rather than hang behind a transaction left open.
   */
  async function head(): Promise<LogPosition> {
    const newest = await sql<{ txid: string; position: string; xmin: string }>`
      select txid::text as txid, position, pg_snapshot_xmin(pg_current_snapshot())::text as xmin
      from events order by events.txid desc, events.position desc limit 1`.execute(db);
    const row = newest.rows[0];
    if (!row) return START;
    const at = { txid: BigInt(row.txid), position: BigInt(row.position) };
    const deadline = Date.now() + HEAD_WAIT_MS;
    let xmin = BigInt(row.xmin);
    let pollMs = BLOCKED_POLL_MS;
    while (xmin <= at.txid) {
      if (Date.now() >= deadline) {
        options.logger?.warn(
          { oldestRunningTxid: String(xmin), newestTxid: String(at.txid), waitedMs: HEAD_WAIT_MS },
          'a transaction open on the server holds the end of the log back: head() answers the complete part',
        );
        return completeHead();
      }
      await new Promise<void>((resolve) => setTimeout(resolve, pollMs));
      pollMs = Math.min(pollMs * 2, 200);
      const res = await sql<{ xmin: string }>`
        select pg_snapshot_xmin(pg_current_snapshot())::text as xmin`.execute(db);
      xmin = BigInt(res.rows[0]!.xmin);
    }
    return at;
  }

  /** The newest event below the oldest running transaction: everything up to it is final. */
  async function completeHead(): Promise<LogPosition> {
    const res = await sql<{ txid: string; position: string }>`
      select txid::text as txid, position from events
      where txid < pg_snapshot_xmin(pg_current_snapshot())
      order by events.txid desc, events.position desc limit 1`.execute(db);
    const row = res.rows[0];
    return row ? { txid: BigInt(row.txid), position: BigInt(row.position) } : START;
  }

  return {
    name: handle.kind === 'pglite' ? 'postgres (embedded)' : 'postgres',
    append,
    readStream,
    readAll,
    subscribe,
    count,
    locate,
    head,
    async ping() {
      await sql`select 1`.execute(db);
    },
    hurry() {
      hurries.bump();
    },
    async close() {
      // Appends already submitted are answered first (one sent and not awaited included).
      await batcher.settled();
      notifier.stop();
      const un = await unlisten;
      await un?.();
    },
  };
}

/**
 * A retried append: if these exact event ids already stand in this stream, contiguous, where the
 * expected revision put them, answer as the first append did.
 */
async function priorAppend(
  db: Kysely<Database>,
  streamName: string,
  events: readonly NewEvent[],
  expected: ExpectedRevision,
): Promise<AppendResult | undefined> {
  const ids = events.map((e) => e.id);
  const res = await sql<{
    event_id: string;
    stream_name: string;
    revision: string;
    position: string;
    txid: string;
  }>`
    select event_id, stream_name, revision, position, txid::text as txid from events
    where event_id = any(${ids}::uuid[]) order by revision`.execute(db);
  const rows = res.rows;
  if (rows.length !== events.length) return undefined;
  const firstRevision = BigInt(rows[0]!.revision);
  const inPlace = rows.every(
    (r, i) =>
      r.stream_name === streamName &&
      r.event_id === ids[i] &&
      BigInt(r.revision) === firstRevision + BigInt(i),
  );
  if (!inPlace) return undefined;
  if (expected === 'no_stream' && firstRevision !== 0n) return undefined;
  if (typeof expected === 'bigint' && firstRevision !== expected + 1n) return undefined;
  const last = rows[rows.length - 1]!;
  const position = BigInt(last.position);
  return {
    nextExpectedRevision: BigInt(last.revision),
    position,
    logPosition: { txid: BigInt(last.txid), position },
  };
}

async function currentRevision(db: Kysely<Database>, streamName: string): Promise<bigint | undefined> {
  const row = await db
    .selectFrom('streams')
    .select('revision')
    .where('stream_name', '=', streamName)
    .executeTakeFirst();
  return row ? BigInt(row.revision) : undefined;
}

async function conflict(
  db: Kysely<Database>,
  streamName: string,
  expected: ExpectedRevision,
): Promise<never> {
  throw new WrongExpectedRevision(streamName, expected, await currentRevision(db, streamName));
}

/** An empty append only checks the expectation. */
async function appendNothing(
  db: Kysely<Database>,
  streamName: string,
  expected: ExpectedRevision,
): Promise<AppendResult> {
  const actual = await currentRevision(db, streamName);
  const ok =
    expected === 'any' ||
    (expected === 'no_stream' && actual === undefined) ||
    (expected === 'stream_exists' && actual !== undefined) ||
    (typeof expected === 'bigint' && actual === expected);
  if (!ok) throw new WrongExpectedRevision(streamName, expected, actual);
  const last =
    actual === undefined
      ? undefined
      : await sql<{ position: string; txid: string }>`
          select position, txid::text as txid from events
          where stream_name = ${streamName} and revision = ${String(actual)}`
          .execute(db)
          .then((r) => r.rows[0]);
  const position = last ? BigInt(last.position) : 0n;
  return {
    nextExpectedRevision: actual ?? -1n,
    position,
    logPosition: last ? { txid: BigInt(last.txid), position } : START,
  };
}

function filterSql(filter: EventFilter | undefined) {
  const parts = [];
  if (filter?.eventTypes && filter.eventTypes.length > 0) {
    parts.push(sql`and e.type = any(${[...filter.eventTypes]}::text[])`);
  }
  if (filter?.categories && filter.categories.length > 0) {
    parts.push(sql`and e.category = any(${[...filter.categories]}::text[])`);
  }
  return parts.length === 0 ? sql`` : sql.join(parts, sql` `);
}

function eventsPayload(events: readonly NewEvent[]) {
  return events.map((e) => ({ id: e.id, type: e.type, data: e.data ?? null, metadata: e.metadata }));
}

function eventsJson(events: readonly NewEvent[]): string {
  return JSON.stringify(eventsPayload(events));
}

/** The append's result from its inserted rows: the last event's revision and position. */
function resultOf(rows: readonly { position: string; txid: string; revision: string }[]): AppendResult {
  const last = rows.reduce((a, b) => (BigInt(a.revision) > BigInt(b.revision) ? a : b));
  const position = BigInt(last.position);
  return {
    nextExpectedRevision: BigInt(last.revision),
    position,
    logPosition: { txid: BigInt(last.txid), position },
  };
}

/** Whether an event passes a filter as the store's filtered reads apply it. */
function matches(filter: EventFilter | undefined, event: RecordedEvent): boolean {
  if (filter?.eventTypes?.length && !filter.eventTypes.includes(event.type)) return false;
  if (filter?.categories?.length && !filter.categories.includes(streamCategory(event.streamName)))
    return false;
  return true;
}

function inLogOrder(events: readonly RecordedEvent[]): boolean {
  for (let i = 1; i < events.length; i++) {
    if (compareLogPositions(events[i - 1]!.logPosition, events[i]!.logPosition) >= 0) return false;
  }
  return true;
}

function isUniqueViolation(err: unknown, constraint: string): boolean {
  const e = err as { code?: string; constraint?: string } | undefined;
  return e?.code === '23505' && e.constraint === constraint;
}

/**
 * An in-process wake-up with a generation counter: a bump between a reader's look at `generation`
 * and its wait is not lost (the wait returns at once).
 */
class Signal {
  generation = 0;
  private readonly sleeping = new Set<() => void>();

  bump(): void {
    this.generation++;
    for (const done of [...this.sleeping]) done();
  }

  /** Waits up to `timeoutMs` for a bump past `seen`; `exposeWake` gets a wake that ends it sooner. */
  waitBeyond(seen: number, timeoutMs: number, exposeWake: (wake: () => void) => void): Promise<void> {
    if (this.generation !== seen) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.sleeping.delete(done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.sleeping.add(done);
      exposeWake(done);
    });
  }
}

/**
 * Tells other processes that events were appended. NOTIFY takes a database-wide lock at commit, so
 * it is never sent from the append itself: one is in flight at a time and any appends meanwhile
 * share the next one.
 */
class DebouncedNotify {
  private inFlight = false;
  private pending = false;
  private stopped = false;

  constructor(
    private readonly db: Kysely<Database>,
    private readonly origin: string,
    private readonly logger: Logger | undefined,
  ) {}

  schedule(): void {
    if (this.stopped) return;
    if (this.inFlight) {
      this.pending = true;
      return;
    }
    this.inFlight = true;
    void sql`select pg_notify(${CHANNEL}, ${this.origin})`
      .execute(this.db)
      .catch((err: unknown) => this.logger?.debug({ err }, 'append notification failed'))
      .finally(() => {
        // At most one NOTIFY per few milliseconds; in-process subscribers are woken directly anyway.
        setTimeout(() => {
          this.inFlight = false;
          if (this.pending) {
            this.pending = false;
            this.schedule();
          }
        }, NOTIFY_INTERVAL_MS).unref();
      });
  }

  stop(): void {
    this.stopped = true;
  }
}
