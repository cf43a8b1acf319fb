import net from 'node:net';
import type { LimitName } from '../../platform/rateLimits';
import { API_BASE } from '../openapi';
import type { AppMiddleware, AppState } from '../types';
import { bearerClaims } from './auth';

type Ctx = Parameters<AppMiddleware>[0];

/**
 * Every request under /api/v1 spends from a budget: its user's (`RATE_LIMIT_USER`) when it carries
 * a valid access token, else its client address's (`RATE_LIMIT_IP`). Beyond it: 429 with
 * `Retry-After`. Runs before the body is read, so a limited request costs next to nothing.
 */
export function defaultBudget(): AppMiddleware {
  return async (ctx, next) => {
    if (ctx.path === API_BASE || ctx.path.startsWith(`${API_BASE}/`)) {
      // A bad token is counted by address, and `auth()` answers 401.
      const userId = bearerClaims(ctx)?.userId;
      if (userId) await ctx.rateLimits.consume('user', userId);
      else await ctx.rateLimits.consume('ip', clientIp(ctx));
    }
    await next();
  };
}

/**
 * A route's own limit: spends one from `name`'s budget for `keyOf(ctx)` (nothing when it gives
 * no key), e.g. `limit('login_ip', clientIp)`, `limit('login_username', (ctx) => bodyField(ctx, 'username'))`.
 */
export function limit<S extends AppState = AppState>(
  name: LimitName,
  keyOf: (ctx: Parameters<AppMiddleware<S>>[0]) => string | undefined,
): AppMiddleware<S> {
  return async (ctx, next) => {
    const key = keyOf(ctx);
    if (key) await ctx.rateLimits.consume(name, key);
    await next();
  };
}

/**
 * The client's address (`X-Forwarded-For` only with TRUST_PROXY), as a rate-limit key: IPv4 as is,
 * IPv6 by its /64, since one subscriber holds a whole /64 and could step through it.
 */
export function clientIp(ctx: Pick<Ctx, 'ip'>): string {
  const ip = ctx.ip || 'unknown';
  if (ip.toLowerCase().startsWith('::ffff:') && net.isIPv4(ip.slice(7))) return ip.slice(7);
  if (!net.isIPv6(ip)) return ip;
  const groups = expandIpv6(ip);
  return groups ? `${groups.slice(0, 4).join(':')}::/64` : ip;
}

/** The eight 16-bit groups of an IPv6 address, lowercase without leading zeros; undefined if unsure. */
function expandIpv6(ip: string): string[] | undefined {
  const bare = ip.split('%')[0] ?? ip; // zone id
  const [head = '', tail] = bare.toLowerCase().split('::');
  const parse = (part: string) => (part === '' ? [] : part.split(':'));
  const left = parse(head);
  const right = tail === undefined ? [] : parse(tail);
  // An embedded IPv4 tail (::ffff:1.2.3.4 was handled before): beyond what a /64 key needs.
  if ([...left, ...right].some((g) => !/^[0-9a-f]{1,4}$/.test(g))) return undefined;
  const missing = 8 - left.length - right.length;
  if (tail === undefined ? missing !== 0 : missing < 1) return undefined;
  const groups = [...left, ...Array<string>(tail === undefined ? 0 : missing).fill('0'), ...right];
  return groups.map((g) => g.replace(/^0+(?=.)/, ''));
}
