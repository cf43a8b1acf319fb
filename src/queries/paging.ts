import { sql, type SelectQueryBuilder } from 'kysely';
import { z } from 'zod';
import { BadRequest } from '../platform/errors';
import { holdsUnstorableText } from '../platform/text';

/** API.md lists: `{ items, next_cursor }`, `limit` 1–100 (default 20), an opaque `cursor`. */
export interface Page<T> {
  items: T[];
  next_cursor: string | null;
}

/**
 * Digits only: a number as JavaScript reads it would take `1e1`, `0x10` or ` 5`, and a repeated
 * parameter (an array) would be refused as "NaN".
 */
const Limit = z
  .preprocess(
    (v) => (typeof v === 'string' && /^[0-9]+$/.test(v) ? Number(v) : v),
    z.number({ error: 'must be a whole number from 1 to 100' }).int().min(1).max(100),
  )
  .default(20);

export const PageQuery = z.object({
  limit: Limit,
  cursor: z.string().max(500).optional(),
});

export function encodeCursor(values: unknown[]): string {
  return Buffer.from(JSON.stringify(values)).toString('base64url');
}

/**
 * The cursor's values, or undefined for a cursor we did not make: one holding text no row holds
 * (NUL, half a surrogate pair) too, which the database would refuse to compare.
 */
export function decodeCursor<T extends unknown[]>(cursor: string): T | undefined {
  try {
    const values: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    return Array.isArray(values) && !holdsUnstorableText(values) ? (values as T) : undefined;
  } catch {
    return undefined;
  }
}

const FOREIGN_CURSOR = 'cursor is not one this list gave out.';

/**
 * A newest-first cursor: the last item's creation time and id (or code). Anything else is a 400,
 * a time outside the years 1–9999 too: PostgreSQL holds no time much beyond them, and no item of
 * a list was made outside them.
 */
export function timeIdCursor(cursor: string | undefined): [Date, string] | undefined {
  if (cursor === undefined) return undefined;
  const values = decodeCursor<unknown[]>(cursor);
  const [at, id] = values ?? [];
  const when = typeof at === 'string' ? new Date(at) : undefined;
  const year = when?.getUTCFullYear() ?? NaN;
  if (!(year >= 1 && year <= 9999) || typeof id !== 'string' || values?.length !== 2) {
    throw new BadRequest(FOREIGN_CURSOR);
  }
  return [when!, id];
}

/**
 * A cursor of one whole number from 0 to `max` (a message's sequence, a log position), as its
 * digits: the column's type bounds it, and a number beyond it would fail the query. Else a 400.
 */
export function wholeNumberCursor(cursor: string | undefined, max: bigint): string | undefined {
  if (cursor === undefined) return undefined;
  const values = decodeCursor<unknown[]>(cursor);
  const [n] = values ?? [];
  const digits =
    typeof n === 'number' && Number.isSafeInteger(n) ? String(n) : typeof n === 'string' ? n : '';
  if (values?.length !== 1 || !/^\d{1,19}$/.test(digits) || BigInt(digits) > max) {
    throw new BadRequest(FOREIGN_CURSOR);
  }
  return digits;
}

/**
 * One page of `query`'s rows, newest first by (created_at, id), after the cursor: keyset paging, so
 * a page costs the same however deep it is and rows added meanwhile neither repeat nor vanish.
 */
export async function newestFirstPage<
  DB,
  TB extends keyof DB,
  Row extends { created_at: Date; id: string },
  V,
>(
  query: SelectQueryBuilder<DB, TB, Row>,
  opts: { limit: number; cursor?: string | undefined },
  view: (row: Row) => V,
): Promise<Page<V>> {
  const after = timeIdCursor(opts.cursor);
  const rows = (await (
    after ? query.where(sql<boolean>`(created_at, id) < (${after[0]}, ${after[1]})`) : query
  )
    .orderBy(sql`created_at desc, id desc`)
    .limit(opts.limit + 1)
    .execute()) as Row[];
  const page = rows.slice(0, opts.limit);
  const last = page[page.length - 1];
  return {
    items: page.map(view),
    next_cursor:
      rows.length > opts.limit && last ? encodeCursor([last.created_at.toISOString(), last.id]) : null,
  };
}

/** One page of a short list held in memory (the models, the read models), by offset. */
export function pageOf<T>(all: readonly T[], opts: { limit: number; cursor?: string | undefined }): Page<T> {
  const from = Number(wholeNumberCursor(opts.cursor, BigInt(all.length)) ?? 0);
  const to = from + opts.limit;
  return { items: all.slice(from, to), next_cursor: to < all.length ? encodeCursor([to]) : null };
}
