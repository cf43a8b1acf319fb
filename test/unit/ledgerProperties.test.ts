import fc from 'fast-check';
import { available, ledgerDecider, type Ledger, type LedgerCommand } from '../../src/commands/ledger/decider';
import { LedgerEventSchemas, type LedgerEvent } from '../../src/events/ledger';
import { DomainError } from '../../src/platform/errors';

const u = 'user-1';
const t0 = Date.parse('2026-03-01T00:00:00.000Z');
const holdIds = ['h0', 'h1', 'h2', 'h3'];
const amount = fc.integer({ min: 1, max: 500 });

/** Random commands over a few ids, so retries, resolutions and refunds of the same things collide. */
const command: fc.Arbitrary<{ cmd: Omit<LedgerCommand, 'metadata'>; minute: number }> = fc.record({
  minute: fc.integer({ min: 0, max: 120 }),
  cmd: fc.oneof(
    fc.record({
      type: fc.constant('GrantCredits' as const),
      data: fc.record({
        userId: fc.constant(u),
        grantId: fc.constantFrom('g0', 'g1', 'g2', 'g3'),
        amount,
        reason: fc.constant('grant'),
      }),
    }),
    fc.record({
      type: fc.constant('RedeemCode' as const),
      data: fc.record({
        userId: fc.constant(u),
        useId: fc.constantFrom('u0', 'u1'),
        code: fc.constant('CODE'),
        amount,
      }),
    }),
    fc.record({
      type: fc.constant('ReserveCredits' as const),
      data: fc.record({
        userId: fc.constant(u),
        holdId: fc.constantFrom(...holdIds),
        amount,
        expiresAt: fc.integer({ min: 0, max: 120 }).map((m) => new Date(t0 + m * 60_000).toISOString()),
        reason: fc.constant('task'),
      }),
    }),
    fc.record({
      type: fc.constant('CaptureCredits' as const),
      data: fc.record({
        userId: fc.constant(u),
        holdId: fc.constantFrom(...holdIds),
        cost: fc.integer({ min: 0, max: 700 }),
        excess: fc.constantFrom('forgive' as const, 'charge_available' as const),
      }),
    }),
    fc.record({
      type: fc.constant('ChargeCredits' as const),
      data: fc.record({
        userId: fc.constant(u),
        chargeId: fc.constantFrom('c0', 'c1'),
        amount,
        reason: fc.constant('call'),
        allowDirect: fc.boolean(),
      }),
    }),
    fc.record({
      type: fc.constant('ReleaseCredits' as const),
      data: fc.record({ userId: fc.constant(u), holdId: fc.constantFrom(...holdIds) }),
    }),
    fc.record({
      type: fc.constant('ExpireHold' as const),
      data: fc.record({ userId: fc.constant(u), holdId: fc.constantFrom(...holdIds) }),
    }),
    fc.record({
      type: fc.constant('RefundCredits' as const),
      data: fc.record({
        userId: fc.constant(u),
        refundId: fc.constantFrom('r0', 'r1', 'r2'),
        chargeId: fc.constantFrom('h0', 'h1', 'c0', 'c1', 'h0:excess'),
        amount,
        reason: fc.constant('refund'),
      }),
    }),
    fc.record({
      type: fc.constant('AdjustCredits' as const),
      data: fc.record({
        userId: fc.constant(u),
        adjustmentId: fc.constantFrom('a0', 'a1'),
        amount: fc.integer({ min: -300, max: 300 }).filter((n) => n !== 0),
        reason: fc.constant('fix'),
        corrects: fc.constant(null),
      }),
    }),
  ),
});

/** Applies commands as the handler would: decide, and fold what was decided; domain refusals change nothing. */
function run(commands: { cmd: Omit<LedgerCommand, 'metadata'>; minute: number }[]) {
  let state = ledgerDecider.initialState();
  const log: LedgerEvent[] = [];
  const states: Ledger[] = [];
  for (const { cmd, minute } of commands) {
    let events: LedgerEvent[] = [];
    try {
      events = ledgerDecider.decide(
        { ...cmd, metadata: { now: new Date(t0 + minute * 60_000) } } as LedgerCommand,
        state,
      );
    } catch (err) {
      if (!(err instanceof DomainError)) throw err;
    }
    for (const e of events) {
      LedgerEventSchemas[e.type].parse(e.data); // every decided event satisfies the contract
      state = ledgerDecider.evolve(state, e);
      log.push(e);
    }
    states.push({ ...state });
  }
  return { state, log, states };
}

/** Conservation computed from the events alone, independently of the decider's state. */
function totals(log: LedgerEvent[]) {
  const sum = (type: LedgerEvent['type']) =>
    log.filter((e) => e.type === type).reduce((n, e) => n + e.data.amount, 0);
  return {
    posted:
      sum('CreditsGranted') +
      sum('CodeRedeemed') -
      sum('CreditsCaptured') -
      sum('CreditsCharged') +
      sum('CreditsRefunded') +
      sum('CreditsAdjusted'),
    held: sum('CreditsReserved') - sum('CreditsCaptured') - sum('CreditsReleased') - sum('HoldExpired'),
  };
}

describe('ledger invariants under random command sequences', () => {
  it('conserves credits, never overdraws, and resolves each hold once, at most at its amount', () => {
    fc.assert(
      fc.property(fc.array(command, { maxLength: 60 }), (commands) => {
        const { state, log } = run(commands);
        const t = totals(log);
        expect(state.posted).toBe(t.posted);
        expect(state.held).toBe(t.held);
        expect(available(state)).toBeGreaterThanOrEqual(0);
        // Prefix by prefix: available never dipped below zero.
        let partial: LedgerEvent[] = [];
        for (const e of log) {
          partial = [...partial, e];
          const p = totals(partial);
          expect(p.posted - p.held).toBeGreaterThanOrEqual(0);
        }
        for (const holdId of holdIds) {
          const reservedEvents = log.filter((e) => e.type === 'CreditsReserved' && e.data.holdId === holdId);
          expect(reservedEvents.length).toBeLessThanOrEqual(1);
          const resolutions = log.filter(
            (e) =>
              (e.type === 'CreditsCaptured' || e.type === 'HoldExpired' || e.type === 'CreditsReleased') &&
              e.data.holdId === holdId,
          );
          const reservedAmount = reservedEvents.reduce((n, e) => n + e.data.amount, 0);
          expect(resolutions.reduce((n, e) => n + e.data.amount, 0)).toBeLessThanOrEqual(reservedAmount);
          // One resolution: a capture with its release, or a release, or an expiry — decided together once.
          expect(resolutions.filter((e) => e.type === 'HoldExpired').length).toBeLessThanOrEqual(1);
          expect(resolutions.filter((e) => e.type === 'CreditsCaptured').length).toBeLessThanOrEqual(1);
          if (resolutions.some((e) => e.type === 'HoldExpired')) expect(resolutions).toHaveLength(1);
        }
      }),
      { numRuns: 500 },
    );
  });

  it('replays deterministically: folding the same events twice gives the same state', () => {
    fc.assert(
      fc.property(fc.array(command, { maxLength: 40 }), (commands) => {
        const { state, log } = run(commands);
        const replayed = log.reduce((s, e) => ledgerDecider.evolve(s, e), ledgerDecider.initialState());
        expect(replayed).toEqual(state);
      }),
      { numRuns: 200 },
    );
  });
});
