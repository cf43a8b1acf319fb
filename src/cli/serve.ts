import { ensureAdmin } from '../commands/users/identity';
import { createApp } from '../http/app';
import { identityDeps } from '../http/identityDeps';
import { allResources } from '../http/resources';
import { sweepIdempotencyKeys } from '../http/middleware/idempotency';
import { startHttpServer } from '../http/server';
import { listOverdueTasks } from '../queries/tasks';
import { buildSystem } from '../system';
import { runCli } from './run';

/** `npm start`: migrate, start the projection runners, serve HTTP; SIGTERM/SIGINT shut down gracefully. */
runCli(async (config, logger) => {
  const system = await buildSystem(config, logger, { role: 'service' });
  if (config.PROJECTIONS_ENABLED) {
    await system.projections.start();
    system.holdExpiry.start();
    system.tasks.startSweeper(config.TASK_SWEEP_INTERVAL_MS, (before) =>
      listOverdueTasks(system.db.db, before, 100),
    );
  }
  if (config.ADMIN_USERNAME && config.ADMIN_PASSWORD) {
    const admin = await ensureAdmin(
      identityDeps(system),
      { username: config.ADMIN_USERNAME, password: config.ADMIN_PASSWORD, provePassword: true },
      { requestId: 'startup' },
    );
    if (admin.refused) {
      logger.error(
        { userId: admin.userId },
        'ADMIN_USERNAME belongs to a user whose password is not ADMIN_PASSWORD: not made admin (use npm run admin -- create)',
      );
    } else if (admin.created || admin.promoted) logger.info(admin, 'admin ready');
  }
  const app = createApp(system, allResources);
  const server = await startHttpServer(app, config, logger);
  // Idempotency keys are kept a day: long enough for any client's retries.
  const sweep = setInterval(() => {
    sweepIdempotencyKeys(system.db.db, 24 * 3600_000).catch((err: unknown) =>
      logger.warn({ err }, 'idempotency key sweep failed'),
    );
  }, 3600_000);
  sweep.unref();
  logger.info(
    {
      port: server.port,
      database: system.db.kind,
      eventstore: system.store.name,
      redis: Boolean(system.redis),
    },
    `serving on http://${config.HOST === '0.0.0.0' ? 'localhost' : config.HOST}:${server.port}`,
  );
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal }, 'shutting down');
      void (async () => {
        clearInterval(sweep);
        const closing = server.close(); // stop accepting, finish in-flight requests
        // Generations finish (or are stopped and settled), which ends their event streams.
        await system.tasks.close(config.SHUTDOWN_TIMEOUT_MS / 2);
        await closing;
        await system.holdExpiry.stop();
        await system.projections.stop();
        await system.close(); // event store, Redis, pools, embedded database
        logger.info('stopped');
        resolve(0);
      })();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
});
