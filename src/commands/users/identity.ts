import { createHash, randomBytes } from 'node:crypto';
import type { EventStore } from '../../eventstore/port';
import { ledgerStream } from '../../events/ledger';
import { sessionStream, type RevokeReason } from '../../events/sessions';
import {
  userStream,
  uniqueStream,
  type IdentityProvider,
  type SignInMethod,
  type UniqueKind,
  type UserEvent,
} from '../../events/users';
import type { Clock, IdGenerator } from '../../platform/clock';
import type { Config } from '../../platform/config';
import { BadRequest, NotFound, Unauthorized } from '../../platform/errors';
import type { Logger } from '../../platform/logger';
import { hashPassword, verifyPassword } from '../../platform/passwords';
import { signAccessToken, type PermissionLevel } from '../../platform/tokens';
import type { Projector, ProjectionEngine } from '../../projections/types';
import type { SessionGuard } from '../../queries/sessionGuard';
import type { CommandHandler, CommandMetadata, HandleResult } from '../handler';
import { ledgerDecider } from '../ledger/decider';
import { sessionDecider, RefreshRefused } from '../sessions/decider';
import { uniqueDecider, userDecider, ValueTaken, type UserState } from './decider';

/** What the identity flows need, wired by argument. */
export interface IdentityDeps {
  commands: CommandHandler;
  store: EventStore;
  clock: Clock;
  ids: IdGenerator;
  config: Pick<
    Config,
    | 'JWT_SECRET'
    | 'JWT_ISSUER'
    | 'ACCESS_TOKEN_TTL_SECONDS'
    | 'REFRESH_TOKEN_TTL_SECONDS'
    | 'SIGNUP_CREDITS'
    | 'CONSISTENCY_TIMEOUT_MS'
  >;
  guard?: SessionGuard | undefined;
  /** To list a user's sessions after the sessions read model has caught up. */
  projections?: Pick<ProjectionEngine, 'waitFor'> | undefined;
  /** The user's active session ids, from the sessions read model. */
  activeSessions?: ((userId: string) => Promise<string[]>) | undefined;
  logger?: Logger | undefined;
}

/** Who asked, for every event's metadata. */
export interface RequestContext {
  requestId?: string | null;
  actorId?: string | null;
  userAgent?: string | null;
  ip?: string | null;
  /** Called before a sign-in with an external identity creates a user: the registration budget. */
  beforeNewUser?: (() => Promise<void>) | undefined;
}

export interface TokenPair {
  access_token: string;
  token_type: 'bearer';
  expires_in: number;
  refresh_token: string;
  /** Not part of the OAuth2 response body; the routes use them. */
  userId: string;
  sessionId: string;
  position: bigint;
}

/**
 * A reservation whose user never came to exist is released after this long: the process that made
 * it died before registering. A registration takes milliseconds, so this is generous.
 */
const STALE_RESERVATION_MS = 120_000;

const meta = (deps: IdentityDeps, ctx: RequestContext, extra: Partial<CommandMetadata> = {}) => ({
  now: deps.clock.now(),
  requestId: ctx.requestId ?? null,
  actorId: ctx.actorId ?? null,
  ...extra,
});

export const digestOf = (token: string) => createHash('sha256').update(token).digest('hex');

/** Reads a user; `registered: false` when there is none. */
export async function readUser(deps: Pick<IdentityDeps, 'commands'>, userId: string): Promise<UserState> {
  return (await deps.commands.read(userDecider, userStream(userId))).state;
}

/** Who holds a unique value now, from its reservation stream (consistent at once, no projection lag). */
export async function ownerOf(
  deps: Pick<IdentityDeps, 'commands'>,
  kind: UniqueKind,
  value: string,
): Promise<string | null> {
  return (await deps.commands.read(uniqueDecider, uniqueStream(kind, value))).state.owner;
}

/**
 * Claims a unique value for `userId`. Exactly one of any number of concurrent claimants wins (the
 * stream's expected revision decides); the others get ValueTaken (409). A claim left by a process
 * that died before registering its user is taken over once it is stale.
 */
