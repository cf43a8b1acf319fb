import http from 'node:http';
import net from 'node:net';
import { PassThrough } from 'node:stream';
import { startHttpServer, type HttpServer } from '../../src/http/server';
import type { Resource } from '../../src/http/types';
import { createApp } from '../../src/http/app';
import { createTestApp, type TestApp } from '../support/app';

/** Requests each route has begun to handle: one in flight is at the app, not still on its way. */
const arrived = { slow: 0, forever: 0 };

const slowRoutes: Resource = (router) => {
  router.get('/test/slow', async (ctx) => {
    arrived.slow++;
    await new Promise((r) => setTimeout(r, 400));
    ctx.body = { done: true };
  });
  router.get('/test/stream', async (ctx) => {
    const body = new PassThrough();
    ctx.type = 'text/plain';
    ctx.body = body;
    body.write('first\n');
    setTimeout(() => body.end('last\n'), 300).unref();
  });
  router.get('/test/forever', async (ctx) => {
    arrived.forever++;
    await new Promise((r) => setTimeout(r, 60_000).unref());
    ctx.body = { done: true };
  });
};

function get(port: number, path: string, agent?: http.Agent): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        res.on('error', reject);
      })
      .on('error', reject);
  });
}

/** Polls `check` until it holds; throws, saying what it waited for, after `timeoutMs`. */
async function eventually(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Resolves as `promise` does; rejects, saying what it waited for, if it takes longer than `ms`. */
async function within<T>(ms: number, promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not resolve within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({ resources: [slowRoutes] });
});
afterAll(() => t?.close());

describe('startHttpServer', () => {
  let server: HttpServer | undefined;
  afterEach(async () => {
    await server?.close();
    server = undefined;
  });

  it('listens on the configured port and serves the app', async () => {
    server = await startHttpServer(t.app, { ...t.deps.config, HOST: '127.0.0.1', PORT: 0 }, t.deps.logger);
    expect(server.port).toBeGreaterThan(0);
    expect(await get(server.port, '/health')).toEqual({ status: 200, body: '{"status":"ok"}' });
  });

  it('lets an in-flight request finish on close, closes idle keep-alive sockets, refuses new connections', async () => {
    // Neither the keep-alive timeout nor the shutdown deadline comes within the wait for the close
    // below: only closing the idle sockets at once can end it in time.
    server = await startHttpServer(
      t.app,
      { ...t.deps.config, HOST: '127.0.0.1', PORT: 0, SHUTDOWN_TIMEOUT_MS: 60_000 },
      t.deps.logger,
    );
    server.server.keepAliveTimeout = 60_000;
    const { port } = server;
    const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
    await get(port, '/health', agent); // leaves an idle keep-alive socket behind
    const before = arrived.slow;
    const inFlight = get(port, '/api/v1/test/slow', agent);
    // In flight once the app has it: a request still on its way when closing begins is refused.
    await eventually(() => arrived.slow > before, 'the slow request at the app');
    const closed = server.close();
    const res = await inFlight;
    expect(res).toEqual({ status: 200, body: '{"done":true}' });
    // Closed as soon as the slow request was done, not after a keep-alive timeout.
    await within(10_000, closed, 'close() once the slow request was done');
    await expect(get(port, '/health')).rejects.toThrow(/ECONNREFUSED/);
    agent.destroy();
  });

  it('answers a request its HTTP parser refuses as problem+json, and closes the connection', async () => {
    server = await startHttpServer(t.app, { ...t.deps.config, HOST: '127.0.0.1', PORT: 0 }, t.deps.logger);
    const { port } = server;
    const raw = (request: string) =>
      new Promise<string>((resolve, reject) => {
        const socket = net.connect(port, '127.0.0.1', () => socket.end(request));
        let text = '';
        socket.setEncoding('utf8');
        socket.on('data', (c: string) => (text += c));
        socket.on('close', () => resolve(text));
        socket.on('error', reject);
      });
    const answers = [
      [await raw(`GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`), 431],
      [await raw('GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab'), 400],
      [await raw('NOT HTTP AT ALL\r\n\r\n'), 400],
    ] as const;
    for (const [text, status] of answers) {
      const [head, body] = text.split('\r\n\r\n');
      expect(head).toMatch(new RegExp(`^HTTP/1.1 ${status} `));
      expect(head).toMatch(/content-type: application\/problem\+json/i);
      expect(JSON.parse(body!)).toMatchObject({ status, type: expect.stringMatching(/^\/problems\//) });
    }
    // The server goes on serving.
    expect((await get(port, '/health')).status).toBe(200);

    // A bad request pipelined behind a response already streaming is not answered inside its
    // body: the connection is dropped, as Node does.
    const behind = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1', () =>
        socket.write('GET /api/v1/test/stream HTTP/1.1\r\nHost: x\r\n\r\n'),
      );
      let text = '';
      socket.setEncoding('utf8');
      socket.on('data', (c: string) => {
        if (!text.includes('first') && (text + c).includes('first')) socket.write('BOGUS\r\n\r\n');
        text += c;
      });
      socket.on('close', () => resolve(text));
      socket.on('error', reject);
    });
    expect(behind).toMatch(/^HTTP\/1.1 200 /);
    expect(behind).not.toMatch(/HTTP\/1.1 400/);
  });

  it('destroys requests still running at SHUTDOWN_TIMEOUT_MS', async () => {
    const app = createApp(t.deps, [slowRoutes]);
    server = await startHttpServer(
      app,
      { ...t.deps.config, HOST: '127.0.0.1', PORT: 0, SHUTDOWN_TIMEOUT_MS: 300 },
      t.deps.logger,
    );
    const before = arrived.forever;
    const stuck = get(server.port, '/api/v1/test/forever');
    // Running once the app has it: a request still on its way when closing begins is refused.
    await eventually(() => arrived.forever > before, 'the stuck request at the app');
    // Destroyed at the deadline, not waited for (it would run for a minute).
    await within(10_000, server.close(), 'close() with a request still running');
    await expect(stuck).rejects.toThrow(/socket hang up|ECONNRESET/);
  });
});
