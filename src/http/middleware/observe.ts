import type { ParameterizedContext } from 'koa';

/** The matched route template (`/api/v1/chats/:id`), or undefined when no route matched. */
export function routeOf(ctx: ParameterizedContext): string | undefined {
  const route = (ctx as { _matchedRoute?: unknown })._matchedRoute;
  return typeof route === 'string' ? route : undefined;
}

/**
 * Calls `done` once the response is over — sent, or abandoned by the client — so streamed
 * responses (SSE) are measured to their end, not to when the handler returned.
 */
export function onResponseDone(
  ctx: ParameterizedContext,
  done: (seconds: number, aborted: boolean) => void,
): void {
  const started = process.hrtime.bigint();
  ctx.res.once('close', () => {
    done(Number(process.hrtime.bigint() - started) / 1e9, !ctx.res.writableEnded);
  });
}