export async function reserve(
  deps: IdentityDeps,
  kind: UniqueKind,
  value: string,
  userId: string,
  ctx: RequestContext,
): Promise<void> {
  const stream = uniqueStream(kind, value);
  const command = (takeOverFrom?: string) => ({
    type: 'ReserveValue' as const,
    data: { kind, value, userId, ...(takeOverFrom ? { takeOverFrom } : {}) },
    metadata: meta(deps, ctx),
  });
  try {
    await deps.commands.handle(uniqueDecider, stream, command());
  } catch (err) {
    if (!(err instanceof ValueTaken)) throw err;
    const { owner, reservedAt } = (await deps.commands.read(uniqueDecider, stream)).state;
    const stale =
      owner !== null &&
      reservedAt !== null &&
      deps.clock.now().getTime() - Date.parse(reservedAt) > STALE_RESERVATION_MS &&
      !(await readUser(deps, owner)).registered;
    if (!stale || owner === null) throw err;
    deps.logger?.warn({ kind, stream }, 'taking over a reservation whose user was never registered');
    await deps.commands.handle(uniqueDecider, stream, command(owner));
  }
}

async function release(
  deps: IdentityDeps,
  kind: UniqueKind,
  value: string,
  userId: string,
  ctx: RequestContext,
) {
  await deps.commands.handle(uniqueDecider, uniqueStream(kind, value), {
    type: 'ReleaseValue',
    data: { kind, value, userId },
    metadata: meta(deps, ctx),
  });
}

export interface RegisterInput {
  username: string;
  password: string | null;
  email: string | null;
  nickname?: string;
  permission?: PermissionLevel;
  method: SignInMethod;
  /** Register under this id (completing a provider sign-in whose identity is already reserved for it). */
  userId?: string;
}

/**
 * Registers a user: reserve the username, then the email, then record the user; the sign-up grant
 * follows as a process step (`signupGrantReactor` completes it if this process dies first). A
 * reservation made here is released again if a later step says no.
 */
export async function registerUser(
  deps: IdentityDeps,
  input: RegisterInput,
  ctx: RequestContext,
): Promise<{ user: UserState; registeredAt: string | null; position: bigint }> {
  const userId = input.userId ?? deps.ids.next();
  const passwordHash = input.password === null ? null : await hashPassword(input.password);
  await reserve(deps, 'username', input.username, userId, ctx);
  try {
    if (input.email) await reserve(deps, 'email', input.email, userId, ctx);
  } catch (err) {
    await release(deps, 'username', input.username, userId, ctx);
    throw err;
  }
  const result = await deps.commands.handle(userDecider, userStream(userId), {
    type: 'RegisterUser',
    data: {
      userId,
      username: input.username,
      email: input.email,
      nickname: input.nickname ?? input.username,
      passwordHash,
      permission: input.permission ?? 0,
      method: input.method,
      signupCredits: deps.config.SIGNUP_CREDITS,
    },
    metadata: meta(deps, { ...ctx, actorId: ctx.actorId ?? userId }),
  });
  const registered = result.events.find((e) => e.type === 'UserRegistered');
  if (!registered) {
    // Registered already, by a sign-in of the same identity that got there first: the values this
    // one reserved for the user are not the user's, and go back.
    const user = result.state;
    if (user.username !== input.username) await release(deps, 'username', input.username, userId, ctx);
    if (input.email && user.email !== input.email) await release(deps, 'email', input.email, userId, ctx);
  }
  const position = registered ? await grantSignupCredits(deps.commands, registered) : result.position;
  return {
    user: result.state,
    // As the user's profile shows it (the event's time, not a clock read later); null when another
    // registration of the same user got there first.
    registeredAt: registered ? (registered.data as { registeredAt: string }).registeredAt : null,
    position: position > result.position ? position : result.position,
  };
}

/** The sign-up grant of a recorded registration. Idempotent: keyed by the user. */
async function grantSignupCredits(
  commands: CommandHandler,
  registered: { id: string; data: unknown; metadata: { requestId?: string | null } },
): Promise<bigint> {
  const data = registered.data as Extract<UserEvent, { type: 'UserRegistered' }>['data'];
  const amount = data.signupCredits ?? 0;
  if (amount <= 0) return 0n;
  const result = await commands.handle(ledgerDecider, ledgerStream(data.userId), {
    type: 'GrantCredits',
    data: { userId: data.userId, grantId: `signup-${data.userId}`, amount, reason: 'signup' },
    metadata: {
      now: new Date(data.registeredAt),
      actorId: data.userId,
      requestId: registered.metadata.requestId ?? null,
      causationId: registered.id,
    },
  });
  return result.position;
}

