import { createCipheriv, createDecipheriv, createHash, randomBytes, randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import { sql, type Kysely } from 'kysely';
import { BadRequest, Conflict, DomainError } from '../../platform/errors';
import type { Database } from '../../platform/schema';
import type { AppMiddleware, IdempotentRequest } from '../types';
import { bearerClaims, checkSession } from './auth';
import { respondWithError } from './errors';

export const IDEMPOTENCY_HEADER = 'Idempotency-Key';
const KEY = /^[\x21-\x7e]{1,255}$/;
/** Response headers that are part of the answer and replayed with it. */
const REPLAYED_HEADERS = [
  'content-type',
  'location',
  'x-event-position',
  'retry-after',
  'cache-control',
  // Set with a problem: a 401's challenge, a 405's methods, a failed completion's advice to the SDK.
  'www-authenticate',
  'allow',
  'x-should-retry',
];

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
 * Answers of 5xx are not kept: the key is freed so a retry runs again. Answers of secrets
 * (`Cache-Control: no-store`: token pairs) are kept sealed, opened only by the same request, and
 * only for `IDEMPOTENCY_LEASE_SECONDS` after they were given: then it is 409.
 *
 * The first request holds the key on a lease its instance renews while it runs; a lease not renewed
 * for `IDEMPOTENCY_LEASE_SECONDS` (the instance died) lets a retry take the key over. A route whose work
 * outlives the request (a task) names it through `ctx.state.idempotent`: a retry that takes over,
 * or one of a streamed answer (which is not kept), goes on from that work instead of starting more.
 * A streamed answer of a route that named nothing frees the key.
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
    const claims = bearerClaims(ctx);
    const scope = claims ? `user:${claims.userId}` : 'anonymous'; // the route's auth() answers 401
    const request = requestText(ctx.method, ctx.path, ctx.querystring, ctx.request.body);
    const hash = createHash('sha256').update(request).digest('hex');
    const secrets = sealer(request, ctx.deps.config.JWT_SECRET);

    const leaseSeconds = ctx.deps.config.IDEMPOTENCY_LEASE_SECONDS;
    const lease = randomUUID();
    const claimed = await claim(db, { scope, key, hash, lease, leaseSeconds });
    if (!claimed) {
      // What the key holds is told only to a session still open, as the route would (its auth()
      // does not run for a kept answer).
      if (claims && ctx.deps.sessionGuard) await checkSession(ctx.deps.sessionGuard, claims);
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
      if (row.body === null && row.ref !== null) {
        // A streamed answer: streamed again from the work it named, which is not done twice.
        ctx.state.idempotent = { ref: row.ref, remember: async () => undefined };
        await next();
        ctx.set('Idempotent-Replayed', 'true');
        return;
      }
      // Tokens are given again only as long as a retry of a lost answer would come: past that, to
      // whoever holds the spent request and its key, they are a gift.
      const fresh = (row.completed_at?.getTime() ?? 0) > Date.now() - leaseSeconds * 1000;
      const answer = row.sealed && row.body ? (fresh ? secrets.open(row.body) : undefined) : row.body;
      if (answer === undefined) {
        throw new Conflict(
          `The answer to ${IDEMPOTENCY_HEADER} ${key} can no longer be given again; send the request with a new key.`,
        );
      }
      ctx.set('Idempotent-Replayed', 'true');
      ctx.status = row.status;
      for (const [name, value] of Object.entries(row.headers ?? {})) ctx.set(name, value);
      ctx.body = answer && answer.length > 0 ? answer : null;
      if (row.headers?.['content-type']) ctx.type = row.headers['content-type'];
      return;
    }

    // Every write below holds while this request holds the lease: one taken over meanwhile (this
    // instance too slow to renew it) belongs to the request that took it.
    const held = () =>
      db
        .updateTable('idempotency_keys')
        .where('scope', '=', scope)
        .where('key', '=', key)
        .where('lease', '=', lease);
    let ref = claimed.ref;
    const idempotent: IdempotentRequest = {
      ref,
      async remember(named) {
        await held().set({ ref: named }).execute();
        ref = named;
      },
    };
    ctx.state.idempotent = idempotent;
    // Renewed while the request runs, however long (a completion may take minutes).
    const renew = () =>
      held()
        .set({ created_at: sql<Date>`now()` })
        .execute()
        .catch(() => undefined); // missed once, it is renewed at the next beat (or taken over)
    const renewal = setInterval(() => void renew(), (leaseSeconds * 1000) / 3);
    renewal.unref();
    try {
      await next();
    } catch (err) {
      // Render the problem here, so that a 4xx answer is kept and replayed like any other.
      respondWithError(ctx, err);
    } finally {
      clearInterval(renewal);
    }
    const body = answerBytes(ctx.body);
    // Not kept: a 5xx or a stream, when no work was named.
    if (ref === null && (ctx.status >= 500 || body === undefined)) {
      await db
        .deleteFrom('idempotency_keys')
        .where('scope', '=', scope)
        .where('key', '=', key)
        .where('lease', '=', lease)
        .execute()
        .catch(() => undefined); // the database may be what failed; the key is taken over later
      return;
    }
    if (ctx.status >= 500) {
      // Work was started and named: its lease given up, so that a retry goes on from it at once.
      await held()
        .set({ created_at: sql<Date>`now() - make_interval(secs => ${leaseSeconds})` })
        .execute()
        .catch(() => undefined);
      return;
    }
    // A stream is not kept (body null): a retry streams again from the work it named.
    const headers: Record<string, string> = {};
    for (const name of REPLAYED_HEADERS) {
      const value = ctx.response.get(name);
      if (value && body !== undefined) headers[name] = value;
    }
    // An answer of secrets (`no-store`: a token pair) is kept sealed: a token is never stored as is.
    const sealed = body !== undefined && /\bno-store\b/.test(ctx.response.get('Cache-Control'));
    await held()
      .set({
        status: ctx.status,
        headers,
        body: sealed ? secrets.seal(body) : (body ?? null),
        sealed,
        completed_at: new Date(),
      })
      .execute();
  };
}

