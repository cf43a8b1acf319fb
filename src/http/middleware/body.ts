import type { IncomingMessage } from 'node:http';
import { bodyParser } from '@koa/bodyparser';
import type { Context } from 'koa';
import { BadRequest, UnsupportedMediaType } from '../../platform/errors';
import { UnstorableText } from '../../eventstore/port';
import { holdsUnstorableText } from '../../platform/text';
import { API_BASE, routedPath, TOKEN_URL } from '../openapi';
import type { AppContext, AppMiddleware } from '../types';
import { bearerClaims } from './auth';

const WITH_BODY = new Set(['POST', 'PUT', 'PATCH']);
/** Deeper than any request of this API, and shallow enough for any walk of it to be safe. */
const MAX_DEPTH = 32;
const JSON_TYPES = ['application/json', '+json'];
/** The one route that takes a form: OAuth2's token endpoint, where the password grant is form-encoded. */
const FORM_ROUTES = new Set([TOKEN_URL.toLowerCase()]);
/** The route whose bodies carry pictures (data URLs), under their own limit when sent with a token. */
const LARGE_ROUTES = new Set([`${API_BASE}/chat/completions`.toLowerCase()]);

function hasBody(req: IncomingMessage): boolean {
  if (req.headers['transfer-encoding'] !== undefined) return true;
  const length = Number(req.headers['content-length']);
  return Number.isFinite(length) && length > 0;
}

/**
 * Parses JSON bodies, and form bodies on the OAuth2 token endpoint, up to `limit` (`largeLimit`
 * for `/chat/completions` with a valid access token; 413 beyond it, 400 for malformed JSON). A
 * POST/PUT/PATCH body of any other type is 415, except multipart, which is left unread for the
 * routes that take files (`readFile` in multipart.ts); a route that reads `ctx.request.body` of a
 * multipart request answers 415.
 */
export function body(limit: string, largeLimit = limit): AppMiddleware {
  const parserOf = (bytes: string) =>
    bodyParser({
      enableTypes: ['json', 'form'],
      detectJSON: (ctx: Context) => Boolean(ctx.is(JSON_TYPES)),
      jsonLimit: bytes,
      formLimit: bytes,
      jsonStrict: true,
      encoding: 'utf-8',
    });
  const small = parserOf(limit);
  const large = parserOf(largeLimit);
  // Only a request with a valid access token: anyone else's body is read no further than any other.
  const parserFor = (ctx: Context & AppContext) =>
    LARGE_ROUTES.has(routedPath(ctx.path)) && bearerClaims(ctx) !== undefined ? large : small;
  return async (ctx, next) => {
    // PostgreSQL text cannot hold NUL: refused here as bad input, not failed later as a 500.
    if (/%00|\0/i.test(ctx.path) || /%00|\0/i.test(ctx.querystring)) {
      throw new BadRequest('The path or query contains a NUL character (%00).');
    }
    if (WITH_BODY.has(ctx.method) && hasBody(ctx.req)) {
      if (ctx.is('multipart')) {
        refuseParsedBody(ctx);
        await next();
        return;
      }
      if (!ctx.is(FORM_ROUTES.has(routedPath(ctx.path)) ? [...JSON_TYPES, 'urlencoded'] : JSON_TYPES)) {
        const type = ctx.get('Content-Type').slice(0, 100) || 'none';
        ctx.throw(415, `Content-Type ${type} is not supported: send application/json.`);
      }
    }
    let read = false;
    try {
      await parserFor(ctx)(ctx, async () => {
        read = true;
        const parsed = (ctx.request as { body?: unknown }).body;
        if (deeperThan(parsed, MAX_DEPTH)) {
          throw new BadRequest(`The body is nested deeper than ${MAX_DEPTH} levels.`);
        }
        if (holdsUnstorableText(parsed)) {
          throw new UnstorableText('The body');
        }
        await next();
      });
    } catch (err) {
      // A body its Content-Encoding does not decode (cut short, or not what it says): the
      // decompressor's own error, with no status, would be a 500.
      if (!read && isDecodingError(err)) {
        const encoding = ctx.get('Content-Encoding').slice(0, 50);
        throw new BadRequest(`The body could not be decoded as its Content-Encoding (${encoding}) says.`);
      }
      throw err;
    }
  };
}

/** zlib's errors (`Z_DATA_ERROR`, `Z_BUF_ERROR`…) and Brotli's (`ERR__ERROR_FORMAT_…`). */
function isDecodingError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (code.startsWith('Z_') || code.startsWith('ERR__ERROR_'));
}

/** Whether arrays and objects nest deeper than `levels` (looking no deeper than that). */
function deeperThan(value: unknown, levels: number): boolean {
  if (typeof value !== 'object' || value === null) return false;
  if (levels === 0) return true;
  return Object.values(value).some((v) => deeperThan(v, levels - 1));
}

/**
 * Which routes take files is known only once a route runs, so a multipart body is let through;
 * a route that takes JSON finds out when it reads `ctx.request.body`, and answers 415 as it would
 * for any other type it does not take.
 */
function refuseParsedBody(ctx: Context): void {
  const type = ctx.get('Content-Type').split(';')[0]?.slice(0, 100) ?? 'multipart';
  Object.defineProperty(ctx.request, 'body', {
    configurable: true,
    enumerable: false,
    get(): never {
      throw new UnsupportedMediaType(`Content-Type ${type} is not supported here: send application/json.`);
    },
  });
}
