import type { Kysely } from 'kysely';
import type { ContentPart } from '../events/chats';
import type { Database } from '../platform/schema';
import { encodeCursor, newestFirstPage, wholeNumberCursor, type Page } from './paging';

/** The largest value of a PostgreSQL `integer` (a message's `seq`). */
const INT4_MAX = 2n ** 31n - 1n;
import { jsonColumn } from './presets';

/** A chat as API.md shows one. */
export interface ChatView {
  id: string;
  title: string;
  preset_id: string;
  model: string;
  parameters: Record<string, unknown>;
  created_at: string;
  updated_at: string;
  last_message_at: string | null;
}

/** A message as the user sees it; assistant replies also say which task wrote them and whether in full. */
export interface MessageView {
  id: string;
  role: string;
  content: ContentPart[];
  visible: boolean;
  created_at: string;
  task_id?: string | null;
  status?: string | null;
}

type Row<T> = { [K in keyof T]: T[K] extends { __select__: infer S } ? S : T[K] };

function chatView(r: Row<Database['chats']>): ChatView {
  return {
    id: r.id,
    title: r.title,
    preset_id: r.preset_id,
    model: r.model,
    parameters: jsonColumn(r.parameters),
    created_at: r.created_at.toISOString(),
    updated_at: r.updated_at.toISOString(),
    last_message_at: r.last_message_at?.toISOString() ?? null,
  };
}

function messageView(r: Row<Database['chat_messages']>): MessageView {
  const base = {
    id: r.id,
    role: r.role,
    content: jsonColumn<ContentPart[]>(r.content),
    visible: r.visible,
    created_at: r.created_at.toISOString(),
  };
  return r.role === 'assistant' ? { ...base, task_id: r.task_id, status: r.status } : base;
}

/** The user's chats, newest first. */
export async function listChats(
  db: Kysely<Database>,
  opts: { userId: string; limit: number; cursor?: string | undefined },
): Promise<Page<ChatView>> {
  const query = db
    .selectFrom('chats')
    .selectAll()
    .where('owner_id', '=', opts.userId)
    .where('deleted', '=', false);
  return newestFirstPage(query, opts, chatView);
}

/** The user's chat, or undefined when it is missing, deleted or someone else's (all the same 404). */
export async function findChat(
  db: Kysely<Database>,
  chatId: string,
  userId: string,
): Promise<ChatView | undefined> {
  const row = await db
    .selectFrom('chats')
    .selectAll()
    .where('id', '=', chatId)
    .where('owner_id', '=', userId)
    .where('deleted', '=', false)
    .executeTakeFirst();
  return row ? chatView(row) : undefined;
}

/** A chat's visible messages in order (hidden ones are never listed). The caller checks the chat is the user's. */
export async function listMessages(
  db: Kysely<Database>,
  opts: { chatId: string; limit: number; cursor?: string | undefined },
): Promise<Page<MessageView>> {
  let query = db
    .selectFrom('chat_messages')
    .selectAll()
    .where('chat_id', '=', opts.chatId)
    .where('visible', '=', true);
  const after = wholeNumberCursor(opts.cursor, INT4_MAX);
  if (after !== undefined) query = query.where('seq', '>', Number(after));
  const rows = await query
    .orderBy('seq')
    .limit(opts.limit + 1)
    .execute();
  const page = rows.slice(0, opts.limit);
  const last = page[page.length - 1];
  return {
    items: page.map(messageView),
    next_cursor: rows.length > opts.limit && last ? encodeCursor([last.seq]) : null,
  };
}
