import { compileErrors, validate } from '@readme/openapi-parser';
import supertest from 'supertest';
import { z } from 'zod';
import type { EventStore } from '../../src/eventstore/port';
import { createApp } from '../../src/http/app';
import { bearerSecurity, problemResponses } from '../../src/http/openapi';
import type { Resource } from '../../src/http/types';
import type { Projector } from '../../src/projections/types';
import { createTestApp, type TestApp } from '../support/app';
import { bearer } from '../support/tokens';

const noop: Projector = {
  name: 'noop',
  version: 1,
  eventTypes: ['Pinged'],
  tables: [],
  apply: async () => undefined,
};

const CreateThing = z.object({ name: z.string().min(1).max(40) }).meta({ id: 'CreateThing' });
const Thing = z.object({ id: z.uuid(), name: z.string() }).meta({ id: 'Thing' });

const documented: Resource = (router, { openapi }) => {
  openapi.registerPath({
    method: 'post',
    path: '/things',
    summary: 'Create a thing',
    security: bearerSecurity,
    request: { body: { content: { 'application/json': { schema: CreateThing } } } },
    responses: {
      201: { description: 'Created', content: { 'application/json': { schema: Thing } } },
      ...problemResponses(400, 401),
    },
  });
  router.post('/things', (ctx) => {
    ctx.status = 201;
    ctx.body = { id: '0190a8e4-7b3c-7c41-9d2a-5f6e7a8b9c0d', ...CreateThing.parse(ctx.request.body) };
  });
};

/** The store with one method replaced: for dependency failures the real store cannot be made to have. */
function storeWith(store: EventStore, ping: () => Promise<void>): EventStore {
  return new Proxy(store, {
    get: (target, prop) => (prop === 'ping' ? ping : (Reflect.get(target, prop, target) as unknown)),
  });
}

let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({ resources: [documented], projectors: [noop] });
});
afterAll(() => t?.close());

describe('health and readiness', () => {
  it('answers /health with 200 ok', async () => {
    const res = await t.http.get('/health');
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ status: 'ok' });
  });

  it('answers /ready with 200 and each dependency up', async () => {
    const res = await t.http.get('/ready');
    expect(res.status).toBe(200);
    expect(res.body).toEqual({
      status: 'ready',
      checks: { database: 'up', eventstore: 'up', redis: 'not configured' },
    });
  });

  it('answers /ready with 503 problem naming the event store when its ping fails', async () => {
    const failing = storeWith(t.deps.store, () => Promise.reject(new Error('connection refused')));
    const res = await supertest(createApp({ ...t.deps, store: failing }).callback()).get('/ready');
    expect(res.status).toBe(503);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(res.body).toMatchObject({
      type: '/problems/dependency-unavailable',
      status: 503,
      checks: { database: 'up', eventstore: 'down', redis: 'not configured' },
    });
    expect(res.body.detail).toMatch(/eventstore/);
    expect(JSON.stringify(res.body)).not.toContain('connection refused');
  });

  it('answers /ready with 503 naming the event store when one of its subscriptions is down', async () => {
    const degraded = { ...t.deps.store, health: () => ({ subscriptionsDown: 1 }) };
    const res = await supertest(createApp({ ...t.deps, store: degraded }).callback()).get('/ready');
    expect(res.status).toBe(503);
    expect(res.body.checks).toMatchObject({ database: 'up', eventstore: 'down' });
    const healthy = { ...t.deps.store, health: () => ({ subscriptionsDown: 0 }) };
    expect((await supertest(createApp({ ...t.deps, store: healthy }).callback()).get('/ready')).status).toBe(
      200,
    );
  });

  it('answers /ready with 503 within the check timeout when a dependency hangs', async () => {
    const hanging = storeWith(t.deps.store, () => new Promise<void>(() => undefined));
    // Answered, not left hanging with the ping: given ten times the check's timeout, as a loaded
    // machine may need, rather than the whole test's.
    let timer: NodeJS.Timeout | undefined;
    const res = await Promise.race([
      supertest(createApp({ ...t.deps, store: hanging }).callback())
        .get('/ready')
        .then((r) => r),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error('/ready did not answer within 10,000 ms')), 10_000);
      }),
    ]).finally(() => clearTimeout(timer));
    expect(res.status).toBe(503);
    expect(res.body.checks).toMatchObject({ eventstore: 'down' });
  });
});

