import type { Command, Decider } from '../handler';
import type { IdentityProvider, SignInMethod, UniqueEvent, UniqueKind, UserEvent } from '../../events/users';
import type { PermissionLevel } from '../../platform/tokens';
import { BadRequest, ConcurrencyConflict, Conflict, NotFound } from '../../platform/errors';

export class UserNotFound extends NotFound {}

/** A username, email or external identity already belongs to someone else. */
export class ValueTaken extends Conflict {
  override readonly type = '/problems/already-taken';
  constructor(readonly kind: UniqueKind) {
    super(
      kind === 'username'
        ? 'This username is taken.'
        : kind === 'email'
          ? 'This email belongs to another account.'
          : `This ${kind} identity is linked to another account.`,
    );
    this.extensions.field = kind;
  }
}

export interface UserState {
  registered: boolean;
  userId: string;
  username: string;
  email: string | null;
  nickname: string;
  passwordHash: string | null;
  permission: PermissionLevel;
  disabled: boolean;
  avatarId: string | null;
  identities: Map<IdentityProvider, string>;
  /**
   * Sessions started before `at` have ended (a password change, the user disabled), whether or
   * not each was revoked, but `kept`.
   */
  sessionsEnded: { at: string; reason: 'password_change' | 'user_disabled'; kept: string | null } | null;
}

export const initialUser = (): UserState => ({
  registered: false,
  userId: '',
  username: '',
  email: null,
  nickname: '',
  passwordHash: null,
  permission: 0,
  disabled: false,
  avatarId: null,
  identities: new Map(),
  sessionsEnded: null,
});

export type UserCommand =
  | Command<
      'RegisterUser',
      {
        userId: string;
        username: string;
        email: string | null;
        nickname: string;
        passwordHash: string | null;
        permission: PermissionLevel;
        method: SignInMethod;
        signupCredits?: number;
      }
    >
  | Command<
      'ChangeProfile',
      {
        userId: string;
        nickname?: string;
        email?: string | null;
        /**
         * The email the change replaces, as read: the caller releases it afterwards, so a change
         * since (another request's) means that one is not the email replaced.
         */
        replacesEmail?: string | null;
      }
    >
  | Command<
      'ChangePassword',
      {
        userId: string;
        passwordHash: string;
        by: 'self' | 'admin';
        keptSessionId: string | null;
        /**
         * The hash the old password was checked against (a change of one's own): a change since
         * (another request with the same old password, the check done before either was stored)
         * means the old password is no longer the one given.
         */
        replacesHash?: string | null;
      }
    >
  | Command<'ChangeAvatar', { userId: string; avatarId: string }>
  | Command<'ChangePermission', { userId: string; permission: PermissionLevel }>
  | Command<'DisableUser', { userId: string }>
  | Command<'EnableUser', { userId: string }>
  | Command<'LinkIdentity', { userId: string; provider: IdentityProvider; subject: string }>;

/**
 * A user's rules. Uniqueness is not decided here (it spans users): callers reserve the value's
 * stream first, then record it on the user. Registering again is idempotent, so a sign-in that
 * completes a half-finished registration cannot register twice.
 */
export function decideUser(cmd: UserCommand, s: UserState): UserEvent[] {
  const now = cmd.metadata.now.toISOString();
  if (cmd.type === 'RegisterUser') {
    if (s.registered) return [];
    return [{ type: 'UserRegistered', data: { ...cmd.data, registeredAt: now } }];
  }
  if (!s.registered) throw new UserNotFound('No such user.');
  const { userId } = cmd.data;
  switch (cmd.type) {
    case 'ChangeProfile': {
      if (cmd.data.replacesEmail !== undefined && cmd.data.replacesEmail !== s.email) {
        throw new ConcurrencyConflict(
          'Your email changed while this change was made; read your profile and try again.',
        );
      }
      const data: Extract<UserEvent, { type: 'ProfileChanged' }>['data'] = { userId, changedAt: now };
      if (cmd.data.nickname !== undefined && cmd.data.nickname !== s.nickname)
        data.nickname = cmd.data.nickname;
      if (cmd.data.email !== undefined && cmd.data.email !== s.email) data.email = cmd.data.email;
      if (data.nickname === undefined && data.email === undefined) return [];
      return [{ type: 'ProfileChanged', data }];
    }
    case 'ChangePassword': {
      const { replacesHash, ...data } = cmd.data;
      if (replacesHash !== undefined && replacesHash !== s.passwordHash)
        throw new BadRequest('The old password is wrong.');
      return [{ type: 'PasswordChanged', data: { ...data, changedAt: now } }];
    }
    case 'ChangeAvatar':
      if (s.avatarId === cmd.data.avatarId) return [];
      return [{ type: 'AvatarChanged', data: { ...cmd.data, changedAt: now } }];
    case 'ChangePermission':
      if (s.permission === cmd.data.permission) return [];
      return [{ type: 'PermissionChanged', data: { ...cmd.data, changedAt: now } }];
    case 'DisableUser':
      if (s.disabled) return [];
      return [{ type: 'UserDisabled', data: { userId, disabledAt: now } }];
    case 'EnableUser':
      if (!s.disabled) return [];
      return [{ type: 'UserEnabled', data: { userId, enabledAt: now } }];
    case 'LinkIdentity': {
      const linked = s.identities.get(cmd.data.provider);
      if (linked === cmd.data.subject) return [];
      if (linked !== undefined)
        throw new Conflict(`This account is already linked to another ${cmd.data.provider} identity.`);
      return [{ type: 'IdentityLinked', data: { ...cmd.data, linkedAt: now } }];
    }
  }
  const _exhaustive: never = cmd;
  return _exhaustive;
}

