import type { Command, Decider } from '../handler';
import type { TaskEvent, TaskOutcome } from '../../events/tasks';
import { Conflict, NotFound } from '../../platform/errors';

export type TaskStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export class TaskNotFound extends NotFound {}
export class StreamAlreadyClaimed extends Conflict {
  override readonly type = '/problems/stream-claimed';
  constructor() {
    super('This task’s stream is already being (or was) read.');
  }
}

export interface TaskState {
  created: boolean;
  taskId: string;
  userId: string;
  chatId: string | null;
  model: string;
  promptTokens: number;
  maxTokens: number;
  /** Messages of the chat's history left out to fit the model's context window. */
  omittedMessages: number;
  hold: number;
  status: TaskStatus;
  claimed: boolean;
  cancelRequested: boolean;
  outcome: TaskOutcome | null;
  createdAt: string | null;
  deadlineAt: string | null;
}

export const initialTask = (): TaskState => ({
  created: false,
  taskId: '',
  userId: '',
  chatId: null,
  model: '',
  promptTokens: 0,
  maxTokens: 0,
  omittedMessages: 0,
  hold: 0,
  status: 'queued',
  claimed: false,
  cancelRequested: false,
  outcome: null,
  createdAt: null,
  deadlineAt: null,
});

type OutcomeData<T extends TaskOutcome['type']> = Omit<
  Extract<TaskOutcome, { type: T }>['data'],
  'completedAt' | 'failedAt' | 'cancelledAt' | 'userId' | 'chatId'
>;

export type TaskCommand =
  | Command<
      'CreateTask',
      {
        taskId: string;
        userId: string;
        chatId: string | null;
        model: string;
        promptTokens: number;
        maxTokens: number;
        hold: number;
        deadlineAt: string;
        omittedMessages?: number;
      }
    >
  | Command<'ClaimStream', { taskId: string; userId: string }>
  | Command<'RequestCancel', { taskId: string; userId: string }>
  | Command<'CompleteTask', OutcomeData<'TaskCompleted'>>
  | Command<'FailTask', OutcomeData<'TaskFailed'>>
  | Command<'CancelTask', OutcomeData<'TaskCancelled'>>;

const finished = (s: TaskState) => s.outcome !== null;

/**
 * A task's rules. The stream claim is decided by the stream's expected revision: of any number of
 * concurrent claims, on any instances, one appends and the rest see it claimed (409). The first
 * outcome recorded is the outcome: a late completion after a sweeper failed the task decides nothing.
 */
export function decideTask(cmd: TaskCommand, s: TaskState): TaskEvent[] {
  const now = cmd.metadata.now.toISOString();
  if (cmd.type === 'CreateTask') {
    if (s.created) return [];
    return [{ type: 'TaskCreated', data: { ...cmd.data, createdAt: now } }];
  }
  if (!s.created) throw new TaskNotFound('No such task.');
  const base = { userId: s.userId, chatId: s.chatId };
  switch (cmd.type) {
    case 'ClaimStream':
      if (cmd.data.userId !== s.userId) throw new TaskNotFound('No such task.');
      if (s.claimed) throw new StreamAlreadyClaimed();
      return [{ type: 'TaskStreamClaimed', data: { taskId: s.taskId, claimedAt: now } }];
    case 'RequestCancel':
      if (cmd.data.userId !== s.userId) throw new TaskNotFound('No such task.');
      if (finished(s))
        throw new Conflict(`This task has already ${s.status === 'succeeded' ? 'finished' : s.status}.`);
      if (s.cancelRequested) return [];
      return [{ type: 'TaskCancelRequested', data: { taskId: s.taskId, requestedAt: now } }];
    case 'CompleteTask':
      if (finished(s)) return [];
      return [{ type: 'TaskCompleted', data: { ...cmd.data, ...base, completedAt: now } }];
    case 'FailTask':
      if (finished(s)) return [];
      return [{ type: 'TaskFailed', data: { ...cmd.data, ...base, failedAt: now } }];
    case 'CancelTask':
      if (finished(s)) return [];
      return [{ type: 'TaskCancelled', data: { ...cmd.data, ...base, cancelledAt: now } }];
  }
  const _exhaustive: never = cmd;
  return _exhaustive;
}

export function evolveTask(s: TaskState, e: TaskEvent): TaskState {
  switch (e.type) {
    case 'TaskCreated':
      s.created = true;
      s.taskId = e.data.taskId;
      s.userId = e.data.userId;
      s.chatId = e.data.chatId;
      s.model = e.data.model;
      s.promptTokens = e.data.promptTokens;
      s.maxTokens = e.data.maxTokens;
      s.omittedMessages = e.data.omittedMessages ?? 0;
      s.hold = e.data.hold;
      s.status = 'running';
      s.createdAt = e.data.createdAt;
      s.deadlineAt = e.data.deadlineAt;
      return s;
    case 'TaskStreamClaimed':
      s.claimed = true;
      return s;
    case 'TaskCancelRequested':
      s.cancelRequested = true;
      return s;
    case 'TaskCompleted':
      s.outcome = e;
      s.status = 'succeeded';
      return s;
    case 'TaskFailed':
      s.outcome = e;
      s.status = 'failed';
      return s;
    case 'TaskCancelled':
      s.outcome = e;
      s.status = 'cancelled';
      return s;
  }
}

export const taskDecider: Decider<TaskState, TaskCommand, TaskEvent> = {
  name: 'task',
  initialState: initialTask,
  evolve: evolveTask,
  decide: decideTask,
};
