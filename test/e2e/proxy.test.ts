import { allResources } from '../../src/http/resources';
import { allProjectors } from '../../src/projections';
import { createTestApp, type TestApp } from '../support/app';

/** Behind a proxy, the client address is what our proxy saw, not what the client wrote. */
let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({
    resources: [...allResources],
    projectors: allProjectors,
    config: {
      TRUST_PROXY: true,
      PROXY_HOPS: 1,
      RATE_LIMITS_ENABLED: true,
      RATE_LIMIT_LOGIN_IP: { points: 3, seconds: 60 },
      RATE_LIMIT_LOGIN_USERNAME: { points: 100, seconds: 60 },
    },
  });
});
afterAll(() => t?.close());

it('limits sign-ins per client address even when the client forges X-Forwarded-For entries', async () => {
  const statuses: number[] = [];
  for (let i = 0; i < 5; i++) {
    const res = await t.http
      .post('/api/v1/session/oauth2/token')
      // The client writes a new address each time; our proxy appends the one it saw: always the same.
      .set('X-Forwarded-For', `10.0.0.${i}, 203.0.113.7`)
      .type('form')
      .send({ username: `nobody_${i}`, password: 'wrong password' });
    statuses.push(res.status);
  }
  expect(statuses).toEqual([401, 401, 401, 429, 429]);
});