export function evolveUser(s: UserState, e: UserEvent): UserState {
  switch (e.type) {
    case 'UserRegistered':
      s.registered = true;
      s.userId = e.data.userId;
      s.username = e.data.username;
      s.email = e.data.email;
      s.nickname = e.data.nickname;
      s.passwordHash = e.data.passwordHash;
      s.permission = e.data.permission;
      return s;
    case 'ProfileChanged':
      if (e.data.nickname !== undefined) s.nickname = e.data.nickname;
      if (e.data.email !== undefined) s.email = e.data.email;
      return s;
    case 'PasswordChanged':
      s.passwordHash = e.data.passwordHash;
      if (e.data.keptSessionId !== undefined) {
        s.sessionsEnded = { at: e.data.changedAt, reason: 'password_change', kept: e.data.keptSessionId };
      }
      return s;
    case 'AvatarChanged':
      s.avatarId = e.data.avatarId;
      return s;
    case 'PermissionChanged':
      s.permission = e.data.permission;
      return s;
    case 'UserDisabled':
      s.disabled = true;
      s.sessionsEnded = { at: e.data.disabledAt, reason: 'user_disabled', kept: null };
      return s;
    case 'UserEnabled':
      s.disabled = false;
      return s;
    case 'IdentityLinked':
      s.identities.set(e.data.provider, e.data.subject);
      return s;
  }
}

export const userDecider: Decider<UserState, UserCommand, UserEvent> = {
  name: 'user',
  initialState: initialUser,
  evolve: evolveUser,
  decide: decideUser,
};

/** Who holds a unique value, and since when. */
export interface UniqueState {
  owner: string | null;
  reservedAt: string | null;
}

export type UniqueCommand =
  | Command<
      'ReserveValue',
      {
        kind: UniqueKind;
        value: string;
        userId: string;
        /**
         * Take the value over from this owner: set only when that owner's registration provably never
         * happened (its user stream does not exist long after the reservation).
         */
        takeOverFrom?: string;
      }
    >
  | Command<'ReleaseValue', { kind: UniqueKind; value: string; userId: string }>;

/**
 * One value's reservation. Concurrent claims race on the stream's expected revision, so exactly one
 * wins; a release lets the value be claimed again.
 */
export function decideUnique(cmd: UniqueCommand, s: UniqueState): UniqueEvent[] {
  const now = cmd.metadata.now.toISOString();
  const { kind, value, userId } = cmd.data;
  switch (cmd.type) {
    case 'ReserveValue': {
      if (s.owner === userId) return [];
      if (s.owner === null)
        return [{ type: 'ValueReserved', data: { kind, value, userId, reservedAt: now } }];
      if (cmd.data.takeOverFrom !== s.owner) throw new ValueTaken(kind);
      return [
        { type: 'ValueReleased', data: { kind, value, userId: s.owner, releasedAt: now } },
        { type: 'ValueReserved', data: { kind, value, userId, reservedAt: now } },
      ];
    }
    case 'ReleaseValue':
      if (s.owner !== userId) return [];
      return [{ type: 'ValueReleased', data: { kind, value, userId, releasedAt: now } }];
  }
  const _exhaustive: never = cmd;
  return _exhaustive;
}

export function evolveUnique(s: UniqueState, e: UniqueEvent): UniqueState {
  switch (e.type) {
    case 'ValueReserved':
      return { owner: e.data.userId, reservedAt: e.data.reservedAt };
    case 'ValueReleased':
      return { owner: null, reservedAt: null };
  }
}

export const uniqueDecider: Decider<UniqueState, UniqueCommand, UniqueEvent> = {
  name: 'unique',
  initialState: () => ({ owner: null, reservedAt: null }),
  evolve: evolveUnique,
  decide: decideUnique,
};
