import { z } from 'zod';
import { CommandHandler } from '../../src/commands/handler';
import { setEventPosition } from '../../src/http/middleware/consistency';
import type { Resource } from '../../src/http/types';
import { uuidV7Ids } from '../../src/platform/clock';
import { counterDecider } from '../support/counter';
import { createTestApp, type TestApp } from '../support/app';
import { mintToken } from '../support/tokens';

const Body = z.object({ counter: z.string().min(1), by: z.number().int() });
let flaky = 0;

/** A real command behind POST: each effect is an event in the store, so "no second effect" is countable. */
const counterRoutes: Resource = (router, { deps }) => {
  const commands = new CommandHandler(deps.store, { ids: uuidV7Ids });
  router.post('/test/counters', async (ctx) => {
    const { counter, by } = Body.parse(ctx.request.body);
    const r = await commands.handle(counterDecider, `counter-${counter}`, {
      type: 'Increment',
      data: { by },
      metadata: { now: new Date() },
    });
    setEventPosition(ctx, r.position);
    ctx.status = 201;
    ctx.body = { value: r.state.value };
  });
  // Longer than the lease on its key (one second here): it holds the key only by renewing it.
  router.post('/test/slow', async (ctx) => {
    const { counter, by } = Body.parse(ctx.request.body);
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    const r = await commands.handle(counterDecider, `counter-${counter}`, {
      type: 'Increment',
      data: { by },
      metadata: { now: new Date() },
    });
    ctx.status = 201;
    ctx.body = { value: r.state.value };
  });
  router.post('/test/flaky', (ctx) => {
    flaky++;
    if (flaky === 1) throw new Error('first attempt fails');
    ctx.body = { attempt: flaky };
  });
};

let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({ resources: [counterRoutes], config: { IDEMPOTENCY_LEASE_SECONDS: 1 } });
});
afterAll(() => t?.close());

const events = async (counter: string) => (await t.deps.store.readStream(`counter-${counter}`)).length;
const user = (id: string) => `Bearer ${mintToken({ userId: id })}`;

