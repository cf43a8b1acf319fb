import jwt from 'jsonwebtoken';
import { uuidv7 } from 'uuidv7';
import { testConfig } from '../../src/platform/config';
import type { PermissionLevel } from '../../src/platform/tokens';

export interface MintOptions {
  userId?: string;
  permission?: PermissionLevel;
  sessionId?: string;
  /** Seconds from now; negative for an already expired token. Default one hour. */
  expiresIn?: number;
  /** Another key, to forge a token. Default: testConfig()'s JWT_SECRET. */
  secret?: string;
  issuer?: string;
  now?: Date;
}

/** An access token as the sign-in endpoints issue them, for tests. */
export function mintToken(options: MintOptions = {}): string {
  const config = testConfig();
  const iat = Math.floor((options.now ?? new Date()).getTime() / 1000);
  const expiresIn = options.expiresIn ?? 3600;
  return jwt.sign(
    {
      sub: options.userId ?? uuidv7(),
      sid: options.sessionId ?? uuidv7(),
      perm: options.permission ?? 0,
      iat: expiresIn < 0 ? iat + expiresIn - 60 : iat,
      exp: iat + expiresIn,
      iss: options.issuer ?? config.JWT_ISSUER,
    },
    options.secret ?? config.JWT_SECRET!,
    { algorithm: 'HS256' },
  );
}

/** `Authorization` header value for `mintToken(options)`. */
export function bearer(options: MintOptions = {}): string {
  return `Bearer ${mintToken(options)}`;
}
