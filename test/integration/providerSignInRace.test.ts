import { CommandHandler } from '../../src/commands/handler';
import { uniqueDecider } from '../../src/commands/users/decider';
import { uniqueStream } from '../../src/events/users';
import { providerSignIn, readUser, type IdentityDeps } from '../../src/commands/users/identity';
import type { EventStore, LogPosition, RecordedEvent } from '../../src/eventstore/port';
import { uuidV7Ids } from '../../src/platform/clock';
import { testConfig } from '../../src/platform/config';
import { openTestStore, testDatabases, type TestDatabase } from '../support/databases';

/**
 * Parallel sign-ins of one external identity make one user (the identity's reservation decides
 * the id). Each that sees the user not registered yet (here: a registration whose process died after
 * reserving the identity, which `providerSignIn` completes) registers it under that id with a random
 * username of its own; one registration lands, and the usernames the others reserved go back, or
 * they would stay reserved for good for a user who does not hold them.
 */
async function readEverything(store: EventStore): Promise<RecordedEvent[]> {
  const all: RecordedEvent[] = [];
  let from: LogPosition | undefined;
  for (;;) {
    const batch = await store.readAll({
      ...(from ? { from } : {}),
      maxCount: 1000,
      filter: { categories: ['unique'] },
    });
    all.push(...batch.events);
    from = batch.next;
    if (batch.caughtUp || batch.events.length === 0) return all;
  }
}

describe.each(testDatabases())('parallel first provider sign-ins on %s', (kind) => {
  let t: TestDatabase & { store: EventStore };
  const deps = (): IdentityDeps => ({
    commands: new CommandHandler(t.store, { ids: uuidV7Ids }),
    store: t.store,
    clock: { now: () => new Date() },
    ids: uuidV7Ids,
    config: testConfig(),
  });
  beforeAll(async () => {
    t = await openTestStore(kind);
  });
  afterAll(() => t?.close());

  it('leave the user holding exactly one username: the one it was registered with', async () => {
    const identity = {
      provider: 'apple' as const,
      subject: `apple-parallel-${kind}`,
      usernamePrefix: 'apple',
    };
    // The identity reserved by a sign-in whose process died before it registered the user (the case
    // `providerSignIn` completes): every next sign-in sees the user not registered yet.
    await deps().commands.handle(uniqueDecider, uniqueStream('apple', identity.subject), {
      type: 'ReserveValue',
      data: { kind: 'apple', value: identity.subject, userId: `pending-${kind}` },
      metadata: { now: new Date() },
    });
    const results = await Promise.all(
      Array.from({ length: 10 }, () => providerSignIn(deps(), identity, 'apple', {})),
    );
    expect(results.filter((r) => r.registered)).toHaveLength(1);
    const userIds = new Set(results.map((r) => r.userId));
    expect(userIds.size).toBe(1);
    const [userId] = [...userIds] as [string];
    const user = await readUser(deps(), userId);

    // Who holds each username now, from the reservation streams.
    const owners = new Map<string, { owner: string | null; value: string }>();
    for (const e of await readEverything(t.store)) {
      const data = e.data as { kind: string; value: string; userId: string };
      if (data.kind !== 'username') continue;
      owners.set(e.streamName, {
        value: data.value,
        owner: e.type === 'ValueReserved' ? data.userId : null,
      });
    }
    const held = [...owners.values()].filter((o) => o.owner === userId).map((o) => o.value);
    expect(held).toEqual([user.username]);
  });
});
