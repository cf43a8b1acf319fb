import type { Redis } from 'ioredis';
import { sql, type Kysely } from 'kysely';
import { LRUCache } from 'lru-cache';
import type { Clock } from '../platform/clock';
import { gathered } from '../platform/gathered';
import { prepared } from '../platform/prepared';
import type { Database } from '../platform/schema';
import type { PermissionLevel } from '../platform/tokens';

/** What a request's access token may still do. */
export type SessionCheck =
  { ok: true; permission: PermissionLevel | null } | { ok: false; reason: 'revoked' | 'disabled' };

/**
 * Decides per request whether an access token's session is still alive and its user enabled.
 * Three layers, fastest first:
 * - this instance's own revocations, marked the moment it makes them;
 * - Redis (when set), where every instance marks its revocations, so the others see them at once;
 * - the sessions and users read models, cached for `cacheMs`, which catch everything else (a
 *   revocation by a reactor, an instance without Redis) within projection lag + `cacheMs`.
 * A Redis outage falls through to the read models; it never fails a request.
 */
export interface SessionGuard {
  check(sessionId: string, userId: string): Promise<SessionCheck>;
  markSessionRevoked(sessionId: string): Promise<void>;
  markUserDisabled(userId: string, disabled: boolean): Promise<void>;
  /** Drops this instance's cached view of a user (its permission changed). */
  forgetUser(userId: string): void;
}

interface Row {
  revoked: boolean;
  disabled: boolean;
  permission: PermissionLevel | null;
  at: number;
}

/** What the read models hold of a session and its user (null: not projected yet). */
interface Found {
  revoked_at: Date | string | null;
  disabled: boolean | null;
  permission: number | null;
}

const SESSION_KEY = (id: string) => `auth:revoked:session:${id}`;
const USER_KEY = (id: string) => `auth:disabled:user:${id}`;

export function createSessionGuard(options: {
  db: Kysely<Database>;
  redis?: Redis | undefined;
  clock: Clock;
  cacheMs: number;
  /** How long a Redis mark lives: as long as any access token of the session could. */
  markTtlSeconds: number;
}): SessionGuard {
  const { db, redis, clock, cacheMs, markTtlSeconds } = options;
  const rows = new LRUCache<string, Row>({ max: 100_000 });
  const revokedHere = new LRUCache<string, true>({ max: 100_000, ttl: markTtlSeconds * 1000 });
  // Only until the read model has caught up; after that it is the authority (another instance may
  // have enabled the user again).
  const disabledHere = new LRUCache<string, boolean>({ max: 100_000, ttl: 60_000 });

  async function fromRedis(sessionId: string, userId: string): Promise<'revoked' | 'disabled' | null> {
    if (!redis || redis.status !== 'ready') return null;
    try {
      const [session, user] = await redis.mget(SESSION_KEY(sessionId), USER_KEY(userId));
      if (user) return 'disabled';
      if (session) return 'revoked';
    } catch {
      // Redis is an accelerator here; the read models still answer.
    }
    return null;
  }

  // A request's only read when the cache is cold: a probe per check, the session and the user
  // joined to it, null where a row is not projected yet. The checks gathered share one statement.
  const probes = gathered<{ sessionId: string; userId: string }, Found>(async (asked) => {
    const { rows: found } = await sql<Found>`
      select s.revoked_at, u.disabled, u.permission
      from unnest(${asked.map((a) => a.sessionId)}::text[], ${asked.map((a) => a.userId)}::text[])
        with ordinality as probe(session_id, user_id, i)
      left join sessions s on s.id = probe.session_id
      left join users u on u.id = probe.user_id
      order by probe.i ${prepared}`.execute(db);
    return found;
  });

  async function fromReadModels(sessionId: string, userId: string): Promise<Row> {
    const key = `${sessionId}\u0000${userId}`;
    const now = clock.now().getTime();
    const cached = rows.get(key);
    if (cached && now - cached.at < cacheMs) return cached;
    const found = await probes.load({ sessionId, userId });
    const row: Row = {
      // A session not yet projected has just started: it cannot have been revoked before it existed.
      revoked: found.revoked_at !== null,
      disabled: found.disabled ?? false,
      permission: found.permission === null ? null : (found.permission as PermissionLevel),
      at: now,
    };
    rows.set(key, row);
    return row;
  }

  function forgetUser(userId: string): void {
    for (const key of rows.keys()) if (key.endsWith(`\u0000${userId}`)) rows.delete(key);
  }

  return {
    async check(sessionId, userId) {
      if (disabledHere.get(userId) === true) return { ok: false, reason: 'disabled' };
      if (revokedHere.has(sessionId)) return { ok: false, reason: 'revoked' };
      const marked = await fromRedis(sessionId, userId);
      if (marked) return { ok: false, reason: marked };
      const row = await fromReadModels(sessionId, userId);
      // Enabled again here, but the read model may lag behind: this instance's own word wins.
      if (row.disabled && disabledHere.get(userId) !== false) return { ok: false, reason: 'disabled' };
      if (row.revoked) return { ok: false, reason: 'revoked' };
      return { ok: true, permission: row.permission };
    },
    async markSessionRevoked(sessionId) {
      revokedHere.set(sessionId, true);
      if (redis?.status === 'ready') {
        await redis.set(SESSION_KEY(sessionId), '1', 'EX', markTtlSeconds).catch(() => undefined);
      }
    },
    forgetUser,
    async markUserDisabled(userId, disabled) {
      disabledHere.set(userId, disabled);
      forgetUser(userId);
      if (redis?.status === 'ready') {
        await (
          disabled ? redis.set(USER_KEY(userId), '1', 'EX', markTtlSeconds) : redis.del(USER_KEY(userId))
        ).catch(() => undefined);
      }
    },
  };
}
