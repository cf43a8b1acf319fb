import {
  BACKWARDS,
  END,
  FORWARDS,
  KurrentDBClient,
  START as CLIENT_START,
  StreamNotFoundError,
  UnavailableError,
  DeadlineExceededError,
  CancelledError,
  WrongExpectedVersionError,
  jsonEvent,
  type AllStreamSubscription,
  type AppendStreamState,
  type Filter,
  type JSONType,
  type Position,
  type ReadPosition,
  type RecordedEvent as ClientRecordedEvent,
} from '@kurrent/kurrentdb-client';
import type { Logger } from '../platform/logger';
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

export interface KurrentDbEventStoreOptions {
  logger?: Logger;
  /** Called after every append with its duration in seconds (metrics). */
  onAppend?: (seconds: number, events: number) => void;
  /**
   * Puts every stream under this prefix and confines reads, subscriptions and counts to such
   * streams, so several stores (tests) can share one server. Production leaves it unset.
   */
  streamPrefix?: string;
  /** First wait before resubscribing after a dropped subscription; doubles up to `maxRetryMs`. */
  retryMs?: number;
  maxRetryMs?: number;
  /** How often live subscriptions look at the head of the log to move past events they filter out. */
  headPollMs?: number;
}

/** What `/ready` needs: subscriptions currently dropped and waiting to resubscribe. */
export interface KurrentDbHealth {
  subscriptions: number;
  subscriptionsDown: number;
}

export interface KurrentDbEventStore extends EventStore {
  health(): KurrentDbHealth;
}

/** The server counts checkpoints in multiples of its read window (32 events): one per 1,024 events. */
const CHECKPOINT_INTERVAL_MULTIPLIER = 32;
/** A live subscription this long without a message checks whether the log moved on without it. */
const IDLE_MS = 25;
const PAGE = 1_000;
const MAX_COUNT = Number.MAX_SAFE_INTEGER;

/**
 * The event store on KurrentDB (or EventStoreDB 20+) through `@kurrent/kurrentdb-client`.
 *
 * Positions: KurrentDB gives each event a commit and a prepare position in its transaction log,
 * and since version 20 they are equal for every event appended through gRPC. The public
 * `position` is the commit position; `logPosition` is `{ txid: commit, position: prepare }`, so
 * ordering by (txid, position) is $all order and a projection checkpoint is a position KurrentDB
 * can resume a read or subscription from.
 *
 * Event ids are kept, so a retried append is recognised by the server's own idempotency check
 * and answered as the first one was. System events (`$` types, `$` streams) are never returned.
 */
