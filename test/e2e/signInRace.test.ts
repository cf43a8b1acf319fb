import type * as Passwords from '../../src/platform/passwords';
import { allResources } from '../../src/http/resources';
import { allProjectors } from '../../src/projections';
import { createTestApp, type TestApp } from '../support/app';
import { bearer } from '../support/tokens';

/**
 * A password sign-in checks the password against the hash it read, then starts the session. A
 * password change that lands in between (while argon2 verifies) ends every session that exists
 * then, which cannot include the one about to start, let in by the old password. That session must
 * not outlive the change: neither its access token nor its refresh token may work afterwards. The
 * window is held open by pausing the sign-in's password check until the change is done.
 */
const gate: { armed: boolean; reached?: () => void; release?: Promise<void> } = { armed: false };

jest.mock('../../src/platform/passwords', () => {
  const actual = jest.requireActual<typeof Passwords>('../../src/platform/passwords');
  return {
    ...actual,
    async verifyPassword(hash: string | null, password: string): Promise<boolean> {
      const ok: boolean = await actual.verifyPassword(hash, password);
      if (gate.armed) {
        // Only the first check after arming waits (the racing sign-in), not the change's own.
        gate.armed = false;
        gate.reached?.();
        await gate.release;
      }
      return ok;
    },
  };
});

let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({ resources: [...allResources], projectors: allProjectors });
});
afterAll(() => t?.close());

/** Pauses the next password check after it has run; resolves once it is paused, with its release. */
async function holdNextPasswordCheck(start: () => Promise<unknown>): Promise<() => void> {
  let reached!: () => void;
  const atGate = new Promise<void>((resolve) => (reached = resolve));
  let open!: () => void;
  gate.release = new Promise<void>((resolve) => (open = resolve));
  gate.reached = reached;
  gate.armed = true;
  void start();
  await atGate;
  return open;
}

const login = (username: string, password: string) =>
  // A supertest request starts when awaited: `then` starts it now.
  t.http
    .post('/api/v1/session/oauth2/token')
    .type('form')
    .send({ username, password })
    .then((res) => res);

/** The racing sign-in is refused outright (no tokens), or whatever it got no longer works. */
async function expectNoWorkingSession(answer: {
  status: number;
  body: { access_token?: string; refresh_token?: string };
}) {
  expect([200, 401]).toContain(answer.status);
  const me = await t.http
    .get('/api/v1/users/me')
    .set('Authorization', `Bearer ${answer.body.access_token ?? 'none'}`);
  const refreshed = await t.http
    .post('/api/v1/session/refresh')
    .send({ refresh_token: answer.body.refresh_token ?? 'none' });
  expect(me.status).toBe(401);
  expect(refreshed.status).toBe(401);
}

describe('changing my password', () => {
  it('leaves no working session to a sign-in that was let in by the old password while it changed', async () => {
    const username = `victim_${process.pid}`;
    const oldPassword = 'old password 1';
    expect((await t.http.post('/api/v1/users').send({ username, password: oldPassword })).status).toBe(201);
    const mine = await login(username, oldPassword);
    expect(mine.status).toBe(200);

    // The attacker's sign-in with the old password: checked, not yet started.
    const racing = login(username, oldPassword);
    const open = await holdNextPasswordCheck(() => racing);

    // The owner changes the password: every other session must end.
    const changed = await t.http
      .put('/api/v1/users/me/password')
      .set('Authorization', `Bearer ${mine.body.access_token}`)
      .send({ old_password: oldPassword, new_password: 'new password 2' });
    expect(changed.status).toBe(204);

    open();
    await expectNoWorkingSession(await racing);
    // The old password itself no longer signs in.
    expect((await login(username, oldPassword)).status).toBe(401);
  });

  it('an admin reset leaves no working session to a sign-in let in by the old password meanwhile', async () => {
    const username = `reset_${process.pid}`;
    const oldPassword = 'old password 1';
    const reg = await t.http.post('/api/v1/users').send({ username, password: oldPassword });
    expect(reg.status).toBe(201);

    const racing = login(username, oldPassword);
    const open = await holdNextPasswordCheck(() => racing);
    const reset = await t.http
      .put(`/api/v1/users/${reg.body.id as string}/password`)
      .set('Authorization', bearer({ userId: `admin-${process.pid}`, permission: 2 }))
      .send({ new_password: 'set by admin' });
    expect(reset.status).toBe(204);
    open();
    await expectNoWorkingSession(await racing);
  });
});
