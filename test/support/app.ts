import supertest from 'supertest';
import { CommandHandler } from '../../src/commands/handler';
import { createKurrentDbEventStore } from '../../src/eventstore/kurrentdb';
import { createPostgresEventStore } from '../../src/eventstore/postgres';
import { startKurrentDbTestServer } from './kurrentdb/server';
import { createApp, type App, type AppDeps, type Resource } from '../../src/http/app';
import { systemClock, uuidV7Ids } from '../../src/platform/clock';
import { testConfig, type Config } from '../../src/platform/config';
import { openDatabase } from '../../src/platform/db';
import { createLedgerCommands } from '../../src/commands/ledger/credits';
import { LocalTasks, TaskFlow } from '../../src/commands/tasks/flow';
import { userDecider } from '../../src/commands/users/decider';
import { userStream } from '../../src/events/users';
import { createModelCatalog } from '../../src/platform/llm/catalog';
import {
  createMemoryTaskBuffer,
  createRedisTaskBuffer,
  type TaskBuffer,
} from '../../src/platform/taskBuffer';
import { createLogger } from '../../src/platform/logger';
import { createMetrics } from '../../src/platform/metrics';
import { migrateToLatest } from '../../src/platform/migrate';
import { createRateLimits } from '../../src/platform/rateLimits';
import { createSessionGuard } from '../../src/queries/sessionGuard';
import { createProjectionEngine, type RunningProjectionEngine } from '../../src/projections/runner';
import type { Projector } from '../../src/projections/types';

export interface TestAppOptions {
  config?: Partial<Config>;
  resources?: Resource[];
  /** Read models and reactors; a function gets the app's command handler (reactors run commands). */
  projectors?:
    | Projector[]
    | ((commands: CommandHandler, options: { config: Config; localTasks: LocalTasks }) => Projector[]);
  /** Replace any dependency (a store whose ping fails, a logger that records...). */
  deps?: Partial<AppDeps>;
  /** Start the projection runners (default true). */
  startProjections?: boolean;
}

export interface TestApp {
  app: App;
  deps: AppDeps;
  engine: RunningProjectionEngine;
  /** supertest against the app (a fresh ephemeral server per request). */
  http: ReturnType<typeof supertest>;
  close(): Promise<void>;
}

