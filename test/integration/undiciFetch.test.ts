import http from 'node:http';
import type { AddressInfo } from 'node:net';
import zlib from 'node:zlib';
import { undiciFetch } from '../../src/platform/llm/undiciFetch';

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A server answering each path its own way, recording what it was sent. */
async function startServer() {
  const seen: Seen[] = [];
  let closedEarly = 0;
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body });
      res.on('close', () => {
        if (!res.writableFinished) closedEarly++;
      });
      switch (req.url) {
        case '/gzip':
          res.writeHead(200, { 'content-type': 'text/plain', 'content-encoding': 'gzip' });
          res.end(zlib.gzipSync('decoded text, ünïcode'));
          return;
        case '/cut': {
          // A gzip body whose connection drops halfway.
          const whole = zlib.gzipSync('x'.repeat(100_000) + Math.random().toString());
          res.writeHead(200, { 'content-encoding': 'gzip', 'content-length': String(whole.length) });
          res.write(whole.subarray(0, Math.floor(whole.length / 2)));
          setTimeout(() => res.socket?.destroy(), 20);
          return;
        }
        case '/bytes':
          // Bytes past ASCII in headers, as some gateways send them.
          res.setHeader('x-note', Buffer.from('模型 ok', 'utf8').toString('latin1'));
          res.setHeader('x-odd', '\u00e9');
          res.end('ok');
          return;
        case '/untrailed':
          res.writeHead(200, { 'content-encoding': 'gzip' });
          res.end(zlib.gzipSync('whole reply').subarray(0, -8));
          return;
        case '/raw-deflate':
          res.writeHead(200, { 'content-encoding': 'deflate' });
          res.end(zlib.deflateRawSync('raw deflate'));
          return;
        case '/deflate':
          res.writeHead(200, { 'content-encoding': 'deflate' });
          res.end(zlib.deflateSync('zlib deflate'));
          return;
        case '/layers':
          res.writeHead(200, { 'content-encoding': 'gzip, gzip, gzip, gzip, gzip, gzip' });
          res.write('never read');
          return; // never ends: the refusal must close it
        case '/cookies':
          res.setHeader('set-cookie', ['a=1', 'b=2']);
          res.end('ok');
          return;
        case '/empty':
          res.writeHead(204).end();
          return;
        case '/moved':
          res.writeHead(307, { location: '/echo' }).end();
          return;
        case '/slow':
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.write('data: first\n\n');
          return; // never ends: the reader stops
        default:
          res.writeHead(201, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ method: req.method, body }));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    base,
    seen,
    closedEarly: () => closedEarly,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe('the fetch the OpenAI SDK is given (undici request)', () => {
  let s: Awaited<ReturnType<typeof startServer>>;
  const f = undiciFetch();
  beforeAll(async () => {
    s = await startServer();
  });
  afterAll(() => s.close());

  it('sends the method, headers and body, and answers status, headers and body as fetch does', async () => {
    const res = await f(`${s.base}/echo`, {
      method: 'post',
      headers: new Headers({ authorization: 'Bearer k', 'content-type': 'application/json' }),
      body: '{"a":1}',
    });
    expect(res.status).toBe(201);
    expect(res.headers.get('content-type')).toBe('application/json');
    expect(await res.json()).toEqual({ method: 'POST', body: '{"a":1}' });
    const got = s.seen.at(-1)!;
    expect(got.headers.authorization).toBe('Bearer k');
    expect(got.headers['accept-encoding']).toBeUndefined();
  });

  it('decodes a compressed body a server sends anyway, and fails a reader whose body was cut short', async () => {
    const res = await f(`${s.base}/gzip`);
    expect(await res.text()).toBe('decoded text, ünïcode');
    expect(res.headers.get('content-encoding')).toBeNull();
    const cut = await f(`${s.base}/cut`);
    await expect(cut.text()).rejects.toThrow();
  });

  it('gives header bytes as fetch does (Latin-1), and leaves no connection open when it refuses a body', async () => {
    const res = await f(`${s.base}/bytes`);
    const fetched = await fetch(`${s.base}/bytes`);
    expect(res.headers.get('x-note')).toBe(fetched.headers.get('x-note'));
    expect(res.headers.get('x-odd')).toBe(fetched.headers.get('x-odd'));
    expect(await res.text()).toBe('ok');
    const before = s.closedEarly();
    await expect(f(`${s.base}/layers`)).rejects.toThrow(/content-encodings/);
    for (let i = 0; i < 100 && s.closedEarly() === before; i++) await new Promise((r) => setTimeout(r, 10));
    expect(s.closedEarly()).toBe(before + 1);
  });

  it('reads a gzip body without its trailer, and deflate raw or zlib-wrapped, as fetch does', async () => {
    expect(await (await f(`${s.base}/untrailed`)).text()).toBe('whole reply');
    expect(await (await f(`${s.base}/raw-deflate`)).text()).toBe('raw deflate');
    expect(await (await f(`${s.base}/deflate`)).text()).toBe('zlib deflate');
  });

  it('keeps repeated headers, answers 204 without a body, and follows a redirect with the body', async () => {
    expect((await f(`${s.base}/cookies`)).headers.getSetCookie()).toEqual(['a=1', 'b=2']);
    const empty = await f(`${s.base}/empty`, { method: 'DELETE' });
    expect(empty.status).toBe(204);
    expect(empty.body).toBeNull();
    const moved = await f(`${s.base}/moved`, { method: 'POST', body: 'again' });
    expect(moved.status).toBe(201);
    expect(await moved.json()).toEqual({ method: 'POST', body: 'again' });
  });

  it('ends the request when the reader aborts mid-body, and sends other bodies through the global fetch', async () => {
    const abort = new AbortController();
    const res = await f(`${s.base}/slow`, { signal: abort.signal });
    const reader = res.body!.getReader();
    expect(new TextDecoder().decode((await reader.read()).value as Uint8Array)).toBe('data: first\n\n');
    const before = s.closedEarly();
    abort.abort();
    await expect(reader.read()).rejects.toThrow();
    for (let i = 0; i < 100 && s.closedEarly() === before; i++) await new Promise((r) => setTimeout(r, 10));
    expect(s.closedEarly()).toBe(before + 1);

    const form = new FormData();
    form.set('field', 'value');
    const sent = await f(`${s.base}/echo`, { method: 'POST', body: form });
    expect(sent.status).toBe(201);
    expect(s.seen.at(-1)!.headers['content-type']).toMatch(/^multipart\/form-data; boundary=/);
  });
});
