import { sql } from 'kysely';
import { CommandHandler } from '../../src/commands/handler';
import { createPostgresEventStore } from '../../src/eventstore/postgres';
import { uuidV7Ids } from '../../src/platform/clock';
import { createLogger } from '../../src/platform/logger';
import { down as down0013 } from '../../src/platform/migrations/0013_task_list_filters';
import { allProjectors } from '../../src/projections';
import {
  REBUILD_TRANSACTION_EVENTS,
  createProjectionEngine,
  rebuildProjection,
} from '../../src/projections/runner';
import type { Projector } from '../../src/projections/types';
import { counterProjector, counterRows, createCounterTable } from '../support/counter';
import { openTestDatabase, testDatabases } from '../support/databases';

const logger = createLogger({ LOG_LEVEL: 'silent' });

describe.each(testDatabases())('rebuilding a read model on %s', (kind) => {
  it('keeps the names the migrations gave its indexes, which later migrations refer to', async () => {
    const t = await openTestDatabase(kind);
    const store = createPostgresEventStore(t.db);
    try {
      const names = async () =>
        (
          await sql<{ indexname: string }>`select indexname from pg_indexes
            where schemaname = 'public'
              and tablename in ('tasks', 'chats', 'chat_messages', 'users', 'sessions', 'presets', 'codes')
            order by indexname`.execute(t.db.db)
        ).rows.map((r) => r.indexname);
      const before = await names();
      expect(before).toContain('tasks_user_status');
      const engine = createProjectionEngine({
        db: t.db,
        store,
        logger,
        projectors: allProjectors(new CommandHandler(store, { ids: uuidV7Ids })),
      });
      for (const name of ['tasks', 'chats', 'users', 'sessions', 'presets', 'codes']) {
        await engine.rebuild(name);
      }
      expect(await names()).toEqual(before);
      // The migration's own way back, which drops an index by name, still works.
      await expect(down0013(t.db.db as never)).resolves.toBeUndefined();
    } finally {
      await store.close();
      await t.close();
    }
  });

  it('applies its events in short transactions, which hold back no live read model for long', async () => {
    // The PostgreSQL store reads no event above the oldest running transaction: one long rebuild
    // transaction kept every live read model (and read-your-writes) waiting for it.
    const t = await openTestDatabase(kind);
    const store = createPostgresEventStore(t.db);
    try {
      await createCounterTable(t.db.db);
      const count = 2 * REBUILD_TRANSACTION_EVENTS + 500;
      const now = new Date().toISOString();
      for (let i = 0; i < count; i += 500) {
        const events = Array.from({ length: 500 }, () => ({
          id: uuidV7Ids.next(),
          type: 'CounterIncremented',
          data: { by: 1 },
          metadata: { occurredAt: now, schemaVersion: 1 },
        }));
        await store.append(`counter-${i % 1000}`, events, 'any');
      }
      const inner = counterProjector();
      /** Events applied, by the transaction that applied them. */
      const perTransaction = new Map<string, number>();
      const counted: Projector = {
        ...inner,
        async apply(trx, events) {
          const { rows } = await sql<{ tx: string }>`select txid_current()::text as tx`.execute(trx);
          const tx = rows[0]!.tx;
          perTransaction.set(tx, (perTransaction.get(tx) ?? 0) + events.length);
          await inner.apply(trx, events);
        },
      };
      await rebuildProjection(t.db, store, counted, logger, 10_000);
      expect([...perTransaction.values()].reduce((a, b) => a + b, 0)).toBe(count);
      expect(Math.max(...perTransaction.values())).toBeLessThanOrEqual(REBUILD_TRANSACTION_EVENTS);
      expect(await counterRows(t.db.db)).toEqual([
        { stream_name: 'counter-0', value: 1500, events: 1500 },
        { stream_name: 'counter-500', value: 1000, events: 1000 },
      ]);
    } finally {
      await store.close();
      await t.close();
    }
  });
});
