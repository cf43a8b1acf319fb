import type { KyselyPlugin } from 'kysely';
import { uuidV7Ids } from '../../src/platform/clock';
import { createSessionGuard } from '../../src/queries/sessionGuard';
import { openTestDatabase, testDatabases, type TestDatabase } from '../support/databases';

describe.each(testDatabases())('session checks on %s', (kind) => {
  let t: TestDatabase;
  beforeEach(async () => {
    t = await openTestDatabase(kind);
  });
  afterEach(() => t.close());

  /** A user and a session of theirs as the read models hold them. */
  async function projected(
    user: { disabled?: boolean; permission?: number },
    session: { revoked?: boolean },
  ) {
    const userId = uuidV7Ids.next();
    const sessionId = uuidV7Ids.next();
    const at = new Date();
    await t.db.db
      .insertInto('users')
      .values({
        id: userId,
        username: `u${userId}`,
        email: null,
        nickname: 'n',
        permission: user.permission ?? 0,
        disabled: user.disabled ?? false,
        avatar_id: null,
        method: 'password',
        identities: JSON.stringify([]),
        created_at: at,
        updated_at: at,
        last_position: 1,
      } as never)
      .execute();
    await t.db.db
      .insertInto('sessions')
      .values({
        id: sessionId,
        user_id: userId,
        method: 'password',
        user_agent: null,
        ip: null,
        created_at: at,
        last_used_at: at,
        expires_at: new Date(at.getTime() + 3600_000),
        revoked_at: session.revoked ? at : null,
        revoke_reason: session.revoked ? 'signed out' : null,
        last_position: 1,
      } as never)
      .execute();
    return { sessionId, userId };
  }

  it('asked for at once share one statement, each answered for its own session and user', async () => {
    let statements = 0;
    const counting: KyselyPlugin = {
      transformQuery: (args) => {
        statements++;
        return args.node;
      },
      transformResult: (args) => Promise.resolve(args.result),
    };
    /** A guard of an instance of its own, its cache empty, counting what it runs. */
    const newGuard = () =>
      createSessionGuard({
        db: t.db.db.withPlugin(counting),
        clock: { now: () => new Date() },
        cacheMs: 500,
        markTtlSeconds: 60,
      });
    const guard = newGuard();
    const live = await projected({}, {});
    const admin = await projected({ permission: 2 }, {});
    const revoked = await projected({}, { revoked: true });
    const disabled = await projected({ disabled: true }, {});
    // Signed in a moment ago: neither is projected yet.
    const fresh = { sessionId: uuidV7Ids.next(), userId: uuidV7Ids.next() };
    const asked = [live, revoked, admin, fresh, disabled, live, { ...admin, sessionId: revoked.sessionId }];

    const answers = await Promise.all(asked.map((a) => guard.check(a.sessionId, a.userId)));

    expect(statements).toBe(1);
    expect(answers).toEqual([
      { ok: true, permission: 0 },
      { ok: false, reason: 'revoked' },
      { ok: true, permission: 2 },
      { ok: true, permission: null },
      { ok: false, reason: 'disabled' },
      { ok: true, permission: 0 },
      { ok: false, reason: 'revoked' },
    ]);
    // Each answer is cached: asked again, nothing is read.
    expect(await guard.check(disabled.sessionId, disabled.userId)).toEqual({ ok: false, reason: 'disabled' });
    expect(statements).toBe(1);
    // A lone check, on an instance whose cache is empty, reads on its own.
    const alone = newGuard();
    expect(await alone.check(admin.sessionId, admin.userId)).toEqual({ ok: true, permission: 2 });
    expect(statements).toBe(2);
  });
});
