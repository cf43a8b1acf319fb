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
  /** Task id → when its slot was taken. */
  taken: Map<string, string>;
}

export type SlotEvent =
  | { type: 'TaskSlotTaken'; data: { owner: string; taskId: string; takenAt: string } }
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
         * A slot taken before this is stale, its task long past any deadline (its instance died between
         * taking the slot and recording the task): it is freed rather than block the owner for ever.
         */
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
    if (e.type === 'TaskSlotTaken') s.taken.set(e.data.taskId, e.data.takenAt);
    else s.taken.delete(e.data.taskId);
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
    const stale = [...s.taken].filter(([, takenAt]) => takenAt < cmd.data.staleBefore).map(([id]) => id);
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
      { type: 'TaskSlotTaken', data: { owner, taskId, takenAt: now } },
    ];
  },
};
