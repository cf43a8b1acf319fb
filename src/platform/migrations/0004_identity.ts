import { sql, type Kysely } from 'kysely';

/** Read models of users and their login sessions (projections; rebuilt from the log at will). */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    create table users (
      id text primary key,
      username text not null,
      email text,
      nickname text not null,
      permission integer not null,
      disabled boolean not null,
      avatar_id text,
      method text not null,
      identities json not null,
      created_at timestamptz not null,
      updated_at timestamptz not null,
      last_position bigint not null
    )`.execute(db);
  await sql`create index users_created_at on users (created_at desc, id desc)`.execute(db);
  await sql`
    create table sessions (
      id text primary key,
      user_id text not null,
      method text not null,
      user_agent text,
      ip text,
      created_at timestamptz not null,
      last_used_at timestamptz not null,
      expires_at timestamptz not null,
      revoked_at timestamptz,
      revoke_reason text,
      last_position bigint not null
    )`.execute(db);
  await sql`create index sessions_user on sessions (user_id, created_at desc)`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop table sessions, users`.execute(db);
}
