import os from 'node:os';
import { sql } from 'kysely';
import { uuidv7 } from 'uuidv7';
import { CommandHandler } from '../src/commands/handler';
import { ledgerDecider, type LedgerCommand } from '../src/commands/ledger/decider';
import { createPostgresEventStore } from '../src/eventstore/postgres';
import { ledgerStream } from '../src/events/ledger';
import { uuidV7Ids } from '../src/platform/clock';
import { testConfig } from '../src/platform/config';
import type { Db } from '../src/platform/db';
import { createLedgerReports } from '../src/reports/ledger';
import { openBenchDb, percentile, serverDatabase, type BenchContext } from './support';

const CONCURRENCY = 32;
const USERS_IN_LOG = 1_000;
const BASE = Date.parse('2026-01-01T00:00:00Z');

/**
 * The credit ledger: reserve+capture pairs through the command handler and the ledger decider
 * with 32 users at once (pairs/s, p50/p99 per pair), and the finance reports (verify, summary)
 * replaying 1,000,000 ledger events (200,000 with --quick). On the PostgreSQL server when
 * DATABASE_URL is set, else on the embedded PGlite.
 */
export async function ledgerBench(ctx: BenchContext): Promise<void> {
  const seconds = ctx.quick ? 5 : 20;
  const events = ctx.quick ? 200_000 : 1_000_000;
  const server = ctx.serverUrl ? await serverDatabase(ctx.serverUrl) : undefined;
  const where = server ? 'PostgreSQL' : 'embedded PGlite';
  if (!server) ctx.note('DATABASE_URL not set: the ledger figures are on the embedded PGlite.');
  const db = await openBenchDb(server?.config ?? testConfig());
  const load = () => os.loadavg()[0]!.toFixed(1);
  ctx.note(`ledger: 1-minute load average ${load()} at the start, on ${os.cpus().length} cores`);
  try {
    const seedStarted = Date.now();
    await seedLedgerLog(db, events);
    ctx.note(
      `ledger: seeded ${events.toLocaleString('en-US')} events in ${((Date.now() - seedStarted) / 1000).toFixed(1)} s`,
    );
    const store = createPostgresEventStore(db);
    const reports = createLedgerReports({ store, db });
    const n = events.toLocaleString('en-US');

    let started = process.hrtime.bigint();
    let cpu = process.cpuUsage();
    const verified = await reports.verify();
    const verifyRate = events / elapsed(started);
    const verifyCpu = cpuPerEvent(cpu, events);
    if (!verified.ok || verified.events !== events) {
      throw new Error(
        `verify over the seeded log: ${verified.events} events, ${verified.breach_count} breaches`,
      );
    }
    ctx.figures.push({
      suite: 'ledger',
      name: `verify over ${n} ledger events, ${where}`,
      value: verifyRate,
      unit: 'events/s',
      target: '>= 200,000 events/s',
      met: verifyRate >= 200_000,
    });

    const steps = events / USERS_IN_LOG;
    started = process.hrtime.bigint();
    cpu = process.cpuUsage();
    const summary = await reports.summary(
      new Date(BASE + (steps / 4) * 1000),
      new Date(BASE + (steps / 2) * 1000),
    );
    const summaryRate = events / elapsed(started);
    const summaryCpu = cpuPerEvent(cpu, events);
    if (!summary.trial_balance.balanced) throw new Error('summary of the seeded log does not balance');
    ctx.figures.push({
      suite: 'ledger',
      name: `summary over ${n} ledger events, ${where}`,
      value: summaryRate,
      unit: 'events/s',
      target: '>= 200,000 events/s',
      met: summaryRate >= 200_000,
    });
    // What this process spent per event (reading and decoding the log, folding it): unlike the
    // rates, it hardly changes with what else the machine is doing.
    ctx.figures.push(
      { suite: 'ledger', name: 'verify: CPU of this process per event', value: verifyCpu, unit: 'µs' },
      { suite: 'ledger', name: 'summary: CPU of this process per event', value: summaryCpu, unit: 'µs' },
    );

    await store.close();

    const pairs = await reserveCapturePairs(db, seconds);
    ctx.figures.push({
      suite: 'ledger',
      name: `reserve+capture pairs/s, ${CONCURRENCY} users at once, ${where}`,
      value: pairs.rate,
      unit: 'pairs/s',
    });
    ctx.figures.push({
      suite: 'ledger',
      name: `reserve+capture pair latency p50, ${where}`,
      value: pairs.p50,
      unit: 'ms',
    });
    ctx.figures.push({
      suite: 'ledger',
      name: `reserve+capture pair latency p99, ${where}`,
      value: pairs.p99,
      unit: 'ms',
      target: '< 20 ms',
      met: pairs.p99 < 20,
    });
  } finally {
    ctx.note(`ledger: 1-minute load average ${load()} at the end`);
    await db.close();
    await server?.drop();
  }
}

const elapsed = (started: bigint) => Number(process.hrtime.bigint() - started) / 1e9;

function cpuPerEvent(since: NodeJS.CpuUsage, events: number): number {
  const used = process.cpuUsage(since);
  return (used.user + used.system) / events;
}