export function createKurrentDbEventStore(
  connectionString: string,
  options: KurrentDbEventStoreOptions = {},
): KurrentDbEventStore {
  const client = KurrentDBClient.connectionString(clientConnectionString(connectionString));
  const prefix = options.streamPrefix ?? '';
  const logger = options.logger;
  const subscriptions = new Set<KurrentSubscription>();
  const headWatch = new HeadWatch(() => rawHead(), options.headPollMs ?? 1_000, logger);

  function toRecorded(event: ClientRecordedEvent | undefined): RecordedEvent | undefined {
    if (!event?.position || !event.streamId.startsWith(prefix)) return undefined;
    const { commit, prepare } = event.position;
    return {
      id: event.id,
      type: event.type,
      data: event.data,
      metadata: (event.metadata ?? {}) as EventMetadata,
      streamName: event.streamId.slice(prefix.length),
      revision: event.revision,
      position: commit,
      logPosition: { txid: commit, position: prepare },
      // Reads through the client's native reader carry whole seconds only: trimmed the same
      // everywhere, an event reads the same from a stream, $all and a subscription.
      recordedAt: new Date(Math.floor(event.created.getTime() / 1_000) * 1_000),
    };
  }

  async function readStreamRaw(
    name: string,
    opts: { direction: 'forwards' | 'backwards'; from: bigint | 'start' | 'end'; maxCount: number },
  ): Promise<RecordedEvent[]> {
    const events: RecordedEvent[] = [];
    try {
      for await (const resolved of client.readStream(name, {
        direction: opts.direction === 'backwards' ? BACKWARDS : FORWARDS,
        fromRevision: opts.from === 'start' ? CLIENT_START : opts.from === 'end' ? END : opts.from,
        maxCount: opts.maxCount,
      })) {
        const event = toRecorded(resolved.event);
        if (event) events.push(event);
      }
    } catch (err) {
      if (err instanceof StreamNotFoundError) return [];
      throw err;
    }
    return events;
  }

  /**
   * One forward read of $all after `from` (exclusive) with the server-side part of a filter:
   * `after` holds every event the server returned past `from` (at most `limit`), `events` those
   * the whole filter keeps, and `exhausted` whether the server had no more.
   */
  async function readAllRaw(
    from: LogPosition,
    limit: number,
    plan: FilterPlan,
  ): Promise<{ events: RecordedEvent[]; lastSeen: LogPosition | undefined; exhausted: boolean }> {
    // A read of $all from a position includes the event there: ask for one more and drop it.
    const request = limit + 1;
    const after: { event: ClientRecordedEvent; at: LogPosition }[] = [];
    let returned = 0;
    for await (const resolved of client.readAll({
      direction: FORWARDS,
      fromPosition: toReadPosition(from),
      maxCount: request,
      filter: plan.server,
    })) {
      returned++;
      const event = resolved.event;
      if (!event?.position) continue;
      const at = { txid: event.position.commit, position: event.position.prepare };
      if (compareLogPositions(at, from) > 0) after.push({ event, at });
    }
    let exhausted = returned < request;
    if (after.length > limit) {
      after.length = limit;
      exhausted = false;
    }
    const events: RecordedEvent[] = [];
    for (const { event } of after) {
      if (!plan.keeps(event.streamId, event.type)) continue;
      const recorded = toRecorded(event);
      if (recorded) events.push(recorded);
    }
    return { events, lastSeen: after.at(-1)?.at, exhausted };
  }

  /** The position of the newest record of $all, system events included. */
  async function rawHead(): Promise<LogPosition> {
    for await (const resolved of client.readAll({ direction: BACKWARDS, fromPosition: END, maxCount: 1 })) {
      const position = resolved.event?.position;
      if (position) return { txid: position.commit, position: position.prepare };
    }
    return START;
  }

  async function readAll(opts: ReadAllOptions = {}): Promise<ReadAllBatch> {
    const from = opts.from ?? START;
    const limit = Math.max(1, opts.maxCount ?? PAGE);
    const plan = planFilter(opts.filter, prefix);
    // The head first: a read that then reaches the end has scanned at least up to it, so a
    // filtered reader may move there even when the last events did not match.
    const head = await rawHead();
    const page = await readAllRaw(from, limit, plan);
    let next = page.lastSeen ?? from;
    if (page.exhausted && compareLogPositions(head, next) > 0) next = head;
    return { events: page.events, next, caughtUp: page.exhausted };
  }

  async function append(
    streamName: string,
    events: readonly NewEvent[],
    expected: ExpectedRevision,
  ): Promise<AppendResult> {
    const started = process.hrtime.bigint();
    const name = prefix + streamName;
    if (events.length === 0) return appendNothing(streamName, expected);
    assertStorable(events);
    let result;
    try {
      result = await client.appendToStream(
        name,
        events.map((e) =>
          jsonEvent({ id: e.id, type: e.type, data: (e.data ?? null) as JSONType, metadata: e.metadata }),
        ),
        { streamState: expected satisfies AppendStreamState },
      );
    } catch (err) {
      if (err instanceof WrongExpectedVersionError) {
        const actual = err.actualState;
        throw new WrongExpectedRevision(
          streamName,
          expected,
          typeof actual === 'bigint' ? actual : undefined,
        );
      }
      throw err;
    }
    const revision = result.nextExpectedRevision;
    let logPosition: LogPosition;
    if (events.length === 1 && result.position) {
      logPosition = { txid: result.position.commit, position: result.position.prepare };
    } else {
      // The server answers the write's transaction position (its first event's): the last
      // event's position is read back.
      const [last] = await readStreamRaw(name, { direction: 'forwards', from: revision, maxCount: 1 });
      if (!last) throw new Error(`appended to ${streamName} but cannot read revision ${revision} back`);
      logPosition = last.logPosition;
    }
    headWatch.saw(logPosition);
    options.onAppend?.(Number(process.hrtime.bigint() - started) / 1e9, events.length);
    return { nextExpectedRevision: revision, position: logPosition.txid, logPosition };
  }

  /** An empty append only checks the expectation (nothing is sent to the server). */
  async function appendNothing(streamName: string, expected: ExpectedRevision): Promise<AppendResult> {
    const [last] = await readStreamRaw(prefix + streamName, {
      direction: 'backwards',
      from: 'end',
      maxCount: 1,
    });
    const actual = last?.revision;
    const ok =
      expected === 'any' ||
      (expected === 'no_stream' && actual === undefined) ||
      (expected === 'stream_exists' && actual !== undefined) ||
      (typeof expected === 'bigint' && actual === expected);
    if (!ok) throw new WrongExpectedRevision(streamName, expected, actual);
    return {
      nextExpectedRevision: actual ?? -1n,
      position: last?.position ?? 0n,
      logPosition: last?.logPosition ?? START,
    };
  }

  async function readStream(streamName: string, opts: ReadStreamOptions = {}): Promise<RecordedEvent[]> {
    const backwards = opts.direction === 'backwards';
    const maxCount = Math.min(opts.maxCount ?? MAX_COUNT, MAX_COUNT);
    if (maxCount <= 0) return [];
    let from: bigint | 'start' | 'end' = backwards ? 'end' : 'start';
    if (opts.fromRevision !== undefined) {
      if (opts.fromRevision < 0n) {
        if (backwards) return [];
      } else from = opts.fromRevision;
    }
    return readStreamRaw(prefix + streamName, {
      direction: backwards ? 'backwards' : 'forwards',
      from,
      maxCount,
    });
  }

  async function count(opts: { from?: LogPosition; filter?: EventFilter; limit: number }): Promise<number> {
    const plan = planFilter(opts.filter, prefix);
    let at = opts.from ?? START;
    let n = 0;
    while (n < opts.limit) {
      const page = await readAllRaw(at, 4 * PAGE, plan);
      n += page.events.length;
      if (page.exhausted || !page.lastSeen) break;
      at = page.lastSeen;
    }
    return Math.min(n, opts.limit);
  }

  async function locate(position: bigint): Promise<LogPosition | undefined> {
    if (position <= 0n) return undefined;
    const head = await rawHead();
    if (position > head.txid) return undefined;
    try {
      // A forward read of $all includes the record at its start position: if an event starts
      // exactly there, it comes first. (Not from just before it: a node refuses to read from a
      // position inside a record.)
      for await (const resolved of client.readAll({
        direction: FORWARDS,
        fromPosition: { commit: position, prepare: position },
        maxCount: 1,
      })) {
        const at = resolved.event?.position;
        return at?.commit === position ? { txid: at.commit, position: at.prepare } : undefined;
      }
    } catch (err) {
      // No record starts there, so no event has this position.
      if (isConnectionError(err)) throw err;
      logger?.debug({ err, position: String(position) }, 'no event at this position');
    }
    return undefined;
  }

  function subscribe(handler: SubscriptionHandler, opts: SubscribeOptions = {}): Subscription {
    const subscription: KurrentSubscription = new KurrentSubscription({
      client,
      handler,
      from: opts.from ?? START,
      batchSize: Math.max(1, opts.batchSize ?? 500),
      plan: planFilter(opts.filter, prefix),
      toRecorded,
      readAll: (from) => readAll({ from, maxCount: 1, ...(opts.filter ? { filter: opts.filter } : {}) }),
      headWatch,
      logger,
      retryMs: options.retryMs ?? 250,
      maxRetryMs: options.maxRetryMs ?? 10_000,
      onDone: () => subscriptions.delete(subscription),
    });
    subscriptions.add(subscription);
    return subscription;
  }

  return {
    name: 'kurrentdb',
    append,
    readStream,
    readAll,
    subscribe,
    count,
    locate,
    head: rawHead,
    async ping() {
      await rawHead();
    },
    async close() {
      await Promise.all([...subscriptions].map((s) => s.stop()));
      headWatch.stop();
      await client.dispose();
    },
    health() {
      let down = 0;
      for (const s of subscriptions) if (s.down) down++;
      return { subscriptions: subscriptions.size, subscriptionsDown: down };
    },
  };
}

