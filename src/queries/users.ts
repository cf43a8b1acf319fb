import type { Kysely } from 'kysely';
import type { Database } from '../platform/schema';
import { encodeCursor, newestFirstPage, timeIdCursor, type Page } from './paging';

/** A user as API.md shows one (`GET /users/me`); admins also see `disabled` and the identities. */
export interface UserView {
  id: string;
  username: string;
  email: string | null;
  nickname: string;
  permission: number;
  created_at: string;
  avatar_url: string | null;
  disabled: boolean;
  identities: { provider: string; subject: string }[];
}

export interface SessionView {
  id: string;
  method: string;
  user_agent: string | null;
  ip: string | null;
  created_at: string;
  last_used_at: string;
  expires_at: string;
  current: boolean;
}

type UserRow = Database['users'] extends infer T
  ? { [K in keyof T]: T[K] extends { __select__: infer S } ? S : T[K] }
  : never;

function parseIdentities(value: unknown): { provider: string; subject: string }[] {
  const list = typeof value === 'string' ? (JSON.parse(value) as unknown) : value;
  return Array.isArray(list) ? (list as { provider: string; subject: string }[]) : [];
}

function userView(r: Omit<UserRow, 'identities'> & { identities: unknown }, apiBase: string): UserView {
  return {
    id: r.id,
    username: r.username,
    email: r.email,
    nickname: r.nickname,
    permission: r.permission,
    created_at: r.created_at.toISOString(),
    avatar_url: r.avatar_id ? `${apiBase}/users/${r.id}/avatar?v=${r.avatar_id.slice(0, 12)}` : null,
    disabled: r.disabled,
    identities: parseIdentities(r.identities),
  };
}

export async function findUser(
  db: Kysely<Database>,
  id: string,
  apiBase: string,
): Promise<UserView | undefined> {
  const row = await db.selectFrom('users').selectAll().where('id', '=', id).executeTakeFirst();
  return row ? userView(row, apiBase) : undefined;
}

/** The stored avatar's id of a user, if any. */
export async function avatarIdOf(db: Kysely<Database>, userId: string): Promise<string | null> {
  const row = await db.selectFrom('users').select('avatar_id').where('id', '=', userId).executeTakeFirst();
  return row?.avatar_id ?? null;
}

/** Users, newest first; `q` matches the start of a username or email. */
export async function listUsers(
  db: Kysely<Database>,
  opts: { limit: number; cursor?: string | undefined; q?: string | undefined; apiBase: string },
): Promise<Page<UserView>> {
  let query = db.selectFrom('users').selectAll();
  const after = timeIdCursor(opts.cursor);
  if (after) {
    query = query.where((eb) =>
      eb.or([
        eb('created_at', '<', after[0]),
        eb.and([eb('created_at', '=', after[0]), eb('id', '<', after[1])]),
      ]),
    );
  }
  if (opts.q) {
    const prefix = `${opts.q.toLowerCase().replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
    query = query.where((eb) =>
      eb.or([
        eb(eb.fn('lower', ['username']), 'like', prefix),
        eb(eb.fn('lower', ['email']), 'like', prefix),
      ]),
    );
  }
  const rows = await query
    .orderBy('created_at', 'desc')
    .orderBy('id', 'desc')
    .limit(opts.limit + 1)
    .execute();
  const page = rows.slice(0, opts.limit);
  const last = page[page.length - 1];
  return {
    items: page.map((r) => userView(r, opts.apiBase)),
    next_cursor:
      rows.length > opts.limit && last ? encodeCursor([last.created_at.toISOString(), last.id]) : null,
  };
}

/** The ids of all of a user's sessions that are neither revoked nor expired, however many. */
export async function activeSessionIds(db: Kysely<Database>, userId: string, now: Date): Promise<string[]> {
  const rows = await db
    .selectFrom('sessions')
    .select('id')
    .where('user_id', '=', userId)
    .where('revoked_at', 'is', null)
    .where('expires_at', '>', now)
    .execute();
  return rows.map((r) => r.id);
}

/** A page of a user's sessions that are neither revoked nor expired, newest first. */
export async function activeSessions(
  db: Kysely<Database>,
  opts: { userId: string; now: Date; currentSessionId?: string; limit: number; cursor?: string | undefined },
): Promise<Page<SessionView>> {
  const query = db
    .selectFrom('sessions')
    .selectAll()
    .where('user_id', '=', opts.userId)
    .where('revoked_at', 'is', null)
    .where('expires_at', '>', opts.now);
  return newestFirstPage(query, opts, (r) => ({
    id: r.id,
    method: r.method,
    user_agent: r.user_agent,
    ip: r.ip,
    created_at: r.created_at.toISOString(),
    last_used_at: r.last_used_at.toISOString(),
    expires_at: r.expires_at.toISOString(),
    current: r.id === opts.currentSessionId,
  }));
}
