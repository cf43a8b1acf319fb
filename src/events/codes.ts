import { z } from 'zod';

/** Redeem codes' events (stream `code-{code}`). */
const id = z.string().min(1).max(200);
const at = z.string().datetime({ offset: true });

export const CodeEventSchemas = {
  CodeIssued: z.object({
    code: id,
    amount: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
    maxUses: z.number().int().positive(),
    expiresAt: at.nullable(),
    batchId: id,
    issuedBy: id,
    issuedAt: at,
  }),
  /** A use, recorded before the credit: its event id is the key of the ledger's idempotent credit step. */
  CodeUsed: z.object({ code: id, userId: id, amount: z.number().int().positive(), usedAt: at }),
  CodeRevoked: z.object({ code: id, revokedBy: id, reason: z.string(), revokedAt: at }),
} as const;

export type CodeEventType = keyof typeof CodeEventSchemas;
export type CodeEvent = {
  [T in CodeEventType]: { type: T; data: z.infer<(typeof CodeEventSchemas)[T]> };
}[CodeEventType];

export const codeStream = (code: string) => `code-${code}`;
