import { Forbidden, Unauthorized } from '../../platform/errors';
import { verifyAccessToken, type PermissionLevel } from '../../platform/tokens';
import type { AppMiddleware, AuthedState } from '../types';

const BEARER = /^Bearer +([A-Za-z0-9._~+/-]+=*) *$/i;

/**
 * The user of the request's access token when it is valid (signature, issuer, expiry), else
 * undefined: for what runs before a route's `auth()` (which answers 401 for a bad one).
 */
export function bearerUserId(ctx: {
  get(field: string): string;
  deps: { config: { JWT_SECRET?: string | undefined; JWT_ISSUER: string }; clock: { now(): Date } };
}): string | undefined {
  const token = BEARER.exec(ctx.get('Authorization'))?.[1];
  const { config, clock } = ctx.deps;
  if (!token || !config.JWT_SECRET) return undefined;
  try {
    return verifyAccessToken(token, { secret: config.JWT_SECRET, issuer: config.JWT_ISSUER }, clock.now())
      .userId;
  } catch {
    return undefined;
  }
}

/**
 * Requires a valid access token (`Authorization: Bearer …`) with at least `minPermission`
 * (0 user, 2 admin): 401 with `WWW-Authenticate: Bearer` without one, 403 when the level is too
 * low. Sets `ctx.state.user`. With `deps.sessionGuard`, a revoked session or disabled user is 401.
 */
export function auth(minPermission: PermissionLevel = 0): AppMiddleware<AuthedState> {
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
    let permission = claims.permission;
    if (sessionGuard) {
      const check = await sessionGuard.check(claims.sessionId, claims.userId);
      if (!check.ok) {
        throw new Unauthorized(
          check.reason === 'disabled'
            ? 'This account is disabled.'
            : 'The session of this access token has ended; sign in again.',
        );
      }
      // A permission changed since the token was issued counts at once, up or down.
      if (check.permission !== null) permission = check.permission;
    }
    ctx.state.user = { id: claims.userId, sessionId: claims.sessionId, permission };
    if (permission < minPermission) {
      throw new Forbidden('Your account is not allowed to do this.');
    }
    await next();
  };
}
