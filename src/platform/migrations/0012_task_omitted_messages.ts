import { sql, type Kysely } from 'kysely';

/** How many messages of a chat's history a task left out to fit its model's window, for the list of tasks. */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`alter table tasks add column omitted_messages integer not null default 0`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`alter table tasks drop column omitted_messages`.execute(db);
}
