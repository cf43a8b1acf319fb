import { allResources } from '../../src/http/resources';
import { allProjectors } from '../../src/projections';
import { createTestApp, type TestApp } from '../support/app';

/**
 * The per-username sign-in budget (RATE_LIMIT_LOGIN_USERNAME) is what stops a brute force on one
 * account from many addresses. Its key is the name as the sign-in reads it (trimmed), so a name
 * padded with spaces, which signs in as the same user, spends from the same budget.
 */
let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({
    resources: [...allResources],
    projectors: allProjectors,
    config: {
      RATE_LIMITS_ENABLED: true,
      RATE_LIMIT_LOGIN_USERNAME: { points: 5, seconds: 3600 },
      // Each guess from another address, as a distributed brute force would.
      TRUST_PROXY: true,
    },
  });
});
afterAll(() => t?.close());

const login = (username: string, password: string, ip: string) =>
  t.http
    .post('/api/v1/session/oauth2/token')
    .set('X-Forwarded-For', ip)
    .type('form')
    .send({ username, password });

describe('per-username sign-in limit', () => {
  it('is not bypassed by padding the username with spaces past 64 characters', async () => {
    const name = `target_${process.pid}`;
    const reg = await t.http.post('/api/v1/users').send({ username: name, password: 'the real one' });
    expect(reg.status).toBe(201);

    // The padded name is the same account: the right password gets in with it.
    const padded = `${name}${' '.repeat(80)}`;
    expect((await login(padded, 'the real one', '198.51.100.1')).status).toBe(200);

    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) {
      statuses.push((await login(padded, `guess ${i}`, `198.51.100.${10 + i}`)).status);
    }
    // Five wrong guesses, then the username's budget is spent: 429 from then on.
    expect(statuses.slice(0, 5)).toEqual([401, 401, 401, 401, 401]);
    expect(statuses.slice(5)).toEqual([429, 429, 429, 429, 429]);
  });
});
