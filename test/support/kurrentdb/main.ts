/**
 * `npm run kurrentdb:test-server -- --port 2113 [--host 0.0.0.0] [--no-system-events]`: the in-memory
 * KurrentDB test server on its own, insecure, so the service can be started against it by hand:
 * `EVENTSTORE_URL=kurrentdb://127.0.0.1:2113?tls=false npm start`. Everything is lost when it stops.
 */
import { parseArgs } from 'node:util';
import { startKurrentDbTestServer } from './server';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      port: { type: 'string', default: '2113' },
      host: { type: 'string', default: '127.0.0.1' },
      'no-system-events': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(
      'usage: kurrentdb:test-server [--port 2113] [--host 127.0.0.1] [--no-system-events]\n',
    );
    return;
  }
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65_535)
    throw new Error(`--port ${values.port}: not a port`);
  const server = await startKurrentDbTestServer({
    host: values.host,
    port,
    systemEvents: !values['no-system-events'],
  });
  process.stdout.write(
    `KurrentDB test server (in memory, insecure) listening on ${values.host}:${server.port}\n` +
      `EVENTSTORE_URL=${server.url}\n`,
  );
  const stop = () => {
    process.stdout.write('stopping\n');
    server.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
