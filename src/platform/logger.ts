import pino, { type Logger } from 'pino';
import type { Config } from './config';

export type { Logger };

/** pino JSON logs; credentials are redacted wherever they appear in a logged request. */
export function createLogger(
  config: Pick<Config, 'LOG_LEVEL'>,
  destination?: pino.DestinationStream,
): Logger {
  const options: pino.LoggerOptions = {
    level: config.LOG_LEVEL,
    base: { service: 'chat-credits' },
    redact: {
      paths: [
        'req.headers.authorization',
        'req.headers.cookie',
        '*.password',
        '*.refresh_token',
        '*.access_token',
        'config.JWT_SECRET',
        'config.DATABASE_URL',
        'config.REDIS_URL',
        'config.EVENTSTORE_URL',
        'config.WECHAT_MINI_APP_SECRET',
        'config.WECHAT_APP_SECRET',
        'config.ALIYUN_ACCESS_KEY_SECRET',
        'config.MODELS_JSON',
      ],
      censor: '[redacted]',
    },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return destination ? pino(options, destination) : pino(options);
}
