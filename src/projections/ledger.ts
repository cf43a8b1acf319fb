import { sql } from 'kysely';
import { LEDGER_EVENT_TYPES, type LedgerEvent } from '../events/ledger';
import { prepared } from '../platform/prepared';
import { pgTimestamp } from './json';
import type { Projector } from './types';

/** What an event does to the balance (posted) and to the open holds, and whether it is a history entry. */
function effect(e: LedgerEvent): {
  posted: number;
  held: number;
  entry: { reason: string | null; ref: string | null } | null;
} {
  switch (e.type) {
    case 'CreditsGranted':
      return { posted: e.data.amount, held: 0, entry: { reason: e.data.reason, ref: e.data.grantId } };
    case 'CodeRedeemed':
      return { posted: e.data.amount, held: 0, entry: { reason: 'code redeemed', ref: e.data.code } };
    case 'CreditsReserved':
      return { posted: 0, held: e.data.amount, entry: null };
    case 'CreditsCaptured':
      return { posted: -e.data.amount, held: -e.data.amount, entry: { reason: 'usage', ref: e.data.holdId } };
    case 'CreditsReleased':
    case 'HoldExpired':
      return { posted: 0, held: -e.data.amount, entry: null };
    case 'CreditsCharged':
      return { posted: -e.data.amount, held: 0, entry: { reason: e.data.reason, ref: e.data.chargeId } };
    case 'CreditsRefunded':
      return { posted: e.data.amount, held: 0, entry: { reason: e.data.reason, ref: e.data.chargeId } };
    case 'CreditsAdjusted':
      return { posted: e.data.amount, held: 0, entry: { reason: e.data.reason, ref: e.data.corrects } };
  }
}

const ENTRY_TYPES: Record<LedgerEvent['type'], string> = {
  CreditsGranted: 'granted',
  CodeRedeemed: 'redeemed',
  CreditsReserved: 'reserved',
  CreditsCaptured: 'captured',
  CreditsReleased: 'released',
  HoldExpired: 'expired',
  CreditsCharged: 'charged',
  CreditsRefunded: 'refunded',
  CreditsAdjusted: 'adjusted',
};

/**
 * Balances (posted, held) and the history of balance movements with the balance after each. One
 * projector owns both tables, so an entry's balance_after is the balance row it changed. A row
 * changes only for an event newer than the one it has seen: replaying a batch changes nothing.
 * A batch is written in one statement, however many events and users it holds.
 */
export const ledgerProjector: Projector = {
  name: 'ledger',
  version: 1,
  eventTypes: LEDGER_EVENT_TYPES,
  tables: ['balances', 'ledger_entries'],
  async apply(trx, events) {
    const rows = [];
    const latest = new Map<string, bigint>();
    for (const recorded of events) {
      const e = { type: recorded.type, data: recorded.data } as LedgerEvent;
      const userId = e.data.userId;
      // Not newer than an earlier event of its user: one by one, the row would have seen it already.
      if (recorded.position <= (latest.get(userId) ?? -1n)) continue;
      latest.set(userId, recorded.position);
      const { posted, held, entry } = effect(e);
      rows.push({
        i: rows.length,
        id: recorded.id,
        user_id: userId,
        position: String(recorded.position),
        posted: String(posted),
        held: String(held),
        type: entry ? ENTRY_TYPES[e.type] : null,
        reason: entry?.reason ?? null,
        ref: entry?.ref ?? null,
        created_at: pgTimestamp(recorded.recordedAt),
      });
    }
    if (rows.length === 0) return;
    // The balance rows are read in the statement that writes them: this runner is their only writer.
    await sql`
      with ev as (
        select * from json_to_recordset(${JSON.stringify(rows)}::json) as x(
          i int, id uuid, user_id text, position bigint, posted bigint, held bigint,
          type text, reason text, ref text, created_at timestamptz)
      ),
      -- The events newer than their row, each with the balance right after it.
      applied as (
        select ev.*,
          coalesce(b.posted, 0) + sum(ev.posted) over (partition by ev.user_id order by ev.i) as balance_after
        from ev left join balances b on b.user_id = ev.user_id
        where b.last_position is null or ev.position > b.last_position
      ),
      moved as (
        insert into balances (user_id, posted, held, last_position)
        select user_id, sum(posted), sum(held), max(position) from applied group by user_id
        on conflict (user_id) do update set
          posted = balances.posted + excluded.posted,
          held = balances.held + excluded.held,
          last_position = excluded.last_position
        where balances.last_position < excluded.last_position
      )
      insert into ledger_entries (id, user_id, position, type, amount, balance_after, reason, ref, created_at)
      select id, user_id, position, type, posted, balance_after, reason, ref, created_at
      from applied
      where type is not null
      on conflict (id) do nothing ${prepared}`.execute(trx);
  },
};
