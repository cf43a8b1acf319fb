import { serverDatabase, openBenchDb } from './bench/support';
import { createPostgresEventStore } from './src/eventstore/postgres';
import { uuidv7 } from 'uuidv7';
(async () => {
  const s = await serverDatabase(process.env.PGURL ?? 'postgres://postgres@127.0.0.1:5432/test');
  const db = await openBenchDb(s.config);
  const store = createPostgresEventStore(db);
  const t0 = Date.now(); const cpu0 = process.cpuUsage();
  let n = 0; const deadline = Date.now() + 5000;
  await Promise.all(Array.from({ length: 32 }, async (_, i) => {
    let rev: bigint | 'no_stream' = 'no_stream';
    while (Date.now() < deadline) {
      const r = await store.append(`b-${i}`, [{ id: uuidv7(), type: 'X', data: { n }, metadata: { occurredAt: '', schemaVersion: 1 } }], rev);
      rev = r.nextExpectedRevision; n++;
    }
  }));
  const el = (Date.now() - t0) / 1000; const cpu = process.cpuUsage(cpu0);
  console.log({ rate: n / el, nodeCpuPct: ((cpu.user + cpu.system) / 1e6 / el * 100).toFixed(0) });
  await store.close(); await db.close(); await s.drop();
})();
