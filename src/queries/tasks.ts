import type { Kysely, Selectable } from 'kysely';
import type { Database, TasksTable } from '../platform/schema';
import { newestFirstPage, type Page } from './paging';

/** Tasks without an outcome whose deadline passed before `before`, oldest first: the sweeper's work. */
export async function listOverdueTasks(
  db: Kysely<Database>,
  before: Date,
  limit: number,
): Promise<{ id: string }[]> {
  return db
    .selectFrom('tasks')
    .select('id')
    .where('finished_at', 'is', null)
    .where('deadline_at', '<', before)
    .orderBy('deadline_at')
    .limit(limit)
    .execute();
}

/** A task as the user's list of tasks shows it: what it cost, and how it ended. */
export interface TaskListItem {
  id: string;
  chat_id: string | null;
  model: string;
  status: string;
  hold: number;
  usage: { prompt_tokens: number; completion_tokens: number } | null;
  cost: number | null;
  message_id: string | null;
  error: string | null;
  /** Messages of a chat's history left out to fit the model's window. */
  omitted_messages: number;
  created_at: string;
  finished_at: string | null;
}

function taskListItem(r: Selectable<TasksTable>): TaskListItem {
  const finished = r.finished_at !== null;
  return {
    id: r.id,
    chat_id: r.chat_id,
    model: r.model,
    status: r.status,
    hold: Number(r.hold),
    usage: finished ? { prompt_tokens: r.prompt_tokens, completion_tokens: r.completion_tokens } : null,
    cost: r.cost === null ? null : Number(r.cost),
    message_id: r.message_id,
    error: r.error,
    omitted_messages: r.omitted_messages,
    created_at: r.created_at.toISOString(),
    finished_at: r.finished_at?.toISOString() ?? null,
  };
}

/** The user's tasks, newest first: in one chat, or in one status, when asked. */
export async function listTasks(
  db: Kysely<Database>,
  opts: {
    userId: string;
    chatId?: string | undefined;
    status?: string | undefined;
    limit: number;
    cursor?: string | undefined;
  },
): Promise<Page<TaskListItem>> {
  let query = db.selectFrom('tasks').selectAll().where('user_id', '=', opts.userId);
  if (opts.chatId !== undefined) query = query.where('chat_id', '=', opts.chatId);
  if (opts.status !== undefined) query = query.where('status', '=', opts.status);
  return newestFirstPage(query, opts, taskListItem);
}
