import type { IdentityDeps, RequestContext } from '../commands/users/identity';
import { activeSessionIds } from '../queries/users';
import type { AppDeps, AppState } from './types';
import type { ParameterizedContext } from 'koa';

/** The identity flows' dependencies, from the app's. */
export function identityDeps(deps: AppDeps): IdentityDeps {
  const db = deps.db.db;
  return {
    commands: deps.commands,
    store: deps.store,
    clock: deps.clock,
    ids: deps.ids,
    config: deps.config,
    guard: deps.sessionGuard,
    projections: deps.projections,
    activeSessions: (userId) => activeSessionIds(db, userId, deps.clock.now()),
    logger: deps.logger,
  };
}

/** Who is asking, for event metadata and session records. */
export function requestContext(ctx: ParameterizedContext<AppState>): RequestContext {
  return {
    requestId: ctx.state.requestId,
    actorId: ctx.state.user?.id ?? null,
    userAgent: ctx.get('User-Agent') || null,
    ip: ctx.ip || null,
  };
}
