import { Counter, type Registry } from 'prom-client';
import type { Clock } from '../../platform/clock';
import type { Db } from '../../platform/db';
import type { Logger } from '../../platform/logger';
import { dueHolds, type HoldKey, type OpenHold } from '../../queries/holds';
import type { LedgerCommands } from './credits';

/** The actor recorded on the HoldExpired events the scheduler decides. */
export const HOLD_EXPIRY_ACTOR = 'system:hold-expiry';

/** One instance sweeps at a time, across every process on the database. */
const LOCK_KEY = 'ledger:hold-expiry';
/** Holds expired at once: different users' ledgers are different streams. */
const CONCURRENCY = 8;

export interface HoldExpiryDeps {
  db: Db;
  ledger: Pick<LedgerCommands, 'expire'>;
  logger: Logger;
  /** Due holds read per page of `open_holds`. */
  pageSize?: number;
  /** Where `ledger_holds_expired_total` and `ledger_hold_expiry_failures_total` are registered. */
  metrics?: { registry: Registry } | undefined;
}

export interface SweepResult {
  /** False when another instance held the sweep lock: this one did nothing. */
  ran: boolean;
  /** Open holds found past their expiry. */
  due: number;
  /** HoldExpired events appended. */
  expired: number;
  /** Resolved meanwhile (captured, released, expired by another), or the read model was behind. */
  unchanged: number;
  /** Expiries that failed (logged; the next sweep tries again). */
  failed: number;
}

/**
 * Expires every open hold whose expiry is at or before `now`, if no other instance is sweeping. The
 * holds come from the `open_holds` read model, which may lag: the ledger decides, so a hold captured
 * or released meanwhile, or one not yet due, decides nothing, and a race with a capture is safe.
 */
export async function sweepExpiredHolds(deps: HoldExpiryDeps, now: Date): Promise<SweepResult> {
  const result: SweepResult = { ran: false, due: 0, expired: 0, unchanged: 0, failed: 0 };
  if (!(await deps.db.locks.tryAcquire(LOCK_KEY))) return result;
  try {
    result.ran = true;
    await sweep(deps, now, result);
  } finally {
    await deps.db.locks.release(LOCK_KEY).catch(() => undefined);
  }
  if (result.expired > 0) counters(deps).expired?.inc(result.expired);
  if (result.failed > 0) counters(deps).failed?.inc(result.failed);
  const log = {
    due: result.due,
    expired: result.expired,
    unchanged: result.unchanged,
    failed: result.failed,
  };
  if (result.expired > 0 || result.failed > 0) deps.logger.info(log, 'expired holds swept');
  else deps.logger.debug(log, 'expired holds swept');
  return result;
}

async function sweep(deps: HoldExpiryDeps, now: Date, result: SweepResult): Promise<void> {
  const pageSize = deps.pageSize ?? 500;
  // Rows stay until the projection sees the expiry: pages go by key, never from the start again.
  const seen = new Set<string>();
  let after: HoldKey | undefined;
  for (;;) {
    const page = await dueHolds(deps.db.db, { now, after, limit: pageSize });
    const fresh = page.filter((h) => {
      const key = `${h.userId}\u0000${h.holdId}`;
      if (seen.has(key)) return false;
      seen.add(key);
      return true;
    });
    result.due += fresh.length;
    for (let i = 0; i < fresh.length; i += CONCURRENCY) {
      await Promise.all(fresh.slice(i, i + CONCURRENCY).map((hold) => expireOne(deps, hold, now, result)));
    }
    const last = page[page.length - 1];
    if (!last || page.length < pageSize || fresh.length === 0) return;
    after = { expiresAt: last.expiresAt, userId: last.userId, holdId: last.holdId };
  }
}

async function expireOne(
  deps: HoldExpiryDeps,
  hold: OpenHold,
  now: Date,
  result: SweepResult,
): Promise<void> {
  try {
    const expired = await deps.ledger.expire({
      userId: hold.userId,
      holdId: hold.holdId,
      now,
      // Caused by the reservation, in the flow it belonged to.
      metadata: {
        actorId: HOLD_EXPIRY_ACTOR,
        correlationId: hold.correlationId,
        causationId: hold.reservedEventId,
      },
    });
    if (expired.events.length > 0) result.expired++;
    else result.unchanged++;
  } catch (err) {
    result.failed++;
    deps.logger.warn({ err, userId: hold.userId, holdId: hold.holdId }, 'could not expire a hold');
  }
}

function counters(deps: HoldExpiryDeps): { expired?: Counter; failed?: Counter } {
  const registry = deps.metrics?.registry;
  if (!registry) return {};
  const counter = (name: string, help: string): Counter =>
    (registry.getSingleMetric(name) as Counter | undefined) ??
    new Counter({ name, help, registers: [registry] });
  return {
    expired: counter('ledger_holds_expired_total', 'Holds given back by the expiry scheduler'),
    failed: counter('ledger_hold_expiry_failures_total', 'Hold expiries that failed and will be tried again'),
  };
}

export interface HoldExpiryScheduler {
  /** Sweeps every `intervalMs` until stopped. */
  start(): void;
  /** Stops, waiting for a sweep under way. */
  stop(): Promise<void>;
  /** One sweep now, as the timer would run it. */
  sweepExpiredHolds(now?: Date): Promise<SweepResult>;
}

/** Gives back holds past their expiry, every `intervalMs`; one instance at a time does the sweeping. */
export function createHoldExpiryScheduler(
  deps: HoldExpiryDeps & { clock: Clock; intervalMs: number },
): HoldExpiryScheduler {
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<unknown> | undefined;
  let stopped = true;

  const once = (now: Date = deps.clock.now()) => sweepExpiredHolds(deps, now);

  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      running = once()
        .catch((err: unknown) => deps.logger.warn({ err }, 'hold expiry sweep failed'))
        .finally(() => {
          running = undefined;
          schedule();
        });
    }, deps.intervalMs);
    // A CLI or test that forgets to stop it still exits.
    timer.unref();
  };

  return {
    start() {
      if (!stopped) return;
      stopped = false;
      schedule();
    },
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
    sweepExpiredHolds: once,
  };
}
