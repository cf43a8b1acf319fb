import { sql, type Kysely } from 'kysely';

/** Read models of presets, chats and their messages (projections; rebuilt from the log at will). */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    create table presets (
      id text primary key,
      owner_id text not null,
      name text not null,
      description text not null,
      model text not null,
      parameters jsonb not null,
      messages jsonb not null,
      public boolean not null,
      deleted boolean not null,
      created_at timestamptz not null,
      updated_at timestamptz not null,
      last_position bigint not null
    )`.execute(db);
  // The two halves of "public presets + mine", each newest first.
  await sql`create index presets_owner on presets (owner_id, created_at desc, id desc) where not deleted`.execute(
    db,
  );
  await sql`create index presets_public on presets (created_at desc, id desc) where public and not deleted`.execute(
    db,
  );
  await sql`
    create table chats (
      id text primary key,
      owner_id text not null,
      title text not null,
      preset_id text not null,
      model text not null,
      parameters jsonb not null,
      deleted boolean not null,
      created_at timestamptz not null,
      updated_at timestamptz not null,
      last_message_at timestamptz,
      last_position bigint not null
    )`.execute(db);
  await sql`create index chats_owner on chats (owner_id, created_at desc, id desc) where not deleted`.execute(
    db,
  );
  await sql`
    create table chat_messages (
      id text primary key,
      chat_id text not null,
      seq integer not null,
      role text not null,
      content jsonb not null,
      visible boolean not null,
      status text,
      task_id text,
      created_at timestamptz not null
    )`.execute(db);
  await sql`create unique index chat_messages_chat_seq on chat_messages (chat_id, seq)`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop table chat_messages, chats, presets`.execute(db);
}
