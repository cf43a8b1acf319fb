import { setTimeout as sleep } from 'node:timers/promises';
import { sql } from 'kysely';
import { CommandHandler } from '../../src/commands/handler';
import { ledgerDecider, type LedgerCommand } from '../../src/commands/ledger/decider';
import { createKurrentDbEventStore } from '../../src/eventstore/kurrentdb';
import type { EventStore } from '../../src/eventstore/port';
import { ledgerStream } from '../../src/events/ledger';
import { uuidV7Ids } from '../../src/platform/clock';
import { createLogger } from '../../src/platform/logger';
import { ledgerProjector } from '../../src/projections/ledger';
import { createProjectionEngine, type RunningProjectionEngine } from '../../src/projections/runner';
import { reportJson, statementCsv, summaryCsv } from '../../src/reports/format';
import { createLedgerReports, type LedgerReports } from '../../src/reports/ledger';
import { portLogReader } from '../../src/reports/replay';
import { openTestDatabase, openTestStore, testDatabases, type TestDatabase } from '../support/databases';
import { startKurrentDbTestServer } from '../support/kurrentdb/server';

const logger = createLogger({ LOG_LEVEL: 'silent' });
const day = (d: number, h = 0) => new Date(Date.UTC(2026, 2, d, h));

type Data<T extends LedgerCommand['type']> = Omit<Extract<LedgerCommand, { type: T }>['data'], 'userId'>;

/**
 * Where the log is: the postgres event store on PGlite (and the server when DATABASE_URL is set),
 * whose log the reports read directly, and the KurrentDB adapter (its in-process test server, the
 * read models on PGlite), which they read through the EventStore port.
 */
const setups: [string, () => Promise<TestDatabase & { store: EventStore }>][] = [
  ...testDatabases().map((kind): [string, () => Promise<TestDatabase & { store: EventStore }>] => [
    `the postgres store on ${kind}`,
    () => openTestStore(kind),
  ]),
  [
    'the KurrentDB adapter',
    async () => {
      const server = await startKurrentDbTestServer();
      const t = await openTestDatabase('pglite');
      const store = createKurrentDbEventStore(server.url, { logger });
      return {
        ...t,
        store,
        async close() {
          await store.close();
          await server.stop();
          await t.close();
        },
      };
    },
  ],
];

