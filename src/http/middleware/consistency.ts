import type { ParameterizedContext } from 'koa';
import { BadRequest, ConsistencyTimeout } from '../../platform/errors';
import type { AppMiddleware, AppState } from '../types';

export const EVENT_POSITION_HEADER = 'X-Event-Position';
export const CONSISTENT_AFTER_HEADER = 'X-Consistent-After';

const MAX_POSITION = 2n ** 63n - 1n;

/**
 * Read-your-writes for a GET: with `X-Consistent-After: <position>` (from a command's
 * `X-Event-Position`), waits until every named projection has applied that position, or answers
 * 504 after CONSISTENCY_TIMEOUT_MS. Without the header, reads whatever the projections have.
 * With no projection named (a read of the event store itself: a task, a ledger report), it waits
 * only for that position to be stored.
 */
export function consistentRead<State extends AppState = AppState>(
  projectionNames: readonly string[],
): AppMiddleware<State> {
  return async (ctx, next) => {
    const raw = ctx.get(CONSISTENT_AFTER_HEADER).trim();
    if (raw !== '') {
      if (!/^\d{1,19}$/.test(raw) || BigInt(raw) > MAX_POSITION) {
        throw new BadRequest(`${CONSISTENT_AFTER_HEADER} must be a non-negative integer event position.`);
      }
      const position = BigInt(raw);
      const { projections, config } = ctx.deps;
      const timeoutMs = config.CONSISTENCY_TIMEOUT_MS;
      if (!(await projections.waitFor(projectionNames, position, timeoutMs))) {
        throw new ConsistencyTimeout(
          `The read model did not reach position ${position} within ${timeoutMs} ms; retry shortly.`,
        );
      }
    }
    await next();
  };
}

/** Commands answer with the global position of their last event, for `X-Consistent-After`. */
export function setEventPosition(ctx: Pick<ParameterizedContext, 'set'>, position: bigint): void {
  ctx.set(EVENT_POSITION_HEADER, position.toString());
}
