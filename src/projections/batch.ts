import type { RecordedEvent } from '../eventstore/port';

/** A batch's events of one key (a task, a chat): its first starting event, and the others in log order. */
export interface KeyEvents {
  start: RecordedEvent | null;
  later: RecordedEvent[];
}

/**
 * Groups a batch per key for a read model that folds it. An event not newer than the one before it
 * of its key is left out (one by one, the row would have seen it already), and so is a second
 * `startType` event (its insert would change nothing).
 */
export function groupByKey(
  events: readonly RecordedEvent[],
  keyOf: (e: RecordedEvent) => string,
  startType: string,
): Map<string, KeyEvents> {
  const groups = new Map<string, KeyEvents & { last: bigint }>();
  for (const recorded of events) {
    const key = keyOf(recorded);
    let group = groups.get(key);
    if (group && recorded.position <= group.last) continue;
    group ??= { start: null, later: [], last: recorded.position };
    groups.set(key, group);
    group.last = recorded.position;
    if (recorded.type !== startType) group.later.push(recorded);
    else group.start ??= recorded;
  }
  return groups;
}
