import { randomUUID } from 'node:crypto';
import net from 'node:net';
import { Redis } from 'ioredis';
import { testConfig, type Config } from '../../src/platform/config';
import { RateLimited } from '../../src/platform/errors';
import { createLogger } from '../../src/platform/logger';
import { createRateLimits, type RateLimits } from '../../src/platform/rateLimits';

const logger = createLogger({ LOG_LEVEL: 'silent' });

function config(overrides: Partial<Config> = {}): Config {
  return testConfig({
    RATE_LIMITS_ENABLED: true,
    RATE_LIMIT_LOGIN_IP: { points: 3, seconds: 60 },
    RATE_LIMIT_LOGIN_USERNAME: { points: 2, seconds: 60 },
    RATE_LIMIT_IP: { points: 3, seconds: 1 },
    ...overrides,
  });
}

/** The service's own Redis options: fail fast instead of queueing while disconnected. */
function openRedis(options: { url?: string; port?: number }): Redis {
  const common = { enableOfflineQueue: false, maxRetriesPerRequest: 1 } as const;
  const redis = options.url
    ? new Redis(options.url, common)
    : new Redis({ host: '127.0.0.1', port: options.port!, ...common });
  redis.on('error', () => undefined);
  return redis;
}

async function rejection(p: Promise<unknown>): Promise<RateLimited> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RateLimited);
  return err as RateLimited;
}

/** Spends `n` points one by one; each must be allowed. */
async function spend(limits: RateLimits, name: Parameters<RateLimits['consume']>[0], key: string, n: number) {
  for (let i = 0; i < n; i++) await limits.consume(name, key);
}

const stores = process.env.REDIS_URL ? (['memory', 'redis'] as const) : (['memory'] as const);

describe.each(stores)('rate limits in %s', (store) => {
  let redis: Redis | undefined;
  beforeAll(async () => {
    if (store === 'redis') {
      redis = openRedis({ url: process.env.REDIS_URL! });
      await new Promise<void>((resolve) => redis!.once('ready', () => resolve()));
    }
  });
  afterAll(async () => {
    await redis?.quit();
  });
  const make = (overrides: Partial<Config> = {}) => createRateLimits(config(overrides), redis, logger);

  it('allows the configured number of requests, then answers 429 with a sane Retry-After', async () => {
    const limits = make();
    const ip = `10.0.0.${randomUUID()}`;
    await spend(limits, 'login_ip', ip, 3);
    const err = await rejection(limits.consume('login_ip', ip));
    expect(err.status).toBe(429);
    expect(err.type).toBe('/problems/rate-limited');
    expect(err.retryAfterSeconds).toBeGreaterThanOrEqual(1);
    expect(err.retryAfterSeconds).toBeLessThanOrEqual(60);
    expect(err.headers['Retry-After']).toBe(String(err.retryAfterSeconds));
    // Still limited on the next try: a refused request counts too.
    await rejection(limits.consume('login_ip', ip));
  });

  it('keeps separate budgets per key and per limit', async () => {
    const limits = make();
    const key = randomUUID();
    await spend(limits, 'login_ip', key, 3);
    await rejection(limits.consume('login_ip', key));
    await limits.consume('login_ip', randomUUID());
    await limits.consume('register_ip', key);
  });

  it('counts points: one request may cost more than one', async () => {
    const limits = make();
    const key = randomUUID();
    await limits.consume('login_ip', key, 3);
    await rejection(limits.consume('login_ip', key, 1));
  });

  it('forgets a key on reset (a successful login clears the failed attempts)', async () => {
    const limits = make();
    const key = randomUUID();
    await spend(limits, 'login_ip', key, 3);
    await rejection(limits.consume('login_ip', key));
    await limits.reset('login_ip', key);
    await spend(limits, 'login_ip', key, 3);
    await rejection(limits.consume('login_ip', key));
  });

  it('keys usernames without regard to case', async () => {
    const limits = make();
    const name = `Ann_${randomUUID().slice(0, 8)}`;
    await limits.consume('login_username', name);
    await limits.consume('login_username', name.toUpperCase());
    await rejection(limits.consume('login_username', ` ${name.toLowerCase()} `));
    await limits.reset('login_username', name.toUpperCase());
    await limits.consume('login_username', name);
  });

  it('keys an overlong key by its hash, still one budget', async () => {
    const limits = make();
    const long = `${randomUUID()}${'x'.repeat(100_000)}`;
    await spend(limits, 'login_ip', long, 3);
    await rejection(limits.consume('login_ip', long));
    await limits.consume('login_ip', `${long}y`);
  });

  it('opens the budget again once its window has passed', async () => {
    const limits = make();
    const key = randomUUID();
    await spend(limits, 'ip', key, 3);
    const err = await rejection(limits.consume('ip', key));
    expect(err.retryAfterSeconds).toBe(1);
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    await limits.consume('ip', key);
  });

  it('limits nothing when RATE_LIMITS_ENABLED is false', async () => {
    const limits = make({ RATE_LIMITS_ENABLED: false });
    await spend(limits, 'login_ip', randomUUID(), 20);
  });

  if (store === 'redis') {
    it('shares budgets between instances, under rl:<name>:<key>', async () => {
      const a = make();
      const b = make();
      const key = randomUUID();
      await spend(a, 'login_ip', key, 2);
      await b.consume('login_ip', key);
      await rejection(a.consume('login_ip', key));
      expect(await redis!.exists(`rl:login_ip:${key}`)).toBe(1);
      await b.reset('login_ip', key);
      expect(await redis!.exists(`rl:login_ip:${key}`)).toBe(0);
      await a.consume('login_ip', key);
    });
  }
});

