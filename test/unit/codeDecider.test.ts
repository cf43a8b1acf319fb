import {
  CodeNotRedeemable,
  UnknownCode,
  codeDecider,
  type CodeCommand,
} from '../../src/commands/codes/decider';
import type { CodeEvent } from '../../src/events/codes';
import { deciderSpec } from '../support/spec';

const now = new Date('2026-03-01T10:00:00.000Z');
const at = now.toISOString();
const spec = deciderSpec(codeDecider);
const issued = (maxUses: number, expiresAt: string | null = null): CodeEvent => ({
  type: 'CodeIssued',
  data: { code: 'ABCD', amount: 100, maxUses, expiresAt, batchId: 'b1', issuedBy: 'admin', issuedAt: at },
});
const used = (userId: string): CodeEvent => ({
  type: 'CodeUsed',
  data: { code: 'ABCD', userId, amount: 100, usedAt: at },
});
const use = (userId: string, when = now): CodeCommand => ({
  type: 'UseCode',
  data: { code: 'ABCD', userId },
  metadata: { now: when },
});

describe('redeem code decider', () => {
  it('records a use with the code’s amount', () => {
    spec
      .given([issued(3)])
      .when(use('u1'))
      .then([used('u1')]);
  });

  it('refuses an unknown code with 404 and a used-up, expired or revoked code with 409', () => {
    spec.given([]).when(use('u1')).thenThrows(UnknownCode);
    spec
      .given([issued(2), used('u1'), used('u2')])
      .when(use('u3'))
      .thenThrows(CodeNotRedeemable, 'used up');
    spec
      .given([issued(2, '2026-03-01T09:00:00.000Z')])
      .when(use('u1'))
      .thenThrows(CodeNotRedeemable, 'expired');
    const revoked: CodeEvent = {
      type: 'CodeRevoked',
      data: { code: 'ABCD', revokedBy: 'admin', reason: 'leak', revokedAt: at },
    };
    spec
      .given([issued(2), revoked])
      .when(use('u1'))
      .thenThrows(CodeNotRedeemable, 'revoked');
  });

  it('lets a user redeem a code once', () => {
    spec
      .given([issued(5), used('u1')])
      .when(use('u1'))
      .thenThrows(CodeNotRedeemable, 'already');
  });

  it('revokes once, keeping the history', () => {
    const revoke: CodeCommand = {
      type: 'RevokeCode',
      data: { code: 'ABCD', revokedBy: 'admin', reason: 'leak' },
      metadata: { now },
    };
    const revoked: CodeEvent = {
      type: 'CodeRevoked',
      data: { code: 'ABCD', revokedBy: 'admin', reason: 'leak', revokedAt: at },
    };
    spec
      .given([issued(1), used('u1')])
      .when(revoke)
      .then([revoked]);
    spec
      .given([issued(1), used('u1'), revoked])
      .when(revoke)
      .then([]);
  });
});
