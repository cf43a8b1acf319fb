import { sql, type Kysely } from 'kysely';

/**
 * The SMS sign-in code pending for each phone number. Not a read model and never an event: a code
 * is a short-lived secret (only a million values, so not even its digest belongs in a log that is
 * kept forever), and its attempt counter must move atomically under parallel guesses, which one
 * row and one `UPDATE … RETURNING` give. A new code for the number replaces the row.
 */
export async function up(db: Kysely<unknown>): Promise<void> {
  await sql`
    create table sms_codes (
      phone text primary key,
      code_digest text not null,
      sent_at timestamptz not null,
      expires_at timestamptz not null,
      attempts integer not null default 0,
      used_at timestamptz
    )`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`drop table sms_codes`.execute(db);
}
