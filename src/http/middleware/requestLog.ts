import type { AppMiddleware } from '../types';
import { onResponseDone, routeOf } from './observe';

/** Probes scraped every few seconds: logged at debug so they do not drown the rest. */
const QUIET_PATHS = new Set(['/health', '/ready', '/metrics']);

/**
 * One log line per request: method, route template, path, status, duration, request id (on the
 * request logger). Headers are never logged, so neither is Authorization; the query string is
 * left out too, as it may carry codes.
 */
export function requestLog(): AppMiddleware {
  return async (ctx, next) => {
    onResponseDone(ctx, (seconds, aborted) => {
      const status = ctx.status;
      const line = {
        method: ctx.method,
        route: routeOf(ctx) ?? null,
        path: ctx.path,
        status,
        duration_ms: Math.round(seconds * 1e4) / 10,
        ...(aborted ? { aborted: true } : {}),
      };
      const level = status >= 500 ? 'error' : QUIET_PATHS.has(ctx.path) ? 'debug' : 'info';
      ctx.log[level](line, 'request');
    });
    await next();
  };
}
