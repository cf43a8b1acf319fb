import * as folds from './folds';
import type { LedgerFold } from './folds';
import * as records from './records';
import type { LedgerFields, LedgerRecord } from './records';

// Module-local bindings: verify runs once per event, and an imported binding is a getter call
// each time in the CommonJS that tsx compiles modules to (a switch over imported constants, one per case).
const { validAmount } = folds;
const {
  ADJUSTED,
  CAPTURED,
  CHARGED,
  EXPIRED,
  GRANTED,
  MOVEMENT_TYPES,
  REDEEMED,
  REFUNDED,
  RELEASED,
  RESERVED,
  accountOf,
  amountOf,
  heldChange,
  movementIndex,
  TIME_FIELDS,
  postedChange,
  refOf,
  timeOf,
} = records;

/** The rule an event breaks. */
export type BreachRule =
  /** Not a ledger event, or a field missing or out of range, or in another user's stream. */
  | 'malformed'
  /** A grant, redemption, refund, adjustment, hold or charge id used a second time in the account. */
  | 'duplicate_id'
  /** The event left available credits (posted − held) below zero. */
  | 'overdraft'
  /** A capture, release or expiry of a hold the account had not reserved before it. */
  | 'hold_unknown'
  /** A hold resolved (captured, released or expired) after it was already resolved. */
  | 'hold_resolved_twice'
  | 'capture_over_hold'
  /** A release or expiry of other than the hold's amount (or of a partial capture's rest). */
  | 'hold_amount_mismatch'
  /** A partial capture whose rest was not released by the account's next event. */
  | 'capture_rest_unreleased'
  | 'refund_unknown_charge'
  | 'refund_over_charge'
  /** The balances no longer add up to the movements (see VerifyFold). */
  | 'conservation'
  /**
   * An account's credits, or the sum of all accounts', went past 2^53 − 1: beyond it they are not
   * counted exactly, here or anywhere, and the other rules cannot be trusted with them.
   */
  | 'over_limit';

export interface Breach {
  /** Global position (int64 as a string). */
  position: string;
  event_id: string;
  stream: string;
  type: string;
  rule: BreachRule;
  message: string;
}

export interface Verification {
  /** Ledger events checked. */
  events: number;
  accounts: number;
  /** Movement totals over the whole log, and the sums of every account's balances. */
  totals: Record<(typeof MOVEMENT_TYPES)[number], number> & {
    posted: number;
    held: number;
    open_holds: number;
  };
  breach_count: number;
  /** The first breaches found, in log order (at most the fold's limit). */
  breaches: Breach[];
  truncated: boolean;
  ok: boolean;
}

const OPEN = 0;
const REST_PENDING = 1;
const RESOLVED = 2;

interface Hold {
  amount: number;
  state: typeof OPEN | typeof REST_PENDING | typeof RESOLVED;
  /** What a partial capture left to release. */
  rest: number;
}

interface Account {
  /** The user the stream belongs to. */
  userId: string;
  posted: number;
  /** Open holds as the events' amounts count them (the balances projection's `held`). */
  held: number;
  holds: Map<string, Hold>;
  /** Captures (by hold id) and charges, with what has been refunded of each. */
  charges: Map<string, { amount: number; refunded: number }>;
  /** Grant, redemption, refund and adjustment ids. */
  seen: Set<string>;
  /** A partial capture whose rest the account's next event must release. */
  pending: { holdId: string; event: LedgerRecord } | null;
}

/**
 * The ledger's invariants over the whole log, checked after every event:
 * - conservation: the holds' own state (open holds' amounts plus rests awaiting release) =
 *   reserved − captured − released − expired. It is computed from each hold's lifecycle,
 *   independently of the event amounts, so a resolution of the wrong amount, of an unknown hold or
 *   twice shows as a difference. (Σ posted = granted + redeemed − captured − charged + refunded +
 *   adjusted holds by construction; past the range counted exactly, `over_limit` says so);
 * - available ≥ 0 for every account after every event;
 * - each hold resolves once, only after it was reserved, a capture takes at most the hold and a
 *   partial capture's rest is released with it (the decider emits both together);
 * - refunds stay within their charge; no movement id is used twice in an account.
 */
export class VerifyFold implements LedgerFold<Verification> {
  private readonly accounts = new Map<string, Account>();
  private readonly totals = new Array<number>(MOVEMENT_TYPES.length).fill(0);
  private sumPosted = 0;
  private sumHeld = 0;
  /** Σ amount of open holds, by each hold's lifecycle. */
  private openHolds = 0;
  /** Σ rests of partial captures not yet released. */
  private pendingRests = 0;
  private reportedHoldsGap = 0;
  private events = 0;
  private breachCount = 0;
  private readonly breaches: Breach[] = [];
  private lastStream = '';
  private last: Account | undefined;

  constructor(private readonly maxBreaches = 10_000) {}