/** Each of 32 users, pre-granted, reserves and captures (cost under the hold: capture + release) in a loop. */
async function reserveCapturePairs(
  db: Db,
  seconds: number,
): Promise<{ rate: number; p50: number; p99: number }> {
  const store = createPostgresEventStore(db);
  const commands = new CommandHandler(store, { ids: uuidV7Ids });
  const tag = uuidv7().slice(-8);
  const user = (i: number) => `bench${tag}-${i}`;
  const handle = (i: number, cmd: Omit<LedgerCommand, 'metadata'>) =>
    commands.handle(ledgerDecider, ledgerStream(user(i)), {
      ...cmd,
      metadata: { now: new Date() },
    } as LedgerCommand);
  const pair = async (i: number, n: number) => {
    const holdId = `${i}-${n}`;
    const expiresAt = new Date(Date.now() + 600_000).toISOString();
    await handle(i, {
      type: 'ReserveCredits',
      data: { userId: user(i), holdId, amount: 100, expiresAt, reason: 'bench' },
    });
    await handle(i, {
      type: 'CaptureCredits',
      data: { userId: user(i), holdId, cost: 60, excess: 'forgive' },
    });
  };
  const users = Array.from({ length: CONCURRENCY }, (_, i) => i);
  await Promise.all(
    users.map((i) =>
      handle(i, {
        type: 'GrantCredits',
        data: { userId: user(i), grantId: 'g', amount: 1e12, reason: 'bench' },
      }),
    ),
  );
  await Promise.all(users.map((i) => pair(i, -1))); // warm: statements prepared, states cached
  const latencies: number[] = [];
  const deadline = Date.now() + seconds * 1000;
  const started = process.hrtime.bigint();
  await Promise.all(
    users.map(async (i) => {
      for (let n = 0; Date.now() < deadline; n++) {
        const t = process.hrtime.bigint();
        await pair(i, n);
        latencies.push(Number(process.hrtime.bigint() - t) / 1e6);
      }
    }),
  );
  const rate = latencies.length / elapsed(started);
  await store.close();
  latencies.sort((a, b) => a - b);
  return { rate, p50: percentile(latencies, 50), p99: percentile(latencies, 99) };
}

/**
 * Fills the log directly with valid ledger histories (this measures the reports, not appends):
 * 1,000 users, each granted once, then reserve, capture of part, release of the rest, and a charge
 * or a refund of the last capture, over and over; one second apart per step, users interleaved.
 */
export async function seedLedgerLog(db: Db, events: number): Promise<void> {
  const steps = Math.ceil(events / USERS_IN_LOG);
  const chunk = Math.max(1, Math.floor(100_000 / USERS_IN_LOG));
  for (let k0 = 0; k0 < steps; k0 += chunk) {
    const k1 = Math.min(steps, k0 + chunk) - 1;
    await sql`
      insert into events (event_id, stream_name, revision, category, type, data, metadata)
      select gen_random_uuid(), 'ledger-b' || u, k, 'ledger',
        case when k = 0 then 'CreditsGranted'
             when (k - 1) % 4 = 0 then 'CreditsReserved'
             when (k - 1) % 4 = 1 then 'CreditsCaptured'
             when (k - 1) % 4 = 2 then 'CreditsReleased'
             when ((k - 1) / 4) % 2 = 0 then 'CreditsCharged'
             else 'CreditsRefunded' end,
        case when k = 0 then json_build_object('userId', 'b' || u, 'grantId', 'g', 'amount', 1000000000,
                                               'reason', 'bench', 'grantedAt', at)
             when (k - 1) % 4 = 0 then json_build_object('userId', 'b' || u, 'holdId', 'h' || ((k - 1) / 4),
                                               'amount', 100, 'reason', 'task', 'expiresAt', at, 'reservedAt', at)
             when (k - 1) % 4 = 1 then json_build_object('userId', 'b' || u, 'holdId', 'h' || ((k - 1) / 4),
                                               'amount', 60, 'capturedAt', at)
             when (k - 1) % 4 = 2 then json_build_object('userId', 'b' || u, 'holdId', 'h' || ((k - 1) / 4),
                                               'amount', 40, 'releasedAt', at)
             when ((k - 1) / 4) % 2 = 0 then json_build_object('userId', 'b' || u, 'chargeId', 'c' || ((k - 1) / 4),
                                               'amount', 5, 'reason', 'call', 'holdId', null, 'chargedAt', at)
             else json_build_object('userId', 'b' || u, 'refundId', 'r' || ((k - 1) / 4),
                                    'chargeId', 'h' || ((k - 1) / 4), 'amount', 10, 'reason', 'refund',
                                    'refundedAt', at) end,
        json_build_object('occurredAt', at, 'actorId', null, 'requestId', null, 'correlationId', null,
                          'causationId', null, 'schemaVersion', 1)
      from generate_series(${k0}::int, ${k1}::int) k
      cross join generate_series(1, ${USERS_IN_LOG}::int) u
      cross join lateral (select to_char(timestamp '2026-01-01 00:00:00' + k * interval '1 second',
                                         'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as at) t
      where k * ${USERS_IN_LOG}::int + u <= ${events}::int
      order by k, u`.execute(db.db);
  }
  await sql`
    insert into streams (stream_name, revision)
    select stream_name, max(revision) from events where category = 'ledger' and stream_name like 'ledger-b%'
    group by stream_name
    on conflict (stream_name) do update set revision = excluded.revision`.execute(db.db);
  // A real log has long been vacuumed and analysed; don't measure autovacuum racing a fresh table.
  await sql`vacuum analyze events`.execute(db.db);
}
