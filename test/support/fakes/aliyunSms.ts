import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import { startFakeHttpServer, type FakeRequest, type FakeResponse } from './httpServer';

export interface AliyunSmsAccount {
  accessKeyId: string;
  accessKeySecret: string;
  signName: string;
  templateCode: string;
}

export interface SentSms {
  /** As sent in PhoneNumbers: `13800138000`, or country code + number. */
  phone: string;
  signName: string;
  templateCode: string;
  params: Record<string, string>;
}

export interface FakeAliyunSms {
  url: string;
  /** Every message the gateway accepted, in order. */
  sent: SentSms[];
  /** The code of the last message to `phone` (as in PhoneNumbers). */
  lastCode(phone: string): string | undefined;
  /** Requests refused before reaching SendSms (signature, key, nonce, timestamp): Code per request. */
  rejected: string[];
  /** The next `times` SendSms calls answer this Code (isv.BUSINESS_LIMIT_CONTROL, ...), HTTP 200. */
  failNext(code: string, times?: number): void;
  close(): Promise<void>;
}

/**
 * Unreserved bytes stay, every other UTF-8 byte is %XX: the rule as Aliyun documents it, written
 * out byte by byte (not the adapter's encodeURIComponent-based version), so a mistake in one is
 * not repeated in the other.
 */
