import { ConfigError, loadConfig, type Config } from '../platform/config';
import { createLogger, type Logger } from '../platform/logger';

/** Runs a CLI's main with the configuration loaded; a bad setting or failure exits non-zero with a clear message. */
export function runCli(main: (config: Config, logger: Logger) => Promise<number | void>): void {
  let config: Config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const logger = createLogger(config);
  main(config, logger).then(
    (code) => process.exit(code ?? 0),
    (err: unknown) => {
      logger.error({ err }, 'failed');
      process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
