import { CommandHandler } from '../../src/commands/handler';
import { uniqueDecider, userDecider } from '../../src/commands/users/decider';
import {
  ensureAdmin,
  ownerOf,
  providerSignIn,
  readUser,
  registerUser,
  reserve,
  type IdentityDeps,
} from '../../src/commands/users/identity';
import { ledgerStream } from '../../src/events/ledger';
import { uniqueStream, userStream } from '../../src/events/users';
import { ledgerDecider } from '../../src/commands/ledger/decider';
import { uuidV7Ids } from '../../src/platform/clock';
import { testConfig } from '../../src/platform/config';
import { verifyPassword } from '../../src/platform/passwords';
import { openTestStore, testDatabases, type TestDatabase } from '../support/databases';
import type { EventStore } from '../../src/eventstore/port';

describe.each(testDatabases())('identity flows on %s', (kind) => {
  let t: TestDatabase & { store: EventStore };
  let now: Date;
  const deps = (): IdentityDeps => ({
    commands: new CommandHandler(t.store, { ids: uuidV7Ids }),
    store: t.store,
    clock: { now: () => now },
    ids: uuidV7Ids,
    config: testConfig(),
  });

  beforeAll(async () => {
    t = await openTestStore(kind);
  });
  afterAll(() => t?.close());
  beforeEach(() => {
    now = new Date('2026-05-01T12:00:00.000Z');
  });

  it('stores argon2id hashes, never the password', async () => {
    const { user } = await registerUser(
      deps(),
      { username: 'hashy', password: 'secret words', email: null, method: 'password' },
      {},
    );
    expect(user.passwordHash).toMatch(/^\$argon2id\$/);
    expect(await verifyPassword(user.passwordHash, 'secret words')).toBe(true);
    const events = await t.store.readStream(userStream(user.userId));
    expect(JSON.stringify(events.map((e) => [e.data, e.metadata]))).not.toContain('secret words');
  });

  it('takes over a username whose reservation was left by a registration that never happened', async () => {
    const d = deps();
    // A process reserved the name for a user, then died before registering it.
    await reserve(d, 'username', 'orphan', 'ghost-user', {});
    await expect(
      registerUser(d, { username: 'orphan', password: 'long enough', email: null, method: 'password' }, {}),
    ).rejects.toMatchObject({ status: 409 });
    now = new Date(now.getTime() + 10 * 60_000);
    const { user } = await registerUser(
      deps(),
      { username: 'orphan', password: 'long enough', email: null, method: 'password' },
      {},
    );
    expect(await ownerOf(deps(), 'username', 'orphan')).toBe(user.userId);
    const history = await t.store.readStream(uniqueStream('username', 'orphan'));
    expect(history.map((e) => e.type)).toEqual(['ValueReserved', 'ValueReleased', 'ValueReserved']);
  });

  it('never takes over a reservation whose user exists, however old', async () => {
    await registerUser(
      deps(),
      { username: 'keeper', password: 'long enough', email: null, method: 'password' },
      {},
    );
    now = new Date(now.getTime() + 24 * 3600_000);
    await expect(
      registerUser(
        deps(),
        { username: 'keeper', password: 'long enough', email: null, method: 'password' },
        {},
      ),
    ).rejects.toMatchObject({ status: 409 });
  });

  it('makes one user of parallel first sign-ins with one external identity, with one sign-up grant', async () => {
    const identity = { provider: 'wechat' as const, subject: 'union-parallel', usernamePrefix: 'wx' };
    const results = await Promise.all(
      Array.from({ length: 20 }, () => providerSignIn(deps(), identity, 'wechat', {})),
    );
    const users = new Set(results.map((r) => r.userId));
    expect(users.size).toBe(1);
    const [userId] = [...users];
    const user = await readUser(deps(), userId!);
    expect(user.registered).toBe(true);
    expect(user.identities.get('wechat')).toBe('union-parallel');
    const ledger = await deps().commands.read(ledgerDecider, ledgerStream(userId!));
    expect(ledger.state.posted).toBe(testConfig().SIGNUP_CREDITS);
  });

  it('completes a provider registration whose process died after reserving the identity', async () => {
    const d = deps();
    await d.commands.handle(uniqueDecider, uniqueStream('apple', 'apple-sub-1'), {
      type: 'ReserveValue',
      data: { kind: 'apple', value: 'apple-sub-1', userId: 'pending-user' },
      metadata: { now },
    });
    const signedIn = await providerSignIn(
      deps(),
      { provider: 'apple', subject: 'apple-sub-1', usernamePrefix: 'apple' },
      'apple',
      {},
    );
    expect(signedIn.userId).toBe('pending-user');
    expect(signedIn.registered).toBe(true);
    const again = await providerSignIn(
      deps(),
      { provider: 'apple', subject: 'apple-sub-1', usernamePrefix: 'apple' },
      'apple',
      {},
    );
    expect(again).toMatchObject({ userId: 'pending-user', registered: false });
    const events = await t.store.readStream(userStream('pending-user'));
    expect(events.map((e) => e.type)).toEqual(['UserRegistered', 'IdentityLinked']);
  });

  it('creates the first admin once, and promotes an existing user without touching the password', async () => {
    const first = await ensureAdmin(deps(), { username: 'boss', password: 'boss password' }, {});
    expect(first).toMatchObject({ created: true });
    const again = await ensureAdmin(deps(), { username: 'boss', password: 'other password' }, {});
    expect(again).toEqual({ userId: first.userId, created: false, promoted: false });
    const boss = await readUser(deps(), first.userId);
    expect(boss.permission).toBe(2);
    expect(await verifyPassword(boss.passwordHash, 'boss password')).toBe(true);

    const { user } = await registerUser(
      deps(),
      { username: 'later_admin', password: 'mine mine', email: null, method: 'password' },
      {},
    );
    const promoted = await ensureAdmin(deps(), { username: 'later_admin', password: 'ignored pw' }, {});
    expect(promoted).toEqual({ userId: user.userId, created: false, promoted: true });
    const read = await deps().commands.read(userDecider, userStream(user.userId));
    expect(read.state.permission).toBe(2);
    expect(await verifyPassword(read.state.passwordHash, 'mine mine')).toBe(true);
  });

  it('at start-up, promotes an existing user only when its password is the configured one', async () => {
    const { user } = await registerUser(
      deps(),
      { username: 'squatter', password: 'squatter pw', email: null, method: 'password' },
      {},
    );
    const refused = await ensureAdmin(
      deps(),
      { username: 'squatter', password: 'the configured one', provePassword: true },
      {},
    );
    expect(refused).toEqual({ userId: user.userId, created: false, promoted: false, refused: true });
    expect((await readUser(deps(), user.userId)).permission).toBe(0);
    const proven = await ensureAdmin(
      deps(),
      { username: 'squatter', password: 'squatter pw', provePassword: true },
      {},
    );
    expect(proven).toEqual({ userId: user.userId, created: false, promoted: true });
  });
});
