import { ensureAdmin } from '../../src/commands/users/identity';
import { identityDeps } from '../../src/http/identityDeps';
import { allResources } from '../../src/http/resources';
import { allProjectors } from '../../src/projections';
import { createTestApp, type TestApp } from '../support/app';
import { recordingLogger } from '../support/logs';

/**
 * Who may call what, for every operation of /openapi.json, checked against API.md; hostile bodies;
 * input that looks like SQL; and the logs of it all scanned for the secrets in play.
 */
const JWT_SECRET = 'security-suite-secret-0123456789abcdef';
const PASSWORD = 'a password worth stealing';
let logLines: string[] = [];
let t: TestApp;
let operations: { method: string; path: string }[] = [];
let user: { id: string; auth: string; refresh: string };
let admin: { id: string; auth: string };

/** API.md: reachable without a token. */
const PUBLIC = new Set([
  'post /users',
  'post /session/oauth2/token',
  'post /session/refresh',
  'post /session/wechat/token',
  'post /session/apple/token',
  'post /session/sms/code',
  'post /session/sms/token',
]);
/** API.md: admins only (permission 2). */
const ADMIN_ONLY = [
  /^get \/users$/,
  /^(get|patch) \/users\/\{id\}$/,
  /^put \/users\/\{id\}\/password$/,
  /^post \/users\/\{id\}\/credits$/,
  /^(get|post) \/codes$/,
  /^(get|delete) \/codes\/\{code\}$/,
  /^get \/admin\//,
];
const isAdminOnly = (op: string) => ADMIN_ONLY.some((r) => r.test(op));

async function signUp(username: string) {
  const created = await t.http.post('/api/v1/users').send({ username, password: PASSWORD });
  expect(created.status).toBe(201);
  const token = await t.http
    .post('/api/v1/session/oauth2/token')
    .type('form')
    .send({ username, password: PASSWORD });
  expect(token.status).toBe(200);
  const body = token.body as { access_token: string; refresh_token: string };
  return {
    id: (created.body as { id: string }).id,
    auth: `Bearer ${body.access_token}`,
    refresh: body.refresh_token,
  };
}

async function signIn(username: string): Promise<string> {
  const token = await t.http
    .post('/api/v1/session/oauth2/token')
    .type('form')
    .send({ username, password: PASSWORD });
  expect(token.status).toBe(200);
  return `Bearer ${(token.body as { access_token: string }).access_token}`;
}

beforeAll(async () => {
  const recording = recordingLogger('debug');
  logLines = recording.lines;
  t = await createTestApp({
    resources: [...allResources],
    projectors: allProjectors,
    config: { LOG_LEVEL: 'debug', JWT_SECRET },
    deps: { logger: recording.logger },
  });
  const doc = (await t.http.get('/openapi.json')).body as { paths: Record<string, Record<string, unknown>> };
  operations = Object.entries(doc.paths).flatMap(([path, methods]) =>
    Object.keys(methods)
      .filter((m) => ['get', 'post', 'put', 'patch', 'delete'].includes(m))
      .map((method) => ({ method, path })),
  );
  user = await signUp('sec_user');
  const a = await signUp('sec_boss');
  // Made admin as `npm run admin -- create` does.
  await ensureAdmin(identityDeps(t.deps), { username: 'sec_boss', password: PASSWORD }, {});
  const token = await t.http
    .post('/api/v1/session/oauth2/token')
    .type('form')
    .send({ username: 'sec_boss', password: PASSWORD });
  admin = { id: a.id, auth: `Bearer ${(token.body as { access_token: string }).access_token}` };
});
afterAll(() => t?.close());

function call(op: { method: string; path: string }, auth?: string) {
  const path = op.path.replace('{id}', user.id).replace(/\{[^}]+\}/g, 'unknown-id');
  let req = t.http[op.method as 'get'](`/api/v1${path}`);
  if (auth) req = req.set('Authorization', auth);
  if (op.path.endsWith('/stream')) req = req.timeout({ response: 5_000 });
  return ['post', 'put', 'patch'].includes(op.method) ? req.send({}) : req;
}

