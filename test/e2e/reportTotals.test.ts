import { allResources } from '../../src/http/resources';
import { allProjectors } from '../../src/projections';
import { createTestApp, registeredUser, type TestApp } from '../support/app';
import { bearer } from '../support/tokens';

/**
 * One account, every movement within MAX_BALANCE (2^53 − 1) as the decider allows it: a grant of
 * the most an account holds, an adjustment taking all of it back, then a grant of 2. Its balance is
 * 2 at every step's end, while the grants over the log total 2^53 + 1, past what a double holds: the
 * log-wide reports add up exactly, so the summary's closing balance is 2 and verify finds no breach.
 */
let t: TestApp;
const admin = bearer({ userId: 'admin-1', permission: 2 });
const from = new Date(Date.now() - 3_600_000).toISOString();
const to = new Date(Date.now() + 3_600_000).toISOString();
const MAX = Number.MAX_SAFE_INTEGER;

beforeAll(async () => {
  t = await createTestApp({ resources: [...allResources], projectors: allProjectors });
  await registeredUser(t, 'max');
  for (const amount of [MAX, -MAX, 2]) {
    const res = await t.http
      .post('/api/v1/users/max/credits')
      .set('Authorization', admin)
      .send({ amount, reason: 'seed' });
    expect(res.status).toBe(201);
  }
  // The account's own balance is right: 2.
  const balance = await t.http
    .get('/api/v1/admin/ledger/balance')
    .query({ user_id: 'max', at: to })
    .set('Authorization', admin);
  expect(balance.body).toMatchObject({ posted: 2, held: 0, available: 2 });
});
afterAll(() => t?.close());

describe('ledger reports with movements that add up past 2^53', () => {
  it('summary closes the period at the real balance (2), not at a rounded 1', async () => {
    const res = await t.http
      .get('/api/v1/admin/ledger/summary')
      .query({ from, to })
      .set('Authorization', admin);
    expect(res.status).toBe(200);
    // Added up as doubles, 2^53 − 1 + 2 rounds to 2^53 in the credit column of
    // user_balances_available, and the closing balance reads 2^53 − (2^53 − 1) = 1.
    expect(res.body.balances.closing).toEqual({ posted: 2, held: 0, available: 2 });
    const user = (res.body.trial_balance.accounts as { account: string; closing_balance: number }[]).find(
      (a) => a.account === 'user_balances_available',
    );
    expect(user?.closing_balance).toBe(2);
  });

  it('verify finds no breach in a log the decider wrote', async () => {
    const res = await t.http.get('/api/v1/admin/ledger/verify').set('Authorization', admin);
    expect(res.status).toBe(200);
    expect(res.body.breaches).toEqual([]);
    expect(res.body.ok).toBe(true);
  });
});
