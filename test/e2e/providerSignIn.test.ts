import { compileErrors, validate } from '@readme/openapi-parser';
import jwt from 'jsonwebtoken';
import supertest from 'supertest';
import { createApp } from '../../src/http/app';
import { providerSessions } from '../../src/http/providerSessions';
import { allResources } from '../../src/http/resources';
import { DomainError } from '../../src/platform/errors';
import { createAppleVerifier } from '../../src/platform/identity/apple';
import { aliyunPhoneNumber } from '../../src/platform/identity/phone';
import { createAliyunSmsSender } from '../../src/platform/identity/sms';
import { createWeChatClient } from '../../src/platform/identity/wechat';
import { allProjectors } from '../../src/projections';
import { createTestApp, type TestApp } from '../support/app';
import { recordingLogger } from '../support/logs';
import { startFakeAliyunSms, type FakeAliyunSms } from '../support/fakes/aliyunSms';
import { startFakeApple, type FakeApple } from '../support/fakes/apple';
import { closedPortUrl } from '../support/fakes/httpServer';
import { startFakeWeChat, type FakeWeChat } from '../support/fakes/wechat';

const WECHAT = {
  mini: { appId: 'wx1a2b3c4d5e6f7a8b', secret: 'mini-program-secret-0123456789abcdef' },
  app: { appId: 'wx9f8e7d6c5b4a3f2e', secret: 'open-platform-secret-0123456789abcd' },
};
const ALIYUN = {
  accessKeyId: 'LTAI5tFakeAccessKeyId',
  accessKeySecret: 'fake-access-key-secret-0123456789',
  signName: '聊天积分',
  templateCode: 'SMS_465000001',
};
const CLIENT_ID = 'com.example.chat';
const WEB_CLIENT_ID = 'com.example.chat.web';

let t: TestApp;
let wechat: FakeWeChat;
let apple: FakeApple;
let sms: FakeAliyunSms;
/** The app's clock runs this far ahead of real time: code expiry and resend waits without waiting. */
let skewMs = 0;
const clock = { now: () => new Date(Date.now() + skewMs) };
let logLines: string[] = [];

beforeAll(async () => {
  [wechat, apple, sms] = await Promise.all([
    startFakeWeChat(WECHAT),
    startFakeApple(CLIENT_ID),
    startFakeAliyunSms(ALIYUN),
  ]);
  const recording = recordingLogger('info');
  logLines = recording.lines;
  t = await createTestApp({
    resources: [...allResources],
    projectors: allProjectors,
    config: {
      WECHAT_API_BASE_URL: wechat.url,
      WECHAT_MINI_APP_ID: WECHAT.mini.appId,
      WECHAT_MINI_APP_SECRET: WECHAT.mini.secret,
      WECHAT_APP_ID: WECHAT.app.appId,
      WECHAT_APP_SECRET: WECHAT.app.secret,
      APPLE_JWKS_URL: apple.jwksUrl,
      APPLE_CLIENT_ID: [CLIENT_ID, WEB_CLIENT_ID],
      // Every unknown kid fetches the key set again here; the cooldown has its own test below.
      APPLE_JWKS_COOLDOWN_MS: 0,
      SMS_PROVIDER: 'aliyun',
      ALIYUN_SMS_ENDPOINT: sms.url,
      ALIYUN_ACCESS_KEY_ID: ALIYUN.accessKeyId,
      ALIYUN_ACCESS_KEY_SECRET: ALIYUN.accessKeySecret,
      ALIYUN_SMS_SIGN_NAME: ALIYUN.signName,
      ALIYUN_SMS_TEMPLATE_CODE: ALIYUN.templateCode,
      PROVIDER_TIMEOUT_MS: 2_000,
      RATE_LIMITS_ENABLED: true,
      TRUST_PROXY: true,
      RATE_LIMIT_SMS_PHONE: { points: 3, seconds: 3600 },
      RATE_LIMIT_SMS_IP: { points: 5, seconds: 3600 },
      RATE_LIMIT_LOGIN_IP: { points: 100_000, seconds: 60 },
      // First sign-ins of the other tests come from one address; the budget test uses its own.
      RATE_LIMIT_REGISTER_IP: { points: 30, seconds: 3600 },
      RATE_LIMIT_IP: { points: 100_000, seconds: 60 },
      RATE_LIMIT_USER: { points: 100_000, seconds: 60 },
    },
    deps: { clock, logger: recording.logger },
  });
});
afterAll(async () => {
  await t?.close();
  await Promise.all([wechat?.close(), apple?.close(), sms?.close()]);
});
afterEach(() => {
  skewMs = 0;
});

