import { sql, type Kysely } from 'kysely';

/**
 * What the first request with a key started that outlives it (a task), so that a retry goes on
 * from it instead of starting another: a streamed answer, or a request whose instance died.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`alter table idempotency_keys add column ref text`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`alter table idempotency_keys drop column ref`.execute(db);
}