/**
 * The client speaks `kurrentdb://`; `esdb://` (EventStoreDB's name for the same thing) is
 * rewritten, which also spares the client's deprecation warning.
 */
export function clientConnectionString(url: string): string {
  return url.replace(
    /^esdb(\+discover)?:\/\//,
    (_, discover: string | undefined) => `kurrentdb${discover ?? ''}://`,
  );
}

function toReadPosition(at: LogPosition): ReadPosition {
  return at.txid === 0n && at.position === 0n ? CLIENT_START : { commit: at.txid, prepare: at.position };
}

function isConnectionError(err: unknown): boolean {
  return (
    err instanceof UnavailableError || err instanceof DeadlineExceededError || err instanceof CancelledError
  );
}

// ——— filters ———

/**
 * A port filter split in two: what the server can filter on (it filters on stream names or on
 * event types, not both) and a predicate the client applies to everything the server returns.
 */
interface FilterPlan {
  server: Filter;
  keeps(streamId: string, type: string): boolean;
}

export function planFilter(filter: EventFilter | undefined, prefix: string): FilterPlan {
  const categories = filter?.categories ?? [];
  const types = filter?.eventTypes ?? [];
  const typeSet = new Set(types);
  const categorySet = new Set(categories);
  const keeps = (streamId: string, type: string) =>
    !type.startsWith('$') &&
    !streamId.startsWith('$') &&
    streamId.startsWith(prefix) &&
    (typeSet.size === 0 || typeSet.has(type)) &&
    (categorySet.size === 0 || categorySet.has(streamCategory(streamId.slice(prefix.length))));
  // checkpointInterval is only read by subscriptions; reads ignore it.
  let server: Filter;
  if (categories.length > 0) {
    server = {
      filterOn: 'streamName',
      prefixes: categories.map((c) => `${prefix}${c}-`),
      checkpointInterval: CHECKPOINT_INTERVAL_MULTIPLIER,
    };
  } else if (types.length > 0) {
    server = {
      filterOn: 'eventType',
      regex: `^(?:${types.map(escapeRegex).join('|')})$`,
      checkpointInterval: CHECKPOINT_INTERVAL_MULTIPLIER,
    };
  } else if (prefix) {
    server = {
      filterOn: 'streamName',
      prefixes: [prefix],
      checkpointInterval: CHECKPOINT_INTERVAL_MULTIPLIER,
    };
  } else {
    // Everything but system events, whose types start with `$`.
    server = { filterOn: 'eventType', regex: '^[^$]', checkpointInterval: CHECKPOINT_INTERVAL_MULTIPLIER };
  }
  return { server, keeps };
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function maxPosition(a: LogPosition, b: LogPosition): LogPosition {
  return compareLogPositions(a, b) >= 0 ? a : b;
}

// ——— subscriptions ———

/** What the subscription's readable side carries: events, and the markers we put between them. */
type Item =
  | { event?: ClientRecordedEvent }
  | { marker: 'checkpoint'; at: LogPosition }
  | { marker: 'caughtUp'; at: LogPosition | undefined }
  | { marker: 'fellBehind'; at: undefined };

class HandlerFailed extends Error {
  override readonly name = 'HandlerFailed';
  constructor(override readonly cause: unknown) {
    super('subscription handler failed');
  }
}

/** Wake-ups with a generation count, so one that comes between a check and the wait is not lost. */
class Signal {
  generation = 0;
  private waiters = new Set<() => void>();

  bump(): void {
    this.generation++;
    const waiters = this.waiters;
    this.waiters = new Set();
    for (const w of waiters) w();
  }

  wait(seen: number, timeoutMs?: number): Promise<void> {
    if (this.generation !== seen) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        if (timer) clearTimeout(timer);
        this.waiters.delete(done);
        resolve();
      };
      const timer = timeoutMs === undefined ? undefined : setTimeout(done, timeoutMs);
      this.waiters.add(done);
    });
  }
}