function encode(text: string): string {
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    const c = String.fromCharCode(byte);
    out += /[A-Za-z0-9\-_.~]/.test(c) ? c : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

function expectedSignature(method: string, params: Map<string, string>, secret: string): string {
  const canonical = [...params.entries()]
    .filter(([k]) => k !== 'Signature')
    .map(([k, v]) => [encode(k), encode(v)] as const)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
  const stringToSign = `${method}&${encode('/')}&${encode(canonical)}`;
  return createHmac('sha1', `${secret}&`).update(stringToSign, 'utf8').digest('base64');
}

const MESSAGES: Record<string, string> = {
  OK: 'OK',
  'isv.BUSINESS_LIMIT_CONTROL': '触发分钟级流控Permits:1',
  'isv.MOBILE_NUMBER_ILLEGAL': '非法手机号',
  'isv.SMS_SIGNATURE_ILLEGAL': '该账号下找不到对应签名',
  'isv.SMS_TEMPLATE_ILLEGAL': '该账号下找不到对应模板',
  'isv.INVALID_JSON_PARAM': 'JSON参数不合法，只接受字符串值',
  'isv.AMOUNT_NOT_ENOUGH': '账户余额不足',
};

/**
 * Aliyun's Dysmsapi `SendSms` (RPC style, 2017-05-25) as the gateway answers it: the request's
 * HMAC-SHA1 signature (v1.0) is recomputed and checked, as are the AccessKeyId, a fresh
 * SignatureNonce and a Timestamp within 15 minutes; errors come in Aliyun's JSON
 * (`RequestId`, `HostId`, `Code`, `Message`, `Recommend`) with its HTTP statuses.
 */
export async function startFakeAliyunSms(account: AliyunSmsAccount): Promise<FakeAliyunSms> {
  const sent: SentSms[] = [];
  const rejected: string[] = [];
  const failures: string[] = [];
  const nonces = new Set<string>();

  const answer = (status: number, code: string, message: string): FakeResponse => {
    if (status !== 200 || code !== 'OK') rejected.push(code);
    return {
      status,
      body: JSON.stringify({
        RequestId: randomUUID().toUpperCase(),
        HostId: 'dysmsapi.aliyuncs.com',
        Code: code,
        Message: message,
        Recommend: `https://api.aliyun.com/troubleshoot?q=${code}`,
      }),
    };
  };
  const business = (code: string): FakeResponse => ({
    status: 200,
    body: JSON.stringify({
      Message: MESSAGES[code] ?? code,
      RequestId: randomUUID().toUpperCase(),
      ...(code === 'OK' ? { BizId: `${Date.now()}^0` } : {}),
      Code: code,
    }),
  });

  const handle = (req: FakeRequest): FakeResponse => {
    // RPC APIs take their parameters in the query (GET) or a form body (POST).
    const source =
      req.method === 'POST' && /application\/x-www-form-urlencoded/.test(String(req.headers['content-type']))
        ? new URLSearchParams(req.body)
        : req.query;
    const params = new Map<string, string>();
    for (const [k, v] of source) params.set(k, v);
    const get = (k: string) => params.get(k);

    for (const required of ['AccessKeyId', 'Signature', 'SignatureNonce', 'Timestamp', 'Action', 'Version']) {
      if (!get(required)) return answer(400, `MissingParameter`, `${required} is mandatory for this action.`);
    }
    if (get('AccessKeyId') !== account.accessKeyId) {
      return answer(404, 'InvalidAccessKeyId.NotFound', 'Specified access key is not found.');
    }
    if (get('SignatureMethod') !== 'HMAC-SHA1' || get('SignatureVersion') !== '1.0') {
      return answer(400, 'InvalidSignatureMethod', 'Specified signature method is not supported.');
    }
    const expected = Buffer.from(expectedSignature(req.method, params, account.accessKeySecret));
    const presented = Buffer.from(get('Signature') ?? '');
    if (expected.length !== presented.length || !timingSafeEqual(expected, presented)) {
      return answer(400, 'SignatureDoesNotMatch', 'Specified signature is not matched with our calculation.');
    }
    const nonce = get('SignatureNonce')!;
    if (nonces.has(nonce))
      return answer(400, 'SignatureNonceUsed', 'Specified signature nonce was used already.');
    nonces.add(nonce);
    const timestamp = get('Timestamp')!;
    if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/.test(timestamp)) {
      return answer(
        400,
        'InvalidTimeStamp.Format',
        'Specified time stamp or date value is not well formatted.',
      );
    }
    if (Math.abs(Date.parse(timestamp) - Date.now()) > 15 * 60_000) {
      return answer(400, 'InvalidTimeStamp.Expired', 'Specified time stamp or date value is expired.');
    }
    if (get('Action') !== 'SendSms' || get('Version') !== '2017-05-25') {
      return answer(
        404,
        'InvalidAction.NotFound',
        'Specified api is not found, please check your url and method.',
      );
    }
    if (get('Format') !== 'JSON') return answer(400, 'InvalidParameter', 'This fake answers JSON only.');

    const failure = failures.shift();
    if (failure) return business(failure);
    const phone = get('PhoneNumbers') ?? '';
    if (!/^\d{6,16}$/.test(phone)) return business('isv.MOBILE_NUMBER_ILLEGAL');
    if (get('SignName') !== account.signName) return business('isv.SMS_SIGNATURE_ILLEGAL');
    if (get('TemplateCode') !== account.templateCode) return business('isv.SMS_TEMPLATE_ILLEGAL');
    let templateParams: unknown;
    try {
      templateParams = JSON.parse(get('TemplateParam') ?? '');
    } catch {
      return business('isv.INVALID_JSON_PARAM');
    }
    if (
      typeof templateParams !== 'object' ||
      templateParams === null ||
      Object.values(templateParams).some((v) => typeof v !== 'string')
    ) {
      return business('isv.INVALID_JSON_PARAM');
    }
    sent.push({
      phone,
      signName: get('SignName')!,
      templateCode: get('TemplateCode')!,
      params: templateParams as Record<string, string>,
    });
    return business('OK');
  };

  const server = await startFakeHttpServer((req) =>
    req.path === '/' ? handle(req) : answer(404, 'InvalidAction.NotFound', 'Not found.'),
  );
  return {
    url: server.url,
    sent,
    lastCode: (phone) => [...sent].reverse().find((m) => m.phone === phone)?.params.code,
    rejected,
    failNext(code, times = 1) {
      for (let i = 0; i < times; i++) failures.push(code);
    },
    close: () => server.close(),
  };
}
