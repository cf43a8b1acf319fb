import { LRUCache } from 'lru-cache';
import type { IdGenerator } from '../platform/clock';
import type { Logger } from '../platform/logger';
import { ConcurrencyConflict } from '../platform/errors';
import {
  WrongExpectedRevision,
  type EventMetadata,
  type EventStore,
  type NewEvent,
  type RecordedEvent,
} from '../eventstore/port';

/** What a decider emits: a type and its data. Ids and metadata are added by the handler. */
export interface DecidedEvent {
  type: string;
  data: unknown;
  /** Schema version of this event's data; 1 when absent. */
  schemaVersion?: number;
}

/** Who and why: carried into every event's metadata. Time comes in here so deciders stay pure. */
export interface CommandMetadata {
  now: Date;
  actorId?: string | null;
  requestId?: string | null;
  correlationId?: string | null;
  causationId?: string | null;
  /** Why, in a few words (a hold released because its task failed): kept in the event metadata when given. */
  reason?: string | null;
}

export interface Command<Type extends string = string, Data = unknown> {
  type: Type;
  data: Data;
  metadata: CommandMetadata;
}

/**
 * An aggregate's rules: pure functions, no I/O, no clock, no random ids. `evolve` may return a new
 * state or the same one changed; the handler folds only events that are stored.
 */
export interface Decider<State, Cmd extends Command, Evt extends DecidedEvent> {
  /** Names the state shape: part of the cache key, so two deciders over one stream never share state. */
  readonly name: string;
  initialState(): State;
  evolve(state: State, event: Evt): State;
  decide(command: Cmd, state: State): Evt[];
}

export interface HandleResult<State> {
  /** Global position of the last appended event, or of the stream's last event when nothing was appended. */
  position: bigint;
  nextExpectedRevision: bigint;
  events: RecordedEvent[];
  state: State;
}

export interface HandleOptions {
  /**
   * The stream is named by an id just made for it (a new task), or was just read empty, so it has
   * no events yet: the command is decided on the empty state and appended with `no_stream` in one
   * round trip. Should the stream exist after all, the append conflicts and the command is decided
   * on what is stored.
   */
  newStream?: boolean;
  /**
   * The command holds only on the stream as the caller read it, at this revision (-1: empty),
   * because something read beside it must not have changed either: it is decided on the state at
   * that revision and appended expecting it. A stream that has moved on throws `StreamMoved`, and
   * nothing is decided again.
   */
  atRevision?: bigint | undefined;
}

/** A command sent `atRevision` found its stream past it: what its caller read beside it may be stale. */
export class StreamMoved extends ConcurrencyConflict {}

export interface CommandHandlerOptions {
  ids: IdGenerator;
  /** How often a command is decided again after losing a race for its stream. */
  maxRetries?: number;
  /** Streams whose folded state is kept, so a command reads only events newer than it. */
  cacheSize?: number;
  logger?: Logger;
}

interface Cached {
  revision: bigint;
  position: bigint;
  state: unknown;
}

/**
 * The one generic command handler: read → fold → decide → append with the expected revision,
 * retried on a conflict. Folded state is kept per stream with its revision, so a command reads only
 * the events appended since (usually none) and its latency does not grow with the stream; with a
 * cached state it first decides on it and appends at once (one round trip), the expected revision
 * telling whether the state was current.
 */
export class CommandHandler {
  private readonly cache: LRUCache<string, Cached> | undefined;
  private readonly maxRetries: number;
  /** Commands on one stream run one at a time in this process: they share its cached state. */
  private readonly streamQueues = new KeyedQueue();

  constructor(
    private readonly store: EventStore,
    private readonly options: CommandHandlerOptions,
  ) {
    this.maxRetries = options.maxRetries ?? 5;
    const size = options.cacheSize ?? 10_000;
    this.cache = size > 0 ? new LRUCache({ max: size }) : undefined;
  }

  async handle<State, Cmd extends Command, Evt extends DecidedEvent>(
    decider: Decider<State, Cmd, Evt>,
    streamName: string,
    command: Cmd,
    options: HandleOptions = {},
  ): Promise<HandleResult<State>> {
    const key = `${decider.name}\u0000${streamName}`;
    const { atRevision } = options;
    return this.streamQueues.run(key, () =>
      atRevision === undefined
        ? this.decideAndAppend(decider, key, streamName, command, options.newStream === true)
        : this.decideAndAppendAt(decider, key, streamName, command, atRevision),
    );
  }

  /**
   * A stream's current state without deciding anything (sign-in reads a user, a reservation's
   * owner). Served from the cache plus whatever was appended since, like a command would see it.
   */
  async read<State, Cmd extends Command, Evt extends DecidedEvent>(
    decider: Decider<State, Cmd, Evt>,
    streamName: string,
  ): Promise<{ state: State; revision: bigint; position: bigint }> {
    const key = `${decider.name}\u0000${streamName}`;
    const loaded = await this.streamQueues.run(key, () => this.load(decider, key, streamName));
    return { state: loaded.state as State, revision: loaded.revision, position: loaded.position };
  }

