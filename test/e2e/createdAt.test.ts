import { allResources } from '../../src/http/resources';
import { allProjectors } from '../../src/projections';
import type { Clock } from '../../src/platform/clock';
import { createTestApp, type TestApp } from '../support/app';

/**
 * A command's answer is the resource as API.md describes it: `POST /users` → 201 user. Its
 * `created_at` is the one the resource has afterwards (`GET /users/me`), not another reading of a
 * clock. The clock here steps forward on every reading (as a real one does between the
 * moments a request reads it), which makes the difference certain rather than a matter of
 * milliseconds; with the system clock it shows as a few ms (e.g. …39.948Z answered, …39.939Z stored).
 */
let t: TestApp;
let readings = 0;
const steppingClock: Clock = { now: () => new Date(Date.now() + ++readings * 7) };
beforeAll(async () => {
  t = await createTestApp({
    resources: [...allResources],
    projectors: allProjectors,
    deps: { clock: steppingClock },
  });
});
afterAll(() => t?.close());

const API = '/api/v1';

describe('created_at in command answers', () => {
  it('answers POST /users with the created_at the user has (GET /users/me)', async () => {
    const username = `r7_created_${process.pid}`;
    const reg = await t.http.post(`${API}/users`).send({ username, password: 'correct horse' });
    expect(reg.status).toBe(201);
    const login = await t.http
      .post(`${API}/session/oauth2/token`)
      .type('form')
      .send({ username, password: 'correct horse' });
    expect(login.status).toBe(200);
    const me = await t.http
      .get(`${API}/users/me`)
      .set('Authorization', `Bearer ${login.body.access_token as string}`)
      .set('X-Consistent-After', reg.headers['x-event-position'] as string);
    expect(me.status).toBe(200);
    expect(reg.body.created_at).toBe(me.body.created_at);
  });
});
