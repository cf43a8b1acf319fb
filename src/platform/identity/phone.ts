/** Separators people type inside a number: spaces, hyphens, dots, brackets. */
const SEPARATORS = /[\s\-.()]/g;
const MAINLAND = /^1[3-9]\d{9}$/;
const E164 = /^\+[1-9]\d{7,14}$/;

/**
 * A phone number in E.164 (`+8613800138000`), the one form codes are stored and identities linked
 * by, so `138 0013 8000`, `+86 13800138000` and `008613800138000` are one person. Eleven digits
 * starting with 1 are a mainland China mobile number; anything else must carry its country code.
 * Undefined when it is not a number we can send a code to.
 */
export function normalisePhone(input: string): string | undefined {
  if (input.length > 32) return undefined;
  let s = input.trim().replace(SEPARATORS, '');
  if (s.startsWith('00')) s = `+${s.slice(2)}`;
  if (MAINLAND.test(s)) return `+86${s}`;
  if (!E164.test(s)) return undefined;
  // +86 numbers are mobiles only here (a code goes by SMS): the same rule as without the prefix.
  if (s.startsWith('+86') && !MAINLAND.test(s.slice(3))) return undefined;
  return s;
}

/** The number as Aliyun's `PhoneNumbers` takes it: mainland without +86, others as country code + number. */
export function aliyunPhoneNumber(e164: string): string {
  return e164.startsWith('+86') ? e164.slice(3) : e164.slice(1);
}
