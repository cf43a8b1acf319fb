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

/** The request body is of a media type the route does not take (judged by its content, not its label). */
export class UnsupportedMediaType extends DomainError {
  readonly status = 415;
  readonly type = problemType('unsupported-media-type');
  readonly title = 'Unsupported media type';
}

/** The request body, or what it would decode to, is larger than the route takes. */
export class PayloadTooLarge extends DomainError {
  readonly status = 413;
  readonly type = problemType('payload-too-large');
  readonly title = 'Payload too large';
  /** Response headers (the errors middleware sets them): close a connection whose body was left unread. */
  readonly headers: Record<string, string>;
  constructor(detail: string, options: { closeConnection?: boolean } = {}) {
    super(detail);
    this.headers = options.closeConnection ? { Connection: 'close' } : {};
  }
}

/** Too many requests for a rate limit; `Retry-After` says when the next one is allowed. */
export class RateLimited extends DomainError {
  readonly status = 429;
  readonly type = problemType('rate-limited');
  readonly title = 'Too many requests';
  /** Response headers (the errors middleware sets them, as it does `Retry-After` for 503). */
  readonly headers: Record<string, string>;
  constructor(
    detail: string,
    readonly retryAfterSeconds: number,
  ) {
    super(detail);
    this.headers = { 'Retry-After': String(retryAfterSeconds) };
  }
}

/** Socket errors, and PostgreSQL's connection-exception (08…) and shutdown (57P0…) classes. */
const CONNECTION_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'ENOTFOUND',
  '57P01',
  '57P02',
  '57P03',
]);

/** What pg says when the server dropped the connection, or did not answer a connection attempt in time. */
const CONNECTION_MESSAGES =
  /Connection terminated|connection timeout|^timeout expired$|Client has encountered a connection error/i;

/** A statement failed for want of an answer in time (DATABASE_STATEMENT_TIMEOUT_MS). */
export function isStatementTimeout(err: unknown): boolean {
  return err instanceof Error && err.message === 'Query read timeout';
}

/** A statement refused on a connection where an earlier one had no answer in time. */
export const UNANSWERED_CONNECTION = 'Connection terminated: a statement on it had no answer in time';

/** The database (or another backing service) is unreachable: 503, not 500. */
export function isConnectionFailure(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e && depth < 3; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && (CONNECTION_CODES.has(code) || code.startsWith('08'))) return true;
    const message = (e as { message?: unknown }).message;
    if (typeof message === 'string' && CONNECTION_MESSAGES.test(message)) return true;
    // Or a statement it did not answer in time: the connection is not used again.
    if (isStatementTimeout(e)) return true;
  }
  return false;
}
