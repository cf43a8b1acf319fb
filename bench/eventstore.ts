import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sql } from 'kysely';
import { uuidv7 } from 'uuidv7';
import { testConfig } from '../src/platform/config';
import { createPostgresEventStore } from '../src/eventstore/postgres';
import type { Db } from '../src/platform/db';
import { rebuildProjection } from '../src/projections/runner';
import type { Projector } from '../src/projections/types';
import { logger, onServer, openBenchDb, run, serverDatabase, type BenchContext } from './support';

const CONCURRENCY = 32;

/**
 * Appends/s with 32 concurrent appenders (one event per append, each on its own stream at its exact
 * revision, as the command handler appends) beside pgbench's raw single-row insert rate at the same
 * concurrency, and the rate of a rebuild of a simple projection over 1,000,000 events.
 */
export async function eventstoreBench(ctx: BenchContext): Promise<void> {
  const seconds = ctx.quick ? 3 : 30;
  const rebuildEvents = ctx.quick ? 100_000 : 1_000_000;
  if (ctx.serverUrl) {
    const server = await serverDatabase(ctx.serverUrl);
    const db = await openBenchDb(server.config);
    try {
      const raw = await pgbenchInserts(server.url, seconds);
      const sameStatement = await pgbenchAppendStatement(server.url, seconds);
      const appends = await appendRate(db, seconds, CONCURRENCY);
      ctx.figures.push({
        suite: 'eventstore',
        name: `pgbench running the append statement itself, ${CONCURRENCY} clients (the server's share)`,
        value: sameStatement,
        unit: 'appends/s',
        reference: { name: `pgbench raw inserts/s, ${CONCURRENCY} clients`, value: raw },
        ratio: sameStatement / raw,
      });
      ctx.figures.push({
        suite: 'eventstore',
        name: `appends/s, PostgreSQL, ${CONCURRENCY} appenders, 1 event each`,
        value: appends,
        unit: 'appends/s',
        reference: { name: `pgbench raw inserts/s, ${CONCURRENCY} clients`, value: raw },
        ratio: appends / raw,
        target: '>= 60% of pgbench',
        met: appends / raw >= 0.6,
      });
      const rate = await rebuildRate(db, rebuildEvents);
      ctx.figures.push({
        suite: 'eventstore',
        name: `rebuild of a simple projection over ${rebuildEvents.toLocaleString('en-US')} events, PostgreSQL`,
        value: rate,
        unit: 'events/s',
        target: '>= 100,000 events/s',
        met: rate >= 100_000,
      });
    } finally {
      await db.close();
      await server.drop();
    }
  } else {
    ctx.note('DATABASE_URL not set: PostgreSQL server figures skipped (pgbench needs a server).');
  }

  // The embedded database beside the server figures.
  const embedded = await openBenchDb(testConfig());
  try {
    const appends = await appendRate(embedded, Math.min(seconds, 10), CONCURRENCY);
    ctx.figures.push({
      suite: 'eventstore',
      name: `appends/s, embedded PGlite, ${CONCURRENCY} appenders`,
      value: appends,
      unit: 'appends/s',
    });
    const events = ctx.quick ? 25_000 : 200_000;
    const rate = await rebuildRate(embedded, events);
    ctx.figures.push({
      suite: 'eventstore',
      name: `rebuild over ${events.toLocaleString('en-US')} events, embedded PGlite`,
      value: rate,
      unit: 'events/s',
    });
  } finally {
    await embedded.close();
  }
}

async function pgbenchInserts(url: string, seconds: number): Promise<number> {
  await onServer(
    url,
    'create table raw_inserts (id bigserial primary key, stream text not null, data json not null)',
  );
  // A row like an event's: a key, a stream name, a small JSON document.
  return pgbench(
    url,
    seconds,
    `insert into raw_inserts (stream, data) values ('s-' || :client_id, '{"n": 1, "kind": "raw"}');`,
  );
}

