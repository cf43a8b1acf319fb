import { z } from 'zod';

/**
 * The credit ledger's events (stream `ledger-{userId}`): the contract between the write side, the
 * projections and the finance reports that replay them. Amounts are integer credits.
 */
const credits = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);
const id = z.string().min(1).max(200);
const at = z.string().datetime({ offset: true });

export const LedgerEventSchemas = {
  CreditsGranted: z.object({
    userId: id,
    grantId: id,
    amount: credits,
    reason: z.string().min(1),
    grantedAt: at,
  }),
  CodeRedeemed: z.object({ userId: id, useId: id, code: id, amount: credits, redeemedAt: at }),
  CreditsReserved: z.object({
    userId: id,
    holdId: id,
    amount: credits,
    reason: z.string(),
    expiresAt: at,
    reservedAt: at,
  }),
  CreditsCaptured: z.object({ userId: id, holdId: id, amount: credits, capturedAt: at }),
  CreditsReleased: z.object({ userId: id, holdId: id, amount: credits, releasedAt: at }),
  HoldExpired: z.object({ userId: id, holdId: id, amount: credits, expiredAt: at }),
  CreditsCharged: z.object({
    userId: id,
    chargeId: id,
    amount: credits,
    reason: z.string().min(1),
    /** The hold it settles beyond: its excess (`{holdId}:excess`), or a capture after it expired (`{holdId}:late`). */
    holdId: id.nullable(),
    chargedAt: at,
  }),
  CreditsRefunded: z.object({
    userId: id,
    refundId: id,
    /** The capture (its hold id) or direct charge refunded. */
    chargeId: id,
    amount: credits,
    reason: z.string().min(1),
    refundedAt: at,
  }),
  CreditsAdjusted: z.object({
    userId: id,
    adjustmentId: id,
    /** Signed: positive adds, negative removes. */
    amount: z
      .number()
      .int()
      .refine((n) => n !== 0 && Number.isSafeInteger(n), 'a non-zero whole number'),
    reason: z.string().min(1),
    /** The event id this corrects, if any. */
    corrects: id.nullable(),
    adjustedAt: at,
  }),
} as const;

export type LedgerEventType = keyof typeof LedgerEventSchemas;
export type LedgerEvent = {
  [T in LedgerEventType]: { type: T; data: z.infer<(typeof LedgerEventSchemas)[T]> };
}[LedgerEventType];

export const LEDGER_EVENT_TYPES = Object.keys(LedgerEventSchemas) as LedgerEventType[];

export const ledgerStream = (userId: string) => `ledger-${userId}`;

/** Parses a stored event's data against its schema (replay rejects what the contract does not allow). */
export function parseLedgerEvent(type: string, data: unknown): LedgerEvent | undefined {
  const schema = (LedgerEventSchemas as Record<string, z.ZodType>)[type];
  if (!schema) return undefined;
  return { type, data: schema.parse(data) } as LedgerEvent;
}
