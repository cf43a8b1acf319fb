import type { Config } from '../config';
import type { Logger } from '../logger';
import { createAppleVerifier, type AppleVerifier } from './apple';
import { createAliyunSmsSender, createDevSmsSender, type SmsSender } from './sms';
import { createWeChatClient, type WeChatClient } from './wechat';

/** The third-party sign-in adapters. Undefined = not configured: its routes answer 503 provider-not-configured. */
export interface SignInProviders {
  wechat: WeChatClient | undefined;
  apple: AppleVerifier | undefined;
  sms: SmsSender | undefined;
}

/**
 * The adapters the configuration asks for. In production the dev SMS sender is not used: it logs
 * codes, and anyone who can read the logs could then sign in as anyone.
 */
export function createSignInProviders(config: Config, logger: Logger): SignInProviders {
  const timeoutMs = config.PROVIDER_TIMEOUT_MS;
  const mini =
    config.WECHAT_MINI_APP_ID && config.WECHAT_MINI_APP_SECRET
      ? { appId: config.WECHAT_MINI_APP_ID, secret: config.WECHAT_MINI_APP_SECRET }
      : undefined;
  const app =
    config.WECHAT_APP_ID && config.WECHAT_APP_SECRET
      ? { appId: config.WECHAT_APP_ID, secret: config.WECHAT_APP_SECRET }
      : undefined;
  const wechat =
    mini || app
      ? createWeChatClient({
          baseUrl: config.WECHAT_API_BASE_URL,
          ...(mini ? { mini } : {}),
          ...(app ? { app } : {}),
          timeoutMs,
        })
      : undefined;

  const apple =
    config.APPLE_CLIENT_ID.length > 0
      ? createAppleVerifier({
          jwksUrl: config.APPLE_JWKS_URL,
          clientIds: config.APPLE_CLIENT_ID,
          timeoutMs,
          cooldownMs: config.APPLE_JWKS_COOLDOWN_MS,
        })
      : undefined;

  return { wechat, apple, sms: smsSender(config, logger, timeoutMs) };
}

function smsSender(config: Config, logger: Logger, timeoutMs: number): SmsSender | undefined {
  if (config.SMS_PROVIDER === 'aliyun') {
    const { ALIYUN_ACCESS_KEY_ID, ALIYUN_ACCESS_KEY_SECRET, ALIYUN_SMS_SIGN_NAME, ALIYUN_SMS_TEMPLATE_CODE } =
      config;
    // loadConfig insists on all four; a hand-made config (tests) may not.
    if (
      !ALIYUN_ACCESS_KEY_ID ||
      !ALIYUN_ACCESS_KEY_SECRET ||
      !ALIYUN_SMS_SIGN_NAME ||
      !ALIYUN_SMS_TEMPLATE_CODE
    ) {
      throw new Error(
        'SMS_PROVIDER=aliyun needs ALIYUN_ACCESS_KEY_ID/SECRET, ALIYUN_SMS_SIGN_NAME, ALIYUN_SMS_TEMPLATE_CODE',
      );
    }
    return createAliyunSmsSender({
      endpoint: config.ALIYUN_SMS_ENDPOINT,
      accessKeyId: ALIYUN_ACCESS_KEY_ID,
      accessKeySecret: ALIYUN_ACCESS_KEY_SECRET,
      signName: ALIYUN_SMS_SIGN_NAME,
      templateCode: ALIYUN_SMS_TEMPLATE_CODE,
      timeoutMs,
    });
  }
  if (config.NODE_ENV === 'production') {
    logger.warn('SMS sign-in is off: SMS_PROVIDER=dev only logs codes, which production must not do');
    return undefined;
  }
  return createDevSmsSender(logger.child({ component: 'sms-dev' }));
}
