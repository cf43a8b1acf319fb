import jwt from 'jsonwebtoken';
import supertest from 'supertest';
import { CommandHandler } from '../../src/commands/handler';
import { createApp, type AppDeps } from '../../src/http/app';
import { allResources } from '../../src/http/resources';
import { uuidV7Ids } from '../../src/platform/clock';
import { testConfig } from '../../src/platform/config';
import { allProjectors } from '../../src/projections';
import { createSessionGuard } from '../../src/queries/sessionGuard';
import { sessionDecider } from '../../src/commands/sessions/decider';
import { userDecider } from '../../src/commands/users/decider';
import { userStream } from '../../src/events/users';
import { sessionStream } from '../../src/events/sessions';
import { createTestApp, type TestApp } from '../support/app';
import { bearer } from '../support/tokens';

let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({ resources: [...allResources], projectors: allProjectors });
});
afterAll(() => t?.close());

let counter = 0;
const uniqueName = (prefix = 'user') => `${prefix}_${process.pid}_${++counter}`;

async function register(username = uniqueName(), password = 'correct horse', email?: string, http = t.http) {
  const res = await http.post('/api/v1/users').send({ username, password, ...(email ? { email } : {}) });
  expect(res.status).toBe(201);
  return { username, password, id: res.body.id as string, res };
}

async function login(username: string, password: string, http = t.http) {
  return http.post('/api/v1/session/oauth2/token').type('form').send({ username, password });
}

async function signedIn(username = uniqueName()) {
  const user = await register(username);
  const res = await login(user.username, user.password);
  expect(res.status).toBe(200);
  return {
    ...user,
    access: res.body.access_token as string,
    refresh: res.body.refresh_token as string,
    auth: `Bearer ${res.body.access_token as string}`,
    /** The sign-in's event position: at or past everything of this user so far. */
    position: res.headers['x-event-position'] as string,
  };
}

const sessionOf = (access: string) => (jwt.decode(access) as { sid: string }).sid;

describe('sign-up', () => {
  it('answers 201 with the user, and the sign-up grant lands in the ledger', async () => {
    const name = uniqueName('Alice');
    const { res } = await register(name, 'correct horse', `${name}@example.com`);
    expect(res.body).toEqual({
      id: expect.stringMatching(/^[0-9a-f-]{36}$/),
      username: name,
      email: `${name}@example.com`,
      nickname: name,
      permission: 0,
      created_at: expect.any(String),
      avatar_url: null,
    });
    const tokens = await login(name, 'correct horse');
    const credits = await t.http
      .get('/api/v1/users/me/credits')
      .set('Authorization', `Bearer ${tokens.body.access_token as string}`)
      .set('X-Consistent-After', res.headers['x-event-position'] as string);
    expect(credits.status).toBe(200);
    expect(credits.body).toMatchObject({ balance: 1000, available: 1000 });
    expect(credits.body.history.items).toEqual([
      expect.objectContaining({ type: 'granted', amount: 1000, reason: 'signup' }),
    ]);
  });

  it('answers 409 for a taken username in any letter case, and for a taken email', async () => {
    const name = uniqueName('Bob');
    await register(name, 'correct horse', `${name}@example.com`);
    const again = await t.http
      .post('/api/v1/users')
      .send({ username: name.toUpperCase(), password: 'x'.repeat(8) });
    expect(again.status).toBe(409);
    expect(again.body).toMatchObject({ type: '/problems/already-taken', field: 'username' });
    const email = await t.http
      .post('/api/v1/users')
      .send({ username: uniqueName(), password: 'x'.repeat(8), email: `${name.toUpperCase()}@EXAMPLE.com` });
    expect(email.status).toBe(409);
    expect(email.body).toMatchObject({ field: 'email' });
  });

  it('releases the username when the email is taken, so it can be registered after all', async () => {
    const owner = uniqueName();
    await register(owner, 'correct horse', `${owner}@example.com`);
    const name = uniqueName();
    const clash = await t.http
      .post('/api/v1/users')
      .send({ username: name, password: 'x'.repeat(8), email: `${owner}@example.com` });
    expect(clash.status).toBe(409);
    await register(name);
  });

  it('answers 400 naming the field for a bad username, short password or bad email', async () => {
    for (const body of [
      { username: 'ab', password: 'long enough' },
      { username: 'has space', password: 'long enough' },
      { username: uniqueName(), password: 'short' },
      { username: uniqueName(), password: 'long enough', email: 'not-an-email' },
      // A field the API does not know, as on every other route: a typo is not silently dropped.
      { username: uniqueName(), password: 'long enough', emial: 'ann@example.com' },
    ]) {
      const res = await t.http.post('/api/v1/users').send(body);
      expect(res.status).toBe(400);
      expect(res.headers['content-type']).toMatch(/application\/problem\+json/);
    }
  });

  it('gives exactly one 201 for 200 parallel registrations of one username', async () => {
    const name = uniqueName('race');
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        t.http.post('/api/v1/users').send({ username: name, password: `password-${i}` }),
      ),
    );
    const statuses = results.map((r) => r.status);
    expect(statuses.filter((s) => s === 201)).toHaveLength(1);
    expect(statuses.filter((s) => s === 409)).toHaveLength(199);
    const winner = results.findIndex((r) => r.status === 201);
    expect((await login(name, `password-${winner}`)).status).toBe(200);
  });
});

