import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { sql, type Kysely } from 'kysely';
import { BadRequest, Conflict, DomainError } from '../../platform/errors';
import type { Database } from '../../platform/schema';
import { verifyAccessToken } from '../../platform/tokens';
import type { AppMiddleware } from '../types';
import { respondWithError } from './errors';

export const IDEMPOTENCY_HEADER = 'Idempotency-Key';
const KEY = /^[\x21-\x7e]{1,255}$/;
/** Response headers that are part of the answer and replayed with it. */
const REPLAYED_HEADERS = ['content-type', 'location', 'x-event-position', 'retry-after'];
/** A key whose first request is still unanswered after this long is taken over (its process died). */
const ABANDONED_AFTER_MS = 60_000;

/** The same key was sent with a different request. */
export class IdempotencyKeyReused extends DomainError {
  readonly status = 422;
  readonly type = '/problems/idempotency-key-reused';
  readonly title = 'Idempotency key reused';
}

/**
 * `Idempotency-Key` on POST (API.md): the first request with a key runs and its answer is kept;
 * a retry with the same key and the same request gets that answer again (`Idempotent-Replayed:
 * true`) with no second effect; the same key with another request is 422; a retry while the first
 * is still running is 409. Keys belong to the caller (the user of a valid token, else everyone
 * anonymous — the request hash covers the whole body, so a replay needs the identical request).
 * Answers of 5xx and streamed answers are not kept: the key is freed so a retry runs again.
 */
export function idempotency(): AppMiddleware {
  return async (ctx, next) => {
    const key = ctx.get(IDEMPOTENCY_HEADER);
    if (ctx.method !== 'POST' || key === '') {
      await next();
      return;
    }
    if (!KEY.test(key)) {
      throw new BadRequest(`${IDEMPOTENCY_HEADER} must be 1 to 255 visible ASCII characters.`);
    }
    const db = ctx.deps.db.db;
    const scope = callerScope(ctx.get('Authorization'), ctx.deps.config);
    const hash = requestHash(ctx.method, ctx.path, ctx.querystring, ctx.request.body);

    if (!(await claim(db, scope, key, hash))) {
      const row = await db
        .selectFrom('idempotency_keys')
        .selectAll()
        .where('scope', '=', scope)
        .where('key', '=', key)
        .executeTakeFirst();
      if (!row) throw new Conflict('The request with this Idempotency-Key was just freed; retry.');
      if (row.request_hash !== hash) {
        throw new IdempotencyKeyReused(
          `${IDEMPOTENCY_HEADER} ${key} was used for a different request; use a new key for a new request.`,
        );
      }
      if (row.status === null) {
        throw new Conflict(
          `The first request with ${IDEMPOTENCY_HEADER} ${key} is still being processed; retry shortly.`,
        );
      }
      ctx.status = row.status;
      for (const [name, value] of Object.entries(row.headers ?? {})) ctx.set(name, value);
      ctx.set('Idempotent-Replayed', 'true');
      ctx.body = row.body && row.body.length > 0 ? row.body : null;
      if (row.headers?.['content-type']) ctx.type = row.headers['content-type'];
      return;
    }

    try {
      await next();
    } catch (err) {
      // Render the problem here, so that a 4xx answer is kept and replayed like any other.
      respondWithError(ctx, err);
    }
    const body = answerBytes(ctx.body);
    if (ctx.status >= 500 || body === undefined) {
      await free(db, scope, key);
      return;
    }
    const headers: Record<string, string> = {};
    for (const name of REPLAYED_HEADERS) {
      const value = ctx.response.get(name);
      if (value) headers[name] = value;
    }
    await db
      .updateTable('idempotency_keys')
      .set({ status: ctx.status, headers, body, completed_at: new Date() })
      .where('scope', '=', scope)
      .where('key', '=', key)
      .execute();
  };
}

/** Takes the key for this request: a new key, or one whose first request was abandoned. */
async function claim(db: Kysely<Database>, scope: string, key: string, hash: string): Promise<boolean> {
  const res = await sql<{ key: string }>`
    insert into idempotency_keys (scope, key, request_hash)
    values (${scope}, ${key}, ${hash})
    on conflict (scope, key) do update set request_hash = excluded.request_hash, created_at = now()
      where idempotency_keys.status is null
        and idempotency_keys.request_hash = excluded.request_hash
        and idempotency_keys.created_at < now() - make_interval(secs => ${ABANDONED_AFTER_MS / 1000})
    returning key`.execute(db);
  return res.rows.length > 0;
}

async function free(db: Kysely<Database>, scope: string, key: string): Promise<void> {
  await db
    .deleteFrom('idempotency_keys')
    .where('scope', '=', scope)
    .where('key', '=', key)
    .execute()
    .catch(() => undefined); // the database may be what failed; the key is taken over later
}

/** Deletes keys older than `maxAgeMs` (kept 24 hours by the service). */
export async function sweepIdempotencyKeys(db: Kysely<Database>, maxAgeMs: number): Promise<number> {
  const res = await db
    .deleteFrom('idempotency_keys')
    .where('created_at', '<', new Date(Date.now() - maxAgeMs))
    .executeTakeFirst();
  return Number(res.numDeletedRows);
}

function callerScope(
  authorization: string,
  config: { JWT_SECRET?: string | undefined; JWT_ISSUER: string },
): string {
  const token = /^Bearer +(\S+)$/i.exec(authorization)?.[1];
  if (!token || !config.JWT_SECRET) return 'anonymous';
  try {
    return `user:${verifyAccessToken(token, { secret: config.JWT_SECRET, issuer: config.JWT_ISSUER }).userId}`;
  } catch {
    return 'anonymous'; // the route's auth() answers 401
  }
}

function requestHash(method: string, path: string, query: string, body: unknown): string {
  return createHash('sha256')
    .update(JSON.stringify([method, path, query, canonical(body)]))
    .digest('hex');
}

/** JSON with object keys sorted, so the same body sent with keys in another order is the same request. */
function canonical(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === 'object' && !Buffer.isBuffer(value)) {
    return Object.fromEntries(
      Object.keys(value)
        .sort()
        .map((k) => [k, canonical((value as Record<string, unknown>)[k])]),
    );
  }
  return value ?? null;
}

/** The answer as bytes, or undefined when it cannot be kept (a stream). */
function answerBytes(body: unknown): Buffer | undefined {
  if (body === null || body === undefined) return Buffer.alloc(0);
  if (Buffer.isBuffer(body)) return body;
  if (typeof body === 'string') return Buffer.from(body);
  if (typeof (body as Readable).pipe === 'function') return undefined;
  return Buffer.from(JSON.stringify(body));
}
