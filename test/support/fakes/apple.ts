import { randomBytes } from 'node:crypto';
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK, type JWTPayload } from 'jose';
import { startFakeHttpServer } from './httpServer';

export const APPLE_ISSUER = 'https://appleid.apple.com';

interface SigningKey {
  kid: string;
  privateKey: CryptoKey;
  jwk: JWK;
}

export interface AppleTokenOptions {
  /** Claims over the defaults (iss Apple, aud the client id, sub, iat now, exp in 10 minutes); undefined drops one. */
  claims?: Record<string, unknown>;
  /** Sign with a key Apple never published, under this kid. */
  unpublishedKid?: string;
  /** Sign with a key Apple never published, under the current published kid (a forgery). */
  forgeCurrentKid?: boolean;
  /** HS256 with this secret, under the current kid. */
  hs256Secret?: string;
}

export interface FakeApple {
  /** The key set URL, as https://appleid.apple.com/auth/keys. */
  jwksUrl: string;
  /** The kid tokens are signed with now. */
  currentKid(): string;
  /** An identity token as Sign in with Apple gives the app. */
  token(options?: AppleTokenOptions): Promise<string>;
  /** Apple rotates: a new key signs from now on; the key set lists the new key (and the old one unless `dropOld`). */
  rotate(options?: { dropOld?: boolean }): Promise<string>;
  /** How often the key set was fetched. */
  fetches(): number;
  setDown(down: boolean): void;
  close(): Promise<void>;
}

async function newKey(): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  const kid = randomBytes(5).toString('hex').toUpperCase();
  return { kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, use: 'sig', alg: 'RS256' } };
}

/**
 * Apple's identity token keys: a key pair made here, its public half served at `/auth/keys` as a
 * JWKS (kty RSA, kid, use sig, alg RS256, like Apple's), and tokens signed with its private half.
 */
export async function startFakeApple(clientId: string): Promise<FakeApple> {
  let keys: SigningKey[] = [await newKey()];
  let fetches = 0;
  let down = false;
  const server = await startFakeHttpServer((req) => {
    if (req.path !== '/auth/keys') return { status: 404, body: '{}' };
    fetches++;
    if (down) return { status: 503, contentType: 'text/html', body: 'Service Unavailable' };
    return { status: 200, body: JSON.stringify({ keys: keys.map((k) => k.jwk) }) };
  });
  const current = () => keys[keys.length - 1]!;

  return {
    jwksUrl: `${server.url}/auth/keys`,
    currentKid: () => current().kid,
    async token(options = {}) {
      const now = Math.floor(Date.now() / 1000);
      const claims: JWTPayload = {
        iss: APPLE_ISSUER,
        aud: clientId,
        sub: `000${randomBytes(8).toString('hex')}.${randomBytes(16).toString('hex')}.0${now % 1000}`,
        iat: now,
        exp: now + 600,
        email: 'someone@example.com',
        email_verified: 'true',
        is_private_email: 'false',
        auth_time: now,
        nonce_supported: true,
        ...(options.claims as JWTPayload | undefined),
      };
      if (options.hs256Secret) {
        return new SignJWT(claims)
          .setProtectedHeader({ alg: 'HS256', kid: current().kid })
          .sign(new TextEncoder().encode(options.hs256Secret));
      }
      let key = current();
      if (options.unpublishedKid || options.forgeCurrentKid) {
        const rogue = await newKey();
        key = { ...rogue, kid: options.unpublishedKid ?? current().kid };
      }
      return new SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: key.kid }).sign(key.privateKey);
    },
    async rotate(options = {}) {
      const next = await newKey();
      keys = options.dropOld ? [next] : [...keys, next];
      return next.kid;
    },
    fetches: () => fetches,
    setDown(value) {
      down = value;
    },
    close: () => server.close(),
  };
}
