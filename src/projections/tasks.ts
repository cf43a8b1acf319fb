import { sql, type Kysely } from 'kysely';
import type { TaskEvent, TaskOutcome } from '../events/tasks';
import type { Database, TasksTable } from '../platform/schema';
import type { RecordedEvent } from '../eventstore/port';
import { prepared } from '../platform/prepared';
import { groupByKey } from './batch';
import { jsonChunkPairs, pgTimestamp, pgTimestampOrNull } from './json';
import type { Projector } from './types';

/** What an outcome sets on the task's row. */
function outcomeColumns(e: TaskOutcome) {
  const finishedAt =
    e.type === 'TaskCompleted'
      ? e.data.completedAt
      : e.type === 'TaskFailed'
        ? e.data.failedAt
        : e.data.cancelledAt;
  return {
    status: e.type === 'TaskCompleted' ? 'succeeded' : e.type === 'TaskFailed' ? 'failed' : 'cancelled',
    prompt_tokens: e.data.usage.promptTokens,
    completion_tokens: e.data.usage.completionTokens,
    cost: String(e.data.cost),
    message_id: e.data.messageId,
    error: e.type === 'TaskFailed' ? e.data.reason : null,
    finished_at: new Date(finishedAt),
  };
}

const isOutcome = (e: TaskEvent): e is TaskOutcome =>
  e.type === 'TaskCompleted' || e.type === 'TaskFailed' || e.type === 'TaskCancelled';

/** What the events of `later` after `after` change: per kind, its newest value and its position. */
function changesAfter(later: readonly RecordedEvent[], after: bigint) {
  let last_position: string | null = null;
  let claimed_position: string | null = null;
  let outcome_position: string | null = null;
  let outcome: ReturnType<typeof outcomeColumns> | null = null;
  for (const recorded of later) {
    if (recorded.position <= after) continue;
    const e = { type: recorded.type, data: recorded.data } as TaskEvent;
    last_position = String(recorded.position);
    if (e.type === 'TaskStreamClaimed') claimed_position = last_position;
    if (isOutcome(e)) [outcome, outcome_position] = [outcomeColumns(e), last_position];
  }
  return { last_position, claimed_position, outcome_position, outcome };
}

/**
 * Tasks as `GET /tasks/{id}` shows them, and the open ones the sweeper checks against their deadline.
 * A batch is folded per task and written in one statement, however many events it has; the result is
 * that of applying its events one by one.
 */
export const tasksProjector: Projector = {
  name: 'tasks',
  version: 1,
  eventTypes: [
    'TaskCreated',
    'TaskStreamClaimed',
    'TaskCancelRequested',
    'TaskCompleted',
    'TaskFailed',
    'TaskCancelled',
  ],
  tables: ['tasks'],
  async apply(trx, events) {
    const tasks = groupByKey(events, (e) => (e.data as { taskId: string }).taskId, 'TaskCreated');
    const created = [...tasks.values()].flatMap(({ start, later }) =>
      start ? [createdRow(start, later)] : [],
    );
    const changed = [...tasks.entries()].flatMap(([id, { later }]) => {
      if (later.length === 0) return [];
      const { outcome, ...changes } = changesAfter(later, -1n);
      return [{ id, ...changes, ...outcome, finished_at: pgTimestampOrNull(outcome?.finished_at ?? null) }];
    });
    // A task created in this batch is inserted whole; the update then finds its row at the batch's
    // last position and leaves it. In the update, `tasks.*` is the row before it, so each change
    // applies only if newer than the row.
    for (const [c, u] of jsonChunkPairs(created, changed)) await writeTasks(trx, c, u);
  },
};

/** The row a TaskCreated inserts, with the events after it (those before it found no row). */
function createdRow(start: RecordedEvent, later: readonly RecordedEvent[]) {
  const d = start.data as Extract<TaskEvent, { type: 'TaskCreated' }>['data'];
  const { last_position, claimed_position, outcome } = changesAfter(later, start.position);
  const row: TasksTable = {
    id: d.taskId,
    user_id: d.userId,
    chat_id: d.chatId,
    model: d.model,
    status: 'running',
    hold: String(d.hold),
    prompt_tokens: d.promptTokens,
    completion_tokens: 0,
    cost: null,
    message_id: null,
    error: null,
    claimed: claimed_position !== null,
    created_at: new Date(d.createdAt),
    deadline_at: new Date(d.deadlineAt),
    finished_at: null,
    last_position: last_position ?? String(start.position),
    omitted_messages: d.omittedMessages ?? 0,
    ...outcome,
  };
  return {
    ...row,
    created_at: pgTimestamp(row.created_at),
    deadline_at: pgTimestamp(row.deadline_at),
    finished_at: pgTimestampOrNull(row.finished_at),
  };
}

/** Inserts the tasks of `created` (rows) and applies `changed` (folded changes), both JSON arrays. */
async function writeTasks(trx: Kysely<Database>, created: string, changed: string): Promise<void> {
  await sql`
      with created as (
        insert into tasks
        select * from json_populate_recordset(null::tasks, ${created}::json)
        on conflict (id) do nothing
      )
      update tasks set
        claimed = tasks.claimed or coalesce(u.claimed_position > tasks.last_position, false),
        status = case when u.outcome_position > tasks.last_position then u.status else tasks.status end,
        prompt_tokens = case when u.outcome_position > tasks.last_position then u.prompt_tokens else tasks.prompt_tokens end,
        completion_tokens = case when u.outcome_position > tasks.last_position then u.completion_tokens else tasks.completion_tokens end,
        cost = case when u.outcome_position > tasks.last_position then u.cost else tasks.cost end,
        message_id = case when u.outcome_position > tasks.last_position then u.message_id else tasks.message_id end,
        error = case when u.outcome_position > tasks.last_position then u.error else tasks.error end,
        finished_at = case when u.outcome_position > tasks.last_position then u.finished_at else tasks.finished_at end,
        last_position = u.last_position
      from json_to_recordset(${changed}::json) as u(
        id text, last_position bigint, claimed_position bigint, outcome_position bigint,
        status text, prompt_tokens int, completion_tokens int, cost bigint, message_id text,
        error text, finished_at timestamptz)
      where tasks.id = u.id and tasks.last_position < u.last_position ${prepared}`.execute(trx);
}