describe('Idempotency-Key on POST', () => {
  it('answers a retry with the first answer and no second effect', async () => {
    const first = await t.http
      .post('/api/v1/test/counters')
      .set('Idempotency-Key', 'k-1')
      .send({ counter: 'a', by: 2 });
    const retry = await t.http
      .post('/api/v1/test/counters')
      .set('Idempotency-Key', 'k-1')
      .send({ counter: 'a', by: 2 });
    expect(first.status).toBe(201);
    expect(retry.status).toBe(201);
    expect(retry.body).toEqual(first.body);
    expect(retry.headers['x-event-position']).toBe(first.headers['x-event-position']);
    expect(retry.headers['content-type']).toMatch(/application\/json/);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    expect(await events('a')).toBe(1);
  });

  it('treats the same body with its keys in another order as the same request', async () => {
    await t.http
      .post('/api/v1/test/counters')
      .set('Idempotency-Key', 'k-order')
      .send({ counter: 'o', by: 1 });
    const retry = await t.http
      .post('/api/v1/test/counters')
      .set('Idempotency-Key', 'k-order')
      .set('Content-Type', 'application/json')
      .send('{"by": 1, "counter": "o"}');
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(await events('o')).toBe(1);
  });

  it('answers 422 problem for the same key with another body, and does nothing', async () => {
    await t.http.post('/api/v1/test/counters').set('Idempotency-Key', 'k-2').send({ counter: 'b', by: 1 });
    const other = await t.http
      .post('/api/v1/test/counters')
      .set('Idempotency-Key', 'k-2')
      .send({ counter: 'b', by: 5 });
    expect(other.status).toBe(422);
    expect(other.headers['content-type']).toMatch(/application\/problem\+json/);
    expect(other.body.type).toBe('/problems/idempotency-key-reused');
    expect(await events('b')).toBe(1);
  });

  it('keeps keys per caller: two users may use the same key', async () => {
    const a = await t.http
      .post('/api/v1/test/counters')
      .set('Authorization', user('11111111-1111-7111-8111-111111111111'))
      .set('Idempotency-Key', 'shared')
      .send({ counter: 'c', by: 1 });
    const b = await t.http
      .post('/api/v1/test/counters')
      .set('Authorization', user('22222222-2222-7222-8222-222222222222'))
      .set('Idempotency-Key', 'shared')
      .send({ counter: 'c', by: 1 });
    expect(a.body).toEqual({ value: 1 });
    expect(b.body).toEqual({ value: 2 });
    expect(b.headers['idempotent-replayed']).toBeUndefined();
    expect(await events('c')).toBe(2);
  });

  it('keeps and replays a 4xx answer', async () => {
    const first = await t.http
      .post('/api/v1/test/counters')
      .set('Idempotency-Key', 'k-bad')
      .send({ counter: 'd', by: 0 });
    const retry = await t.http
      .post('/api/v1/test/counters')
      .set('Idempotency-Key', 'k-bad')
      .send({ counter: 'd', by: 0 });
    expect(first.status).toBe(400);
    expect(retry.status).toBe(400);
    expect(retry.body.detail).toBe(first.body.detail);
    expect(retry.headers['content-type']).toMatch(/application\/problem\+json/);
    expect(retry.headers['idempotent-replayed']).toBe('true');
  });

  it('frees the key after a 5xx, so the retry runs again', async () => {
    const first = await t.http.post('/api/v1/test/flaky').set('Idempotency-Key', 'k-flaky').send({});
    const retry = await t.http.post('/api/v1/test/flaky').set('Idempotency-Key', 'k-flaky').send({});
    expect(first.status).toBe(500);
    expect(retry.status).toBe(200);
    expect(retry.body).toEqual({ attempt: 2 });
  });

  it('runs concurrent requests with one key exactly once', async () => {
    const results = await Promise.all(
      Array.from({ length: 10 }, () =>
        t.http.post('/api/v1/test/counters').set('Idempotency-Key', 'k-race').send({ counter: 'e', by: 1 }),
      ),
    );
    expect(await events('e')).toBe(1);
    for (const r of results) {
      expect([201, 409]).toContain(r.status);
      if (r.status === 201) expect(r.body).toEqual({ value: 1 });
    }
    expect(results.filter((r) => r.status === 201 && !r.headers['idempotent-replayed'])).toHaveLength(1);
  });

  it('keeps a running request’s key past its lease, which its instance renews: a retry is 409', async () => {
    const send = () =>
      t.http
        .post('/api/v1/test/slow')
        .set('Idempotency-Key', 'k-slow')
        .send({ counter: 's', by: 1 })
        .then((res) => res);
    const first = send();
    await new Promise((resolve) => setTimeout(resolve, 1_600));
    const retry = await send();
    expect(retry.status).toBe(409);
    expect((await first).status).toBe(201);
    const replay = await send();
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(replay.body).toEqual({ value: 1 });
    expect(await events('s')).toBe(1);
  });

  it('writes nothing to a key taken over while it ran: the taker holds it now', async () => {
    const key = `k-lost-${crypto.randomUUID()}`;
    const first = t.http
      .post('/api/v1/test/slow')
      .set('Idempotency-Key', key)
      .send({ counter: 'l', by: 1 })
      .then((res) => res);
    const row = () =>
      t.deps.db.db
        .selectFrom('idempotency_keys')
        .selectAll()
        .where('key', '=', key)
        .executeTakeFirstOrThrow();
    // Once the running request holds its key (it then runs for seconds more).
    for (let waited = 0; !(await row().catch(() => undefined)); waited += 20) {
      if (waited > 10_000) throw new Error('the running request did not take its key');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    // As a retry does when this instance failed to renew the lease in time: a lease of its own.
    expect((await row()).lease).toEqual(expect.any(String));
    await t.deps.db.db
      .updateTable('idempotency_keys')
      .set({ lease: 'taken-over' })
      .where('key', '=', key)
      .execute();
    expect((await first).status).toBe(201);
    expect(await row()).toMatchObject({ lease: 'taken-over', status: null, body: null });
  });

  it('runs every POST without a key', async () => {
    await t.http.post('/api/v1/test/counters').send({ counter: 'f', by: 1 });
    await t.http.post('/api/v1/test/counters').send({ counter: 'f', by: 1 });
    expect(await events('f')).toBe(2);
  });

  it('answers 400 for a body nested deeper than any request, with a key or without', async () => {
    const deep = `{"counter":"h","by":1,"x":${'['.repeat(5_000)}${']'.repeat(5_000)}}`;
    for (const key of ['k-deep', undefined]) {
      const req = t.http.post('/api/v1/test/counters').type('json');
      const res = await (key ? req.set('Idempotency-Key', key) : req).send(deep);
      expect(res.status).toBe(400);
      expect(res.headers['content-type']).toMatch(/application\/problem\+json/);
      expect(res.body.detail).toMatch(/nested deeper/);
    }
    // Nested as deep as a request may be, it is read as usual.
    const nested = `{"counter":"h","by":1,"x":${'['.repeat(31)}${']'.repeat(31)}}`;
    expect(await events('h')).toBe(0);
    const ok = await t.http.post('/api/v1/test/counters').type('json').send(nested);
    expect(ok.status).toBe(201);
    expect(await events('h')).toBe(1);
  });

  it('answers 400 for a malformed key', async () => {
    const res = await t.http
      .post('/api/v1/test/counters')
      .set('Idempotency-Key', 'x'.repeat(256))
      .send({ counter: 'g', by: 1 });
    expect(res.status).toBe(400);
    expect(await events('g')).toBe(0);
  });
});
