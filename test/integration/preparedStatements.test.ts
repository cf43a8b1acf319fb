import {
  DummyDriver,
  Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  sql,
} from 'kysely';
import { uuidV7Ids } from '../../src/platform/clock';
import { PREPARED_MARK, prepared } from '../../src/platform/prepared';
import type { Database } from '../../src/platform/schema';
import { ledgerProjector } from '../../src/projections/ledger';
import { openTestDatabase, testDatabases, type TestDatabase } from '../support/databases';

/** What is prepared on the connection that `db` (a transaction) runs on. */
async function preparedOn(db: Kysely<Database>): Promise<string[]> {
  const { rows } = await sql<{ statement: string }>`select statement from pg_prepared_statements`.execute(db);
  return rows.map((r) => r.statement);
}

describe.each(testDatabases())('statements marked prepared on %s', (kind) => {
  let t: TestDatabase;
  beforeEach(async () => {
    t = await openTestDatabase(kind);
  });
  afterEach(() => t.close());

  it('are prepared once on a connection and run by name after; others are not prepared', async () => {
    const marked = (n: number) => sql<{ n: number }>`select ${n}::int + 1 as n ${prepared}`;
    await t.db.db.transaction().execute(async (trx) => {
      expect((await marked(1).execute(trx)).rows).toEqual([{ n: 2 }]);
      expect((await marked(41).execute(trx)).rows).toEqual([{ n: 42 }]);
      await sql`select 1 as unmarked`.execute(trx);
      const statements = await preparedOn(trx);
      expect(statements.filter((s) => s.endsWith(`as n ${PREPARED_MARK}`))).toHaveLength(1);
      expect(statements.filter((s) => s.includes('unmarked'))).toEqual([]);
    });
  });

  /** A grant to `userId`, the `n`th event of its ledger. */
  const granted = (userId: string, n: number) => ({
    id: uuidV7Ids.next(),
    type: 'CreditsGranted',
    data: { userId, grantId: `g${n}`, amount: 10, reason: 'test', grantedAt: new Date().toISOString() },
    metadata: { occurredAt: new Date().toISOString(), schemaVersion: 1 },
    streamName: `ledger-${userId}`,
    revision: BigInt(n),
    position: 1_000_000n + BigInt(n),
    logPosition: { txid: 1_000_000n + BigInt(n), position: 1_000_000n + BigInt(n) },
    recordedAt: new Date(),
  });

  it("prepares a read model's batch, which writes the same when run by name", async () => {
    const userId = `u-${uuidV7Ids.next()}`;
    await t.db.db.transaction().execute(async (trx) => {
      for (let n = 0; n < 3; n++) await ledgerProjector.apply(trx, [granted(userId, n)]);
      const statements = await preparedOn(trx);
      expect(statements.filter((s) => s.includes('insert into ledger_entries'))).toHaveLength(1);
    });
    const balance = await t.db.db
      .selectFrom('balances')
      .select('posted')
      .where('user_id', '=', userId)
      .executeTakeFirstOrThrow();
    expect(Number(balance.posted)).toBe(30);
  });

  it('follows the search path a rebuild sets, on a connection where it is prepared already', async () => {
    const [live, rebuilt] = [`u-${uuidV7Ids.next()}`, `u-${uuidV7Ids.next()}`];
    await sql`create schema prepared_rebuild`.execute(t.db.db);
    for (const table of ledgerProjector.tables) {
      await sql`create table ${sql.id('prepared_rebuild', table)} (like ${sql.id('public', table)} including all)`.execute(
        t.db.db,
      );
    }
    await t.db.db.transaction().execute(async (trx) => {
      await ledgerProjector.apply(trx, [granted(live, 0)]);
      await sql`set local search_path to prepared_rebuild, public`.execute(trx);
      await ledgerProjector.apply(trx, [granted(rebuilt, 0)]);
    });
    const users = async (schema: string) =>
      (
        await sql<{
          user_id: string;
        }>`select user_id from ${sql.id(schema, 'balances')} where user_id in (${live}, ${rebuilt})`.execute(
          t.db.db,
        )
      ).rows.map((r) => r.user_id);
    expect(await users('public')).toEqual([live]);
    expect(await users('prepared_rebuild')).toEqual([rebuilt]);
    await sql`drop schema prepared_rebuild cascade`.execute(t.db.db);
  });
});

describe('a builder query marked prepared', () => {
  it('ends with the mark, where the connection looks for it', () => {
    // Compiled only, as kysely compiles for PostgreSQL.
    const compiler = new Kysely<Database>({
      dialect: {
        createAdapter: () => new PostgresAdapter(),
        createDriver: () => new DummyDriver(),
        createIntrospector: (db) => new PostgresIntrospector(db),
        createQueryCompiler: () => new PostgresQueryCompiler(),
      },
    });
    const { sql: text } = compiler
      .updateTable('projection_checkpoints')
      .set({ last_error: null })
      .where('name', '=', 'x')
      .modifyEnd(prepared)
      .compile();
    expect(text.endsWith(PREPARED_MARK)).toBe(true);
  });
});
