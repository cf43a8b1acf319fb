import { sql, type Kysely } from 'kysely';

/** Read models of the credit ledger and redeem codes (projections; rebuilt from the log at will). */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    create table balances (
      user_id text primary key,
      posted bigint not null,
      held bigint not null,
      last_position bigint not null
    )`.execute(db);
  await sql`
    create table ledger_entries (
      id uuid primary key,
      user_id text not null,
      position bigint not null,
      type text not null,
      amount bigint not null,
      balance_after bigint not null,
      reason text,
      ref text,
      created_at timestamptz not null
    )`.execute(db);
  await sql`create index ledger_entries_user_position on ledger_entries (user_id, position desc)`.execute(db);
  await sql`
    create table codes (
      code text primary key,
      amount bigint not null,
      max_uses integer not null,
      uses integer not null,
      expires_at timestamptz,
      revoked_at timestamptz,
      batch_id text not null,
      issued_by text not null,
      created_at timestamptz not null,
      last_position bigint not null
    )`.execute(db);
  await sql`create index codes_created_at on codes (created_at desc, code)`.execute(db);
  await sql`
    create table code_redemptions (
      use_id uuid primary key,
      code text not null,
      user_id text not null,
      amount bigint not null,
      used_at timestamptz not null
    )`.execute(db);
  await sql`create index code_redemptions_code on code_redemptions (code, used_at)`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop table code_redemptions, codes, ledger_entries, balances`.execute(db);
}
