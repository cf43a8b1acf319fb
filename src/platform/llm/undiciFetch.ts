import { pipeline, Readable, Transform } from 'node:stream';
import zlib from 'node:zlib';
import { request, type Dispatcher } from 'undici';

/** Statuses whose response has no body (a `Response` refuses one). */
const NULL_BODY = new Set([101, 103, 204, 205, 304]);
/** Redirects followed, as `fetch` would (it follows up to 20). */
const MAX_REDIRECTIONS = 5;
/** More encodings than this on one body are refused, as `fetch` refuses them (a decompression bomb). */
const MAX_ENCODINGS = 5;

// As lenient as `fetch` (and cURL): a body that ends without its compressor's trailer still reads.
const ZLIB = { flush: zlib.constants.Z_SYNC_FLUSH, finishFlush: zlib.constants.Z_SYNC_FLUSH };
const BROTLI = {
  flush: zlib.constants.BROTLI_OPERATION_FLUSH,
  finishFlush: zlib.constants.BROTLI_OPERATION_FLUSH,
};

/** `deflate` as servers send it: zlib-wrapped or raw, told apart by the first byte (as `fetch` does). */
function inflate(): Transform {
  let inner: zlib.Inflate | zlib.InflateRaw | undefined;
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      if (chunk.length === 0) return done();
      if (!inner) {
        inner = (chunk[0]! & 0x0f) === 0x08 ? zlib.createInflate(ZLIB) : zlib.createInflateRaw(ZLIB);
        inner.on('data', (data: Buffer) => this.push(data));
        inner.on('error', (err) => this.destroy(err));
      }
      inner.write(chunk, () => done());
    },
    flush(done) {
      if (!inner) return done();
      inner.once('end', () => done());
      inner.end();
    },
  });
}

const DECODERS = new Map<string, () => Transform>([
  ['gzip', () => zlib.createGunzip(ZLIB)],
  ['x-gzip', () => zlib.createGunzip(ZLIB)],
  ['deflate', inflate],
  ['br', () => zlib.createBrotliDecompress(BROTLI)],
]);

/** A header value as `fetch` gives it: its bytes as Latin-1 (undici decodes them as UTF-8). */
const byteString = (value: string) => Buffer.from(value, 'utf8').toString('latin1');

/**
 * A `fetch` for the OpenAI SDK on undici's `request`: the same requests, at a third to a half less
 * CPU per streamed reply than the global `fetch` (whose Request/Response machinery runs on every
 * call, and a reply is a call per task). Bodies the SDK sends as text or bytes go this way; anything else (a
 * form, a stream) goes to the global `fetch`. It asks for no compression, so a streamed reply is
 * not held back in a compressor upstream, but decodes one a server sends anyway.
 */
export function undiciFetch(): typeof fetch {
  return async (input, init = {}) => {
    const body = init.body;
    if (
      input instanceof Request ||
      !(body == null || typeof body === 'string' || body instanceof Uint8Array)
    ) {
      return fetch(input, init);
    }
    const res = await request(String(input), {
      method: (init.method ?? 'GET').toUpperCase() as Dispatcher.HttpMethod,
      headers: Object.fromEntries(new Headers(init.headers)),
      body: body ?? null,
      signal: init.signal ?? undefined,
      maxRedirections: init.redirect === 'manual' || init.redirect === 'error' ? 0 : MAX_REDIRECTIONS,
    });
    try {
      return toResponse(res, init.method);
    } catch (err) {
      // Never a connection left streaming into a body nobody reads (its abort is no one's error).
      res.body.on('error', () => undefined).destroy();
      throw err;
    }
  };
}

function toResponse(res: Dispatcher.ResponseData, method: string | undefined): Response {
  const headers = new Headers();
  for (const [name, value] of Object.entries(res.headers)) {
    if (Array.isArray(value)) for (const v of value) headers.append(name, byteString(v));
    else if (value !== undefined) headers.append(name, byteString(value));
  }
  const status = res.statusCode;
  if (NULL_BODY.has(status) || method?.toUpperCase() === 'HEAD') {
    res.body.resume();
    return new Response(null, { status, headers });
  }
  let stream: Readable = res.body;
  const encodings = (headers.get('content-encoding') ?? '')
    .split(',')
    .map((e) => e.trim().toLowerCase())
    .filter((e) => e && e !== 'identity');
  if (encodings.length > MAX_ENCODINGS)
    throw new TypeError(`${encodings.length} content-encodings, at most ${MAX_ENCODINGS}`);
  if (encodings.length > 0 && encodings.every((e) => DECODERS.has(e))) {
    // Decoded in the reverse order of encoding; the body is then no longer what the headers say. A
    // pipeline, so that a body cut short fails the reader, and a reader that stops ends the request.
    for (const e of encodings.reverse()) {
      const decoder = DECODERS.get(e)!();
      pipeline(stream, decoder, () => undefined);
      stream = decoder;
    }
    headers.delete('content-encoding');
    headers.delete('content-length');
  }
  return new Response(Readable.toWeb(stream) as ReadableStream<Uint8Array>, { status, headers });
}