  apply(e: LedgerRecord): void {
    this.events++;
    const account = this.accountFor(e.streamName);
    const kind = movementIndex(e.type);
    if (kind < 0) return this.breach(e, 'malformed', `${e.type} is not a ledger event`);
    const d = e.data as LedgerFields | null;
    if (d === null || typeof d !== 'object') return this.breach(e, 'malformed', 'the event has no data');
    const userId = account.userId;
    if (d.userId !== userId) {
      this.breach(e, 'malformed', `the event names user ${String(d.userId)} in the account of ${userId}`);
    }
    const amount = amountOf(e);
    if (!validAmount(kind, amount)) {
      return this.breach(e, 'malformed', `amount ${String(d.amount)} is not a valid whole number of credits`);
    }
    const ref = refOf(kind, d);
    if (ref === null) return this.breach(e, 'malformed', `the ${MOVEMENT_TYPES[kind]} movement has no id`);
    if (Number.isNaN(timeOf(kind, d))) {
      this.breach(e, 'malformed', `${TIME_FIELDS[kind]} is not a time`);
    }

    if (account.pending && !(kind === RELEASED && account.pending.holdId === ref)) {
      const { holdId, event } = account.pending;
      account.pending = null;
      this.breach(
        event,
        'capture_rest_unreleased',
        `hold ${holdId} was partly captured and its rest not released with it`,
      );
    }

    const availableBefore = account.posted - account.held;
    switch (kind) {
      case GRANTED:
      case REDEEMED:
      case ADJUSTED:
        this.once(e, account.seen, ref);
        break;
      case RESERVED:
        if (account.holds.has(ref)) this.breach(e, 'duplicate_id', `hold ${ref} was reserved before`);
        else {
          account.holds.set(ref, { amount, state: OPEN, rest: 0 });
          this.openHolds += amount;
        }
        break;
      case CAPTURED:
        this.capture(e, account, ref, amount);
        break;
      case RELEASED:
      case EXPIRED:
        this.release(e, account, kind, ref, amount);
        break;
      case CHARGED:
        if (account.charges.has(ref)) this.breach(e, 'duplicate_id', `charge ${ref} was made before`);
        else account.charges.set(ref, { amount, refunded: 0 });
        break;
      case REFUNDED:
        this.once(e, account.seen, ref);
        this.refund(e, account, d, amount);
        break;
    }

    const posted = postedChange(kind, amount);
    const held = heldChange(kind, amount);
    const exactBefore = allExact(account.posted, account.held, this.sumPosted, this.sumHeld);
    account.posted += posted;
    account.held += held;
    this.sumPosted += posted;
    this.sumHeld += held;
    this.totals[kind]! += amount;
    if (exactBefore && !allExact(account.posted, account.held, this.sumPosted, this.sumHeld)) {
      this.breach(
        e,
        'over_limit',
        `credits went past ${Number.MAX_SAFE_INTEGER}, beyond which they are not counted exactly`,
      );
    }
    const available = account.posted - account.held;
    if (available < 0 && available < availableBefore) {
      this.breach(e, 'overdraft', `available credits of ${userId} fell to ${available}`);
    }
    this.checkConservation(e);
  }

  result(): Verification {
    const unreleased: Breach[] = [];
    for (const account of this.accounts.values()) {
      if (!account.pending) continue;
      const { holdId, event } = account.pending;
      unreleased.push(
        this.breachOf(
          event,
          'capture_rest_unreleased',
          `hold ${holdId} was partly captured and its rest never released`,
        ),
      );
    }
    unreleased.sort((a, b) => (BigInt(a.position) < BigInt(b.position) ? -1 : 1));
    for (const b of unreleased) this.record(b);
    const t = this.totals;
    return {
      events: this.events,
      accounts: this.accounts.size,
      totals: {
        granted: t[GRANTED]!,
        redeemed: t[REDEEMED]!,
        reserved: t[RESERVED]!,
        captured: t[CAPTURED]!,
        released: t[RELEASED]!,
        expired: t[EXPIRED]!,
        charged: t[CHARGED]!,
        refunded: t[REFUNDED]!,
        adjusted: t[ADJUSTED]!,
        posted: this.sumPosted,
        held: this.sumHeld,
        open_holds: this.openHolds + this.pendingRests,
      },
      breach_count: this.breachCount,
      breaches: this.breaches,
      truncated: this.breachCount > this.breaches.length,
      ok: this.breachCount === 0,
    };
  }

  private accountFor(streamName: string): Account {
    // Events of one append come together: skip the map lookup while the stream stays the same.
    if (streamName === this.lastStream && this.last) return this.last;
    let account = this.accounts.get(streamName);
    if (!account) {
      account = {
        userId: accountOf(streamName),
        posted: 0,
        held: 0,
        holds: new Map(),
        charges: new Map(),
        seen: new Set(),
        pending: null,
      };
      this.accounts.set(streamName, account);
    }
    this.lastStream = streamName;
    this.last = account;
    return account;
  }