describe('sign-in and sessions', () => {
  it('issues a token pair for the OAuth2 password grant and shows my profile', async () => {
    const u = await register();
    const res = await login(u.username, u.password);
    expect(res.status).toBe(200);
    expect(res.headers['cache-control']).toBe('no-store');
    expect(res.body).toEqual({
      access_token: expect.any(String),
      token_type: 'bearer',
      expires_in: 86400,
      refresh_token: expect.stringMatching(/^[0-9a-f-]{36}\.[A-Za-z0-9_-]{43}$/),
    });
    const me = await t.http
      .get('/api/v1/users/me')
      .set('Authorization', `Bearer ${res.body.access_token as string}`);
    expect(me.status).toBe(200);
    expect(me.body).toMatchObject({ id: u.id, username: u.username, permission: 0 });
  });

  it('answers 401 for a wrong password or an unknown user, alike', async () => {
    const u = await register();
    const wrong = await login(u.username, 'not the password');
    const unknown = await login(uniqueName('nobody'), 'whatever pw');
    for (const res of [wrong, unknown]) {
      expect(res.status).toBe(401);
      expect(res.body.detail).toBe('Wrong username or password.');
    }
  });

  it('rotates refresh tokens: the old one is refused, and reusing it ends the whole session', async () => {
    const u = await signedIn();
    const first = await t.http.post('/api/v1/session/refresh').send({ refresh_token: u.refresh });
    expect(first.status).toBe(200);
    const second = first.body as { access_token: string; refresh_token: string };
    expect(second.refresh_token).not.toBe(u.refresh);
    expect(sessionOf(second.access_token)).toBe(sessionOf(u.access));

    const reused = await t.http.post('/api/v1/session/refresh').send({ refresh_token: u.refresh });
    expect(reused.status).toBe(401);
    expect(reused.body.detail).toMatch(/already used/);
    // The reuse revoked the session: the newer refresh token and every access token are dead too.
    const after = await t.http.post('/api/v1/session/refresh').send({ refresh_token: second.refresh_token });
    expect(after.status).toBe(401);
    for (const token of [u.access, second.access_token]) {
      const me = await t.http.get('/api/v1/users/me').set('Authorization', `Bearer ${token}`);
      expect(me.status).toBe(401);
    }
  });

  it('gives a token answer again to the same request with its key, kept sealed, and reuse is still caught', async () => {
    const u = await signedIn();
    const key = `refresh-${crypto.randomUUID()}`;
    const refresh = (token: string, withKey = true) => {
      const req = t.http.post('/api/v1/session/refresh');
      return (withKey ? req.set('Idempotency-Key', key) : req).send({ refresh_token: token });
    };
    const first = await refresh(u.refresh);
    expect(first.status).toBe(200);
    // The client did not hear the answer and asks again: the same pair, not a reuse.
    const again = await refresh(u.refresh);
    expect(again.status).toBe(200);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.headers['cache-control']).toBe('no-store');
    expect(again.body).toEqual(first.body);
    // No token is stored as is.
    const kept = await t.deps.db.db
      .selectFrom('idempotency_keys')
      .select(['body', 'sealed'])
      .where('key', '=', key)
      .executeTakeFirstOrThrow();
    expect(kept.sealed).toBe(true);
    const stored = kept.body!.toString('latin1');
    for (const token of [first.body.refresh_token as string, first.body.access_token as string]) {
      expect(stored).not.toContain(token);
    }
    // Given again only as long as a retry of a lost answer would come (the key's lease, 60 s).
    const row = t.deps.db.db.updateTable('idempotency_keys').where('key', '=', key);
    await row.set({ completed_at: new Date(Date.now() - 61_000) }).execute();
    expect((await refresh(u.refresh)).status).toBe(409);
    // A sealed answer that does not open (the service's secret changed) is not given out either.
    const broken = Buffer.from(kept.body!);
    broken[broken.length - 1]! ^= 1;
    await row.set({ body: broken, completed_at: new Date() }).execute();
    expect((await refresh(u.refresh)).status).toBe(409);
    // The spent token without the key is reuse, as ever: the session ends.
    expect((await refresh(u.refresh, false)).status).toBe(401);
    expect((await refresh(first.body.refresh_token as string, false)).status).toBe(401);
  });

  it('takes the refresh grant at the OAuth2 token endpoint too', async () => {
    const u = await signedIn();
    const res = await t.http
      .post('/api/v1/session/oauth2/token')
      .type('form')
      .send({ grant_type: 'refresh_token', refresh_token: u.refresh });
    expect(res.status).toBe(200);
    expect(res.body.token_type).toBe('bearer');
  });

  it('answers 401 for a malformed or made-up refresh token', async () => {
    for (const refresh_token of ['nope', `${crypto.randomUUID()}.${'A'.repeat(43)}`]) {
      const res = await t.http.post('/api/v1/session/refresh').send({ refresh_token });
      expect(res.status).toBe(401);
    }
  });

  it('signs out: DELETE /session answers 204 and the token stops working', async () => {
    const u = await signedIn();
    const out = await t.http.delete('/api/v1/session').set('Authorization', u.auth);
    expect(out.status).toBe(204);
    expect((await t.http.get('/api/v1/users/me').set('Authorization', u.auth)).status).toBe(401);
    expect((await t.http.post('/api/v1/session/refresh').send({ refresh_token: u.refresh })).status).toBe(
      401,
    );
  });

  it('lists my active sessions and ends one of them; another user’s session is 404', async () => {
    const u = await signedIn();
    const other = await login(u.username, u.password);
    const otherSession = sessionOf(other.body.access_token as string);
    const list = await t.http
      .get('/api/v1/users/me/sessions')
      .set('Authorization', u.auth)
      .set('X-Consistent-After', other.headers['x-event-position'] as string);
    expect(list.status).toBe(200);
    expect(list.body.items).toHaveLength(2);
    const items = list.body.items as { id: string; current: boolean }[];
    expect(items.find((s) => s.current)?.id).toBe(sessionOf(u.access));
    // Paged as every list is: newest first.
    const page = (query: Record<string, string | number>) =>
      t.http.get('/api/v1/users/me/sessions').query(query).set('Authorization', u.auth);
    const first = await page({ limit: 1 });
    expect((first.body.items as { id: string }[]).map((s) => s.id)).toEqual([otherSession]);
    const second = await page({ limit: 1, cursor: first.body.next_cursor as string });
    expect(second.body).toMatchObject({ items: [{ id: sessionOf(u.access) }], next_cursor: null });
    expect((await page({ limit: 0 })).status).toBe(400);

    const stranger = await signedIn();
    const foreign = await t.http
      .delete(`/api/v1/users/me/sessions/${otherSession}`)
      .set('Authorization', stranger.auth);
    expect(foreign.status).toBe(404);
    expect(
      (await t.http.get('/api/v1/users/me').set('Authorization', `Bearer ${other.body.access_token}`)).status,
    ).toBe(200);

    const ended = await t.http
      .delete(`/api/v1/users/me/sessions/${otherSession}`)
      .set('Authorization', u.auth);
    expect(ended.status).toBe(204);
    expect(
      (await t.http.get('/api/v1/users/me').set('Authorization', `Bearer ${other.body.access_token}`)).status,
    ).toBe(401);
    const after = await t.http
      .get('/api/v1/users/me/sessions')
      .set('Authorization', u.auth)
      .set('X-Consistent-After', ended.headers['x-event-position'] as string);
    expect((after.body.items as { id: string }[]).map((s) => s.id)).toEqual([sessionOf(u.access)]);
  });

  it('changing my password ends my other sessions and keeps this one', async () => {
    const u = await signedIn();
    const other = await login(u.username, u.password);
    const wrongOld = await t.http
      .put('/api/v1/users/me/password')
      .set('Authorization', u.auth)
      .send({ old_password: 'not it at all', new_password: 'brand new pw' });
    expect(wrongOld.status).toBe(400);
    const changed = await t.http
      .put('/api/v1/users/me/password')
      .set('Authorization', u.auth)
      .send({ old_password: u.password, new_password: 'brand new pw' });
    expect(changed.status).toBe(204);
    expect(
      (await t.http.get('/api/v1/users/me').set('Authorization', `Bearer ${other.body.access_token}`)).status,
    ).toBe(401);
    expect((await t.http.get('/api/v1/users/me').set('Authorization', u.auth)).status).toBe(200);
    expect((await login(u.username, u.password)).status).toBe(401);
    expect((await login(u.username, 'brand new pw')).status).toBe(200);
  });

  it('changes my password once when the same old password is sent with ten new ones at once', async () => {
    const u = await signedIn();
    const answers = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        t.http
          .put('/api/v1/users/me/password')
          .set('Authorization', u.auth)
          .send({ old_password: u.password, new_password: `new password ${i}` }),
      ),
    );
    const changed = answers.flatMap((res, i) => (res.status === 204 ? [i] : []));
    expect(changed).toHaveLength(1);
    for (const res of answers) {
      if (res.status === 204) continue;
      expect(res.status).toBe(400);
      expect(res.body.detail).toBe('The old password is wrong.');
    }
    // The one told so is the one that works.
    for (let i = 0; i < 10; i++) {
      expect((await login(u.username, `new password ${i}`)).status).toBe(i === changed[0] ? 200 : 401);
    }
  });

  it('changes my email once when four changes come at once, and leaves none of the others reserved', async () => {
    const u = await signedIn();
    const emails = Array.from({ length: 4 }, (_, i) => `${u.username}_${i}@example.com`);
    const changes = await Promise.all(
      emails.map((email) => t.http.patch('/api/v1/users/me').set('Authorization', u.auth).send({ email })),
    );
    const won = changes.flatMap((res, i) => (res.status === 200 ? [emails[i]!] : []));
    expect(won).toHaveLength(1);
    for (const res of changes) if (res.status !== 200) expect(res.status).toBe(409);
    expect((await t.http.get('/api/v1/users/me').set('Authorization', u.auth)).body.email).toBe(won[0]);
    // Every email the user does not have is free for another to register with.
    for (const email of emails.filter((e) => e !== won[0])) {
      expect((await register(uniqueName(), 'correct horse', email)).res.status).toBe(201);
    }
  });

  it('ends at its next refresh a session the sessions read model did not show to be revoked', async () => {
    // An instance whose sessions read model is behind (here: not running at all).
    const lagging = await createTestApp({
      resources: [...allResources],
      projectors: allProjectors,
      startProjections: false,
      config: { CONSISTENCY_TIMEOUT_MS: 50 },
    });
    try {
      const name = uniqueName('lag');
      const { id: userId } = await register(name, 'correct horse', undefined, lagging.http);
      const signIn = async () => {
        const res = await login(name, 'correct horse', lagging.http);
        expect(res.status).toBe(200);
        return res.body as { access_token: string; refresh_token: string };
      };
      const refresh = (token: string) =>
        lagging.http.post('/api/v1/session/refresh').send({ refresh_token: token });
      const [mine, other] = [await signIn(), await signIn()];
      const changed = await lagging.http
        .put('/api/v1/users/me/password')
        .set('Authorization', `Bearer ${mine.access_token}`)
        .send({ old_password: 'correct horse', new_password: 'brand new pw' });
      expect(changed.status).toBe(204);
      const ended = await refresh(other.refresh_token);
      expect(ended.status).toBe(401);
      expect(ended.body.detail).toMatch(/password .* changed/);
      // For good: the session is revoked in its stream.
      const { state: otherSession } = await lagging.deps.commands.read(
        sessionDecider,
        sessionStream(sessionOf(other.access_token)),
      );
      expect(otherSession.revoked).toBe('password_change');
      expect((await login(name, 'correct horse', lagging.http)).status).toBe(401);
      const kept = await refresh(mine.refresh_token);
      expect(kept.status).toBe(200);
      const after = await login(name, 'brand new pw', lagging.http);
      expect(after.status).toBe(200);

      // Disabled and enabled again: the sessions started before still ended.
      const admin = bearer({ userId: 'lag-admin', permission: 2 });
      const id = sessionOf(after.body.access_token as string);
      for (const disabled of [true, false]) {
        // Done, though the answer's view of the user waits in vain for the users read model.
        const res = await lagging.http
          .patch(`/api/v1/users/${userId}`)
          .set('Authorization', admin)
          .send({ disabled });
        expect(res.status).toBe(504);
      }
      const { state: user } = await lagging.deps.commands.read(userDecider, userStream(userId));
      expect(user).toMatchObject({ disabled: false, sessionsEnded: { reason: 'user_disabled' } });
      const refused = await refresh(after.body.refresh_token as string);
      expect(refused.status).toBe(401);
      const { state } = await lagging.deps.commands.read(sessionDecider, sessionStream(id));
      expect(state.revoked).toBe('user_disabled');
      expect((await login(name, 'brand new pw', lagging.http)).status).toBe(200);
    } finally {
      await lagging.close();
    }
  });

  it('answers 401 for tokens with alg none, another key, expired, or tampered claims', async () => {
    const u = await signedIn();
    const claims = jwt.decode(u.access) as Record<string, unknown>;
    const none = `${Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.`;
    const otherKey = jwt.sign(claims, 'another-secret-another-secret-another-secret');
    const expired = bearer({ userId: u.id, sessionId: sessionOf(u.access), expiresIn: -10 });
    const [head, , sig] = u.access.split('.');
    const promoted = `${head}.${Buffer.from(JSON.stringify({ ...claims, perm: 2 })).toString('base64url')}.${sig}`;
    for (const token of [`Bearer ${none}`, `Bearer ${otherKey}`, expired, `Bearer ${promoted}`]) {
      const res = await t.http.get('/api/v1/users/me').set('Authorization', token);
      expect(res.status).toBe(401);
    }
  });
});