/**
 * The newest position of the log this process knows of: from its own appends at once, and by a
 * look at the head every `pollMs` while subscriptions run (other processes append too).
 * A live subscription that has not reached it, and has had nothing to say for a moment, has
 * filtered out what came since; it then moves its checkpoint past it.
 */
class HeadWatch {
  head: LogPosition = START;
  private readonly listeners = new Set<() => void>();
  private timer: NodeJS.Timeout | undefined;
  private polling = false;

  constructor(
    private readonly readHead: () => Promise<LogPosition>,
    private readonly pollMs: number,
    private readonly logger: Logger | undefined,
  ) {}

  saw(position: LogPosition): void {
    if (compareLogPositions(position, this.head) <= 0) return;
    this.head = position;
    for (const l of this.listeners) l();
  }

  watch(listener: () => void): () => void {
    this.listeners.add(listener);
    this.timer ??= setInterval(() => void this.poll(), this.pollMs).unref();
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0) this.stop();
    };
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private async poll(): Promise<void> {
    if (this.polling) return;
    this.polling = true;
    try {
      this.saw(await this.readHead());
    } catch (err) {
      this.logger?.debug({ err }, 'cannot read the head of the log');
    } finally {
      this.polling = false;
    }
  }
}

interface SubscriptionDeps {
  client: KurrentDBClient;
  handler: SubscriptionHandler;
  from: LogPosition;
  batchSize: number;
  plan: FilterPlan;
  toRecorded(event: ClientRecordedEvent | undefined): RecordedEvent | undefined;
  /** A filtered read of one event after `from` (to move past filtered-out events). */
  readAll(from: LogPosition): Promise<ReadAllBatch>;
  headWatch: HeadWatch;
  logger: Logger | undefined;
  retryMs: number;
  maxRetryMs: number;
  onDone(): void;
}

