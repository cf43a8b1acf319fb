import type { Command, Decider } from '../handler';
import type { CodeEvent } from '../../events/codes';
import { BadRequest, Conflict, NotFound } from '../../platform/errors';

/** The code cannot be redeemed (revoked, expired, used up, or already used by this user): 409. */
export class CodeNotRedeemable extends Conflict {}
export class UnknownCode extends NotFound {}

export interface CodeState {
  issued: { amount: number; maxUses: number; expiresAt: string | null } | null;
  uses: number;
  users: Set<string>;
  revoked: boolean;
}

export const initialCode = (): CodeState => ({ issued: null, uses: 0, users: new Set(), revoked: false });

export type CodeCommand =
  | Command<
      'IssueCode',
      {
        code: string;
        amount: number;
        maxUses: number;
        expiresAt: string | null;
        batchId: string;
        issuedBy: string;
      }
    >
  | Command<'UseCode', { code: string; userId: string }>
  | Command<'RevokeCode', { code: string; revokedBy: string; reason: string }>;

/**
 * A code's rules. Concurrent uses race on the code stream's expected revision: exactly
 * `maxUses` win, and a user wins at most once.
 */
export function decideCode(cmd: CodeCommand, s: CodeState): CodeEvent[] {
  const now = cmd.metadata.now.toISOString();
  switch (cmd.type) {
    case 'IssueCode': {
      if (s.issued) return []; // issuing the same code again: idempotent
      const { expiresAt } = cmd.data;
      if (expiresAt !== null && Date.parse(expiresAt) <= cmd.metadata.now.getTime()) {
        throw new BadRequest(`expires_at ${expiresAt} is in the past: no one could redeem such a code.`);
      }
      return [{ type: 'CodeIssued', data: { ...cmd.data, issuedAt: now } }];
    }
    case 'UseCode': {
      const { code, userId } = cmd.data;
      if (!s.issued) throw new UnknownCode(`No code ${code}.`);
      if (s.revoked) throw new CodeNotRedeemable('This code has been revoked.');
      if (s.issued.expiresAt && Date.parse(s.issued.expiresAt) <= cmd.metadata.now.getTime()) {
        throw new CodeNotRedeemable('This code has expired.');
      }
      if (s.users.has(userId)) throw new CodeNotRedeemable('You have already redeemed this code.');
      if (s.uses >= s.issued.maxUses) throw new CodeNotRedeemable('This code has been used up.');
      return [{ type: 'CodeUsed', data: { code, userId, amount: s.issued.amount, usedAt: now } }];
    }
    case 'RevokeCode': {
      if (!s.issued) throw new UnknownCode(`No code ${cmd.data.code}.`);
      if (s.revoked) return [];
      return [{ type: 'CodeRevoked', data: { ...cmd.data, revokedAt: now } }];
    }
  }
  const _exhaustive: never = cmd;
  return _exhaustive;
}

export function evolveCode(s: CodeState, e: CodeEvent): CodeState {
  switch (e.type) {
    case 'CodeIssued':
      s.issued = { amount: e.data.amount, maxUses: e.data.maxUses, expiresAt: e.data.expiresAt };
      break;
    case 'CodeUsed':
      s.uses++;
      s.users.add(e.data.userId);
      break;
    case 'CodeRevoked':
      s.revoked = true;
      break;
  }
  return s;
}

export const codeDecider: Decider<CodeState, CodeCommand, CodeEvent> = {
  name: 'code',
  initialState: initialCode,
  evolve: evolveCode,
  decide: decideCode,
};
