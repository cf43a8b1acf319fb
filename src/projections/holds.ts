import { sql } from 'kysely';
import type { LedgerEvent } from '../events/ledger';
import { prepared } from '../platform/prepared';
import type { Projector } from './types';

type HoldEvent = Extract<
  LedgerEvent,
  { type: 'CreditsReserved' | 'CreditsCaptured' | 'CreditsReleased' | 'HoldExpired' }
>;

const HOLD_EVENT_TYPES: readonly HoldEvent['type'][] = [
  'CreditsReserved',
  'CreditsCaptured',
  'CreditsReleased',
  'HoldExpired',
];

interface OpenRow {
  userId: string;
  holdId: string;
  amount: number;
  expiresAt: string;
  position: bigint;
  eventId: string;
  correlationId: string | null;
}

/**
 * Open holds (reserved, not yet captured, released or expired): what the hold-expiry scheduler
 * sweeps. A resolved hold's row is deleted, so a per-user watermark (`open_holds_seen`) is what
 * keeps a replayed reservation from bringing it back: an event at or below it changes nothing.
 * A batch is folded in memory first and written in four statements, however many events it has.
 */
export const openHoldsProjector: Projector = {
  name: 'open_holds',
  version: 1,
  eventTypes: HOLD_EVENT_TYPES,
  tables: ['open_holds', 'open_holds_seen'],
  async apply(trx, events) {
    if (events.length === 0) return;
    const users = [...new Set(events.map((e) => (e.data as HoldEvent['data']).userId))];
    const seenRows = await trx
      .selectFrom('open_holds_seen')
      .select(['user_id', 'last_position'])
      .where(sql<boolean>`user_id = any(${users}::text[])`)
      .modifyEnd(prepared)
      .execute();
    const seen = new Map(seenRows.map((r) => [r.user_id, BigInt(r.last_position)]));

    // The last word on each hold in this batch: a row to write, or null to delete it.
    const holds = new Map<string, { userId: string; holdId: string; open: OpenRow | null }>();
    const latest = new Map<string, bigint>();
    for (const recorded of events) {
      const e = { type: recorded.type, data: recorded.data } as HoldEvent;
      const { userId, holdId } = e.data;
      if (recorded.position <= (seen.get(userId) ?? -1n)) continue;
      if (recorded.position > (latest.get(userId) ?? -1n)) latest.set(userId, recorded.position);
      const open: OpenRow | null =
        e.type === 'CreditsReserved'
          ? {
              userId,
              holdId,
              amount: e.data.amount,
              expiresAt: e.data.expiresAt,
              position: recorded.position,
              eventId: recorded.id,
              correlationId: recorded.metadata.correlationId ?? recorded.metadata.requestId ?? null,
            }
          : null;
      holds.set(`${userId}\u0000${holdId}`, { userId, holdId, open });
    }
    if (latest.size === 0) return;

    const closed = [...holds.values()].filter((h) => h.open === null);
    if (closed.length > 0) {
      await sql`
        delete from open_holds h
        using unnest(${closed.map((h) => h.userId)}::text[], ${closed.map((h) => h.holdId)}::text[])
          as c(user_id, hold_id)
        where h.user_id = c.user_id and h.hold_id = c.hold_id ${prepared}`.execute(trx);
    }
    const opened = [...holds.values()].flatMap((h) => (h.open ? [h.open] : []));
    if (opened.length > 0) {
      await sql`
        insert into open_holds
          (user_id, hold_id, amount, expires_at, reserved_position, reserved_event_id, correlation_id)
        select * from unnest(
          ${opened.map((o) => o.userId)}::text[],
          ${opened.map((o) => o.holdId)}::text[],
          ${opened.map((o) => String(o.amount))}::bigint[],
          ${opened.map((o) => o.expiresAt)}::timestamptz[],
          ${opened.map((o) => String(o.position))}::bigint[],
          ${opened.map((o) => o.eventId)}::text[],
          ${opened.map((o) => o.correlationId)}::text[])
        on conflict (user_id, hold_id) do update set
          amount = excluded.amount,
          expires_at = excluded.expires_at,
          reserved_position = excluded.reserved_position,
          reserved_event_id = excluded.reserved_event_id,
          correlation_id = excluded.correlation_id ${prepared}`.execute(trx);
    }
    await sql`
      insert into open_holds_seen (user_id, last_position)
      select * from unnest(${[...latest.keys()]}::text[], ${[...latest.values()].map(String)}::bigint[])
      on conflict (user_id) do update set last_position = excluded.last_position
      where open_holds_seen.last_position < excluded.last_position ${prepared}`.execute(trx);
  },
};