describe('profile', () => {
  it('changes my nickname and email; a taken email is 409 and the old one is freed on change', async () => {
    const u = await signedIn();
    const taken = await register(uniqueName(), 'correct horse', `taken_${u.username}@example.com`);
    expect(taken.id).toBeTruthy();
    const clash = await t.http
      .patch('/api/v1/users/me')
      .set('Authorization', u.auth)
      .send({ email: `taken_${u.username}@example.com` });
    expect(clash.status).toBe(409);
    const first = await t.http
      .patch('/api/v1/users/me')
      .set('Authorization', u.auth)
      .send({ nickname: 'Ally', email: `a_${u.username}@example.com` });
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ nickname: 'Ally', email: `a_${u.username}@example.com` });
    await t.http
      .patch('/api/v1/users/me')
      .set('Authorization', u.auth)
      .send({ email: `b_${u.username}@example.com` });
    // The first address is free again.
    await register(uniqueName(), 'correct horse', `a_${u.username}@example.com`);
    const empty = await t.http.patch('/api/v1/users/me').set('Authorization', u.auth).send({});
    expect(empty.status).toBe(400);
  });
});

describe('admin', () => {
  const adminRoutes: [string, string, object?][] = [
    ['get', '/api/v1/users'],
    ['get', '/api/v1/users/00000000-0000-7000-8000-000000000000'],
    ['patch', '/api/v1/users/00000000-0000-7000-8000-000000000000', { disabled: true }],
    ['put', '/api/v1/users/00000000-0000-7000-8000-000000000000/password', { new_password: 'whatever pw' }],
    ['post', '/api/v1/users/00000000-0000-7000-8000-000000000000/credits', { amount: 5, reason: 'x' }],
    ['post', '/api/v1/codes', { amount: 5 }],
    ['get', '/api/v1/codes'],
    ['get', '/api/v1/codes/ABCDEFGHJKMNPQRS'],
    ['delete', '/api/v1/codes/ABCDEFGHJKMNPQRS'],
    ['get', '/api/v1/admin/projections'],
  ];

  it('answers 403 to a signed-in non-admin on every admin route, 401 to nobody', async () => {
    const u = await signedIn();
    for (const [method, path, body] of adminRoutes) {
      const call = (t.http as unknown as Record<string, (p: string) => supertest.Test>)[method]!(path);
      const res = await call.set('Authorization', u.auth).send(body);
      expect([path, res.status]).toEqual([path, 403]);
      const anonymous = await (t.http as unknown as Record<string, (p: string) => supertest.Test>)[method]!(
        path,
      ).send(body);
      expect([path, anonymous.status]).toEqual([path, 401]);
    }
  });

  it('lists and views users, changes permission at once, disables and re-enables, resets passwords', async () => {
    const { ensureAdmin } = await import('../../src/commands/users/identity');
    const { identityDeps } = await import('../../src/http/identityDeps');
    const adminName = uniqueName('root');
    await ensureAdmin(identityDeps(t.deps), { username: adminName, password: 'admin password' }, {});
    const adminLogin = await login(adminName, 'admin password');
    const admin = `Bearer ${adminLogin.body.access_token as string}`;
    const u = await signedIn();

    // After the user's sign-in, so after its sign-up: the list is consistent with both.
    const list = await t.http
      .get(`/api/v1/users?q=${u.username.slice(0, 12)}&limit=100`)
      .set('Authorization', admin)
      .set('X-Consistent-After', u.position);
    expect(list.status).toBe(200);
    expect((list.body.items as { id: string }[]).map((x) => x.id)).toContain(u.id);
    const view = await t.http.get(`/api/v1/users/${u.id}`).set('Authorization', admin);
    expect(view.body).toMatchObject({ id: u.id, disabled: false, permission: 0 });

    // Promotion counts at once, with the token the user already holds.
    expect((await t.http.get('/api/v1/users').set('Authorization', u.auth)).status).toBe(403);
    const promoted = await t.http
      .patch(`/api/v1/users/${u.id}`)
      .set('Authorization', admin)
      .send({ permission: 2 });
    expect(promoted.status).toBe(200);
    expect(promoted.body.permission).toBe(2);
    expect((await t.http.get('/api/v1/users').set('Authorization', u.auth)).status).toBe(200);
    await t.http.patch(`/api/v1/users/${u.id}`).set('Authorization', admin).send({ permission: 0 });

    const disabled = await t.http
      .patch(`/api/v1/users/${u.id}`)
      .set('Authorization', admin)
      .send({ disabled: true });
    expect(disabled.status).toBe(200);
    expect(disabled.body.disabled).toBe(true);
    const refused = await t.http.get('/api/v1/users/me').set('Authorization', u.auth);
    expect(refused.status).toBe(401);
    expect(refused.body.detail).toMatch(/disabled/);
    expect((await login(u.username, u.password)).status).toBe(401);
    await t.http.patch(`/api/v1/users/${u.id}`).set('Authorization', admin).send({ disabled: false });
    const again = await login(u.username, u.password);
    expect(again.status).toBe(200);

    const reset = await t.http
      .put(`/api/v1/users/${u.id}/password`)
      .set('Authorization', admin)
      .send({ new_password: 'set by admin' });
    expect(reset.status).toBe(204);
    expect(
      (await t.http.get('/api/v1/users/me').set('Authorization', `Bearer ${again.body.access_token}`)).status,
    ).toBe(401);
    expect((await login(u.username, 'set by admin')).status).toBe(200);

    const self = await t.http
      .patch(`/api/v1/users/${(jwt.decode(adminLogin.body.access_token as string) as { sub: string }).sub}`)
      .set('Authorization', admin)
      .send({ disabled: true });
    expect(self.status).toBe(409);
    expect(
      (await t.http.get('/api/v1/users/00000000-0000-7000-8000-000000000000').set('Authorization', admin))
        .status,
    ).toBe(404);
  });
});

