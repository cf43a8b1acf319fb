import { allResources } from '../../src/http/resources';
import { allProjectors } from '../../src/projections';
import type { Projector } from '../../src/projections/types';
import { createTestApp, registeredUser, type TestApp } from '../support/app';
import { bearer } from '../support/tokens';

/**
 * API.md: every GET accepts `X-Consistent-After` and then reflects at least that position.
 * GET /admin/ledger/reconcile compares the balances projection with a replay up to the
 * projection's own checkpoint, so given the position of a grant the ledger projection has not
 * applied yet, it waits for the projection to pass it.
 */
let t: TestApp;
const admin = bearer({ userId: 'admin-1', permission: 2 });

/**
 * The ledger projection, behind for a moment (its first two batches fail, as on a database hiccup;
 * the runner retries after 0.5 s, then 1 s). Failing rather than sleeping inside its transaction:
 * PGlite has one connection, and a transaction held open would serialise every read behind it.
 */
let failures = 0;
const laggingLedger = (p: Projector): Projector => ({
  ...p,
  async apply(trx, events) {
    if (failures++ < 2) throw new Error('the database hiccups');
    await p.apply(trx, events);
  },
});

beforeAll(async () => {
  t = await createTestApp({
    resources: [...allResources],
    projectors: (commands, options) =>
      allProjectors(commands, options).map((p) => (p.name === 'ledger' ? laggingLedger(p) : p)),
    config: { CONSISTENCY_TIMEOUT_MS: 10_000 },
  });
  await registeredUser(t, 'rita');
});
afterAll(() => t?.close());

it('GET /admin/ledger/reconcile with X-Consistent-After reflects that position', async () => {
  const grant = await t.http
    .post('/api/v1/users/rita/credits')
    .set('Authorization', admin)
    .send({ amount: 25, reason: 'seed' });
  expect(grant.status).toBe(201);
  const position = grant.headers['x-event-position'] as string;

  const res = await t.http
    .get('/api/v1/admin/ledger/reconcile')
    .set('Authorization', admin)
    .set('X-Consistent-After', position);
  expect(res.status).toBe(200);
  // As of the ledger checkpoint, which is past the grant: rita's account is in the report.
  expect(BigInt(res.body.as_of_position as string)).toBeGreaterThanOrEqual(BigInt(position));
  expect(res.body.accounts).toBeGreaterThanOrEqual(1);
});
