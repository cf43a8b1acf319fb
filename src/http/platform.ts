import type { OpenAPIRegistry } from '@asteasolutions/zod-to-openapi';
import { sql } from 'kysely';
import { DependencyDown } from '../platform/errors';
import { registerDocs } from './docs';
import { generateOpenApiDocument, type OpenApiDocument } from './openapi';
import type { AppDeps, AppRouter } from './types';

/** Each readiness check gets this long: a hung dependency must not hang the probe. */
export const READY_CHECK_TIMEOUT_MS = 1_000;

type CheckResult = 'up' | 'down' | 'not configured';

async function withTimeout<T>(work: () => Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([work(), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Dependencies the service can serve without, in a documented degraded way. */
const DEGRADABLE = new Set(['redis']);

/** The routes outside /api/v1: /health, /ready, /metrics, /openapi.json, /docs. */
export function registerPlatformRoutes(router: AppRouter, deps: AppDeps, openapi: OpenAPIRegistry): void {
  const checks: Record<string, (() => Promise<unknown>) | undefined> = {
    database: () => sql`select 1`.execute(deps.db.db),
    eventstore: async () => {
      await deps.store.ping();
      const down = deps.store.health?.().subscriptionsDown ?? 0;
      if (down > 0) throw new Error(`${down} event store subscription(s) down`);
    },
    redis: deps.redis ? () => deps.redis!.ping() : undefined,
  };

  router.get('/health', (ctx) => {
    ctx.set('Cache-Control', 'no-store');
    ctx.body = { status: 'ok' };
  });

  router.get('/ready', async (ctx) => {
    ctx.set('Cache-Control', 'no-store');
    const names = Object.keys(checks);
    const results = await Promise.all(
      names.map(async (name): Promise<CheckResult> => {
        const check = checks[name];
        if (!check) return 'not configured';
        try {
          await withTimeout(check, READY_CHECK_TIMEOUT_MS, name);
          return 'up';
        } catch (err) {
          ctx.log.warn({ err, dependency: name }, 'readiness check failed');
          return 'down';
        }
      }),
    );
    const status = Object.fromEntries(names.map((n, i) => [n, results[i]]));
    const down = names.filter((_, i) => results[i] === 'down');
    // Without Redis the instance still serves: rate limits count in memory and task output stays
    // with the instance generating it. It says so, and stays in the load balancer.
    if (down.length > 0 && down.every((n) => DEGRADABLE.has(n))) {
      ctx.body = { status: 'degraded', checks: status };
      return;
    }
    if (down.length > 0) {
      const error = new DependencyDown(
        `Not ready: ${down.join(', ')} ${down.length === 1 ? 'is' : 'are'} down.`,
      );
      error.extensions.checks = status;
      throw error;
    }
    ctx.body = { status: 'ready', checks: status };
  });

  router.get('/metrics', async (ctx) => {
    const { metrics, projections } = deps;
    try {
      const statuses = await withTimeout(() => projections.status(), READY_CHECK_TIMEOUT_MS, 'projections');
      for (const s of statuses) metrics.projectionLag.set({ projection: s.name }, s.lag);
    } catch (err) {
      ctx.log.warn({ err }, 'could not read projection status for metrics');
    }
    ctx.set('Cache-Control', 'no-store');
    ctx.type = metrics.registry.contentType;
    ctx.body = await metrics.registry.metrics();
  });

  // Built on first request: by then every resource has registered its paths.
  let document: OpenApiDocument | undefined;
  router.get('/openapi.json', (ctx) => {
    document ??= generateOpenApiDocument(openapi);
    ctx.body = document;
  });

  registerDocs(router);
}
