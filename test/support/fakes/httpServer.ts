import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FakeRequest {
  method: string;
  /** Path without the query. */
  path: string;
  query: URLSearchParams;
  headers: http.IncomingHttpHeaders;
  body: string;
}

export interface FakeResponse {
  status: number;
  body: string;
  contentType?: string;
}

export interface FakeHttpServer {
  /** http://127.0.0.1:<port>, no trailing slash. */
  url: string;
  close(): Promise<void>;
}

/** A local HTTP server for a fake provider: each request, body read, goes to `handle`. */
export async function startFakeHttpServer(
  handle: (req: FakeRequest) => FakeResponse | Promise<FakeResponse>,
): Promise<FakeHttpServer> {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://fake');
      void Promise.resolve(
        handle({
          method: req.method ?? 'GET',
          path: url.pathname,
          query: url.searchParams,
          headers: req.headers,
          body: Buffer.concat(chunks).toString('utf8'),
        }),
      )
        .catch((err: unknown) => ({ status: 500, body: String(err), contentType: 'text/plain' }))
        .then((answer) => {
          res.writeHead(answer.status, { 'content-type': answer.contentType ?? 'application/json' });
          res.end(answer.body);
        });
    });
  });
  // Keep-alive sockets would hold close() up: fakes answer and hang up.
  server.keepAliveTimeout = 1;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((err) => (err ? reject(err) : resolve()));
      }),
  };
}

/** A port nothing listens on (for "the provider is unreachable"). */
export async function closedPortUrl(): Promise<string> {
  const fake = await startFakeHttpServer(() => ({ status: 200, body: '{}' }));
  await fake.close();
  return fake.url;
}
