import { createServer, type Server, type Socket } from 'node:net';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import pg from 'pg';
import supertest from 'supertest';
import { z } from 'zod';
import { WrongExpectedRevision } from '../../src/eventstore/port';
import { createApp } from '../../src/http/app';
import { setEventPosition } from '../../src/http/middleware/consistency';
import { testConfig } from '../../src/platform/config';
import { openDatabase } from '../../src/platform/db';
import { createLogger } from '../../src/platform/logger';
import type { Resource } from '../../src/http/types';
import { InsufficientCreditsForTest } from './fixtures';
import { createTestApp, type TestApp } from '../support/app';
import { mintToken } from '../support/tokens';

const Echo = z.object({
  name: z.string().min(1),
  items: z.array(z.object({ qty: z.number().int().positive() })),
});

const testRoutes: Resource = (router) => {
  router.post('/test/echo', (ctx) => {
    ctx.body = Echo.parse(ctx.request.body);
  });
  router.post('/test/form', (ctx) => {
    ctx.body = { received: ctx.request.body };
  });
  router.get('/test/boom', (ctx) => {
    ctx.set('X-Event-Position', '7');
    throw new Error('secret connection string postgres://admin:hunter2@db');
  });
  router.get('/test/unreachable-database', async () => {
    // A real pool to a port nothing listens on: the driver's own connection error.
    const pool = new pg.Pool({
      connectionString: 'postgres://postgres@127.0.0.1:1/none',
      connectionTimeoutMillis: 2_000,
    });
    try {
      await pool.query('select 1');
    } finally {
      await pool.end();
    }
  });
  // A server that takes the connection and never answers, as one gone from the network would not
  // refuse it: the first query waits out its connection attempt; the second waits for the pool's
  // one connection, then makes its own attempt; a lock waits out the session connection's attempt.
  router.get('/test/silent-database/:which', async (ctx) => {
    const db = await openDatabase(
      testConfig({
        DATABASE_URL: `postgres://postgres@127.0.0.1:${silentPort()}/none`,
        DATABASE_POOL_SIZE: 1,
        DATABASE_CONNECT_TIMEOUT_MS: 200,
      }),
      createLogger({ LOG_LEVEL: 'silent' }),
    );
    try {
      if (ctx.params.which === 'lock') await db.locks.tryAcquire('silent');
      const [first, second] = await Promise.allSettled([db.query('select 1', []), db.query('select 2', [])]);
      const failure = ctx.params.which === 'first' ? first : second;
      if (failure.status === 'rejected') throw failure.reason;
    } finally {
      await db.close();
    }
  });
  // The server (where there is one) running a statement for longer than its bound, as a server
  // that stopped answering would leave it.
  router.get('/test/unanswered-statement', async () => {
    const db = await openDatabase(
      testConfig({
        DATABASE_URL: process.env.DATABASE_URL,
        DATABASE_POOL_SIZE: 1,
        DATABASE_STATEMENT_TIMEOUT_MS: 200,
      }),
      createLogger({ LOG_LEVEL: 'silent' }),
    );
    try {
      await db.query('select pg_sleep(3)', []);
    } finally {
      await db.close();
    }
  });
  router.get('/test/domain', () => {
    throw new InsufficientCreditsForTest(10, 25);
  });
  router.post('/test/conflict', () => {
    throw new WrongExpectedRevision('ledger-1', 3n, 4n);
  });
  router.post('/test/command', (ctx) => {
    setEventPosition(ctx, 42n);
    ctx.status = 201;
    ctx.body = { ok: true };
  });
};