describe('rate limits when Redis is down', () => {
  it('still limits, per instance, without throwing anything but 429 or waiting', async () => {
    // A port nothing listens on.
    const probe = net.createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const { port } = probe.address() as net.AddressInfo;
    await new Promise((resolve) => probe.close(resolve));
    const redis = openRedis({ port });
    try {
      const limits = createRateLimits(config(), redis, logger);
      const key = randomUUID();
      await spend(limits, 'login_ip', key, 3);
      const err = await rejection(limits.consume('login_ip', key));
      expect(err.retryAfterSeconds).toBeGreaterThanOrEqual(1);
      await limits.reset('login_ip', key);
      await limits.consume('login_ip', key);
    } finally {
      redis.disconnect();
    }
  });

  it('does not wait for a Redis that accepts commands but never answers', async () => {
    // Answers what a client sends while connecting (HELLO, CLIENT SETINFO, the INFO ready check), then
    // nothing: a hung server. Each command is one RESP array: `*<n>`, then `$<len>` and the name.
    const sockets = new Set<net.Socket>();
    const hung = net.createServer((socket) => {
      sockets.add(socket);
      socket.on('data', (data) => {
        for (const [, name] of data.toString('latin1').matchAll(/\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n/g)) {
          const command = name!.toUpperCase();
          if (command === 'INFO') {
            const info = '# Server\r\nredis_version:7.2.0\r\nloading:0\r\n';
            socket.write(`$${Buffer.byteLength(info)}\r\n${info}\r\n`);
          } else if (command === 'HELLO') {
            // No RESP3 here: the client falls back to RESP2.
            socket.write("-ERR unknown command 'HELLO'\r\n");
          } else if (command === 'CLIENT' || command === 'SELECT') socket.write('+OK\r\n');
        }
      });
    });
    await new Promise<void>((resolve) => hung.listen(0, '127.0.0.1', resolve));
    const redis = openRedis({ port: (hung.address() as net.AddressInfo).port });
    try {
      await new Promise<void>((resolve) => redis.once('ready', () => resolve()));
      const limits = createRateLimits(config(), redis, logger);
      const key = randomUUID();
      await spend(limits, 'login_ip', key, 3);
      await rejection(limits.consume('login_ip', key));
    } finally {
      redis.disconnect();
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => hung.close(resolve));
    }
  });
});
