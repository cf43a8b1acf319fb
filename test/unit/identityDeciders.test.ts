import { RefreshRefused, sessionDecider } from '../../src/commands/sessions/decider';
import { uniqueDecider, userDecider, UserNotFound, ValueTaken } from '../../src/commands/users/decider';
import type { SessionEvent } from '../../src/events/sessions';
import type { UniqueEvent, UserEvent } from '../../src/events/users';
import { uniqueStream } from '../../src/events/users';
import { Conflict } from '../../src/platform/errors';
import { deciderSpec } from '../support/spec';

const now = new Date('2026-03-01T10:00:00.000Z');
const at = now.toISOString();
const metadata = { now };

describe('user decider', () => {
  const spec = deciderSpec(userDecider);
  const registered: UserEvent = {
    type: 'UserRegistered',
    data: {
      userId: 'u1',
      username: 'alice',
      email: null,
      nickname: 'alice',
      passwordHash: 'h1',
      permission: 0,
      method: 'password',
      signupCredits: 100,
      registeredAt: at,
    },
  };

  it('registers once: registering again decides nothing', () => {
    const data = {
      userId: 'u1',
      username: 'alice',
      email: null,
      nickname: 'alice',
      passwordHash: 'h1',
      permission: 0 as const,
      method: 'password' as const,
      signupCredits: 100,
    };
    spec.given([]).when({ type: 'RegisterUser', data, metadata }).then([registered]);
    spec.given([registered]).when({ type: 'RegisterUser', data, metadata }).then([]);
  });

  it('refuses every change to a user that does not exist', () => {
    spec
      .given([])
      .when({ type: 'DisableUser', data: { userId: 'u1' }, metadata })
      .thenThrows(UserNotFound);
  });

  it('records only what changes in a profile', () => {
    spec
      .given([registered])
      .when({ type: 'ChangeProfile', data: { userId: 'u1', nickname: 'alice', email: 'a@x.io' }, metadata })
      .then([{ type: 'ProfileChanged', data: { userId: 'u1', email: 'a@x.io', changedAt: at } }]);
    spec
      .given([registered])
      .when({ type: 'ChangeProfile', data: { userId: 'u1', nickname: 'alice' }, metadata })
      .then([]);
  });

  it('disables and enables idempotently', () => {
    const disabled: UserEvent = { type: 'UserDisabled', data: { userId: 'u1', disabledAt: at } };
    spec
      .given([registered])
      .when({ type: 'DisableUser', data: { userId: 'u1' }, metadata })
      .then([disabled]);
    spec
      .given([registered, disabled])
      .when({ type: 'DisableUser', data: { userId: 'u1' }, metadata })
      .then([]);
    spec
      .given([registered, disabled])
      .when({ type: 'EnableUser', data: { userId: 'u1' }, metadata })
      .then([{ type: 'UserEnabled', data: { userId: 'u1', enabledAt: at } }]);
  });

  it('links one identity per provider: the same again is a no-op, another is a conflict', () => {
    const linked: UserEvent = {
      type: 'IdentityLinked',
      data: { userId: 'u1', provider: 'wechat', subject: 'union-1', linkedAt: at },
    };
    const link = (subject: string) => ({
      type: 'LinkIdentity' as const,
      data: { userId: 'u1', provider: 'wechat' as const, subject },
      metadata,
    });
    spec.given([registered]).when(link('union-1')).then([linked]);
    spec.given([registered, linked]).when(link('union-1')).then([]);
    spec.given([registered, linked]).when(link('union-2')).thenThrows(Conflict);
  });
});

