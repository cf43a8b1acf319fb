import { z } from 'zod';
import { SignInMethodSchema } from './users';

/**
 * Login sessions' events (stream `session-{id}`). A session holds one live refresh token, stored as
 * a SHA-256 digest; each refresh rotates it, and presenting a spent one revokes the whole session.
 */
const id = z.string().min(1).max(200);
const at = z.string().datetime({ offset: true });

export const RevokeReasonSchema = z.enum([
  'logout',
  'user',
  'admin',
  'password_change',
  'refresh_reuse',
  'user_disabled',
]);
export type RevokeReason = z.infer<typeof RevokeReasonSchema>;

export const SessionEventSchemas = {
  SessionStarted: z.object({
    sessionId: id,
    userId: id,
    method: SignInMethodSchema,
    userAgent: z.string().nullable(),
    ip: z.string().nullable(),
    refreshTokenDigest: z.string(),
    startedAt: at,
    expiresAt: at,
  }),
  SessionRefreshed: z.object({
    sessionId: id,
    userId: id,
    refreshTokenDigest: z.string(),
    ip: z.string().nullable(),
    refreshedAt: at,
    expiresAt: at,
  }),
  SessionRevoked: z.object({
    sessionId: id,
    userId: id,
    reason: RevokeReasonSchema,
    revokedAt: at,
  }),
} as const;

export type SessionEventType = keyof typeof SessionEventSchemas;
export type SessionEvent = {
  [T in SessionEventType]: { type: T; data: z.infer<(typeof SessionEventSchemas)[T]> };
}[SessionEventType];

export const sessionStream = (sessionId: string) => `session-${sessionId}`;
