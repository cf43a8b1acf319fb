import { allResources } from '../../src/http/resources';
import { allProjectors } from '../../src/projections';
import { createTestApp, signedInUser, type TestApp } from '../support/app';
import { bearer } from '../support/tokens';

/**
 * API.md: `DELETE /session` revokes the session, and a bad token is 401. A retry with an
 * `Idempotency-Key` is answered from the kept answer before the route's `auth()` would run, so the
 * idempotency layer checks the session itself: an access token of a signed-out session, or of a
 * disabled user, gets 401, not the kept answer.
 */
let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({ resources: [...allResources], projectors: allProjectors });
});
afterAll(() => t?.close());

const signedIn = () => signedInUser(t, 'replay');

const preset = {
  name: 'mine',
  model: 'local-echo',
  messages: [{ role: 'system', content: 'secret prompt' }],
};

/** Creates the preset under `key`, or (sent again) asks for the answer kept for it. */
const presetWithKey = (auth: string, key: string) =>
  t.http.post('/api/v1/presets').set('Authorization', auth).set('Idempotency-Key', key).send(preset);

describe('an access token of an ended session', () => {
  it('gets 401, not a replayed answer, for a POST with an Idempotency-Key it used before', async () => {
    const u = await signedIn();
    const first = await presetWithKey(u.auth, 'create-preset-1');
    expect(first.status).toBe(201);

    expect((await t.http.delete('/api/v1/session').set('Authorization', u.auth)).status).toBe(204);
    // Any other request with the token is refused now.
    expect((await t.http.get('/api/v1/users/me').set('Authorization', u.auth)).status).toBe(401);

    const replay = await presetWithKey(u.auth, 'create-preset-1');
    expect(replay.status).toBe(401);
    expect(replay.body).not.toHaveProperty('messages');
  });

  it('gets 401 for a replay once the user is disabled', async () => {
    const u = await signedIn();
    const first = await presetWithKey(u.auth, 'create-preset-2');
    expect(first.status).toBe(201);

    const adminToken = bearer({ userId: `admin-${process.pid}`, permission: 2 });
    const disabled = await t.http
      .patch(`/api/v1/users/${u.id}`)
      .set('Authorization', adminToken)
      .send({ disabled: true });
    expect(disabled.status).toBe(200);
    expect((await t.http.get('/api/v1/users/me').set('Authorization', u.auth)).status).toBe(401);

    const replay = await presetWithKey(u.auth, 'create-preset-2');
    expect(replay.status).toBe(401);
  });
});
