import { EventEmitter } from 'node:events';
import type { PassThrough } from 'node:stream';
import type { ParameterizedContext } from 'koa';
import { MAX_UNSENT_BYTES, openSse, STREAM_CLOSED } from '../../src/http/sse';

/** A response whose client reads nothing: what is written stays in the stream's buffer. */
function stalledClient() {
  const res = new EventEmitter();
  const socket = Object.assign(new EventEmitter(), {
    destroyed: false,
    setTimeout: () => undefined,
    setNoDelay: () => undefined,
    destroy() {
      this.destroyed = true;
      res.emit('close');
    },
  });
  const ctx = { req: { socket }, res, status: 404, body: undefined, set: () => undefined };
  return { ctx: ctx as unknown as ParameterizedContext & { body: PassThrough }, socket };
}

describe('an event stream to a client that stops reading', () => {
  it('keeps what it cannot send up to MAX_UNSENT_BYTES, then lets the client go', () => {
    const { ctx, socket } = stalledClient();
    const sse = openSse(ctx, 60_000);
    const piece = { content: 'x'.repeat(64 * 1024) };
    const perEvent = `data: ${JSON.stringify(piece)}\n\n`.length;
    const fitting = Math.floor(MAX_UNSENT_BYTES / perEvent);
    for (let i = 0; i < fitting; i++) sse.send(null, piece);
    expect(sse.signal.aborted).toBe(false);
    expect(socket.destroyed).toBe(false);
    sse.send(null, piece);
    expect(sse.signal.aborted).toBe(true);
    expect(socket.destroyed).toBe(true);
    // Nothing more is kept for it.
    const held = ctx.body.writableLength;
    sse.send(null, piece);
    expect(ctx.body.writableLength).toBe(held);
    sse.end();
  });
});

describe('an event stream that ends', () => {
  it.each([
    ['ended by the service', (sse: { end(): void }) => sse.end()],
    ['left by its client', (_sse: unknown, res: EventEmitter) => res.emit('close')],
  ])('aborts its signal with a reason of its own when %s (no DOMException is built)', (_, finish) => {
    const { ctx } = stalledClient();
    const sse = openSse(ctx, 60_000);
    expect(sse.signal.aborted).toBe(false);
    finish(sse, ctx.res);
    expect(sse.signal.aborted).toBe(true);
    expect(sse.signal.reason).toBe(STREAM_CLOSED);
    sse.end();
  });
});
