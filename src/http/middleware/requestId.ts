import type { AppMiddleware } from '../types';

const SANE_REQUEST_ID = /^[A-Za-z0-9._-]{1,128}$/;

/**
 * Takes a caller's `X-Request-Id` when it is sane (a load balancer's or a client's, so logs line
 * up across hops), else makes a UUIDv7; echoes it and gives the request a logger that carries it.
 */
export function requestId(): AppMiddleware {
  return async (ctx, next) => {
    const incoming = ctx.get('X-Request-Id');
    const id = SANE_REQUEST_ID.test(incoming) ? incoming : ctx.deps.ids.next();
    ctx.state.requestId = id;
    ctx.log = ctx.deps.logger.child({ request_id: id });
    ctx.set('X-Request-Id', id);
    await next();
  };
}
