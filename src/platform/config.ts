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

/** A whole number written in digits: an empty setting is an error naming it, not a silent 0. */
const int = (min: number, max: number) =>
  z
    .string()
    .trim()
    .regex(/^[0-9]+$/, `must be a whole number from ${min} to ${max}`)
    .transform(Number)
    .pipe(z.number().min(min).max(max));
const list = z.string().transform((v) =>
  v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean),
);
const bool = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1');
/** `points/seconds`: at most `points` requests (or units) per `seconds`. */
const rate = (fallback: string) =>
  z
    .string()
    .trim()
    .regex(/^[1-9]\d{0,8}\/[1-9]\d{0,7}$/, 'must look like 20/60: at most 20 per 60 seconds')
    .transform((v) => {
      const [points, seconds] = v.split('/').map(Number);
      return { points: points!, seconds: seconds! };
    })
    .prefault(fallback);

/** A rate limit from the configuration. */
export type RateLimitSpec = { points: number; seconds: number };

/** An http(s) URL with a default (providers' endpoints: tests point them at local fakes). */
const httpUrl = (fallback: string) =>
  z
    .string()
    .trim()
    .regex(/^https?:\/\/[^\s/?#]+/, 'must start with http:// or https://')
    .default(fallback);
/** Unset and empty are the same: not configured. */
const optionalText = z
  .string()
  .trim()
  .transform((v) => (v === '' ? undefined : v))
  .optional();

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
  DATABASE_POOL_MIN: int(0, 500).default(6),
  DATABASE_POOL_IDLE_MS: int(100, 3_600_000).default(30_000),
  DATABASE_CONNECT_TIMEOUT_MS: int(100, 120_000).default(5_000),
  DATABASE_STATEMENT_TIMEOUT_MS: int(0, 3_600_000).default(60_000),
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
  /**
   * The largest body of `/chat/completions` sent with a valid access token: apps send a picture in
   * the request itself, as a base64 data URL (a phone photo is 3–5 MB, a third more in base64).
   */
  COMPLETION_BODY_LIMIT: z
    .string()
    .regex(/^\d+(b|kb|mb)$/i, 'must look like 512kb or 20mb')
    .default('20mb'),
  /**
   * A request with an `Idempotency-Key` holds the key on a lease its instance renews while it runs;
   * a lease not renewed this long (the instance died) lets a retry take the key over. A token answer
   * is given again to a retry for this long too, and no longer.
   */
  IDEMPOTENCY_LEASE_SECONDS: int(1, 3_600).default(60),
  CORS_ORIGINS: list.default(['*']),
  TRUST_PROXY: bool.default(false),
  /** With TRUST_PROXY, how many proxies of ours add to X-Forwarded-For (the client is the one before them). */
  PROXY_HOPS: int(1, 10).default(1),
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
  /**
   * A capture whose actual cost exceeds its hold: `charge_available` charges the excess from what is
   * available (never below zero), `forgive` charges the hold only.
   */
  CREDIT_EXCESS_POLICY: z.enum(['forgive', 'charge_available']).default('charge_available'),
  /** Charges without a hold first; refused (409) when false. */
  DIRECT_CHARGES: bool.default(false),
  /** A hold's expiry when its reservation names none: the hold-expiry scheduler then gives it back. */
  HOLD_TTL_SECONDS: int(1, 30 * 86_400).default(900),
  /** How often the hold-expiry scheduler looks for holds past their expiry. */
  HOLD_EXPIRY_INTERVAL_MS: int(100, 3_600_000).default(5_000),
  ADMIN_USERNAME: z
    .string()
    .regex(/^[A-Za-z0-9_]{3,32}$/, '3–32 letters, digits or _')
    .optional(),
  ADMIN_PASSWORD: z.string().min(8, 'must be at least 8 characters').max(256).optional(),
  RATE_LIMITS_ENABLED: bool.default(true),
  /** Sign-in attempts per client IP. */
  RATE_LIMIT_LOGIN_IP: rate('20/60'),
  /** Sign-in attempts per username, from anywhere: password guessing. */
  RATE_LIMIT_LOGIN_USERNAME: rate('5/60'),
  RATE_LIMIT_REGISTER_IP: rate('10/3600'),
  /** SMS codes sent to one phone number. */
  RATE_LIMIT_SMS_PHONE: rate('5/3600'),
  RATE_LIMIT_SMS_IP: rate('20/3600'),
  /** Every /api/v1 request of a signed-in user. */
  RATE_LIMIT_USER: rate('600/60'),
  /** Every /api/v1 request without a valid token, per client IP. */
  RATE_LIMIT_IP: rate('1200/60'),
  /** How long a call to WeChat, Apple's key set or the SMS gateway may take before it is given up (503). */
  PROVIDER_TIMEOUT_MS: int(100, 60_000).default(5_000),
  /** WeChat's API (a fake one in tests). */
  WECHAT_API_BASE_URL: httpUrl('https://api.weixin.qq.com'),
  /** A WeChat mini program's app id and secret (`jscode2session`); unset = no mini program sign-in. */
  WECHAT_MINI_APP_ID: optionalText,
  WECHAT_MINI_APP_SECRET: optionalText,
  /** A mobile app's app id and secret on the WeChat Open Platform (`sns/oauth2/access_token`). */
  WECHAT_APP_ID: optionalText,
  WECHAT_APP_SECRET: optionalText,
  /** Apple's signing keys for identity tokens (a local key set in tests). */
  APPLE_JWKS_URL: httpUrl('https://appleid.apple.com/auth/keys'),
  /** Accepted `aud` of Apple identity tokens: bundle ids and Services IDs, comma-separated; empty = no Apple sign-in. */
  APPLE_CLIENT_ID: list.default([]),
  /**
   * After a token names a key id not in the cached key set, the set is fetched again at most this
   * often: Apple's key rotation is picked up, made-up key ids cannot make us hammer Apple.
   */
  APPLE_JWKS_COOLDOWN_MS: int(0, 3_600_000).default(30_000),
  /** `dev` logs sign-in codes instead of sending them (never in production); `aliyun` sends them. */
  SMS_PROVIDER: z.enum(['dev', 'aliyun']).default('dev'),
  /** An SMS code's lifetime, the guesses it allows, and the wait before another is sent to the number. */
  SMS_CODE_TTL_SECONDS: int(60, 3_600).default(300),
  SMS_CODE_MAX_ATTEMPTS: int(1, 20).default(5),
  SMS_CODE_RESEND_SECONDS: int(0, 3_600).default(60),
  /** Aliyun SMS (Dysmsapi `SendSms`), for SMS_PROVIDER=aliyun: endpoint, AccessKey, sign name, template. */
  ALIYUN_SMS_ENDPOINT: httpUrl('https://dysmsapi.aliyuncs.com'),
  ALIYUN_ACCESS_KEY_ID: optionalText,
  ALIYUN_ACCESS_KEY_SECRET: optionalText,
  ALIYUN_SMS_SIGN_NAME: optionalText,
  /** A template with one `${code}` variable. */
  ALIYUN_SMS_TEMPLATE_CODE: optionalText,
  /**
   * The model catalog: a JSON file of providers and models (see models.example.json). Unset, with
   * MODELS_JSON unset too = the built-in offline model `local-echo` only.
   */
  MODELS_FILE: optionalText,
  /** The same as inline JSON; its entries replace the file's of the same id. */
  MODELS_JSON: optionalText,
  /** The built-in model's pause before each token, so its replies stream like a model's. */
  LOCAL_MODEL_DELAY_MS: int(0, 10_000).default(15),
  /**
   * Longest wait for a provider's response and then between two chunks of it (a keep-alive
   * comment counts as one): a provider that stops sending fails the task (and releases its hold)
   * instead of holding it forever; one that only keeps its stream alive is stopped by the task's
   * time limit.
   */
  LLM_IDLE_TIMEOUT_MS: int(100, 3_600_000).default(120_000),
  /** Attempts per generation (the first included) while the provider fails before its first token. */
  LLM_RETRY_ATTEMPTS: int(1, 10).default(3),
  /** Wait before the first retry; doubled for each further one, with jitter. */
  LLM_RETRY_BASE_DELAY_MS: int(0, 60_000).default(250),
  /**
   * Longest a task may run. Its instance stops it then; a task whose instance died is failed by the
   * sweeper this long after it started (plus a grace period), and its hold released.
   */
  TASK_TIMEOUT_SECONDS: int(5, 86_400).default(600),
  /** How often the sweeper looks for tasks past their deadline. */
  TASK_SWEEP_INTERVAL_MS: int(100, 3_600_000).default(10_000),
  /**
   * How often an instance looks in the task streams of its longer generations for a cancel whose
   * message never reached it (lost by Redis, or asked of another instance without Redis).
   */
  TASK_CANCEL_CHECK_MS: int(100, 600_000).default(5_000),
  /** Replies one user may have generating at once, across instances (more: 429). */
  TASKS_MAX_RUNNING_PER_USER: int(1, 1_000).default(4),
  /** Tasks (and completions) one user may start. */
  RATE_LIMIT_TASKS: rate('60/60'),
  /** A comment on an idle event stream this often, so proxies keep the connection. */
  SSE_HEARTBEAT_MS: int(100, 300_000).default(15_000),
  /**
   * A streamed `/chat/completions` opens its response at its first piece, or after this long: a
   * provider's refusal within it is answered as the 400 it is, not inside a stream begun as 200.
   */
  COMPLETION_OPEN_WAIT_MS: int(0, 60_000).default(2_000),
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
  const providerProblems = signInProviderProblems(config);
  if (providerProblems.length > 0) throw new ConfigError(providerProblems);
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

/** Sign-in provider settings that only work together: an app id needs its secret, Aliyun all four. */
function signInProviderProblems(config: Config): { variable: string; message: string }[] {
  const problems: { variable: string; message: string }[] = [];
  for (const [id, secret] of [
    ['WECHAT_MINI_APP_ID', 'WECHAT_MINI_APP_SECRET'],
    ['WECHAT_APP_ID', 'WECHAT_APP_SECRET'],
  ] as const) {
    if (Boolean(config[id]) !== Boolean(config[secret])) {
      problems.push({ variable: config[id] ? secret : id, message: `${id} and ${secret} go together` });
    }
  }
  if (config.SMS_PROVIDER === 'aliyun') {
    for (const name of [
      'ALIYUN_ACCESS_KEY_ID',
      'ALIYUN_ACCESS_KEY_SECRET',
      'ALIYUN_SMS_SIGN_NAME',
      'ALIYUN_SMS_TEMPLATE_CODE',
    ] as const) {
      if (!config[name]) problems.push({ variable: name, message: 'is required with SMS_PROVIDER=aliyun' });
    }
  }
  return problems;
}

/** Test configuration: embedded, in memory, quiet, on a free port. */
export function testConfig(overrides: Partial<Config> = {}): Config {
  return {
    ...ConfigSchema.parse({ NODE_ENV: 'test', LOG_LEVEL: 'silent', PORT: '0', EMBEDDED_DB_PORT: '0' }),
    DATA_DIR: 'memory://',
    JWT_SECRET: 'test-secret-test-secret-test-secret-0123',
    // Tests sign in and register far more often than a person: the rate-limit tests turn them on.
    RATE_LIMITS_ENABLED: false,
    // The built-in model answers at once: tests wait for behaviour, not for pacing.
    LOCAL_MODEL_DELAY_MS: 0,
    ...overrides,
  };
}