/** Completes the sign-up grant of every registration whose grant did not land. */
export function signupGrantReactor(commands: CommandHandler): Projector {
  return {
    name: 'signup_grant_reactor',
    version: 1,
    eventTypes: ['UserRegistered'],
    tables: [],
    reactor: true,
    async apply(_db, events) {
      for (const e of events) await grantSignupCredits(commands, e);
    },
  };
}

/** What a sign-in was let in on: the user as read before its checks. */
export interface SignInBasis {
  passwordHash: string | null;
  sessionsEndedAt: string | null;
}

/** The basis of a sign-in, taken at its read: the state read is the cache's, which later commands change in place. */
export function signInBasis(user: UserState): SignInBasis {
  return { passwordHash: user.passwordHash, sessionsEndedAt: user.sessionsEnded?.at ?? null };
}

/**
 * Starts a session for a user signed in. A change that ends the user's sessions (a new password, the
 * user disabled) and lands while the sign-in was being checked finds no session to end yet: so once
 * the session is recorded, the user is read again, and a session whose basis has changed since is
 * ended at once and refused. A change landing after that read finds the session and ends it.
 */
export async function startSession(
  deps: IdentityDeps,
  user: UserState,
  method: SignInMethod,
  ctx: RequestContext,
  basis: SignInBasis = signInBasis(user),
): Promise<TokenPair> {
  if (user.disabled) throw new Unauthorized('This account is disabled.');
  const sessionId = deps.ids.next();
  const refreshToken = newRefreshToken(sessionId);
  const now = deps.clock.now();
  const result = await deps.commands.handle(
    sessionDecider,
    sessionStream(sessionId),
    {
      type: 'StartSession',
      data: {
        sessionId,
        userId: user.userId,
        method,
        userAgent: ctx.userAgent?.slice(0, 500) ?? null,
        ip: ctx.ip ?? null,
        refreshTokenDigest: digestOf(refreshToken),
        expiresAt: new Date(now.getTime() + deps.config.REFRESH_TOKEN_TTL_SECONDS * 1000).toISOString(),
      },
      metadata: meta(deps, { ...ctx, actorId: user.userId }),
    },
    { newStream: true },
  );
  const current = await readUser(deps, user.userId);
  const ended = (current.sessionsEnded?.at ?? null) !== basis.sessionsEndedAt;
  if (current.disabled || ended || (method === 'password' && current.passwordHash !== basis.passwordHash)) {
    const reason = current.disabled ? 'user_disabled' : (current.sessionsEnded?.reason ?? 'password_change');
    await revokeSession(deps, sessionId, reason, ctx);
    throw new Unauthorized(
      current.disabled
        ? 'This account is disabled.'
        : reason === 'password_change'
          ? 'The password of this account has changed; sign in again.'
          : 'The sessions of this account were ended meanwhile; sign in again.',
    );
  }
  return tokenPair(deps, current, sessionId, refreshToken, result.position);
}

/** Refresh tokens name their session, so a refresh finds its stream without an index. */
function newRefreshToken(sessionId: string): string {
  return `${sessionId}.${randomBytes(32).toString('base64url')}`;
}

const REFRESH_TOKEN = /^([0-9a-f-]{36})\.[A-Za-z0-9_-]{43}$/;

function tokenPair(
  deps: IdentityDeps,
  user: UserState,
  sessionId: string,
  refreshToken: string,
  position: bigint,
): TokenPair {
  const secret = deps.config.JWT_SECRET;
  if (!secret) throw new Error('JWT_SECRET is not configured');
  const ttl = deps.config.ACCESS_TOKEN_TTL_SECONDS;
  return {
    access_token: signAccessToken(
      { userId: user.userId, sessionId, permission: user.permission },
      { secret, issuer: deps.config.JWT_ISSUER },
      { expiresInSeconds: ttl, now: deps.clock.now() },
    ),
    token_type: 'bearer',
    expires_in: ttl,
    refresh_token: refreshToken,
    userId: user.userId,
    sessionId,
    position,
  };
}

