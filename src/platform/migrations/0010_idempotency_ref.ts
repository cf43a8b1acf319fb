import { sql, type Kysely } from 'kysely';

/**
 * What the first request with a key started that outlives it (`ref`: a task), so that a retry goes
 * on from it instead of starting another: a streamed answer, or a request whose instance died. And
 * the lease of the request holding the key (`lease`), so that one whose key was taken over writes
 * nothing more to it. And whether the answer is sealed (`sealed`: it holds secrets, a token pair).
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`alter table idempotency_keys add column ref text, add column lease text,
    add column sealed boolean not null default false`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`alter table idempotency_keys drop column ref, drop column lease, drop column sealed`.execute(db);
}