describe('/metrics', () => {
  it('exposes request durations labelled by route template, process metrics and projection lag', async () => {
    await t.http.get('/health');
    // A path no route matches must not become a label; letters, since a number may turn up in
    // any metric's value (a resident memory of 1343123456 bytes holds "12345").
    await t.http.get('/api/v1/no/such/route/unrouted-marker');
    await t.deps.store.append(
      'ping-1',
      [
        {
          id: crypto.randomUUID(),
          type: 'Pinged',
          data: {},
          metadata: { occurredAt: new Date().toISOString(), schemaVersion: 1 },
        },
      ],
      'any',
    );
    const res = await t.http.get('/metrics');
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    expect(res.text).toMatch(
      /http_request_duration_seconds_bucket\{[^}]*method="GET",route="\/health",status="200"/,
    );
    expect(res.text).toMatch(/http_request_duration_seconds_count\{[^}]*route="unmatched",status="404"/);
    expect(res.text).not.toContain('unrouted-marker');
    expect(res.text).toContain('process_cpu_user_seconds_total');
    expect(res.text).toMatch(/projection_lag_events\{projection="noop"\} \d+/);
    expect(res.text).toMatch(/eventstore_appends_total [1-9]/);
  });
});

describe('OpenAPI and docs', () => {
  it('serves a valid OpenAPI 3.1 document with bearer and OAuth2 password security', async () => {
    const res = await t.http.get('/openapi.json');
    expect(res.status).toBe(200);
    const doc = res.body;
    expect(doc.openapi).toBe('3.1.0');
    expect(doc.servers).toEqual([{ url: '/api/v1' }]);
    expect(doc.components.securitySchemes.bearerAuth).toMatchObject({ type: 'http', scheme: 'bearer' });
    expect(doc.components.securitySchemes.oauth2).toMatchObject({
      type: 'oauth2',
      flows: { password: { tokenUrl: '/api/v1/session/oauth2/token' } },
    });
    expect(doc.components.schemas.Problem.properties).toHaveProperty('request_id');
    expect(doc.components.schemas.CreateThing.properties.name).toMatchObject({
      type: 'string',
      maxLength: 40,
    });
    expect(doc.paths['/things'].post.responses['400'].content['application/problem+json'].schema).toEqual({
      $ref: '#/components/schemas/Problem',
    });
    expect(doc.paths['/admin/projections'].get).toBeDefined();
    const result = await validate(structuredClone(doc));
    expect(result.valid ? 'valid' : compileErrors(result)).toBe('valid');
    expect(result.specification).toBe('OpenAPI');
  });

  it('serves Swagger UI from the package, pointing at /openapi.json', async () => {
    const page = await t.http.get('/docs');
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toMatch(/^text\/html/);
    expect(page.text).toContain('/docs/swagger-ui-bundle.js');
    expect(page.text).not.toMatch(/https?:\/\//);
    expect(page.headers['content-security-policy']).toContain("script-src 'self'");
    const init = await t.http.get('/docs/swagger-initializer.js');
    expect(init.text).toContain("url: '/openapi.json'");
    const bundle = await t.http.get('/docs/swagger-ui-bundle.js');
    expect(bundle.status).toBe(200);
    expect(bundle.headers['content-type']).toMatch(/javascript/);
    expect(Number(bundle.headers['content-length'])).toBeGreaterThan(100_000);
    const css = await t.http.get('/docs/swagger-ui.css');
    expect(css.headers['content-type']).toMatch(/^text\/css/);
  });

  it('serves nothing else from the package directory', async () => {
    for (const path of ['/docs/package.json', '/docs/..%2Fpackage.json', '/docs/swagger-ui-bundle.js.map']) {
      const res = await t.http.get(path);
      expect(res.status).toBe(404);
    }
  });
});

describe('GET /api/v1/admin/projections', () => {
  it('lists each projection with its checkpoint position as a string (admins only)', async () => {
    expect((await t.http.get('/api/v1/admin/projections')).status).toBe(401);
    expect(
      (await t.http.get('/api/v1/admin/projections').set('Authorization', bearer({ permission: 0 }))).status,
    ).toBe(403);
    const res = await t.http.get('/api/v1/admin/projections').set('Authorization', bearer({ permission: 2 }));
    expect(res.status).toBe(200);
    expect(res.body.items).toHaveLength(1);
    const [item] = res.body.items;
    expect(item).toMatchObject({ name: 'noop', version: 1, lag: expect.any(Number), last_error: null });
    expect(['starting', 'running', 'standby', 'rebuilding']).toContain(item.state);
    if (item.checkpoint) expect(typeof item.checkpoint.position).toBe('string');
  });
});