const userOf = (access: string) => (jwt.decode(access) as { sub: string }).sub;
const me = (access: string) => t.http.get('/api/v1/users/me').set('Authorization', `Bearer ${access}`);

function expectTokenPair(res: supertest.Response): string {
  expect(res.status).toBe(200);
  expect(res.headers['cache-control']).toBe('no-store');
  expect(res.body).toEqual({
    access_token: expect.any(String),
    token_type: 'bearer',
    expires_in: 86400,
    refresh_token: expect.stringMatching(/^[0-9a-f-]{36}\./),
  });
  return res.body.access_token as string;
}

function expectProblem(res: supertest.Response, status: number, type?: string): void {
  expect(res.status).toBe(status);
  expect(res.headers['content-type']).toMatch(/application\/problem\+json/);
  expect(res.body).toMatchObject({ status, ...(type ? { type } : {}) });
}

/** The DomainError status a promise rejects with. */
async function failure(p: Promise<unknown>): Promise<DomainError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(DomainError);
  return err as DomainError;
}

let counter = 0;
const unique = (prefix: string) => `${prefix}-${process.pid}-${++counter}`;

describe('WeChat sign-in', () => {
  const signIn = (code: string, kind?: 'mini' | 'app') =>
    t.http.post('/api/v1/session/wechat/token').send({ code, ...(kind ? { kind } : {}) });

  it('registers on the first sign-in and finds the same user the next time', async () => {
    const person = { openid: unique('o-mini') };
    const first = await signIn(wechat.code(person));
    const access = expectTokenPair(first);
    const request = wechat.requests[wechat.requests.length - 1]!;
    expect(request.path).toBe('/sns/jscode2session');
    expect(Object.fromEntries(request.query)).toEqual({
      appid: WECHAT.mini.appId,
      secret: WECHAT.mini.secret,
      js_code: expect.any(String),
      grant_type: 'authorization_code',
    });
    const profile = await me(access);
    expect(profile.status).toBe(200);
    expect(profile.body).toMatchObject({
      id: userOf(access),
      username: expect.stringMatching(/^wx_[0-9a-f]{12}$/),
    });

    const again = expectTokenPair(await signIn(wechat.code(person)));
    expect(userOf(again)).toBe(userOf(access));
  });

  it('answers 401 for a used code and for a made-up one', async () => {
    const code = wechat.code({ openid: unique('o-mini') });
    expectTokenPair(await signIn(code));
    expectProblem(await signIn(code), 401, '/problems/unauthorized');
    expectProblem(await signIn('made-up-code'), 401);
  });

  it('links by unionid across the mini program and the app, keeping an account first seen without one', async () => {
    const miniOpenid = unique('o-mini');
    const unionid = unique('u');
    const a = userOf(expectTokenPair(await signIn(wechat.code({ openid: miniOpenid }))));
    // The mini program is bound to the Open Platform: WeChat now sends the unionid too.
    const b = userOf(expectTokenPair(await signIn(wechat.code({ openid: miniOpenid, unionid }))));
    expect(b).toBe(a);
    // The app has its own openid for the same person; the unionid finds the account.
    const app = await signIn(wechat.code({ openid: unique('o-app'), unionid }, 'app'), 'app');
    expect(userOf(expectTokenPair(app))).toBe(a);
    expect(wechat.requests[wechat.requests.length - 1]!.path).toBe('/sns/oauth2/access_token');

    // Someone first seen in the app with a unionid: the mini program, another openid, lands there too.
    const other = unique('u');
    const c = userOf(
      expectTokenPair(await signIn(wechat.code({ openid: unique('o-app'), unionid: other }, 'app'), 'app')),
    );
    expect(c).not.toBe(a);
    const d = userOf(
      expectTokenPair(await signIn(wechat.code({ openid: unique('o-mini'), unionid: other }))),
    );
    expect(d).toBe(c);
  });

  it('makes one user of parallel first sign-ins of one person', async () => {
    const person = { openid: unique('o-mini'), unionid: unique('u') };
    const results = await Promise.all(Array.from({ length: 8 }, () => signIn(wechat.code(person))));
    const users = new Set(results.map((r) => userOf(expectTokenPair(r))));
    expect(users.size).toBe(1);
  });

  it('answers 429 with Retry-After while WeChat’s quota is spent', async () => {
    wechat.failNext(45011);
    const limited = await signIn(wechat.code({ openid: unique('o-mini') }));
    expectProblem(limited, 429, '/problems/rate-limited');
    expect(limited.headers['retry-after']).toBe('60');
    expectTokenPair(await signIn(wechat.code({ openid: unique('o-mini') })));
  });

  it('answers 503 when WeChat is busy or down', async () => {
    wechat.failNext(-1);
    expectProblem(
      await signIn(wechat.code({ openid: unique('o-mini') })),
      503,
      '/problems/dependency-unavailable',
    );
    wechat.setDown(true);
    try {
      expectProblem(await signIn(wechat.code({ openid: unique('o-mini') })), 503);
    } finally {
      wechat.setDown(false);
    }
    const unreachable = createWeChatClient({ baseUrl: await closedPortUrl(), mini: WECHAT.mini });
    expect((await failure(unreachable.exchange('code', 'mini'))).status).toBe(503);
  });

  it('answers 503 naming the settings, not the secret, when our app secret is wrong', async () => {
    const client = createWeChatClient({
      baseUrl: wechat.url,
      mini: { appId: WECHAT.mini.appId, secret: 'not-the-secret' },
    });
    const err = await failure(client.exchange(wechat.code({ openid: unique('o-mini') }), 'mini'));
    expect(err.status).toBe(503);
    expect(err.message).toMatch(/40125/);
    expect(err.message).toMatch(/WECHAT_MINI_APP_SECRET/);
    expect(err.message).not.toMatch(/not-the-secret/);
  });

  it('answers 400 without a code, and 503 provider-not-configured for a kind without credentials', async () => {
    expectProblem(await t.http.post('/api/v1/session/wechat/token').send({}), 400);
    expectProblem(await signIn('x', 'desktop' as 'app'), 400);
    const miniOnly = createWeChatClient({ baseUrl: wechat.url, mini: WECHAT.mini });
    const err = await failure(miniOnly.exchange(wechat.code({ openid: unique('o-app') }, 'app'), 'app'));
    expect(err).toMatchObject({ status: 503, type: '/problems/provider-not-configured' });
  });
});

