import { createRemoteJWKSet, jwtVerify, type JWTPayload } from 'jose';
import { DependencyDown, Unauthorized } from '../errors';

/** Every Apple identity token is issued by this; it is not configurable, so a test cannot loosen it. */
export const APPLE_ISSUER = 'https://appleid.apple.com';

/** Who Apple says signed in. `subject` is stable per Apple developer team: the identity to link. */
export interface AppleIdentity {
  subject: string;
  /** Only a hint (a nickname): Apple may relay it, and the user may hide or change it. */
  email: string | null;
  privateEmail: boolean;
}

/** Verifies Sign in with Apple identity tokens against Apple's published keys. */
export interface AppleVerifier {
  /** Throws Unauthorized (401) for any token that is not a valid one for our apps; DependencyDown (503) when Apple's keys cannot be had. */
  verify(identityToken: string, now: Date): Promise<AppleIdentity>;
}

export interface AppleVerifierOptions {
  /** https://appleid.apple.com/auth/keys, or a local key set in tests. */
  jwksUrl: string;
  /** The accepted `aud`: our bundle ids and Services IDs. */
  clientIds: readonly string[];
  timeoutMs?: number;
  /** After an unknown `kid`, the key set is fetched again at most this often. */
  cooldownMs?: number;
}

/** An identity token is used right after the user signs in with Apple (Apple's own last 10 minutes). */
const MAX_TOKEN_AGE = '10m';

/** Apple and our clock may disagree by a few seconds; more than this is an expired token. */
const CLOCK_TOLERANCE_SECONDS = 30;

/**
 * Apple's keys come through jose's remote key set: fetched on first use, cached, and fetched again
 * when a token names a key id the cache does not have (Apple rotating keys) unless the last fetch
 * is younger than the cooldown. Only RS256 is accepted, whatever the token's header asks for.
 */
export function createAppleVerifier(opts: AppleVerifierOptions): AppleVerifier {
  const keys = createRemoteJWKSet(new URL(opts.jwksUrl), {
    timeoutDuration: opts.timeoutMs ?? 5_000,
    cooldownDuration: opts.cooldownMs ?? 30_000,
  });
  const audience = [...opts.clientIds];
  if (audience.length === 0) throw new Error('createAppleVerifier: no client ids to accept');

  return {
    async verify(identityToken, now) {
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(identityToken, keys, {
          issuer: APPLE_ISSUER,
          audience,
          algorithms: ['RS256'],
          requiredClaims: ['sub', 'exp', 'iat'],
          currentDate: now,
          clockTolerance: CLOCK_TOLERANCE_SECONDS,
          // Issued for this sign-in, not long ago and not in the future: an old or forward-dated
          // token replayed is refused even while its `exp` lasts.
          maxTokenAge: MAX_TOKEN_AGE,
        }));
      } catch (err) {
        throw appleError(err);
      }
      const { sub } = payload;
      if (typeof sub !== 'string' || sub === '' || sub.length > 255) {
        throw new Unauthorized('The Apple identity token names no user.');
      }
      const email = typeof payload.email === 'string' ? payload.email : null;
      return { subject: sub, email, privateEmail: truthy(payload.is_private_email) };
    },
  };
}

/** Apple sends some boolean claims as "true"/"false" strings. */
const truthy = (v: unknown) => v === true || v === 'true';

/** jose's error codes: the token's fault → 401; not getting Apple's keys → 503. */
const TOKEN_FAULTS: Record<string, string> = {
  ERR_JWT_EXPIRED: 'The Apple identity token has expired; sign in with Apple again.',
  ERR_JOSE_ALG_NOT_ALLOWED: 'The Apple identity token must be signed with RS256.',
  ERR_JOSE_NOT_SUPPORTED: 'The Apple identity token must be signed with RS256.',
  ERR_JWKS_NO_MATCHING_KEY: 'The Apple identity token is not signed by a current Apple key.',
  ERR_JWKS_MULTIPLE_MATCHING_KEYS: 'The Apple identity token is not signed by a current Apple key.',
  ERR_JWS_SIGNATURE_VERIFICATION_FAILED: 'The Apple identity token’s signature is not valid.',
  ERR_JWS_INVALID: 'The identity token is not a signed JWT.',
  ERR_JWT_INVALID: 'The identity token is not a valid JWT.',
};

const CLAIM_FAULTS: Record<string, string> = {
  iss: 'The identity token was not issued by Apple.',
  aud: 'The Apple identity token is for another app.',
  sub: 'The Apple identity token names no user.',
  iat: 'The Apple identity token has no issue time.',
  exp: 'The Apple identity token has no expiry.',
  nbf: 'The Apple identity token is not valid yet.',
};

/** What a failed verification means for our client: the token's fault (401) or Apple's keys out of reach (503). */
export function appleError(err: unknown): Error {
  const code = (err as { code?: unknown }).code;
  if (code === 'ERR_JWT_CLAIM_VALIDATION_FAILED') {
    const claim = String((err as { claim?: unknown }).claim);
    return new Unauthorized(CLAIM_FAULTS[claim] ?? 'The Apple identity token’s claims are not valid.');
  }
  const fault = typeof code === 'string' ? TOKEN_FAULTS[code] : undefined;
  if (fault) return new Unauthorized(fault);
  // ERR_JWKS_TIMEOUT, a non-200 or malformed key set (ERR_JOSE_GENERIC, ERR_JWKS_INVALID), a refused connection.
  return new DependencyDown('Apple’s signing keys could not be fetched; retry shortly.');
}
