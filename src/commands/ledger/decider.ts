import type { Command, Decider } from '../handler';
import type { LedgerEvent } from '../../events/ledger';
import { Conflict, DomainError, NotFound } from '../../platform/errors';

/** Available credits do not cover what a command needs. */
export class InsufficientCredits extends DomainError {
  readonly status = 402;
  readonly type = '/problems/insufficient-credits';
  readonly title = 'Not enough credits';
  constructor(
    readonly available: number,
    readonly required: number,
  ) {
    super(`${required} credits are needed but ${available} are available.`);
    this.extensions.available = available;
    this.extensions.required = required;
  }
}

/**
 * The most credits an account may hold: beyond it, sums of credits are no longer counted exactly
 * (JavaScript numbers), and a credit would be lost or made by rounding.
 */
export const MAX_BALANCE = Number.MAX_SAFE_INTEGER;

/** A credit that would take the account past `MAX_BALANCE`. */
export class BalanceLimitReached extends Conflict {
  constructor(posted: number, amount: number) {
    super(
      `${amount} more credits would bring the balance (${posted}) past ${MAX_BALANCE}, the most an account holds.`,
    );
  }
}

export class HoldNotFound extends NotFound {}
export class ChargeNotFound extends NotFound {}
export class RefundExceedsCharge extends Conflict {}
export class DirectChargeNotAllowed extends Conflict {}
/**
 * A hold and a direct charge named alike: a capture is recorded under its hold's id beside the
 * direct charges, so the two kinds share one set of ids.
 */
export class LedgerIdTaken extends Conflict {}

interface Hold {
  amount: number;
  expiresAt: string;
}

/** One user's credit account. `held` is the sum of open holds; available = posted − held ≥ 0. */
export interface Ledger {
  posted: number;
  held: number;
  holds: Map<string, Hold>;
  /** Holds captured, released or expired: a hold resolves once. */
  resolved: Set<string>;
  /** Holds that expired, with their amounts: a capture arriving after is charged, not dropped. */
  expired: Map<string, number>;
  /** Captures (by hold id) and direct charges, with what has been refunded of them. */
  charges: Map<string, { amount: number; refunded: number }>;
  /** Ids of grants, redemptions, adjustments and refunds already applied: their commands are idempotent. */
  seen: Set<string>;
}

export const initialLedger = (): Ledger => ({
  posted: 0,
  held: 0,
  holds: new Map(),
  resolved: new Set(),
  expired: new Map(),
  charges: new Map(),
  seen: new Set(),
});

export const available = (s: Ledger) => s.posted - s.held;

/** What to do when a capture's actual cost exceeds its hold. */
export type ExcessPolicy = 'forgive' | 'charge_available';

export type LedgerCommand =
  | Command<'GrantCredits', { userId: string; grantId: string; amount: number; reason: string }>
  | Command<'RedeemCode', { userId: string; useId: string; code: string; amount: number }>
  | Command<
      'ReserveCredits',
      { userId: string; holdId: string; amount: number; expiresAt: string; reason: string }
    >
  | Command<'CaptureCredits', { userId: string; holdId: string; cost: number; excess: ExcessPolicy }>
  | Command<
      'ChargeCredits',
      { userId: string; chargeId: string; amount: number; reason: string; allowDirect: boolean }
    >
  | Command<'ReleaseCredits', { userId: string; holdId: string }>
  | Command<'ExpireHold', { userId: string; holdId: string }>
  | Command<
      'RefundCredits',
      { userId: string; refundId: string; chargeId: string; amount: number; reason: string }
    >
  | Command<
      'AdjustCredits',
      { userId: string; adjustmentId: string; amount: number; reason: string; corrects: string | null }
    >;

function wholeCost(cost: number): void {
  if (!Number.isSafeInteger(cost) || cost < 0) throw new RangeError('cost must be a whole number of credits');
}

/**
 * A capture of a hold already resolved. Captured or released, it decides nothing (the capture is
 * idempotent). Expired (its capture came past the hold's expiry: a settlement delayed by an outage),
 * what was used is still owed: charged once, from what is available, up to the hold under the
 * `forgive` policy, and never below zero.
 */
