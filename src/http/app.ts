import { Router } from '@koa/router';
import cors from '@koa/cors';
import Koa from 'koa';
import helmet from 'koa-helmet';
import { adminProjections } from './adminProjections';
import { body } from './middleware/body';
import { idempotency } from './middleware/idempotency';
import { defaultBudget } from './middleware/rateLimit';
import { CONSISTENT_AFTER_HEADER, EVENT_POSITION_HEADER } from './middleware/consistency';
import { errors } from './middleware/errors';
import { httpMetrics } from './middleware/metrics';
import { requestId } from './middleware/requestId';
import { requestLog } from './middleware/requestLog';
import { API_BASE, createOpenApiRegistry } from './openapi';
import { registerPlatformRoutes } from './platform';
import { createRateLimits } from '../platform/rateLimits';
import type { AppContext, AppDeps, AppMiddleware, AppRouter, AppState, Resource } from './types';

export type { AppContext, AppDeps, AppRouter, AppState, AuthUser, AuthedState, Resource } from './types';

export type App = Koa<AppState, AppContext>;

/** Response headers browsers may read cross-origin. */
const EXPOSED_HEADERS = [
  EVENT_POSITION_HEADER,
  CONSISTENT_AFTER_HEADER,
  'X-Request-Id',
  'Retry-After',
  'WWW-Authenticate',
  'Location',
  'Idempotent-Replayed',
  // OpenAI's SDKs read it to decide on a retry (a charged failed completion says false).
  'x-should-retry',
];

/**
 * The Koa app: request id → request log → metrics → errors → CORS + security headers → rate
 * limit (/api/v1) → body parser → Idempotency-Key → routes. The platform routes (/health, /ready, /metrics, /openapi.json, /docs) sit at
 * the root; `resources` register theirs under /api/v1.
 */
export function createApp(deps: AppDeps, resources: readonly Resource[] = []): App {
  const { config } = deps;
  if (!config.JWT_SECRET) throw new Error('createApp: JWT_SECRET must be set to verify access tokens');

  // Behind proxies, the client is the address the nearest PROXY_HOPS proxies saw: the rightmost
  // entries of X-Forwarded-For, never the leftmost, which any client can write.
  const app: App = new Koa<AppState, AppContext>({
    proxy: config.TRUST_PROXY,
    maxIpsCount: config.PROXY_HOPS,
  });
  app.context.deps = deps;
  app.context.log = deps.logger;
  app.context.rateLimits = deps.rateLimits ?? createRateLimits(config, undefined, deps.logger);
  // Every error is answered and logged by the errors middleware; Koa's own printer stays quiet.
  app.silent = true;

  const openapi = createOpenApiRegistry();
  const platform: AppRouter = new Router<AppState, AppContext>();
  registerPlatformRoutes(platform, deps, openapi);
  const api: AppRouter = new Router<AppState, AppContext>({ prefix: API_BASE });
  for (const resource of [adminProjections, ...resources]) resource(api, { deps, openapi });

  app.use(requestId());
  app.use(requestLog());
  app.use(httpMetrics());
  app.use(errors());
  app.use(corsFor(config.CORS_ORIGINS) as AppMiddleware);
  app.use(securityHeaders());
  // Before the body is read and before Idempotency-Key: a limited request does nothing, keeps no key.
  app.use(defaultBudget());
  app.use(body(config.BODY_LIMIT, config.COMPLETION_BODY_LIMIT));
  app.use(idempotency());
  app.use(platform.routes());
  app.use(platform.allowedMethods());
  app.use(api.routes());
  app.use(api.allowedMethods());
  return app;
}

function corsFor(origins: readonly string[]): Koa.Middleware {
  const any = origins.includes('*');
  const allowed = new Set(origins);
  return cors({
    // '' = not an allowed origin: no CORS headers, the browser blocks the read.
    origin: (ctx) => (any ? '*' : allowed.has(ctx.get('Origin')) ? ctx.get('Origin') : ''),
    exposeHeaders: EXPOSED_HEADERS,
    allowMethods: ['GET', 'HEAD', 'PUT', 'POST', 'DELETE', 'PATCH'],
    maxAge: 600,
    keepHeadersOnError: true,
  });
}

/** helmet: nothing may be loaded by API responses; /docs gets what Swagger UI needs from this origin. */
function securityHeaders(): AppMiddleware {
  const shared = {
    // Avatars and other images are fetched by apps on other origins.
    crossOriginResourcePolicy: { policy: 'cross-origin' as const },
  };
  const api = helmet({
    ...shared,
    contentSecurityPolicy: {
      useDefaults: false,
      directives: {
        defaultSrc: ["'none'"],
        frameAncestors: ["'none'"],
        baseUri: ["'none'"],
        formAction: ["'none'"],
      },
    },
  });
  const docs = helmet({
    ...shared,
    contentSecurityPolicy: {
      useDefaults: true,
      directives: {
        defaultSrc: ["'self'"],
        scriptSrc: ["'self'"],
        styleSrc: ["'self'", "'unsafe-inline'"],
        imgSrc: ["'self'", 'data:'],
        connectSrc: ["'self'"],
        upgradeInsecureRequests: null,
      },
    },
  });
  return async (ctx, next) => {
    const headers = ctx.path === '/docs' || ctx.path.startsWith('/docs/') ? docs : api;
    await headers(ctx, next);
  };
}
