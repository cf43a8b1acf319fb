import { createHmac, randomInt } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import type { Database } from '../schema';

export interface SmsCodePolicy {
  ttlSeconds: number;
  maxAttempts: number;
  /** A new code for the same number is sent no sooner than this after the last. */
  resendSeconds: number;
}

export type IssueResult = { issued: true; code: string } | { issued: false; retryAfterSeconds: number };

/** The SMS sign-in codes pending per phone number (table `sms_codes`). */
export interface SmsCodeStore {
  /** A new 6-digit code for `phone`, replacing any earlier one; refused while the last is younger than the resend wait. */
  issue(phone: string, now: Date): Promise<IssueResult>;
  /** Seconds until a new code may be sent to `phone` (0 = now). */
  cooldown(phone: string, now: Date): Promise<number>;
  /** Takes back a code that could not be sent, so the number need not wait out the resend delay. */
  withdraw(phone: string, code: string): Promise<void>;
  /**
   * Whether `code` is the pending code of `phone`, spending one attempt either way. A right code
   * works once; after `maxAttempts` tries (right or wrong) or past its expiry, none does.
   */
  verify(phone: string, code: string, now: Date): Promise<boolean>;
}

/**
 * Codes are kept as an HMAC keyed by a server secret (the pepper), over the number and the code: a
 * copy of the table alone does not give them away, and one code does not match another number.
 * Every check is one `UPDATE … RETURNING` that counts the attempt in the same statement, so any
 * number of parallel guesses makes at most `maxAttempts` comparisons (the row lock serialises
 * them, and each re-reads the count it must stay under).
 */
export function createSmsCodeStore(
  db: Kysely<Database>,
  opts: { pepper: string; policy: SmsCodePolicy },
): SmsCodeStore {
  const { policy } = opts;
  const key = createHmac('sha256', opts.pepper).update('sms-code-pepper').digest();
  const digest = (phone: string, code: string) =>
    createHmac('sha256', key).update(`${phone}\0${code}`).digest('hex');
  const after = (at: Date, seconds: number) => new Date(at.getTime() + seconds * 1000);

  const cooldown = async (phone: string, now: Date): Promise<number> => {
    const row = await db
      .selectFrom('sms_codes')
      .select('sent_at')
      .where('phone', '=', phone)
      .executeTakeFirst();
    if (!row) return 0;
    const ms = after(new Date(row.sent_at), policy.resendSeconds).getTime() - now.getTime();
    return ms > 0 ? Math.ceil(ms / 1000) : 0;
  };

  return {
    cooldown,

    async issue(phone, now) {
      const code = String(randomInt(0, 1_000_000)).padStart(6, '0');
      const row = {
        phone,
        code_digest: digest(phone, code),
        sent_at: now,
        expires_at: after(now, policy.ttlSeconds),
        attempts: 0,
        used_at: null,
      };
      // The resend wait is decided in the same statement that replaces the code: two requests at
      // once cannot both send one.
      const replaced = await db
        .insertInto('sms_codes')
        .values(row)
        .onConflict((oc) =>
          oc
            .column('phone')
            .doUpdateSet({
              code_digest: row.code_digest,
              sent_at: row.sent_at,
              expires_at: row.expires_at,
              attempts: 0,
              used_at: null,
            })
            .where('sms_codes.sent_at', '<=', after(now, -policy.resendSeconds)),
        )
        .returning('phone')
        .executeTakeFirst();
      if (replaced) return { issued: true, code };
      return { issued: false, retryAfterSeconds: Math.max(1, await cooldown(phone, now)) };
    },

    async withdraw(phone, code) {
      await db
        .deleteFrom('sms_codes')
        .where('phone', '=', phone)
        .where('code_digest', '=', digest(phone, code))
        .execute();
    },

    async verify(phone, code, now) {
      const presented = digest(phone, code);
      const row = await db
        .updateTable('sms_codes')
        .set({
          attempts: sql<number>`attempts + 1`,
          used_at: sql<Date | null>`case when code_digest = ${presented} then ${now}::timestamptz else null end`,
        })
        .where('phone', '=', phone)
        .where('used_at', 'is', null)
        .where('expires_at', '>', now)
        .where('attempts', '<', policy.maxAttempts)
        .returning('used_at')
        .executeTakeFirst();
      return row?.used_at != null;
    },
  };
}
