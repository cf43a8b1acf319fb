import { ChatBusy, slotsDecider } from '../../src/commands/tasks/slots';
import { StreamAlreadyClaimed, taskDecider, TaskNotFound } from '../../src/commands/tasks/decider';
import type { TaskEvent } from '../../src/events/tasks';
import { Conflict, RateLimited } from '../../src/platform/errors';
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

describe('task slots decider', () => {
  const slots = deciderSpec(slotsDecider);
  const staleBefore = '2026-04-01T07:00:00.000Z';
  /** The new slot's own stale mark: its task's deadline and the sweeper's grace. */
  const staleAt = '2026-04-01T08:20:00.000Z';
  const take = (taskId: string, owner = 'chat:c1', capacity = 1) => ({
    type: 'TakeTaskSlot' as const,
    data: { owner, taskId, capacity, staleAt, staleBefore },
    metadata,
  });
  /** A slot taken; `ownStaleAt` null for one recorded before slots had a stale mark of their own. */
  const taken = (taskId: string, owner = 'chat:c1', takenAt = at, ownStaleAt: string | null = staleAt) => ({
    type: 'TaskSlotTaken' as const,
    data: { owner, taskId, takenAt, ...(ownStaleAt ? { staleAt: ownStaleAt } : {}) },
  });
  const freed = (taskId: string, reason: 'ended' | 'stale', owner = 'chat:c1') => ({
    type: 'TaskSlotFreed' as const,
    data: { owner, taskId, reason, freedAt: at },
  });

  it('holds one running task per chat until it ends', () => {
    slots
      .given([])
      .when(take('t1'))
      .then([taken('t1')]);
    slots
      .given([taken('t1')])
      .when(take('t2'))
      .thenThrows(ChatBusy);
    slots
      .given([taken('t1')])
      .when(take('t1'))
      .then([]);
    slots
      .given([taken('t1')])
      .when({ type: 'FreeTaskSlot', data: { owner: 'chat:c1', taskId: 't1' }, metadata })
      .then([freed('t1', 'ended')]);
    slots
      .given([taken('t1')])
      .when({ type: 'FreeTaskSlot', data: { owner: 'chat:c1', taskId: 't9' }, metadata })
      .then([]);
    slots
      .given([taken('t1'), freed('t1', 'ended')])
      .when(take('t2'))
      .then([taken('t2')]);
  });

  it('lets a user run up to the capacity, then answers 429', () => {
    const user = 'user:u1';
    slots
      .given([taken('t1', user), taken('t2', user)])
      .when(take('t3', user, 3))
      .then([taken('t3', user)]);
    slots
      .given([taken('t1', user), taken('t2', user), taken('t3', user)])
      .when(take('t4', user, 3))
      .thenThrows(RateLimited);
  });

  it('frees a slot taken before the stale mark instead of blocking the chat for ever', () => {
    slots
      .given([taken('t1', 'chat:c1', '2026-04-01T06:00:00.000Z', null)])
      .when(take('t2'))
      .then([freed('t1', 'stale'), taken('t2')]);
  });

  it('judges a slot by the stale mark it was taken with, whatever task life is configured since', () => {
    // Taken under a longer life (its mark still ahead), though before the mark of today's shorter
    // one: its task may still be running, and the chat stays busy.
    slots
      .given([taken('t1', 'chat:c1', '2026-04-01T06:00:00.000Z', '2026-04-01T08:10:00.000Z')])
      .when(take('t2'))
      .thenThrows(ChatBusy);
    // Past its own mark, though taken after today's: freed.
    slots
      .given([taken('t1', 'chat:c1', '2026-04-01T07:30:00.000Z', '2026-04-01T07:59:00.000Z')])
      .when(take('t2'))
      .then([freed('t1', 'stale'), taken('t2')]);
  });
});
