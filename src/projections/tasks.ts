import { sql, type Kysely } from 'kysely';
import type { TaskEvent, TaskOutcome } from '../events/tasks';
import type { Database, TasksTable } from '../platform/schema';
import { jsonChunks, pgTimestamp, pgTimestampOrNull } from './json';
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

type Outcome = ReturnType<typeof outcomeColumns>;

/**
 * What a batch's events after TaskCreated change of a row already there, each kind with the position
 * of its last event: a row takes only the changes newer than the event it has seen.
 */
interface Changes {
  last_position: string;
  claimed_position: string | null;
  outcome_position: string | null;
  outcome: Outcome | null;
}

/** A task's events in one batch, in log order, TaskCreated aside. */
interface TaskFold {
  /** The first TaskCreated, whose row is inserted if the task has none. */
  created: { row: TasksTable; position: bigint } | null;
  changes: Changes | null;
  last: bigint;
}

const isOutcome = (e: TaskEvent): e is TaskOutcome =>
  e.type === 'TaskCompleted' || e.type === 'TaskFailed' || e.type === 'TaskCancelled';

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
    const folds = new Map<string, TaskFold>();
    for (const recorded of events) {
      const e = { type: recorded.type, data: recorded.data } as TaskEvent;
      const position = String(recorded.position);
      let fold = folds.get(e.data.taskId);
      // Not newer than an earlier event of its task: one by one, the row would have seen it already.
      if (fold && recorded.position <= fold.last) continue;
      fold ??= { created: null, changes: null, last: recorded.position };
      folds.set(e.data.taskId, fold);
      fold.last = recorded.position;
      if (e.type === 'TaskCreated') {
        // A second one changes nothing, as its insert would not.
        fold.created ??= {
          position: recorded.position,
          row: {
            id: e.data.taskId,
            user_id: e.data.userId,
            chat_id: e.data.chatId,
            model: e.data.model,
            status: 'running',
            hold: String(e.data.hold),
            prompt_tokens: e.data.promptTokens,
            completion_tokens: 0,
            cost: null,
            message_id: null,
            error: null,
            claimed: false,
            created_at: new Date(e.data.createdAt),
            deadline_at: new Date(e.data.deadlineAt),
            finished_at: null,
            last_position: position,
          },
        };
        continue;
      }
      const changes = (fold.changes ??= {
        last_position: position,
        claimed_position: null,
        outcome_position: null,
        outcome: null,
      });
      changes.last_position = position;
      const outcome = isOutcome(e) ? outcomeColumns(e) : null;
      if (e.type === 'TaskStreamClaimed') changes.claimed_position = position;
      if (outcome) {
        changes.outcome = outcome;
        changes.outcome_position = position;
      }
      // The row inserted takes the events after its TaskCreated (those before it found no row).
      const row = fold.created?.row;
      if (row) {
        row.last_position = position;
        if (e.type === 'TaskStreamClaimed') row.claimed = true;
        if (outcome) Object.assign(row, outcome);
      }
    }
    const created = [...folds.values()].flatMap(({ created: c }) =>
      c
        ? [
            {
              ...c.row,
              created_at: pgTimestamp(c.row.created_at),
              deadline_at: pgTimestamp(c.row.deadline_at),
              finished_at: pgTimestampOrNull(c.row.finished_at),
            },
          ]
        : [],
    );
    const changed = [...folds.entries()].flatMap(([id, f]) => {
      if (!f.changes) return [];
      const { outcome, ...changes } = f.changes;
      return [{ id, ...changes, ...outcome, finished_at: pgTimestampOrNull(outcome?.finished_at ?? null) }];
    });
    // A task created in this batch is inserted whole; the update then finds its row at the batch's
    // last position and leaves it. In the update, `tasks.*` is the row before it, so each change
    // applies only if newer than the row. One statement, unless a batch is hundreds of megabytes.
    const createdChunks = jsonChunks(created);
    const changedChunks = jsonChunks(changed);
    for (let i = 0; i < Math.max(createdChunks.length, changedChunks.length); i++) {
      await writeTasks(trx, createdChunks[i] ?? '[]', changedChunks[i] ?? '[]');
    }
  },
};

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
      where tasks.id = u.id and tasks.last_position < u.last_position`.execute(trx);
}
