import { z } from 'zod';
import {
  appleSignIn,
  CodeResendTooSoon,
  requestSmsCode,
  smsSignIn,
  weChatSignIn,
} from '../commands/users/providerSignIn';
import { createSignInProviders } from '../platform/identity';
import { normalisePhone } from '../platform/identity/phone';
import { ProviderNotConfigured } from '../platform/identity/providerHttp';
import { createSmsCodeStore } from '../platform/identity/smsCodes';
import type { RateLimits } from '../platform/rateLimits';
import { identityDeps, requestContext } from './identityDeps';
import { setEventPosition } from './middleware/consistency';
import { clientIp, limit } from './middleware/rateLimit';
import { problemResponses } from './openapi';
import { sendTokens, TokenResponse } from './sessions';
import type { Resource } from './types';

const WeChatBody = z
  .object({
    code: z.string().trim().min(1).max(256),
    kind: z
      .enum(['mini', 'app'])
      .optional()
      .meta({ description: 'mini = a mini program’s wx.login code; app = the Open Platform app flow.' }),
  })
  .meta({ id: 'WeChatSignIn', description: 'The one-time code the WeChat client returned.' });
const AppleBody = z
  .object({ identity_token: z.string().min(1).max(8_192) })
  .meta({ id: 'AppleSignIn', description: 'The identityToken of a Sign in with Apple authorization.' });
const Phone = z
  .string()
  .max(32)
  .refine(
    (v) => normalisePhone(v) !== undefined,
    'must be a mobile number: +8613800138000, or 11 mainland digits',
  )
  .meta({ example: '+8613800138000' });
const SmsCodeBody = z.object({ phone: Phone }).meta({ id: 'SmsCodeRequest' });
const SmsTokenBody = z
  .object({ phone: Phone, code: z.string().regex(/^\d{6}$/, 'must be the 6 digits of the SMS') })
  .meta({ id: 'SmsSignIn' });
const SmsCodeSent = z
  .object({
    expires_in: z.number().int().meta({ description: 'Seconds the code stays valid.' }),
    resend_in: z.number().int().meta({ description: 'Seconds before another code may be asked for.' }),
  })
  .meta({ id: 'SmsCodeSent' });

const tokenResponse = {
  200: { description: 'A token pair', content: { 'application/json': { schema: TokenResponse } } },
};

/**
 * Third-party sign-in (API.md, Sessions): WeChat, Apple, SMS code. Each first sign-in registers the
 * user. A method without configuration answers 503 `/problems/provider-not-configured`.
 */
export const providerSessions: Resource = (router, { deps, openapi }) => {
  const identity = identityDeps(deps);
  const providers = deps.signIn ?? createSignInProviders(deps.config, deps.logger);
  const { config } = deps;
  const codes = createSmsCodeStore(deps.db.db, {
    pepper: config.JWT_SECRET ?? '',
    policy: {
      ttlSeconds: config.SMS_CODE_TTL_SECONDS,
      maxAttempts: config.SMS_CODE_MAX_ATTEMPTS,
      resendSeconds: config.SMS_CODE_RESEND_SECONDS,
    },
  });

  openapi.registerPath({
    method: 'post',
    path: '/session/wechat/token',
    summary: 'Sign in with WeChat (the first sign-in registers)',
    tags: ['sessions'],
    request: { body: { content: { 'application/json': { schema: WeChatBody } } } },
    responses: { ...tokenResponse, ...problemResponses(400, 401, 403, 429, 503) },
  });
  router.post('/session/wechat/token', limit('login_ip', clientIp), async (ctx) => {
    const { code, kind } = WeChatBody.parse(ctx.request.body);
    if (!providers.wechat)
      throw new ProviderNotConfigured('WeChat sign-in is not configured on this server.');
    sendTokens(ctx, await weChatSignIn(identity, providers.wechat, { code, kind }, signUpContext(ctx)));
  });

  openapi.registerPath({
    method: 'post',
    path: '/session/apple/token',
    summary: 'Sign in with Apple (the first sign-in registers)',
    tags: ['sessions'],
    request: { body: { content: { 'application/json': { schema: AppleBody } } } },
    responses: { ...tokenResponse, ...problemResponses(400, 401, 429, 503) },
  });
  router.post('/session/apple/token', limit('login_ip', clientIp), async (ctx) => {
    const { identity_token } = AppleBody.parse(ctx.request.body);
    if (!providers.apple)
      throw new ProviderNotConfigured('Sign in with Apple is not configured on this server.');
    sendTokens(ctx, await appleSignIn(identity, providers.apple, identity_token, signUpContext(ctx)));
  });

  openapi.registerPath({
    method: 'post',
    path: '/session/sms/code',
    summary: 'Send a sign-in code by SMS',
    tags: ['sessions'],
    request: { body: { content: { 'application/json': { schema: SmsCodeBody } } } },
    responses: {
      202: { description: 'Sent', content: { 'application/json': { schema: SmsCodeSent } } },
      ...problemResponses(400, 429, 503),
    },
  });
  router.post('/session/sms/code', limit('sms_ip', clientIp), async (ctx) => {
    const phone = phoneOf(SmsCodeBody.parse(ctx.request.body).phone);
    if (!providers.sms) throw new ProviderNotConfigured('SMS sign-in is not configured on this server.');
    // Asking again within the resend wait costs the number nothing from its hourly budget.
    const wait = await codes.cooldown(phone, deps.clock.now());
    if (wait > 0) throw new CodeResendTooSoon(wait);
    await ctx.rateLimits.consume('sms_phone', phone);
    await requestSmsCode(deps, codes, providers.sms, phone);
    // A code is kept outside the event log: this command writes no event, and a read after it
    // has nothing to wait for (position 0, the start of the log).
    setEventPosition(ctx, 0n);
    ctx.status = 202;
    ctx.body = { expires_in: config.SMS_CODE_TTL_SECONDS, resend_in: config.SMS_CODE_RESEND_SECONDS };
  });

  openapi.registerPath({
    method: 'post',
    path: '/session/sms/token',
    summary: 'Sign in with a code sent by SMS (the first sign-in registers)',
    tags: ['sessions'],
    request: { body: { content: { 'application/json': { schema: SmsTokenBody } } } },
    responses: { ...tokenResponse, ...problemResponses(400, 401, 429) },
  });
  router.post('/session/sms/token', limit('login_ip', clientIp), async (ctx) => {
    const body = SmsTokenBody.parse(ctx.request.body);
    sendTokens(
      ctx,
      await smsSignIn(identity, codes, { phone: phoneOf(body.phone), code: body.code }, signUpContext(ctx)),
    );
  });
};

/** Validated by the schema already; E.164 from here on. */
function phoneOf(raw: string): string {
  const phone = normalisePhone(raw);
  if (!phone) throw new Error('phone passed validation but does not normalise');
  return phone;
}

/** A sign-in's context; a first sign-in that registers spends the registration budget of its address. */
function signUpContext(ctx: Parameters<typeof requestContext>[0] & { rateLimits: RateLimits }) {
  return {
    ...requestContext(ctx),
    beforeNewUser: () => ctx.rateLimits.consume('register_ip', clientIp(ctx)),
  };
}
