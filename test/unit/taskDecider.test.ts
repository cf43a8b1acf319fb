import {
  ChatBusy,
  chatSlotDecider,
  StreamAlreadyClaimed,
  taskDecider,
  TaskNotFound,
} from '../../src/commands/tasks/decider';
import type { TaskEvent } from '../../src/events/tasks';
import { Conflict } from '../../src/platform/errors';
import { deciderSpec } from '../support/spec';

const now = new Date('2026-04-01T08:00:00.000Z');
const at = now.toISOString();
const metadata = { now };
const spec = deciderSpec(taskDecider);

const created: TaskEvent = {
  type: 'TaskCreated',
  data: {
    taskId: 't1',
    userId: 'u1',
    chatId: 'c1',
    model: 'local-echo',
    promptTokens: 10,
    maxTokens: 100,
    hold: 5,
    deadlineAt: '2026-04-01T08:10:00.000Z',
    createdAt: at,
  },
};
const outcome = {
  taskId: 't1',
  messageId: 'm1',
  content: 'hi',
  usage: { promptTokens: 10, completionTokens: 1 },
  cost: 1,
};

describe('task decider', () => {
  it('lets exactly one claim of the stream through; a claim by another user is 404', () => {
    const claimed: TaskEvent = { type: 'TaskStreamClaimed', data: { taskId: 't1', claimedAt: at } };
    const claim = (userId: string) => ({
      type: 'ClaimStream' as const,
      data: { taskId: 't1', userId },
      metadata,
    });
    spec.given([created]).when(claim('u1')).then([claimed]);
    spec.given([created, claimed]).when(claim('u1')).thenThrows(StreamAlreadyClaimed);
    spec.given([created]).when(claim('u2')).thenThrows(TaskNotFound);
    spec.given([]).when(claim('u1')).thenThrows(TaskNotFound);
  });

  it('records the first outcome only', () => {
    const completed: TaskEvent = {
      type: 'TaskCompleted',
      data: { ...outcome, userId: 'u1', chatId: 'c1', usageSource: 'provider', completedAt: at },
    };
    spec
      .given([created])
      .when({ type: 'CompleteTask', data: { ...outcome, usageSource: 'provider' }, metadata })
      .then([completed]);
    spec
      .given([created, completed])
      .when({ type: 'FailTask', data: { ...outcome, reason: 'late' }, metadata })
      .then([]);
  });

  it('refuses to cancel a finished task and cancels a running one once', () => {
    const cancel = { type: 'RequestCancel' as const, data: { taskId: 't1', userId: 'u1' }, metadata };
    const requested: TaskEvent = { type: 'TaskCancelRequested', data: { taskId: 't1', requestedAt: at } };
    spec.given([created]).when(cancel).then([requested]);
    spec.given([created, requested]).when(cancel).then([]);
    const failed: TaskEvent = {
      type: 'TaskFailed',
      data: { ...outcome, userId: 'u1', chatId: 'c1', reason: 'x', failedAt: at },
    };
    spec.given([created, failed]).when(cancel).thenThrows(Conflict);
  });
});

describe('chat slot decider', () => {
  const slot = deciderSpec(chatSlotDecider);
  const started = { type: 'ChatTaskStarted' as const, data: { chatId: 'c1', taskId: 't1', startedAt: at } };
  it('holds one running task per chat until it ends', () => {
    slot
      .given([])
      .when({ type: 'StartChatTask', data: { chatId: 'c1', taskId: 't1' }, metadata })
      .then([started]);
    slot
      .given([started])
      .when({ type: 'StartChatTask', data: { chatId: 'c1', taskId: 't2' }, metadata })
      .thenThrows(ChatBusy);
    const ended = { type: 'ChatTaskEnded' as const, data: { chatId: 'c1', taskId: 't1', endedAt: at } };
    slot
      .given([started])
      .when({ type: 'EndChatTask', data: { chatId: 'c1', taskId: 't1' }, metadata })
      .then([ended]);
    slot
      .given([started])
      .when({ type: 'EndChatTask', data: { chatId: 'c1', taskId: 't9' }, metadata })
      .then([]);
    slot
      .given([started, ended])
      .when({ type: 'StartChatTask', data: { chatId: 'c1', taskId: 't2' }, metadata })
      .then([{ type: 'ChatTaskStarted', data: { chatId: 'c1', taskId: 't2', startedAt: at } }]);
  });
});