describe('revocation across instances', () => {
  /** A second instance without Redis: it learns of changes from the read models, cached for AUTH_CACHE_MS. */
  function secondInstance() {
    const clock = { at: Date.now(), now: () => new Date(clock.at) };
    const config = testConfig();
    const other: AppDeps = {
      ...t.deps,
      commands: new CommandHandler(t.deps.store, { ids: uuidV7Ids }),
      sessionGuard: createSessionGuard({
        db: t.deps.db.db,
        clock,
        cacheMs: config.AUTH_CACHE_MS,
        markTtlSeconds: config.ACCESS_TOKEN_TTL_SECONDS,
      }),
    };
    return {
      http: supertest(createApp(other, allResources).callback()),
      turnCacheOver: () => void (clock.at += config.AUTH_CACHE_MS + 1),
    };
  }

  it('a second instance refuses a revoked session once its cache turns over, without Redis', async () => {
    const b = secondInstance();
    const u = await signedIn();
    expect((await b.http.get('/api/v1/users/me').set('Authorization', u.auth)).status).toBe(200);
    const out = await t.http.delete('/api/v1/session').set('Authorization', u.auth);
    expect(
      await t.deps.projections.waitFor(['sessions'], BigInt(out.headers['x-event-position'] as string), 5000),
    ).toBe(true);
    b.turnCacheOver();
    expect((await b.http.get('/api/v1/users/me').set('Authorization', u.auth)).status).toBe(401);
  });

  it('a second instance takes a new permission and refuses a disabled user once its cache turns over, without Redis', async () => {
    const { ensureAdmin } = await import('../../src/commands/users/identity');
    const { identityDeps } = await import('../../src/http/identityDeps');
    const adminName = uniqueName('root');
    await ensureAdmin(identityDeps(t.deps), { username: adminName, password: 'admin password' }, {});
    const admin = `Bearer ${(await login(adminName, 'admin password')).body.access_token as string}`;
    const b = secondInstance();
    const u = await signedIn();
    const projected = async (res: supertest.Response) => {
      expect(res.status).toBe(200);
      const at = BigInt(res.headers['x-event-position'] as string);
      expect(await t.deps.projections.waitFor(['users'], at, 5000)).toBe(true);
      b.turnCacheOver();
    };
    expect((await b.http.get('/api/v1/users').set('Authorization', u.auth)).status).toBe(403);

    await projected(
      await t.http.patch(`/api/v1/users/${u.id}`).set('Authorization', admin).send({ permission: 2 }),
    );
    expect((await b.http.get('/api/v1/users').set('Authorization', u.auth)).status).toBe(200);

    await projected(
      await t.http.patch(`/api/v1/users/${u.id}`).set('Authorization', admin).send({ disabled: true }),
    );
    const refused = await b.http.get('/api/v1/users/me').set('Authorization', u.auth);
    expect(refused.status).toBe(401);
    expect(refused.body.detail).toMatch(/disabled/);
  });
});

