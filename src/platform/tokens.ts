import { createSecretKey, type KeyObject } from 'node:crypto';
import jwt from 'jsonwebtoken';
import { LRUCache } from 'lru-cache';
import { z } from 'zod';
import { Unauthorized } from './errors';

/** Permission levels carried in the `perm` claim. */
export const Permission = { user: 0, staff: 1, admin: 2 } as const;
export type PermissionLevel = 0 | 1 | 2;

/** Who an access token speaks for. */
export interface AccessClaims {
  userId: string;
  /** The login session the token was issued for (revocation is per session). */
  sessionId: string;
  permission: PermissionLevel;
}

export interface TokenKeys {
  secret: string;
  issuer: string;
}

const ALGORITHM = 'HS256';

/**
 * The secret as a KeyObject, made once: given a string, the JWT library tries to parse it as a
 * public key and then makes a secret key on every call, a measurable share of a request's CPU.
 */
const keyObjects = new Map<string, KeyObject>();
function keyOf(secret: string): KeyObject {
  let key = keyObjects.get(secret);
  if (!key) {
    if (keyObjects.size > 16) keyObjects.clear();
    keyObjects.set(secret, (key = createSecretKey(Buffer.from(secret, 'utf8'))));
  }
  return key;
}

const Payload = z.object({
  sub: z.string().min(1),
  sid: z.string().min(1),
  perm: z.union([z.literal(0), z.literal(1), z.literal(2)]),
  // A token without an expiry would never expire: not one of ours.
  exp: z.number(),
});

/** Signs an access token (HS256) valid for `expiresInSeconds` from `now`. */
export function signAccessToken(
  claims: AccessClaims,
  keys: TokenKeys,
  options: { expiresInSeconds: number; now?: Date },
): string {
  const iat = Math.floor((options.now ?? new Date()).getTime() / 1000);
  return jwt.sign({ sid: claims.sessionId, perm: claims.permission, iat }, keyOf(keys.secret), {
    algorithm: ALGORITHM,
    issuer: keys.issuer,
    subject: claims.userId,
    expiresIn: options.expiresInSeconds,
  });
}

/**
 * Verifies an access token: HS256 only (so `alg: none` and tokens signed for another algorithm or
 * key fail), our issuer, not expired at `now`. Throws Unauthorized saying why.
 */
export function verifyAccessToken(token: string, keys: TokenKeys, now: Date = new Date()): AccessClaims {
  const cache = verifiedUnder(keys);
  const known = cache.get(token);
  if (known) {
    // As the library decides it: expired once the clock's second reaches `exp`.
    if (Math.floor(now.getTime() / 1000) >= known.exp)
      throw new Unauthorized('The access token has expired.');
    return known.claims;
  }
  return verifyOnce(token, keys, now);
}

/**
 * Tokens already verified under a key and issuer, with their expiry: a request meets its token two
 * or three times (the rate limit, auth, idempotency) and a client sends the same one for a day,
 * so the signature is checked once. Only verified tokens enter; revocation is the session guard's.
 */
const verified = new Map<string, LRUCache<string, { claims: AccessClaims; exp: number }>>();
function verifiedUnder(keys: TokenKeys): LRUCache<string, { claims: AccessClaims; exp: number }> {
  const scope = `${keys.issuer}\u0000${keys.secret}`;
  let cache = verified.get(scope);
  if (!cache) {
    if (verified.size > 16) verified.clear();
    verified.set(scope, (cache = new LRUCache({ max: 10_000 })));
  }
  return cache;
}

function verifyOnce(token: string, keys: TokenKeys, now: Date): AccessClaims {
  let decoded: unknown;
  try {
    decoded = jwt.verify(token, keyOf(keys.secret), {
      algorithms: [ALGORITHM],
      issuer: keys.issuer,
      clockTimestamp: Math.floor(now.getTime() / 1000),
    });
  } catch (err) {
    if (err instanceof jwt.TokenExpiredError) throw new Unauthorized('The access token has expired.');
    throw new Unauthorized('The access token is not valid.');
  }
  const payload = Payload.safeParse(decoded);
  if (!payload.success) throw new Unauthorized('The access token is not valid.');
  const claims: AccessClaims = {
    userId: payload.data.sub,
    sessionId: payload.data.sid,
    permission: payload.data.perm,
  };
  verifiedUnder(keys).set(token, { claims: Object.freeze(claims), exp: payload.data.exp });
  return claims;
}