/** The OAuth2 password grant. One answer for every failure, so it tells nobody which usernames exist. */
export async function passwordSignIn(
  deps: IdentityDeps,
  input: { username: string; password: string },
  ctx: RequestContext,
): Promise<TokenPair> {
  const owner = await ownerOf(deps, 'username', input.username);
  const user = owner ? await readUser(deps, owner) : undefined;
  const basis = user && signInBasis(user);
  const ok = await verifyPassword(user?.registered ? user.passwordHash : null, input.password);
  if (!ok || !user) throw new Unauthorized('Wrong username or password.');
  return startSession(deps, user, 'password', ctx, basis);
}

/** Rotates a refresh token. A spent one revokes its session; the answer is 401 either way. */
export async function refreshSession(
  deps: IdentityDeps,
  refreshToken: string,
  ctx: RequestContext,
): Promise<TokenPair> {
  const sessionId = REFRESH_TOKEN.exec(refreshToken)?.[1];
  if (!sessionId) throw new RefreshRefused('The refresh token is not valid.');
  const next = newRefreshToken(sessionId);
  const now = deps.clock.now();
  const result = await deps.commands.handle(sessionDecider, sessionStream(sessionId), {
    type: 'RefreshSession',
    data: {
      sessionId,
      presentedDigest: digestOf(refreshToken),
      refreshTokenDigest: digestOf(next),
      ip: ctx.ip ?? null,
      expiresAt: new Date(now.getTime() + deps.config.REFRESH_TOKEN_TTL_SECONDS * 1000).toISOString(),
    },
    metadata: meta(deps, ctx),
  });
  if (result.events.some((e) => e.type === 'SessionRevoked')) {
    await deps.guard?.markSessionRevoked(sessionId);
    deps.logger?.warn({ sessionId }, 'refresh token reused: session revoked');
    throw new RefreshRefused(
      'This refresh token was already used; the session has been ended. Sign in again.',
    );
  }
  const user = await readUser(deps, result.state.userId);
  if (!user.registered || user.disabled) {
    await revokeSession(deps, sessionId, 'user_disabled', ctx);
    throw new RefreshRefused('This account is disabled.');
  }
  // Ended with the others when the password changed or the user was disabled, though the sessions
  // read model had not shown it then to be revoked: it ends now.
  const ended = user.sessionsEnded;
  const startedAt = result.state.startedAt;
  if (ended && ended.kept !== sessionId && startedAt && Date.parse(startedAt) < Date.parse(ended.at)) {
    await revokeSession(deps, sessionId, ended.reason, ctx);
    throw new RefreshRefused(
      ended.reason === 'password_change'
        ? 'The password of this account has changed; sign in again.'
        : 'The session of this refresh token has ended; sign in again.',
    );
  }
  return tokenPair(deps, user, sessionId, next, result.position);
}

/** Ends a session; its access tokens stop working within a second on every instance. */
export async function revokeSession(
  deps: IdentityDeps,
  sessionId: string,
  reason: RevokeReason,
  ctx: RequestContext,
  ownerId?: string,
): Promise<HandleResult<unknown>> {
  if (ownerId !== undefined) {
    const { state } = await deps.commands.read(sessionDecider, sessionStream(sessionId));
    // Another user's session is indistinguishable from none.
    if (!state.started || state.userId !== ownerId) throw new NotFound('No such session.');
  }
  const result = await deps.commands.handle(sessionDecider, sessionStream(sessionId), {
    type: 'RevokeSession',
    data: { sessionId, reason },
    metadata: meta(deps, ctx),
  });
  await deps.guard?.markSessionRevoked(sessionId);
  return result;
}

/**
 * Revokes every active session of a user but `keep`. `after` is the position of the event that
 * called for it: every session started before it is in the sessions read model once the model has
 * passed it (later sessions were started with the new password, or after re-enabling, and stay).
 */