let t: TestApp;
let silent: Server;
const held = new Set<Socket>();
let accepted = 0;
const silentPort = () => (silent.address() as { port: number }).port;
beforeAll(async () => {
  silent = createServer((socket) => {
    accepted++;
    held.add(socket);
    socket.on('close', () => held.delete(socket));
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t = await createTestApp({
    resources: [testRoutes],
    config: { BODY_LIMIT: '1kb', COMPLETION_BODY_LIMIT: '4kb' },
  });
});
afterAll(async () => {
  for (const socket of held) socket.destroy();
  await new Promise((resolve) => silent?.close(resolve));
  await t?.close();
});

function expectProblem(
  res: { status: number; headers: Record<string, string>; body: Record<string, unknown> },
  status: number,
) {
  expect(res.status).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  expect(res.body).toMatchObject({
    status,
    type: expect.stringMatching(/^\/problems\//),
    title: expect.any(String),
  });
  expect(typeof res.body.detail).toBe('string');
  expect(res.body.request_id).toBe(res.headers['x-request-id']);
}

describe('request id', () => {
  it('echoes a sane incoming X-Request-Id', async () => {
    const res = await t.http.get('/health').set('X-Request-Id', 'lb-abc.123_x');
    expect(res.headers['x-request-id']).toBe('lb-abc.123_x');
  });

  it('replaces an unsafe or overlong X-Request-Id with a new UUIDv7', async () => {
    for (const bad of ['has space', 'a'.repeat(129), 'x\u00e9', '']) {
      const res = await t.http.get('/health').set('X-Request-Id', bad);
      expect(res.headers['x-request-id']).not.toBe(bad);
      expect(res.headers['x-request-id']).toMatch(
        /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
      );
    }
  });

  it('generates a different id for each request', async () => {
    const a = await t.http.get('/health');
    const b = await t.http.get('/health');
    expect(a.headers['x-request-id']).not.toBe(b.headers['x-request-id']);
  });
});

describe('problem+json errors', () => {
  it('answers 404 problem for an unknown route, with instance and request id', async () => {
    const res = await t.http.get('/api/v1/nothing/here?x=1').set('X-Request-Id', 'req-404');
    expectProblem(res, 404);
    expect(res.body).toMatchObject({
      type: '/problems/not-found',
      instance: '/api/v1/nothing/here',
      request_id: 'req-404',
    });
  });

  it('answers 405 problem with Allow for a method the route does not serve', async () => {
    const res = await t.http.delete('/api/v1/test/echo');
    expectProblem(res, 405);
    expect(res.headers.allow).toContain('POST');
  });

  it('answers 400 with the failing paths when zod rejects the body', async () => {
    const res = await t.http.post('/api/v1/test/echo').send({ name: '', items: [{ qty: 1 }, { qty: -2 }] });
    expectProblem(res, 400);
    expect(res.body.type).toBe('/problems/validation');
    const paths = (res.body.errors as { path: string; message: string }[]).map((e) => e.path).sort();
    expect(paths).toEqual(['items.1.qty', 'name']);
    expect(res.body.detail).toMatch(/name|items\.1\.qty/);
  });

  it('answers 400 for malformed JSON', async () => {
    const res = await t.http
      .post('/api/v1/test/echo')
      .set('Content-Type', 'application/json')
      .send('{"name": ');
    expectProblem(res, 400);
    expect(res.body.detail).toMatch(/not valid JSON/);
  });

  it('answers 413 for a body over BODY_LIMIT', async () => {
    const res = await t.http.post('/api/v1/test/echo').send({ name: 'x'.repeat(2048), items: [] });
    expectProblem(res, 413);
    expect(res.body.type).toBe('/problems/payload-too-large');
  });

  it('reads a /chat/completions body sent with a valid access token up to COMPLETION_BODY_LIMIT, and none other', async () => {
    const completion = (size: number) => ({
      model: 'm',
      messages: [{ role: 'user', content: 'x'.repeat(size) }],
    });
    const token = `Bearer ${mintToken()}`;
    const withToken = (size: number, path = '/api/v1/chat/completions', auth = token) =>
      t.http.post(path).set('Authorization', auth).send(completion(size));
    // Read, then refused by what comes after the body (no such route in this app).
    for (const path of ['/api/v1/chat/completions', '/api/v1/Chat/Completions/']) {
      expect((await withToken(2048, path)).status).toBe(404);
    }
    expectProblem(await withToken(5000), 413);
    // Without a token, or with one that is not valid, no further than any other body.
    expectProblem(await t.http.post('/api/v1/chat/completions').send(completion(2048)), 413);
    expectProblem(await withToken(2048, undefined, 'Bearer not-a-token'), 413);
    const forged = mintToken({ secret: 'another-key-another-key-another-key!' });
    expectProblem(await withToken(2048, undefined, `Bearer ${forged}`), 413);
    expectProblem(
      await t.http
        .post('/api/v1/test/echo')
        .set('Authorization', token)
        .send({ name: 'x'.repeat(2048) }),
      413,
    );
  });

  it('answers 413 without reading a body far over the limit', async () => {
    const res = await t.http
      .post('/api/v1/test/echo')
      .set('Content-Type', 'application/json')
      .send(`{"name":"${'x'.repeat(3 * 1024 * 1024)}","items":[]}`);
    expectProblem(res, 413);
  });

  it('answers 400 for a body its Content-Encoding does not decode, and reads one that it does', async () => {
    const json = Buffer.from(JSON.stringify({ name: 'x', items: [] }));
    const send = (encoding: string, body: Buffer) =>
      t.http
        .post('/api/v1/test/echo')
        .set('Content-Type', 'application/json')
        .set('Content-Encoding', encoding)
        // As the bytes are: supertest would write a Buffer out as JSON.
        .serialize((bytes: Buffer) => bytes as unknown as string)
        .send(body);
    for (const [encoding, body] of [
      ['gzip', gzipSync(json).subarray(0, 8)],
      ['gzip', json],
      ['deflate', json],
      ['br', json],
    ] as const) {
      const res = await send(encoding, body);
      expectProblem(res, 400);
      expect(res.body.detail).toContain(`Content-Encoding (${encoding})`);
    }
    for (const [encoding, body] of [
      ['gzip', gzipSync(json)],
      ['deflate', deflateSync(json)],
      ['br', brotliCompressSync(json)],
    ] as const) {
      expect((await send(encoding, body)).body).toEqual({ name: 'x', items: [] });
    }
  });

  it('answers 415 for a body of an unsupported Content-Type', async () => {
    const res = await t.http.post('/api/v1/test/echo').set('Content-Type', 'text/plain').send('name=x');
    expectProblem(res, 415);
    expect(res.body.type).toBe('/problems/unsupported-media-type');
  });

  it('takes a form-encoded body only on the OAuth2 token endpoint (the password grant), else 415', async () => {
    const grant = { username: 'ann', password: 'pw', grant_type: 'password' };
    // As the router matches it: case and a trailing slash aside.
    for (const path of ['/api/v1/session/oauth2/token', '/api/v1/Session/OAuth2/Token/']) {
      const token = await t.http.post(path).type('form').send(grant);
      expect(token.status).not.toBe(415); // parsed, then refused: no such route here
      expect([400, 401, 404]).toContain(token.status);
    }
    const elsewhere = await t.http.post('/api/v1/test/form').type('form').send(grant);
    expectProblem(elsewhere, 415);
    const json = await t.http.post('/api/v1/test/form').send(grant);
    expect(json.status).toBe(200);
    expect(json.body).toEqual({ received: grant });
  });

  it('answers 500 for an unexpected error without leaking anything internal', async () => {
    const res = await t.http.get('/api/v1/test/boom');
    expectProblem(res, 500);
    expect(res.body.type).toBe('/problems/internal');
    const text = JSON.stringify(res.body);
    expect(text).not.toMatch(/hunter2|postgres|secret|at .*\.ts|stack/i);
    expect(res.headers['x-event-position']).toBeUndefined();
  });

  it('answers 503 with Retry-After, not 500, when the database is unreachable', async () => {
    const res = await t.http.get('/api/v1/test/unreachable-database');
    expectProblem(res, 503);
    expect(res.body.type).toBe('/problems/dependency-unavailable');
    expect(res.headers['retry-after']).toBe('5');
    expect(JSON.stringify(res.body)).not.toMatch(/127\.0\.0\.1|ECONNREFUSED/);
  });

  it.each(['first', 'second', 'lock'])(
    'answers 503, not 500 or a hang, when the database does not answer (%s)',
    async (which) => {
      const before = accepted;
      const res = await t.http.get(`/api/v1/test/silent-database/${which}`);
      expectProblem(res, 503);
      expect(res.body.type).toBe('/problems/dependency-unavailable');
      expect(accepted).toBeGreaterThan(before); // it did reach the silent server
    },
  );

  (process.env.DATABASE_URL ? it : it.skip)(
    'answers 503, not 500 or a hang, when a statement has no answer within its bound',
    async () => {
      const res = await t.http.get('/api/v1/test/unanswered-statement');
      expectProblem(res, 503);
      expect(res.body.type).toBe('/problems/dependency-unavailable');
      expect(res.headers['retry-after']).toBe('5');
    },
  );

  it('answers a DomainError with its status, type, title and extensions', async () => {
    const res = await t.http.get('/api/v1/test/domain');
    expectProblem(res, 402);
    expect(res.body).toMatchObject({
      type: '/problems/insufficient-credits',
      title: 'Not enough credits',
      detail: 'available 10, needed 25',
      available: 10,
      required: 25,
    });
  });

  it('answers 409 when a WrongExpectedRevision escapes the command handler', async () => {
    const res = await t.http.post('/api/v1/test/conflict');
    expectProblem(res, 409);
    expect(res.body.type).toBe('/problems/concurrency-conflict');
    expect(JSON.stringify(res.body)).not.toContain('ledger-1');
  });

  it('sets X-Event-Position on commands', async () => {
    const res = await t.http.post('/api/v1/test/command');
    expect(res.status).toBe(201);
    expect(res.headers['x-event-position']).toBe('42');
  });
});

describe('CORS and security headers', () => {
  it('answers a preflight with the allowed origin and exposes X-Event-Position', async () => {
    const res = await t.http
      .options('/api/v1/test/echo')
      .set('Origin', 'https://app.example')
      .set('Access-Control-Request-Method', 'POST')
      .set('Access-Control-Request-Headers', 'authorization,content-type,x-consistent-after');
    expect(res.status).toBe(204);
    expect(res.headers['access-control-allow-origin']).toBe('*');
    expect(res.headers['access-control-allow-methods']).toContain('POST');
    expect(res.headers['access-control-allow-headers']).toContain('x-consistent-after');
    const simple = await t.http.post('/api/v1/test/command').set('Origin', 'https://app.example');
    expect(simple.headers['access-control-expose-headers']).toContain('X-Event-Position');
    expect(simple.headers['access-control-expose-headers']).toContain('X-Consistent-After');
    // An OpenAI SDK in a browser reads these to decide on a retry.
    expect(simple.headers['access-control-expose-headers']).toContain('x-should-retry');
    expect(simple.headers['access-control-expose-headers']).toContain('Idempotent-Replayed');
  });

  it('keeps CORS headers on problem responses', async () => {
    const res = await t.http.get('/api/v1/test/boom').set('Origin', 'https://app.example');
    expect(res.status).toBe(500);
    expect(res.headers['access-control-allow-origin']).toBe('*');
  });

  it('only allows the configured origins', async () => {
    // Same dependencies, another configuration: no second database needed.
    const app = createApp({
      ...t.deps,
      config: { ...t.deps.config, CORS_ORIGINS: ['https://good.example'] },
    });
    const strict = supertest(app.callback());
    const good = await strict
      .options('/health')
      .set('Origin', 'https://good.example')
      .set('Access-Control-Request-Method', 'GET');
    expect(good.headers['access-control-allow-origin']).toBe('https://good.example');
    const bad = await strict
      .options('/health')
      .set('Origin', 'https://evil.example')
      .set('Access-Control-Request-Method', 'GET');
    expect(bad.headers['access-control-allow-origin']).toBeUndefined();
  });

  it('sends security headers with a strict CSP for the API', async () => {
    const res = await t.http.get('/health');
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.headers['strict-transport-security']).toBeDefined();
    expect(res.headers['x-frame-options']).toBe('SAMEORIGIN');
    expect(res.headers['content-security-policy']).toContain("default-src 'none'");
    const problem = await t.http.get('/api/v1/test/boom');
    expect(problem.headers['x-content-type-options']).toBe('nosniff');
  });
});
