import { createSmsCodeStore, type SmsCodeStore } from '../../src/platform/identity/smsCodes';
import { openTestDatabase, testDatabases, type TestDatabase } from '../support/databases';

const policy = { ttlSeconds: 300, maxAttempts: 5, resendSeconds: 60 };
const PEPPER = 'pepper-pepper-pepper-pepper-pepper-01';
const T0 = new Date('2026-03-01T08:00:00Z');
const at = (seconds: number) => new Date(T0.getTime() + seconds * 1000);

let phoneCounter = 0;
const newPhone = () => `+86139${String(++phoneCounter).padStart(8, '0')}`;

/** A code other than `code`. */
const wrong = (code: string, i = 0) => String((Number(code) + 1 + i) % 1_000_000).padStart(6, '0');

async function issued(store: SmsCodeStore, phone: string, now = T0): Promise<string> {
  const result = await store.issue(phone, now);
  if (!result.issued) throw new Error(`expected a code, got a wait of ${result.retryAfterSeconds} s`);
  return result.code;
}

describe.each(testDatabases())('SMS sign-in codes on %s', (kind) => {
  let t: TestDatabase;
  let store: SmsCodeStore;
  beforeAll(async () => {
    t = await openTestDatabase(kind);
    store = createSmsCodeStore(t.db.db, { pepper: PEPPER, policy });
  });
  afterAll(() => t?.close());

  it('issues six digits; the right code works once', async () => {
    const phone = newPhone();
    const code = await issued(store, phone);
    expect(code).toMatch(/^\d{6}$/);
    expect(await store.verify(phone, code, at(10))).toBe(true);
    expect(await store.verify(phone, code, at(11))).toBe(false);
  });

  it('keeps only a keyed digest: not the code, and not one another pepper would match', async () => {
    const phone = newPhone();
    const code = await issued(store, phone);
    const row = await t.db.db
      .selectFrom('sms_codes')
      .selectAll()
      .where('phone', '=', phone)
      .executeTakeFirstOrThrow();
    expect(JSON.stringify(row)).not.toContain(code);
    const other = createSmsCodeStore(t.db.db, { pepper: `${PEPPER}-other`, policy });
    expect(await other.verify(phone, code, at(1))).toBe(false);
    expect(await store.verify(phone, code, at(2))).toBe(true);
  });

  it('does not take one number’s code for another’s', async () => {
    const [a, b] = [newPhone(), newPhone()];
    const code = await issued(store, a);
    await issued(store, b);
    expect(await store.verify(b, code, at(1))).toBe(false);
    expect(await store.verify(a, code, at(2))).toBe(true);
  });

  it('allows four wrong guesses, then the right one; five wrong ones use the code up', async () => {
    const phone = newPhone();
    const code = await issued(store, phone);
    for (let i = 0; i < 4; i++) expect(await store.verify(phone, wrong(code, i), at(i))).toBe(false);
    expect(await store.verify(phone, code, at(5))).toBe(true);

    const other = newPhone();
    const second = await issued(store, other);
    for (let i = 0; i < 5; i++) expect(await store.verify(other, wrong(second, i), at(i))).toBe(false);
    expect(await store.verify(other, second, at(6))).toBe(false);
  });

  it('refuses the code after its five minutes', async () => {
    const phone = newPhone();
    const code = await issued(store, phone);
    expect(await store.verify(phone, code, at(300))).toBe(false);
    const again = await issued(store, phone, at(300));
    expect(await store.verify(phone, again, at(599))).toBe(true);
  });

  it('sends no second code within 60 s; a new one replaces the old and its spent attempts', async () => {
    const phone = newPhone();
    const first = await issued(store, phone);
    for (let i = 0; i < 5; i++) await store.verify(phone, wrong(first, i), at(1));
    expect(await store.issue(phone, at(20))).toEqual({ issued: false, retryAfterSeconds: 40 });
    expect(await store.cooldown(phone, at(59.5))).toBe(1);
    expect(await store.cooldown(phone, at(60))).toBe(0);
    const second = await issued(store, phone, at(60));
    const row = await t.db.db
      .selectFrom('sms_codes')
      .selectAll()
      .where('phone', '=', phone)
      .executeTakeFirstOrThrow();
    expect(row).toMatchObject({ attempts: 0, used_at: null });
    expect(await store.verify(phone, second, at(62))).toBe(true);
  });

  it('takes back a code that could not be sent: no wait, and it no longer works', async () => {
    const phone = newPhone();
    const code = await issued(store, phone);
    await store.withdraw(phone, code);
    expect(await store.cooldown(phone, at(1))).toBe(0);
    expect(await store.verify(phone, code, at(2))).toBe(false);
    await issued(store, phone, at(3));
  });

  it('counts 20 parallel wrong guesses as at most five attempts, and the right code is then refused', async () => {
    const phone = newPhone();
    const code = await issued(store, phone);
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) => store.verify(phone, wrong(code, i), at(1))),
    );
    expect(results.every((r) => r === false)).toBe(true);
    const row = await t.db.db
      .selectFrom('sms_codes')
      .select('attempts')
      .where('phone', '=', phone)
      .executeTakeFirstOrThrow();
    expect(row.attempts).toBe(5);
    expect(await store.verify(phone, code, at(2))).toBe(false);
  });

  it('lets the right code win at most once among 20 parallel tries, within five attempts', async () => {
    const phone = newPhone();
    const code = await issued(store, phone);
    // The right code as the 4th of 20: whether it lands within the first five is up to the race.
    const guesses = Array.from({ length: 20 }, (_, i) => (i === 3 ? code : wrong(code, i)));
    const results = await Promise.all(guesses.map((g) => store.verify(phone, g, at(1))));
    expect(results.filter(Boolean).length).toBeLessThanOrEqual(1);
    const row = await t.db.db
      .selectFrom('sms_codes')
      .select('attempts')
      .where('phone', '=', phone)
      .executeTakeFirstOrThrow();
    expect(row.attempts).toBeLessThanOrEqual(5);
    const sameCode = await Promise.all(Array.from({ length: 20 }, () => store.verify(phone, code, at(2))));
    expect(sameCode.filter(Boolean)).toHaveLength(0);
  });

  it('accepts 20 parallel copies of the right code once', async () => {
    const phone = newPhone();
    const code = await issued(store, phone);
    const results = await Promise.all(Array.from({ length: 20 }, () => store.verify(phone, code, at(1))));
    expect(results.filter(Boolean)).toHaveLength(1);
  });

  it('issues one code for 20 parallel requests to one number', async () => {
    const phone = newPhone();
    await issued(store, phone, at(-600));
    const results = await Promise.all(Array.from({ length: 20 }, () => store.issue(phone, at(0))));
    expect(results.filter((r) => r.issued)).toHaveLength(1);
  });
});
