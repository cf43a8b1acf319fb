import { sql } from 'kysely';
import type { TaskEvent, TaskOutcome } from '../events/tasks';
import type { TasksTable } from '../platform/schema';
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

/** What the events after TaskCreated change of the row, folded in log order. */
interface Changes {
  first_position: string;
  last_position: string;
  claimed: boolean;
  outcome: Outcome | null;
}

/**
 * A task's events in one batch: the row its TaskCreated inserts, with the later events folded in,
 * and the later events' changes for a row that is already there.
 */
interface TaskFold {
  created: TasksTable | null;
  changes: Changes | null;
  last: bigint;
}

/**
 * Tasks as `GET /tasks/{id}` shows them, and the open ones the sweeper checks against their deadline.
 * A batch is folded per task and written in one statement, however many events it has.
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
        // Inserted only if the task has no row yet; a row already there keeps what it has.
        fold.created = {
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
        };
        continue;
      }
      const changes = (fold.changes ??= {
        first_position: position,
        last_position: position,
        claimed: false,
        outcome: null,
      });
      changes.last_position = position;
      const outcome =
        e.type === 'TaskCompleted' || e.type === 'TaskFailed' || e.type === 'TaskCancelled'
          ? outcomeColumns(e)
          : null;
      if (e.type === 'TaskStreamClaimed') changes.claimed = true;
      if (outcome) changes.outcome = outcome;
      if (fold.created) {
        fold.created.last_position = position;
        if (e.type === 'TaskStreamClaimed') fold.created.claimed = true;
        if (outcome) Object.assign(fold.created, outcome);
      }
    }
    const created = [...folds.values()].flatMap((f) => (f.created ? [f.created] : []));
    const changed = [...folds.entries()].flatMap(([id, f]) => {
      if (!f.changes) return [];
      const { outcome, ...changes } = f.changes;
      return [{ id, ...changes, finished: outcome !== null, ...outcome }];
    });
    // The insert and the update see the table as it was before the statement: a task created in
    // this batch is inserted whole, and the update changes only rows from earlier batches. Its guard
    // is the first change's position: the checkpoint moves with the rows, so a row has seen either
    // none of a batch's events or all of them.
    await sql`
      with created as (
        insert into tasks
        select * from json_populate_recordset(null::tasks, ${JSON.stringify(created)}::json)
        on conflict (id) do nothing
      )
      update tasks set
        claimed = tasks.claimed or u.claimed,
        status = case when u.finished then u.status else tasks.status end,
        prompt_tokens = case when u.finished then u.prompt_tokens else tasks.prompt_tokens end,
        completion_tokens = case when u.finished then u.completion_tokens else tasks.completion_tokens end,
        cost = case when u.finished then u.cost else tasks.cost end,
        message_id = case when u.finished then u.message_id else tasks.message_id end,
        error = case when u.finished then u.error else tasks.error end,
        finished_at = case when u.finished then u.finished_at else tasks.finished_at end,
        last_position = u.last_position
      from json_to_recordset(${JSON.stringify(changed)}::json) as u(
        id text, first_position bigint, last_position bigint, claimed boolean, finished boolean,
        status text, prompt_tokens int, completion_tokens int, cost bigint, message_id text,
        error text, finished_at timestamptz)
      where tasks.id = u.id and tasks.last_position < u.first_position`.execute(trx);
  },
};
