import { STATUS_CODES } from 'node:http';
import { z } from 'zod';
import { WrongExpectedRevision } from '../eventstore/port';
import { DomainError, isConnectionFailure } from '../platform/errors';

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';

/** An RFC 9457 problem body (before `instance` and `request_id` are added). */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  [extension: string]: unknown;
}

/** What the errors middleware makes of a thrown value. */
export interface Classified {
  problem: Problem;
  /** Response headers the error asks for (`WWW-Authenticate`, `Allow`, CORS headers...). */
  headers: Record<string, string>;
  /** Unexpected: log it with its stack. */
  unexpected: boolean;
}

/** `/problems/payload-too-large` for 413, and so on: stable types for plain HTTP errors. */
export function problemTypeForStatus(status: number): string {
  const phrase = STATUS_CODES[status] ?? `http-${status}`;
  return `/problems/${phrase
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-|-$/g, '')}`;
}

/**
 * The title of a plain HTTP status's problem, in the sentence case of the service's own problems
 * ("Not found"): one title for every occurrence of a type, whichever layer raised it.
 */
export function statusTitle(status: number): string {
  const phrase = STATUS_CODES[status] ?? 'Error';
  return phrase.charAt(0) + phrase.slice(1).toLowerCase();
}

/** A `type`/`title`/`status` problem for a plain HTTP status. */
export function statusProblem(status: number, detail: string): Problem {
  return { type: problemTypeForStatus(status), title: statusTitle(status), status, detail };
}

/** Errors from koa's `ctx.throw`, http-errors and the body parser. */
interface HttpErrorLike extends Error {
  status: number;
  expose?: boolean;
  type?: string;
  headers?: Record<string, unknown>;
  limit?: number;
}

function isHttpError(err: unknown): err is HttpErrorLike {
  return (
    err instanceof Error &&
    typeof (err as Partial<HttpErrorLike>).status === 'number' &&
    (err as HttpErrorLike).status >= 400 &&
    (err as HttpErrorLike).status < 600
  );
}

function stringHeaders(headers: Record<string, unknown> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers ?? {})) {
    if (typeof v === 'string') out[k] = v;
    else if (typeof v === 'number') out[k] = String(v);
    else if (Array.isArray(v)) out[k] = v.map(String).join(', ');
  }
  return out;
}

/** `a.b.0.c`, or '' for the root. */
function issuePath(path: readonly PropertyKey[]): string {
  return path.map((p) => (typeof p === 'symbol' ? (p.description ?? '') : String(p))).join('.');
}

/** Maps anything thrown to a problem. Never puts internals (stack, SQL, messages of unknown errors) in it. */
export function classify(err: unknown): Classified {
  const headers =
    isHttpError(err) || err instanceof DomainError ? stringHeaders((err as HttpErrorLike).headers) : {};

  if (err instanceof DomainError) {
    if (err.status === 401 && !Object.keys(headers).some((h) => h.toLowerCase() === 'www-authenticate')) {
      headers['WWW-Authenticate'] = 'Bearer';
    }
    return {
      problem: {
        ...err.extensions,
        type: err.type,
        title: err.title,
        status: err.status,
        detail: err.message,
      },
      headers,
      // 502, 503 and 504 are what an upstream or a dependency did (logged as warnings), not a fault here.
      unexpected: err.status >= 500 && ![502, 503, 504].includes(err.status),
    };
  }

  if (err instanceof z.core.$ZodError) {
    const errors = err.issues.map((i) => ({ path: issuePath(i.path), message: i.message }));
    const first = errors[0];
    const detail = first
      ? `${first.path === '' ? 'The input' : first.path}: ${first.message}${errors.length > 1 ? ` (and ${errors.length - 1} more)` : ''}`
      : 'The input is not valid.';
    return {
      problem: { type: '/problems/validation', title: 'Invalid input', status: 400, detail, errors },
      headers: {},
      unexpected: false,
    };
  }

  if (err instanceof WrongExpectedRevision) {
    return {
      problem: {
        type: '/problems/concurrency-conflict',
        title: 'Concurrent change',
        status: 409,
        detail: 'The resource was changed by another request; retry.',
      },
      headers: {},
      unexpected: false,
    };
  }

  if (isConnectionFailure(err)) {
    return {
      problem: {
        type: '/problems/dependency-unavailable',
        title: 'Service unavailable',
        status: 503,
        detail: 'A backing service is unreachable; retry shortly.',
      },
      headers: { 'Retry-After': '5' },
      unexpected: false,
    };
  }

  if (isHttpError(err) && err.status < 500) {
    return { problem: statusProblem(err.status, httpErrorDetail(err)), headers, unexpected: false };
  }

  const status = isHttpError(err) ? err.status : 500;
  return {
    problem: {
      type: status === 500 ? '/problems/internal' : problemTypeForStatus(status),
      title: statusTitle(status),
      status,
      detail: 'The server could not complete the request.',
    },
    headers: status === 500 ? {} : headers,
    unexpected: true,
  };
}

function httpErrorDetail(err: HttpErrorLike): string {
  // co-body's JSON.parse failure: a SyntaxError it gave status 400.
  if (err instanceof SyntaxError) return `The request body is not valid JSON: ${err.message.slice(0, 200)}`;
  switch (err.type) {
    case 'entity.parse.failed':
      return 'The request body is not valid JSON.';
    case 'entity.too.large':
      return `The request body is larger than the limit${err.limit ? ` of ${err.limit} bytes` : ''}.`;
    case 'encoding.unsupported':
    case 'charset.unsupported':
      return err.message;
    default:
      return err.expose === false ? (STATUS_CODES[err.status] ?? 'Error') : err.message;
  }
}

/** The problem+json body as an OpenAPI/zod schema. */
export const ProblemSchema = z
  .object({
    type: z.string().meta({
      description: 'Stable URI reference identifying the problem type',
      example: '/problems/not-found',
    }),
    title: z.string().meta({ description: 'Short summary, the same for every occurrence of the type' }),
    status: z.number().int().meta({ example: 404 }),
    detail: z.string().meta({ description: 'What happened in this occurrence' }),
    instance: z.string().meta({ description: 'The request path', example: '/api/v1/chats/0190…' }),
    request_id: z.string().meta({ description: 'Matches the X-Request-Id response header' }),
    errors: z
      .array(z.object({ path: z.string(), message: z.string() }))
      .optional()
      .meta({ description: 'For validation problems: each failing input path' }),
  })
  .loose()
  .meta({ id: 'Problem' });
