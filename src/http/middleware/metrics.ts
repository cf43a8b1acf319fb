import type { AppMiddleware } from '../types';
import { onResponseDone, routeOf } from './observe';

/** Request durations by method, matched route template (never the raw path: bounded labels) and status. */
export function httpMetrics(): AppMiddleware {
  return async (ctx, next) => {
    const histogram = ctx.deps.metrics.httpRequestDuration;
    onResponseDone(ctx, (seconds) => {
      histogram.observe(
        { method: ctx.method, route: routeOf(ctx) ?? 'unmatched', status: String(ctx.status) },
        seconds,
      );
    });
    await next();
  };
}
