import type { Kysely, UpdateObject } from 'kysely';
import { PRESET_EVENT_TYPES, type PresetEvent } from '../events/presets';
import type { Database } from '../platform/schema';
import type { Projector } from './types';

/** Changes one preset row, only for an event newer than the last it has seen. */
async function updatePreset(
  trx: Kysely<Database>,
  presetId: string,
  position: string,
  set: UpdateObject<Database, 'presets'>,
) {
  await trx
    .updateTable('presets')
    .set(set)
    .set({ last_position: position })
    .where('id', '=', presetId)
    .where('last_position', '<', position)
    .execute();
}

/**
 * Presets as `GET /presets` lists them. A deleted preset keeps its row (marked) so that replaying
 * its creation cannot bring it back.
 */
export const presetsProjector: Projector = {
  name: 'presets',
  version: 1,
  eventTypes: PRESET_EVENT_TYPES,
  tables: ['presets'],
  async apply(trx, events) {
    for (const recorded of events) {
      const e = { type: recorded.type, data: recorded.data } as PresetEvent;
      const position = String(recorded.position);
      switch (e.type) {
        case 'PresetCreated': {
          const d = e.data;
          await trx
            .insertInto('presets')
            .values({
              id: d.presetId,
              owner_id: d.ownerId,
              name: d.name,
              description: d.description,
              model: d.model,
              parameters: JSON.stringify(d.parameters),
              messages: JSON.stringify(d.messages),
              public: d.public,
              deleted: false,
              created_at: new Date(d.createdAt),
              updated_at: new Date(d.createdAt),
              last_position: position,
            })
            .onConflict((oc) => oc.column('id').doNothing())
            .execute();
          break;
        }
        case 'PresetUpdated': {
          const d = e.data;
          await updatePreset(trx, d.presetId, position, {
            ...(d.name !== undefined ? { name: d.name } : {}),
            ...(d.description !== undefined ? { description: d.description } : {}),
            ...(d.model !== undefined ? { model: d.model } : {}),
            ...(d.parameters !== undefined ? { parameters: JSON.stringify(d.parameters) } : {}),
            ...(d.messages !== undefined ? { messages: JSON.stringify(d.messages) } : {}),
            ...(d.public !== undefined ? { public: d.public } : {}),
            updated_at: new Date(d.updatedAt),
          });
          break;
        }
        case 'PresetDeleted':
          await updatePreset(trx, e.data.presetId, position, {
            deleted: true,
            updated_at: new Date(e.data.deletedAt),
          });
          break;
      }
    }
  },
};