  private once(e: LedgerRecord, seen: Set<string>, id: string): void {
    if (seen.has(id)) this.breach(e, 'duplicate_id', `movement id ${id} was used before`);
    else seen.add(id);
  }

  private capture(e: LedgerRecord, account: Account, holdId: string, amount: number): void {
    if (account.charges.has(holdId)) this.breach(e, 'duplicate_id', `charge ${holdId} was made before`);
    else account.charges.set(holdId, { amount, refunded: 0 });
    const hold = account.holds.get(holdId);
    if (!hold)
      return this.breach(e, 'hold_unknown', `hold ${holdId} is captured but was never reserved before`);
    if (hold.state !== OPEN)
      return this.breach(e, 'hold_resolved_twice', `hold ${holdId} was already resolved`);
    this.openHolds -= hold.amount;
    if (amount > hold.amount) {
      hold.state = RESOLVED;
      return this.breach(
        e,
        'capture_over_hold',
        `capture of ${amount} exceeds hold ${holdId} of ${hold.amount}`,
      );
    }
    if (amount === hold.amount) {
      hold.state = RESOLVED;
      return;
    }
    hold.state = REST_PENDING;
    hold.rest = hold.amount - amount;
    this.pendingRests += hold.rest;
    account.pending = { holdId, event: e };
  }

  private release(e: LedgerRecord, account: Account, kind: number, holdId: string, amount: number): void {
    const what = kind === RELEASED ? 'released' : 'expired';
    const hold = account.holds.get(holdId);
    if (!hold)
      return this.breach(e, 'hold_unknown', `hold ${holdId} is ${what} but was never reserved before`);
    if (hold.state === REST_PENDING && kind === RELEASED) {
      if (account.pending?.holdId === holdId) account.pending = null;
      hold.state = RESOLVED;
      this.pendingRests -= hold.rest;
      if (amount !== hold.rest) {
        this.breach(
          e,
          'hold_amount_mismatch',
          `release of ${amount} is not the rest ${hold.rest} of hold ${holdId}`,
        );
      }
      return;
    }
    if (hold.state !== OPEN)
      return this.breach(e, 'hold_resolved_twice', `hold ${holdId} was already resolved`);
    hold.state = RESOLVED;
    this.openHolds -= hold.amount;
    if (amount !== hold.amount) {
      this.breach(e, 'hold_amount_mismatch', `${what} ${amount} of hold ${holdId} of ${hold.amount}`);
    }
  }

  private refund(e: LedgerRecord, account: Account, d: LedgerFields, amount: number): void {
    const chargeId = d.chargeId;
    if (typeof chargeId !== 'string') return this.breach(e, 'malformed', 'the refund names no charge');
    const charge = account.charges.get(chargeId);
    if (!charge) return this.breach(e, 'refund_unknown_charge', `charge ${chargeId} was never made before`);
    charge.refunded += amount;
    if (charge.refunded > charge.amount) {
      this.breach(
        e,
        'refund_over_charge',
        `refunds of charge ${chargeId} reach ${charge.refunded}, more than its ${charge.amount}`,
      );
    }
  }

  /**
   * Open holds as their lifecycles left them against the held sum of every account (reserved −
   * captured − released − expired), which the movements move by the same amounts: a gap is a hold
   * resolved twice, or by other than its amount. The posted side needs no such check: each account's
   * balance and their sum move by the same amount per movement. Compared by these sums, not by the
   * movement totals over the whole log, which may pass the range counted exactly while every
   * balance stays within it. Reports a gap when it appears or changes, not again at every later event.
   */
  private checkConservation(e: LedgerRecord): void {
    const holdsGap = this.openHolds + this.pendingRests - this.sumHeld;
    if (holdsGap !== this.reportedHoldsGap) {
      this.reportedHoldsGap = holdsGap;
      if (holdsGap !== 0) {
        this.breach(
          e,
          'conservation',
          `open holds (${this.openHolds + this.pendingRests}) differ by ${holdsGap} from reserved − captured − released − expired`,
        );
      }
    }
  }

  private breachOf(e: LedgerRecord, rule: BreachRule, message: string): Breach {
    return {
      position: String(e.position),
      event_id: e.id,
      stream: e.streamName,
      type: e.type,
      rule,
      message,
    };
  }

  private breach(e: LedgerRecord, rule: BreachRule, message: string): void {
    this.record(this.breachOf(e, rule, message));
  }

  private record(b: Breach): void {
    this.breachCount++;
    if (this.breaches.length < this.maxBreaches) this.breaches.push(b);
  }
}

/** Whether each of an event's four sums is still counted exactly (no array per event: verify folds millions). */
function allExact(a: number, b: number, c: number, d: number): boolean {
  return (
    Number.isSafeInteger(a) && Number.isSafeInteger(b) && Number.isSafeInteger(c) && Number.isSafeInteger(d)
  );
}
