import { createHmac, randomUUID } from 'node:crypto';
import { BadRequest, DependencyDown, RateLimited } from '../errors';
import type { Logger } from '../logger';
import { aliyunPhoneNumber } from './phone';
import { callProvider, parseProviderJson } from './providerHttp';

/** Sends a sign-in code by SMS. The port every SMS gateway adapter implements. */
export interface SmsSender {
  readonly name: string;
  /**
   * `phone` is E.164. Throws BadRequest (400) for a number the gateway will not send to, RateLimited
   * (429) when the gateway limits it, DependencyDown (503) for anything else.
   */
  send(phone: string, code: string): Promise<void>;
}

/**
 * The development sender: it writes the code to the log instead of sending it, so sign-in by SMS
 * works on a fresh machine. The one place a code is ever logged; never use it in production.
 */
export function createDevSmsSender(logger: Logger): SmsSender {
  return {
    name: 'dev',
    async send(phone, code) {
      logger.info({ phone, code }, 'SMS sign-in code (SMS_PROVIDER=dev: logged, not sent)');
    },
  };
}

export interface AliyunSmsOptions {
  /** https://dysmsapi.aliyuncs.com, or a fake in tests. */
  endpoint: string;
  accessKeyId: string;
  accessKeySecret: string;
  signName: string;
  /** A template with one `${code}` variable. */
  templateCode: string;
  timeoutMs?: number;
  /** For reproducible requests in tests. */
  now?: () => Date;
  nonce?: () => string;
}

const PROVIDER = 'Aliyun SMS';
/** Aliyun's own per-number limits are per minute, hour and day; these are the earliest worth trying. */
const BUSINESS_LIMIT_RETRY_SECONDS = 60;
const DAY_LIMIT_RETRY_SECONDS = 3_600;

/**
 * Aliyun SMS through Dysmsapi `SendSms` (version 2017-05-25), an RPC-style POP API signed with
 * HMAC-SHA1 (signature version 1.0). The answer is JSON with `Code: "OK"`, or another `Code` (with
 * HTTP 200 for business errors, 4xx for signature and key errors). The code travels only in
 * `TemplateParam`: it is never logged, nor put in an error.
 */
export function createAliyunSmsSender(opts: AliyunSmsOptions): SmsSender {
  const url = `${opts.endpoint.replace(/\/+$/, '')}/`;
  const now = opts.now ?? (() => new Date());
  const nonce = opts.nonce ?? randomUUID;
  return {
    name: 'aliyun',
    async send(phone, code) {
      const params: Record<string, string> = {
        AccessKeyId: opts.accessKeyId,
        Action: 'SendSms',
        Format: 'JSON',
        PhoneNumbers: aliyunPhoneNumber(phone),
        RegionId: 'cn-hangzhou',
        SignName: opts.signName,
        SignatureMethod: 'HMAC-SHA1',
        SignatureNonce: nonce(),
        SignatureVersion: '1.0',
        TemplateCode: opts.templateCode,
        TemplateParam: JSON.stringify({ code }),
        Timestamp: aliyunTimestamp(now()),
        Version: '2017-05-25',
      };
      const body = signedQuery('POST', params, opts.accessKeySecret);
      const answer = await callProvider(
        PROVIDER,
        url,
        { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body },
        opts.timeoutMs ?? 5_000,
      );
      const result = parseProviderJson(PROVIDER, answer);
      if (result.Code === 'OK' && answer.status === 200) return;
      throw aliyunError(typeof result.Code === 'string' ? result.Code : `HTTP ${answer.status}`);
    },
  };
}

/** What a non-OK `Code` of Aliyun SMS means for our client. */
export function aliyunError(code: string): Error {
  switch (code) {
    case 'isv.BUSINESS_LIMIT_CONTROL':
      return new RateLimited(
        'Too many codes were sent to this number; wait a minute and try again.',
        BUSINESS_LIMIT_RETRY_SECONDS,
      );
    case 'isv.DAY_LIMIT_CONTROL':
      return new RateLimited('Too many codes were sent to this number today.', DAY_LIMIT_RETRY_SECONDS);
    case 'isv.MOBILE_NUMBER_ILLEGAL':
      return new BadRequest('This phone number cannot receive SMS codes.');
  }
  // Our key, sign name, template or balance (isv.SMS_SIGNATURE_ILLEGAL, SignatureDoesNotMatch,
  // isv.AMOUNT_NOT_ENOUGH...), or Aliyun itself: not the client's to fix. The error code is no secret.
  return new DependencyDown(`The SMS gateway refused to send the code (${code}); retry later.`);
}

/** RFC 3986 percent-encoding, as Aliyun signs: only A–Z a–z 0–9 - _ . ~ stay as they are. */
export function percentEncode(value: string): string {
  return encodeURIComponent(value).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/** The parameters sorted by name and encoded: what is signed, and (with the signature) what is sent. */
export function canonicalQuery(params: Record<string, string>): string {
  return Object.keys(params)
    .sort()
    .map((k) => `${percentEncode(k)}=${percentEncode(params[k] ?? '')}`)
    .join('&');
}

/** `Base64(HMAC-SHA1(secret + "&", METHOD&%2F&encode(canonical query)))`: Aliyun's signature v1. */
export function aliyunSignature(method: string, params: Record<string, string>, secret: string): string {
  const stringToSign = `${method}&${percentEncode('/')}&${percentEncode(canonicalQuery(params))}`;
  return createHmac('sha1', `${secret}&`).update(stringToSign, 'utf8').digest('base64');
}

/** The request's parameters with their `Signature`, as a query string or form body. */
export function signedQuery(method: string, params: Record<string, string>, secret: string): string {
  return `${canonicalQuery(params)}&Signature=${percentEncode(aliyunSignature(method, params, secret))}`;
}

/** ISO 8601 in UTC without milliseconds, as Aliyun's `Timestamp` wants it. */
export function aliyunTimestamp(at: Date): string {
  return at.toISOString().replace(/\.\d{3}Z$/, 'Z');
}
