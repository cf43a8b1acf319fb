import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { CommandHandler } from './commands/handler';
import { createLedgerCommands } from './commands/ledger/credits';
import { LocalTasks, TaskFlow } from './commands/tasks/flow';
import { createHoldExpiryScheduler, type HoldExpiryScheduler } from './commands/ledger/holdExpiry';
import { createKurrentDbEventStore } from './eventstore/kurrentdb';
import { createPostgresEventStore } from './eventstore/postgres';
import type { EventStore } from './eventstore/port';
import { systemClock, uuidV7Ids, type Clock, type IdGenerator } from './platform/clock';
import type { Config } from './platform/config';
import { openDatabase, openDatabaseForCli, type Db } from './platform/db';
import type { Logger } from './platform/logger';
import { createModelCatalog } from './platform/llm/catalog';
import type { ModelCatalog } from './platform/llm/types';
import { createMetrics, type Metrics } from './platform/metrics';
import { migrateToLatest } from './platform/migrate';
import { createMemoryTaskBuffer, createRedisTaskBuffer, type TaskBuffer } from './platform/taskBuffer';
import { createRateLimits, type RateLimits } from './platform/rateLimits';
import { createSignInProviders, type SignInProviders } from './platform/identity';
import { allProjectors } from './projections';
import { createSessionGuard, type SessionGuard } from './queries/sessionGuard';
import { createProjectionEngine, type RunningProjectionEngine } from './projections/runner';
import type { Projector } from './projections/types';

/** The service's parts, wired by argument. The HTTP app and the CLIs are built on top. */
export interface System {
  config: Config;
  logger: Logger;
  db: Db;
  store: EventStore;
  projections: RunningProjectionEngine;
  commands: CommandHandler;
  metrics: Metrics;
  redis: Redis | undefined;
  clock: Clock;
  ids: IdGenerator;
  sessionGuard: SessionGuard;
  rateLimits: RateLimits;
  /** WeChat, Apple and SMS sign-in adapters, from the configuration. */
  signIn: SignInProviders;
  /** Gives back expired holds; started with the projections (`PROJECTIONS_ENABLED`). */
  holdExpiry: HoldExpiryScheduler;
  /** Task output on its way to its stream: memory, or Redis Streams with Redis. */
  buffer: TaskBuffer;
  /** Starts, streams, cancels, settles and sweeps tasks. */
  tasks: TaskFlow;
  /** The models offered and their providers (MODELS_FILE / MODELS_JSON, else the built-in one). */
  models: ModelCatalog;
  close(): Promise<void>;
}

export interface BuildOptions {
  /** `serve`: hold the embedded database and serve it to CLIs. CLIs: use the service's, if running. */
  role: 'service' | 'cli';
  projectors?: Projector[];
  clock?: Clock;
  ids?: IdGenerator;
}

