import { isOpenAiRoute, openAiError } from '../openaiErrors';
import { classify, PROBLEM_CONTENT_TYPE, statusProblem, type Problem } from '../problem';
import type { AppMiddleware } from '../types';

/** Headers that describe a body or an effect the failed request no longer has. */
const STALE_HEADERS = [
  'content-disposition',
  'content-encoding',
  'content-language',
  'content-range',
  'etag',
  'last-modified',
  'location',
  'x-event-position',
];

/**
 * Turns whatever a later middleware throws into RFC 9457 problem+json (see `classify`), and an
 * unmatched route into a 404 problem. Unexpected errors are logged with their stack; their body
 * says nothing internal.
 */
export function errors(): AppMiddleware {
  return async (ctx, next) => {
    try {
      await next();
      // No route (404), or the router's 405/501 for a method it does not serve.
      if (ctx.status < 400 || ctx.body != null) return;
      const problem = statusProblem(
        ctx.status,
        emptyStatusDetail(ctx.status, ctx.method, ctx.path, ctx.response.get('Allow')),
      );
      sendProblem(ctx, problem);
    } catch (err) {
      respondWithError(ctx, err);
    }
  };
}

/** Answers a thrown error as problem+json (logging what is unexpected), as the errors middleware does. */
export function respondWithError(ctx: AppContextLike, err: unknown): void {
  const classified = classify(err);
  const problem = classified.problem;
  if (classified.unexpected) ctx.log.error({ err }, 'request failed');
  else if (problem.status >= 500) ctx.log.warn({ err }, 'request failed');
  if (ctx.headerSent || !ctx.writable) {
    // Streaming had begun: nothing more can be said; end the response.
    ctx.res.destroy();
    return;
  }
  for (const name of STALE_HEADERS) ctx.remove(name);
  ctx.set(classified.headers);
  sendProblem(ctx, problem);
}

type AppContextLike = Parameters<AppMiddleware>[0];

function sendProblem(ctx: AppContextLike, problem: Problem): void {
  ctx.status = problem.status;
  ctx.body = {
    ...problem,
    instance: ctx.path,
    request_id: ctx.state.requestId,
    ...(isOpenAiRoute(ctx.path) ? { error: openAiError(problem, ctx.path) } : {}),
  };
  ctx.type = PROBLEM_CONTENT_TYPE;
}

function emptyStatusDetail(status: number, method: string, path: string, allow: string): string {
  switch (status) {
    case 404:
      return `No route for ${method} ${path}.`;
    case 405:
      return `${method} is not allowed on ${path}${allow ? `; allowed: ${allow}` : ''}.`;
    case 501:
      return `${method} is not implemented.`;
    default:
      return `${method} ${path} failed.`;
  }
}
