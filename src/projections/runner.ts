import { sql, type Kysely, type Transaction } from 'kysely';
import {
  START,
  compareLogPositions,
  type EventStore,
  type LogPosition,
  type RecordedEvent,
} from '../eventstore/port';
import type { Db } from '../platform/db';
import type { Logger } from '../platform/logger';
import type { Database } from '../platform/schema';
import { prepared } from '../platform/prepared';
import type { ProjectionEngine, ProjectionStatus, Projector, RebuildProgress, RunnerState } from './types';

export interface ProjectionEngineOptions {
  db: Db;
  store: EventStore;
  logger: Logger;
  projectors: readonly Projector[];
  /** Events per live batch (one transaction each). */
  batchSize?: number;
  /** Events per rebuild batch (default 10,000). */
  rebuildBatchSize?: number;
  /** How often a standby runner tries for the lock. */
  standbyRetryMs?: number;
  /** Called after each committed batch (metrics). */
  onApplied?: (projection: string, events: number) => void;
}

export interface RunningProjectionEngine extends ProjectionEngine {
  /** Starts a runner per projector: each catches up, then follows live appends. */
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** Another process moved the checkpoint (a rebuild swapped tables, or a second runner): start over from it. */
class CheckpointMoved extends Error {
  override readonly name = 'CheckpointMoved';
}

const LAG_COUNT_CAP = 1_000_000;
const POLL_MS = 10;
/**
 * How often a runner saves progress through events it does not handle. Most batches of a busy log
 * hold none of a projector's events; saving each would commit a transaction per projector per
 * batch. Progress not yet saved is only read again after a restart, and finds nothing to apply.
 */
const IDLE_CHECKPOINT_MS = 250;
/**
 * The most events a rebuild applies in one transaction: a read model writing a statement per event
 * holds it for about a quarter of a second here (10,000 held it for 2 s, CONSISTENCY_TIMEOUT_MS).
 */
export const REBUILD_TRANSACTION_EVENTS = 1_000;

/**
 * Runs projectors: one runner per projector across all processes (advisory lock; the others stand
 * by). Each batch writes the rows and the checkpoint in one transaction, and only if the checkpoint
 * is still the one the runner started the batch from — so a batch can never be applied twice, even
 * by two runners that both believe they hold the lock.
 */
export function createProjectionEngine(options: ProjectionEngineOptions): RunningProjectionEngine {
  const { db: handle, store, logger } = options;
  const db = handle.db;
  const byName = new Map(options.projectors.map((p) => [p.name, p]));
  if (byName.size !== options.projectors.length) throw new Error('projector names must be unique');
  const runners = new Map(
    options.projectors.map((p) => [
      p.name,
      new Runner(p, handle, store, logger.child({ projection: p.name }), options),
    ]),
  );
  let started = false;

  function projector(name: string): Projector {
    const p = byName.get(name);
    if (!p) throw new Error(`unknown projection ${name}; known: ${[...byName.keys()].join(', ')}`);
    return p;
  }

  return {
    names: [...byName.keys()],
    readModels: [...byName.values()].filter((p) => !p.reactor).map((p) => p.name),

    async start() {
      if (started) return;
      started = true;
      for (const runner of runners.values()) runner.start();
    },

    async stop() {
      await Promise.all([...runners.values()].map((r) => r.stop()));
      started = false;
    },

    async waitFor(names, position, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      for (const name of names) projector(name);
      // Position 0 is the start of the log, before any event: every read model has it.
      if (position === 0n) return true;
      let target = await store.locate(position);
      while (!target && Date.now() < deadline) {
        await sleep(POLL_MS);
        target = await store.locate(position);
      }
      if (!target) return false;
      const reached = target;
      const results = await Promise.all(names.map((name) => runners.get(name)!.reached(reached, deadline)));
      return results.every(Boolean);
    },

    async status() {
      const rows = await db.selectFrom('projection_checkpoints').selectAll().execute();
      const byRow = new Map(rows.map((r) => [r.name, r]));
      return Promise.all(
        options.projectors.map(async (p): Promise<ProjectionStatus> => {
          const row = byRow.get(p.name);
          const runner = runners.get(p.name)!;
          // A runner here may have moved past events it does not handle without saving that yet.
          const checkpoint =
            (started && runner.state === 'running' ? runner.position : undefined) ??
            (row ? { txid: BigInt(row.txid), position: BigInt(row.position) } : null);
          return {
            name: p.name,
            version: p.version,
            state: started ? runner.state : 'stopped',
            checkpoint,
            lag: await store.count({
              from: checkpoint ?? START,
              filter: { eventTypes: p.eventTypes },
              limit: LAG_COUNT_CAP,
            }),
            // The runner here knows best while it runs; else the table says what the one running
            // elsewhere (or before) met.
            lastError: started && runner.state !== 'standby' ? runner.lastError : (row?.last_error ?? null),
          };
        }),
      );
    },

    async rebuild(name, onProgress) {
      if (projector(name).reactor) throw new Error(`${name} is a reactor: it has no read model to rebuild`);
      await rebuildProjection(
        handle,
        store,
        projector(name),
        logger,
        options.rebuildBatchSize ?? 10_000,
        onProgress,
      );
      runners.get(name)!.checkpointMoved();
    },
  };
}

class Runner {
  state: RunnerState = 'stopped';
  lastError: string | null = null;
  /** Where this runner has applied up to (waiters look here). */
  private checkpoint: LogPosition | undefined;
  /** The checkpoint as saved in the table (each save compares against it), and when it was saved. */
  private stored: LogPosition | undefined;
  private storedAt = 0;
  /** Saves run one at a time (each compares against the last); a timer saves what is left. */
  private writing: Promise<unknown> = Promise.resolve();
  private saveTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  private loop: Promise<void> | undefined;
  private subscription: { stop(): Promise<void> } | undefined;
  private wakeStandby: (() => void) | undefined; // ends a pause() early
  private progress = new Set<() => void>();
  private readonly lockKey: string;
  private holding = false;

