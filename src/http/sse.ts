import { PassThrough } from 'node:stream';
import type { ParameterizedContext } from 'koa';

/** What an event stream's response says of itself (a HEAD on it answers the same). */
export const SSE_HEADERS = {
  'Content-Type': 'text/event-stream; charset=utf-8',
  'Cache-Control': 'no-cache, no-transform',
  'X-Accel-Buffering': 'no',
};

/**
 * The most an event stream holds for a client that does not read it (a long reply with log
 * probabilities is a few MB).
 */
export const MAX_UNSENT_BYTES = 16 * 1024 * 1024;

/**
 * Why an event stream's signal aborts (the client left, or the stream ended). Given, an abort
 * builds no `DOMException`, whose stack trace every stream's end paid for; nothing reads it.
 */
export const STREAM_CLOSED = 'stream closed';

/** An open Server-Sent Events response. */
export interface SseStream {
  /** Aborts when the client goes away (or the stream is ended). */
  readonly signal: AbortSignal;
  send(event: string | null, data: unknown): void;
  end(): void;
}

/**
 * Turns the response into an event stream: no buffering by proxies (`X-Accel-Buffering: no`), no
 * caching, a comment every `heartbeatMs` while idle so proxies and clients keep the connection, and
 * an abort signal for when the client disconnects.
 */
export function openSse(ctx: ParameterizedContext, heartbeatMs: number): SseStream {
  const body = new PassThrough();
  const abort = new AbortController();
  ctx.req.socket.setTimeout(0);
  ctx.req.socket.setNoDelay(true);
  ctx.status = 200;
  ctx.set({ ...SSE_HEADERS, Connection: 'keep-alive' });
  ctx.body = body;
  let last = Date.now();
  const heartbeat = setInterval(
    () => {
      if (Date.now() - last >= heartbeatMs) write(': keep-alive\n\n');
    },
    Math.max(50, Math.floor(heartbeatMs / 2)),
  );
  heartbeat.unref();
  const close = () => {
    clearInterval(heartbeat);
    if (!abort.signal.aborted) abort.abort(STREAM_CLOSED);
  };
  ctx.res.on('close', close);
  if (ctx.req.socket.destroyed) close(); // the client left before its stream opened
  function write(text: string) {
    if (abort.signal.aborted) return;
    last = Date.now();
    body.write(text);
    // A client that stops reading would have the rest of its reply pile up here: past this, it is
    // let go, as if it had left (its stream's task goes on; a completion is stopped and charged,
    // unless a retry under its Idempotency-Key is to take it up).
    if (body.writableLength > MAX_UNSENT_BYTES) {
      close();
      ctx.req.socket.destroy();
    }
  }
  return {
    signal: abort.signal,
    send(event, data) {
      const payload = typeof data === 'string' ? data : JSON.stringify(data);
      write(`${event ? `event: ${event}\n` : ''}data: ${payload}\n\n`);
    },
    end() {
      close();
      body.end();
    },
  };
}
