import { crashTest } from '../../scripts/crash';

/**
 * The crash test's short form (`npm run crash` runs it longer): kill -9 under mixed load, twice,
 * then every 2xx has its effect, every interrupted task is settled with its hold back, and the
 * ledger verifies and reconciles. It needs the PostgreSQL server (a killed embedded database is
 * another matter), so it runs where DATABASE_URL is set, as in CI.
 */
const onServer = process.env.DATABASE_URL ? describe : describe.skip;

onServer('kill -9 under load, then restart', () => {
  it('loses no answered command, leaks no hold, and keeps the ledger whole', async () => {
    const report = await crashTest({ serverUrl: process.env.DATABASE_URL!, rounds: 2 });
    expect(report.problems).toEqual([]);
    expect(report.messages).toBeGreaterThan(0);
    expect(report.tasks).toBeGreaterThan(0);
  }, 240_000);
});