  constructor(
    private readonly projector: Projector,
    private readonly handle: Db,
    private readonly store: EventStore,
    private readonly logger: Logger,
    private readonly options: ProjectionEngineOptions,
  ) {
    this.lockKey = `projection:${projector.name}`;
    handle.locks.onLost(() => {
      this.holding = false;
      if (this.state === 'running') {
        this.logger.warn('projection lock lost; standing by');
        void this.subscription?.stop();
      }
    });
  }

  start(): void {
    this.stopping = false;
    this.loop ??= this.run().finally(() => (this.loop = undefined));
  }

  async stop(): Promise<void> {
    this.stopping = true;
    this.wakeStandby?.();
    await this.subscription?.stop();
    await this.loop;
    this.state = 'stopped';
  }

  /** A rebuild in this process replaced the tables: resume from the new checkpoint. */
  checkpointMoved(): void {
    void this.subscription?.stop();
  }

  private async run(): Promise<void> {
    let backoff = 500;
    while (!this.stopping) {
      this.holding ||= await this.handle.locks.tryAcquire(this.lockKey).catch((err: unknown) => {
        this.logger.warn({ err }, 'cannot take the projection lock');
        return false;
      });
      if (!this.holding) {
        this.state = 'standby';
        await this.pause(this.options.standbyRetryMs ?? 2_000);
        continue;
      }
      try {
        this.state = 'starting';
        const row = await this.loadCheckpoint();
        if (row.version !== this.projector.version && this.projector.reactor) {
          // Nothing to rebuild: a reactor goes on from where it was.
          await this.handle.db
            .updateTable('projection_checkpoints')
            .set({ version: this.projector.version })
            .where('name', '=', this.projector.name)
            .execute();
          continue;
        }
        if (row.version !== this.projector.version) {
          this.state = 'rebuilding';
          this.logger.info(
            { from: row.version, to: this.projector.version },
            'projection version changed: rebuilding',
          );
          await rebuildProjection(
            this.handle,
            this.store,
            this.projector,
            this.logger,
            this.options.rebuildBatchSize ?? 10_000,
          );
          continue;
        }
        this.checkpoint = row.position;
        this.stored = row.position;
        this.storedAt = Date.now();
        this.state = 'running';
        const failure = await this.follow(row.position);
        if (failure instanceof CheckpointMoved || failure === undefined) {
          backoff = 500;
          continue;
        }
        throw failure instanceof Error
          ? failure
          : new Error(`subscription failed: ${JSON.stringify(failure)}`);
      } catch (err) {
        this.state = 'failed';
        this.lastError = err instanceof Error ? err.message : String(err);
        this.logger.error({ err }, 'projection failed; retrying');
        // For every instance to see, not only this one (the database may be what failed). This
        // runner says it failed at once, before the write, which a database that is gone can hold
        // up; elsewhere sees it once written.
        await this.handle.db
          .updateTable('projection_checkpoints')
          .set({ last_error: this.lastError.slice(0, 2_000) })
          .where('name', '=', this.projector.name)
          .execute()
          .catch(() => undefined);
        await this.releaseLock();
        await this.pause(backoff);
        backoff = Math.min(backoff * 2, 5_000);
      }
    }
    await this.releaseLock();
  }