describe.each(setups)('ledger reports over %s', (_name, open) => {
  let t: TestDatabase & { store: EventStore };
  let commands: CommandHandler;
  let engine: RunningProjectionEngine;
  let reports: LedgerReports;
  let lastPosition = 0n;

  async function cmd<T extends LedgerCommand['type']>(userId: string, type: T, data: Data<T>, now: Date) {
    const r = await commands.handle(ledgerDecider, ledgerStream(userId), {
      type,
      data: { ...data, userId },
      metadata: { now, actorId: 'admin' },
    } as unknown as LedgerCommand);
    lastPosition = r.position;
    return r;
  }

  beforeAll(async () => {
    t = await open();
    commands = new CommandHandler(t.store, { ids: uuidV7Ids });
    reports = createLedgerReports({ store: t.store, db: t.db });
    await cmd('alice', 'GrantCredits', { grantId: 'g1', amount: 1000, reason: 'welcome' }, day(1));
    await cmd('bob', 'GrantCredits', { grantId: 'g2', amount: 200, reason: 'welcome' }, day(1));
    await cmd(
      'alice',
      'ReserveCredits',
      { holdId: 'h1', amount: 300, expiresAt: day(3).toISOString(), reason: 'task' },
      day(2),
    );
    await cmd('alice', 'CaptureCredits', { holdId: 'h1', cost: 120, excess: 'forgive' }, day(2, 1));
    await cmd(
      'bob',
      'ReserveCredits',
      { holdId: 'h2', amount: 150, expiresAt: day(3).toISOString(), reason: 'task' },
      day(2),
    );
    await cmd('bob', 'CaptureCredits', { holdId: 'h2', cost: 180, excess: 'charge_available' }, day(2, 2));
    await cmd(
      'alice',
      'RefundCredits',
      { refundId: 'r1', chargeId: 'h1', amount: 20, reason: 'slow' },
      day(3),
    );
    await cmd(
      'bob',
      'AdjustCredits',
      { adjustmentId: 'a1', amount: -10, reason: 'fix', corrects: null },
      day(4),
    );
    await cmd(
      'carol',
      'ReserveCredits',
      { holdId: 'h3', amount: 1, expiresAt: day(5).toISOString(), reason: 'x' },
      day(4),
    ).catch(() => undefined); // carol has nothing: refused, nothing recorded
    // An event of another category in between: the reports read only the ledger streams.
    const other = await t.store.append(
      'code-X',
      [
        {
          id: uuidV7Ids.next(),
          type: 'CodeIssued',
          data: {},
          metadata: { occurredAt: day(4).toISOString(), schemaVersion: 1 },
        },
      ],
      'any',
    );
    engine = createProjectionEngine({
      db: t.db,
      store: t.store,
      logger,
      projectors: [ledgerProjector],
      batchSize: 3,
    });
    await engine.start();
    expect(await engine.waitFor(['ledger'], other.position, 30_000)).toBe(true);
    // reconcile reads the checkpoint as saved, and the move past an event the projection does not
    // handle is saved a moment later: the reports are byte-identical only from then on.
    for (let saved = 0n; saved < other.position; await sleep(20)) {
      const row = await t.db.db
        .selectFrom('projection_checkpoints')
        .select('position')
        .where('name', '=', 'ledger')
        .executeTakeFirst();
      saved = BigInt(row?.position ?? 0);
    }
  });
  afterAll(async () => {
    await engine?.stop();
    await t?.close();
  });

  it('verifies the log the decider wrote, with totals that add up', async () => {
    const v = await reports.verify();
    expect(v.breaches).toEqual([]);
    expect(v).toMatchObject({ ok: true, events: 10, accounts: 2 });
    // alice: 1000 − 120 + 20; bob: 200 − 150 − 30 (the excess charged) − 10.
    expect(v.totals).toMatchObject({ posted: 910, held: 0, captured: 270, charged: 30, released: 180 });
    expect(BigInt(v.as_of_position)).toBeGreaterThanOrEqual(lastPosition);
  });

  it('states a period with running balances that close where the projection stands', async () => {
    const s = await reports.statement('bob', day(2), day(5));
    expect(s.opening).toEqual({ posted: 200, held: 0, available: 200 });
    expect(s.movements.map((m) => [m.type, m.amount, m.available_after])).toEqual([
      ['reserved', 150, 50],
      ['captured', 150, 50],
      ['charged', 30, 20],
      ['adjusted', -10, 10],
    ]);
    const row = await t.db.db
      .selectFrom('balances')
      .selectAll()
      .where('user_id', '=', 'bob')
      .executeTakeFirst();
    expect(s.closing).toEqual({ posted: Number(row!.posted), held: Number(row!.held), available: 10 });
    expect(statementCsv(s).split('\r\n')).toHaveLength(4 + 3 + 1);
    expect(await reports.balanceAt('bob', day(2))).toMatchObject({ posted: 200, held: 150, events: 2 });
    expect(await reports.balanceAt('nobody', day(2))).toMatchObject({ posted: 0, held: 0, events: 0 });
  });

  it('summarises the period into a balanced trial balance, the same bytes every time', async () => {
    const first = await reports.summary(day(2), day(4));
    expect(first.trial_balance.balanced).toBe(true);
    expect(first.balances).toEqual({
      opening: { posted: 1200, held: 0, available: 1200 },
      closing: { posted: 920, held: 0, available: 920 },
    });
    expect(reportJson(await reports.summary(day(2), day(4)))).toBe(reportJson(first));
  });

  it('gives byte-identical output when every report runs twice, and the same through the EventStore port', async () => {
    const all = async (r: LedgerReports, batchSize?: number) => {
      const o = batchSize ? { batchSize } : {};
      return [
        reportJson(await r.verify(o)),
        reportJson(await r.summary(day(1), day(5), o)),
        summaryCsv(await r.summary(day(2), day(4), o)),
        reportJson(await r.statement('alice', day(1), day(6))),
        statementCsv(await r.statement('bob', day(2), day(5))),
        reportJson(await r.balanceAt('alice', day(2, 1))),
        reportJson(await r.reconcile(o)),
      ].join('');
    };
    const first = await all(reports);
    expect(await all(reports)).toBe(first);
    // The postgres store's log is read directly by default: the port must give the very same, and
    // so must reads of a few events at a time (the last cut at the head).
    const viaPort = createLedgerReports({ store: t.store, db: t.db, read: portLogReader(t.store) });
    expect(await all(viaPort)).toBe(first);
    for (const batchSize of [1, 3]) {
      expect(await all(reports, batchSize)).toBe(first);
      expect(await all(viaPort, batchSize)).toBe(first);
    }
  });

  it('reports as of a point of the log: a balance at T is the replay of the events up to T', async () => {
    const s = await reports.statement('alice', day(1), day(7));
    // The last movement at each time (a capture and its release share one): the balance at that
    // time is its running balance.
    const lastAtTheirTime = s.movements.filter((m, i) => s.movements[i + 1]?.occurred_at !== m.occurred_at);
    expect(lastAtTheirTime.length).toBeGreaterThanOrEqual(3);
    for (const m of lastAtTheirTime) {
      const at = await reports.balanceAt('alice', new Date(m.occurred_at!));
      expect([at.posted, at.held, at.available]).toEqual([m.posted_after, m.held_after, m.available_after]);
    }
    // And a summary as of an earlier head leaves out what came after it.
    const head = await t.store.locate(BigInt(s.movements[1]!.position));
    for (const batchSize of [1, 4, 100]) {
      const early = await reports.verify({ upTo: head!, batchSize });
      expect(early).toMatchObject({ ok: true, events: 3, as_of_position: s.movements[1]!.position });
      expect(early.totals).toMatchObject({ granted: 1200, reserved: 300, captured: 0 });
    }
  });

  it('reconciles with the balances projection, and reports a corrupted, a missing and an unknown row', async () => {
    const clean = await reports.reconcile();
    expect(clean).toMatchObject({ ok: true, differences: [], accounts: 2 });
    expect(clean.checkpoint).not.toBeNull();

    await engine.stop();
    try {
      await sql`update balances set posted = posted + 5 where user_id = 'alice'`.execute(t.db.db);
      await sql`delete from balances where user_id = 'bob'`.execute(t.db.db);
      await sql`insert into balances (user_id, posted, held, last_position) values ('ghost', 1, 0, 1)`.execute(
        t.db.db,
      );
      // Appends the stopped projection has not seen are no difference: reconcile stops at its checkpoint.
      await cmd('alice', 'GrantCredits', { grantId: 'g9', amount: 7, reason: 'late' }, day(6));
      const r = await reports.reconcile();
      expect(r.ok).toBe(false);
      expect(r.differences).toEqual([
        {
          user_id: 'alice',
          kind: 'mismatch',
          replayed: { posted: 900, held: 0 },
          projected: { posted: 905, held: 0 },
        },
        { user_id: 'bob', kind: 'missing_row', replayed: { posted: 10, held: 0 }, projected: null },
        { user_id: 'ghost', kind: 'unexpected_row', replayed: null, projected: { posted: 1, held: 0 } },
      ]);
    } finally {
      await engine.start();
    }
  });
});
