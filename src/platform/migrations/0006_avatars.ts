import { sql, type Kysely } from 'kysely';

/**
 * Avatar images, content-addressed: the id is the SHA-256 of the JPEG, so the same picture is
 * stored once and a row never changes. Not a read model: events carry only the id.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    create table avatar_blobs (
      id text primary key,
      data bytea not null,
      created_at timestamptz not null
    )`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop table avatar_blobs`.execute(db);
}
