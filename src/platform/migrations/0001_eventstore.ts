import { sql, type Kysely } from 'kysely';

/**
 * The event log. `txid` is the writing transaction's id: readers order by (txid, position) and read
 * only below the oldest running transaction, so an event that commits late is never skipped.
 * `streams` holds each stream's revision: the row lock on it is what makes expected-revision
 * appends safe under concurrency, in one statement.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    create table streams (
      stream_name text primary key,
      revision bigint not null
    )`.execute(db);
  await sql`
    create table events (
      position bigint generated always as identity primary key,
      txid xid8 not null default pg_current_xact_id(),
      event_id uuid not null,
      stream_name text not null,
      revision bigint not null,
      category text not null,
      type text not null,
      data jsonb not null,
      metadata jsonb not null,
      recorded_at timestamptz not null default now(),
      constraint events_event_id_key unique (event_id),
      constraint events_stream_revision_key unique (stream_name, revision)
    )`.execute(db);
  await sql`create index events_log_order on events (txid, position)`.execute(db);
  await sql`
    create table projection_checkpoints (
      name text primary key,
      version integer not null,
      txid bigint not null,
      position bigint not null,
      updated_at timestamptz not null default now()
    )`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop table projection_checkpoints`.execute(db);
  await sql`drop table events`.execute(db);
  await sql`drop table streams`.execute(db);
}
