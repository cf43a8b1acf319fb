import { sql, type Kysely } from 'kysely';

/**
 * Idempotency keys (API.md: every POST accepts Idempotency-Key). One row per caller and key: the
 * request's hash and, once answered, the answer to replay.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    create table idempotency_keys (
      scope text not null,
      key text not null,
      request_hash text not null,
      status integer,
      headers json,
      body bytea,
      created_at timestamptz not null default now(),
      completed_at timestamptz,
      primary key (scope, key)
    )`.execute(db);
  await sql`create index idempotency_keys_created_at on idempotency_keys (created_at)`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop table idempotency_keys`.execute(db);
}
