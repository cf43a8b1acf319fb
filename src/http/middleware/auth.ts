import { Forbidden, Unauthorized } from '../../platform/errors';
import { verifyAccessToken, type PermissionLevel } from '../../platform/tokens';
import type { SessionGuard } from '../../queries/sessionGuard';
import type { AppMiddleware, AuthedState } from '../types';

const BEARER = /^Bearer +([A-Za-z0-9._~+/-]+=*) *$/i;

/**
 * The user and session of the request's access token when it is valid (signature, issuer, expiry),
 * else undefined: for what runs before a route's `auth()` (which answers 401 for a bad one).
 */
export function bearerClaims(ctx: {
  get(field: string): string;
  deps: { config: { JWT_SECRET?: string | undefined; JWT_ISSUER: string }; clock: { now(): Date } };
}): { userId: string; sessionId: string } | undefined {
  const token = BEARER.exec(ctx.get('Authorization'))?.[1];
  const { config, clock } = ctx.deps;
  if (!token || !config.JWT_SECRET) return undefined;
  try {
    const { userId, sessionId } = verifyAccessToken(
      token,
      { secret: config.JWT_SECRET, issuer: config.JWT_ISSUER },
      clock.now(),
    );
    return { userId, sessionId };
  } catch {
    return undefined;
  }
}

/** The token's session still open and its user enabled (else 401): answers the user's permission now. */
export async function checkSession(
  guard: SessionGuard,
  claims: { sessionId: string; userId: string },
): Promise<PermissionLevel | null> {
  const check = await guard.check(claims.sessionId, claims.userId);
  if (!check.ok) {
    throw new Unauthorized(
      check.reason === 'disabled'
        ? 'This account is disabled.'
        : 'The session of this access token has ended; sign in again.',
    );
  }
  return check.permission;
}

/**
 * Requires a valid access token (`Authorization: Bearer …`) with at least `minPermission`
 * (0 user, 2 admin): 401 with `WWW-Authenticate: Bearer` without one, 403 when the level is too
 * low. Sets `ctx.state.user`. With `deps.sessionGuard`, a revoked session or disabled user is 401.
 *
 * `checkBeside` (a user's route only): the session check runs beside the route, which gets it as
 * `ctx.state.sessionChecked` and awaits it before its first write; its reads go on meanwhile. The
 * request still fails with 401 when the check does, whatever the route answered, and the
 * permission is the token's.
 */
export function auth(
  minPermission: PermissionLevel = 0,
  options: { checkBeside?: boolean } = {},
): AppMiddleware<AuthedState> {
  return async (ctx, next) => {
    const { config, clock, sessionGuard } = ctx.deps;
    const header = ctx.get('Authorization');
    if (!header)
      throw new Unauthorized('This endpoint needs an access token: Authorization: Bearer <token>.');
    const token = BEARER.exec(header)?.[1];
    if (!token) throw new Unauthorized('The Authorization header must be Bearer <token>.');
    if (!config.JWT_SECRET) throw new Error('JWT_SECRET is not configured');
    const claims = verifyAccessToken(
      token,
      { secret: config.JWT_SECRET, issuer: config.JWT_ISSUER },
      clock.now(),
    );
    const checked = sessionGuard && checkSession(sessionGuard, claims);
    if (checked && options.checkBeside && minPermission === 0) {
      const sessionChecked = checked.then(() => undefined);
      // Awaited below on every path; until then a refusal is not an unhandled rejection.
      sessionChecked.catch(() => undefined);
      ctx.state.user = { id: claims.userId, sessionId: claims.sessionId, permission: claims.permission };
      ctx.state.sessionChecked = sessionChecked;
      try {
        await next();
      } catch (err) {
        await sessionChecked; // a refused session is a 401, whatever else went wrong
        throw err;
      }
      await sessionChecked;
      return;
    }
    // A permission changed since the token was issued counts at once, up or down.
    const permission = (checked ? await checked : null) ?? claims.permission;
    ctx.state.user = { id: claims.userId, sessionId: claims.sessionId, permission };
    if (permission < minPermission) {
      throw new Forbidden('Your account is not allowed to do this.');
    }
    await next();
  };
}
