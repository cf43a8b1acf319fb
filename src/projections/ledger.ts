import { sql } from 'kysely';
import { LEDGER_EVENT_TYPES, type LedgerEvent } from '../events/ledger';
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
 */
export const ledgerProjector: Projector = {
  name: 'ledger',
  version: 1,
  eventTypes: LEDGER_EVENT_TYPES,
  tables: ['balances', 'ledger_entries'],
  async apply(trx, events) {
    for (const recorded of events) {
      const e = { type: recorded.type, data: recorded.data } as LedgerEvent;
      const { posted, held, entry } = effect(e);
      const userId = e.data.userId;
      const position = String(recorded.position);
      const res = await sql<{ posted: string }>`
        insert into balances (user_id, posted, held, last_position)
        values (${userId}, ${posted}, ${held}, ${position})
        on conflict (user_id) do update set
          posted = balances.posted + excluded.posted,
          held = balances.held + excluded.held,
          last_position = excluded.last_position
        where balances.last_position < excluded.last_position
        returning posted`.execute(trx);
      const after = res.rows[0];
      if (!after || !entry) continue; // seen before, or not a balance movement
      await trx
        .insertInto('ledger_entries')
        .values({
          id: recorded.id,
          user_id: userId,
          position,
          type: ENTRY_TYPES[e.type],
          amount: String(posted),
          balance_after: after.posted,
          reason: entry.reason,
          ref: entry.ref,
          created_at: recorded.recordedAt,
        })
        .onConflict((oc) => oc.column('id').doNothing())
        .execute();
    }
  },
};
