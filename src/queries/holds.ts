import type { Kysely } from 'kysely';
import type { Database } from '../platform/schema';

export interface OpenHold {
  userId: string;
  holdId: string;
  amount: number;
  expiresAt: Date;
  /** The CreditsReserved event: the cause of whatever resolves the hold. */
  reservedEventId: string;
  correlationId: string | null;
}

/** Where a page of due holds ended: the next page starts after it. */
export interface HoldKey {
  expiresAt: Date;
  userId: string;
  holdId: string;
}

const toHold = (r: {
  user_id: string;
  hold_id: string;
  amount: string;
  expires_at: Date;
  reserved_event_id: string;
  correlation_id: string | null;
}): OpenHold => ({
  userId: r.user_id,
  holdId: r.hold_id,
  amount: Number(r.amount),
  expiresAt: r.expires_at,
  reservedEventId: r.reserved_event_id,
  correlationId: r.correlation_id,
});

/** Open holds whose expiry is at or before `now`, oldest first, one keyset page after `after`. */
export async function dueHolds(
  db: Kysely<Database>,
  input: { now: Date; after?: HoldKey | undefined; limit: number },
): Promise<OpenHold[]> {
  let query = db
    .selectFrom('open_holds')
    .select(['user_id', 'hold_id', 'amount', 'expires_at', 'reserved_event_id', 'correlation_id'])
    .where('expires_at', '<=', input.now);
  const after = input.after;
  if (after) {
    query = query.where((eb) =>
      eb(
        eb.refTuple('expires_at', 'user_id', 'hold_id'),
        '>',
        eb.tuple(after.expiresAt, after.userId, after.holdId),
      ),
    );
  }
  const rows = await query
    .orderBy('expires_at')
    .orderBy('user_id')
    .orderBy('hold_id')
    .limit(input.limit)
    .execute();
  return rows.map(toHold);
}

/** A user's open holds, soonest to expire first. */
export async function openHoldsOf(db: Kysely<Database>, userId: string): Promise<OpenHold[]> {
  const rows = await db
    .selectFrom('open_holds')
    .select(['user_id', 'hold_id', 'amount', 'expires_at', 'reserved_event_id', 'correlation_id'])
    .where('user_id', '=', userId)
    .orderBy('expires_at')
    .orderBy('hold_id')
    .execute();
  return rows.map(toHold);
}
