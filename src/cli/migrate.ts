import { openDatabaseForCli } from '../platform/db';
import { migrateToLatest } from '../platform/migrate';
import { runCli } from './run';

/** `npm run migrate`: brings the schema up to date (the service also does this at start). */
runCli(async (config, logger) => {
  const db = await openDatabaseForCli(config, logger);
  try {
    const applied = await migrateToLatest(db.db);
    process.stdout.write(applied.length ? `applied: ${applied.join(', ')}\n` : 'schema is up to date\n');
  } finally {
    await db.close();
  }
});
