import { sql, type Kysely } from 'kysely';
import type { Db } from '../platform/db';
import type { Logger } from '../platform/logger';
import type { Database } from '../platform/schema';
import {
  START,
  WrongExpectedRevision,
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

export interface PostgresEventStoreOptions {
  logger?: Logger;
  /** Called after every append with its duration in seconds (metrics). */
  onAppend?: (seconds: number, events: number) => void;
}

interface EventRow {
  position: string;
  txid: string;
  event_id: string;
  stream_name: string;
  revision: string;
  type: string;
  data: unknown;
  metadata: unknown;
  recorded_at: Date;
}

const eventColumns = sql`position, txid::text as txid, event_id, stream_name, revision, type, data, metadata, recorded_at`;

function toRecorded(row: EventRow): RecordedEvent {
  const position = BigInt(row.position);
  return {
    id: row.event_id,
    type: row.type,
    data: row.data,
    metadata: row.metadata as EventMetadata,
    streamName: row.stream_name,
    revision: BigInt(row.revision),
    position,
    logPosition: { txid: BigInt(row.txid), position },
    recordedAt: row.recorded_at,
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
  const signal = new AppendSignal();
  const notifier = new DebouncedNotify(db, options.logger);
  let unlisten: Promise<() => Promise<void>> | undefined;
  const ensureListening = () => {
    unlisten ??= handle.listen(CHANNEL, () => signal.bump()).catch((err: unknown) => {
      options.logger?.warn({ err }, 'cannot LISTEN for appends; subscribers poll');
      return async () => undefined;
    });
    return unlisten;
  };

  async function append(
    streamName: string,
    events: readonly NewEvent[],
    expected: ExpectedRevision,
  ): Promise<AppendResult> {
    const started = process.hrtime.bigint();
    if (events.length === 0) return appendNothing(db, streamName, expected);
    const n = events.length;
    const payload = JSON.stringify(
      events.map((e) => ({ id: e.id, type: e.type, data: e.data ?? null, metadata: e.metadata })),
    );
    const category = streamCategory(streamName);
    const bump = streamUpsert(streamName, n, expected);
    let rows: { position: string; txid: string; revision: string }[];
    try {
      const res = await sql<{ position: string; txid: string; revision: string }>`
        with s as (${bump})
        insert into events (event_id, stream_name, revision, category, type, data, metadata)
        select (v.e->>'id')::uuid, ${streamName}, s.revision - ${n} + v.ord, ${category},
               v.e->>'type', v.e->'data', v.e->'metadata'
        from s, jsonb_array_elements(${payload}::jsonb) with ordinality as v(e, ord)
        order by v.ord
        returning position, txid::text as txid, revision`.execute(db);
      rows = res.rows;
    } catch (err) {
      if (isUniqueViolation(err, 'events_event_id_key')) {
        return (await priorAppend(db, streamName, events, expected)) ?? conflict(db, streamName, expected);
      }
      throw err;
    }
    if (rows.length === 0) {
      return (await priorAppend(db, streamName, events, expected)) ?? conflict(db, streamName, expected);
    }
    const last = rows.reduce((a, b) => (BigInt(a.revision) > BigInt(b.revision) ? a : b));
    signal.bump();
    notifier.schedule();
    options.onAppend?.(Number(process.hrtime.bigint() - started) / 1e9, n);
    const position = BigInt(last.position);
    return {
      nextExpectedRevision: BigInt(last.revision),
      position,
      logPosition: { txid: BigInt(last.txid), position },
    };
  }

  async function readStream(streamName: string, opts: ReadStreamOptions = {}): Promise<RecordedEvent[]> {
    const backwards = opts.direction === 'backwards';
    const limit = opts.maxCount ?? 2 ** 31 - 1;
    if (limit <= 0) return [];
    const from = opts.fromRevision;
    const bound =
      from === undefined ? sql`` : backwards ? sql`and revision <= ${String(from)}` : sql`and revision >= ${String(from)}`;
    const res = await sql<EventRow>`
      select ${eventColumns} from events
      where stream_name = ${streamName} ${bound}
      order by revision ${backwards ? sql`desc` : sql`asc`}
      limit ${limit}`.execute(db);
    return res.rows.map(toRecorded);
  }

  async function readAll(opts: ReadAllOptions = {}): Promise<ReadAllBatch> {
    const { batch } = await readAllWithPending(opts);
    return batch;
  }

  async function readAllWithPending(opts: ReadAllOptions): Promise<{ batch: ReadAllBatch; blocked: boolean }> {
    const from = opts.from ?? START;
    const limit = Math.max(1, opts.maxCount ?? 1000);
    const filter = filterSql(opts.filter);
    // One statement, one snapshot: the batch, the newest safe point (to move a filtered reader on)
    // and whether committed events already wait behind an open transaction.
    const res = await sql<
      Partial<EventRow> & { tail_txid: string | null; tail_position: string | null; blocked: boolean }
    >`
      with h as materialized (select pg_snapshot_xmin(pg_current_snapshot()) as xmin)
      select b.*, t.txid::text as tail_txid, t.position as tail_position,
             exists (select 1 from events e, h where e.txid >= h.xmin) as blocked
      from h
      left join lateral (
        select ${eventColumns} from events e
        where (e.txid, e.position) > (${String(from.txid)}::xid8, ${String(from.position)}::bigint)
          and e.txid < h.xmin ${filter}
        order by e.txid, e.position
        limit ${limit}
      ) b on true
      left join lateral (
        select e.txid, e.position from events e where e.txid < h.xmin
        order by e.txid desc, e.position desc limit 1
      ) t on true
      order by b.txid::text::xid8, b.position`.execute(db);
    const first = res.rows[0];
    const events = res.rows.filter((r) => r.position != null).map((r) => toRecorded(r as EventRow));
    const caughtUp = events.length < limit;
    let next = events.length > 0 ? events[events.length - 1]!.logPosition : from;
    if (caughtUp && first?.tail_txid != null && first.tail_position != null) {
      const tail = { txid: BigInt(first.tail_txid), position: BigInt(first.tail_position) };
      if (compareLogPositions(tail, next) > 0) next = tail;
    }
    return { batch: { events, next, caughtUp }, blocked: Boolean(first?.blocked) };
  }

  function subscribe(handler: SubscriptionHandler, opts: SubscribeOptions = {}): Subscription {
    let stopped = false;
    let wake: (() => void) | undefined;
    const batchSize = opts.batchSize ?? 500;
    const readOpts = { maxCount: batchSize, ...(opts.filter ? { filter: opts.filter } : {}) };
    const done = (async () => {
      await ensureListening();
      let position = opts.from ?? START;
      while (!stopped) {
        const seen = signal.generation;
        const { batch, blocked } = await readAllWithPending({ ...readOpts, from: position });
        if (stopped) break;
        if (batch.events.length > 0 || compareLogPositions(batch.next, position) > 0) {
          await handler.onEvents(batch.events, batch.next);
          position = batch.next;
        }
        if (!batch.caughtUp) continue;
        await handler.onCaughtUp?.(position);
        if (stopped) break;
        await signal.waitBeyond(seen, blocked ? BLOCKED_POLL_MS : IDLE_POLL_MS, (w) => (wake = w));
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

  async function locate(position: bigint): Promise<LogPosition | undefined> {
    const res = await sql<{ txid: string }>`
      select txid::text as txid from events where position = ${String(position)}`.execute(db);
    const row = res.rows[0];
    return row ? { txid: BigInt(row.txid), position } : undefined;
  }

  async function head(): Promise<LogPosition> {
    const res = await sql<{ txid: string; position: string }>`
      select txid::text as txid, position from events
      where txid < pg_snapshot_xmin(pg_current_snapshot())
      order by txid desc, position desc limit 1`.execute(db);
    const row = res.rows[0];
    return row ? { txid: BigInt(row.txid), position: BigInt(row.position) } : START;
  }

  return {
    name: handle.kind === 'pglite' ? 'postgres (embedded)' : 'postgres',
    append,
    readStream,
    readAll,
    subscribe,
    locate,
    head,
    async ping() {
      await sql`select 1`.execute(db);
    },
    async close() {
      notifier.stop();
      const un = await unlisten;
      await un?.();
    },
  };
}

/** The `streams` row change that stands for the expected-revision check; returns the new last revision. */
function streamUpsert(streamName: string, n: number, expected: ExpectedRevision) {
  switch (expected) {
    case 'no_stream':
      return sql`insert into streams (stream_name, revision) values (${streamName}, ${n - 1})
                 on conflict (stream_name) do nothing returning revision`;
    case 'any':
      return sql`insert into streams (stream_name, revision) values (${streamName}, ${n - 1})
                 on conflict (stream_name) do update set revision = streams.revision + ${n} returning revision`;
    case 'stream_exists':
      return sql`update streams set revision = revision + ${n} where stream_name = ${streamName} returning revision`;
    default:
      return sql`update streams set revision = revision + ${n}
                 where stream_name = ${streamName} and revision = ${String(expected)} returning revision`;
  }
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
  const res = await sql<{ event_id: string; stream_name: string; revision: string; position: string; txid: string }>`
    select event_id, stream_name, revision, position, txid::text as txid from events
    where event_id = any(${ids}::uuid[]) order by revision`.execute(db);
  const rows = res.rows;
  if (rows.length !== events.length) return undefined;
  const firstRevision = BigInt(rows[0]!.revision);
  const inPlace = rows.every(
    (r, i) => r.stream_name === streamName && r.event_id === ids[i] && BigInt(r.revision) === firstRevision + BigInt(i),
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

async function conflict(db: Kysely<Database>, streamName: string, expected: ExpectedRevision): Promise<never> {
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

function isUniqueViolation(err: unknown, constraint: string): boolean {
  const e = err as { code?: string; constraint?: string } | undefined;
  return e?.code === '23505' && e.constraint === constraint;
}

/** In-process wake-up for subscribers: a generation counter, so a signal between read and wait is not lost. */
class AppendSignal {
  generation = 0;
  private waiters = new Set<() => void>();

  bump(): void {
    this.generation++;
    const waiters = this.waiters;
    this.waiters = new Set();
    for (const w of waiters) w();
  }

  waitBeyond(seen: number, timeoutMs: number, exposeWake: (wake: () => void) => void): Promise<void> {
    if (this.generation !== seen) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      this.waiters.add(done);
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
    private readonly logger: Logger | undefined,
  ) {}

  schedule(): void {
    if (this.stopped) return;
    if (this.inFlight) {
      this.pending = true;
      return;
    }
    this.inFlight = true;
    void sql`select pg_notify(${CHANNEL}, '')`
      .execute(this.db)
      .catch((err: unknown) => this.logger?.debug({ err }, 'append notification failed'))
      .finally(() => {
        this.inFlight = false;
        if (this.pending) {
          this.pending = false;
          this.schedule();
        }
      });
  }

  stop(): void {
    this.stopped = true;
  }
}
