import { allResources } from '../../src/http/resources';
import { allProjectors } from '../../src/projections';
import { createTestApp, registeredUser, type TestApp } from '../support/app';
import { mintToken } from '../support/tokens';

let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({ resources: [...allResources], projectors: allProjectors });
  for (const user of ['dave', 'rich']) await registeredUser(t, user);
});
afterAll(() => t?.close());

const admin = `Bearer ${mintToken({ userId: 'admin-1', permission: 2 })}`;
const userToken = (id: string) => `Bearer ${mintToken({ userId: id })}`;

/** An admin's grant (or, negative, adjustment) of a user's credits. */
const adminCredits = (userId: string, amount: number, reason: string) =>
  t.http.post(`/api/v1/users/${userId}/credits`).set('Authorization', admin).send({ amount, reason });

async function issue(body: Record<string, unknown>) {
  const res = await t.http.post('/api/v1/codes').set('Authorization', admin).send(body);
  expect(res.status).toBe(201);
  return res;
}

describe('credits', () => {
  it('redeems a code, then shows the balance and the history with read-your-writes', async () => {
    const { body } = await issue({ amount: 150 });
    const [code] = body.codes as string[];
    expect(code).toMatch(/^[23456789ABCDEFGHJKMNPQRSTUVWXYZ]{16}$/);
    const alice = userToken('alice');
    const redeemed = await t.http
      .post('/api/v1/users/me/credits')
      .set('Authorization', alice)
      .send({ code: code!.toLowerCase() });
    expect(redeemed.status).toBe(200);
    expect(redeemed.body).toEqual({ balance: 150, available: 150, redeemed: 150 });
    const position = redeemed.headers['x-event-position'] as string;
    expect(position).toMatch(/^\d+$/);

    const mine = await t.http
      .get('/api/v1/users/me/credits')
      .set('Authorization', alice)
      .set('X-Consistent-After', position);
    expect(mine.status).toBe(200);
    expect(mine.body).toMatchObject({ balance: 150, held: 0, available: 150 });
    expect(mine.body.history.items).toEqual([
      expect.objectContaining({ type: 'redeemed', amount: 150, balance_after: 150, ref: code }),
    ]);
    expect(mine.body.history.next_cursor).toBeNull();
  });

  it('answers 409 for a used-up code or a second redemption by the same user, and 404 for an unknown one', async () => {
    const [code] = (await issue({ amount: 10, max_uses: 1 })).body.codes as string[];
    const bob = userToken('bob');
    expect(
      (await t.http.post('/api/v1/users/me/credits').set('Authorization', bob).send({ code })).status,
    ).toBe(200);
    const again = await t.http.post('/api/v1/users/me/credits').set('Authorization', bob).send({ code });
    expect(again.status).toBe(409);
    expect(again.headers['content-type']).toMatch(/problem\+json/);
    const other = await t.http
      .post('/api/v1/users/me/credits')
      .set('Authorization', userToken('carol'))
      .send({ code });
    expect(other.status).toBe(409);
    const unknown = await t.http
      .post('/api/v1/users/me/credits')
      .set('Authorization', bob)
      .send({ code: 'ZZZZZZZZZZZZZZZZ' });
    expect(unknown.status).toBe(404);
  });

  it('refuses (409) a grant or a redemption past the most an account holds, and uses no code for it', async () => {
    const grant = (amount: number) =>
      t.http.post('/api/v1/users/rich/credits').set('Authorization', admin).send({ amount, reason: 'lots' });
    expect((await grant(Number.MAX_SAFE_INTEGER - 10)).status).toBe(201);
    const over = await grant(11);
    expect(over.status).toBe(409);
    expect(over.headers['content-type']).toMatch(/problem\+json/);
    expect(over.body.detail).toMatch(/past 9007199254740991/);
    const [code] = (await issue({ amount: 11, max_uses: 1 })).body.codes as string[];
    const rich = await t.http
      .post('/api/v1/users/me/credits')
      .set('Authorization', userToken('rich'))
      .send({ code });
    expect(rich.status).toBe(409);
    // The code's one use is still there for someone else.
    const poor = await t.http
      .post('/api/v1/users/me/credits')
      .set('Authorization', userToken('poor'))
      .send({ code });
    expect(poor.status).toBe(200);
    const last = await grant(10);
    expect(last.status).toBe(201);
    expect(last.body.balance_after).toBe(Number.MAX_SAFE_INTEGER);
  });

  it('documents every code route in /openapi.json', async () => {
    const { paths } = (await t.http.get('/openapi.json')).body as { paths: Record<string, object> };
    expect(Object.keys(paths['/codes'] ?? {}).sort()).toEqual(['get', 'post']);
    expect(Object.keys(paths['/codes/{code}'] ?? {}).sort()).toEqual(['delete', 'get']);
  });

  it('lets admins grant and adjust, with each entry’s balance after it, paged', async () => {
    const grant = await adminCredits('dave', 100, 'welcome');
    expect(grant.status).toBe(201);
    expect(grant.body).toMatchObject({ type: 'granted', amount: 100, balance_after: 100, reason: 'welcome' });
    const adjust = await adminCredits('dave', -30, 'double grant');
    expect(adjust.body).toMatchObject({ type: 'adjusted', amount: -30, balance_after: 70 });
    const overdraw = await adminCredits('dave', -71, 'too much');
    expect(overdraw.status).toBe(402);
    const nobody = await t.http
      .post('/api/v1/users/nobody/credits')
      .set('Authorization', admin)
      .send({ amount: 100, reason: 'a typo' });
    expect(nobody.status).toBe(404);
    expect(nobody.headers['content-type']).toMatch(/problem\+json/);

    const dave = userToken('dave');
    const page1 = await t.http
      .get('/api/v1/users/me/credits?limit=1')
      .set('Authorization', dave)
      .set('X-Consistent-After', adjust.headers['x-event-position'] as string);
    expect(page1.body.balance).toBe(70);
    expect(page1.body.history.items).toEqual([
      expect.objectContaining({ type: 'adjusted', amount: -30, balance_after: 70 }),
    ]);
    const page2 = await t.http
      .get(`/api/v1/users/me/credits?limit=1&cursor=${page1.body.history.next_cursor}`)
      .set('Authorization', dave);
    expect(page2.body.history.items).toEqual([
      expect.objectContaining({ type: 'granted', amount: 100, balance_after: 100 }),
    ]);
    expect(page2.body.history.next_cursor).toBeNull();
  });

  it('lists, shows and revokes codes for admins only; a revoked code cannot be redeemed', async () => {
    const res = await issue({ amount: 5, count: 3, max_uses: 2, expires_at: '2099-01-01T00:00:00Z' });
    const codes = res.body.codes as string[];
    expect(new Set(codes).size).toBe(3);
    const position = res.headers['x-event-position'] as string;
    const shown = await t.http
      .get(`/api/v1/codes/${codes[0]}`)
      .set('Authorization', admin)
      .set('X-Consistent-After', position);
    expect(shown.body).toMatchObject({
      code: codes[0],
      amount: 5,
      max_uses: 2,
      uses: 0,
      status: 'active',
      redemptions: [],
    });

    const revoked = await t.http.delete(`/api/v1/codes/${codes[0]}`).set('Authorization', admin);
    expect(revoked.status).toBe(204);
    const redeem = await t.http
      .post('/api/v1/users/me/credits')
      .set('Authorization', userToken('erin'))
      .send({ code: codes[0] });
    expect(redeem.status).toBe(409);
    const list = await t.http
      .get('/api/v1/codes?status=revoked')
      .set('Authorization', admin)
      .set('X-Consistent-After', revoked.headers['x-event-position'] as string);
    const items = list.body.items as { code: string; status: string }[];
    expect(items.map((c) => c.code)).toContain(codes[0]);
    expect(items.every((c) => c.status === 'revoked')).toBe(true);

    const user = userToken('erin');
    expect((await t.http.get('/api/v1/codes').set('Authorization', user)).status).toBe(403);
    expect((await t.http.post('/api/v1/codes').set('Authorization', user).send({ amount: 1 })).status).toBe(
      403,
    );
    expect(
      (
        await t.http
          .post('/api/v1/users/erin/credits')
          .set('Authorization', user)
          .send({ amount: 1, reason: 'x' })
      ).status,
    ).toBe(403);
    expect((await t.http.get('/api/v1/users/me/credits')).status).toBe(401);
  });

  it('rejects bad input with 400 and the failing paths', async () => {
    const bad = await t.http.post('/api/v1/codes').set('Authorization', admin).send({ amount: -5, count: 0 });
    expect(bad.status).toBe(400);
    const errors = bad.body.errors as { path: string }[];
    expect(errors.map((e) => e.path).sort()).toEqual(['amount', 'count']);
    const zero = await t.http
      .post('/api/v1/users/x/credits')
      .set('Authorization', admin)
      .send({ amount: 0, reason: 'r' });
    expect(zero.status).toBe(400);
    // A misspelt field is refused, not dropped: codes meant to expire would never expire.
    const misspelt = await t.http
      .post('/api/v1/codes')
      .set('Authorization', admin)
      .send({ amount: 5, expiresAt: '2030-01-01T00:00:00Z' });
    expect(misspelt.status).toBe(400);
    // A code that could never be redeemed is not issued.
    const expired = await t.http
      .post('/api/v1/codes')
      .set('Authorization', admin)
      .send({ amount: 5, expires_at: new Date(Date.now() - 1000).toISOString() });
    expect(expired.status).toBe(400);
    expect(expired.body.detail).toMatch(/expires_at .* past/);
    const patch = await t.http
      .patch('/api/v1/users/x')
      .set('Authorization', admin)
      .send({ permission: 1, disable: true });
    expect(patch.status).toBe(400);
  });
});

