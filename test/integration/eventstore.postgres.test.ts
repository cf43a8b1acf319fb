import { sql } from 'kysely';
import { setTimeout as sleep } from 'node:timers/promises';
import { createPostgresEventStore } from '../../src/eventstore/postgres';
import { openTestDatabase, testDatabases } from '../support/databases';
import { eventStoreContract, type OpenedStore } from './eventstore.contract';

describe.each(testDatabases())('on %s', (kind) => {
  eventStoreContract('postgres event store', async (): Promise<OpenedStore> => {
    const database = await openTestDatabase(kind);
    const store = createPostgresEventStore(database.db);
    const opened: OpenedStore = {
      store,
      async close() {
        await store.close();
        await database.close();
      },
    };
    // PGlite has one session: a held transaction would only pause every writer, never be overtaken.
    if (kind === 'postgres') {
      opened.holdTransaction = (ms) =>
        database.db.db.transaction().execute(async (trx) => {
          await sql`select pg_current_xact_id()`.execute(trx);
          await sleep(ms);
        });
    }
    return opened;
  });
});
