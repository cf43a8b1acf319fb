import type { CodeEvent } from '../events/codes';
import type { Projector } from './types';

/** Redeem codes with their use counts and redemptions, for admins. */
export const codesProjector: Projector = {
  name: 'codes',
  version: 1,
  eventTypes: ['CodeIssued', 'CodeUsed', 'CodeRevoked'],
  tables: ['codes', 'code_redemptions'],
  async apply(trx, events) {
    for (const recorded of events) {
      const e = { type: recorded.type, data: recorded.data } as CodeEvent;
      const position = String(recorded.position);
      switch (e.type) {
        case 'CodeIssued':
          await trx
            .insertInto('codes')
            .values({
              code: e.data.code,
              amount: String(e.data.amount),
              max_uses: e.data.maxUses,
              uses: 0,
              expires_at: e.data.expiresAt ? new Date(e.data.expiresAt) : null,
              revoked_at: null,
              batch_id: e.data.batchId,
              issued_by: e.data.issuedBy,
              created_at: new Date(e.data.issuedAt),
              last_position: position,
            })
            .onConflict((oc) => oc.column('code').doNothing())
            .execute();
          break;
        case 'CodeUsed': {
          const updated = await trx
            .updateTable('codes')
            .set((eb) => ({ uses: eb('uses', '+', 1), last_position: position }))
            .where('code', '=', e.data.code)
            .where('last_position', '<', position)
            .executeTakeFirst();
          if (updated.numUpdatedRows === 0n) break;
          await trx
            .insertInto('code_redemptions')
            .values({
              use_id: recorded.id,
              code: e.data.code,
              user_id: e.data.userId,
              amount: String(e.data.amount),
              used_at: new Date(e.data.usedAt),
            })
            .onConflict((oc) => oc.column('use_id').doNothing())
            .execute();
          break;
        }
        case 'CodeRevoked':
          await trx
            .updateTable('codes')
            .set({ revoked_at: new Date(e.data.revokedAt), last_position: position })
            .where('code', '=', e.data.code)
            .where('last_position', '<', position)
            .execute();
          break;
      }
    }
  },
};