  /**
   * Reads a stream into the cache when it is not there (an empty one too), so that a command on it
   * soon after decides and appends in one round trip: a request reads what it will write beside its
   * other reads, not before each write. Never fails; the command meets whatever the read met.
   */
  async warm<State, Cmd extends Command, Evt extends DecidedEvent>(
    decider: Decider<State, Cmd, Evt>,
    streamName: string,
  ): Promise<void> {
    const key = `${decider.name}\u0000${streamName}`;
    if (!this.cache || this.cache.has(key)) return;
    await this.streamQueues
      .run(key, async () => {
        if (this.cache?.has(key)) return;
        this.cache?.set(key, await this.load(decider, key, streamName));
      })
      .catch(() => undefined);
  }

  /**
   * What `command` would decide on the stream's cached state, with no read and no append: its
   * events, `refused` when the decider would throw, `changing` while a command on the stream is
   * under way here (what it appends is not cached yet) or when the cache is past `atRevision` (a
   * command sent at it would find the stream moved on), or undefined when the stream is not cached.
   * A guess (another instance may have appended since), for choosing what to do at once; the
   * command itself still decides on the stream as stored.
   */
  foresee<State, Cmd extends Command, Evt extends DecidedEvent>(
    decider: Decider<State, Cmd, Evt>,
    streamName: string,
    command: Cmd,
    atRevision?: bigint,
  ): Evt[] | 'refused' | 'changing' | undefined {
    const key = `${decider.name}\u0000${streamName}`;
    if (this.streamQueues.busy(key)) return 'changing';
    const cached = this.cache?.get(key);
    if (!cached) return undefined;
    // Sent `atRevision`, a command on a stream cached past it is StreamMoved, whatever it decides.
    if (atRevision !== undefined && cached.revision !== atRevision) return 'changing';
    return foreseeOn(decider, cached.state as State, command);
  }

  private async decideAndAppend<State, Cmd extends Command, Evt extends DecidedEvent>(
    decider: Decider<State, Cmd, Evt>,
    key: string,
    streamName: string,
    command: Cmd,
    newStream: boolean,
  ): Promise<HandleResult<State>> {
    // A stream named by an id made for it has no events: its empty state needs no read (the
    // `no_stream` expectation says whether that held).
    const cached = this.cache?.get(key) ?? (newStream ? emptyStream(decider) : undefined);
    let attempt = 0;
    if (cached) {
      const fast = await this.appendOnCached(decider, key, streamName, command, cached);
      if (fast === 'conflict') attempt = 1;
      else if (fast) return fast;
    }
    for (; ; attempt++) {
      const current = await this.load(decider, key, streamName);
      const decided = decider.decide(command, current.state as State);
      if (decided.length === 0) return unchanged<State>(current);
      try {
        return await this.append(decider, key, streamName, command, current, decided);
      } catch (err) {
        if (!(err instanceof WrongExpectedRevision)) throw err;
        this.cache?.delete(key);
        if (attempt >= this.maxRetries) {
          throw new ConcurrencyConflict(`${streamName} kept changing; try again`);
        }
        this.options.logger?.debug({ streamName, attempt }, 'append conflict, deciding again');
        await sleep(Math.random() * 5 * (attempt + 1));
      }
    }
  }

  /** A command that holds only on the stream at `atRevision` (see `HandleOptions`). */
  private async decideAndAppendAt<State, Cmd extends Command, Evt extends DecidedEvent>(
    decider: Decider<State, Cmd, Evt>,
    key: string,
    streamName: string,
    command: Cmd,
    atRevision: bigint,
  ): Promise<HandleResult<State>> {
    const moved = () => new StreamMoved(`${streamName} changed while this request was under way; try again`);
    // Cached at that revision or past it, or read empty: no read needed (the append says whether
    // the stream is still there).
    let current = this.cache?.get(key) ?? (atRevision === -1n ? emptyStream(decider) : undefined);
    if (!current || current.revision < atRevision) current = await this.load(decider, key, streamName);
    if (current.revision !== atRevision) throw moved();
    const decided = decider.decide(command, current.state as State);
    if (decided.length === 0) return unchanged<State>(current);
    try {
      return await this.append(decider, key, streamName, command, current, decided);
    } catch (err) {
      // The cached state is still right as of its revision: the next load reads only what came after.
      if (err instanceof WrongExpectedRevision) throw moved();
      throw err;
    }
  }

