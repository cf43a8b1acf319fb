import { sql, type Kysely } from 'kysely';
import { CHAT_EVENT_TYPES, type ChatEvent, type ChatMessage } from '../events/chats';
import type { Database } from '../platform/schema';
import type { RecordedEvent } from '../eventstore/port';
import { prepared } from '../platform/prepared';
import { groupByKey } from './batch';
import { jsonChunkPairs, jsonChunks, pgTimestamp } from './json';
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
  created_at: pgTimestamp(new Date(m.sentAt)),
});

const eventTime = (e: Exclude<ChatEvent, { type: 'ChatStarted' }>) =>
  new Date(
    e.type === 'ChatRenamed' ? e.data.renamedAt : e.type === 'ChatDeleted' ? e.data.deletedAt : e.data.sentAt,
  );

/** `first`, and the messages of `later` sent after `after`, less those a delete after them removes. */
function standing(later: readonly RecordedEvent[], after: bigint, first: ChatMessage[] = []): ChatMessage[] {
  let kept = [...first];
  for (const recorded of later) {
    if (recorded.position <= after) continue;
    const e = { type: recorded.type, data: recorded.data } as ChatEvent;
    if (e.type === 'ChatDeleted') kept = [];
    if (e.type === 'MessageSent') kept.push(e.data);
  }
  return kept;
}

/** What the events of `later` after `after` change: per kind, its newest value and its position. */
function changesAfter(later: readonly RecordedEvent[], after: bigint) {
  const c = {
    last_position: null as string | null,
    updated_at: null as string | null,
    title: null as string | null,
    title_position: null as string | null,
    deleted_position: null as string | null,
    last_message_at: null as string | null,
    last_message_position: null as string | null,
  };
  for (const recorded of later) {
    if (recorded.position <= after) continue;
    const e = { type: recorded.type, data: recorded.data } as Exclude<ChatEvent, { type: 'ChatStarted' }>;
    const position = String(recorded.position);
    c.last_position = position;
    c.updated_at = pgTimestamp(eventTime(e));
    if (e.type === 'ChatRenamed') Object.assign(c, { title: e.data.title, title_position: position });
    if (e.type === 'ChatDeleted') c.deleted_position = position;
    if (e.type === 'MessageSent')
      Object.assign(c, { last_message_at: c.updated_at, last_message_position: position });
  }
  return c;
}

const startedData = (start: RecordedEvent) =>
  start.data as Extract<ChatEvent, { type: 'ChatStarted' }>['data'];

/** The row a ChatStarted inserts, with the events after it (those before it found no row). */
function startedRow(start: RecordedEvent, later: readonly RecordedEvent[]) {
  const d = startedData(start);
  const at = pgTimestamp(new Date(d.startedAt));
  const c = changesAfter(later, start.position);
  return {
    id: d.chatId,
    owner_id: d.ownerId,
    title: c.title ?? d.title,
    preset_id: d.presetId,
    model: d.model,
    parameters: d.parameters,
    deleted: c.deleted_position !== null,
    created_at: at,
    updated_at: c.updated_at ?? at,
    last_message_at: c.last_message_at ?? (d.messages.length > 0 ? at : null),
    last_position: c.last_position ?? String(start.position),
  };
}

/**
 * Chats and their messages. Every event of a chat first moves the chat row's `last_position`; an
 * event the row has already seen changes nothing, so its message is not inserted again either —
 * not even after the chat was deleted and its messages removed. A batch is folded per chat and
 * written in two statements (more only for messages of hundreds of megabytes), with the result of
 * applying its events one by one.
 */
export const chatsProjector: Projector = {
  name: 'chats',
  version: 1,
  eventTypes: CHAT_EVENT_TYPES,
  tables: ['chats', 'chat_messages'],
  async apply(trx, events) {
    const chats = groupByKey(events, (e) => (e.data as { chatId: string }).chatId, 'ChatStarted');
    const started = [...chats.values()].flatMap(({ start, later }) =>
      start ? [startedRow(start, later)] : [],
    );
    const changed = [...chats.entries()].flatMap(([id, { later }]) =>
      later.length > 0 ? [{ id, ...changesAfter(later, -1n) }] : [],
    );
    // A chat started in this batch is inserted whole; the update then finds its row at the batch's
    // last position and leaves it.
    const written: Written[] = [];
    for (const [s, u] of jsonChunkPairs(started, changed)) written.push(...(await writeChats(trx, s, u)));
    // Messages go with the rows written (not with events the rows had seen), after the purge.
    const messages = written.flatMap(({ id, started: inserted, before }) => {
      const { start, later } = chats.get(id)!;
      const kept = inserted
        ? standing(later, start!.position, startedData(start!).messages)
        : standing(later, BigInt(before!));
      return kept.map((m) => messageRow(id, m));
    });
    for (const chunk of jsonChunks(messages)) {
      await sql`
        insert into chat_messages
        select * from json_populate_recordset(null::chat_messages, ${chunk}::json)
        on conflict (id) do nothing ${prepared}`.execute(trx);
    }
  },
};

/** A chat row written: inserted, or updated from the position it had seen (`before`). */
interface Written {
  id: string;
  started: boolean;
  before: string | null;
}

/**
 * Inserts the chats of `started` (rows), applies `changed` (folded changes) and removes the messages
 * of chats deleted; both JSON arrays. `old` is the row before the update: each change applies only
 * if newer than it.
 */
async function writeChats(trx: Kysely<Database>, started: string, changed: string): Promise<Written[]> {
  const written = await sql<Written>`
    with started as (
      insert into chats
      select * from json_populate_recordset(null::chats, ${started}::json)
      on conflict (id) do nothing
      returning id
    ),
    changed as (
      update chats set
        title = case when u.title_position > old.last_position then u.title else old.title end,
        deleted = old.deleted or coalesce(u.deleted_position > old.last_position, false),
        updated_at = u.updated_at,
        last_message_at = case when u.last_message_position > old.last_position
          then u.last_message_at else old.last_message_at end,
        last_position = u.last_position
      from json_to_recordset(${changed}::json) as u(
        id text, last_position bigint, updated_at timestamptz, title text, title_position bigint,
        deleted_position bigint, last_message_at timestamptz, last_message_position bigint),
        chats old
      where chats.id = u.id and old.id = u.id and old.last_position < u.last_position
      returning chats.id, old.last_position as before, coalesce(u.deleted_position > old.last_position, false) as purge
    ),
    -- The history stays in the event log; the read model keeps no copy of a deleted chat.
    purged as (
      delete from chat_messages where chat_id in (select id from changed where purge)
    )
    select id, true as started, null::text as before from started
    union all select id, false, before::text from changed ${prepared}`.execute(trx);
  return written.rows;
}
