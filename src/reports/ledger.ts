import type { EventStore, LogPosition } from '../eventstore/port';
import type { Db } from '../platform/db';
import {
  BalanceFold,
  BalancesFold,
  StatementFold,
  SummaryFold,
  type AccountBalance,
  type BalanceAt,
  type LedgerFold,
  type Statement,
  type Summary,
} from './folds';
import {
  ledgerLogReader,
  replayLedgerLog,
  replayLedgerStream,
  type LogReader,
  type ReplayProgress,
} from './replay';
import type { LedgerRecord } from './records';
import { VerifyFold, type Verification } from './verify';

/**
 * Finance reports over the credit ledger. Every figure comes from replaying the event store; the
 * read models are never trusted, and only `reconcile` reads one, to compare it with the replay.
 *
 * Times are the ones each event states (`grantedAt`, `capturedAt`, …): the time of the command
 * that decided it, stored in the event, so a replay always places an event in the same period.
 * Periods are half-open, [from, to); a balance "at" a time includes what occurred at that instant.
 *
 * One account's reports read its stream only; log-wide reports read the ledger streams from the
 * global log up to its head at the start, and say which position they are as of.
 */
export interface LedgerReports {
  statement(userId: string, from: Date, to: Date): Promise<Statement>;
  summary(from: Date, to: Date, options?: ReportOptions): Promise<Summary & AsOf>;
  balanceAt(userId: string, at: Date): Promise<BalanceAt>;
  reconcile(options?: ReportOptions): Promise<Reconciliation>;
  verify(options?: ReportOptions): Promise<Verification & AsOf>;
}

export interface ReportOptions {
  onProgress?: (p: ReplayProgress) => void;
  /** Report as of this point of the log instead of its head. */
  upTo?: LogPosition;
  /** Events per read of the log (default 5,000). */
  batchSize?: number;
}

export interface AsOf {
  /** The global position the replay went up to (int64 as a string). */
  as_of_position: string;
}

export interface ReconcileDifference {
  user_id: string;
  /** `missing_row`: the log has the account, the projection not; `unexpected_row`: the reverse. */
  kind: 'missing_row' | 'unexpected_row' | 'mismatch';
  replayed: AccountBalance | null;
  projected: AccountBalance | null;
}

export interface Reconciliation extends AsOf {
  /** The ledger projection's checkpoint the replay was compared at, or null if it has none. */
  checkpoint: string | null;
  accounts: number;
  differences: ReconcileDifference[];
  ok: boolean;
}

/** The ledger projection whose `balances` table reconcile compares against. */
const LEDGER_PROJECTION = 'ledger';

export function createLedgerReports(deps: {
  store: EventStore;
  db: Db;
  /** How the log is read; default: the store's own log or its port (see ledgerLogReader). */
  read?: LogReader;
}): LedgerReports {
  const { store } = deps;
  const db = deps.db.db;
  const read = deps.read ?? ledgerLogReader(store, deps.db);

  async function overLog<R>(fold: LedgerFold<R>, options: ReportOptions = {}): Promise<R & AsOf> {
    const { upTo } = await replayLedgerLog(store, read, feed(fold), options);
    return { ...fold.result(), as_of_position: String(upTo.position) };
  }

  async function overStream<R>(userId: string, fold: LedgerFold<R>): Promise<R> {
    await replayLedgerStream(store, userId, feed(fold));
    return fold.result();
  }

  return {
    statement: (userId, from, to) => overStream(userId, new StatementFold(userId, from, to)),
    balanceAt: (userId, at) => overStream(userId, new BalanceFold(userId, at)),
    summary: (from, to, options) => overLog(new SummaryFold(from, to), options),
    verify: (options) => overLog(new VerifyFold(), options),

    async reconcile(options = {}) {
      // The projection's rows and its checkpoint from one snapshot, then the log replayed to that
      // same checkpoint: a projection that is merely behind shows no differences.
      const { checkpoint, rows } = await db
        .transaction()
        .setIsolationLevel('repeatable read')
        .execute(async (trx) => {
          const cp = await trx
            .selectFrom('projection_checkpoints')
            .select(['txid', 'position'])
            .where('name', '=', LEDGER_PROJECTION)
            .executeTakeFirst();
          const balances = await trx.selectFrom('balances').select(['user_id', 'posted', 'held']).execute();
          return { checkpoint: cp, rows: balances };
        });
      const upTo = checkpoint
        ? { txid: BigInt(checkpoint.txid), position: BigInt(checkpoint.position) }
        : options.upTo;
      const fold = new BalancesFold();
      const replay = await replayLedgerLog(store, read, feed(fold), {
        ...(upTo ? { upTo } : {}),
        ...(options.onProgress ? { onProgress: options.onProgress } : {}),
        ...(options.batchSize ? { batchSize: options.batchSize } : {}),
      });
      const replayed = fold.result();
      const projected = new Map(
        rows.map((r) => [r.user_id, { posted: Number(r.posted), held: Number(r.held) }] as const),
      );
      const users = [...new Set([...replayed.keys(), ...projected.keys()])].sort();
      const differences: ReconcileDifference[] = [];
      for (const user_id of users) {
        const r = replayed.get(user_id) ?? null;
        const p = projected.get(user_id) ?? null;
        if (r && p && r.posted === p.posted && r.held === p.held) continue;
        const kind = !p ? 'missing_row' : !r ? 'unexpected_row' : 'mismatch';
        differences.push({ user_id, kind, replayed: r, projected: p });
      }
      return {
        as_of_position: String(replay.upTo.position),
        checkpoint: checkpoint ? String(checkpoint.position) : null,
        accounts: users.length,
        differences,
        ok: differences.length === 0,
      };
    },
  };
}

function feed(fold: LedgerFold<unknown>): (events: readonly LedgerRecord[]) => void {
  return (events) => {
    for (let i = 0; i < events.length; i++) fold.apply(events[i]!);
  };
}
