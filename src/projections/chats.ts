import { sql, type Selectable } from 'kysely';
import { CHAT_EVENT_TYPES, type ChatEvent, type ChatMessage } from '../events/chats';
import type { ChatsTable } from '../platform/schema';
import type { Projector } from './types';

const messageRow = (chatId: string, m: ChatMessage) => ({
  id: m.messageId,
  chat_id: chatId,
  seq: m.seq,
  role: m.role,
  content: m.content,
  visible: m.visible,
  status: m.status,
  task_id: m.taskId,
  created_at: new Date(m.sentAt),
});

/** What the events after ChatStarted change of the chat's row, folded in log order. */
interface Changes {
  first_position: string;
  last_position: string;
  title: string | null;
  deleted: boolean;
  updated_at: Date;
  last_message_at: Date | null;
}

/**
 * A chat's events in one batch: the row its ChatStarted inserts, with the later events folded in,
 * and the later events' changes for a row that is already there. Messages are those a delete later
 * in the batch leaves standing.
 */
interface ChatFold {
  started: Selectable<ChatsTable> | null;
  /** The preset's messages ChatStarted copies, inserted only with the row it inserts. */
  opening: ChatMessage[];
  changes: Changes | null;
  sent: ChatMessage[];
  last: bigint;
}

/**
 * Chats and their messages. Every event of a chat first moves the chat row's `last_position`; an
 * event the row has already seen changes nothing, so its message is not inserted again either —
 * not even after the chat was deleted and its messages removed. A batch is folded per chat and
 * written in two statements, however many events it has.
 */
export const chatsProjector: Projector = {
  name: 'chats',
  version: 1,
  eventTypes: CHAT_EVENT_TYPES,
  tables: ['chats', 'chat_messages'],
  async apply(trx, events) {
    const folds = new Map<string, ChatFold>();
    for (const recorded of events) {
      const e = { type: recorded.type, data: recorded.data } as ChatEvent;
      const position = String(recorded.position);
      let fold = folds.get(e.data.chatId);
      // Not newer than an earlier event of its chat: one by one, the row would have seen it already.
      if (fold && recorded.position <= fold.last) continue;
      fold ??= { started: null, opening: [], changes: null, sent: [], last: recorded.position };
      folds.set(e.data.chatId, fold);
      fold.last = recorded.position;
      if (e.type === 'ChatStarted') {
        // Inserted only if the chat has no row yet; a row already there keeps what it has.
        const d = e.data;
        const at = new Date(d.startedAt);
        fold.started = {
          id: d.chatId,
          owner_id: d.ownerId,
          title: d.title,
          preset_id: d.presetId,
          model: d.model,
          parameters: d.parameters,
          deleted: false,
          created_at: at,
          updated_at: at,
          last_message_at: d.messages.length > 0 ? at : null,
          last_position: position,
        };
        fold.opening = d.messages;
        continue;
      }
      const at = new Date(
        e.type === 'ChatRenamed'
          ? e.data.renamedAt
          : e.type === 'ChatDeleted'
            ? e.data.deletedAt
            : e.data.sentAt,
      );
      const changes = (fold.changes ??= {
        first_position: position,
        last_position: position,
        title: null,
        deleted: false,
        updated_at: at,
        last_message_at: null,
      });
      changes.last_position = position;
      changes.updated_at = at;
      if (e.type === 'ChatRenamed') changes.title = e.data.title;
      if (e.type === 'ChatDeleted') {
        changes.deleted = true;
        fold.opening = [];
        fold.sent = [];
      }
      if (e.type === 'MessageSent') {
        changes.last_message_at = at;
        fold.sent.push(e.data);
      }
      if (fold.started) {
        fold.started.last_position = position;
        fold.started.updated_at = at;
        if (e.type === 'ChatRenamed') fold.started.title = e.data.title;
        if (e.type === 'ChatDeleted') fold.started.deleted = true;
        if (e.type === 'MessageSent') fold.started.last_message_at = at;
      }
    }
    const started = [...folds.values()].flatMap((f) => (f.started ? [f.started] : []));
    const changed = [...folds.entries()].flatMap(([id, f]) => (f.changes ? [{ id, ...f.changes }] : []));
    // The insert and the update see the table as it was before the statement: a chat started in
    // this batch is inserted whole, and the update changes only rows from earlier batches. Its guard
    // is the first change's position: the checkpoint moves with the rows, so a row has seen either
    // none of a batch's events or all of them.
    const written = await sql<{ id: string; started: boolean }>`
      with started as (
        insert into chats
        select * from json_populate_recordset(null::chats, ${JSON.stringify(started)}::json)
        on conflict (id) do nothing
        returning id
      ),
      changed as (
        update chats set
          title = coalesce(u.title, chats.title),
          deleted = chats.deleted or u.deleted,
          updated_at = u.updated_at,
          last_message_at = coalesce(u.last_message_at, chats.last_message_at),
          last_position = u.last_position
        from json_to_recordset(${JSON.stringify(changed)}::json) as u(
          id text, first_position bigint, last_position bigint, title text, deleted boolean,
          updated_at timestamptz, last_message_at timestamptz)
        where chats.id = u.id and chats.last_position < u.first_position
        returning chats.id, u.deleted
      ),
      -- The history stays in the event log; the read model keeps no copy of a deleted chat.
      purged as (
        delete from chat_messages where chat_id in (select id from changed where deleted)
      )
      select id, true as started from started
      union all select id, false from changed`.execute(trx);
    // Messages go with the rows written (not with events the rows had seen), after the purge.
    const messages = written.rows.flatMap(({ id, started }) => {
      const f = folds.get(id)!;
      return [...(started ? f.opening : []), ...f.sent].map((m) => messageRow(id, m));
    });
    if (messages.length === 0) return;
    await sql`
      insert into chat_messages
      select * from json_populate_recordset(null::chat_messages, ${JSON.stringify(messages)}::json)
      on conflict (id) do nothing`.execute(trx);
  },
};