describe('the authorization matrix of API.md, for every operation', () => {
  it('covers every operation the service documents', () => {
    expect(operations.length).toBeGreaterThan(30);
  });

  it('answers 401 to nobody, except on the public operations', async () => {
    for (const op of operations) {
      const key = `${op.method} ${op.path}`;
      const res = await call(op);
      if (PUBLIC.has(key)) expect([key, res.status]).not.toEqual([key, 401]);
      else expect([key, res.status]).toEqual([key, 401]);
      expect(res.status).toBeLessThan(500);
    }
  });

  it('answers 403 to a user on every admin operation, and lets an admin past', async () => {
    for (const op of operations) {
      const key = `${op.method} ${op.path}`;
      if (!isAdminOnly(key)) continue;
      expect([key, (await call(op, user.auth)).status]).toEqual([key, 403]);
      const asAdmin = (await call(op, admin.auth)).status;
      expect([key, [401, 403].includes(asAdmin)]).toEqual([key, false]);
    }
  });

  it('lets a user past authorization on every other operation', async () => {
    for (const op of operations) {
      const key = `${op.method} ${op.path}`;
      if (isAdminOnly(key) || PUBLIC.has(key)) continue;
      // A session of its own for each: `DELETE /session` ends the one it is called with.
      const status = (await call(op, await signIn('sec_user'))).status;
      expect([key, [401, 403].includes(status)]).toEqual([key, false]);
    }
  });
});

describe('hostile input', () => {
  it('refuses JSON nested 100,000 deep with a 4xx, not a crash', async () => {
    const deep = '['.repeat(100_000) + ']'.repeat(100_000);
    const res = await t.http.post('/api/v1/presets').set('Authorization', user.auth).type('json').send(deep);
    expect(res.status).toBeGreaterThanOrEqual(400);
    expect(res.status).toBeLessThan(500);
  });

  it('keeps SQL-looking input verbatim and harmless', async () => {
    const name = "Robert'); DROP TABLE users; --";
    const created = await t.http
      .post('/api/v1/presets')
      .set('Authorization', user.auth)
      .send({
        name,
        description: "' OR '1'='1",
        model: 'local-echo',
        parameters: {},
        messages: [{ role: 'system', content: '"; SELECT pg_sleep(10); --' }],
        public: false,
      });
    expect(created.status).toBe(201);
    const id = (created.body as { id: string }).id;
    const read = await t.http
      .get(`/api/v1/presets/${id}`)
      .set('Authorization', user.auth)
      .set('X-Consistent-After', String(created.headers['x-event-position']));
    expect(read.body).toMatchObject({ name, description: "' OR '1'='1" });
    expect((await t.http.get('/api/v1/users/me').set('Authorization', user.auth)).status).toBe(200);
  });

  it('never echoes a header with a line break into the response', async () => {
    const res = await t.http.get('/health').set('X-Request-Id', 'abc%0d%0aSet-Cookie:%20x=1');
    expect(res.headers['set-cookie']).toBeUndefined();
  });
});

describe('secrets in logs', () => {
  it('never logs the signing key, a password, or a token', async () => {
    // A refresh, a failed sign-in and a bad token, so that every path that might log one ran.
    await t.http.post('/api/v1/session/refresh').send({ refresh_token: user.refresh });
    await t.http
      .post('/api/v1/session/oauth2/token')
      .type('form')
      .send({ username: 'sec_user', password: 'wrong' });
    await t.http.get('/api/v1/users/me').set('Authorization', `${user.auth}x`);
    const logs = logLines.join('\n');
    expect(logs.length).toBeGreaterThan(1000);
    for (const secret of [JWT_SECRET, PASSWORD, user.auth.slice(7), admin.auth.slice(7), user.refresh]) {
      expect(logs.includes(secret)).toBe(false);
    }
  });
});
