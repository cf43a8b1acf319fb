import { Writable } from 'node:stream';
import type { Config } from '../../src/platform/config';
import { createLogger, type Logger } from '../../src/platform/logger';

/** A logger that keeps every line it writes, for tests that read the service's logs. */
export function recordingLogger(level: Config['LOG_LEVEL']): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(...chunk.toString().split('\n').filter(Boolean));
      done();
    },
  });
  return { logger: createLogger({ LOG_LEVEL: level }, sink), lines };
}
