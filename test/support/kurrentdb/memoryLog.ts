/**
 * The in-memory transaction log behind the KurrentDB test server: streams, $all order, expected
 * revisions and event-id deduplication with KurrentDB's rules. No gRPC here; `server.ts` speaks the
 * wire protocol on top of it.
 */
import { randomUUID } from 'node:crypto';

export interface ProposedEvent {
  id: string;
  type: string;
  contentType: string;
  data: Uint8Array;
  metadata: Uint8Array;
}

export interface StoredEvent extends ProposedEvent {
  streamName: string;
  revision: bigint;
  /** The record's log position; KurrentDB gives an event the same commit and prepare position. */
  position: bigint;
  /** .NET ticks (100 ns) since the Unix epoch, as KurrentDB puts in the `created` metadata. */
  created: bigint;
}

export type Expected =
  | { kind: 'any' }
  | { kind: 'no_stream' }
  | { kind: 'stream_exists' }
  | { kind: 'revision'; revision: bigint };

export type AppendOutcome =
  /** `position`: the write's transaction position, i.e. its first event's, as KurrentDB answers it. */
  { ok: true; lastRevision: bigint; position: bigint } | { ok: false; current: bigint | undefined };

/** Which events a filtered read or subscription passes, as KurrentDB's server-side filters do. */
export interface LogFilter {
  on: 'stream' | 'type';
  prefixes: readonly string[];
  regex: RegExp | undefined;
}

/** The first record position: a real log starts with its epoch records, never at 0. */
const FIRST_POSITION = 1_536n;

export class MemoryLog {
  /** Every event in log ($all) order. */
  readonly events: StoredEvent[] = [];
  private readonly streams = new Map<string, StoredEvent[]>();
  private nextPosition = FIRST_POSITION;
  private readonly listeners = new Set<() => void>();

  /** Seeds the system events a fresh node writes, so clients must filter them out as on a real one. */
  constructor(options: { systemEvents?: boolean } = {}) {
    if (options.systemEvents ?? true) {
      const json = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
      this.write('$settings', [
        {
          id: randomUUID(),
          type: '$settings',
          contentType: 'application/json',
          data: json({ $userStreamAcl: { $r: '$all' } }),
          metadata: new Uint8Array(),
        },
      ]);
      this.write('$scavenges', [
        {
          id: randomUUID(),
          type: '$scavengeIndexInitialized',
          contentType: 'application/json',
          data: json({}),
          metadata: new Uint8Array(),
        },
      ]);
    }
  }

  /** Called after every write (subscriptions follow the log through it). */
  onAppend(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  stream(name: string): readonly StoredEvent[] | undefined {
    return this.streams.get(name);
  }

  /**
   * Appends with KurrentDB's rules: the expected revision must hold, unless the same event ids
   * already stand where that expectation would have put them, in which case the write is
   * idempotent and answers as the first one did (for `any` and `stream_exists`, wherever the
   * first id stands in the stream). Ids that match only in part are a conflict.
   */
  append(streamName: string, proposed: readonly ProposedEvent[], expected: Expected): AppendOutcome {
    const existing = this.streams.get(streamName);
    const current = existing ? BigInt(existing.length - 1) : undefined;
    const conflict = { ok: false as const, current };

    const idempotentAt = (from: bigint): AppendOutcome | undefined => {
      if (!existing || proposed.length === 0) return undefined;
      const start = Number(from);
      const matches = proposed.every((p, i) => existing[start + i]?.id === p.id);
      if (!matches) return undefined;
      return {
        ok: true,
        lastRevision: from + BigInt(proposed.length) - 1n,
        position: existing[start]!.position,
      };
    };

    switch (expected.kind) {
      case 'no_stream':
        if (current === undefined) break;
        return idempotentAt(0n) ?? conflict;
      case 'revision':
        if (current === expected.revision) break;
        if (current !== undefined && current > expected.revision) {
          return idempotentAt(expected.revision + 1n) ?? conflict;
        }
        return conflict;
      case 'stream_exists':
      case 'any': {
        if (expected.kind === 'stream_exists' && current === undefined) return conflict;
        const first = proposed[0];
        const at = first && existing ? existing.findIndex((e) => e.id === first.id) : -1;
        if (at >= 0) return idempotentAt(BigInt(at)) ?? conflict;
        break;
      }
    }

    if (proposed.length === 0) {
      const last = existing?.at(-1);
      return { ok: true, lastRevision: current ?? -1n, position: last?.position ?? -1n };
    }
    const written = this.write(streamName, proposed);
    return { ok: true, lastRevision: written.at(-1)!.revision, position: written[0]!.position };
  }

  /** Where the next record will be written: reading from here or later finds nothing (yet). */
  get end(): bigint {
    return this.nextPosition;
  }

  /**
   * Whether a read or subscription may start at `position`: a record's start or the end of the
   * log. A real node fails a read from inside a record; here every record is an event.
   */
  isReadablePosition(position: bigint): boolean {
    return position >= this.nextPosition || this.events[this.indexFrom(position)]?.position === position;
  }

  /** Events of $all from `position` on, inclusive, as KurrentDB's forward reads of $all are. */
  indexFrom(position: bigint): number {
    let lo = 0;
    let hi = this.events.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.events[mid]!.position < position) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The first index after `position` (subscriptions start after their checkpoint). */
  indexAfter(position: bigint): number {
    const i = this.indexFrom(position);
    return this.events[i]?.position === position ? i + 1 : i;
  }

  private write(streamName: string, proposed: readonly ProposedEvent[]): StoredEvent[] {
    let stream = this.streams.get(streamName);
    if (!stream) {
      stream = [];
      this.streams.set(streamName, stream);
    }
    const created = BigInt(Date.now()) * 10_000n;
    const written = proposed.map((p) => {
      const event: StoredEvent = {
        ...p,
        streamName,
        revision: BigInt(stream.length),
        position: this.nextPosition,
        created,
      };
      // Positions are byte offsets in a real log: a record's size, never consecutive numbers.
      this.nextPosition += BigInt(
        64 + streamName.length + p.type.length + p.data.length + p.metadata.length + 16,
      );
      stream.push(event);
      this.events.push(event);
      return event;
    });
    for (const listener of this.listeners) listener();
    return written;
  }
}

export function filterMatches(filter: LogFilter | undefined, event: StoredEvent): boolean {
  if (!filter) return true;
  const subject = filter.on === 'stream' ? event.streamName : event.type;
  if (filter.prefixes.length > 0) return filter.prefixes.some((p) => subject.startsWith(p));
  return filter.regex ? filter.regex.test(subject) : true;
}
