import type { OpenAPIRegistry } from '@asteasolutions/zod-to-openapi';
import type { Router, RouterMiddleware } from '@koa/router';
import type { Redis } from 'ioredis';
import type { CommandHandler } from '../commands/handler';
import type { EventStore } from '../eventstore/port';
import type { ProjectionEngine } from '../projections/types';
import type { Clock, IdGenerator } from '../platform/clock';
import type { TaskFlow } from '../commands/tasks/flow';
import type { Config } from '../platform/config';
import type { Db } from '../platform/db';
import type { Logger } from '../platform/logger';
import type { Metrics } from '../platform/metrics';
import type { ModelCatalog } from '../platform/llm/types';
import type { RateLimits } from '../platform/rateLimits';
import type { SignInProviders } from '../platform/identity';
import type { PermissionLevel } from '../platform/tokens';
import type { SessionGuard } from '../queries/sessionGuard';
import type { TaskBuffer } from '../platform/taskBuffer';

/** Everything the HTTP app needs, passed in by the caller (serve.ts, tests). */
export interface AppDeps {
  config: Config;
  logger: Logger;
  db: Db;
  store: EventStore;
  commands: CommandHandler;
  projections: ProjectionEngine;
  metrics: Metrics;
  redis?: Redis | undefined;
  clock: Clock;
  ids: IdGenerator;
  /**
   * Whether an access token's session is alive and its user enabled, and the user's current
   * permission. Unset = every validly signed, unexpired token is accepted at its own word.
   */
  sessionGuard?: SessionGuard | undefined;
  /** Request budgets (`createRateLimits`). Unset = in-memory limits of the configuration. */
  rateLimits?: RateLimits | undefined;
  /** WeChat, Apple and SMS sign-in adapters (`createSignInProviders`). Unset = made from the configuration. */
  signIn?: SignInProviders | undefined;
  /** Task output on its way to the stream endpoint (memory, or Redis Streams with Redis). */
  buffer?: TaskBuffer | undefined;
  /** Starts, streams, cancels and settles tasks (`TaskFlow`); needed by the tasks resource. */
  tasks?: TaskFlow | undefined;
  /** The models the service offers, their prices and providers (`createModelCatalog`). */
  models: ModelCatalog;
}

/** The caller, set by `auth()`. */
export interface AuthUser {
  id: string;
  sessionId: string;
  permission: PermissionLevel;
}

/** `ctx.state` of every request. */
export interface AppState {
  requestId: string;
  user?: AuthUser;
  /** Set for a POST with an `Idempotency-Key`. */
  idempotent?: IdempotentRequest;
}

/**
 * A request with an `Idempotency-Key`, for a route whose work outlives the request (a task): it
 * names that work before answering, and a retry of the request goes on from it.
 */
export interface IdempotentRequest {
  /** What an earlier attempt of this same request started, or null: go on from it, start nothing. */
  readonly ref: string | null;
  /** Names what this request started, so that a retry goes on from it. */
  remember(ref: string): Promise<void>;
}

/**
 * `ctx.state` after `auth()`. After `auth({ checkBeside: true })`, `sessionChecked` is the session
 * check still under way: the route may read meanwhile, and awaits it before any write.
 */
export type AuthedState = AppState & { user: AuthUser; sessionChecked?: Promise<void> };

/** What every request's `ctx` carries besides Koa's own. */
export interface AppContext {
  deps: AppDeps;
  /** The request's logger (carries the request id). */
  log: Logger;
  /** `deps.rateLimits`, or the in-memory ones `createApp` made: always set. */
  rateLimits: RateLimits;
}

export type AppRouter = Router<AppState, AppContext>;
export type AppMiddleware<State extends AppState = AppState> = RouterMiddleware<State, AppContext>;

/** A feature's routes: registered on the `/api/v1` router, with their OpenAPI paths. */
export type Resource = (router: AppRouter, ctx: { deps: AppDeps; openapi: OpenAPIRegistry }) => void;
