import { sql } from 'kysely';
import pg from 'pg';
import { testConfig } from '../../src/platform/config';
import { openDatabase, type Db } from '../../src/platform/db';
import { createLogger } from '../../src/platform/logger';
import { migrateToLatest } from '../../src/platform/migrate';

/**
 * The service holds PGlite (one session) and serves it over the wire protocol to CLIs and psql.
 * Neither side may land inside the other's query cycle or transaction.
 */
describe('the embedded database served over the wire while the service uses it', () => {
  let db: Db;
  beforeAll(async () => {
    db = await openDatabase(testConfig(), createLogger({ LOG_LEVEL: 'silent' }), { serveEmbedded: true });
    await migrateToLatest(db.db);
    await sql`create table wire_test (n integer not null)`.execute(db.db);
  });
  afterAll(() => db.close());

  const client = async () => {
    const c = new pg.Client({ connectionString: db.embeddedUrl });
    await c.connect();
    return c;
  };

  it('gives each side its own results when their parameterised queries interleave', async () => {
    const wire = await client();
    try {
      const service = Array.from({ length: 200 }, async (_, i) => {
        const r = await sql<{ v: string }>`select ${`s${i}`}::text || ${'-service'}::text as v`.execute(
          db.db,
        );
        expect(r.rows[0]!.v).toBe(`s${i}-service`);
      });
      const viaWire = (async () => {
        for (let i = 0; i < 200; i++) {
          const r = await wire.query<{ v: number }>('select $1::int * 2 as v', [i]);
          expect(r.rows[0]!.v).toBe(i * 2);
        }
      })();
      await Promise.all([...service, viaWire]);
    } finally {
      await wire.end();
    }
  });

  it('keeps the service out of a wire client’s transaction until it ends', async () => {
    const wire = await client();
    try {
      await wire.query('begin');
      await wire.query('insert into wire_test (n) values (1)');
      let serviceSaw: number | undefined;
      const service = sql<{ n: string }>`select count(*) as n from wire_test`
        .execute(db.db)
        .then((r) => (serviceSaw = Number(r.rows[0]!.n)));
      await new Promise((r) => setTimeout(r, 100));
      expect(serviceSaw).toBeUndefined(); // waiting: it must not read inside the open transaction
      await wire.query('insert into wire_test (n) values (2)');
      await wire.query('rollback');
      await service;
      expect(serviceSaw).toBe(0);
    } finally {
      await wire.end();
    }
  });

  it('lets the service go on when a wire client leaves in the middle of a transaction', async () => {
    const wire = await client();
    await wire.query('begin');
    await wire.query('insert into wire_test (n) values (3)');
    wire.end().catch(() => undefined);
    const r = await sql<{ n: string }>`select count(*) as n from wire_test`.execute(db.db);
    expect(Number(r.rows[0]!.n)).toBe(0);
  });
});