describe('Sign in with Apple', () => {
  const signIn = (identity_token: string) =>
    t.http.post('/api/v1/session/apple/token').send({ identity_token });

  it('signs in with a valid identity token: registers once, with the email as a nickname hint', async () => {
    const sub = unique('001234.apple');
    const access = expectTokenPair(
      await signIn(await apple.token({ claims: { sub, email: 'ada@example.com' } })),
    );
    expect((await me(access)).body).toMatchObject({
      nickname: 'ada',
      username: expect.stringMatching(/^apple_[0-9a-f]{12}$/),
      email: null,
    });
    const again = expectTokenPair(await signIn(await apple.token({ claims: { sub, aud: WEB_CLIENT_ID } })));
    expect(userOf(again)).toBe(userOf(access));
  });

  it('gives a relay address no nickname', async () => {
    const token = await apple.token({
      claims: { sub: unique('relay'), email: 'x7kq2p@privaterelay.appleid.com', is_private_email: 'true' },
    });
    const profile = (await me(expectTokenPair(await signIn(token)))).body as {
      username: string;
      nickname: string;
    };
    expect(profile.nickname).toBe(profile.username);
  });

  it('answers 401 for another audience, another issuer, an expired, old or forward-dated token, HS256, an unknown key, a forgery, garbage', async () => {
    const now = Math.floor(Date.now() / 1000);
    const tokens = {
      audience: await apple.token({ claims: { aud: 'com.example.someone-else' } }),
      issuer: await apple.token({ claims: { iss: 'https://appleid.apple.example' } }),
      expired: await apple.token({ claims: { iat: now - 7200, exp: now - 3600 } }),
      // Still within its exp, but issued long ago, or dated a day ahead: a replay.
      old: await apple.token({ claims: { iat: now - 3600, exp: now + 600 } }),
      future: await apple.token({ claims: { iat: now + 86_400, exp: now + 87_000 } }),
      hs256: await apple.token({ hs256Secret: 'a-shared-secret-anyone-could-have-0123' }),
      unknownKid: await apple.token({ unpublishedKid: 'NOTAPPLE01' }),
      forged: await apple.token({ forgeCurrentKid: true }),
      noSubject: await apple.token({ claims: { sub: undefined } }),
      garbage: 'not.a.jwt',
    };
    for (const [name, token] of Object.entries(tokens)) {
      const res = await signIn(token);
      expect({ name, status: res.status }).toEqual({ name, status: 401 });
      expectProblem(res, 401, '/problems/unauthorized');
    }
    expectProblem(await t.http.post('/api/v1/session/apple/token').send({}), 400);
  });

  it('follows Apple’s key rotation: a token under a new kid fetches the key set again', async () => {
    expectTokenPair(await signIn(await apple.token()));
    const before = apple.fetches();
    const kid = await apple.rotate({ dropOld: true });
    const token = await apple.token();
    expect((jwt.decode(token, { complete: true }) as { header: { kid: string } }).header.kid).toBe(kid);
    expectTokenPair(await signIn(token));
    expect(apple.fetches()).toBe(before + 1);
    // Cached now: no more fetches.
    expectTokenPair(await signIn(await apple.token()));
    expect(apple.fetches()).toBe(before + 1);
  });

  it('fetches the key set at most once per cooldown, however many unknown kids arrive', async () => {
    const verifier = createAppleVerifier({
      jwksUrl: apple.jwksUrl,
      clientIds: [CLIENT_ID],
      cooldownMs: 60_000,
    });
    await verifier.verify(await apple.token(), new Date());
    const before = apple.fetches();
    for (let i = 0; i < 5; i++) {
      const err = await failure(
        verifier.verify(await apple.token({ unpublishedKid: `ROGUE${i}` }), new Date()),
      );
      expect(err.status).toBe(401);
    }
    expect(apple.fetches()).toBe(before);
  });

  it('answers 503 when Apple’s keys cannot be fetched', async () => {
    apple.setDown(true);
    try {
      const fresh = createAppleVerifier({ jwksUrl: apple.jwksUrl, clientIds: [CLIENT_ID] });
      expect((await failure(fresh.verify(await apple.token(), new Date()))).status).toBe(503);
    } finally {
      apple.setDown(false);
    }
    const unreachable = createAppleVerifier({
      jwksUrl: `${await closedPortUrl()}/auth/keys`,
      clientIds: [CLIENT_ID],
    });
    expect((await failure(unreachable.verify(await apple.token(), new Date()))).status).toBe(503);
  });
});

