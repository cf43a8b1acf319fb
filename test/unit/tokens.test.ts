import jwt from 'jsonwebtoken';
import { signAccessToken, verifyAccessToken, type AccessClaims } from '../../src/platform/tokens';

const keys = { secret: 'unit-secret-unit-secret-unit-secret-0001', issuer: 'chat-credits' };
const claims: AccessClaims = { userId: 'u1', sessionId: 's1', permission: 0 };
const at = (iso: string) => new Date(iso);

describe('verifyAccessToken', () => {
  it('answers a token verified before until its expiry, and refuses it from then on', () => {
    const token = signAccessToken(claims, keys, { expiresInSeconds: 60, now: at('2026-12-01T10:00:00Z') });
    expect(verifyAccessToken(token, keys, at('2026-12-01T10:00:10Z'))).toEqual(claims);
    // Known now: the same answers, the expiry still counts.
    expect(verifyAccessToken(token, keys, at('2026-12-01T10:00:59Z'))).toEqual(claims);
    expect(() => verifyAccessToken(token, keys, at('2026-12-01T10:01:00Z'))).toThrow(/expired/);
    expect(() => verifyAccessToken(token, keys, at('2026-12-01T10:05:00Z'))).toThrow(/expired/);
  });

  it('does not take a token verified under one key as verified under another, or another issuer', () => {
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
    const token = signAccessToken(claims, keys, { expiresInSeconds: 60, now: at('2026-12-01T10:00:00Z') });
    const first = verifyAccessToken(token, keys, at('2026-12-01T10:00:01Z'));
    expect(() => ((first as { permission: number }).permission = 2)).toThrow(TypeError);
    expect(verifyAccessToken(token, keys, at('2026-12-01T10:00:02Z')).permission).toBe(0);
  });
});
