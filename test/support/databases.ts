import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { testConfig, type Config } from '../../src/platform/config';
import { openDatabase, type Db } from '../../src/platform/db';
import { createLogger } from '../../src/platform/logger';
import { migrateToLatest } from '../../src/platform/migrate';
import { createPostgresEventStore } from '../../src/eventstore/postgres';
import type { EventStore } from '../../src/eventstore/port';

export type DatabaseKind = 'pglite' | 'postgres';

export interface TestDatabase {
  db: Db;
  config: Config;
  close(): Promise<void>;
}

/** The databases integration tests run against: PGlite always, the server when DATABASE_URL is set. */
export function testDatabases(): DatabaseKind[] {
  return process.env.DATABASE_URL ? ['pglite', 'postgres'] : ['pglite'];
}

/** A migrated database no other test sees: a fresh in-memory PGlite, or a fresh database on the server. */
export async function openTestDatabase(kind: DatabaseKind): Promise<TestDatabase> {
  const logger = createLogger({ LOG_LEVEL: 'silent' });
  if (kind === 'pglite') {
    const config = testConfig();
    const db = await openDatabase(config, logger);
    await migrateToLatest(db.db);
    return { db, config, close: () => db.close() };
  }

  const serverUrl = process.env.DATABASE_URL;
  if (!serverUrl) throw new Error('openTestDatabase("postgres") needs DATABASE_URL');
  const name = `t_${randomBytes(6).toString('hex')}`;
  await onServer(serverUrl, `create database "${name}"`);
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  const config = testConfig({ DATABASE_URL: url.toString(), DATABASE_POOL_SIZE: 20 });
  const drop = () => onServer(serverUrl, `drop database if exists "${name}" with (force)`);
  let db: Db | undefined;
  try {
    db = await openDatabase(config, logger);
    await migrateToLatest(db.db);
    const opened = db;
    return {
      db,
      config,
      async close() {
        try {
          await opened.close();
        } finally {
          await drop();
        }
      },
    };
  } catch (err) {
    await db?.close().catch(() => undefined);
    await drop();
    throw err;
  }
}

/** Runs one statement on the server (create or drop a database) over a short-lived connection. */
export async function onServer(url: string, statement: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(statement);
  } finally {
    await client.end();
  }
}

/** A fresh database with the postgres event store on it; close() closes both. */
export async function openTestStore(kind: DatabaseKind): Promise<TestDatabase & { store: EventStore }> {
  const t = await openTestDatabase(kind);
  const store = createPostgresEventStore(t.db);
  return {
    ...t,
    store,
    async close() {
      await store.close();
      await t.close();
    },
  };
}
