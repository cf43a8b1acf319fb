import jwt from 'jsonwebtoken';
import supertest from 'supertest';
import { createApp } from '../../src/http/app';
import { auth } from '../../src/http/middleware/auth';
import type { AppDeps, Resource } from '../../src/http/types';
import { signAccessToken } from '../../src/platform/tokens';
import { createTestApp, type TestApp } from '../support/app';
import { recordingLogger } from '../support/logs';
import { bearer, mintToken } from '../support/tokens';

const testRoutes: Resource = (router) => {
  router.get('/test/me', auth(), (ctx) => {
    ctx.body = {
      id: ctx.state.user.id,
      session: ctx.state.user.sessionId,
      permission: ctx.state.user.permission,
    };
  });
  router.get('/test/admin', auth(2), (ctx) => {
    ctx.body = { admin: ctx.state.user.id };
  });
};

let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({ resources: [testRoutes] });
});
afterAll(() => t?.close());

function b64url(value: object): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

function expectUnauthorized(res: supertest.Response) {
  expect(res.status).toBe(401);
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  expect(res.headers['www-authenticate']).toMatch(/^Bearer/);
  expect(res.body).toMatchObject({ status: 401, type: '/problems/unauthorized' });
}

describe('auth()', () => {
  it('answers 401 with WWW-Authenticate: Bearer without a token', async () => {
    expectUnauthorized(await t.http.get('/api/v1/test/me'));
  });

  it('answers 401 for another scheme or a malformed header', async () => {
    expectUnauthorized(await t.http.get('/api/v1/test/me').set('Authorization', 'Basic YWxpY2U6c2VjcmV0'));
    expectUnauthorized(await t.http.get('/api/v1/test/me').set('Authorization', 'Bearer'));
    expectUnauthorized(await t.http.get('/api/v1/test/me').set('Authorization', 'Bearer not-a-jwt'));
  });

  it('rejects an unsigned token (alg: none)', async () => {
    const now = Math.floor(Date.now() / 1000);
    const token = `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url({
      sub: 'u1',
      sid: 's1',
      perm: 2,
      iss: t.deps.config.JWT_ISSUER,
      iat: now,
      exp: now + 600,
    })}.`;
    expectUnauthorized(await t.http.get('/api/v1/test/me').set('Authorization', `Bearer ${token}`));
  });

  it('rejects a token signed with another key', async () => {
    const res = await t.http
      .get('/api/v1/test/me')
      .set('Authorization', bearer({ secret: 'another-secret-another-secret-another-1' }));
    expectUnauthorized(res);
  });

  it('rejects a token signed with another algorithm, even with our key', async () => {
    const now = Math.floor(Date.now() / 1000);
    const token = jwt.sign(
      { sub: 'u1', sid: 's1', perm: 0, iss: t.deps.config.JWT_ISSUER, exp: now + 600 },
      t.deps.config.JWT_SECRET!,
      { algorithm: 'HS512' },
    );
    expectUnauthorized(await t.http.get('/api/v1/test/me').set('Authorization', `Bearer ${token}`));
  });

  it('rejects an expired token and says so', async () => {
    const res = await t.http.get('/api/v1/test/me').set('Authorization', bearer({ expiresIn: -10 }));
    expectUnauthorized(res);
    expect(res.body.detail).toMatch(/expired/);
  });

  it('rejects a token of another issuer or without the claims', async () => {
    expectUnauthorized(
      await t.http.get('/api/v1/test/me').set('Authorization', bearer({ issuer: 'someone-else' })),
    );
    const noSid = jwt.sign(
      { sub: 'u1', perm: 0, iss: t.deps.config.JWT_ISSUER, exp: Math.floor(Date.now() / 1000) + 600 },
      t.deps.config.JWT_SECRET!,
      { algorithm: 'HS256' },
    );
    expectUnauthorized(await t.http.get('/api/v1/test/me').set('Authorization', `Bearer ${noSid}`));
  });

  it('lets a good token through and sets ctx.state.user', async () => {
    const res = await t.http
      .get('/api/v1/test/me')
      .set('Authorization', bearer({ userId: 'user-1', sessionId: 'session-1', permission: 1 }));
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ id: 'user-1', session: 'session-1', permission: 1 });
  });

  it('accepts the tokens signAccessToken issues, until they expire', async () => {
    const keys = { secret: t.deps.config.JWT_SECRET!, issuer: t.deps.config.JWT_ISSUER };
    const claims = { userId: 'signed-user', sessionId: 'signed-session', permission: 0 as const };
    const fresh = signAccessToken(claims, keys, { expiresInSeconds: 60 });
    const res = await t.http.get('/api/v1/test/me').set('Authorization', `Bearer ${fresh}`);
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ id: 'signed-user', session: 'signed-session', permission: 0 });
    const old = signAccessToken(claims, keys, { expiresInSeconds: 60, now: new Date(Date.now() - 120_000) });
    expectUnauthorized(await t.http.get('/api/v1/test/me').set('Authorization', `Bearer ${old}`));
  });

  it('answers 403 when the permission level is too low', async () => {
    const res = await t.http.get('/api/v1/test/admin').set('Authorization', bearer({ permission: 1 }));
    expect(res.status).toBe(403);
    expect(res.body).toMatchObject({ status: 403, type: '/problems/forbidden' });
    const admin = await t.http
      .get('/api/v1/test/admin')
      .set('Authorization', bearer({ userId: 'root', permission: 2 }));
    expect(admin.status).toBe(200);
    expect(admin.body).toEqual({ admin: 'root' });
  });

  it('answers 401 when the session guard says the session has ended', async () => {
    const calls: [string, string][] = [];
    const deps: AppDeps = {
      ...t.deps,
      sessionGuard: {
        check: async (sessionId, userId) => {
          calls.push([sessionId, userId]);
          return sessionId === 'revoked' ? { ok: false, reason: 'revoked' } : { ok: true, permission: null };
        },
        markSessionRevoked: async () => undefined,
        markUserDisabled: async () => undefined,
        forgetUser: () => undefined,
      },
    };
    const http = supertest(createApp(deps, [testRoutes]).callback());
    expectUnauthorized(
      await http.get('/api/v1/test/me').set('Authorization', bearer({ userId: 'u', sessionId: 'revoked' })),
    );
    const ok = await http
      .get('/api/v1/test/me')
      .set('Authorization', bearer({ userId: 'u', sessionId: 'live' }));
    expect(ok.status).toBe(200);
    expect(calls).toEqual([
      ['revoked', 'u'],
      ['live', 'u'],
    ]);
  });
});

describe('request log', () => {
  it('writes one line per request with method, route, status, duration and request id, never the token', async () => {
    const { logger, lines: written } = recordingLogger('info');
    const http = supertest(createApp({ ...t.deps, logger }, [testRoutes]).callback());
    const token = mintToken({ userId: 'logged-user' });
    await http
      .get('/api/v1/test/me?code=abc')
      .set('Authorization', `Bearer ${token}`)
      .set('X-Request-Id', 'log-1');
    await new Promise((r) => setImmediate(r));
    const lines = written.map((l) => JSON.parse(l) as Record<string, unknown>);
    const requestLines = lines.filter((l) => l.msg === 'request');
    expect(requestLines).toHaveLength(1);
    expect(requestLines[0]).toMatchObject({
      method: 'GET',
      route: '/api/v1/test/me',
      path: '/api/v1/test/me',
      status: 200,
      request_id: 'log-1',
      duration_ms: expect.any(Number),
    });
    const all = JSON.stringify(lines);
    expect(all).not.toContain(token);
    expect(all).not.toContain('code=abc');
  });
});
