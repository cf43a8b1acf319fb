import { z } from 'zod';
import { userDecider, type UserState } from '../commands/users/decider';
import {
  changeOwnPassword,
  changeProfile,
  readUser,
  registerUser,
  resetPassword,
  setDisabled,
} from '../commands/users/identity';
import { userStream } from '../events/users';
import { Conflict, ConsistencyTimeout, NotFound } from '../platform/errors';
import { findUser, listUsers, type UserView } from '../queries/users';
import { PageQuery } from '../queries/paging';
import { identityDeps, requestContext } from './identityDeps';
import { auth } from './middleware/auth';
import { clientIp, limit } from './middleware/rateLimit';
import { consistentRead, setEventPosition } from './middleware/consistency';
import { API_BASE, bearerSecurity, problemResponses } from './openapi';
import type { AppDeps, AppMiddleware, AuthedState, Resource } from './types';
import { readFile } from './middleware/multipart';
import { toAvatar } from '../platform/images';
import { loadAvatarBlob, saveAvatarBlob } from '../platform/avatarStore';

/** API.md: avatars up to 5 MB. */
const AVATAR_MAX_BYTES = 5 * 1024 * 1024;

export const Username = z
  .string()
  .regex(/^[A-Za-z0-9_]{3,32}$/, 'must be 3–32 letters, digits or underscores');
const Password = z.string().min(8, 'must be at least 8 characters').max(256);
const Email = z.string().trim().max(254).pipe(z.email());

const RegisterBody = z
  .strictObject({ username: Username, password: Password, email: Email.optional() })
  .meta({ id: 'Register' });
const ProfileBody = z
  .strictObject({
    nickname: z.string().trim().min(1).max(64).optional(),
    email: Email.nullable().optional(),
  })
  .refine((b) => b.nickname !== undefined || b.email !== undefined, 'give nickname or email')
  .meta({ id: 'ChangeProfile' });
const PasswordBody = z
  .strictObject({ old_password: z.string().min(1).max(256), new_password: Password })
  .meta({ id: 'ChangePassword' });
const AdminPatch = z
  .strictObject({
    permission: z.union([z.literal(0), z.literal(1), z.literal(2)]).optional(),
    disabled: z.boolean().optional(),
  })
  .refine((b) => b.permission !== undefined || b.disabled !== undefined, 'give permission or disabled')
  .meta({ id: 'AdminChangeUser' });
const AdminPassword = z.strictObject({ new_password: Password }).meta({ id: 'ResetPassword' });
const UserId = z.object({ id: z.string().min(1).max(100) });
const UserList = PageQuery.extend({ q: z.string().trim().max(64).optional() });

/** A user as the write side has it: answers commands without waiting for the read model. */
function viewOf(s: UserState, createdAt: string): Omit<UserView, 'disabled' | 'identities'> {
  return {
    id: s.userId,
    username: s.username,
    email: s.email,
    nickname: s.nickname,
    permission: s.permission,
    created_at: createdAt,
    avatar_url: s.avatarId ? `${API_BASE}/users/${s.userId}/avatar?v=${s.avatarId.slice(0, 12)}` : null,
  };
}

const publicView = ({ disabled: _d, identities: _i, ...v }: UserView) => v;

/**
 * A user by id from the read model. The caller knows the user exists (a valid token says so), so a
 * row not yet projected is waited for rather than answered 404.
 */
async function userRow(deps: AppDeps, id: string): Promise<UserView | undefined> {
  const db = deps.db.db;
  const found = await findUser(db, id, API_BASE);
  if (found) return found;
  const written = await deps.commands.read(userDecider, userStream(id));
  if (!written.state.registered) return undefined;
  await deps.projections.waitFor(['users'], written.position, deps.config.CONSISTENCY_TIMEOUT_MS);
  return findUser(db, id, API_BASE);
}

