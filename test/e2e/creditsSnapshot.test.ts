import supertest from 'supertest';
import { createApp } from '../../src/http/app';
import { allResources } from '../../src/http/resources';
import { allProjectors } from '../../src/projections';
import { createTestApp, registeredUser, type TestApp } from '../support/app';
import { holdingReadsOf } from '../support/holdReads';
import { bearer } from '../support/tokens';

/**
 * GET /users/me/credits answers {balance, held, available, history} from two reads. A batch of the
 * ledger projection committed between them would make one answer disagree with itself: the balance
 * from before the batch, the history (with its `balance_after`) from after it. Here the history's
 * read is held, before it runs, while another grant is made and projected (as far as the reads let
 * it: a snapshot held open makes every other statement wait on PGlite's one connection).
 */
let t: TestApp;
const admin = bearer({ userId: 'admin-1', permission: 2 });
const user = bearer({ userId: 'skew' });

beforeAll(async () => {
  t = await createTestApp({ resources: [...allResources], projectors: allProjectors });
  await registeredUser(t, 'skew');
});
afterAll(() => t?.close());

const grant = async (amount: number) => {
  const res = await t.http
    .post('/api/v1/users/skew/credits')
    .set('Authorization', admin)
    .send({ amount, reason: 'seed' });
  expect(res.status).toBe(201);
  return res.headers['x-event-position'] as string;
};

it('GET /users/me/credits answers a balance that agrees with its own history', async () => {
  const first = await grant(100);
  // Another instance of the app, whose reads of the history are held before they run.
  const hold = holdingReadsOf(t.deps.db, 'ledger_entries');
  const http = supertest(createApp({ ...t.deps, db: hold.db }, [...allResources]).callback());

  const reading = http
    .get('/api/v1/users/me/credits')
    .set('Authorization', user)
    .set('X-Consistent-After', first)
    .then((r) => r);
  await hold.held;
  // Made and projected while the balance is held, if the read lets them: on PGlite a snapshot held
  // open keeps every other statement waiting, the grant's too.
  const granting = grant(5);
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    granting.then((position) => t.engine.waitFor(['ledger'], BigInt(position), 2_000)),
    new Promise((resolve) => (timer = setTimeout(resolve, 2_000))),
  ]);
  clearTimeout(timer);
  hold.release();
  const res = await reading;
  const second = await granting;

  expect(res.status).toBe(200);
  const items = res.body.history.items as { balance_after: number }[];
  expect(items.length).toBeGreaterThan(0);
  expect(res.body.balance).toBe(items[0]!.balance_after);
  // The grant made meanwhile is projected by now, and the next read shows it, in both parts.
  expect(await t.engine.waitFor(['ledger'], BigInt(second), 30_000)).toBe(true);
  const after = await t.http.get('/api/v1/users/me/credits').set('Authorization', user);
  expect(after.body.balance).toBe(105);
  expect((after.body.history.items as { balance_after: number }[])[0]!.balance_after).toBe(105);
});
