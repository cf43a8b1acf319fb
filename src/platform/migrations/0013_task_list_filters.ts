import { sql, type Kysely } from 'kysely';

/**
 * The list of a user's tasks in one chat, or in one status, reads only those: with the user's
 * index alone, it went through all of the user's tasks, newest first, until it had a page of them.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`create index tasks_user_chat on tasks (user_id, chat_id, created_at desc, id desc) where chat_id is not null`.execute(
    db,
  );
  await sql`create index tasks_user_status on tasks (user_id, status, created_at desc, id desc)`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop index tasks_user_status`.execute(db);
  await sql`drop index tasks_user_chat`.execute(db);
}