describe('SMS sign-in', () => {
  let ipCounter = 0;
  /** Every request from its own address, so only the per-address test meets that limit. */
  const nextIp = () => `198.51.100.${++ipCounter % 250}`;
  let phoneCounter = 0;
  const newPhone = () =>
    `+86137${String(process.pid % 1000).padStart(3, '0')}${String(++phoneCounter).padStart(5, '0')}`;

  const requestCode = (phone: string, ip = nextIp()) =>
    t.http.post('/api/v1/session/sms/code').set('X-Forwarded-For', ip).send({ phone });
  const signIn = (phone: string, code: string) =>
    t.http.post('/api/v1/session/sms/token').set('X-Forwarded-For', nextIp()).send({ phone, code });
  const codeSentTo = (phone: string) => sms.lastCode(aliyunPhoneNumber(phone));
  const wrong = (code: string, i = 0) => String((Number(code) + 1 + i) % 1_000_000).padStart(6, '0');

  async function sendCode(phone: string): Promise<string> {
    const res = await requestCode(phone);
    expect(res.status).toBe(202);
    const code = codeSentTo(phone);
    if (!code) throw new Error('no code reached the fake gateway');
    return code;
  }

  it('spends the registration budget of the address when a first sign-in registers', async () => {
    // RATE_LIMIT_REGISTER_IP is 30 an hour here: the 31st new user from one address is refused.
    const ip = '192.0.2.77';
    const statuses: number[] = [];
    for (let i = 0; i < 31; i++) {
      const phone = newPhone();
      const code = await sendCode(phone);
      const res = await t.http
        .post('/api/v1/session/sms/token')
        .set('X-Forwarded-For', ip)
        .send({ phone, code });
      statuses.push(res.status);
    }
    expect(statuses).toEqual([...Array.from({ length: 30 }, () => 200), 429]);
  });

  it('sends the code through a signed SendSms; the code signs in, registering on the first time', async () => {
    const phone = newPhone();
    const local = phone.slice(3);
    const res = await requestCode(`${local.slice(0, 3)} ${local.slice(3, 7)} ${local.slice(7)}`);
    expect(res.status).toBe(202);
    expect(res.body).toEqual({ expires_in: 300, resend_in: 60 });
    // A command like every other, though it writes no event: a read after it waits for nothing.
    expect(res.headers['x-event-position']).toBe('0');
    expect(sms.sent[sms.sent.length - 1]).toEqual({
      phone: local,
      signName: ALIYUN.signName,
      templateCode: ALIYUN.templateCode,
      params: { code: expect.stringMatching(/^\d{6}$/) },
    });
    expect(sms.rejected).toEqual([]);

    const access = expectTokenPair(await signIn(phone, codeSentTo(phone)!));
    expect((await me(access)).body).toMatchObject({ username: expect.stringMatching(/^sms_[0-9a-f]{12}$/) });

    skewMs = 61_000;
    const again = expectTokenPair(await signIn(local, await sendCode(phone)));
    expect(userOf(again)).toBe(userOf(access));
  });

  it('answers 401 to a wrong code; five wrong codes use it up, so the right one fails too', async () => {
    const phone = newPhone();
    const code = await sendCode(phone);
    for (let i = 0; i < 5; i++)
      expectProblem(await signIn(phone, wrong(code, i)), 401, '/problems/unauthorized');
    expectProblem(await signIn(phone, code), 401);
  });

  it('takes a right code after a few wrong ones, but only once', async () => {
    const phone = newPhone();
    const code = await sendCode(phone);
    expectProblem(await signIn(phone, wrong(code)), 401);
    expectTokenPair(await signIn(phone, code));
    expectProblem(await signIn(phone, code), 401);
  });

  it('answers 401 once the code is five minutes old', async () => {
    const phone = newPhone();
    const code = await sendCode(phone);
    skewMs = 300_000;
    expectProblem(await signIn(phone, code), 401);
  });

  it('answers 429 with Retry-After to a second code within 60 s, and the first code still works', async () => {
    const phone = newPhone();
    const code = await sendCode(phone);
    const sentBefore = sms.sent.length;
    const again = await requestCode(phone);
    expectProblem(again, 429, '/problems/rate-limited');
    const retryAfter = Number(again.headers['retry-after']);
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(60);
    expect(sms.sent.length).toBe(sentBefore);
    expectTokenPair(await signIn(phone, code));
  });

  it('spends at most five attempts on 20 parallel guesses', async () => {
    const phone = newPhone();
    const code = await sendCode(phone);
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => signIn(phone, wrong(code, i))));
    expect(results.map((r) => r.status)).toEqual(Array<number>(20).fill(401));
    const row = await t.deps.db.db
      .selectFrom('sms_codes')
      .select('attempts')
      .where('phone', '=', phone)
      .executeTakeFirstOrThrow();
    expect(row.attempts).toBe(5);
    expectProblem(await signIn(phone, code), 401);
  });

  it('limits codes per number (RATE_LIMIT_SMS_PHONE) and per address (RATE_LIMIT_SMS_IP)', async () => {
    const phone = newPhone();
    for (let i = 0; i < 3; i++) {
      skewMs = i * 61_000;
      expect((await requestCode(phone)).status).toBe(202);
    }
    skewMs = 3 * 61_000;
    const perPhone = await requestCode(phone);
    expectProblem(perPhone, 429);
    expect(perPhone.body.detail).toMatch(/phone number/);
    expect(Number(perPhone.headers['retry-after'])).toBeGreaterThan(60);

    const ip = '203.0.113.50';
    for (let i = 0; i < 5; i++) expect((await requestCode(newPhone(), ip)).status).toBe(202);
    const perIp = await requestCode(newPhone(), ip);
    expectProblem(perIp, 429);
    expect(perIp.body.detail).toMatch(/address/);
  });

  it('maps the gateway’s answers: flow control 429, a refused number 400, an account problem 503', async () => {
    sms.failNext('isv.BUSINESS_LIMIT_CONTROL');
    const phone = newPhone();
    const limited = await requestCode(phone);
    expectProblem(limited, 429);
    expect(limited.headers['retry-after']).toBe('60');
    // The code that was not sent is taken back: no resend wait.
    await sendCode(phone);

    sms.failNext('isv.MOBILE_NUMBER_ILLEGAL');
    expectProblem(await requestCode(newPhone()), 400);
    sms.failNext('isv.AMOUNT_NOT_ENOUGH');
    expectProblem(await requestCode(newPhone()), 503, '/problems/dependency-unavailable');
  });

  it('is refused by the gateway when signed with the wrong secret (the fake checks signatures)', async () => {
    const sender = createAliyunSmsSender({ endpoint: sms.url, ...ALIYUN, accessKeySecret: 'wrong-secret' });
    const err = await failure(sender.send(newPhone(), '123456'));
    expect(err.status).toBe(503);
    expect(err.message).toMatch(/SignatureDoesNotMatch/);
    expect(err.message).not.toMatch(/123456/);
    expect(sms.rejected.pop()).toBe('SignatureDoesNotMatch');
  });

  it('answers 400 for a malformed number or code', async () => {
    const badPhone = await requestCode('12345');
    expectProblem(badPhone, 400);
    expect(badPhone.body.errors).toEqual([expect.objectContaining({ path: 'phone' })]);
    expectProblem(await signIn(newPhone(), '12345'), 400);
    expectProblem(await signIn(newPhone(), 'abcdef'), 400);
  });

  it('answers 503 provider-not-configured where a method has no configuration', async () => {
    const bare = supertest(
      createApp({ ...t.deps, signIn: { wechat: undefined, apple: undefined, sms: undefined } }, [
        providerSessions,
      ]).callback(),
    );
    for (const [path, body] of [
      ['/api/v1/session/wechat/token', { code: 'abc' }],
      ['/api/v1/session/apple/token', { identity_token: 'a.b.c' }],
      ['/api/v1/session/sms/code', { phone: newPhone() }],
    ] as const) {
      expectProblem(
        await bare.post(path).set('X-Forwarded-For', nextIp()).send(body),
        503,
        '/problems/provider-not-configured',
      );
    }
  });

  it('never writes a code to the log on the Aliyun path', () => {
    const codes = sms.sent.map((m) => m.params.code!);
    expect(codes.length).toBeGreaterThan(5);
    const leaked = logLines.filter((line) =>
      codes.some((code) => line.includes(`"${code}"`) || line.includes(`:${code}`)),
    );
    expect(leaked).toEqual([]);
    expect(logLines.length).toBeGreaterThan(0);
  });
});

describe('OpenAPI', () => {
  it('documents the sign-in routes with their bodies, and the document stays valid', async () => {
    const doc = (await t.http.get('/openapi.json')).body;
    const body = (path: string) =>
      doc.paths[path].post.requestBody.content['application/json'].schema as { $ref: string };
    expect(body('/session/wechat/token')).toEqual({ $ref: '#/components/schemas/WeChatSignIn' });
    expect(body('/session/apple/token')).toEqual({ $ref: '#/components/schemas/AppleSignIn' });
    expect(body('/session/sms/code')).toEqual({ $ref: '#/components/schemas/SmsCodeRequest' });
    expect(body('/session/sms/token')).toEqual({ $ref: '#/components/schemas/SmsSignIn' });
    expect(doc.paths['/session/sms/code'].post.responses['202']).toBeDefined();
    expect(
      doc.paths['/session/wechat/token'].post.responses['200'].content['application/json'].schema,
    ).toEqual({
      $ref: '#/components/schemas/TokenPair',
    });
    expect(doc.components.schemas.WeChatSignIn.required).toEqual(['code']);
    const result = await validate(structuredClone(doc));
    expect(result.valid ? 'valid' : compileErrors(result)).toBe('valid');
  });
});
