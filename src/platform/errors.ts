/**
 * Typed errors the HTTP layer turns into RFC 9457 problem+json. `type` is a stable URI-reference
 * clients can switch on; `title` is the same for every occurrence; `detail` says what happened.
 */
export abstract class DomainError extends Error {
  abstract readonly status: number;
  abstract readonly type: string;
  abstract readonly title: string;
  /** Extra members for the problem body (snake_case keys). */
  readonly extensions: Record<string, unknown> = {};
  constructor(detail: string) {
    super(detail);
  }
}

const problemType = (slug: string) => `/problems/${slug}`;

export class NotFound extends DomainError {
  readonly status = 404;
  readonly type = problemType('not-found');
  readonly title = 'Not found';
}

export class Conflict extends DomainError {
  readonly status = 409;
  readonly type = problemType('conflict');
  readonly title = 'Conflict';
}

export class Forbidden extends DomainError {
  readonly status = 403;
  readonly type = problemType('forbidden');
  readonly title = 'Forbidden';
}

export class Unauthorized extends DomainError {
  readonly status = 401;
  readonly type = problemType('unauthorized');
  readonly title = 'Unauthorized';
}

export class BadRequest extends DomainError {
  readonly status = 400;
  readonly type = problemType('bad-request');
  readonly title = 'Bad request';
}

/** A command lost the race for a stream more times than the handler retries. */
export class ConcurrencyConflict extends DomainError {
  readonly status = 409;
  readonly type = problemType('concurrency-conflict');
  readonly title = 'Concurrent change';
}

/** A read waited for its projection to reach `X-Consistent-After` and gave up. */
export class ConsistencyTimeout extends DomainError {
  readonly status = 504;
  readonly type = problemType('consistency-timeout');
  readonly title = 'Read model not caught up';
}

export class DependencyDown extends DomainError {
  readonly status = 503;
  readonly type = problemType('dependency-unavailable');
  readonly title = 'Service unavailable';
}
