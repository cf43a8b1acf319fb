import { allResources } from '../../src/http/resources';
import { allProjectors } from '../../src/projections';
import { createTestApp, registeredUser, type TestApp } from '../support/app';
import { bearer } from '../support/tokens';

let t: TestApp;
const admin = bearer({ userId: 'admin-1', permission: 2 });
// A period around the test's own grants (made now), whatever the time of day.
const today = new Date(Date.now() - 3_600_000).toISOString();
const tomorrow = new Date(Date.now() + 3_600_000).toISOString();

beforeAll(async () => {
  t = await createTestApp({ resources: [...allResources], projectors: allProjectors });
  for (const user of ['dora', 'emil']) await registeredUser(t, user);
  for (const [user, amount] of [
    ['dora', 100],
    ['dora', -30],
    ['emil', 50],
  ] as const) {
    const res = await t.http
      .post(`/api/v1/users/${user}/credits`)
      .set('Authorization', admin)
      .send({ amount, reason: 'seed' });
    expect(res.status).toBe(201);
  }
});
afterAll(() => t?.close());

describe('admin ledger reports', () => {
  it('answers a statement as JSON, and as CSV when asked for text/csv', async () => {
    const res = await t.http
      .get('/api/v1/admin/ledger/statement')
      .query({ user_id: 'dora', from: today, to: tomorrow })
      .set('Authorization', admin);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({
      user_id: 'dora',
      opening: { posted: 0, held: 0, available: 0 },
      closing: { posted: 70, held: 0, available: 70 },
    });
    const movements = (res.body as { movements: { type: string; posted_after: number }[] }).movements;
    expect(movements.map((m) => [m.type, m.posted_after])).toEqual([
      ['granted', 100],
      ['adjusted', 70],
    ]);

    const csv = await t.http
      .get('/api/v1/admin/ledger/statement')
      .query({ user_id: 'dora', from: today, to: tomorrow })
      .set('Authorization', admin)
      .set('Accept', 'text/csv');
    expect(csv.status).toBe(200);
    expect(csv.headers['content-type']).toBe('text/csv; charset=utf-8');
    expect(csv.headers['content-disposition']).toMatch(/attachment; filename="statement-dora.csv"/);
    const lines = csv.text.split('\r\n');
    expect(lines[0]).toMatch(/^position,event_id,occurred_at,type,amount,/);
    expect(lines[1]).toMatch(/,opening,/);
    expect(lines[4]).toMatch(/,closing,,,,70,0,70,,,$/);
  });

  it('summarises a period with a balanced trial balance, as JSON or CSV', async () => {
    const res = await t.http
      .get('/api/v1/admin/ledger/summary')
      .query({ from: today, to: tomorrow })
      .set('Authorization', admin);
    expect(res.status).toBe(200);
    expect(res.body.trial_balance.balanced).toBe(true);
    expect(res.body.balances.closing).toEqual({ posted: 120, held: 0, available: 120 });
    expect(res.body.movements).toContainEqual({ type: 'granted', count: 2, amount: 150 });
    expect(res.body.as_of_position).toMatch(/^\d+$/);

    const csv = await t.http
      .get('/api/v1/admin/ledger/summary')
      .query({ from: today, to: tomorrow })
      .set('Authorization', admin)
      .set('Accept', 'text/csv');
    expect(csv.headers['content-type']).toBe('text/csv; charset=utf-8');
    expect(csv.text).toContain('movement,granted,2,150,,,,\r\n');
  });

  it('answers a balance as of a time, reconciles with the projection and verifies the log', async () => {
    const balance = await t.http
      .get('/api/v1/admin/ledger/balance')
      .query({ user_id: 'emil', at: new Date().toISOString() })
      .set('Authorization', admin);
    expect(balance.status).toBe(200);
    expect(balance.body).toMatchObject({ user_id: 'emil', posted: 50, held: 0, available: 50, events: 1 });

    // The projection may still be catching up: reconcile compares at its checkpoint either way.
    const reconcile = await t.http.get('/api/v1/admin/ledger/reconcile').set('Authorization', admin);
    expect(reconcile.status).toBe(200);
    expect(reconcile.body).toMatchObject({ ok: true, differences: [] });

    const verify = await t.http.get('/api/v1/admin/ledger/verify').set('Authorization', admin);
    expect(verify.status).toBe(200);
    expect(verify.body).toMatchObject({ ok: true, breaches: [], events: 3, accounts: 2 });
  });

  it('answers 400 with the failing parameter for bad or reversed dates and a missing user', async () => {
    const cases = [
      ['/api/v1/admin/ledger/statement', { user_id: 'dora', from: '2026-02-30', to: tomorrow }, 'from'],
      ['/api/v1/admin/ledger/statement', { user_id: 'dora', from: tomorrow, to: today }, 'to'],
      ['/api/v1/admin/ledger/statement', { from: today, to: tomorrow }, 'user_id'],
      ['/api/v1/admin/ledger/summary', { from: 'last week', to: tomorrow }, 'from'],
      ['/api/v1/admin/ledger/balance', { user_id: 'dora', at: '2026-03-01T10:00:00' }, 'at'],
    ] as const;
    for (const [path, query, field] of cases) {
      const res = await t.http.get(path).query(query).set('Authorization', admin);
      expect(res.status).toBe(400);
      expect(res.headers['content-type']).toMatch(/application\/problem\+json/);
      expect(JSON.stringify(res.body)).toContain(field);
    }
  });

  it('answers 401 without a token and 403 to a user who is not an admin', async () => {
    for (const path of ['statement', 'summary', 'balance', 'reconcile', 'verify']) {
      const url = `/api/v1/admin/ledger/${path}`;
      expect((await t.http.get(url)).status).toBe(401);
      expect((await t.http.get(url).set('Authorization', bearer({ permission: 0 }))).status).toBe(403);
    }
  });

  it('documents every report in the OpenAPI description', async () => {
    const doc = await t.http.get('/openapi.json');
    expect(doc.status).toBe(200);
    for (const path of ['statement', 'summary', 'balance', 'reconcile', 'verify']) {
      expect(doc.body.paths).toHaveProperty([`/admin/ledger/${path}`, 'get']);
    }
    const statement = (
      doc.body as {
        paths: Record<
          string,
          { get: { responses: Record<string, unknown>; parameters: { name: string; in: string }[] } }
        >;
      }
    ).paths['/admin/ledger/statement']!.get;
    expect(statement.responses['200']).toHaveProperty(['content', 'text/csv']);
    const query = statement.parameters.filter((p) => p.in === 'query');
    expect(query.map((p) => p.name).sort()).toEqual(['from', 'to', 'user_id']);
  });
});