async function revokeAllSessions(
  deps: IdentityDeps,
  userId: string,
  reason: RevokeReason,
  ctx: RequestContext,
  after: bigint,
  keep?: string,
): Promise<bigint> {
  if (!deps.activeSessions) return 0n;
  const caughtUp = await deps.projections?.waitFor(['sessions'], after, deps.config.CONSISTENCY_TIMEOUT_MS);
  if (caughtUp === false) {
    // Sessions it does not show are not revoked here: each ends at its next refresh (the user's
    // stream says when sessions ended), and its access tokens when they expire.
    deps.logger?.warn({ userId }, 'sessions read model behind: sessions it lacks end at their refresh');
  }
  let position = 0n;
  for (const id of await deps.activeSessions(userId)) {
    if (id === keep) continue;
    const r = await revokeSession(deps, id, reason, ctx);
    if (r.position > position) position = r.position;
  }
  return position;
}

/** Changes one's own password (knowing the old one); every other session of the user ends. */
export async function changeOwnPassword(
  deps: IdentityDeps,
  input: { userId: string; sessionId: string; oldPassword: string; newPassword: string },
  ctx: RequestContext,
): Promise<bigint> {
  const user = await readUser(deps, input.userId);
  if (!user.registered) throw new NotFound('No such user.');
  // Taken now: the state read is the cached one, which changes in place as others change it.
  const checked = user.passwordHash;
  if (!(await verifyPassword(checked, input.oldPassword))) throw new BadRequest('The old password is wrong.');
  const result = await deps.commands.handle(userDecider, userStream(input.userId), {
    type: 'ChangePassword',
    data: {
      userId: input.userId,
      passwordHash: await hashPassword(input.newPassword),
      by: 'self',
      keptSessionId: input.sessionId,
      replacesHash: checked,
    },
    metadata: meta(deps, ctx),
  });
  const revoked = await revokeAllSessions(
    deps,
    input.userId,
    'password_change',
    ctx,
    result.position,
    input.sessionId,
  );
  return revoked > result.position ? revoked : result.position;
}

/** An admin sets a user's password; all of the user's sessions end. */
export async function resetPassword(
  deps: IdentityDeps,
  input: { userId: string; newPassword: string },
  ctx: RequestContext,
): Promise<bigint> {
  const result = await deps.commands.handle(userDecider, userStream(input.userId), {
    type: 'ChangePassword',
    data: {
      userId: input.userId,
      passwordHash: await hashPassword(input.newPassword),
      by: 'admin',
      keptSessionId: null,
    },
    metadata: meta(deps, ctx),
  });
  const revoked = await revokeAllSessions(deps, input.userId, 'admin', ctx, result.position);
  return revoked > result.position ? revoked : result.position;
}

/** Disables (ending every session at once) or enables a user. */
export async function setDisabled(
  deps: IdentityDeps,
  userId: string,
  disabled: boolean,
  ctx: RequestContext,
): Promise<bigint> {
  const result = await deps.commands.handle(userDecider, userStream(userId), {
    type: disabled ? 'DisableUser' : 'EnableUser',
    data: { userId },
    metadata: meta(deps, ctx),
  });
  await deps.guard?.markUserDisabled(userId, disabled);
  if (!disabled) return result.position;
  const revoked = await revokeAllSessions(deps, userId, 'user_disabled', ctx, result.position);
  return revoked > result.position ? revoked : result.position;
}

/** Changes a unique-valued profile field (email): claim the new value first, release the old after. */
export async function changeProfile(
  deps: IdentityDeps,
  input: { userId: string; nickname?: string | undefined; email?: string | null | undefined },
  ctx: RequestContext,
): Promise<{ user: UserState; position: bigint }> {
  const before = await readUser(deps, input.userId);
  if (!before.registered) throw new NotFound('No such user.');
  const oldEmail = before.email;
  const emailChanges =
    input.email !== undefined && (input.email?.toLowerCase() ?? null) !== (oldEmail?.toLowerCase() ?? null);
  if (emailChanges && input.email) await reserve(deps, 'email', input.email, input.userId, ctx);
  let result;
  try {
    result = await deps.commands.handle(userDecider, userStream(input.userId), {
      type: 'ChangeProfile',
      data: {
        userId: input.userId,
        ...(input.nickname !== undefined ? { nickname: input.nickname } : {}),
        ...(input.email !== undefined ? { email: input.email } : {}),
        // The email released below is the one the change replaced, not another's meanwhile.
        ...(emailChanges ? { replacesEmail: oldEmail } : {}),
      },
      metadata: meta(deps, ctx),
    });
  } catch (err) {
    if (emailChanges && input.email) await release(deps, 'email', input.email, input.userId, ctx);
    throw err;
  }
  if (emailChanges && oldEmail) await release(deps, 'email', oldEmail, input.userId, ctx);
  return { user: result.state, position: result.position };
}