/** Users (API.md): sign-up, my profile and password; admins list, view, change and reset users. */
export const users: Resource = (router, { deps, openapi }) => {
  const identity = identityDeps(deps);
  const db = deps.db.db;

  openapi.registerPath({
    method: 'post',
    path: '/users',
    summary: 'Sign up',
    tags: ['users'],
    request: { body: { content: { 'application/json': { schema: RegisterBody } } } },
    responses: { 201: { description: 'The new user' }, ...problemResponses(400, 409, 429) },
  });
  router.post('/users', limit('register_ip', clientIp), async (ctx) => {
    const body = RegisterBody.parse(ctx.request.body);
    const { user, registeredAt, position } = await registerUser(
      identity,
      { username: body.username, password: body.password, email: body.email ?? null, method: 'password' },
      requestContext(ctx),
    );
    setEventPosition(ctx, position);
    ctx.status = 201;
    ctx.set('Location', `${API_BASE}/users/me`);
    ctx.body = viewOf(user, registeredAt ?? deps.clock.now().toISOString());
  });

  openapi.registerPath({
    method: 'get',
    path: '/users/me',
    summary: 'My profile',
    tags: ['users'],
    security: bearerSecurity,
    responses: { 200: { description: 'The user' }, ...problemResponses(401, 504) },
  });
  router.get('/users/me', auth(), consistentRead<AuthedState>(['users']), async (ctx) => {
    const found = await userRow(deps, ctx.state.user.id);
    if (!found) throw new NotFound('No such user.');
    ctx.body = publicView(found);
  });

  openapi.registerPath({
    method: 'patch',
    path: '/users/me',
    summary: 'Change my nickname or email',
    tags: ['users'],
    security: bearerSecurity,
    request: { body: { content: { 'application/json': { schema: ProfileBody } } } },
    responses: { 200: { description: 'The user' }, ...problemResponses(400, 401, 409) },
  });
  router.patch('/users/me', auth(), async (ctx) => {
    const body = ProfileBody.parse(ctx.request.body);
    const id = ctx.state.user.id;
    const { position } = await changeProfile(
      identity,
      { userId: id, nickname: body.nickname, email: body.email },
      requestContext(ctx),
    );
    setEventPosition(ctx, position);
    await deps.projections.waitFor(['users'], position, deps.config.CONSISTENCY_TIMEOUT_MS);
    const found = await findUser(db, id, API_BASE);
    if (!found) throw new NotFound('No such user.');
    ctx.body = publicView(found);
  });

  openapi.registerPath({
    method: 'put',
    path: '/users/me/password',
    summary: 'Change my password (ends my other sessions)',
    tags: ['users'],
    security: bearerSecurity,
    request: { body: { content: { 'application/json': { schema: PasswordBody } } } },
    responses: { 204: { description: 'Changed' }, ...problemResponses(400, 401) },
  });
  router.put('/users/me/password', auth(), async (ctx) => {
    const body = PasswordBody.parse(ctx.request.body);
    const position = await changeOwnPassword(
      identity,
      {
        userId: ctx.state.user.id,
        sessionId: ctx.state.user.sessionId,
        oldPassword: body.old_password,
        newPassword: body.new_password,
      },
      requestContext(ctx),
    );
    setEventPosition(ctx, position);
    ctx.status = 204;
  });

  openapi.registerPath({
    method: 'put',
    path: '/users/me/avatar',
    summary: 'Set my avatar (multipart `file`: jpeg, png, webp or gif up to 5 MB; stored as 128×128 JPEG)',
    tags: ['users'],
    security: bearerSecurity,
    request: {
      body: {
        content: {
          'multipart/form-data': {
            schema: z.object({ file: z.string().meta({ format: 'binary' }) }).meta({ id: 'AvatarUpload' }),
          },
        },
      },
    },
    responses: { 200: { description: 'The user' }, ...problemResponses(400, 401, 413, 415) },
  });
  router.put('/users/me/avatar', auth(), async (ctx) => {
    const file = await readFile(ctx, { field: 'file', maxBytes: AVATAR_MAX_BYTES });
    // Decoded and re-encoded before anything is stored: a bad image leaves the old avatar as it was.
    const jpeg = await toAvatar(file.data);
    const avatarId = await saveAvatarBlob(db, jpeg, deps.clock.now());
    const id = ctx.state.user.id;
    const r = await deps.commands.handle(userDecider, userStream(id), {
      type: 'ChangeAvatar',
      data: { userId: id, avatarId },
      metadata: { now: deps.clock.now(), actorId: id, requestId: ctx.state.requestId },
    });
    setEventPosition(ctx, r.position);
    ctx.body = viewOf(r.state, (await userRow(deps, id))?.created_at ?? deps.clock.now().toISOString());
  });

  const sendAvatar = async (ctx: Parameters<AppMiddleware<AuthedState>>[0], userId: string) => {
    const { state } = await deps.commands.read(userDecider, userStream(userId));
    // Taken now: the state read is the cached one, which a change of avatar meanwhile changes in
    // place, and the ETag must name the picture sent.
    const avatarId = state.registered ? state.avatarId : null;
    const jpeg = avatarId ? await loadAvatarBlob(db, avatarId) : undefined;
    if (!jpeg) throw new NotFound('No avatar.');
    ctx.type = 'image/jpeg';
    ctx.set('Cache-Control', 'private, max-age=300');
    ctx.set('ETag', `"${avatarId}"`);
    // Koa tells freshness only of a 2xx (or 304) answer; until a body is set, the status is 404.
    ctx.status = 200;
    if (ctx.fresh) {
      ctx.status = 304;
      return;
    }
    ctx.body = jpeg;
  };
  for (const path of ['/users/me/avatar', '/users/{id}/avatar']) {
    openapi.registerPath({
      method: 'get',
      path,
      summary: path.includes('{id}') ? 'A user’s avatar (my own, or any for admins)' : 'My avatar',
      tags: ['users'],
      security: bearerSecurity,
      ...(path.includes('{id}') ? { request: { params: UserId } } : {}),
      responses: {
        200: {
          description: '128×128 JPEG',
          content: { 'image/jpeg': { schema: z.string().meta({ format: 'binary' }) } },
        },
        ...problemResponses(401, 404),
      },
    });
  }
  router.get('/users/me/avatar', auth(), consistentRead<AuthedState>([]), (ctx) =>
    sendAvatar(ctx, ctx.state.user.id),
  );
  router.get('/users/:id/avatar', auth(), consistentRead<AuthedState>([]), async (ctx) => {
    const { id } = UserId.parse(ctx.params);
    // Another user's avatar is indistinguishable from none (admins may see any).
    if (id !== ctx.state.user.id && ctx.state.user.permission < 2) throw new NotFound('No avatar.');
    await sendAvatar(ctx, id);
  });

  openapi.registerPath({
    method: 'get',
    path: '/users',
    summary: 'List users (admin)',
    tags: ['admin'],
    security: bearerSecurity,
    request: { query: UserList },
    responses: { 200: { description: 'Users' }, ...problemResponses(400, 401, 403, 504) },
  });
  router.get('/users', auth(2), consistentRead<AuthedState>(['users']), async (ctx) => {
    const q = UserList.parse(ctx.query);
    ctx.body = await listUsers(db, { limit: q.limit, cursor: q.cursor, q: q.q, apiBase: API_BASE });
  });

  openapi.registerPath({
    method: 'get',
    path: '/users/{id}',
    summary: 'View a user (admin)',
    tags: ['admin'],
    security: bearerSecurity,
    request: { params: UserId },
    responses: { 200: { description: 'The user' }, ...problemResponses(401, 403, 404, 504) },
  });
  router.get('/users/:id', auth(2), consistentRead<AuthedState>(['users']), async (ctx) => {
    const { id } = UserId.parse(ctx.params);
    const found = await findUser(db, id, API_BASE);
    if (!found) throw new NotFound('No such user.');
    ctx.body = found;
  });

  openapi.registerPath({
    method: 'patch',
    path: '/users/{id}',
    summary: 'Change a user’s permission or disable/enable them (admin)',
    tags: ['admin'],
    security: bearerSecurity,
    request: { params: UserId, body: { content: { 'application/json': { schema: AdminPatch } } } },
    responses: { 200: { description: 'The user' }, ...problemResponses(400, 401, 403, 404, 409, 504) },
  });
  router.patch('/users/:id', auth(2), async (ctx) => {
    const { id } = UserId.parse(ctx.params);
    const body = AdminPatch.parse(ctx.request.body);
    // An admin locking themselves out would leave nobody to undo it.
    if (id === ctx.state.user.id && (body.disabled === true || (body.permission ?? 2) < 2))
      throw new Conflict('You cannot disable or demote yourself; ask another admin.');
    if (!(await readUser(deps, id)).registered) throw new NotFound('No such user.');
    const rc = requestContext(ctx);
    let position = 0n;
    if (body.permission !== undefined) {
      const r = await deps.commands.handle(userDecider, userStream(id), {
        type: 'ChangePermission',
        data: { userId: id, permission: body.permission },
        metadata: { now: deps.clock.now(), actorId: rc.actorId ?? null, requestId: rc.requestId ?? null },
      });
      position = r.position;
    }
    if (body.disabled !== undefined) position = await setDisabled(identity, id, body.disabled, rc);
    setEventPosition(ctx, position);
    const caughtUp = await deps.projections.waitFor(['users'], position, deps.config.CONSISTENCY_TIMEOUT_MS);
    deps.sessionGuard?.forgetUser(id);
    // The change is made (the stream says so); only the view of it may be late.
    if (!caughtUp) {
      throw new ConsistencyTimeout(
        'The change is made; the users read model has not caught up to show it yet.',
      );
    }
    const found = await findUser(db, id, API_BASE);
    if (!found) throw new NotFound('No such user.');
    ctx.body = found;
  });

  openapi.registerPath({
    method: 'put',
    path: '/users/{id}/password',
    summary: 'Set a user’s password (admin; ends all their sessions)',
    tags: ['admin'],
    security: bearerSecurity,
    request: { params: UserId, body: { content: { 'application/json': { schema: AdminPassword } } } },
    responses: { 204: { description: 'Set' }, ...problemResponses(400, 401, 403, 404) },
  });
  router.put('/users/:id/password', auth(2), async (ctx) => {
    const { id } = UserId.parse(ctx.params);
    const body = AdminPassword.parse(ctx.request.body);
    if (!(await readUser(deps, id)).registered) throw new NotFound('No such user.');
    setEventPosition(
      ctx,
      await resetPassword(identity, { userId: id, newPassword: body.new_password }, requestContext(ctx)),
    );
    ctx.status = 204;
  });
};
