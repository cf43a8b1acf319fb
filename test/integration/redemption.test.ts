import { CommandHandler } from '../../src/commands/handler';
import { CodeNotRedeemable, codeDecider } from '../../src/commands/codes/decider';
import { redeemCode, redemptionReactor } from '../../src/commands/codes/redeem';
import type { EventStore } from '../../src/eventstore/port';
import { codeStream } from '../../src/events/codes';
import { ledgerStream } from '../../src/events/ledger';
import { uuidV7Ids } from '../../src/platform/clock';
import { ConcurrencyConflict } from '../../src/platform/errors';
import { createLogger } from '../../src/platform/logger';
import { createProjectionEngine } from '../../src/projections/runner';
import { openTestStore, testDatabases, type TestDatabase } from '../support/databases';

const now = new Date();

describe.each(testDatabases())('redeeming codes on %s', (kind) => {
  let t: TestDatabase;
  let store: EventStore;
  beforeAll(async () => {
    ({ store, ...t } = await openTestStore(kind));
  });
  afterAll(() => t.close());

  const issue = (commands: CommandHandler, code: string, maxUses: number) =>
    commands.handle(codeDecider, codeStream(code), {
      type: 'IssueCode',
      data: { code, amount: 50, maxUses, expiresAt: null, batchId: 'b', issuedBy: 'admin' },
      metadata: { now },
    });
  const credits = async (userId: string) =>
    (await store.readStream(ledgerStream(userId))).filter((e) => e.type === 'CodeRedeemed').length;

  it('lets exactly max_uses of 100 parallel redemptions by different users win, across instances', async () => {
    // Four service instances, each with its own handler and cache, racing on one code stream.
    const instances = Array.from(
      { length: 4 },
      () => new CommandHandler(store, { ids: uuidV7Ids, maxRetries: 100 }),
    );
    await issue(instances[0]!, 'RACE3', 3);
    const results = await Promise.allSettled(
      Array.from({ length: 100 }, (_, i) =>
        redeemCode(instances[i % 4]!, { code: 'RACE3', userId: `u${i}`, now }),
      ),
    );
    const won = results.filter((r) => r.status === 'fulfilled');
    expect(won).toHaveLength(3);
    for (const r of results) {
      // The losers are told the code is used up, or (rarely, after many lost races) to try again.
      if (r.status === 'rejected') {
        expect(r.reason instanceof CodeNotRedeemable || r.reason instanceof ConcurrencyConflict).toBe(true);
      }
    }
    const uses = (await store.readStream(codeStream('RACE3'))).filter((e) => e.type === 'CodeUsed');
    expect(uses).toHaveLength(3);
    let total = 0;
    for (let i = 0; i < 100; i++) total += await credits(`u${i}`);
    expect(total).toBe(3);
    for (const r of won) expect(r.value).toMatchObject({ balance: 50, available: 50, redeemed: 50 });
  });

  it('lets one user redeem a code once, even in parallel', async () => {
    const a = new CommandHandler(store, { ids: uuidV7Ids, maxRetries: 100 });
    const b = new CommandHandler(store, { ids: uuidV7Ids, maxRetries: 100 });
    await issue(a, 'TWICE', 10);
    const results = await Promise.allSettled(
      Array.from({ length: 10 }, (_, i) =>
        redeemCode(i % 2 ? a : b, { code: 'TWICE', userId: 'same-user', now }),
      ),
    );
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    expect(await credits('same-user')).toBe(1);
  });

  it('completes a use whose credit did not land, exactly once, when the process died between the steps', async () => {
    const commands = new CommandHandler(store, { ids: uuidV7Ids });
    await issue(commands, 'CRASH', 5);
    // Step one only: the use is recorded, then the process "dies" before crediting.
    await commands.handle(codeDecider, codeStream('CRASH'), {
      type: 'UseCode',
      data: { code: 'CRASH', userId: 'crashed' },
      metadata: { now },
    });
    // And one redemption that completed normally: the reactor must not credit it again.
    await redeemCode(commands, { code: 'CRASH', userId: 'completed', now });
    expect(await credits('crashed')).toBe(0);

    const logger = createLogger({ LOG_LEVEL: 'silent' });
    for (let run = 0; run < 2; run++) {
      // A fresh instance each time (its own cache), as after a restart; the second run replays from START.
      if (run === 1)
        await t.db.db.deleteFrom('projection_checkpoints').where('name', '=', 'redemption_reactor').execute();
      const reactor = redemptionReactor(new CommandHandler(store, { ids: uuidV7Ids }));
      const engine = createProjectionEngine({ db: t.db, store, logger, projectors: [reactor] });
      await engine.start();
      const head = await store.head();
      expect(await engine.waitFor(['redemption_reactor'], head.position, 30_000)).toBe(true);
      await engine.stop();
      expect(await credits('crashed')).toBe(1);
      expect(await credits('completed')).toBe(1);
    }
  });
});
