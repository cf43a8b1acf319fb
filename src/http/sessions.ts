import { z } from 'zod';
import { passwordSignIn, refreshSession, revokeSession, type TokenPair } from '../commands/users/identity';
import { BadRequest, NotFound } from '../platform/errors';
import { PageQuery } from '../queries/paging';
import { activeSessions } from '../queries/users';
import { identityDeps, requestContext } from './identityDeps';
import { auth } from './middleware/auth';
import { clientIp, limit } from './middleware/rateLimit';
import { consistentRead, setEventPosition } from './middleware/consistency';
import { bearerSecurity, problemResponses } from './openapi';
import type { AuthedState, Resource } from './types';
import type { ParameterizedContext } from 'koa';

const PasswordGrant = z
  .object({
    grant_type: z.literal('password').optional(),
    username: z.string().trim().min(1).max(64),
    password: z.string().min(1).max(256),
    scope: z.string().max(1000).optional(),
    client_id: z.string().max(200).optional(),
    client_secret: z.string().max(200).optional(),
  })
  .meta({ id: 'PasswordGrant', description: 'OAuth2 password grant, form-encoded.' });
const RefreshBody = z.object({ refresh_token: z.string().min(1).max(200) }).meta({ id: 'RefreshToken' });
export const TokenResponse = z
  .object({
    access_token: z.string(),
    token_type: z.literal('bearer'),
    expires_in: z.number().int(),
    refresh_token: z.string(),
  })
  .meta({ id: 'TokenPair' });
const SessionId = z.object({ id: z.string().min(1).max(100) });

/** Answers a token pair as OAuth2 says: JSON, never cached. */
export function sendTokens(ctx: ParameterizedContext, pair: TokenPair, status = 200): void {
  setEventPosition(ctx, pair.position);
  ctx.set('Cache-Control', 'no-store');
  ctx.status = status;
  ctx.body = {
    access_token: pair.access_token,
    token_type: pair.token_type,
    expires_in: pair.expires_in,
    refresh_token: pair.refresh_token,
  };
}

/**
 * The username a sign-in attempt names, as its rate-limit key: read as the sign-in reads it (trimmed,
 * then at most 64 characters), so neither case nor padding makes a new budget. A name the sign-in
 * refuses (400) needs no key.
 */
function usernameOf(body: unknown): string | undefined {
  const name = (body as Record<string, unknown> | undefined)?.username;
  if (typeof name !== 'string') return undefined;
  const trimmed = name.trim();
  return trimmed.length >= 1 && trimmed.length <= 64 ? trimmed.toLowerCase() : undefined;
}

/** The OAuth2 token endpoint takes the refresh grant too, as standard clients send it. */
const RefreshGrant = z.object({
  grant_type: z.literal('refresh_token'),
  refresh_token: z.string().min(1).max(200),
});

/** Sessions (API.md): password sign-in (OAuth2), refresh, sign-out, a user's sessions. */
export const sessions: Resource = (router, { deps, openapi }) => {
  const identity = identityDeps(deps);
  const db = deps.db.db;

  openapi.registerPath({
    method: 'post',
    path: '/session/oauth2/token',
    summary: 'Sign in with username and password (OAuth2 password grant)',
    tags: ['sessions'],
    request: { body: { content: { 'application/x-www-form-urlencoded': { schema: PasswordGrant } } } },
    responses: {
      200: { description: 'A token pair', content: { 'application/json': { schema: TokenResponse } } },
      ...problemResponses(400, 401, 429),
    },
  });
  router.post(
    '/session/oauth2/token',
    limit('login_ip', clientIp),
    limit('login_username', (ctx) => usernameOf(ctx.request.body)),
    async (ctx) => {
      const raw = (ctx.request.body ?? {}) as Record<string, unknown>;
      if (raw.grant_type === 'refresh_token') {
        const { refresh_token } = RefreshGrant.parse(raw);
        sendTokens(ctx, await refreshSession(identity, refresh_token, requestContext(ctx)));
        return;
      }
      if (raw.grant_type !== undefined && raw.grant_type !== 'password') {
        throw new BadRequest('grant_type must be password or refresh_token.');
      }
      const { username, password } = PasswordGrant.parse(raw);
      const pair = await passwordSignIn(identity, { username, password }, requestContext(ctx));
      // A user who got in is not a brute force: earlier typos stop counting against the name.
      await ctx.rateLimits.reset('login_username', username.toLowerCase());
      sendTokens(ctx, pair);
    },
  );

  openapi.registerPath({
    method: 'post',
    path: '/session/refresh',
    summary: 'Exchange a refresh token for a new pair (the old one stops working)',
    tags: ['sessions'],
    request: { body: { content: { 'application/json': { schema: RefreshBody } } } },
    responses: {
      200: { description: 'A new token pair', content: { 'application/json': { schema: TokenResponse } } },
      ...problemResponses(400, 401),
    },
  });
  router.post('/session/refresh', async (ctx) => {
    const { refresh_token } = RefreshBody.parse(ctx.request.body);
    sendTokens(ctx, await refreshSession(identity, refresh_token, requestContext(ctx)));
  });

  openapi.registerPath({
    method: 'delete',
    path: '/session',
    summary: 'Sign out: end the current session',
    tags: ['sessions'],
    security: bearerSecurity,
    responses: { 204: { description: 'Ended' }, ...problemResponses(401) },
  });
  router.delete('/session', auth(), async (ctx) => {
    const r = await revokeSession(identity, ctx.state.user.sessionId, 'logout', requestContext(ctx));
    setEventPosition(ctx, r.position);
    ctx.status = 204;
  });

  openapi.registerPath({
    method: 'get',
    path: '/users/me/sessions',
    summary: 'My active sessions',
    tags: ['sessions'],
    security: bearerSecurity,
    request: { query: PageQuery },
    responses: { 200: { description: 'Active sessions' }, ...problemResponses(400, 401, 504) },
  });
  router.get('/users/me/sessions', auth(), consistentRead<AuthedState>(['sessions']), async (ctx) => {
    const { id, sessionId } = ctx.state.user;
    const { limit, cursor } = PageQuery.parse(ctx.query);
    ctx.body = await activeSessions(db, {
      userId: id,
      now: deps.clock.now(),
      currentSessionId: sessionId,
      limit,
      cursor,
    });
  });

  openapi.registerPath({
    method: 'delete',
    path: '/users/me/sessions/{id}',
    summary: 'End one of my sessions',
    tags: ['sessions'],
    security: bearerSecurity,
    request: { params: SessionId },
    responses: { 204: { description: 'Ended' }, ...problemResponses(401, 404) },
  });
  router.delete('/users/me/sessions/:id', auth(), async (ctx) => {
    const { id } = SessionId.parse(ctx.params);
    if (!/^[0-9a-f-]{36}$/.test(id)) throw new NotFound('No such session.');
    const r = await revokeSession(identity, id, 'user', requestContext(ctx), ctx.state.user.id);
    setEventPosition(ctx, r.position);
    ctx.status = 204;
  });
};