/**
 * A catch-up subscription to $all with a server-side filter. Events come in log order and are
 * handed over in batches of up to `batchSize`, each only after the previous batch's handler is
 * done; checkpoints the server reports (and positions reached past filtered-out events) move the
 * checkpoint through `onEvents([], next)`. A dropped subscription is resumed from the last
 * checkpoint handed over, with backoff; meanwhile it counts as down.
 */
class KurrentSubscription implements Subscription {
  readonly done: Promise<void>;
  down = false;
  private position: LogPosition;
  private stopped = false;
  private readonly signal = new Signal();

  constructor(private readonly deps: SubscriptionDeps) {
    this.position = deps.from;
    this.done = this.run()
      .catch((err: unknown) => {
        const cause = err instanceof HandlerFailed ? err.cause : err;
        if (deps.handler.onError) deps.handler.onError(cause);
        else deps.logger?.error({ err: cause }, 'subscription stopped');
      })
      .finally(() => deps.onDone());
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.signal.bump();
    await this.done;
  }

  private async run(): Promise<void> {
    let backoff = this.deps.retryMs;
    while (!this.stopped) {
      try {
        await this.follow(() => {
          backoff = this.deps.retryMs;
        });
        return;
      } catch (err) {
        if (err instanceof HandlerFailed) throw err;
        if (this.stopped) return;
        this.down = true;
        const wait = Math.round(backoff * (0.75 + Math.random() * 0.5));
        this.deps.logger?.warn(
          { err, retryInMs: wait, from: `${this.position.txid}/${this.position.position}` },
          'subscription to $all dropped; resubscribing',
        );
        await this.signal.wait(this.signal.generation, wait);
        backoff = Math.min(backoff * 2, this.deps.maxRetryMs);
      }
    }
  }

