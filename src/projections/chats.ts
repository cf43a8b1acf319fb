import type { Kysely } from 'kysely';
import { CHAT_EVENT_TYPES, type ChatEvent, type ChatMessage } from '../events/chats';
import type { Database } from '../platform/schema';
import type { Projector } from './types';

async function insertMessages(trx: Kysely<Database>, chatId: string, messages: readonly ChatMessage[]) {
  if (messages.length === 0) return;
  await trx
    .insertInto('chat_messages')
    .values(
      messages.map((m) => ({
        id: m.messageId,
        chat_id: chatId,
        seq: m.seq,
        role: m.role,
        content: JSON.stringify(m.content),
        visible: m.visible,
        status: m.status,
        task_id: m.taskId,
        created_at: new Date(m.sentAt),
      })),
    )
    .onConflict((oc) => oc.column('id').doNothing())
    .execute();
}

/**
 * Chats and their messages. Every event of a chat first moves the chat row's `last_position`; an
 * event the row has already seen changes nothing, so its message is not inserted again either —
 * not even after the chat was deleted and its messages removed.
 */
export const chatsProjector: Projector = {
  name: 'chats',
  version: 1,
  eventTypes: CHAT_EVENT_TYPES,
  tables: ['chats', 'chat_messages'],
  async apply(trx, events) {
    for (const recorded of events) {
      const e = { type: recorded.type, data: recorded.data } as ChatEvent;
      const position = String(recorded.position);
      switch (e.type) {
        case 'ChatStarted': {
          const d = e.data;
          const at = new Date(d.startedAt);
          const inserted = await trx
            .insertInto('chats')
            .values({
              id: d.chatId,
              owner_id: d.ownerId,
              title: d.title,
              preset_id: d.presetId,
              model: d.model,
              parameters: JSON.stringify(d.parameters),
              deleted: false,
              created_at: at,
              updated_at: at,
              last_message_at: d.messages.length > 0 ? at : null,
              last_position: position,
            })
            .onConflict((oc) => oc.column('id').doNothing())
            .returning('id')
            .executeTakeFirst();
          if (inserted) await insertMessages(trx, d.chatId, d.messages);
          break;
        }
        case 'ChatRenamed':
          await trx
            .updateTable('chats')
            .set({ title: e.data.title, updated_at: new Date(e.data.renamedAt), last_position: position })
            .where('id', '=', e.data.chatId)
            .where('last_position', '<', position)
            .execute();
          break;
        case 'ChatDeleted': {
          const updated = await trx
            .updateTable('chats')
            .set({ deleted: true, updated_at: new Date(e.data.deletedAt), last_position: position })
            .where('id', '=', e.data.chatId)
            .where('last_position', '<', position)
            .executeTakeFirst();
          // The history stays in the event log; the read model keeps no copy of a deleted chat.
          if (updated.numUpdatedRows > 0n) {
            await trx.deleteFrom('chat_messages').where('chat_id', '=', e.data.chatId).execute();
          }
          break;
        }
        case 'MessageSent': {
          const { chatId, ...message } = e.data;
          const at = new Date(message.sentAt);
          const updated = await trx
            .updateTable('chats')
            .set({ updated_at: at, last_message_at: at, last_position: position })
            .where('id', '=', chatId)
            .where('last_position', '<', position)
            .executeTakeFirst();
          if (updated.numUpdatedRows > 0n) await insertMessages(trx, chatId, [message]);
          break;
        }
      }
    }
  },
};
