import type { Command, Decider } from '../handler';
import { Conflict, RateLimited } from '../../platform/errors';

/** A second reply asked for in a chat while one is being generated. */
export class ChatBusy extends Conflict {
  override readonly type = '/problems/chat-busy';
}

/**
 * Running tasks of one owner: a chat (`chatslot-{chatId}`, one at a time) or a user
 * (`userslots-{userId}`, TASKS_MAX_RUNNING_PER_USER at a time). Taking a slot is an append at the
 * stream's expected revision, so the capacity holds under any concurrency and across instances.
 */
export interface SlotsState {
  /** Task id → when its slot was taken, and when it counts as stale (slots taken before that was recorded have none). */
  taken: Map<string, { takenAt: string; staleAt: string | undefined }>;
}

export type SlotEvent =
  | {
      type: 'TaskSlotTaken';
      /**
       * `staleAt`: its task's deadline and the sweeper's grace, as the instance that took it set
       * them. Absent from slots taken before it was recorded: those are judged by `staleBefore`.
       */
      data: { owner: string; taskId: string; takenAt: string; staleAt?: string };
    }
  | {
      type: 'TaskSlotFreed';
      data: { owner: string; taskId: string; reason: 'ended' | 'stale'; freedAt: string };
    };

export type SlotCommand =
  | Command<
      'TakeTaskSlot',
      {
        owner: string;
        taskId: string;
        capacity: number;
        /**
         * When this slot counts as stale: its task long past its deadline (its instance died between
         * taking the slot and recording the task), so it is freed rather than block the owner for
         * ever. Fixed when taken, so that a shorter task life configured later (a rolling deploy)
         * never frees the slot of a task still running under the longer one.
         */
        staleAt: string;
        /** For slots taken with no `staleAt` of their own: one taken before this is stale. */
        staleBefore: string;
      }
    >
  | Command<'FreeTaskSlot', { owner: string; taskId: string }>;

export const chatSlotStream = (chatId: string) => `chatslot-${chatId}`;
export const userSlotsStream = (userId: string) => `userslots-${userId}`;

export const slotsDecider: Decider<SlotsState, SlotCommand, SlotEvent> = {
  name: 'taskslots',
  initialState: () => ({ taken: new Map() }),
  evolve(s, e) {
    if (e.type === 'TaskSlotTaken') {
      s.taken.set(e.data.taskId, { takenAt: e.data.takenAt, staleAt: e.data.staleAt });
    } else s.taken.delete(e.data.taskId);
    return s;
  },
  decide(cmd, s) {
    const now = cmd.metadata.now.toISOString();
    const { owner, taskId } = cmd.data;
    if (cmd.type === 'FreeTaskSlot') {
      if (!s.taken.has(taskId)) return [];
      return [{ type: 'TaskSlotFreed', data: { owner, taskId, reason: 'ended', freedAt: now } }];
    }
    if (s.taken.has(taskId)) return [];
    const stale = [...s.taken]
      .filter(([, slot]) => (slot.staleAt ? slot.staleAt < now : slot.takenAt < cmd.data.staleBefore))
      .map(([id]) => id);
    if (s.taken.size - stale.length >= cmd.data.capacity) {
      if (owner.startsWith('chat:')) throw new ChatBusy('A reply is still being generated in this chat.');
      throw new RateLimited(
        `At most ${cmd.data.capacity} replies can be generated at once; wait for one to finish.`,
        1,
      );
    }
    return [
      ...stale.map((id): SlotEvent => ({
        type: 'TaskSlotFreed',
        data: { owner, taskId: id, reason: 'stale', freedAt: now },
      })),
      { type: 'TaskSlotTaken', data: { owner, taskId, takenAt: now, staleAt: cmd.data.staleAt } },
    ];
  },
};
