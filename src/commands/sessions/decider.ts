import type { Command, Decider } from '../handler';
import type { RevokeReason, SessionEvent } from '../../events/sessions';
import type { SignInMethod } from '../../events/users';
import { Unauthorized } from '../../platform/errors';

/** A refresh token that is unknown, expired, spent, or of an ended session: 401, say which. */
export class RefreshRefused extends Unauthorized {}

export interface SessionState {
  started: boolean;
  userId: string;
  startedAt: string | null;
  /** Digest of the one live refresh token. */
  current: string | null;
  /** Digests of rotated-out tokens: presenting one again is reuse. */
  spent: Set<string>;
  expiresAt: string | null;
  revoked: RevokeReason | null;
}

export const initialSession = (): SessionState => ({
  started: false,
  userId: '',
  startedAt: null,
  current: null,
  spent: new Set(),
  expiresAt: null,
  revoked: null,
});

export type SessionCommand =
  | Command<
      'StartSession',
      {
        sessionId: string;
        userId: string;
        method: SignInMethod;
        userAgent: string | null;
        ip: string | null;
        refreshTokenDigest: string;
        expiresAt: string;
      }
    >
  | Command<
      'RefreshSession',
      {
        sessionId: string;
        presentedDigest: string;
        refreshTokenDigest: string;
        ip: string | null;
        expiresAt: string;
      }
    >
  | Command<'RevokeSession', { sessionId: string; reason: RevokeReason }>;

/**
 * A login session's rules. Refresh tokens rotate on every use; a rotated-out token presented again
 * means it leaked (or the client raced itself), so the whole session is revoked — the attacker and
 * the victim both sign in again, which is the point.
 */
export function decideSession(cmd: SessionCommand, s: SessionState): SessionEvent[] {
  const now = cmd.metadata.now.toISOString();
  switch (cmd.type) {
    case 'StartSession':
      if (s.started) return [];
      return [{ type: 'SessionStarted', data: { ...cmd.data, startedAt: now } }];
    case 'RefreshSession': {
      const { sessionId, presentedDigest } = cmd.data;
      if (!s.started) throw new RefreshRefused('The refresh token is not valid.');
      if (s.revoked) throw new RefreshRefused('The session of this refresh token has ended; sign in again.');
      if (s.spent.has(presentedDigest)) {
        return [
          {
            type: 'SessionRevoked',
            data: { sessionId, userId: s.userId, reason: 'refresh_reuse', revokedAt: now },
          },
        ];
      }
      if (presentedDigest !== s.current) throw new RefreshRefused('The refresh token is not valid.');
      if (s.expiresAt && Date.parse(s.expiresAt) <= cmd.metadata.now.getTime())
        throw new RefreshRefused('The refresh token has expired; sign in again.');
      return [
        {
          type: 'SessionRefreshed',
          data: {
            sessionId,
            userId: s.userId,
            refreshTokenDigest: cmd.data.refreshTokenDigest,
            ip: cmd.data.ip,
            refreshedAt: now,
            expiresAt: cmd.data.expiresAt,
          },
        },
      ];
    }
    case 'RevokeSession':
      if (!s.started || s.revoked) return [];
      return [
        {
          type: 'SessionRevoked',
          data: { sessionId: cmd.data.sessionId, userId: s.userId, reason: cmd.data.reason, revokedAt: now },
        },
      ];
  }
  const _exhaustive: never = cmd;
  return _exhaustive;
}

export function evolveSession(s: SessionState, e: SessionEvent): SessionState {
  switch (e.type) {
    case 'SessionStarted':
      s.started = true;
      s.userId = e.data.userId;
      s.startedAt = e.data.startedAt;
      s.current = e.data.refreshTokenDigest;
      s.expiresAt = e.data.expiresAt;
      return s;
    case 'SessionRefreshed':
      if (s.current) s.spent.add(s.current);
      s.current = e.data.refreshTokenDigest;
      s.expiresAt = e.data.expiresAt;
      return s;
    case 'SessionRevoked':
      s.revoked = e.data.reason;
      return s;
  }
}

export const sessionDecider: Decider<SessionState, SessionCommand, SessionEvent> = {
  name: 'session',
  initialState: initialSession,
  evolve: evolveSession,
  decide: decideSession,
};
