import {
  BalanceLimitReached,
  DirectChargeNotAllowed,
  MAX_BALANCE,
  HoldNotFound,
  InsufficientCredits,
  LedgerIdTaken,
  RefundExceedsCharge,
  ledgerDecider,
  type LedgerCommand,
} from '../../src/commands/ledger/decider';
import type { LedgerEvent } from '../../src/events/ledger';
import { deciderSpec } from '../support/spec';

const now = new Date('2026-03-01T10:00:00.000Z');
const at = now.toISOString();
const later = '2026-03-01T10:05:00.000Z';
const u = 'user-1';
const spec = deciderSpec(ledgerDecider);
const cmd = <T extends LedgerCommand['type']>(
  type: T,
  data: Extract<LedgerCommand, { type: T }>['data'],
  when = now,
) => ({ type, data, metadata: { now: when } }) as LedgerCommand;

const granted = (amount: number, grantId = 'g1'): LedgerEvent => ({
  type: 'CreditsGranted',
  data: { userId: u, grantId, amount, reason: 'signup', grantedAt: at },
});
const captured = (holdId: string, amount: number): LedgerEvent => ({
  type: 'CreditsCaptured',
  data: { userId: u, holdId, amount, capturedAt: at },
});
const reserved = (holdId: string, amount: number, expiresAt = later): LedgerEvent => ({
  type: 'CreditsReserved',
  data: { userId: u, holdId, amount, reason: 'task', expiresAt, reservedAt: at },
});

