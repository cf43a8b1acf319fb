import type { Kysely } from 'kysely';
import type { LogPosition, RecordedEvent } from '../eventstore/port';
import type { Database } from '../platform/schema';

/**
 * A read model. `apply` writes its tables through the handle it is given and by unqualified names
 * (never `public.x`): during a rebuild the search path points them at new tables beside the live ones.
 */
export interface Projector {
  readonly name: string;
  /** Raise when `apply` changes meaning: the runner then rebuilds the read model at start. */
  readonly version: number;
  /** Event types it handles; the runner reads only these. */
  readonly eventTypes: readonly string[];
  /** The tables it owns (created by migrations), rebuilt and swapped together. */
  readonly tables: readonly string[];
  /**
   * A reactor rather than a read model: `apply` runs commands (side effects) before the checkpoint
   * is saved, outside its transaction, with the plain database handle. Its effects must be
   * idempotent: after a crash the batch runs again. Reactors own no tables and are not rebuilt.
   */
  readonly reactor?: boolean;
  apply(trx: Kysely<Database>, events: readonly RecordedEvent[]): Promise<void>;
}

export type RunnerState = 'starting' | 'running' | 'standby' | 'rebuilding' | 'failed' | 'stopped';

export interface ProjectionStatus {
  name: string;
  version: number;
  state: RunnerState;
  checkpoint: LogPosition | null;
  /** Events in its filter not yet applied (counted up to a cap). */
  lag: number;
  lastError: string | null;
}

export interface RebuildProgress {
  name: string;
  processed: number;
  total: number;
}

/** What the HTTP layer and CLIs need of the projection engine. */
export interface ProjectionEngine {
  /**
   * Resolves when every named projection has applied the event at `position` (read-your-writes),
   * false after `timeoutMs`.
   */
  waitFor(names: readonly string[], position: bigint, timeoutMs: number): Promise<boolean>;
  status(): Promise<ProjectionStatus[]>;
  rebuild(name: string, onProgress?: (p: RebuildProgress) => void): Promise<void>;
  readonly names: readonly string[];
  /** The names of those with a read model (not reactors): what `rebuild --all` rebuilds. */
  readonly readModels: readonly string[];
}