  /**
   * The common case in one round trip: decide on the cached state and append at its revision. Only
   * an append that succeeds is taken: a conflict (someone appended since), a decision to do nothing
   * or a refusal may come from a stale state, so the command is then decided again on the stream
   * as stored (a conflict counts as its first attempt).
   */
  private async appendOnCached<State, Cmd extends Command, Evt extends DecidedEvent>(
    decider: Decider<State, Cmd, Evt>,
    key: string,
    streamName: string,
    command: Cmd,
    cached: Cached,
  ): Promise<HandleResult<State> | 'conflict' | undefined> {
    let decided: Evt[];
    try {
      decided = decider.decide(command, cached.state as State);
    } catch {
      return undefined;
    }
    if (decided.length === 0) return undefined;
    try {
      return await this.append(decider, key, streamName, command, cached, decided);
    } catch (err) {
      if (!(err instanceof WrongExpectedRevision)) throw err;
      // The cached state is still right as of its revision: the next load reads only what came after.
      return 'conflict';
    }
  }

  /** Appends what was decided at the state's revision, and caches the state it leads to. */
  private async append<State, Cmd extends Command, Evt extends DecidedEvent>(
    decider: Decider<State, Cmd, Evt>,
    key: string,
    streamName: string,
    command: Cmd,
    current: Cached,
    decided: Evt[],
  ): Promise<HandleResult<State>> {
    const events = decided.map((e) => this.toNewEvent(e, command.metadata));
    const result = await this.store.append(
      streamName,
      events,
      current.revision < 0n ? 'no_stream' : current.revision,
    );
    const recorded = events.map((e, i): RecordedEvent => ({
      ...e,
      streamName,
      revision: result.nextExpectedRevision - BigInt(events.length - 1 - i),
      // Only the last event's position is known without a read; earlier ones are below it.
      position: result.position,
      logPosition: result.logPosition,
      recordedAt: command.metadata.now,
    }));
    let state = current.state as State;
    for (const e of decided) state = decider.evolve(state, e);
    this.cache?.set(key, { revision: result.nextExpectedRevision, position: result.position, state });
    return {
      position: result.position,
      nextExpectedRevision: result.nextExpectedRevision,
      events: recorded,
      state,
    };
  }

  /** The stream's state: the cached fold plus whatever was appended since (by us or anyone else). */
  private async load<State, Cmd extends Command, Evt extends DecidedEvent>(
    decider: Decider<State, Cmd, Evt>,
    key: string,
    streamName: string,
  ): Promise<Cached> {
    const cached = this.cache?.get(key);
    let revision = cached?.revision ?? -1n;
    let position = cached?.position ?? 0n;
    // Deciders may change state in place; a cached state is only ever advanced by stored events.
    let state = (cached?.state as State | undefined) ?? decider.initialState();
    const newer = await this.store.readStream(streamName, { fromRevision: revision + 1n });
    for (const e of newer) {
      state = decider.evolve(state, e as unknown as Evt);
      revision = e.revision;
      position = e.position;
    }
    const loaded = { revision, position, state };
    if (newer.length > 0) this.cache?.set(key, loaded);
    return loaded;
  }

  private toNewEvent(e: DecidedEvent, m: CommandMetadata): NewEvent {
    const metadata: EventMetadata = {
      occurredAt: m.now.toISOString(),
      actorId: m.actorId ?? null,
      requestId: m.requestId ?? null,
      correlationId: m.correlationId ?? m.requestId ?? null,
      causationId: m.causationId ?? null,
      schemaVersion: e.schemaVersion ?? 1,
      ...(m.reason ? { reason: m.reason } : {}),
    };
    return { id: this.options.ids.next(), type: e.type, data: e.data, metadata };
  }
}

/** A stream with no events yet, as a command sees it. */
const emptyStream = (decider: { initialState(): unknown }): Cached => ({
  revision: -1n,
  position: 0n,
  state: decider.initialState(),
});

/** The answer to a command that decided nothing on the stream as it is. */
function unchanged<State>(current: Cached): HandleResult<State> {
  return {
    position: current.position,
    nextExpectedRevision: current.revision,
    events: [],
    state: current.state as State,
  };
}

/** What `command` would decide on `state` (a state just read, or cached), or `refused`; nothing is written. */
export function foreseeOn<State, Cmd extends Command, Evt extends DecidedEvent>(
  decider: Decider<State, Cmd, Evt>,
  state: State,
  command: Cmd,
): Evt[] | 'refused' {
  try {
    return decider.decide(command, state);
  } catch {
    return 'refused';
  }
}

/** Runs tasks one after another per key; keys with nothing queued hold no memory. */
class KeyedQueue {
  private readonly queues = new Map<string, { tail: Promise<unknown>; pending: number }>();

  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    let queue = this.queues.get(key);
    if (!queue) this.queues.set(key, (queue = { tail: Promise.resolve(), pending: 0 }));
    const q = queue;
    q.pending++;
    // Counted out before whoever awaits the task resumes: `busy` is then already false.
    const result = q.tail.then(task, task).finally(() => {
      if (--q.pending === 0) this.queues.delete(key);
    });
    q.tail = result.catch(() => undefined);
    return result;
  }

  /** Whether a task of this key is queued or running. */
  busy(key: string): boolean {
    return this.queues.has(key);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
