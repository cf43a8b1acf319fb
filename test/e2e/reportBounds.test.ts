import { allResources } from '../../src/http/resources';
import { allProjectors } from '../../src/projections';
import { ledgerDecider } from '../../src/commands/ledger/decider';
import { ledgerStream } from '../../src/events/ledger';
import { createTestApp, registeredUser, type TestApp } from '../support/app';
import { bearer } from '../support/tokens';

/**
 * Report times take up to nine fraction digits, and events are timed to the millisecond. Periods
 * are half-open [from, to): an event at 00:00:00.000 lies before `to` = 00:00:00.0001 and before
 * `from` = 00:00:00.0001, so it is inside the first period and in the opening balance of the second.
 */
const T = new Date('2030-01-01T00:00:00.000Z');
let t: TestApp;
const admin = bearer({ userId: 'admin-1', permission: 2 });

beforeAll(async () => {
  t = await createTestApp({ resources: [...allResources], projectors: allProjectors });
  await registeredUser(t, 'fina');
  // A grant decided at T, as POST /users/{id}/credits decides one with the clock at T.
  const r = await t.deps.commands.handle(ledgerDecider, ledgerStream('fina'), {
    type: 'GrantCredits',
    data: { userId: 'fina', grantId: 'g-fina', amount: 40, reason: 'seed' },
    metadata: { now: T, actorId: 'admin-1' },
  });
  expect(r.events).toHaveLength(1);
});
afterAll(() => t?.close());

const statement = (from: string, to: string) =>
  t.http
    .get('/api/v1/admin/ledger/statement')
    .query({ user_id: 'fina', from, to })
    .set('Authorization', admin);

describe('report periods with sub-millisecond bounds', () => {
  it('a statement to 00:00:00.0001 includes the grant made at 00:00:00.000', async () => {
    const res = await statement('2029-12-31', '2030-01-01T00:00:00.0001Z');
    expect(res.status).toBe(200);
    expect(res.body.movements).toHaveLength(1);
    expect(res.body.closing).toEqual({ posted: 40, held: 0, available: 40 });
  });

  it('a statement from 00:00:00.0001 puts the grant made at 00:00:00.000 in the opening balance', async () => {
    const res = await statement('2030-01-01T00:00:00.0001Z', '2030-01-02');
    expect(res.status).toBe(200);
    expect(res.body.opening).toEqual({ posted: 40, held: 0, available: 40 });
    expect(res.body.movements).toHaveLength(0);
  });

  it('a summary to 00:00:00.0001 counts the grant made at 00:00:00.000', async () => {
    const res = await t.http
      .get('/api/v1/admin/ledger/summary')
      .query({ from: '2029-12-31', to: '2030-01-01T00:00:00.0001Z' })
      .set('Authorization', admin);
    expect(res.status).toBe(200);
    expect(res.body.events).toBe(1);
  });
});