/** Transactions/s of one SQL script run by pgbench at the benchmark's concurrency. */
async function pgbench(url: string, seconds: number, statement: string): Promise<number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgbench-'));
  const script = path.join(dir, 'script.sql');
  fs.writeFileSync(script, `${statement}\n`);
  try {
    const { stdout } = await run(
      'pgbench',
      [
        '-n',
        '-c',
        String(CONCURRENCY),
        '-j',
        '2',
        '-T',
        String(seconds),
        '-f',
        script,
        '-M',
        'prepared',
        url,
      ],
      { maxBuffer: 1 << 24 },
    );
    const m = /tps = ([\d.]+)/.exec(stdout);
    if (!m) throw new Error(`cannot read pgbench output:\n${stdout}`);
    return Number(m[1]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The append statement as the store sends it (the `any` form, one event), driven by pgbench: what
 * the server alone can do, so the table separates the statement's cost from the client's.
 */
async function pgbenchAppendStatement(url: string, seconds: number): Promise<number> {
  return pgbench(
    url,
    seconds,
    `with s as (insert into streams (stream_name, revision) values ('pgbench-' || :client_id, 0)
      on conflict (stream_name) do update set revision = streams.revision + 1 returning revision)
    insert into events (event_id, stream_name, revision, category, type, data, metadata)
    select (v.e->>'id')::uuid, 'pgbench-' || :client_id, s.revision - 1 + v.ord, 'pgbench', v.e->>'type', v.e->'data', v.e->'metadata'
    from s, json_array_elements(('[{"id":"' || gen_random_uuid() || '","type":"BenchAppended","data":{"n":1,"kind":"bench"},"metadata":{"occurredAt":"' || now() || '","schemaVersion":1}}]')::json) with ordinality as v(e, ord)
    order by v.ord
    returning position, txid::text as txid, revision;`.replace(/\n\s+/g, ' '),
  );
}

async function appendRate(db: Db, seconds: number, concurrency: number): Promise<number> {
  const store = createPostgresEventStore(db);
  const deadline = Date.now() + seconds * 1000;
  const started = Date.now();
  let appends = 0;
  const tag = uuidv7().slice(-8);
  await Promise.all(
    Array.from({ length: concurrency }, async (_, i) => {
      let revision: bigint | 'no_stream' = 'no_stream';
      while (Date.now() < deadline) {
        const r = await store.append(
          `bench-${tag}${i}`,
          [
            {
              id: uuidv7(),
              type: 'BenchAppended',
              data: { n: appends, kind: 'bench' },
              metadata: { occurredAt: new Date().toISOString(), schemaVersion: 1 },
            },
          ],
          revision,
        );
        revision = r.nextExpectedRevision;
        appends++;
      }
    }),
  );
  const rate = appends / ((Date.now() - started) / 1000);
  await store.close();
  return rate;
}

/** A simple projection: events per stream category and type, kept as counters. */
const categoryCounts: Projector = {
  name: 'bench_category_counts',
  version: 1,
  eventTypes: ['BenchRecorded'],
  tables: ['bench_category_counts'],
  async apply(trx, events) {
    const counts = new Map<string, number>();
    for (const e of events) {
      const key = `${e.streamName.slice(0, e.streamName.indexOf('-'))}|${e.type}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    const keys = [...counts.keys()];
    await sql`
      insert into bench_category_counts (category, type, events)
      select split_part(k, '|', 1), split_part(k, '|', 2), n
      from unnest(${keys}::text[], ${keys.map((k) => counts.get(k)!)}::int[]) as u(k, n)
      on conflict (category, type) do update set events = bench_category_counts.events + excluded.events`.execute(
      trx,
    );
  },
};

async function rebuildRate(db: Db, events: number): Promise<number> {
  await sql`create table if not exists bench_category_counts (
    category text not null, type text not null, events bigint not null, primary key (category, type))`.execute(
    db.db,
  );
  // Fill the log directly (this measures the rebuild, not appends): 1,000 streams in 10 categories.
  const chunk = 100_000;
  for (let offset = 0; offset < events; offset += chunk) {
    const n = Math.min(chunk, events - offset);
    await sql`
      insert into events (event_id, stream_name, revision, category, type, data, metadata)
      select gen_random_uuid(), 'cat' || (g % 10) || '-' || (g % 1000), ${offset} + g, 'cat' || (g % 10),
             'BenchRecorded', json_build_object('n', g, 'note', 'a small payload'),
             json_build_object('occurredAt', now(), 'schemaVersion', 1)
      from generate_series(1, ${n}) g`.execute(db.db);
  }
  // A real log has long been vacuumed and analysed; don't measure autovacuum racing a fresh table.
  await sql`vacuum analyze events`.execute(db.db);
  const store = createPostgresEventStore(db);
  const started = process.hrtime.bigint();
  await rebuildProjection(db, store, categoryCounts, logger, 10_000);
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  const total = await sql<{ n: string }>`select sum(events) as n from bench_category_counts`.execute(db.db);
  if (Number(total.rows[0]?.n) !== events)
    throw new Error(`rebuild counted ${total.rows[0]?.n}, expected ${events}`);
  await store.close();
  return events / secs;
}