  /** Waits `ms`, or until stop() wakes it. */
  private pause(ms: number): Promise<void> {
    if (this.stopping) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wakeStandby = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  private async releaseLock(): Promise<void> {
    if (!this.holding) return;
    this.holding = false;
    await this.handle.locks.release(this.lockKey).catch(() => undefined);
  }

  /** Follows the log until stopped; resolves with the error that ended it, if any. */
  private follow(from: LogPosition): Promise<unknown> {
    return new Promise<unknown>((resolve) => {
      let failure: unknown;
      let cleared = false;
      const sub = this.store.subscribe(
        {
          onEvents: async (events, next) => {
            await this.commit(events, next);
            if (events.length > 0) this.options.onApplied?.(this.projector.name, events.length);
            this.lastError = null;
          },
          // Idle (the subscription looks again every second or so): save progress left unsaved,
          // and, the first time, clear an error kept from before (this runner's or another's).
          onCaughtUp: async () => {
            if (!cleared) {
              cleared = true;
              this.lastError = null;
              await this.handle.db
                .updateTable('projection_checkpoints')
                .set({ last_error: null })
                .where('name', '=', this.projector.name)
                .where('last_error', 'is not', null)
                .execute();
            }
            await this.saveProgress(false);
          },
          onError: (err) => {
            failure = err;
          },
        },
        {
          from,
          filter: { eventTypes: this.projector.eventTypes },
          batchSize: this.options.batchSize ?? 500,
        },
      );
      this.subscription = {
        stop: async () => {
          await sub.stop();
        },
      };
      // stop() may have run between loading the checkpoint and here: it could not see this subscription.
      if (this.stopping) void sub.stop();
      void sub.done.then(async () => {
        clearTimeout(this.saveTimer);
        this.saveTimer = undefined;
        if (failure === undefined) await this.saveProgress(true).catch(() => undefined);
        resolve(failure);
      });
    });
  }

  private async commit(events: Parameters<Projector['apply']>[1], next: LogPosition): Promise<void> {
    if (events.length === 0) {
      this.advance(next);
      await this.saveProgress(false);
      return;
    }
    await this.serial(() => this.commitBatch(events, next));
  }

  private async commitBatch(events: Parameters<Projector['apply']>[1], next: LogPosition): Promise<void> {
    const expected = this.stored ?? START;
    if (this.projector.reactor) {
      // A reactor's commands append through the store on connections of their own: they cannot run
      // inside a transaction of the checkpoint. They are idempotent, so a crash before the
      // checkpoint is saved only makes them run again to no effect.
      if (events.length > 0) await this.projector.apply(this.handle.db, events);
      await this.moveCheckpoint(this.handle.db, expected, next);
    } else {
      await this.handle.db.transaction().execute(async (trx) => {
        // The checkpoint first: its row lock is taken before any table's, in the order a rebuild's
        // swap takes them, and a batch whose checkpoint moved writes nothing.
        await this.moveCheckpoint(trx, expected, next);
        if (events.length > 0) await this.projector.apply(trx, events);
      });
    }
    this.stored = next;
    this.storedAt = Date.now();
    this.advance(next);
  }

  /** Moves the saved checkpoint from `expected` to `next` in one statement, or throws CheckpointMoved. */
  private async moveCheckpoint(
    db: Kysely<Database>,
    expected: LogPosition,
    next: LogPosition,
  ): Promise<void> {
    const moved = await db
      .updateTable('projection_checkpoints')
      .set({
        txid: String(next.txid),
        position: String(next.position),
        updated_at: new Date(),
        last_error: null,
      })
      .where('name', '=', this.projector.name)
      .where('txid', '=', String(expected.txid))
      .where('position', '=', String(expected.position))
      .modifyEnd(prepared)
      .executeTakeFirst();
    if (Number(moved.numUpdatedRows) !== 1) {
      throw new CheckpointMoved(`checkpoint of ${this.projector.name} moved`);
    }
  }

  /** Where this runner has applied up to, saved or not. */
  get position(): LogPosition | undefined {
    return this.checkpoint;
  }

  /** Moves the checkpoint in memory and wakes whoever waits for it. */
  private advance(next: LogPosition): void {
    this.checkpoint = next;
    const waiters = this.progress;
    this.progress = new Set();
    for (const w of waiters) w();
  }

  /**
   * Saves progress made through events this projector does not handle, at most every
   * IDLE_CHECKPOINT_MS unless `now`: one statement, only if the saved checkpoint is still ours.
   */
  private saveProgress(now: boolean): Promise<void> {
    const unsaved = () => {
      const at = this.checkpoint;
      return at && compareLogPositions(at, this.stored ?? START) > 0 ? at : undefined;
    };
    if (!unsaved()) return Promise.resolve();
    const wait = this.storedAt + IDLE_CHECKPOINT_MS - Date.now();
    if (!now && wait > 0) {
      // Soon, rather than at the next batch or idle poll: an instance not running this projection
      // reads its progress from the table (waitFor on a standby).
      this.saveTimer ??= setTimeout(() => {
        this.saveTimer = undefined;
        if (this.state !== 'running') return;
        this.saveProgress(false).catch((err: unknown) => {
          if (!(err instanceof CheckpointMoved)) this.logger.warn({ err }, 'projection progress not saved');
          void this.subscription?.stop(); // starts over from the checkpoint in the table
        });
      }, wait).unref();
      return Promise.resolve();
    }
    return this.serial(async () => {
      const at = unsaved();
      if (at) await this.saveAt(at);
    });
  }

  /** Runs one save after the ones before it, whether they failed or not. */
  private serial<T>(save: () => Promise<T>): Promise<T> {
    const run = this.writing.then(save, save);
    this.writing = run.catch(() => undefined);
    return run;
  }

  private async saveAt(at: LogPosition): Promise<void> {
    await this.moveCheckpoint(this.handle.db, this.stored ?? START, at);
    this.stored = at;
    this.storedAt = Date.now();
  }

  private async loadCheckpoint(): Promise<{ version: number; position: LogPosition }> {
    const db = this.handle.db;
    await db
      .insertInto('projection_checkpoints')
      .values({ name: this.projector.name, version: this.projector.version, txid: '0', position: '0' })
      .onConflict((oc) => oc.column('name').doNothing())
      .execute();
    const row = await db
      .selectFrom('projection_checkpoints')
      .selectAll()
      .where('name', '=', this.projector.name)
      .executeTakeFirstOrThrow();
    return { version: row.version, position: { txid: BigInt(row.txid), position: BigInt(row.position) } };
  }

  /** Resolves true once this projection has applied everything up to `target`, false at the deadline. */
  async reached(target: LogPosition, deadline: number): Promise<boolean> {
    for (;;) {
      const at = this.state === 'running' ? this.checkpoint : await this.storedCheckpoint();
      if (at && compareLogPositions(at, target) >= 0) return true;
      const left = deadline - Date.now();
      if (left <= 0) return false;
      if (this.state === 'running') {
        // Its subscription may be gathering appends before it reads: someone waits for it now.
        this.store.hurry?.();
        await new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(timer);
            this.progress.delete(done);
            resolve();
          };
          const timer = setTimeout(done, Math.min(left, 250));
          this.progress.add(done);
        });
      } else {
        // The runner is in another process: its checkpoint is in the table.
        await sleep(Math.min(left, POLL_MS));
      }
    }
  }

  /** The checkpoint in the table, if it is of this projector's version (an older one is about to be rebuilt). */
  private async storedCheckpoint(): Promise<LogPosition | undefined> {
    const row = await this.handle.db
      .selectFrom('projection_checkpoints')
      .select(['version', 'txid', 'position'])
      .where('name', '=', this.projector.name)
      .executeTakeFirst();
    if (!row || row.version !== this.projector.version) return undefined;
    return { txid: BigInt(row.txid), position: BigInt(row.position) };
  }
}

