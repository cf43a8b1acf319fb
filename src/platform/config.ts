import { z } from 'zod';

const optionalUrl = (protocols: readonly string[]) =>
  z
    .string()
    .trim()
    .transform((v) => (v === '' ? undefined : v))
    .pipe(
      z
        .string()
        .refine(
          (v) => protocols.some((p) => v.startsWith(`${p}://`)),
          `must start with ${protocols.map((p) => `${p}://`).join(' or ')}`,
        )
        .optional(),
    )
    .optional();

const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);
const list = z.string().transform((v) =>
  v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean),
);
const bool = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1');

/**
 * Every setting the service reads, with its default. Nothing set = the embedded default: PGlite in
 * `./data`, the postgres event store in the same database, in-process rate limits and fan-out.
 * README's configuration table and `.env.example` list the same variables.
 */
export const ConfigSchema = z.object({
  NODE_ENV: z.enum(['development', 'production', 'test']).default('development'),
  HOST: z.string().min(1).default('0.0.0.0'),
  PORT: int(0, 65535).default(8000),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  DATABASE_URL: optionalUrl(['postgres', 'postgresql']),
  DATABASE_POOL_SIZE: int(1, 500).default(20),
  DATA_DIR: z.string().min(1).default('./data'),
  EMBEDDED_DB_HOST: z.string().min(1).default('127.0.0.1'),
  EMBEDDED_DB_PORT: int(0, 65535).default(5499),
  EVENTSTORE_URL: optionalUrl([
    'postgres',
    'postgresql',
    'kurrentdb',
    'esdb',
    'kurrentdb+discover',
    'esdb+discover',
  ]),
  REDIS_URL: optionalUrl(['redis', 'rediss']),
  JWT_SECRET: z.string().min(32, 'must be at least 32 characters').optional(),
  JWT_ISSUER: z.string().min(1).default('chat-credits'),
  BODY_LIMIT: z
    .string()
    .regex(/^\d+(b|kb|mb)$/i, 'must look like 512kb or 1mb')
    .default('1mb'),
  CORS_ORIGINS: list.default(['*']),
  TRUST_PROXY: bool.default(false),
  SHUTDOWN_TIMEOUT_MS: int(0, 600_000).default(10_000),
  CONSISTENCY_TIMEOUT_MS: int(0, 60_000).default(2_000),
  COMMAND_MAX_RETRIES: int(0, 100).default(5),
  STREAM_CACHE_SIZE: int(0, 10_000_000).default(10_000),
  PROJECTION_BATCH_SIZE: int(1, 100_000).default(500),
  PROJECTIONS_ENABLED: bool.default(true),
  ACCESS_TOKEN_TTL_SECONDS: int(60, 30 * 86_400).default(86_400),
  REFRESH_TOKEN_TTL_SECONDS: int(300, 730 * 86_400).default(90 * 86_400),
  /** How long an instance trusts its cached view of a session before asking the read model again. */
  AUTH_CACHE_MS: int(0, 1_000).default(500),
  SIGNUP_CREDITS: int(0, Number.MAX_SAFE_INTEGER).default(1_000),
  ADMIN_USERNAME: z
    .string()
    .regex(/^[A-Za-z0-9_]{3,32}$/, '3–32 letters, digits or _')
    .optional(),
  ADMIN_PASSWORD: z.string().min(8, 'must be at least 8 characters').max(256).optional(),
});

export type Config = z.infer<typeof ConfigSchema>;

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(readonly problems: { variable: string; message: string }[]) {
    super(`invalid configuration:\n${problems.map((p) => `  ${p.variable}: ${p.message}`).join('\n')}`);
  }
}

/** Reads the configuration from an environment; throws a ConfigError naming every bad variable. */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const present = Object.fromEntries(
    Object.keys(ConfigSchema.shape).flatMap((k) => (env[k] === undefined ? [] : [[k, env[k]]])),
  );
  const parsed = ConfigSchema.safeParse(present);
  if (!parsed.success) {
    throw new ConfigError(
      parsed.error.issues.map((i) => ({
        variable: String(i.path[0] ?? '(environment)'),
        message: i.message,
      })),
    );
  }
  const config = parsed.data;
  if (config.DATABASE_URL && !config.JWT_SECRET) {
    throw new ConfigError([
      { variable: 'JWT_SECRET', message: 'is required with DATABASE_URL: every instance must share it' },
    ]);
  }
  if (Boolean(config.ADMIN_USERNAME) !== Boolean(config.ADMIN_PASSWORD)) {
    throw new ConfigError([
      {
        variable: config.ADMIN_USERNAME ? 'ADMIN_PASSWORD' : 'ADMIN_USERNAME',
        message: 'ADMIN_USERNAME and ADMIN_PASSWORD go together',
      },
    ]);
  }
  return config;
}

/** Test configuration: embedded, in memory, quiet, on a free port. */
export function testConfig(overrides: Partial<Config> = {}): Config {
  return {
    ...ConfigSchema.parse({ NODE_ENV: 'test', LOG_LEVEL: 'silent', PORT: '0', EMBEDDED_DB_PORT: '0' }),
    DATA_DIR: 'memory://',
    JWT_SECRET: 'test-secret-test-secret-test-secret-0123',
    ...overrides,
  };
}
