import type { TaskEvent } from '../events/tasks';
import type { Projector } from './types';

/** Tasks as `GET /tasks/{id}` shows them, and the open ones the sweeper checks against their deadline. */
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
    for (const recorded of events) {
      const e = { type: recorded.type, data: recorded.data } as TaskEvent;
      const position = String(recorded.position);
      const update = () =>
        trx.updateTable('tasks').where('id', '=', e.data.taskId).where('last_position', '<', position);
      switch (e.type) {
        case 'TaskCreated':
          await trx
            .insertInto('tasks')
            .values({
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
            })
            .onConflict((oc) => oc.column('id').doNothing())
            .execute();
          break;
        case 'TaskStreamClaimed':
          await update().set({ claimed: true, last_position: position }).execute();
          break;
        case 'TaskCancelRequested':
          await update().set({ last_position: position }).execute();
          break;
        case 'TaskCompleted':
        case 'TaskFailed':
        case 'TaskCancelled': {
          const finishedAt =
            e.type === 'TaskCompleted'
              ? e.data.completedAt
              : e.type === 'TaskFailed'
                ? e.data.failedAt
                : e.data.cancelledAt;
          await update()
            .set({
              status:
                e.type === 'TaskCompleted' ? 'succeeded' : e.type === 'TaskFailed' ? 'failed' : 'cancelled',
              prompt_tokens: e.data.usage.promptTokens,
              completion_tokens: e.data.usage.completionTokens,
              cost: String(e.data.cost),
              message_id: e.data.messageId,
              error: e.type === 'TaskFailed' ? e.data.reason : null,
              finished_at: new Date(finishedAt),
              last_position: position,
            })
            .execute();
          break;
        }
      }
    }
  },
};
