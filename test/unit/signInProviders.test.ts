import { Writable } from 'node:stream';
import { errors as joseErrors } from 'jose';
import { ConfigError, loadConfig } from '../../src/platform/config';
import { DomainError, type RateLimited } from '../../src/platform/errors';
import { createLogger } from '../../src/platform/logger';
import { appleError } from '../../src/platform/identity/apple';
import { aliyunPhoneNumber, normalisePhone } from '../../src/platform/identity/phone';
import {
  aliyunError,
  aliyunSignature,
  aliyunTimestamp,
  canonicalQuery,
  createDevSmsSender,
  percentEncode,
  signedQuery,
} from '../../src/platform/identity/sms';
import { weChatError } from '../../src/platform/identity/wechat';

const statusOf = (err: Error) => (err instanceof DomainError ? err.status : 500);

describe('Aliyun RPC signature (v1.0, HMAC-SHA1)', () => {
  // The worked example of Aliyun's "RPC signature" documentation (ECS DescribeRegions).
  const documented = {
    AccessKeyId: 'testid',
    Action: 'DescribeRegions',
    Format: 'XML',
    SignatureMethod: 'HMAC-SHA1',
    SignatureNonce: '3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf',
    SignatureVersion: '1.0',
    Timestamp: '2016-02-23T12:46:24Z',
    Version: '2014-05-26',
  };

  it('reproduces the documented signature', () => {
    expect(aliyunSignature('GET', documented, 'testsecret')).toBe('OLeaidS1JvxuMvnyHOwuJ+uX5qY=');
  });

  it('canonicalises sorted by name, whatever order the parameters come in', () => {
    const reversed = Object.fromEntries(Object.entries(documented).reverse());
    expect(canonicalQuery(reversed)).toBe(
      'AccessKeyId=testid&Action=DescribeRegions&Format=XML&SignatureMethod=HMAC-SHA1' +
        '&SignatureNonce=3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf&SignatureVersion=1.0' +
        '&Timestamp=2016-02-23T12%3A46%3A24Z&Version=2014-05-26',
    );
    expect(aliyunSignature('GET', reversed, 'testsecret')).toBe('OLeaidS1JvxuMvnyHOwuJ+uX5qY=');
  });

  it('signs the method: the same parameters by POST sign differently', () => {
    expect(aliyunSignature('POST', documented, 'testsecret')).not.toBe('OLeaidS1JvxuMvnyHOwuJ+uX5qY=');
  });

  it('percent-encodes as RFC 3986: what encodeURIComponent leaves, spaces, and UTF-8', () => {
    expect(percentEncode("a!b'c(d)e*f")).toBe('a%21b%27c%28d%29e%2Af');
    expect(percentEncode('-_.~ AZaz09')).toBe('-_.~%20AZaz09');
    expect(percentEncode('{"code":"123456"}')).toBe('%7B%22code%22%3A%22123456%22%7D');
    expect(percentEncode('阿里云')).toBe('%E9%98%BF%E9%87%8C%E4%BA%91');
  });

  it('sends the signature percent-encoded after the parameters', () => {
    const query = signedQuery('GET', documented, 'testsecret');
    expect(query).toBe(`${canonicalQuery(documented)}&Signature=OLeaidS1JvxuMvnyHOwuJ%2BuX5qY%3D`);
  });

  it('writes timestamps in UTC without milliseconds', () => {
    expect(aliyunTimestamp(new Date('2016-02-23T12:46:24.789Z'))).toBe('2016-02-23T12:46:24Z');
  });
});

describe('phone numbers', () => {
  it.each([
    ['+8613800138000', '+8613800138000'],
    ['13800138000', '+8613800138000'],
    ['138 0013 8000', '+8613800138000'],
    ['+86 138-0013-8000', '+8613800138000'],
    ['008613800138000', '+8613800138000'],
    ['+85291234567', '+85291234567'],
    ['+1 (415) 555-2671', '+14155552671'],
  ])('reads %s as %s', (input, e164) => {
    expect(normalisePhone(input)).toBe(e164);
  });

  it.each([
    '',
    '12345',
    '23800138000', // 11 digits, but no mainland mobile starts with 2
    '12800138000', // nor with 12
    '+8612345', // +86 must be a mainland mobile
    '+0123456789',
    '+1234567890123456', // longer than E.164 allows
    '+86138001380001',
    'phone',
    '+86 138 0013 8000 ext 1',
    '1'.repeat(40),
  ])('refuses %j', (input) => {
    expect(normalisePhone(input)).toBeUndefined();
  });

  it('gives Aliyun mainland numbers without +86 and others with their country code', () => {
    expect(aliyunPhoneNumber('+8613800138000')).toBe('13800138000');
    expect(aliyunPhoneNumber('+85291234567')).toBe('85291234567');
  });
});