/**
 * Takes the key for this request under `lease`: a new key, or one whose first request was
 * abandoned (its lease not renewed for `leaseSeconds`), with what that request named (`ref`).
 * Null when the key is not free.
 */
async function claim(
  db: Kysely<Database>,
  k: { scope: string; key: string; hash: string; lease: string; leaseSeconds: number },
): Promise<{ ref: string | null } | null> {
  const res = await sql<{ ref: string | null }>`
    insert into idempotency_keys (scope, key, request_hash, lease)
    values (${k.scope}, ${k.key}, ${k.hash}, ${k.lease})
    on conflict (scope, key) do update
      set request_hash = excluded.request_hash, lease = excluded.lease, created_at = now()
      where idempotency_keys.status is null
        and idempotency_keys.request_hash = excluded.request_hash
        and idempotency_keys.created_at < now() - make_interval(secs => ${k.leaseSeconds})
    returning ref`.execute(db);
  return res.rows[0] ?? null;
}

/** Deletes keys older than `maxAgeMs` (kept 24 hours by the service). */
export async function sweepIdempotencyKeys(db: Kysely<Database>, maxAgeMs: number): Promise<number> {
  const res = await db
    .deleteFrom('idempotency_keys')
    .where('created_at', '<', new Date(Date.now() - maxAgeMs))
    .executeTakeFirst();
  return Number(res.numDeletedRows);
}

/** The request as one text: its hash names it, and it opens an answer sealed for it. */
function requestText(method: string, path: string, query: string, body: unknown): string {
  return JSON.stringify([method, path, query, canonical(body)]);
}

/**
 * Seals and opens an answer of secrets (a token pair) with a key drawn from the request itself and
 * the service's secret: the stored row alone (its request hash included) opens nothing; the same
 * request again, on this service, does.
 */
function sealer(request: string, serviceSecret: string | undefined) {
  const key = createHash('sha256')
    .update(['idempotent answer', serviceSecret ?? '', request].join('\u0000'))
    .digest();
  return {
    seal(plain: Buffer): Buffer {
      const iv = randomBytes(12);
      const cipher = createCipheriv('aes-256-gcm', key, iv);
      const sealed = Buffer.concat([cipher.update(plain), cipher.final()]);
      return Buffer.concat([iv, cipher.getAuthTag(), sealed]);
    },
    /** The answer, or undefined when it does not open (the service's secret changed). */
    open(stored: Buffer): Buffer | undefined {
      try {
        const decipher = createDecipheriv('aes-256-gcm', key, stored.subarray(0, 12));
        decipher.setAuthTag(stored.subarray(12, 28));
        return Buffer.concat([decipher.update(stored.subarray(28)), decipher.final()]);
      } catch {
        return undefined;
      }
    },
  };
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