/** Opens the database (migrating it), the event store, Redis and the projection engine. */
export async function buildSystem(config: Config, logger: Logger, options: BuildOptions): Promise<System> {
  const db =
    options.role === 'service'
      ? await openDatabase(config, logger, { serveEmbedded: true })
      : await openDatabaseForCli(config, logger);
  const closers: (() => Promise<unknown>)[] = [() => db.close()];
  try {
    await migrateToLatest(db.db);
    const metrics = createMetrics();
    const store = openEventStore(config, db, logger, metrics);
    closers.unshift(() => store.close());
    const ids = options.ids ?? uuidV7Ids;
    const commands = new CommandHandler(store, {
      ids,
      maxRetries: config.COMMAND_MAX_RETRIES,
      cacheSize: config.STREAM_CACHE_SIZE,
      logger,
    });
    const clock = options.clock ?? systemClock;
    const localTasks = new LocalTasks();
    const projections = createProjectionEngine({
      db,
      store,
      logger,
      projectors: options.projectors ?? allProjectors(commands, { config, clock, localTasks }),
      batchSize: config.PROJECTION_BATCH_SIZE,
      onApplied: metrics.onApplied,
    });
    closers.unshift(() => projections.stop());
    const redis = config.REDIS_URL ? openRedis(config.REDIS_URL, logger) : undefined;
    if (redis) closers.unshift(() => redis.quit().catch(() => redis.disconnect()));
    const ledger = createLedgerCommands({ commands, config, clock });
    const models = createModelCatalog(config, { logger: logger.child({ component: 'llm' }) });
    const buffer = redis ? createRedisTaskBuffer(redis, logger) : createMemoryTaskBuffer();
    closers.unshift(() => buffer.close());
    const tasks = new TaskFlow({
      commands,
      ledger,
      models,
      buffer,
      clock,
      ids,
      logger: logger.child({ component: 'tasks' }),
      config,
      redis,
      localTasks,
      metrics: metrics.tasks,
    });
    closers.unshift(() => tasks.close());
    const holdExpiry = createHoldExpiryScheduler({
      db,
      ledger,
      clock,
      logger: logger.child({ component: 'hold-expiry' }),
      metrics,
      intervalMs: config.HOLD_EXPIRY_INTERVAL_MS,
    });
    closers.unshift(() => holdExpiry.stop());
    const sessionGuard = createSessionGuard({
      db: db.db,
      redis,
      clock,
      cacheMs: config.AUTH_CACHE_MS,
      markTtlSeconds: config.ACCESS_TOKEN_TTL_SECONDS,
    });
    return {
      config: { ...config, JWT_SECRET: config.JWT_SECRET ?? embeddedJwtSecret(config) },
      logger,
      db,
      store,
      projections,
      commands,
      metrics,
      redis,
      clock,
      ids,
      sessionGuard,
      rateLimits: createRateLimits(config, redis, logger),
      signIn: createSignInProviders(config, logger),
      models,
      holdExpiry,
      buffer,
      tasks,
      async close() {
        for (const close of closers)
          await close().catch((err: unknown) => logger.warn({ err }, 'close failed'));
      },
    };
  } catch (err) {
    for (const close of closers) await close().catch(() => undefined);
    throw err;
  }
}

function openEventStore(config: Config, db: Db, logger: Logger, metrics: Metrics): EventStore {
  const url = config.EVENTSTORE_URL;
  // KurrentDB, or EventStoreDB by its older scheme; `+discover` finds the cluster through DNS.
  if (url && /^(kurrentdb|esdb)(\+discover)?:\/\//.test(url)) {
    return createKurrentDbEventStore(url, { logger, onAppend: metrics.onAppend });
  }
  if (url && !url.startsWith('postgres')) {
    throw new Error(`EVENTSTORE_URL ${new URL(url).protocol} is not supported by this build`);
  }
  if (url && url !== config.DATABASE_URL) {
    throw new Error(
      'EVENTSTORE_URL: the postgres event store lives in the DATABASE_URL database; leave it unset',
    );
  }
  return createPostgresEventStore(db, { logger, onAppend: metrics.onAppend });
}

export function openRedis(url: string, logger: Logger): Redis {
  // Fail fast instead of queueing: a Redis outage must not stall requests (callers fall back).
  const redis = new Redis(url, { lazyConnect: false, maxRetriesPerRequest: 1, enableOfflineQueue: false });
  let down = false;
  redis.on('error', (err) => {
    if (!down) logger.warn({ err: err.message }, 'redis unavailable');
    down = true;
  });
  redis.on('ready', () => {
    if (down) logger.info('redis back');
    down = false;
  });
  return redis;
}

/**
 * With nothing configured, tokens are signed with a secret made on first start and kept in the data
 * directory (never in the repository), so logins survive a restart.
 */
function embeddedJwtSecret(config: Config): string {
  if (config.DATA_DIR === 'memory://' || config.DATA_DIR === ':memory:')
    return randomBytes(32).toString('hex');
  const file = path.join(path.resolve(config.DATA_DIR), 'jwt-secret');
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    const secret = randomBytes(32).toString('hex');
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, secret, { mode: 0o600 });
    return secret;
  }
}