const withRedis = process.env.REDIS_URL ? describe : describe.skip;
withRedis('revocation across instances with Redis', () => {
  it('a second instance refuses a revoked session at once, before its cache turns over', async () => {
    const { Redis } = await import('ioredis');
    const redis = new Redis(process.env.REDIS_URL!);
    try {
      const config = testConfig();
      const frozen = new Date();
      const guard = (cacheMs: number) =>
        createSessionGuard({
          db: t.deps.db.db,
          redis,
          // A frozen clock: the read-model cache never turns over, so only Redis can tell.
          clock: { now: () => frozen },
          cacheMs,
          markTtlSeconds: config.ACCESS_TOKEN_TTL_SECONDS,
        });
      await new Promise((r) => (redis.status === 'ready' ? r(null) : redis.once('ready', r)));
      const a = supertest(createApp({ ...t.deps, sessionGuard: guard(1000) }, allResources).callback());
      const b = supertest(
        createApp(
          {
            ...t.deps,
            commands: new CommandHandler(t.deps.store, { ids: uuidV7Ids }),
            sessionGuard: guard(1000),
          },
          allResources,
        ).callback(),
      );
      const u = await signedIn();
      expect((await b.get('/api/v1/users/me').set('Authorization', u.auth)).status).toBe(200);
      expect((await a.delete('/api/v1/session').set('Authorization', u.auth)).status).toBe(204);
      expect((await b.get('/api/v1/users/me').set('Authorization', u.auth)).status).toBe(401);
    } finally {
      redis.disconnect();
    }
  });
});

