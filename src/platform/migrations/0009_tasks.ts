import { sql, type Kysely } from 'kysely';

/** Read model of tasks: status, usage and cost, and what the sweeper looks for (no outcome by the deadline). */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    create table tasks (
      id text primary key,
      user_id text not null,
      chat_id text,
      model text not null,
      status text not null,
      hold bigint not null,
      prompt_tokens integer not null,
      completion_tokens integer not null,
      cost bigint,
      message_id text,
      error text,
      claimed boolean not null,
      created_at timestamptz not null,
      deadline_at timestamptz not null,
      finished_at timestamptz,
      last_position bigint not null
    )`.execute(db);
  await sql`create index tasks_open_deadline on tasks (deadline_at) where finished_at is null`.execute(db);
  await sql`create index tasks_user on tasks (user_id, created_at desc)`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop table tasks`.execute(db);
}
