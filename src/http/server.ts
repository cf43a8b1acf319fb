import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type Koa from 'koa';
import type { Config } from '../platform/config';
import type { Logger } from '../platform/logger';
import { PROBLEM_CONTENT_TYPE, statusProblem } from './problem';

export interface HttpServer {
  /** The port listened on (useful with PORT=0). */
  readonly port: number;
  readonly server: http.Server;
  /**
   * Graceful stop: no new connections, in-flight requests may finish within SHUTDOWN_TIMEOUT_MS,
   * idle keep-alive sockets are closed at once, whatever is left at the deadline is destroyed.
   */
  close(): Promise<void>;
}

const IDLE_SWEEP_MS = 50;

/** The parser's refusals Node answers with another status than 400, as it does. */
const UNPARSABLE: Record<string, [number, string]> = {
  HPE_HEADER_OVERFLOW: [431, 'The request headers are too large.'],
  HPE_CHUNK_EXTENSIONS_OVERFLOW: [413, 'The chunk extensions are too large.'],
  ERR_HTTP_REQUEST_TIMEOUT: [408, 'The request did not arrive in time.'],
};

/**
 * A request Node's parser refused (headers too large, a malformed request line, two lengths...)
 * never reaches the app: it is answered here, as problem+json like every other error, and the
 * connection closed (what follows on it cannot be read).
 */
function answerUnparsable(err: NodeJS.ErrnoException, socket: Duplex): void {
  // As Node does: an answer only where no response of this connection has begun (a pipelined bad
  // request behind a stream would land inside its body); otherwise the connection is dropped.
  const inFlight = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
  if (err.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent) {
    socket.destroy();
    return;
  }
  const [status, detail] = UNPARSABLE[err.code ?? ''] ?? [400, 'The request is not well-formed HTTP.'];
  const body = JSON.stringify(statusProblem(status, detail));
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: ${PROBLEM_CONTENT_TYPE}\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

/** Listens on HOST:PORT with the app. */
export async function startHttpServer(
  app: Pick<Koa, 'callback'>,
  config: Pick<Config, 'HOST' | 'PORT' | 'SHUTDOWN_TIMEOUT_MS'>,
  logger: Logger,
): Promise<HttpServer> {
  const handle = app.callback();
  const server = http.createServer((req, res) => void handle(req, res));
  server.on('clientError', answerUnparsable);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.PORT, config.HOST, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  logger.info({ host: config.HOST, port }, 'listening');

  let closing: Promise<void> | undefined;
  function close(): Promise<void> {
    closing ??= new Promise<void>((resolve) => {
      const started = Date.now();
      server.close(() => {
        clearInterval(sweep);
        clearTimeout(deadline);
        logger.info({ ms: Date.now() - started }, 'http server closed');
        resolve();
      });
      // A keep-alive socket turns idle when its request finishes: close it then rather than
      // wait for the client or the keep-alive timeout.
      server.closeIdleConnections();
      const sweep = setInterval(() => server.closeIdleConnections(), IDLE_SWEEP_MS);
      const deadline = setTimeout(() => {
        logger.warn(
          { timeoutMs: config.SHUTDOWN_TIMEOUT_MS },
          'shutdown timeout: closing the remaining connections',
        );
        server.closeAllConnections();
      }, config.SHUTDOWN_TIMEOUT_MS);
    });
    return closing;
  }

  return { port, server, close };
}
