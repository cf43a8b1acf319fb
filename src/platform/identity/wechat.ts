import { BadRequest, DependencyDown, Forbidden, RateLimited, Unauthorized } from '../errors';
import { callProvider, parseProviderJson, ProviderNotConfigured } from './providerHttp';

/** `mini`: a WeChat mini program (`wx.login`); `app`: a mobile app through the WeChat Open Platform. */
export type WeChatKind = 'mini' | 'app';

/** Who WeChat says signed in. `unionid` is shared by every app of one WeChat Open Platform account. */
export interface WeChatIdentity {
  openid: string;
  unionid: string | null;
  kind: WeChatKind;
}

/** Exchanges the one-time code a WeChat client obtained for the user's identity. */
export interface WeChatClient {
  /** Throws Unauthorized (401) for a bad or used code, RateLimited (429), DependencyDown (503). */
  exchange(code: string, kind: WeChatKind): Promise<WeChatIdentity>;
  /** The kinds this server has credentials for. */
  kinds(): WeChatKind[];
}

export interface WeChatAppCredentials {
  appId: string;
  secret: string;
}

export interface WeChatClientOptions {
  /** https://api.weixin.qq.com, or a fake in tests. */
  baseUrl: string;
  mini?: WeChatAppCredentials;
  app?: WeChatAppCredentials;
  timeoutMs?: number;
}

const PROVIDER = 'WeChat';
const DEFAULT_TIMEOUT_MS = 5_000;
/** WeChat's codes are 32-odd characters; anything far longer is not one. */
const MAX_CODE_LENGTH = 256;
/** 45011 is WeChat's per-minute quota: the next minute is the earliest worth retrying. */
const QUOTA_RETRY_SECONDS = 60;

const LABEL: Record<WeChatKind, string> = { mini: 'mini program', app: 'app' };
const SETTINGS: Record<WeChatKind, string> = {
  mini: 'WECHAT_MINI_APP_ID / WECHAT_MINI_APP_SECRET',
  app: 'WECHAT_APP_ID / WECHAT_APP_SECRET',
};

/** Errcodes that mean our own app id or secret is wrong or missing, not the user's code. */
const MISCONFIGURED: Record<number, string> = {
  40001: 'invalid credential',
  40013: 'invalid appid',
  40125: 'invalid appsecret',
  41002: 'appid missing',
  41004: 'appsecret missing',
};

/**
 * The WeChat sign-in client: `jscode2session` for mini programs, `sns/oauth2/access_token` for apps.
 * WeChat answers errors with HTTP 200 and an `errcode`; each becomes a DomainError. The secret and the
 * `session_key` never leave this function (nor reach a log or an error message).
 */
export function createWeChatClient(opts: WeChatClientOptions): WeChatClient {
  const base = opts.baseUrl.replace(/\/+$/, '');
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const credentials: Partial<Record<WeChatKind, WeChatAppCredentials>> = {};
  if (opts.mini) credentials.mini = opts.mini;
  if (opts.app) credentials.app = opts.app;

  return {
    kinds: () => (['mini', 'app'] as const).filter((k) => credentials[k] !== undefined),

    async exchange(code, kind) {
      if (kind !== 'mini' && kind !== 'app')
        throw new BadRequest(`Unknown WeChat client kind "${String(kind)}".`);
      const app = credentials[kind];
      if (!app) {
        throw new ProviderNotConfigured(
          `WeChat ${LABEL[kind]} sign-in is not configured on this server (${SETTINGS[kind]}).`,
        );
      }
      if (typeof code !== 'string' || code.trim() === '' || code.length > MAX_CODE_LENGTH) {
        throw new BadRequest('code must be the non-empty code the WeChat client returned.');
      }

      const url =
        kind === 'mini'
          ? `${base}/sns/jscode2session?${new URLSearchParams({
              appid: app.appId,
              secret: app.secret,
              js_code: code,
              grant_type: 'authorization_code',
            }).toString()}`
          : `${base}/sns/oauth2/access_token?${new URLSearchParams({
              appid: app.appId,
              secret: app.secret,
              code,
              grant_type: 'authorization_code',
            }).toString()}`;
      const answer = await callProvider(PROVIDER, url, { method: 'GET' }, timeoutMs);
      if (answer.status !== 200) {
        throw new DependencyDown(`WeChat answered HTTP ${answer.status}; retry shortly.`);
      }
      // jscode2session labels its JSON text/plain: the body is parsed whatever the content type says.
      const body = parseProviderJson(PROVIDER, answer);

      const errcode = typeof body.errcode === 'number' ? body.errcode : 0;
      if (errcode !== 0) throw weChatError(errcode, kind, app.appId);

      const { openid, unionid } = body;
      if (typeof openid !== 'string' || openid === '') {
        throw new DependencyDown('WeChat answered without an openid; retry shortly.');
      }
      return { openid, unionid: typeof unionid === 'string' && unionid !== '' ? unionid : null, kind };
    },
  };
}

/** What a WeChat errcode means for our client: 401 the code, 429 the quota, 503 WeChat or our configuration. */
export function weChatError(errcode: number, kind: WeChatKind, appId: string): Error {
  switch (errcode) {
    case 40029: // invalid code
    case 40163: // code been used
    case 42003: // oauth code expired (apps)
      return new Unauthorized('The WeChat code is not valid or was already used; sign in with WeChat again.');
    case 40226:
      return new Forbidden('WeChat flagged this account as high risk and refused the sign-in.');
    case 45011:
      return new RateLimited(
        'WeChat is limiting sign-ins for this app right now; retry in a minute.',
        QUOTA_RETRY_SECONDS,
      );
    case -1:
      return new DependencyDown('WeChat is busy (errcode -1); retry shortly.');
  }
  const misconfigured = MISCONFIGURED[errcode];
  if (misconfigured) {
    // Logged by the errors middleware (5xx): it must tell the operator what to fix, without the secret.
    return new DependencyDown(
      `WeChat ${LABEL[kind]} sign-in is misconfigured: WeChat answered errcode ${errcode} (${misconfigured}) ` +
        `for app id ${appId}; check ${SETTINGS[kind]}.`,
    );
  }
  return new DependencyDown(`WeChat refused the code exchange with errcode ${errcode}; retry shortly.`);
}