export interface ProviderIdentity {
  provider: IdentityProvider;
  subject: string;
  /** A hint for the generated username (`wx`, `apple`, `sms`). */
  usernamePrefix: string;
  nickname?: string;
}

/**
 * Signs in with an external identity; the first sign-in registers the user. The identity is reserved
 * before the user exists, so two first sign-ins at once make one user; if a process died between
 * reserving and registering, the next sign-in completes the registration under the reserved id.
 */
export async function providerSignIn(
  deps: IdentityDeps,
  identity: ProviderIdentity,
  method: SignInMethod,
  ctx: RequestContext,
): Promise<TokenPair & { registered: boolean }> {
  let owner = await ownerOf(deps, identity.provider, identity.subject);
  let registered = false;
  if (owner === null) {
    await ctx.beforeNewUser?.();
    const userId = deps.ids.next();
    try {
      await reserve(deps, identity.provider, identity.subject, userId, ctx);
      owner = userId;
    } catch (err) {
      if (!(err instanceof ValueTaken)) throw err;
      owner = await ownerOf(deps, identity.provider, identity.subject);
      if (owner === null) throw err;
    }
  }
  let user = await readUser(deps, owner);
  if (!user.registered) {
    for (let attempt = 0; ; attempt++) {
      try {
        const done = await registerUser(
          deps,
          {
            userId: owner,
            username: `${identity.usernamePrefix}_${randomBytes(6).toString('hex')}`,
            password: null,
            email: null,
            ...(identity.nickname ? { nickname: identity.nickname.slice(0, 64) } : {}),
            method,
          },
          ctx,
        );
        user = done.user;
        // Registered by this sign-in, or by another of the same identity at the same time.
        registered = done.registeredAt !== null;
        break;
      } catch (err) {
        // A random username colliding is rare; another attempt picks another.
        if (!(err instanceof ValueTaken) || attempt >= 3) throw err;
      }
    }
  }
  const linked = await deps.commands.handle(userDecider, userStream(owner), {
    type: 'LinkIdentity',
    data: { userId: owner, provider: identity.provider, subject: identity.subject },
    metadata: meta(deps, { ...ctx, actorId: owner }),
  });
  return { ...(await startSession(deps, linked.state, method, ctx)), registered };
}

/**
 * The first admin, from ADMIN_USERNAME/ADMIN_PASSWORD or `npm run admin -- create`: created when
 * missing; an existing user of that name is made an admin (its password is left alone). With
 * `provePassword` (the start-up path, configured from the environment), only if that user's password
 * is the configured one: otherwise whoever registered the name first would become admin.
 */
export async function ensureAdmin(
  deps: IdentityDeps,
  input: { username: string; password: string; provePassword?: boolean },
  ctx: RequestContext,
): Promise<{ userId: string; created: boolean; promoted: boolean; refused?: boolean }> {
  const owner = await ownerOf(deps, 'username', input.username);
  const existing = owner ? await readUser(deps, owner) : undefined;
  if (existing?.registered) {
    if (
      input.provePassword &&
      existing.permission !== 2 &&
      !(await verifyPassword(existing.passwordHash, input.password))
    ) {
      return { userId: existing.userId, created: false, promoted: false, refused: true };
    }
    const changed = await deps.commands.handle(userDecider, userStream(existing.userId), {
      type: 'ChangePermission',
      data: { userId: existing.userId, permission: 2 },
      metadata: meta(deps, ctx),
    });
    return { userId: existing.userId, created: false, promoted: changed.events.length > 0 };
  }
  const { user } = await registerUser(
    deps,
    { username: input.username, password: input.password, email: null, permission: 2, method: 'admin' },
    ctx,
  );
  return { userId: user.userId, created: true, promoted: false };
}