describe('ledger decider', () => {
  it('grants credits once per grant id', () => {
    spec
      .given([])
      .when(cmd('GrantCredits', { userId: u, grantId: 'g1', amount: 100, reason: 'signup' }))
      .then([granted(100)]);
    spec
      .given([granted(100)])
      .when(cmd('GrantCredits', { userId: u, grantId: 'g1', amount: 100, reason: 'signup' }))
      .then([]);
  });

  it('reserves a hold only when available credits cover it, answering 402 otherwise', () => {
    const reserve = (amount: number) =>
      cmd('ReserveCredits', { userId: u, holdId: 't1', amount, expiresAt: later, reason: 'task' });
    spec
      .given([granted(100)])
      .when(reserve(100))
      .then([reserved('t1', 100)]);
    spec
      .given([granted(100), reserved('t0', 60)])
      .when(reserve(41))
      .thenThrows(InsufficientCredits, '41 credits are needed but 40');
    spec
      .given([granted(100), reserved('t1', 60)])
      .when(reserve(60))
      .then([]); // same hold again: idempotent
  });

  it('captures the actual cost, releases the rest, and resolves the hold once', () => {
    const capture = cmd('CaptureCredits', { userId: u, holdId: 't1', cost: 30, excess: 'forgive' });
    spec
      .given([granted(100), reserved('t1', 50)])
      .when(capture)
      .then([
        { type: 'CreditsCaptured', data: { userId: u, holdId: 't1', amount: 30, capturedAt: at } },
        { type: 'CreditsReleased', data: { userId: u, holdId: 't1', amount: 20, releasedAt: at } },
      ]);
    spec
      .given([granted(100), reserved('t1', 50), captured('t1', 50)])
      .when(capture)
      .then([]);
    spec
      .given([granted(100), reserved('t1', 50), captured('t1', 50)])
      .when(cmd('ReleaseCredits', { userId: u, holdId: 't1' }))
      .then([]);
  });

  it('never captures more than the hold; an excess is charged only as the policy allows and never below zero', () => {
    const capture = (excess: 'forgive' | 'charge_available') =>
      cmd('CaptureCredits', { userId: u, holdId: 't1', cost: 80, excess });
    spec
      .given([granted(60), reserved('t1', 50)])
      .when(capture('forgive'))
      .then([{ type: 'CreditsCaptured', data: { userId: u, holdId: 't1', amount: 50, capturedAt: at } }]);
    spec
      .given([granted(60), reserved('t1', 50)])
      .when(capture('charge_available'))
      .then([
        { type: 'CreditsCaptured', data: { userId: u, holdId: 't1', amount: 50, capturedAt: at } },
        {
          type: 'CreditsCharged',
          data: {
            userId: u,
            chargeId: 't1:excess',
            amount: 10,
            reason: 'cost over hold',
            holdId: 't1',
            chargedAt: at,
          },
        },
      ]);
  });

  it('expires a hold only once it is due', () => {
    const expire = (when: Date) => cmd('ExpireHold', { userId: u, holdId: 't1' }, when);
    spec
      .given([granted(10), reserved('t1', 10)])
      .when(expire(now))
      .then([]);
    spec
      .given([granted(10), reserved('t1', 10)])
      .when(expire(new Date(later)))
      .then([{ type: 'HoldExpired', data: { userId: u, holdId: 't1', amount: 10, expiredAt: later } }]);
  });

  it('charges a capture that comes after its hold expired, once, from what is available', () => {
    const expired: LedgerEvent = {
      type: 'HoldExpired',
      data: { userId: u, holdId: 't1', amount: 50, expiredAt: later },
    };
    const capture = (cost: number, excess: 'forgive' | 'charge_available' = 'charge_available') =>
      cmd('CaptureCredits', { userId: u, holdId: 't1', cost, excess });
    const late = (amount: number): LedgerEvent => ({
      type: 'CreditsCharged',
      data: {
        userId: u,
        chargeId: 't1:late',
        amount,
        reason: 'capture after the hold expired',
        holdId: 't1',
        chargedAt: at,
      },
    });
    spec
      .given([granted(100), reserved('t1', 50), expired])
      .when(capture(30))
      .then([late(30)]);
    // Once: the same capture again decides nothing.
    spec
      .given([granted(100), reserved('t1', 50), expired, late(30)])
      .when(capture(30))
      .then([]);
    // Past the hold: the excess policy decides, and never below zero.
    spec
      .given([granted(100), reserved('t1', 50), expired])
      .when(capture(80, 'forgive'))
      .then([late(50)]);
    spec
      .given([granted(100), reserved('t1', 50), expired, reserved('t2', 70)])
      .when(capture(80))
      .then([late(30)]);
    spec
      .given([granted(100), reserved('t1', 50), expired])
      .when(capture(0))
      .then([]);
    // Captured or released before: the capture is only repeated, and decides nothing.
    spec
      .given([
        granted(100),
        reserved('t1', 50),
        { type: 'CreditsReleased', data: { userId: u, holdId: 't1', amount: 50, releasedAt: at } },
      ])
      .when(capture(30))
      .then([]);
  });

  it('refuses to release or capture an unknown hold', () => {
    spec
      .given([granted(10)])
      .when(cmd('ReleaseCredits', { userId: u, holdId: 'nope' }))
      .thenThrows(HoldNotFound);
  });

  it('refunds at most what was charged, once per refund id', () => {
    const history = [granted(100), reserved('t1', 30), captured('t1', 30)];
    const refund = (refundId: string, amount: number) =>
      cmd('RefundCredits', { userId: u, refundId, chargeId: 't1', amount, reason: 'bad answer' });
    spec
      .given(history)
      .when(refund('r1', 30))
      .then([
        {
          type: 'CreditsRefunded',
          data: {
            userId: u,
            refundId: 'r1',
            chargeId: 't1',
            amount: 30,
            reason: 'bad answer',
            refundedAt: at,
          },
        },
      ]);
    const refunded: LedgerEvent = {
      type: 'CreditsRefunded',
      data: { userId: u, refundId: 'r1', chargeId: 't1', amount: 20, reason: 'x', refundedAt: at },
    };
    spec
      .given([...history, refunded])
      .when(refund('r2', 11))
      .thenThrows(RefundExceedsCharge);
    spec
      .given([...history, refunded])
      .when(refund('r1', 20))
      .then([]);
  });

  it('allows direct charges only when the policy does', () => {
    const charge = (allowDirect: boolean) =>
      cmd('ChargeCredits', { userId: u, chargeId: 'c1', amount: 5, reason: 'api call', allowDirect });
    spec
      .given([granted(10)])
      .when(charge(false))
      .thenThrows(DirectChargeNotAllowed);
    spec
      .given([granted(10)])
      .when(charge(true))
      .then([
        {
          type: 'CreditsCharged',
          data: { userId: u, chargeId: 'c1', amount: 5, reason: 'api call', holdId: null, chargedAt: at },
        },
      ]);
  });

  it('keeps holds and direct charges apart: neither takes the id of the other', () => {
    // A capture is kept under its hold's id beside the direct charges; a hold named as a charge
    // would, captured, replace that charge's record (what it can still be refunded).
    const charged: LedgerEvent = {
      type: 'CreditsCharged',
      data: { userId: u, chargeId: 'x', amount: 100, reason: 'api call', holdId: null, chargedAt: at },
    };
    spec
      .given([granted(1000), charged])
      .when(cmd('ReserveCredits', { userId: u, holdId: 'x', amount: 50, expiresAt: later, reason: 'task' }))
      .thenThrows(LedgerIdTaken);
    const charge = cmd('ChargeCredits', {
      userId: u,
      chargeId: 't1',
      amount: 5,
      reason: 'api call',
      allowDirect: true,
    });
    spec
      .given([granted(1000), reserved('t1', 50)])
      .when(charge)
      .thenThrows(LedgerIdTaken);
    spec
      .given([granted(1000), reserved('t1', 30), captured('t1', 30)])
      .when(charge)
      .thenThrows(LedgerIdTaken);
  });

  it('refuses an adjustment that would take available credits below zero', () => {
    const adjust = (amount: number) =>
      cmd('AdjustCredits', { userId: u, adjustmentId: 'a1', amount, reason: 'correction', corrects: null });
    spec
      .given([granted(10), reserved('t1', 8)])
      .when(adjust(-3))
      .thenThrows(InsufficientCredits);
    spec
      .given([granted(10), reserved('t1', 8)])
      .when(adjust(-2))
      .then([
        {
          type: 'CreditsAdjusted',
          data: {
            userId: u,
            adjustmentId: 'a1',
            amount: -2,
            reason: 'correction',
            corrects: null,
            adjustedAt: at,
          },
        },
      ]);
  });

  it('refuses every credit that would take the balance past what is counted exactly', () => {
    const full = granted(MAX_BALANCE - 5);
    const credits: LedgerCommand[] = [
      cmd('GrantCredits', { userId: u, grantId: 'g2', amount: 6, reason: 'more' }),
      cmd('RedeemCode', { userId: u, useId: 'use-1', code: 'C', amount: 6 }),
      cmd('AdjustCredits', { userId: u, adjustmentId: 'a1', amount: 6, reason: 'fix', corrects: null }),
    ];
    for (const c of credits)
      spec.given([full]).when(c).thenThrows(BalanceLimitReached, 'past 9007199254740991');
    spec
      .given([full])
      .when(cmd('GrantCredits', { userId: u, grantId: 'g2', amount: 5, reason: 'more' }))
      .then([
        {
          type: 'CreditsGranted',
          data: { userId: u, grantId: 'g2', amount: 5, reason: 'more', grantedAt: at },
        },
      ]);
    // A refund too, though it gives back what was charged.
    const charged: LedgerEvent = {
      type: 'CreditsCharged',
      data: { userId: u, chargeId: 'c1', amount: 10, reason: 'call', holdId: null, chargedAt: at },
    };
    spec
      .given([granted(20), charged, { ...granted(MAX_BALANCE - 15, 'g2') }])
      .when(cmd('RefundCredits', { userId: u, refundId: 'r1', chargeId: 'c1', amount: 6, reason: 'sorry' }))
      .thenThrows(BalanceLimitReached);
  });
});