describe('provider errors', () => {
  it.each([
    [40029, 401],
    [40163, 401],
    [42003, 401],
    [40226, 403],
    [45011, 429],
    [-1, 503],
    [40013, 503],
    [40125, 503],
    [40001, 503],
    [99999, 503],
  ])('WeChat errcode %i is %i', (errcode, status) => {
    expect(statusOf(weChatError(errcode, 'mini', 'wx123'))).toBe(status);
  });

  it('WeChat quota says when to retry; misconfiguration names the settings, never the secret', () => {
    expect((weChatError(45011, 'mini', 'wx123') as RateLimited).headers).toEqual({ 'Retry-After': '60' });
    const misconfigured = weChatError(40125, 'app', 'wxapp1');
    expect(misconfigured.message).toMatch(/WECHAT_APP_ID \/ WECHAT_APP_SECRET/);
    expect(misconfigured.message).toMatch(/wxapp1/);
  });

  it.each([
    ['isv.BUSINESS_LIMIT_CONTROL', 429],
    ['isv.DAY_LIMIT_CONTROL', 429],
    ['isv.MOBILE_NUMBER_ILLEGAL', 400],
    ['isv.SMS_SIGNATURE_ILLEGAL', 503],
    ['isv.AMOUNT_NOT_ENOUGH', 503],
    ['SignatureDoesNotMatch', 503],
    ['InvalidAccessKeyId.NotFound', 503],
    ['HTTP 500', 503],
  ])('Aliyun SMS code %s is %i', (code, status) => {
    expect(statusOf(aliyunError(code))).toBe(status);
  });

  it('Aliyun flow control answers with Retry-After', () => {
    expect((aliyunError('isv.BUSINESS_LIMIT_CONTROL') as RateLimited).headers).toEqual({
      'Retry-After': '60',
    });
  });

  it.each([
    [new joseErrors.JWTExpired('expired', {}), 401],
    [new joseErrors.JWTClaimValidationFailed('aud', {}, 'aud', 'check_failed'), 401],
    [new joseErrors.JWTClaimValidationFailed('iss', {}, 'iss', 'check_failed'), 401],
    [new joseErrors.JOSEAlgNotAllowed('alg'), 401],
    [new joseErrors.JWKSNoMatchingKey(), 401],
    [new joseErrors.JWSSignatureVerificationFailed(), 401],
    [new joseErrors.JWSInvalid('bad'), 401],
    [new joseErrors.JWKSTimeout(), 503],
    [new joseErrors.JWKSInvalid('bad set'), 503],
    [new joseErrors.JOSEError('Expected 200 OK from the JSON Web Key Set HTTP response'), 503],
    [new TypeError('fetch failed'), 503],
  ])('Apple verification failure %p is %i', (err, status) => {
    expect(statusOf(appleError(err))).toBe(status);
  });

  it('names the Apple claim that failed', () => {
    expect(
      appleError(new joseErrors.JWTClaimValidationFailed('x', {}, 'aud', 'check_failed')).message,
    ).toMatch(/another app/);
    expect(
      appleError(new joseErrors.JWTClaimValidationFailed('x', {}, 'iss', 'check_failed')).message,
    ).toMatch(/not issued by Apple/);
  });
});

describe('the development SMS sender', () => {
  it('writes the code to the log instead of sending it', async () => {
    const lines: string[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _enc, done) {
        lines.push(chunk.toString());
        done();
      },
    });
    const sender = createDevSmsSender(createLogger({ LOG_LEVEL: 'info' }, destination));
    await sender.send('+8613800138000', '042817');
    expect(lines.map((l) => JSON.parse(l) as Record<string, unknown>)).toEqual([
      expect.objectContaining({ phone: '+8613800138000', code: '042817' }),
    ]);
  });
});

describe('sign-in provider settings', () => {
  const problemsOf = (env: Record<string, string>) => {
    try {
      loadConfig(env);
      return [];
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      return err.problems.map((p) => p.variable).sort();
    }
  };

  it('defaults to WeChat’s and Apple’s own endpoints, the dev SMS sender, and nothing enabled', () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      WECHAT_API_BASE_URL: 'https://api.weixin.qq.com',
      APPLE_JWKS_URL: 'https://appleid.apple.com/auth/keys',
      APPLE_CLIENT_ID: [],
      SMS_PROVIDER: 'dev',
      ALIYUN_SMS_ENDPOINT: 'https://dysmsapi.aliyuncs.com',
      SMS_CODE_TTL_SECONDS: 300,
      SMS_CODE_MAX_ATTEMPTS: 5,
      SMS_CODE_RESEND_SECONDS: 60,
    });
    expect(config.WECHAT_MINI_APP_ID).toBeUndefined();
    expect(loadConfig({ APPLE_CLIENT_ID: 'com.example.app, com.example.web' }).APPLE_CLIENT_ID).toEqual([
      'com.example.app',
      'com.example.web',
    ]);
  });

  it('wants an app id with its secret, and all four Aliyun settings with SMS_PROVIDER=aliyun', () => {
    expect(problemsOf({ WECHAT_MINI_APP_ID: 'wx1' })).toEqual(['WECHAT_MINI_APP_SECRET']);
    expect(problemsOf({ WECHAT_APP_SECRET: 's' })).toEqual(['WECHAT_APP_ID']);
    expect(problemsOf({ WECHAT_APP_ID: '', WECHAT_APP_SECRET: '' })).toEqual([]);
    expect(problemsOf({ SMS_PROVIDER: 'aliyun', ALIYUN_ACCESS_KEY_ID: 'id' })).toEqual([
      'ALIYUN_ACCESS_KEY_SECRET',
      'ALIYUN_SMS_SIGN_NAME',
      'ALIYUN_SMS_TEMPLATE_CODE',
    ]);
    expect(problemsOf({ SMS_PROVIDER: 'twilio' })).toEqual(['SMS_PROVIDER']);
    expect(problemsOf({ WECHAT_API_BASE_URL: 'ftp://example.com' })).toEqual(['WECHAT_API_BASE_URL']);
  });
});
