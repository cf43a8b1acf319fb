import fc from 'fast-check';
import { ledgerDecider, type Ledger, type LedgerCommand } from '../../src/commands/ledger/decider';
import type { LedgerEvent } from '../../src/events/ledger';
import { DomainError } from '../../src/platform/errors';
import { BalanceFold, StatementFold, SummaryFold, type LedgerFold } from '../../src/reports/folds';
import { reportJson } from '../../src/reports/format';
import type { LedgerRecord } from '../../src/reports/records';
import { VerifyFold } from '../../src/reports/verify';

const t0 = Date.parse('2026-03-01T00:00:00.000Z');
const users = ['u0', 'u1'];
const holdIds = ['h0', 'h1', 'h2', 'h3'];
const amount = fc.integer({ min: 1, max: 500 });

type Body = Omit<LedgerCommand, 'metadata' | 'data'> & { data: Record<string, unknown> };

/** Commands without their user: random ids from small sets, so retries, resolutions and refunds collide. */
const body: fc.Arbitrary<Body> = fc.oneof(
  fc.record({
    type: fc.constant('GrantCredits' as const),
    data: fc.record({ grantId: fc.constantFrom('g0', 'g1', 'g2'), amount, reason: fc.constant('grant') }),
  }),
  fc.record({
    type: fc.constant('RedeemCode' as const),
    data: fc.record({ useId: fc.constantFrom('x0', 'x1'), code: fc.constant('CODE'), amount }),
  }),
  fc.record({
    type: fc.constant('ReserveCredits' as const),
    data: fc.record({
      holdId: fc.constantFrom(...holdIds),
      amount,
      expiresInMinutes: fc.integer({ min: 0, max: 60 }),
      reason: fc.constant('task'),
    }),
  }),
  fc.record({
    type: fc.constant('CaptureCredits' as const),
    data: fc.record({
      holdId: fc.constantFrom(...holdIds),
      cost: fc.integer({ min: 0, max: 700 }),
      excess: fc.constantFrom('forgive', 'charge_available'),
    }),
  }),
  fc.record({
    type: fc.constant('ChargeCredits' as const),
    data: fc.record({
      chargeId: fc.constantFrom('c0', 'c1'),
      amount,
      reason: fc.constant('call'),
      allowDirect: fc.constant(true),
    }),
  }),
  fc.record({
    type: fc.constant('ReleaseCredits' as const),
    data: fc.record({ holdId: fc.constantFrom(...holdIds) }),
  }),
  fc.record({
    type: fc.constant('ExpireHold' as const),
    data: fc.record({ holdId: fc.constantFrom(...holdIds) }),
  }),
  fc.record({
    type: fc.constant('RefundCredits' as const),
    data: fc.record({
      refundId: fc.constantFrom('r0', 'r1', 'r2'),
      chargeId: fc.constantFrom('h0', 'h1', 'c0', 'c1', 'h0:excess'),
      amount,
      reason: fc.constant('refund'),
    }),
  }),
  fc.record({
    type: fc.constant('AdjustCredits' as const),
    data: fc.record({
      adjustmentId: fc.constantFrom('a0', 'a1'),
      amount: fc.integer({ min: -300, max: 300 }).filter((n) => n !== 0),
      reason: fc.constant('fix'),
      corrects: fc.constant(null),
    }),
  }),
);

const step = fc.record({
  user: fc.constantFrom(...users),
  minutes: fc.integer({ min: 0, max: 30 }),
  body,
});

interface History {
  log: LedgerRecord[];
  /** Each command's time, in order. */
  times: number[];
  /** Each user's decided events with their times, to fold with the decider. */
  byUser: Map<string, { at: number; event: LedgerEvent }[]>;
}

/** Runs the commands through the real decider, user by user, appending what it decides to one log. */
function run(steps: { user: string; minutes: number; body: Body }[]): History {
  const states = new Map<string, Ledger>(users.map((u) => [u, ledgerDecider.initialState()]));
  const byUser = new Map<string, { at: number; event: LedgerEvent }[]>(users.map((u) => [u, []]));
  const log: LedgerRecord[] = [];
  const times: number[] = [];
  let now = t0;
  let position = 0n;
  for (const { user, minutes, body: b } of steps) {
    now += minutes * 60_000;
    times.push(now);
    const data: Record<string, unknown> = { ...b.data, userId: user };
    if (b.type === 'ReserveCredits') {
      data.expiresAt = new Date(now + (data.expiresInMinutes as number) * 60_000).toISOString();
      delete data.expiresInMinutes;
    }
    const cmd = { type: b.type, data, metadata: { now: new Date(now) } } as LedgerCommand;
    let state = states.get(user)!;
    let events: LedgerEvent[] = [];
    try {
      events = ledgerDecider.decide(cmd, state);
    } catch (err) {
      if (!(err instanceof DomainError)) throw err;
    }
    for (const event of events) {
      state = ledgerDecider.evolve(state, event);
      position += 1n;
      log.push({
        id: `e${position}`,
        type: event.type,
        data: event.data,
        streamName: `ledger-${user}`,
        position,
      });
      byUser.get(user)!.push({ at: now, event });
    }
    states.set(user, state);
  }
  return { log, times, byUser };
}

