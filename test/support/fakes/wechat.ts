import { randomBytes } from 'node:crypto';
import { startFakeHttpServer, type FakeRequest, type FakeResponse } from './httpServer';

export interface WeChatPerson {
  openid: string;
  /** Only when the app is bound to a WeChat Open Platform account. */
  unionid?: string;
}

export interface FakeWeChatApps {
  mini: { appId: string; secret: string };
  app: { appId: string; secret: string };
}

export interface FakeWeChat {
  url: string;
  /** A one-time code for `person`, as `wx.login` (mini) or the app SDK's authorization (app) gives it. */
  code(person: WeChatPerson, kind?: 'mini' | 'app'): string;
  /** The next `times` exchanges answer this errcode (45011 quota, -1 busy, ...). */
  failNext(errcode: number, times?: number): void;
  /** Down: every request gets an HTTP 502 page, as from WeChat's gateway. */
  setDown(down: boolean): void;
  /** Every exchange request, for asserting what the client sent. */
  requests: FakeRequest[];
  close(): Promise<void>;
}

const ERRMSG: Record<number, string> = {
  [-1]: 'system error',
  40013: 'invalid appid',
  40029: 'invalid code',
  40125: 'invalid appsecret',
  40163: 'code been used',
  45011: 'api minute-quota reach limit  mustslower  retry next minute',
};

/**
 * WeChat's code exchange, as its servers answer: `GET /sns/jscode2session` (mini programs, answered
 * as text/plain) and `GET /sns/oauth2/access_token` (apps), HTTP 200 with `errcode`/`errmsg` for
 * every error, a code good once, and only at the endpoint and app it was issued for.
 */
export async function startFakeWeChat(apps: FakeWeChatApps): Promise<FakeWeChat> {
  const codes = new Map<string, { person: WeChatPerson; kind: 'mini' | 'app'; used: boolean }>();
  const failures: number[] = [];
  let down = false;
  const requests: FakeRequest[] = [];

  const error = (errcode: number, contentType = 'text/plain'): FakeResponse => ({
    status: 200,
    contentType,
    body: JSON.stringify({
      errcode,
      errmsg: `${ERRMSG[errcode] ?? 'error'}, rid: ${randomBytes(6).toString('hex')}`,
    }),
  });

  const server = await startFakeHttpServer((req) => {
    if (down)
      return { status: 502, contentType: 'text/html', body: '<html><body>502 Bad Gateway</body></html>' };
    const kind =
      req.path === '/sns/jscode2session' ? 'mini' : req.path === '/sns/oauth2/access_token' ? 'app' : null;
    if (kind === null || req.method !== 'GET')
      return { status: 404, contentType: 'text/html', body: 'not found' };
    requests.push(req);
    const type = kind === 'mini' ? 'text/plain' : 'application/json; encoding=utf-8';
    const q = req.query;
    const expected = apps[kind];
    if (q.get('appid') !== expected.appId) return error(40013, type);
    if (q.get('secret') !== expected.secret) return error(40125, type);
    if (q.get('grant_type') !== 'authorization_code') return error(40002, type);
    const failure = failures.shift();
    if (failure !== undefined) return error(failure, type);
    const issued = codes.get(q.get(kind === 'mini' ? 'js_code' : 'code') ?? '');
    if (!issued || issued.kind !== kind) return error(40029, type);
    if (issued.used) return error(40163, type);
    issued.used = true;
    const { openid, unionid } = issued.person;
    const body =
      kind === 'mini'
        ? { session_key: randomBytes(16).toString('base64'), openid, ...(unionid ? { unionid } : {}) }
        : {
            access_token: randomBytes(24).toString('hex'),
            expires_in: 7200,
            refresh_token: randomBytes(24).toString('hex'),
            openid,
            scope: 'snsapi_userinfo',
            ...(unionid ? { unionid } : {}),
          };
    return { status: 200, contentType: type, body: JSON.stringify(body) };
  });

  return {
    url: server.url,
    code(person, kind = 'mini') {
      const code = randomBytes(16).toString('hex');
      codes.set(code, { person, kind, used: false });
      return code;
    },
    failNext(errcode, times = 1) {
      for (let i = 0; i < times; i++) failures.push(errcode);
    },
    setDown(value) {
      down = value;
    },
    requests,
    close: () => server.close(),
  };
}
