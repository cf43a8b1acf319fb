import type { Kysely } from 'kysely';
import type { Database } from '../platform/schema';
import { encodeCursor, wholeNumberCursor, type Page } from './paging';

export interface CreditHistoryItem {
  id: string;
  type: string;
  amount: number;
  balance_after: number;
  reason: string | null;
  ref: string | null;
  created_at: string;
}

export async function balanceOf(db: Kysely<Database>, userId: string) {
  const row = await db
    .selectFrom('balances')
    .select(['posted', 'held'])
    .where('user_id', '=', userId)
    .executeTakeFirst();
  const balance = Number(row?.posted ?? 0);
  const held = Number(row?.held ?? 0);
  return { balance, held, available: balance - held };
}

/** A user's balance movements, newest first, paged by position. */
export async function creditHistory(
  db: Kysely<Database>,
  userId: string,
  limit: number,
  cursor: string | undefined,
): Promise<Page<CreditHistoryItem>> {
  const before = wholeNumberCursor(cursor, 2n ** 63n - 1n);
  let query = db.selectFrom('ledger_entries').selectAll().where('user_id', '=', userId);
  if (before !== undefined) query = query.where('position', '<', before);
  const rows = await query
    .orderBy('position', 'desc')
    .limit(limit + 1)
    .execute();
  const page = rows.slice(0, limit);
  const last = page[page.length - 1];
  return {
    items: page.map((r) => ({
      id: r.id,
      type: r.type,
      amount: Number(r.amount),
      balance_after: Number(r.balance_after),
      reason: r.reason,
      ref: r.ref,
      created_at: r.created_at.toISOString(),
    })),
    next_cursor: rows.length > limit && last ? encodeCursor([last.position]) : null,
  };
}
