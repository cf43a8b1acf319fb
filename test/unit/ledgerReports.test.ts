import { BalanceFold, StatementFold, SummaryFold, type LedgerFold } from '../../src/reports/folds';
import { reportJson, statementCsv, summaryCsv } from '../../src/reports/format';
import { StatementQuery } from '../../src/reports/params';
import { TIME_FIELDS, movementIndex, type LedgerRecord } from '../../src/reports/records';
import { VerifyFold, type BreachRule } from '../../src/reports/verify';

let position = 0n;
const day = (d: number, h = 0) => new Date(Date.UTC(2026, 2, d, h)).toISOString();

/**
 * A stored ledger event as the store returns it (only what the reports read), at the time `at`
 * (its type's time field: grantedAt, capturedAt…).
 */
function ev(type: string, data: Record<string, unknown>, at: string, stream?: string): LedgerRecord {
  position += 1n;
  const timeField = TIME_FIELDS[movementIndex(type)];
  return {
    id: `e${position}`,
    type,
    data: timeField ? { ...data, [timeField]: at } : data,
    streamName: stream ?? `ledger-${String(data.userId)}`,
    position,
  };
}

const grant = (userId: string, grantId: string, amount: number, at: string) =>
  ev('CreditsGranted', { userId, grantId, amount, reason: 'welcome', grantedAt: at }, at);
const reserve = (userId: string, holdId: string, amount: number, at: string) =>
  ev('CreditsReserved', { userId, holdId, amount, reason: 'task', expiresAt: at, reservedAt: at }, at);
const capture = (userId: string, holdId: string, amount: number, at: string) =>
  ev('CreditsCaptured', { userId, holdId, amount, capturedAt: at }, at);
const release = (userId: string, holdId: string, amount: number, at: string) =>
  ev('CreditsReleased', { userId, holdId, amount, releasedAt: at }, at);
const expire = (userId: string, holdId: string, amount: number, at: string) =>
  ev('HoldExpired', { userId, holdId, amount, expiredAt: at }, at);
const charge = (userId: string, chargeId: string, amount: number, at: string, holdId: string | null = null) =>
  ev('CreditsCharged', { userId, chargeId, amount, reason: 'call', holdId, chargedAt: at }, at);
const refund = (userId: string, refundId: string, chargeId: string, amount: number, at: string) =>
  ev('CreditsRefunded', { userId, refundId, chargeId, amount, reason: 'sorry', refundedAt: at }, at);
const adjust = (userId: string, adjustmentId: string, amount: number, at: string) =>
  ev('CreditsAdjusted', { userId, adjustmentId, amount, reason: 'fix', corrects: null, adjustedAt: at }, at);
const redeem = (userId: string, useId: string, amount: number, at: string) =>
  ev('CodeRedeemed', { userId, useId, code: 'CODE', amount, redeemedAt: at }, at);

function fold<R>(f: LedgerFold<R>, events: readonly LedgerRecord[]): R {
  for (const e of events) f.apply(e);
  return f.result();
}

/** An honest history of two accounts, as the decider writes it. */
function honestLog(): LedgerRecord[] {
  return [
    grant('alice', 'g1', 1000, day(1)),
    redeem('bob', 'u1', 300, day(1, 1)),
    reserve('alice', 'h1', 200, day(2)),
    capture('alice', 'h1', 150, day(3)),
    release('alice', 'h1', 50, day(3)),
    reserve('alice', 'h2', 100, day(4)),
    capture('alice', 'h2', 100, day(5)),
    charge('alice', 'h2:excess', 30, day(5), 'h2'),
    refund('alice', 'r1', 'h1', 20, day(6)),
    reserve('bob', 'h3', 80, day(6)),
    expire('bob', 'h3', 80, day(7)),
    charge('bob', 'c1', 40, day(8)),
    adjust('alice', 'a1', -10, day(9)),
    adjust('bob', 'a2', 5, day(10)),
    reserve('alice', 'h4', 60, day(11)),
  ];
}

