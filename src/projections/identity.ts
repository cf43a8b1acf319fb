import { sql, type Kysely, type UpdateObject } from 'kysely';
import type { SessionEvent } from '../events/sessions';
import type { UserEvent } from '../events/users';
import type { Database } from '../platform/schema';
import type { Projector } from './types';

type UserUpdate = UpdateObject<Database, 'users'>;

/** Changes one user row, only for an event newer than the last it has seen. */
async function updateUser(trx: Kysely<Database>, userId: string, position: string, set: UserUpdate) {
  await trx
    .updateTable('users')
    .set(set)
    .set({ last_position: position })
    .where('id', '=', userId)
    .where('last_position', '<', position)
    .execute();
}

/** Users as admins list them and `GET /users/me` shows them; also read per request by the session guard. */
export const usersProjector: Projector = {
  name: 'users',
  version: 1,
  eventTypes: [
    'UserRegistered',
    'ProfileChanged',
    'PasswordChanged',
    'AvatarChanged',
    'PermissionChanged',
    'UserDisabled',
    'UserEnabled',
    'IdentityLinked',
  ],
  tables: ['users'],
  async apply(trx, events) {
    for (const recorded of events) {
      const e = { type: recorded.type, data: recorded.data } as UserEvent;
      const position = String(recorded.position);
      const { userId } = e.data;
      switch (e.type) {
        case 'UserRegistered': {
          const at = new Date(e.data.registeredAt);
          await trx
            .insertInto('users')
            .values({
              id: userId,
              username: e.data.username,
              email: e.data.email,
              nickname: e.data.nickname,
              permission: e.data.permission,
              disabled: false,
              avatar_id: null,
              method: e.data.method,
              identities: '[]',
              created_at: at,
              updated_at: at,
              last_position: position,
            })
            .onConflict((oc) => oc.column('id').doNothing())
            .execute();
          break;
        }
        case 'ProfileChanged':
          await updateUser(trx, userId, position, {
            ...(e.data.nickname !== undefined ? { nickname: e.data.nickname } : {}),
            ...(e.data.email !== undefined ? { email: e.data.email } : {}),
            updated_at: new Date(e.data.changedAt),
          });
          break;
        case 'PasswordChanged':
          await updateUser(trx, userId, position, { updated_at: new Date(e.data.changedAt) });
          break;
        case 'AvatarChanged':
          await updateUser(trx, userId, position, {
            avatar_id: e.data.avatarId,
            updated_at: new Date(e.data.changedAt),
          });
          break;
        case 'PermissionChanged':
          await updateUser(trx, userId, position, {
            permission: e.data.permission,
            updated_at: new Date(e.data.changedAt),
          });
          break;
        case 'UserDisabled':
          await updateUser(trx, userId, position, {
            disabled: true,
            updated_at: new Date(e.data.disabledAt),
          });
          break;
        case 'UserEnabled':
          await updateUser(trx, userId, position, {
            disabled: false,
            updated_at: new Date(e.data.enabledAt),
          });
          break;
        case 'IdentityLinked': {
          const identity = JSON.stringify([{ provider: e.data.provider, subject: e.data.subject }]);
          await updateUser(trx, userId, position, {
            identities: sql<string>`(identities::jsonb || ${identity}::jsonb)::json`,
            updated_at: new Date(e.data.linkedAt),
          });
          break;
        }
      }
    }
  },
};

/** Login sessions: a user's active sessions, and whether a session was revoked (the session guard). */
export const sessionsProjector: Projector = {
  name: 'sessions',
  version: 1,
  eventTypes: ['SessionStarted', 'SessionRefreshed', 'SessionRevoked'],
  tables: ['sessions'],
  async apply(trx, events) {
    for (const recorded of events) {
      const e = { type: recorded.type, data: recorded.data } as SessionEvent;
      const position = String(recorded.position);
      switch (e.type) {
        case 'SessionStarted':
          await trx
            .insertInto('sessions')
            .values({
              id: e.data.sessionId,
              user_id: e.data.userId,
              method: e.data.method,
              user_agent: e.data.userAgent,
              ip: e.data.ip,
              created_at: new Date(e.data.startedAt),
              last_used_at: new Date(e.data.startedAt),
              expires_at: new Date(e.data.expiresAt),
              revoked_at: null,
              revoke_reason: null,
              last_position: position,
            })
            .onConflict((oc) => oc.column('id').doNothing())
            .execute();
          break;
        case 'SessionRefreshed':
          await trx
            .updateTable('sessions')
            .set({
              last_used_at: new Date(e.data.refreshedAt),
              expires_at: new Date(e.data.expiresAt),
              ...(e.data.ip ? { ip: e.data.ip } : {}),
              last_position: position,
            })
            .where('id', '=', e.data.sessionId)
            .where('last_position', '<', position)
            .execute();
          break;
        case 'SessionRevoked':
          await trx
            .updateTable('sessions')
            .set({
              revoked_at: new Date(e.data.revokedAt),
              revoke_reason: e.data.reason,
              last_position: position,
            })
            .where('id', '=', e.data.sessionId)
            .where('last_position', '<', position)
            .execute();
          break;
      }
    }
  },
};
