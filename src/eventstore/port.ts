/**
 * The EventStore port: what the write side appends to and what projections and reactors read.
 * Adapters: `postgres.ts` (PostgreSQL server and PGlite) and, for production, KurrentDB.
 */

import { BadRequest } from '../platform/errors';
import { holdsUnstorableText } from '../platform/text';

/** The expected state of a stream before an append. A revision is the 0-based index of its last event. */
export type ExpectedRevision = 'any' | 'no_stream' | 'stream_exists' | bigint;

export interface EventMetadata {
  occurredAt: string;
  actorId?: string | null;
  requestId?: string | null;
  correlationId?: string | null;
  causationId?: string | null;
  schemaVersion: number;
  [key: string]: unknown;
}

/** An event to append. The id is chosen by the caller so a retried append is recognised as the same. */
export interface NewEvent<Type extends string = string, Data = unknown> {
  id: string;
  type: Type;
  data: Data;
  metadata: EventMetadata;
}

/**
 * Where a reader stands in the global log. Events are read in (txid, position) order: PostgreSQL
 * takes sequence values before commit, so transactions commit out of sequence order and only the
 * transaction id, read below the oldest running transaction, gives an order no later commit can
 * slip into. Stores without transaction ids use txid = position.
 */
export interface LogPosition {
  readonly txid: bigint;
  readonly position: bigint;
}

export const START: LogPosition = Object.freeze({ txid: 0n, position: 0n });

export function compareLogPositions(a: LogPosition, b: LogPosition): number {
  if (a.txid !== b.txid) return a.txid < b.txid ? -1 : 1;
  if (a.position !== b.position) return a.position < b.position ? -1 : 1;
  return 0;
}

export interface RecordedEvent<Type extends string = string, Data = unknown> extends NewEvent<Type, Data> {
  streamName: string;
  revision: bigint;
  /** The public global position (`X-Event-Position`): unique, increasing with append order. */
  position: bigint;
  logPosition: LogPosition;
  recordedAt: Date;
}

export interface AppendResult {
  /** The revision of the stream's last event, to pass as the expected revision of the next append. */
  nextExpectedRevision: bigint;
  /** Global position of the last appended event. */
  position: bigint;
  logPosition: LogPosition;
}

export interface ReadStreamOptions {
  direction?: 'forwards' | 'backwards';
  /** Inclusive. Defaults to the start (forwards) or the end (backwards). */
  fromRevision?: bigint;
  maxCount?: number;
}

/** Which events a global read or subscription delivers. Empty or absent lists match everything. */
export interface EventFilter {
  eventTypes?: readonly string[];
  /** Stream categories: the part of the stream name before the first `-`. */
  categories?: readonly string[];
}

export interface ReadAllOptions {
  /** Exclusive: events after this point. */
  from?: LogPosition;
  maxCount?: number;
  filter?: EventFilter;
}

export interface ReadAllBatch {
  events: RecordedEvent[];
  /**
   * Where the next read continues: past the last event returned, or, when the read reached the
   * end of what is safe to read, past every event it scanned whether or not the filter matched,
   * so a filtered reader's checkpoint moves on too.
   */
  next: LogPosition;
  /** True when nothing more is readable right now. */
  caughtUp: boolean;
}

export interface SubscriptionHandler {
  /**
   * Called with each batch in log order; the next batch waits for it. `next` is the batch's
   * checkpoint. `events` may be empty when only the checkpoint moved past filtered-out events.
   */
  onEvents(events: RecordedEvent[], next: LogPosition): Promise<void>;
  /** Called when the subscription has read everything there is (also after filtered-out stretches). */
  onCaughtUp?(at: LogPosition): Promise<void> | void;
  /** Called when the subscription stops on an error it could not get past. */
  onError?(error: unknown): void;
}

export interface SubscribeOptions {
  from?: LogPosition;
  filter?: EventFilter;
  batchSize?: number;
}

export interface Subscription {
  /** Stops after the batch in hand; resolves when stopped. */
  stop(): Promise<void>;
  /** Resolves when the subscription stops by itself (on error) or is stopped. */
  readonly done: Promise<void>;
}

export interface EventStore {
  readonly name: string;
  append(streamName: string, events: readonly NewEvent[], expected: ExpectedRevision): Promise<AppendResult>;
  readStream(streamName: string, options?: ReadStreamOptions): Promise<RecordedEvent[]>;
  readAll(options?: ReadAllOptions): Promise<ReadAllBatch>;
  subscribe(handler: SubscriptionHandler, options?: SubscribeOptions): Subscription;
  /** How many events match after `from` (exclusive), counting no further than `limit` (lag, progress). */
  count(options: { from?: LogPosition; filter?: EventFilter; limit: number }): Promise<number>;
  /** The log position of the event at a public global position, if it exists. */
  locate(position: bigint): Promise<LogPosition | undefined>;
  /**
   * The end of the log as of the call: at or past every append that returned before it, and
   * readable up to there (a report's fixed end, a wait for a read model to catch up). Held back
   * longer than the store waits (PostgreSQL: 30 s, behind a transaction left open), it answers
   * the newest point up to which the log is complete, and logs why.
   */
  head(): Promise<LogPosition>;
  /** Throws when the store cannot be reached (for `/ready`). */
  ping(): Promise<void>;
  /** Stores whose subscriptions run on their own connections report those down here (for `/ready`). */
  health?(): { subscriptionsDown: number };
  /**
   * Subscribers in this process of a store that gathers appends before reading them read now
   * instead: someone is waiting for a read model to catch up (read-your-writes).
   */
  hurry?(): void;
  close(): Promise<void>;
}

/** The stream was not at the expected revision. */
export class WrongExpectedRevision extends Error {
  override readonly name = 'WrongExpectedRevision';
  constructor(
    readonly streamName: string,
    readonly expected: ExpectedRevision,
    /** The stream's revision, or `undefined` when it does not exist. */
    readonly actual: bigint | undefined,
  ) {
    super(
      `stream ${streamName} expected at ${String(expected)} but is at ${actual === undefined ? 'no stream' : String(actual)}`,
    );
  }
}

/**
 * An event holding text no read model can store (NUL, half a surrogate pair), refused by every
 * adapter alike: PostgreSQL would fail the append, and KurrentDB would store it and stop each read
 * model that copies the text into PostgreSQL. Input is checked before it gets here; this is a 400
 * rather than a 500 or a stopped read model for whatever was not.
 */
export class UnstorableText extends BadRequest {
  /** `what`: what holds the text, as the caller knows it ("The body"). */
  constructor(what = 'Text to be stored') {
    super(`${what} holds a NUL character (\\u0000) or half of a surrogate pair, which text may not hold.`);
  }
}

/** Throws `UnstorableText` when any event's data or metadata holds such text. */
export function assertStorable(events: readonly NewEvent[]): void {
  for (const e of events) {
    if (holdsUnstorableText(e.data) || holdsUnstorableText(e.metadata)) throw new UnstorableText();
  }
}

export function streamCategory(streamName: string): string {
  const dash = streamName.indexOf('-');
  return dash === -1 ? streamName : streamName.slice(0, dash);
}