  /** Follows the log until stopped; throws when the subscription drops or the handler fails. */
  private async follow(onConfirmed: () => void): Promise<void> {
    const { client, plan, batchSize, handler, headWatch } = this.deps;
    const filter: Filter = {
      ...plan.server,
      checkpointReached: (s: AllStreamSubscription, at: Position) => {
        // Pushed onto the readable side from inside the client's transform, so a checkpoint
        // stays in order with the events around it.
        s.push({ marker: 'checkpoint', at: { txid: at.commit, position: at.prepare } } satisfies Item);
      },
    };
    const sub = client.subscribeToAll(
      { fromPosition: toReadPosition(this.position), filter },
      { highWaterMark: batchSize },
    );
    let failure: unknown;
    let ended = false;
    sub.on('confirmation', () => {
      this.down = false;
      onConfirmed();
    });
    sub.on('caughtUp', (info: { position?: Position }) => {
      const at = info.position && { txid: info.position.commit, position: info.position.prepare };
      sub.push({ marker: 'caughtUp', at } satisfies Item);
    });
    // Live events came faster than they were read: the server catches up from the log again.
    sub.on('fellBehind', () => sub.push({ marker: 'fellBehind', at: undefined } satisfies Item));
    sub.on('readable', () => this.signal.bump());
    sub.on('error', (err: unknown) => {
      failure ??= err;
      this.signal.bump();
    });
    sub.on('end', () => {
      ended = true;
      this.signal.bump();
    });
    const unwatch = headWatch.watch(() => this.signal.bump());

    let live = false;
    let batch: RecordedEvent[] = [];
    /** The newest event read (for skipping repeats) and the newest position scanned (for `next`). */
    let lastEvent = this.position;
    let scanned = this.position;
    let caughtUpAt: LogPosition | undefined;
    let quietSince = Date.now();
    let probedAt: LogPosition | undefined;

    const deliver = async () => {
      const next = maxPosition(scanned, batch.at(-1)?.logPosition ?? scanned);
      if (batch.length === 0 && compareLogPositions(next, this.position) <= 0) return;
      const events = batch;
      batch = [];
      try {
        await handler.onEvents(events, next);
      } catch (err) {
        throw new HandlerFailed(err);
      }
      this.position = next;
    };

    try {
      while (!this.stopped) {
        const seen = this.signal.generation;
        const item = sub.read() as Item | null;
        if (item !== null) {
          quietSince = Date.now();
          if ('marker' in item) {
            if (item.at) scanned = maxPosition(scanned, item.at);
            live = item.marker === 'caughtUp' || (live && item.marker === 'checkpoint');
            continue;
          }
          const event = item.event;
          if (!event?.position) continue;
          const at = { txid: event.position.commit, position: event.position.prepare };
          if (compareLogPositions(at, maxPosition(lastEvent, this.position)) <= 0) continue;
          lastEvent = at;
          scanned = maxPosition(scanned, at);
          const recorded = plan.keeps(event.streamId, event.type) ? this.deps.toRecorded(event) : undefined;
          if (recorded) {
            batch.push(recorded);
            if (batch.length >= batchSize) await deliver();
          }
          continue;
        }

        if (failure !== undefined)
          throw failure instanceof Error ? failure : new Error('subscription failed', { cause: failure });
        if (ended) throw new Error('the server ended the subscription');
        await deliver();
        if (this.stopped) break;
        if (live && (!caughtUpAt || compareLogPositions(this.position, caughtUpAt) > 0)) {
          caughtUpAt = this.position;
          await handler.onCaughtUp?.(this.position);
          continue;
        }
        // Live, quiet, and the log has moved past everything this subscription was told about:
        // what came since was filtered out. A filtered read finds whether anything matches
        // there; if nothing does, the checkpoint moves past it.
        const behind = live && compareLogPositions(headWatch.head, this.position) > 0;
        if (behind && (!probedAt || compareLogPositions(headWatch.head, probedAt) > 0)) {
          const quietFor = Date.now() - quietSince;
          if (quietFor >= IDLE_MS) {
            probedAt = headWatch.head;
            await this.skipFilteredOut(deliver, (at) => (scanned = maxPosition(scanned, at)));
            continue;
          }
          await this.signal.wait(seen, IDLE_MS - quietFor);
          continue;
        }
        await this.signal.wait(seen);
      }
    } finally {
      unwatch();
      sub.removeAllListeners('readable');
      await sub.unsubscribe().catch(() => undefined);
      sub.destroy();
    }
  }

  private async skipFilteredOut(
    deliver: () => Promise<void>,
    scannedTo: (at: LogPosition) => void,
  ): Promise<void> {
    let batch: ReadAllBatch;
    try {
      batch = await this.deps.readAll(this.position);
    } catch (err) {
      this.deps.logger?.debug({ err }, 'cannot look past filtered-out events');
      return;
    }
    if (batch.events.length > 0 || !batch.caughtUp) return; // the subscription delivers those
    scannedTo(batch.next);
    await deliver();
  }
}
