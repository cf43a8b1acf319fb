import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import {
  RateLimiterMemory,
  RateLimiterRedis,
  RateLimiterRes,
  RLWrapperTimeouts,
  type RateLimiterAbstract,
} from 'rate-limiter-flexible';
import type { Config, RateLimitSpec } from './config';
import { RateLimited } from './errors';
import type { Logger } from './logger';

export type LimitName =
  'login_ip' | 'login_username' | 'register_ip' | 'sms_phone' | 'sms_ip' | 'user' | 'ip' | 'tasks';

/** Counters of requests (or other units) per key in a sliding-free fixed window. */
export interface RateLimits {
  /** Counts `points` (default 1) against `key`'s budget; throws RateLimited (429, Retry-After) once it is spent. */
  consume(name: LimitName, key: string, points?: number): Promise<void>;
  /** Forgets what `key` has spent (e.g. the username's failed logins, after a successful one). */
  reset(name: LimitName, key: string): Promise<void>;
}

const SETTINGS: Record<LimitName, keyof Config> = {
  login_ip: 'RATE_LIMIT_LOGIN_IP',
  login_username: 'RATE_LIMIT_LOGIN_USERNAME',
  register_ip: 'RATE_LIMIT_REGISTER_IP',
  sms_phone: 'RATE_LIMIT_SMS_PHONE',
  sms_ip: 'RATE_LIMIT_SMS_IP',
  user: 'RATE_LIMIT_USER',
  ip: 'RATE_LIMIT_IP',
  tasks: 'RATE_LIMIT_TASKS',
};

const WHAT: Record<LimitName, string> = {
  login_ip: 'sign-in attempts from this address',
  login_username: 'sign-in attempts for this username',
  register_ip: 'registrations from this address',
  sms_phone: 'codes sent to this phone number',
  sms_ip: 'codes requested from this address',
  user: 'requests from this user',
  ip: 'requests from this address',
  tasks: 'replies asked for by this user',
};

/** A Redis answer slower than this is not waited for: the instance's own counters decide instead. */
const REDIS_TIMEOUT_MS = 250;
/** Keys longer than this (a megabyte "username"...) are hashed, so they cannot bloat Redis. */
const MAX_KEY_LENGTH = 128;

interface Limiter {
  limiter: RateLimiterAbstract;
  /** This instance's own counters: alone without Redis, Redis' insurance with it. */
  memory: RateLimiterMemory;
}

/**
 * The rate limits of the configuration (`RATE_LIMIT_*`, `points/seconds`). With Redis, counters are
 * shared by every instance, under `rl:<name>:<key>`; when Redis is down or slow, each instance
 * counts on its own (a limit a few times looser, never a failed or stalled request). Disabled
 * (`RATE_LIMITS_ENABLED=false`), nothing is ever limited.
 */
export function createRateLimits(config: Config, redis: Redis | undefined, logger: Logger): RateLimits {
  if (!config.RATE_LIMITS_ENABLED) return { consume: async () => undefined, reset: async () => undefined };
  const limiters = new Map<LimitName, Limiter>();
  for (const [name, setting] of Object.entries(SETTINGS) as [LimitName, keyof Config][]) {
    const { points, seconds } = config[setting] as RateLimitSpec;
    const options = { keyPrefix: `rl:${name}`, points, duration: seconds };
    const memory = new RateLimiterMemory(options);
    const limiter = redis
      ? new RLWrapperTimeouts({
          limiter: new RateLimiterRedis({
            ...options,
            storeClient: redis,
            insuranceLimiter: memory,
            // Not connected: count in memory at once, rather than wait for a command that will fail.
            rejectIfRedisNotReady: true,
          }),
          timeoutMs: REDIS_TIMEOUT_MS,
          insuranceLimiter: memory,
        })
      : memory;
    limiters.set(name, { limiter, memory });
  }
  const get = (name: LimitName): Limiter => {
    const found = limiters.get(name);
    if (!found) throw new Error(`unknown rate limit ${String(name)}`);
    return found;
  };

  return {
    async consume(name, key, points = 1) {
      const { limiter } = get(name);
      try {
        await limiter.consume(normalizeKey(name, key), points);
      } catch (err) {
        if (err instanceof RateLimiterRes) {
          const retryAfter = Math.max(1, Math.ceil(err.msBeforeNext / 1000));
          throw new RateLimited(`Too many ${WHAT[name]}; retry in ${retryAfter} s.`, retryAfter);
        }
        // Neither Redis nor this instance's counters answered: serve the request rather than fail it.
        logger.warn({ err, limit: name }, 'rate limit unavailable');
      }
    },
    async reset(name, key) {
      const { limiter, memory } = get(name);
      const k = normalizeKey(name, key);
      // Both: what was counted in memory while Redis was away must be forgotten too.
      await Promise.all([
        limiter
          .delete(k)
          .catch((err: unknown) => logger.warn({ err, limit: name }, 'rate limit reset failed')),
        limiter === memory ? undefined : memory.delete(k),
      ]);
    },
  };
}

function normalizeKey(name: LimitName, key: string): string {
  const k = name === 'login_username' ? key.trim().toLowerCase() : key;
  return k.length > MAX_KEY_LENGTH ? `sha256:${createHash('sha256').update(k).digest('hex')}` : k;
}