function lateCapture(
  { holdId, cost, excess, userId }: { holdId: string; cost: number; excess: ExcessPolicy; userId: string },
  s: Ledger,
  now: string,
): LedgerEvent[] {
  const expiredAmount = s.expired.get(holdId);
  const chargeId = `${holdId}:late`;
  if (expiredAmount === undefined || s.charges.has(chargeId)) return [];
  wholeCost(cost);
  const owed = excess === 'charge_available' ? cost : Math.min(cost, expiredAmount);
  const amount = Math.min(owed, available(s));
  if (amount <= 0) return [];
  return [
    {
      type: 'CreditsCharged',
      data: { userId, chargeId, amount, reason: 'capture after the hold expired', holdId, chargedAt: now },
    },
  ];
}

function positive(n: number, what: string): void {
  if (!Number.isSafeInteger(n) || n <= 0)
    throw new RangeError(`${what} must be a positive whole number of credits`);
}

/** Refuses a credit of `amount` that would take the account past `MAX_BALANCE`. */
function withinLimit(s: Ledger, amount: number): void {
  if (s.posted + amount > MAX_BALANCE) throw new BalanceLimitReached(s.posted, amount);
}

/**
 * The ledger's rules. Every command carrying an id of its own (grant, redemption, hold, charge,
 * refund, adjustment) is idempotent on it: the same command again decides nothing, so a process
 * manager or a retried request never applies a movement twice.
 */
export function decideLedger(cmd: LedgerCommand, s: Ledger): LedgerEvent[] {
  const now = cmd.metadata.now.toISOString();
  switch (cmd.type) {
    case 'GrantCredits': {
      if (s.seen.has(cmd.data.grantId)) return [];
      positive(cmd.data.amount, 'amount');
      withinLimit(s, cmd.data.amount);
      return [{ type: 'CreditsGranted', data: { ...cmd.data, grantedAt: now } }];
    }
    case 'RedeemCode': {
      if (s.seen.has(cmd.data.useId)) return [];
      positive(cmd.data.amount, 'amount');
      withinLimit(s, cmd.data.amount);
      return [{ type: 'CodeRedeemed', data: { ...cmd.data, redeemedAt: now } }];
    }
    case 'ReserveCredits': {
      const { holdId, amount } = cmd.data;
      if (s.holds.has(holdId) || s.resolved.has(holdId)) return [];
      if (s.charges.has(holdId)) throw new LedgerIdTaken(`A charge is named ${holdId}; a hold cannot be.`);
      positive(amount, 'amount');
      if (available(s) < amount) throw new InsufficientCredits(available(s), amount);
      return [{ type: 'CreditsReserved', data: { ...cmd.data, reservedAt: now } }];
    }
    case 'CaptureCredits': {
      const { holdId, cost, excess, userId } = cmd.data;
      if (s.resolved.has(holdId)) return lateCapture(cmd.data, s, now);
      const hold = s.holds.get(holdId);
      if (!hold) throw new HoldNotFound(`No hold ${holdId}.`);
      wholeCost(cost);
      const captured = Math.min(cost, hold.amount);
      const rest = hold.amount - captured;
      const events: LedgerEvent[] = [];
      if (captured > 0)
        events.push({ type: 'CreditsCaptured', data: { userId, holdId, amount: captured, capturedAt: now } });
      if (rest > 0)
        events.push({ type: 'CreditsReleased', data: { userId, holdId, amount: rest, releasedAt: now } });
      // The hold covered what it could; beyond it, charge only what is available, never below zero.
      const over = cost - captured;
      const afterRelease = available(s) + rest;
      const extra = excess === 'charge_available' ? Math.min(over, afterRelease) : 0;
      if (extra > 0) {
        events.push({
          type: 'CreditsCharged',
          data: {
            userId,
            chargeId: `${holdId}:excess`,
            amount: extra,
            reason: 'cost over hold',
            holdId,
            chargedAt: now,
          },
        });
      }
      return events;
    }
    case 'ChargeCredits': {
      const { chargeId, amount, allowDirect, userId, reason } = cmd.data;
      if (s.holds.has(chargeId) || s.resolved.has(chargeId)) {
        throw new LedgerIdTaken(`A hold is named ${chargeId}; a charge cannot be.`);
      }
      if (s.charges.has(chargeId)) return [];
      if (!allowDirect)
        throw new DirectChargeNotAllowed('Charges need a hold; direct charges are not allowed.');
      positive(amount, 'amount');
      if (available(s) < amount) throw new InsufficientCredits(available(s), amount);
      return [
        { type: 'CreditsCharged', data: { userId, chargeId, amount, reason, holdId: null, chargedAt: now } },
      ];
    }
    case 'ReleaseCredits': {
      const { holdId, userId } = cmd.data;
      if (s.resolved.has(holdId)) return [];
      const hold = s.holds.get(holdId);
      if (!hold) throw new HoldNotFound(`No hold ${holdId}.`);
      return [{ type: 'CreditsReleased', data: { userId, holdId, amount: hold.amount, releasedAt: now } }];
    }
    case 'ExpireHold': {
      const { holdId, userId } = cmd.data;
      const hold = s.holds.get(holdId);
      // Resolved meanwhile, or not yet due: nothing to expire.
      if (!hold || Date.parse(hold.expiresAt) > cmd.metadata.now.getTime()) return [];
      return [{ type: 'HoldExpired', data: { userId, holdId, amount: hold.amount, expiredAt: now } }];
    }
    case 'RefundCredits': {
      const { refundId, chargeId, amount } = cmd.data;
      if (s.seen.has(refundId)) return [];
      positive(amount, 'amount');
      const charge = s.charges.get(chargeId);
      if (!charge) throw new ChargeNotFound(`No charge ${chargeId} to refund.`);
      const refundable = charge.amount - charge.refunded;
      if (amount > refundable) {
        throw new RefundExceedsCharge(
          `Only ${refundable} credits of charge ${chargeId} can still be refunded.`,
        );
      }
      withinLimit(s, amount);
      return [{ type: 'CreditsRefunded', data: { ...cmd.data, refundedAt: now } }];
    }
    case 'AdjustCredits': {
      const { adjustmentId, amount } = cmd.data;
      if (s.seen.has(adjustmentId)) return [];
      if (!Number.isSafeInteger(amount) || amount === 0)
        throw new RangeError('amount must be a non-zero whole number');
      if (available(s) + amount < 0) throw new InsufficientCredits(available(s), -amount);
      if (amount > 0) withinLimit(s, amount);
      return [{ type: 'CreditsAdjusted', data: { ...cmd.data, adjustedAt: now } }];
    }
  }
  const _exhaustive: never = cmd;
  return _exhaustive;
}

