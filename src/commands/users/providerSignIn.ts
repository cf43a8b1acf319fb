import { RateLimited, Unauthorized } from '../../platform/errors';
import type { AppleVerifier } from '../../platform/identity/apple';
import type { SmsSender } from '../../platform/identity/sms';
import type { SmsCodeStore } from '../../platform/identity/smsCodes';
import type { WeChatClient, WeChatKind } from '../../platform/identity/wechat';
import { ValueTaken } from './decider';
import {
  ownerOf,
  providerSignIn,
  readUser,
  reserve,
  type IdentityDeps,
  type RequestContext,
  type TokenPair,
} from './identity';

type SignedIn = TokenPair & { registered: boolean };

/**
 * Signs in with a WeChat code; the first sign-in registers the user.
 *
 * WeChat names a person by an openid per app, and by a unionid shared by every app of our Open
 * Platform account when the app is bound to one. The account is linked by the unionid when WeChat
 * sends one, else by the openid, and both are reserved for the user, so the next sign-in finds the
 * same account whichever it brings: a mini program user first seen without a unionid keeps their
 * account once the program is bound, and the same person coming from the app (another openid, the
 * same unionid) lands in it too. Where the two disagree (the unionid is another account's), the
 * unionid wins: it is the one WeChat guarantees across apps.
 */
export async function weChatSignIn(
  deps: IdentityDeps,
  client: WeChatClient,
  input: { code: string; kind?: WeChatKind | undefined },
  ctx: RequestContext,
): Promise<SignedIn> {
  const kind = input.kind ?? client.kinds()[0] ?? 'mini';
  const who = await client.exchange(input.code, kind);
  const ids = who.unionid ? [who.unionid, who.openid] : [who.openid];
  let subject = ids[0] ?? who.openid;
  for (const id of ids) {
    const owner = await ownerOf(deps, 'wechat', id);
    if (owner === null) continue;
    // The account's own link, which may be the other id (or an openid of another app of ours).
    subject = (await readUser(deps, owner)).identities.get('wechat') ?? id;
    break;
  }
  const pair = await providerSignIn(
    deps,
    { provider: 'wechat', subject, usernamePrefix: 'wx' },
    'wechat',
    ctx,
  );
  for (const id of ids) {
    if (id === subject) continue;
    try {
      await reserve(deps, 'wechat', id, pair.userId, ctx);
    } catch (err) {
      if (!(err instanceof ValueTaken)) throw err;
      deps.logger?.info({ userId: pair.userId }, 'a WeChat id of this sign-in belongs to another account');
    }
  }
  return pair;
}

/** Signs in with a Sign in with Apple identity token; the first sign-in registers the user. */
export async function appleSignIn(
  deps: IdentityDeps,
  verifier: AppleVerifier,
  identityToken: string,
  ctx: RequestContext,
): Promise<SignedIn> {
  const apple = await verifier.verify(identityToken, deps.clock.now());
  // A relay address's local part is gibberish: no nickname is better than that.
  const nickname = apple.email && !apple.privateEmail ? apple.email.split('@')[0] : undefined;
  return providerSignIn(
    deps,
    { provider: 'apple', subject: apple.subject, usernamePrefix: 'apple', ...(nickname ? { nickname } : {}) },
    'apple',
    ctx,
  );
}

/** A code was asked for too soon after the last one. */
export class CodeResendTooSoon extends RateLimited {
  constructor(retryAfterSeconds: number) {
    super(
      `A code was sent to this number moments ago; ask again in ${retryAfterSeconds} s.`,
      retryAfterSeconds,
    );
  }
}

/**
 * Sends a new sign-in code to `phone` (E.164). A code that could not be sent is taken back, so the
 * number can ask again at once.
 */
export async function requestSmsCode(
  deps: Pick<IdentityDeps, 'clock'>,
  codes: SmsCodeStore,
  sender: SmsSender,
  phone: string,
): Promise<void> {
  const result = await codes.issue(phone, deps.clock.now());
  if (!result.issued) throw new CodeResendTooSoon(result.retryAfterSeconds);
  try {
    await sender.send(phone, result.code);
  } catch (err) {
    await codes.withdraw(phone, result.code);
    throw err;
  }
}

/** Signs in with the code sent to `phone` (E.164); the first sign-in registers the user. */
export async function smsSignIn(
  deps: IdentityDeps,
  codes: SmsCodeStore,
  input: { phone: string; code: string },
  ctx: RequestContext,
): Promise<SignedIn> {
  if (!(await codes.verify(input.phone, input.code, deps.clock.now()))) {
    throw new Unauthorized('The code is wrong, expired or used up; ask for a new one.');
  }
  return providerSignIn(deps, { provider: 'phone', subject: input.phone, usernamePrefix: 'sms' }, 'sms', ctx);
}