it('answers an admin grant or adjustment with the entry the user’s history shows under its id', async () => {
  await registeredUser(t, 'adj-user');
  const owner = `Bearer ${mintToken({ userId: 'adj-user' })}`;
  const grant = await adminCredits('adj-user', 100, 'welcome');
  expect(grant.status).toBe(201);
  const adjust = await adminCredits('adj-user', -30, 'double grant');
  expect(adjust.status).toBe(201);
  expect(adjust.body).toMatchObject({ type: 'adjusted', amount: -30, balance_after: 70 });

  const mine = await t.http
    .get('/api/v1/users/me/credits')
    .set('Authorization', owner)
    .set('X-Consistent-After', adjust.headers['x-event-position'] as string);
  expect(mine.status).toBe(200);
  const items = mine.body.history.items as Record<string, unknown>[];
  const granted = items.find((i) => i.id === grant.body.id);
  const adjusted = items.find((i) => i.id === adjust.body.id);
  // The grant's entry is the same in both answers...
  expect(granted).toMatchObject({ type: 'granted', amount: 100, reason: 'welcome', ref: grant.body.ref });
  // ...and so is the adjustment's, which corrects no entry of its own naming.
  expect(adjust.body.ref).toBeNull();
  expect(adjusted).toMatchObject({
    type: 'adjusted',
    amount: -30,
    balance_after: 70,
    reason: 'double grant',
    ref: adjust.body.ref,
  });
});