/** Folds one event into the state (in place: the handler folds only stored events). */
export function evolveLedger(s: Ledger, e: LedgerEvent): Ledger {
  switch (e.type) {
    case 'CreditsGranted':
      s.posted += e.data.amount;
      s.seen.add(e.data.grantId);
      break;
    case 'CodeRedeemed':
      s.posted += e.data.amount;
      s.seen.add(e.data.useId);
      break;
    case 'CreditsReserved':
      s.holds.set(e.data.holdId, { amount: e.data.amount, expiresAt: e.data.expiresAt });
      s.held += e.data.amount;
      break;
    case 'CreditsCaptured':
      closeHold(s, e.data.holdId);
      s.posted -= e.data.amount;
      s.charges.set(e.data.holdId, { amount: e.data.amount, refunded: 0 });
      break;
    case 'CreditsReleased':
      closeHold(s, e.data.holdId);
      break;
    case 'HoldExpired':
      closeHold(s, e.data.holdId);
      s.expired.set(e.data.holdId, e.data.amount);
      break;
    case 'CreditsCharged':
      s.posted -= e.data.amount;
      s.charges.set(e.data.chargeId, { amount: e.data.amount, refunded: 0 });
      break;
    case 'CreditsRefunded': {
      s.posted += e.data.amount;
      s.seen.add(e.data.refundId);
      const charge = s.charges.get(e.data.chargeId);
      if (charge) charge.refunded += e.data.amount;
      break;
    }
    case 'CreditsAdjusted':
      s.posted += e.data.amount;
      s.seen.add(e.data.adjustmentId);
      break;
  }
  return s;
}

/** A capture and its release are two events of one resolution: the hold closes at the first. */
function closeHold(s: Ledger, holdId: string): void {
  const hold = s.holds.get(holdId);
  if (!hold) return;
  s.holds.delete(holdId);
  s.held -= hold.amount;
  s.resolved.add(holdId);
}

export const ledgerDecider: Decider<Ledger, LedgerCommand, LedgerEvent> = {
  name: 'ledger',
  initialState: initialLedger,
  evolve: evolveLedger,
  decide: decideLedger,
};