/** The whole app on a fresh in-memory PGlite: real event store, real projection engine. */
export async function createTestApp(options: TestAppOptions = {}): Promise<TestApp> {
  const config = testConfig(options.config);
  const logger = options.deps?.logger ?? createLogger(config);
  const db = await openDatabase(config, logger);
  let engine: RunningProjectionEngine | undefined;
  let stopKurrent: (() => Promise<void>) | undefined;
  try {
    await migrateToLatest(db.db);
    const metrics = options.deps?.metrics ?? createMetrics();
    // E2E_EVENTSTORE=kurrentdb runs the suite on the KurrentDB adapter against the in-process test server.
    const kurrent = process.env.E2E_EVENTSTORE === 'kurrentdb' ? await startKurrentDbTestServer() : undefined;
    const store = kurrent
      ? createKurrentDbEventStore(kurrent.url, { logger, onAppend: metrics.onAppend })
      : createPostgresEventStore(db, { logger, onAppend: metrics.onAppend });
    stopKurrent = kurrent ? () => kurrent.stop() : undefined;
    const commands = new CommandHandler(store, { ids: uuidV7Ids });
    // Shared by the task flow and its settlement reactor, as in the service.
    const localTasks = new LocalTasks();
    const projectors =
      typeof options.projectors === 'function'
        ? options.projectors(commands, { config, localTasks })
        : options.projectors;
    engine = createProjectionEngine({
      db,
      store,
      logger,
      projectors: projectors ?? [],
      batchSize: config.PROJECTION_BATCH_SIZE,
      onApplied: metrics.onApplied,
    });
    const deps: AppDeps = {
      config,
      logger,
      db,
      store,
      commands,
      projections: engine,
      metrics,
      clock: systemClock,
      ids: uuidV7Ids,
      sessionGuard: createSessionGuard({
        db: db.db,
        redis: options.deps?.redis,
        clock: options.deps?.clock ?? systemClock,
        cacheMs: config.AUTH_CACHE_MS,
        markTtlSeconds: config.ACCESS_TOKEN_TTL_SECONDS,
      }),
      rateLimits: createRateLimits(config, options.deps?.redis, logger),
      // The built-in model unless the config names a catalog (e.g. MODELS_JSON pointing at the fake provider).
      models: createModelCatalog(config),
      ...options.deps,
    };
    const buffer = (deps.buffer ??= deps.redis
      ? createRedisTaskBuffer(deps.redis, logger)
      : createMemoryTaskBuffer());
    const tasks = (deps.tasks ??= taskFlowOf({ ...deps, buffer }, commands, localTasks));
    const app = createApp(deps, options.resources ?? []);
    if (options.startProjections ?? true) await engine.start();
    const running = engine;
    return {
      app,
      deps,
      engine: running,
      http: supertest(app.callback()),
      async close() {
        await tasks.close(1_000);
        await buffer.close();
        await running.stop();
        await store.close();
        await stopKurrent?.();
        await db.close();
      },
    };
  } catch (err) {
    // A failed setup must not leave the database open (jest would hang on it).
    await engine?.stop().catch(() => undefined);
    await stopKurrent?.().catch(() => undefined);
    await db.close().catch(() => undefined);
    throw err;
  }
}

/**
 * The task flow of an app's dependencies, on `commands`: the test app's own, or a second
 * instance's (a command handler of its own, so nothing it does waits on the first one's).
 */
export function taskFlowOf(
  deps: AppDeps & { buffer: TaskBuffer },
  commands: CommandHandler,
  localTasks?: LocalTasks,
): TaskFlow {
  const { config, clock } = deps;
  return new TaskFlow({
    commands,
    ledger: createLedgerCommands({ commands, config, clock }),
    models: deps.models,
    buffer: deps.buffer,
    clock,
    ids: deps.ids,
    logger: deps.logger,
    config,
    redis: deps.redis,
    metrics: deps.metrics.tasks,
    ...(localTasks ? { localTasks } : {}),
  });
}

/**
 * A registered user of a chosen id (no password, no sign-up grant), for tests that act on a user
 * by a readable id and sign in with a minted token.
 */
let signUps = 0;

/** A user signed up and signed in through the API (a unique name from `prefix`): its id and bearer header. */
export async function signedInUser(
  t: Pick<TestApp, 'http'>,
  prefix: string,
): Promise<{ id: string; auth: string }> {
  const username = `${prefix}_${process.pid}_${++signUps}`;
  const password = 'correct horse';
  const reg = await t.http.post('/api/v1/users').send({ username, password });
  if (reg.status !== 201) throw new Error(`sign-up: ${reg.status} ${JSON.stringify(reg.body)}`);
  const res = await t.http.post('/api/v1/session/oauth2/token').type('form').send({ username, password });
  if (res.status !== 200) throw new Error(`sign-in: ${res.status} ${JSON.stringify(res.body)}`);
  return { id: reg.body.id as string, auth: `Bearer ${res.body.access_token as string}` };
}

export async function registeredUser(t: Pick<TestApp, 'deps'>, userId: string): Promise<void> {
  await t.deps.commands.handle(userDecider, userStream(userId), {
    type: 'RegisterUser',
    data: {
      userId,
      username: `u_${userId.replace(/[^A-Za-z0-9_]/g, '_')}`.slice(0, 32),
      email: null,
      nickname: userId,
      passwordHash: null,
      permission: 0,
      method: 'password',
    },
    metadata: { now: new Date() },
  });
}
