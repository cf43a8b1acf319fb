import { Forbidden, Unauthorized } from '../../platform/errors';
import { verifyAccessToken, type PermissionLevel } from '../../platform/tokens';
import type { AppMiddleware, AuthedState } from '../types';

const BEARER = /^Bearer +([A-Za-z0-9._~+/-]+=*) *$/i;

/**
 * Requires a valid access token (`Authorization: Bearer …`) with at least `minPermission`
 * (0 user, 2 admin): 401 with `WWW-Authenticate: Bearer` without one, 403 when the level is too
 * low. Sets `ctx.state.user`. When `deps.isRevoked` is set, a revoked login session is 401.
 */
export function auth(minPermission: PermissionLevel = 0): AppMiddleware<AuthedState> {
  return async (ctx, next) => {
    const { config, clock, isRevoked } = ctx.deps;
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
    if (isRevoked && (await isRevoked(claims.sessionId, claims.userId))) {
      throw new Unauthorized('The session of this access token has ended; sign in again.');
    }
    ctx.state.user = { id: claims.userId, sessionId: claims.sessionId, permission: claims.permission };
    if (claims.permission < minPermission) {
      throw new Forbidden('Your account is not allowed to do this.');
    }
    await next();
  };
}