describe('statement', () => {
  it('opens with the balance before the period, runs each movement and closes at opening + movements', () => {
    const s = fold(
      new StatementFold('alice', new Date(day(3)), new Date(day(9))),
      honestLog().filter((e) => e.streamName === 'ledger-alice'),
    );
    expect(s.opening).toEqual({ posted: 1000, held: 200, available: 800 });
    expect(s.movements.map((m) => [m.type, m.posted_after, m.held_after, m.available_after])).toEqual([
      ['captured', 850, 50, 800],
      ['released', 850, 0, 850],
      ['reserved', 850, 100, 750],
      ['captured', 750, 0, 750],
      ['charged', 720, 0, 720],
      ['refunded', 740, 0, 740],
    ]);
    expect(s.movements[4]).toMatchObject({ ref: 'h2:excess', refers_to: 'h2', reason: 'call', amount: 30 });
    expect(s.movements[5]).toMatchObject({ ref: 'r1', refers_to: 'h1', posted_change: 20, held_change: 0 });
    expect(s.closing).toEqual({ posted: 740, held: 0, available: 740 });
    expect(s.totals).toEqual({ movements: 6, posted_change: -260, held_change: -200 });
    expect(s.opening.posted + s.totals.posted_change).toBe(s.closing.posted);
  });

  it('renders CSV with an opening and a closing line, quoting and defusing text a spreadsheet would run', () => {
    const events = [
      grant('carol', 'g9', 100, day(1)),
      ev(
        'CreditsCharged',
        {
          userId: 'carol',
          chargeId: 'c9',
          amount: 7,
          reason: '=HYPERLINK("x"), sure',
          holdId: null,
          chargedAt: day(2),
        },
        day(2),
      ),
    ];
    const s = fold(new StatementFold('carol', new Date(day(1)), new Date(day(3))), events);
    const lines = statementCsv(s).split('\r\n');
    expect(lines[0]).toBe(
      'position,event_id,occurred_at,type,amount,posted_change,held_change,posted_after,held_after,available_after,ref,refers_to,reason',
    );
    expect(lines[1]).toBe(`,,${day(1)},opening,,,,0,0,0,,,`);
    expect(lines[3]).toContain(`charged,7,-7,0,93,0,93,c9,,"'=HYPERLINK(""x""), sure"`);
    expect(lines[4]).toBe(`,,${day(3)},closing,,,,93,0,93,,,`);
    expect(lines[5]).toBe('');
  });
});

describe('balance as of a time', () => {
  it('includes what occurred at that instant and nothing after', () => {
    const alice = honestLog().filter((e) => e.streamName === 'ledger-alice');
    expect(fold(new BalanceFold('alice', new Date(day(2))), alice)).toMatchObject({
      posted: 1000,
      held: 200,
      available: 800,
      events: 2,
    });
    expect(fold(new BalanceFold('alice', new Date(day(1))), alice)).toMatchObject({
      posted: 1000,
      held: 0,
      events: 1,
    });
    expect(fold(new BalanceFold('alice', new Date(day(0))), alice)).toMatchObject({
      posted: 0,
      events: 0,
      last_position: null,
    });
  });
});

describe('summary and trial balance', () => {
  it('totals each movement type of the period and balances debits against credits', () => {
    const s = fold(new SummaryFold(new Date(day(2)), new Date(day(9))), honestLog());
    const totals = Object.fromEntries(s.movements.map((m) => [m.type, [m.count, m.amount]]));
    expect(totals).toEqual({
      granted: [0, 0],
      redeemed: [0, 0],
      reserved: [3, 380],
      captured: [2, 250],
      released: [1, 50],
      expired: [1, 80],
      charged: [2, 70],
      refunded: [1, 20],
      adjusted: [0, 0],
    });
    expect(s.events).toBe(10);
    const tb = Object.fromEntries(s.trial_balance.accounts.map((a) => [a.account, a]));
    expect(tb.issued).toMatchObject({ opening_balance: -1300, debit: 0, credit: 0, closing_balance: -1300 });
    expect(tb.revenue).toMatchObject({ debit: 0, credit: 320, closing_balance: 320 });
    expect(tb.refunds).toMatchObject({ debit: 20, credit: 0, closing_balance: -20 });
    expect(tb.open_holds).toMatchObject({ opening_balance: 0, debit: 380, credit: 380, closing_balance: 0 });
    expect(s.trial_balance.total_debit).toBe(s.trial_balance.total_credit);
    expect(s.trial_balance.balanced).toBe(true);
    expect(s.balances.opening).toEqual({ posted: 1300, held: 0, available: 1300 });
    // 1300 issued, 320 consumed, 20 refunded.
    expect(s.balances.closing).toEqual({ posted: 1000, held: 0, available: 1000 });
  });

  it('books a negative adjustment against user balances and renders CSV', () => {
    const s = fold(new SummaryFold(new Date(day(9)), new Date(day(12))), honestLog());
    const adj = s.trial_balance.accounts.find((a) => a.account === 'adjustments')!;
    expect(adj).toMatchObject({ debit: 5, credit: 10, closing_balance: 5 });
    expect(s.movements.find((m) => m.type === 'adjusted')).toEqual({
      type: 'adjusted',
      count: 2,
      amount: -5,
    });
    expect(s.balances.closing).toEqual({ posted: 995, held: 60, available: 935 });
    const csv = summaryCsv(s).split('\r\n');
    expect(csv[0]).toBe('section,name,count,amount,opening_balance,debit,credit,closing_balance');
    expect(csv).toContain('movement,adjusted,2,-5,,,,');
    expect(csv).toContain('account,adjustments,,,0,5,10,5');
    expect(csv).toContain('total,balanced,3,,,75,75,');
  });
});

