import jwt from 'jsonwebtoken';
import { signAccessToken, verifyAccessToken, type AccessClaims } from '../../src/platform/tokens';

const keys = { secret: 'unit-secret-unit-secret-unit-secret-0001', issuer: 'chat-credits' };
let sessions = 0;
/** Claims of a session of their own: every test signs tokens no other test has verified. */
const newClaims = (): AccessClaims => ({ userId: 'u1', sessionId: `s${++sessions}`, permission: 0 });
const at = (iso: string) => new Date(iso);

describe('verifyAccessToken', () => {
  afterEach(() => jest.restoreAllMocks());

  it("checks a token's signature once, then answers it from what it verified", () => {
    const verify = jest.spyOn(jwt, 'verify');
    const claims = newClaims();
    const token = signAccessToken(claims, keys, { expiresInSeconds: 60, now: at('2026-12-01T10:00:00Z') });
    for (let s = 1; s <= 5; s++) {
      expect(verifyAccessToken(token, keys, at(`2026-12-01T10:00:0${s}Z`))).toEqual(claims);
    }
    expect(verify).toHaveBeenCalledTimes(1);
  });

  it('answers a token verified before until its expiry, and refuses it from then on', () => {
    const claims = newClaims();
    const token = signAccessToken(claims, keys, { expiresInSeconds: 60, now: at('2026-12-01T10:00:00Z') });
    expect(verifyAccessToken(token, keys, at('2026-12-01T10:00:10Z'))).toEqual(claims);
    // Known now: the same answers, the expiry still counts.
    expect(verifyAccessToken(token, keys, at('2026-12-01T10:00:59Z'))).toEqual(claims);
    expect(() => verifyAccessToken(token, keys, at('2026-12-01T10:01:00Z'))).toThrow(/expired/);
    expect(() => verifyAccessToken(token, keys, at('2026-12-01T10:05:00Z'))).toThrow(/expired/);
  });

  it('does not take a token verified under one key as verified under another, or another issuer', () => {
    const claims = newClaims();
    const token = signAccessToken(claims, keys, { expiresInSeconds: 60, now: at('2026-12-01T10:00:00Z') });
    const now = at('2026-12-01T10:00:10Z');
    expect(verifyAccessToken(token, keys, now)).toEqual(claims);
    expect(() => verifyAccessToken(token, { ...keys, secret: `${keys.secret}-other` }, now)).toThrow(
      /not valid/,
    );
    expect(() => verifyAccessToken(token, { ...keys, issuer: 'someone-else' }, now)).toThrow(/not valid/);
  });

  it('never takes a token it refused, however often it is sent', () => {
    const now = at('2026-12-01T10:00:10Z');
    const forged = jwt.sign(
      { sid: 's1', perm: 2, iat: 1_795_000_000 },
      'another-key-another-key-another-key-0001',
      {
        algorithm: 'HS256',
        issuer: keys.issuer,
        subject: 'u1',
        expiresIn: 3600,
      },
    );
    for (let i = 0; i < 3; i++) expect(() => verifyAccessToken(forged, keys, now)).toThrow(/not valid/);
  });

  it('answers claims no caller can change for the next one', () => {
    const claims = newClaims();
    const token = signAccessToken(claims, keys, { expiresInSeconds: 60, now: at('2026-12-01T10:00:00Z') });
    const first = verifyAccessToken(token, keys, at('2026-12-01T10:00:01Z'));
    expect(() => ((first as { permission: number }).permission = 2)).toThrow(TypeError);
    expect(verifyAccessToken(token, keys, at('2026-12-01T10:00:02Z')).permission).toBe(0);
  });
});
