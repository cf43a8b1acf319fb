import { sql, type Kysely } from 'kysely';

/**
 * A read model's failure, kept beside its checkpoint until a batch goes through again: every
 * instance and the CLI see a read model stuck on an event, not only the instance retrying it.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`alter table projection_checkpoints add column last_error text`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`alter table projection_checkpoints drop column last_error`.execute(db);
}
