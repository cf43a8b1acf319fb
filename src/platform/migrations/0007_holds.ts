import { sql, type Kysely } from 'kysely';

/** The open holds read model: what the hold-expiry scheduler sweeps. */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    create table open_holds (
      user_id text not null,
      hold_id text not null,
      amount bigint not null,
      expires_at timestamptz not null,
      reserved_position bigint not null,
      reserved_event_id text not null,
      correlation_id text,
      primary key (user_id, hold_id)
    )`.execute(db);
  // The sweep pages through due holds in this order.
  await sql`create index open_holds_expires_at on open_holds (expires_at, user_id, hold_id)`.execute(db);
  // A row of open_holds is deleted when its hold resolves: this per-user watermark is what keeps a
  // replayed reservation from bringing it back.
  await sql`
    create table open_holds_seen (
      user_id text primary key,
      last_position bigint not null
    )`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop table open_holds_seen, open_holds`.execute(db);
}
