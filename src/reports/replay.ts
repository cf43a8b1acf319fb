import {
  START,
  compareLogPositions,
  type EventFilter,
  type EventStore,
  type LogPosition,
  type RecordedEvent,
} from '../eventstore/port';
import { ledgerStream } from '../events/ledger';
import type { Db } from '../platform/db';
import type { LedgerRecord } from './records';

/** Every event of the ledger streams, whatever its type: verify reports types the ledger does not know. */
export const LEDGER_FILTER: EventFilter = Object.freeze({ categories: ['ledger'] });

export interface ReplayProgress {
  processed: number;
  /** Ledger events in the log when the replay started (an estimate: more may arrive). */
  total: number;
}

export interface ReplayOptions {
  /** Replay up to this point of the log, inclusive. Default: the head when the replay starts. */
  upTo?: LogPosition;
  batchSize?: number;
  onProgress?: (p: ReplayProgress) => void;
}

export interface ReplayResult {
  events: number;
  /** The point of the log the replay stopped at: a report is as of it. */
  upTo: LogPosition;
}

/** One batch of the log after `from`, at most `maxCount` events, none past `upTo`. */
interface LogBatch {
  events: readonly LedgerRecord[];
  next: LogPosition;
  /** Nothing more up to `upTo`. */
  done: boolean;
}

/** Reads the ledger streams' events from the global log, in log order. */
export type LogReader = (from: LogPosition, upTo: LogPosition, maxCount: number) => Promise<LogBatch>;

/**
 * Events per read. Smaller batches cost more round trips; larger ones keep more of the log alive
 * while the next is read, and the garbage collector then copies it (measured: 5,000 is cheapest).
 */
const DEFAULT_BATCH = 5_000;

/**
 * The reader a report should use: the postgres store's own log when the store is the postgres
 * store, which always keeps its log in the service's database (system.ts refuses any other
 * set-up); the EventStore port otherwise (KurrentDB). Both give the same events in the same order.
 */
export function ledgerLogReader(store: EventStore, db: Db): LogReader {
  return store.name === POSTGRES_STORE || store.name === EMBEDDED_POSTGRES_STORE
    ? postgresLogReader(db)
    : portLogReader(store);
}

/** The names the postgres event store gives itself (eventstore/postgres.ts). */
const POSTGRES_STORE = 'postgres';
const EMBEDDED_POSTGRES_STORE = 'postgres (embedded)';

/** Through the EventStore port: any adapter. */
export function portLogReader(store: EventStore): LogReader {
  return async (from, upTo, maxCount) => {
    const batch = await store.readAll({ from, maxCount, filter: LEDGER_FILTER });
    return cutBatch(batch.events, batch.next, batch.caughtUp, upTo, (e) => e.logPosition);
  };
}

/**
 * The postgres event store's own log, read for reports: the store's ordered read (its function,
 * whose plan is pinned to the log-order index) with only the columns a report uses, so the
 * database sends and the client decodes about half as much as a full event (no metadata document,
 * revision or recording time). It is the same log in the same order: everything up to a head taken
 * below the oldest running transaction has committed, so reading to it needs no snapshot care.
 * Only for a store that keeps its log in this database (the postgres store always does).
 */
export function postgresLogReader(db: Db): LogReader {
  return async (from, upTo, maxCount) => {
    type Row = [position: string, txid: string, eventId: string, stream: string, type: string, data: unknown];
    // The function reads below its xmin argument: one past the head's transaction, and the few
    // events of that transaction past the head are cut below.
    const rows = await db.query<Row>(
      REPORT_READ_SQL,
      [String(from.txid), String(from.position), String(upTo.txid + 1n), maxCount, LEDGER_FILTER.categories],
      'ledger_report_read',
      { arrays: true },
    );
    const events = new Array<LedgerRecord>(rows.length);
    for (let i = 0; i < rows.length; i++) {
      const r = rows[i]!;
      events[i] = {
        id: r[2],
        type: r[4],
        data: r[5],
        streamName: r[3],
        position: r[0],
      };
    }
    const last = rows[rows.length - 1];
    const next = last ? { txid: BigInt(last[1]), position: BigInt(last[0]) } : from;
    return cutBatch(events, next, rows.length < maxCount, upTo, (_e, i) => ({
      txid: BigInt(rows[i]![1]),
      position: BigInt(rows[i]![0]),
    }));
  };
}

const REPORT_READ_SQL = `
  select b.position, b.txid::text, b.event_id, b.stream_name, b.type, b.data
  from eventstore_read_all($1::xid8, $2::bigint, $3::xid8, $4::int, null, $5::text[]) b`;

/** Drops the events past `upTo` (they are in log order: only the last batch has any). */
function cutBatch<E>(
  events: readonly E[],
  next: LogPosition,
  caughtUp: boolean,
  upTo: LogPosition,
  positionOf: (e: E, i: number) => LogPosition,
): { events: readonly E[]; next: LogPosition; done: boolean } {
  const n = events.length;
  if (n > 0 && compareLogPositions(positionOf(events[n - 1]!, n - 1), upTo) > 0) {
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareLogPositions(positionOf(events[mid]!, mid), upTo) <= 0) lo = mid + 1;
      else hi = mid;
    }
    return { events: events.slice(0, lo), next: upTo, done: true };
  }
  return { events, next, done: caughtUp || compareLogPositions(next, upTo) >= 0 };
}

/**
 * Reads the ledger streams' events in log order up to a fixed point and hands them to `visit`
 * batch by batch. The next batch is read while `visit` folds this one, so the database and the
 * fold overlap. Stopping at a point fixed at the start makes a report deterministic while appends
 * go on.
 */
export async function replayLedgerLog(
  store: EventStore,
  read: LogReader,
  visit: (events: readonly LedgerRecord[]) => void,
  options: ReplayOptions = {},
): Promise<ReplayResult> {
  const upTo = options.upTo ?? (await store.head());
  const maxCount = options.batchSize ?? DEFAULT_BATCH;
  const onProgress = options.onProgress;
  const total = onProgress ? await store.count({ filter: LEDGER_FILTER, limit: Number.MAX_SAFE_INTEGER }) : 0;
  let processed = 0;
  onProgress?.({ processed, total });
  if (compareLogPositions(upTo, START) <= 0) return { events: 0, upTo };
  let pending = read(START, upTo, maxCount);
  for (;;) {
    const batch = await pending;
    if (!batch.done) pending = read(batch.next, upTo, maxCount);
    visit(batch.events);
    processed += batch.events.length;
    onProgress?.({ processed, total: Math.max(total, processed) });
    if (batch.done) break;
  }
  return { events: processed, upTo };
}

/** One account's events, in stream order, a page at a time. */
export async function replayLedgerStream(
  store: EventStore,
  userId: string,
  visit: (events: readonly RecordedEvent[]) => void,
  batchSize = DEFAULT_BATCH,
): Promise<number> {
  const stream = ledgerStream(userId);
  let from = 0n;
  let count = 0;
  for (;;) {
    const events = await store.readStream(stream, { fromRevision: from, maxCount: batchSize });
    visit(events);
    count += events.length;
    if (events.length < batchSize) return count;
    from = events[events.length - 1]!.revision + 1n;
  }
}