function breaches(events: LedgerRecord[]): [BreachRule, string][] {
  return fold(new VerifyFold(), events).breaches.map((b) => [b.rule, b.event_id]);
}

describe('verify', () => {
  it('finds nothing wrong in an honest log, and its totals add up', () => {
    const v = fold(new VerifyFold(), honestLog());
    expect(v.breaches).toEqual([]);
    expect(v.ok).toBe(true);
    expect(v.totals).toMatchObject({ posted: 995, held: 60, open_holds: 60, granted: 1000, adjusted: -5 });
    expect(v).toMatchObject({ events: 15, accounts: 2, breach_count: 0, truncated: false });
  });

  it('flags credits past 2^53 − 1 once, where they are no longer counted exactly', () => {
    const log = [
      grant('u', 'g1', Number.MAX_SAFE_INTEGER, day(1)),
      grant('u', 'g2', 2, day(2)),
      grant('u', 'g3', 2, day(3)),
    ];
    expect(breaches(log).filter(([rule]) => rule === 'over_limit')).toEqual([['over_limit', log[1]!.id]]);
    // Each account within it, but not their sum.
    const two = [grant('a', 'g1', Number.MAX_SAFE_INTEGER - 1, day(1)), grant('b', 'g1', 2, day(2))];
    expect(breaches(two).filter(([rule]) => rule === 'over_limit')).toEqual([['over_limit', two[1]!.id]]);
  });

  it('flags an overdraft', () => {
    const log = [grant('u', 'g', 100, day(1)), reserve('u', 'h', 80, day(2)), charge('u', 'c', 50, day(3))];
    expect(breaches(log)).toEqual([['overdraft', log[2]!.id]]);
  });

  it('flags a hold resolved twice, and the conservation break it causes', () => {
    const log = [
      grant('u', 'g', 100, day(1)),
      reserve('u', 'h', 40, day(2)),
      expire('u', 'h', 40, day(3)),
      release('u', 'h', 40, day(4)),
    ];
    expect(breaches(log)).toEqual([
      ['hold_resolved_twice', log[3]!.id],
      ['conservation', log[3]!.id],
    ]);
  });

  it('flags a capture over its hold', () => {
    const log = [grant('u', 'g', 100, day(1)), reserve('u', 'h', 40, day(2)), capture('u', 'h', 60, day(3))];
    expect(breaches(log)).toEqual([
      ['capture_over_hold', log[2]!.id],
      ['conservation', log[2]!.id],
    ]);
  });

  it('flags a conservation break when a release gives back other than the rest of its hold', () => {
    const log = [
      grant('u', 'g', 100, day(1)),
      reserve('u', 'h', 50, day(2)),
      capture('u', 'h', 20, day(3)),
      release('u', 'h', 20, day(3)),
      grant('u', 'g2', 5, day(4)),
    ];
    const v = fold(new VerifyFold(), log);
    expect(v.breaches.map((b) => [b.rule, b.event_id])).toEqual([
      ['hold_amount_mismatch', log[3]!.id],
      ['conservation', log[3]!.id],
    ]);
    // Reported where it appears, not again at every later event.
    expect(v.breaches[1]!.message).toMatch(/differ by -10/);
    expect(v.breaches[1]).toMatchObject({
      stream: 'ledger-u',
      type: 'CreditsReleased',
      position: String(log[3]!.position),
    });
    expect(v.ok).toBe(false);
  });

  it('flags resolutions before the reservation, duplicate ids, refunds beyond their charge, unknown charges', () => {
    const log = [
      grant('u', 'g', 100, day(1)),
      release('u', 'h', 10, day(1)),
      reserve('u', 'h', 10, day(2)),
      grant('u', 'g', 5, day(2)),
      charge('u', 'c', 30, day(3)),
      refund('u', 'r1', 'c', 20, day(4)),
      refund('u', 'r2', 'c', 20, day(4)),
      refund('u', 'r3', 'nope', 1, day(4)),
    ];
    expect(breaches(log)).toEqual([
      ['hold_unknown', log[1]!.id],
      ['conservation', log[1]!.id],
      ['duplicate_id', log[3]!.id],
      ['refund_over_charge', log[6]!.id],
      ['refund_unknown_charge', log[7]!.id],
    ]);
  });

  it('flags a partial capture whose rest is never released, and malformed events', () => {
    const log = [
      grant('u', 'g', 100, day(1)),
      reserve('u', 'h', 50, day(2)),
      capture('u', 'h', 20, day(3)),
      grant('u', 'g2', 1, day(4)),
      ev('CreditsGranted', { userId: 'u', grantId: 'g3', amount: 1.5 }, day(5)),
      ev('CreditsGranted', { userId: 'someone-else', grantId: 'g4', amount: 1 }, day(5), 'ledger-u'),
      ev('CreditsMinted', { userId: 'u' }, day(5)),
      ev('CreditsGranted', { userId: 'u', grantId: 'g5', amount: 1 }, 'yesterday'),
    ];
    expect(breaches(log)).toEqual([
      ['capture_rest_unreleased', log[2]!.id],
      ['malformed', log[4]!.id],
      ['malformed', log[5]!.id],
      ['malformed', log[6]!.id],
      ['malformed', log[7]!.id],
    ]);
  });

  it('keeps the first breaches and counts the rest', () => {
    const log = [
      grant('u', 'g', 1, day(1)),
      ...Array.from({ length: 5 }, (_, i) => charge('u', `c${i}`, 1, day(2))),
    ];
    const v = fold(new VerifyFold(2), log);
    expect(v).toMatchObject({ breach_count: 4, truncated: true });
    expect(v.breaches).toHaveLength(2);
  });

  it('gives byte-identical JSON for the same log', () => {
    const log = honestLog();
    expect(reportJson(fold(new VerifyFold(), log))).toBe(reportJson(fold(new VerifyFold(), log)));
    const summary = () => reportJson(fold(new SummaryFold(new Date(day(1)), new Date(day(20))), log));
    expect(summary()).toBe(summary());
  });
});

describe('report parameters', () => {
  it('takes dates and date-times with offsets, and refuses impossible dates and empty periods', () => {
    expect(
      StatementQuery.parse({ user_id: 'u', from: '2026-03-01', to: '2026-03-02T08:00:00+08:00' }),
    ).toEqual({
      user_id: 'u',
      from: new Date('2026-03-01T00:00:00Z'),
      to: new Date('2026-03-02T00:00:00Z'),
    });
    expect(StatementQuery.safeParse({ user_id: 'u', from: '2026-02-30', to: '2026-03-02' }).success).toBe(
      false,
    );
    expect(
      StatementQuery.safeParse({ user_id: 'u', from: '2026-03-01T10:00:00', to: '2026-03-02' }).success,
    ).toBe(false);
    expect(StatementQuery.safeParse({ user_id: 'u', from: '2026-03-02', to: '2026-03-01' }).success).toBe(
      false,
    );
    expect(StatementQuery.safeParse({ user_id: 'u', from: 'yesterday', to: '2026-03-01' }).success).toBe(
      false,
    );
  });
});