function fold<R>(f: LedgerFold<R>, events: readonly LedgerRecord[]): R {
  for (const e of events) f.apply(e);
  return f.result();
}

const stream = (log: LedgerRecord[], user: string) => log.filter((e) => e.streamName === `ledger-${user}`);

/** The decider's own state after every event of `user` that occurred at or before `at`. */
function deciderAt(h: History, user: string, at: number): Ledger {
  return h.byUser
    .get(user)!
    .filter((x) => x.at <= at)
    .reduce((s, x) => ledgerDecider.evolve(s, x.event), ledgerDecider.initialState());
}

const histories = fc.array(step, { minLength: 1, maxLength: 120, size: 'large' });

describe('finance reports over logs the ledger decider wrote', () => {
  it('verify finds no breach in any of them', () => {
    fc.assert(
      fc.property(histories, (steps) => {
        const { log } = run(steps);
        const v = fold(new VerifyFold(), log);
        expect(v.breaches).toEqual([]);
        expect(v.totals.held).toBe(v.totals.open_holds);
      }),
      { numRuns: 400 },
    );
  });

  it('balanceAt(T) is the decider’s state after the events up to T', () => {
    fc.assert(
      fc.property(histories, fc.nat(), fc.constantFrom(...users), (steps, pick, user) => {
        const h = run(steps);
        const at = h.times[pick % h.times.length]!;
        const state = deciderAt(h, user, at);
        const b = fold(new BalanceFold(user, new Date(at)), stream(h.log, user));
        expect([b.posted, b.held, b.available]).toEqual([
          state.posted,
          state.held,
          state.posted - state.held,
        ]);
      }),
      { numRuns: 300 },
    );
  });

  it('a statement’s opening plus its movements is its closing, and both are balances at the period’s edges', () => {
    fc.assert(
      fc.property(histories, fc.nat(), fc.nat(), fc.constantFrom(...users), (steps, a, b, user) => {
        const h = run(steps);
        const from = h.times[a % h.times.length]!;
        const to = Math.max(h.times[b % h.times.length]!, from) + 1;
        const s = fold(new StatementFold(user, new Date(from), new Date(to)), stream(h.log, user));
        const sum = (k: 'posted_change' | 'held_change') => s.movements.reduce((n, m) => n + m[k], 0);
        expect(s.opening.posted + sum('posted_change')).toBe(s.closing.posted);
        expect(s.opening.held + sum('held_change')).toBe(s.closing.held);
        const last = s.movements[s.movements.length - 1];
        if (last) expect([last.posted_after, last.held_after]).toEqual([s.closing.posted, s.closing.held]);
        const opening = deciderAt(h, user, from - 1);
        const closing = deciderAt(h, user, to - 1);
        expect([s.opening.posted, s.opening.held]).toEqual([opening.posted, opening.held]);
        expect([s.closing.posted, s.closing.held]).toEqual([closing.posted, closing.held]);
        for (const m of s.movements) expect(m.available_after).toBeGreaterThanOrEqual(0);
      }),
      { numRuns: 300 },
    );
  });

  it('the summary’s trial balance balances and closes at the sum of every account', () => {
    fc.assert(
      fc.property(histories, fc.nat(), (steps, a) => {
        const h = run(steps);
        const from = h.times[a % h.times.length]!;
        const to = h.times[h.times.length - 1]! + 1;
        const s = fold(new SummaryFold(new Date(from), new Date(to)), h.log);
        expect(s.trial_balance.balanced).toBe(true);
        expect(s.trial_balance.total_debit).toBe(s.trial_balance.total_credit);
        const finals = users.map((u) => deciderAt(h, u, to));
        expect(s.balances.closing.posted).toBe(finals.reduce((n, x) => n + x.posted, 0));
        expect(s.balances.closing.held).toBe(finals.reduce((n, x) => n + x.held, 0));
      }),
      { numRuns: 300 },
    );
  });

  it('gives byte-identical output on a second run', () => {
    fc.assert(
      fc.property(histories, (steps) => {
        const { log } = run(steps);
        const reports = () =>
          [
            fold(new VerifyFold(), log),
            fold(new SummaryFold(new Date(t0), new Date(t0 + 86_400_000)), log),
            ...users.map((u) =>
              fold(new StatementFold(u, new Date(t0), new Date(t0 + 86_400_000)), stream(log, u)),
            ),
          ].map(reportJson);
        expect(reports()).toEqual(reports());
      }),
      { numRuns: 100 },
    );
  });
});