async function lockCheckpoint(
  trx: Transaction<Database>,
  name: string,
): Promise<{ version: number; position: LogPosition } | undefined> {
  const row = await trx
    .selectFrom('projection_checkpoints')
    .select(['version', 'txid', 'position'])
    .where('name', '=', name)
    .forUpdate()
    .executeTakeFirst();
  return row
    ? { version: row.version, position: { txid: BigInt(row.txid), position: BigInt(row.position) } }
    : undefined;
}

/**
 * Builds the projection's tables anew beside the live ones (same structure, in a schema of their
 * own) from the start of the log, then swaps them in one transaction. The live runner keeps
 * serving from the old tables meanwhile. Before the swap the new tables catch up to its checkpoint
 * if it got past the rebuild; the swap then leaves the checkpoint there, or sets it to where the
 * rebuild got to, and a live runner finding its checkpoint moved resumes from there on the new
 * tables.
 */
export async function rebuildProjection(
  handle: Db,
  store: EventStore,
  projector: Projector,
  logger: Logger,
  batchSize: number,
  onProgress?: (p: RebuildProgress) => void,
): Promise<void> {
  const db = handle.db;
  const lockKey = `projection-rebuild:${projector.name}`;
  if (!(await handle.locks.tryAcquire(lockKey))) {
    throw new Error(`a rebuild of ${projector.name} is already running`);
  }
  const schema = `rebuild_${projector.name.replace(/[^a-z0-9_]/gi, '_').toLowerCase()}`;
  try {
    await sql`drop schema if exists ${sql.id(schema)} cascade`.execute(db);
    await sql`create schema ${sql.id(schema)}`.execute(db);
    for (const table of projector.tables) {
      await sql`create table ${sql.id(schema, table)} (like ${sql.id('public', table)} including all)`.execute(
        db,
      );
    }
    let processed = 0;
    /**
     * Applies events to the new tables (counted in `processed`), at most REBUILD_TRANSACTION_EVENTS
     * a transaction: the PostgreSQL store reads no event above the oldest running transaction, so
     * a long one here would hold back every live read model (and read-your-writes would answer 504).
     */
    const applyToNewTables = async (events: RecordedEvent[]) => {
      for (let i = 0; i < events.length; i += REBUILD_TRANSACTION_EVENTS) {
        const slice = events.slice(i, i + REBUILD_TRANSACTION_EVENTS);
        await db.transaction().execute(async (trx) => {
          // Unqualified names resolve to the new tables first, whatever SQL the projector writes.
          await sql`set local search_path to ${sql.id(schema)}, public`.execute(trx);
          await projector.apply(trx, slice);
        });
        processed += slice.length;
      }
    };
    const types = projector.eventTypes;
    const total = await store.count({ filter: { eventTypes: types }, limit: Number.MAX_SAFE_INTEGER });
    onProgress?.({ name: projector.name, processed, total });
    const read = (from: LogPosition) =>
      store.readAll({ from, maxCount: batchSize, filter: { eventTypes: types } });
    let batch = await read(START);
    for (;;) {
      // Read the next batch while this one is applied: decoding rows and writing them overlap.
      const next = batch.caughtUp ? undefined : read(batch.next);
      next?.catch(() => undefined); // awaited below; don't let a failure go unhandled meanwhile
      if (batch.events.length > 0) {
        await applyToNewTables(batch.events);
        onProgress?.({ name: projector.name, processed, total: Math.max(total, processed) });
      }
      if (!next) break;
      batch = await next;
    }
    let position = batch.next;
    /** Applies to the new tables what the log holds after `position`, up to `to`. */
    const catchUp = async (to: LogPosition) => {
      for (let from = position; compareLogPositions(from, to) < 0;) {
        const more = await store.readAll({ from, maxCount: batchSize, filter: { eventTypes: types } });
        const events = more.events.filter((e) => compareLogPositions(e.logPosition, to) <= 0);
        if (events.length > 0) await applyToNewTables(events);
        if (events.length < more.events.length || more.caughtUp) break;
        from = more.next;
      }
      position = to;
    };
    // A live runner (this process's or another's) may have applied events past the rebuild's last
    // read to the old tables: the new ones take them too before the swap, and the checkpoint stays
    // where it was, so that no runner goes on from a checkpoint its tables are behind.
    for (let swapped = false; !swapped;) {
      const saved = await db
        .selectFrom('projection_checkpoints')
        .select(['txid', 'position'])
        .where('name', '=', projector.name)
        .executeTakeFirst();
      const live = saved && { txid: BigInt(saved.txid), position: BigInt(saved.position) };
      if (live && compareLogPositions(live, position) > 0) await catchUp(live);
      swapped = await db.transaction().execute(async (trx) => {
        await trx
          .insertInto('projection_checkpoints')
          .values({ name: projector.name, version: projector.version, txid: '0', position: '0' })
          .onConflict((oc) => oc.column('name').doNothing())
          .execute();
        // Holding the checkpoint row keeps the live runner from committing a batch into the old tables.
        const locked = await lockCheckpoint(trx, projector.name);
        // Moved on since it was read: catch up once more (the log is read outside this transaction).
        if (locked && compareLogPositions(locked.position, position) > 0) return false;
        for (const table of projector.tables) {
          // `like … including all` named the copied indexes by PostgreSQL's rule: they take the
          // names the migrations gave the old ones, which later migrations refer to.
          const names = await indexNames(trx, table);
          await sql`drop table ${sql.id('public', table)}`.execute(trx);
          await sql`alter table ${sql.id(schema, table)} set schema public`.execute(trx);
          for (const [definition, name] of await indexNames(trx, table)) {
            const old = names.get(definition);
            if (old !== undefined && old !== name) {
              await sql`alter index ${sql.id('public', name)} rename to ${sql.id(old)}`.execute(trx);
            }
          }
        }
        await sql`drop schema ${sql.id(schema)}`.execute(trx);
        await trx
          .updateTable('projection_checkpoints')
          .set({
            version: projector.version,
            txid: String(position.txid),
            position: String(position.position),
            updated_at: new Date(),
            // Built anew from the log: whatever failed before is behind it.
            last_error: null,
          })
          .where('name', '=', projector.name)
          .execute();
        return true;
      });
    }
    logger.info({ projection: projector.name, events: processed }, 'projection rebuilt and swapped in');
  } finally {
    await handle.locks.release(lockKey).catch(() => undefined);
  }
}

/** The indexes of a table in `public`, by their definition without their name. */
async function indexNames(trx: Transaction<Database>, table: string): Promise<Map<string, string>> {
  const { rows } = await sql<{ indexname: string; indexdef: string }>`
    select indexname, indexdef from pg_indexes where schemaname = 'public' and tablename = ${table}`.execute(
    trx,
  );
  return new Map(
    rows.map((r) => [r.indexdef.replace(/^(CREATE (?:UNIQUE )?INDEX )\S+ ON /, '$1ON '), r.indexname]),
  );
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