describe('rate limits on sign-in and sign-up', () => {
  let limited: TestApp;
  beforeAll(async () => {
    limited = await createTestApp({
      resources: [...allResources],
      projectors: allProjectors,
      config: {
        RATE_LIMITS_ENABLED: true,
        RATE_LIMIT_REGISTER_IP: { points: 3, seconds: 3600 },
        TRUST_PROXY: true,
      },
    });
  });
  afterAll(() => limited?.close());

  it('answers 429 with Retry-After to a brute force on one username, and counts names case-blind', async () => {
    const name = uniqueName('target');
    const reg = await limited.http.post('/api/v1/users').send({ username: name, password: 'the real one' });
    expect(reg.status).toBe(201);
    const attempts = [];
    for (let i = 0; i < 5; i++) {
      attempts.push((await login(i % 2 ? name.toUpperCase() : name, `guess ${i}`, limited.http)).status);
    }
    expect(attempts).toEqual([401, 401, 401, 401, 401]);
    const blocked = await login(name, 'the real one', limited.http);
    expect(blocked.status).toBe(429);
    expect(Number(blocked.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(blocked.body).toMatchObject({ status: 429, type: '/problems/rate-limited' });
  });

  it('a successful sign-in clears the username’s failed attempts', async () => {
    const name = uniqueName('typo');
    await limited.http.post('/api/v1/users').send({ username: name, password: 'the real one' });
    for (let i = 0; i < 4; i++) expect((await login(name, 'typo typo', limited.http)).status).toBe(401);
    expect((await login(name, 'the real one', limited.http)).status).toBe(200);
    for (let i = 0; i < 4; i++) expect((await login(name, 'typo typo', limited.http)).status).toBe(401);
  });

  it('limits registrations per address', async () => {
    const register = (ip: string) =>
      limited.http
        .post('/api/v1/users')
        .set('X-Forwarded-For', ip)
        .send({ username: uniqueName('many'), password: 'long enough' });
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await register('203.0.113.7')).status);
    expect(statuses).toEqual([201, 201, 201, 429]);
    expect((await register('203.0.113.8')).status).toBe(201);
  });
});