describe('unique value decider', () => {
  const spec = deciderSpec(uniqueDecider);
  const reserved = (userId: string): UniqueEvent => ({
    type: 'ValueReserved',
    data: { kind: 'username', value: 'alice', userId, reservedAt: at },
  });
  const reserve = (userId: string, takeOverFrom?: string) => ({
    type: 'ReserveValue' as const,
    data: { kind: 'username' as const, value: 'alice', userId, ...(takeOverFrom ? { takeOverFrom } : {}) },
    metadata,
  });

  it('gives a free value to the first claimant and refuses the next', () => {
    spec
      .given([])
      .when(reserve('u1'))
      .then([reserved('u1')]);
    spec
      .given([reserved('u1')])
      .when(reserve('u1'))
      .then([]);
    spec
      .given([reserved('u1')])
      .when(reserve('u2'))
      .thenThrows(ValueTaken, 'This username is taken.');
  });

  it('lets a value be claimed again after its release, and taken over only from the named owner', () => {
    const released: UniqueEvent = {
      type: 'ValueReleased',
      data: { kind: 'username', value: 'alice', userId: 'u1', releasedAt: at },
    };
    spec
      .given([reserved('u1'), released])
      .when(reserve('u2'))
      .then([reserved('u2')]);
    spec
      .given([reserved('u1')])
      .when(reserve('u2', 'u1'))
      .then([released, reserved('u2')]);
    spec
      .given([reserved('u1')])
      .when(reserve('u2', 'u3'))
      .thenThrows(ValueTaken);
  });

  it('names the stream by a digest of the normalised value', () => {
    expect(uniqueStream('username', 'Alice')).toBe(uniqueStream('username', ' alice '));
    expect(uniqueStream('email', 'A@X.io')).toBe(uniqueStream('email', 'a@x.io'));
    expect(uniqueStream('wechat', 'Abc')).not.toBe(uniqueStream('wechat', 'abc'));
    expect(uniqueStream('username', 'alice')).toMatch(/^unique-username-[0-9a-f]{40}$/);
  });
});

describe('session decider', () => {
  const spec = deciderSpec(sessionDecider);
  const later = new Date('2026-06-01T00:00:00.000Z').toISOString();
  const started: SessionEvent = {
    type: 'SessionStarted',
    data: {
      sessionId: 's1',
      userId: 'u1',
      method: 'password',
      userAgent: null,
      ip: null,
      refreshTokenDigest: 'd1',
      startedAt: at,
      expiresAt: later,
    },
  };
  const refresh = (presented: string, next: string, when = metadata) => ({
    type: 'RefreshSession' as const,
    data: {
      sessionId: 's1',
      presentedDigest: presented,
      refreshTokenDigest: next,
      ip: null,
      expiresAt: later,
    },
    metadata: when,
  });
  const refreshed: SessionEvent = {
    type: 'SessionRefreshed',
    data: {
      sessionId: 's1',
      userId: 'u1',
      refreshTokenDigest: 'd2',
      ip: null,
      refreshedAt: at,
      expiresAt: later,
    },
  };

  it('rotates the live refresh token', () => {
    spec.given([started]).when(refresh('d1', 'd2')).then([refreshed]);
  });

  it('revokes the whole session when a spent token comes back', () => {
    spec
      .given([started, refreshed])
      .when(refresh('d1', 'd3'))
      .then([
        {
          type: 'SessionRevoked',
          data: { sessionId: 's1', userId: 'u1', reason: 'refresh_reuse', revokedAt: at },
        },
      ]);
  });

  it('refuses unknown tokens, unknown sessions, ended sessions and expired tokens', () => {
    spec.given([started]).when(refresh('nope', 'd2')).thenThrows(RefreshRefused);
    spec.given([]).when(refresh('d1', 'd2')).thenThrows(RefreshRefused);
    const revoked: SessionEvent = {
      type: 'SessionRevoked',
      data: { sessionId: 's1', userId: 'u1', reason: 'logout', revokedAt: at },
    };
    spec.given([started, revoked]).when(refresh('d1', 'd2')).thenThrows(RefreshRefused, /ended/);
    spec
      .given([started])
      .when(refresh('d1', 'd2', { now: new Date('2026-07-01T00:00:00.000Z') }))
      .thenThrows(RefreshRefused, /expired/);
  });

  it('revokes once', () => {
    const revoke = {
      type: 'RevokeSession' as const,
      data: { sessionId: 's1', reason: 'logout' as const },
      metadata,
    };
    const revoked: SessionEvent = {
      type: 'SessionRevoked',
      data: { sessionId: 's1', userId: 'u1', reason: 'logout', revokedAt: at },
    };
    spec.given([started]).when(revoke).then([revoked]);
    spec.given([started, revoked]).when(revoke).then([]);
    spec.given([]).when(revoke).then([]);
  });
});
