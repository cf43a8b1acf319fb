import type { Kysely } from 'kysely';
import type { Database } from '../platform/schema';
import { encodeCursor, timeIdCursor, type Page } from './paging';

export type CodeStatus = 'active' | 'used_up' | 'expired' | 'revoked';

export interface CodeView {
  code: string;
  amount: number;
  max_uses: number;
  uses: number;
  expires_at: string | null;
  status: CodeStatus;
  created_at: string;
}

type CodeRow = Database['codes'] extends infer T ? { [K in keyof T]: T[K] } : never;

function statusOf(
  r: Pick<CodeRow, 'revoked_at' | 'expires_at' | 'uses' | 'max_uses'>,
  now: Date,
): CodeStatus {
  if (r.revoked_at) return 'revoked';
  if (r.expires_at && r.expires_at.getTime() <= now.getTime()) return 'expired';
  if (r.uses >= r.max_uses) return 'used_up';
  return 'active';
}

function view(r: CodeRow, now: Date): CodeView {
  return {
    code: r.code,
    amount: Number(r.amount),
    max_uses: r.max_uses,
    uses: r.uses,
    expires_at: r.expires_at?.toISOString() ?? null,
    status: statusOf(r, now),
    created_at: r.created_at.toISOString(),
  };
}

/** Codes, newest first, optionally by status. */
export async function listCodes(
  db: Kysely<Database>,
  opts: { limit: number; cursor?: string | undefined; status?: CodeStatus | undefined; now: Date },
): Promise<Page<CodeView>> {
  let query = db.selectFrom('codes').selectAll();
  const after = timeIdCursor(opts.cursor);
  if (after) {
    query = query.where((eb) =>
      eb.or([
        eb('created_at', '<', after[0]),
        eb.and([eb('created_at', '=', after[0]), eb('code', '>', after[1])]),
      ]),
    );
  }
  const now = opts.now;
  if (opts.status === 'revoked') query = query.where('revoked_at', 'is not', null);
  else if (opts.status) {
    query = query.where('revoked_at', 'is', null);
    if (opts.status === 'expired') query = query.where('expires_at', '<=', now);
    else {
      query = query.where((eb) => eb.or([eb('expires_at', 'is', null), eb('expires_at', '>', now)]));
      query = query.where((eb) =>
        opts.status === 'used_up'
          ? eb('uses', '>=', eb.ref('max_uses'))
          : eb('uses', '<', eb.ref('max_uses')),
      );
    }
  }
  const rows = await query
    .orderBy('created_at', 'desc')
    .orderBy('code')
    .limit(opts.limit + 1)
    .execute();
  const page = rows.slice(0, opts.limit);
  const last = page[page.length - 1];
  return {
    items: page.map((r) => view(r, now)),
    next_cursor:
      rows.length > opts.limit && last ? encodeCursor([last.created_at.toISOString(), last.code]) : null,
  };
}

export async function findCode(db: Kysely<Database>, code: string, now: Date) {
  const row = await db.selectFrom('codes').selectAll().where('code', '=', code).executeTakeFirst();
  if (!row) return undefined;
  const redemptions = await db
    .selectFrom('code_redemptions')
    .select(['user_id', 'amount', 'used_at'])
    .where('code', '=', code)
    .orderBy('used_at')
    .execute();
  return {
    ...view(row, now),
    redemptions: redemptions.map((r) => ({
      user_id: r.user_id,
      amount: Number(r.amount),
      used_at: r.used_at.toISOString(),
    })),
  };
}
