import * as records from './records';
import type { LedgerFields, LedgerRecord, MovementType } from './records';

// Module-local bindings: the folds run once per event, and an imported binding is a getter call
// each time in the CommonJS that tsx compiles modules to.
const {
  ADJUSTED,
  MOVEMENT_TYPES,
  accountOf,
  amountOf,
  heldChange,
  movementIndex,
  postedChange,
  reasonOf,
  refOf,
  refersToOf,
  timeOf,
  timeText,
} = records;

/**
 * The report folds: pure, fed ledger events in log order (one stream's, or the global log's), no
 * I/O. Each report's output is built in a fixed key order with users sorted, so the same log always
 * gives byte-identical JSON. Events whose amount is not a valid whole number are left out here;
 * `verify` reports them.
 */
export interface LedgerFold<R> {
  apply(e: LedgerRecord): void;
  result(): R;
}

export interface Balance {
  posted: number;
  held: number;
  available: number;
}

const balance = (posted: number, held: number): Balance => ({ posted, held, available: posted - held });
/** A balance from exact sums: what is available, and what is held. */
const exactBalance = (available: bigint, held: bigint): Balance => ({
  posted: Number(available + held),
  held: Number(held),
  available: Number(available),
});

/** The movement's time; one without a valid time (verify reports it) counts as at the start of time. */
function momentOf(kind: number, e: LedgerRecord): number {
  const t = timeOf(kind, e.data);
  return Number.isNaN(t) ? -Infinity : t;
}

/** A valid movement amount: a safe whole number, positive (an adjustment: non-zero, signed). */
export function validAmount(kind: number, amount: number): boolean {
  return Number.isSafeInteger(amount) && (kind === ADJUSTED ? amount !== 0 : amount > 0);
}

// ——— statement ———

export interface StatementLine {
  /** Global position (int64 as a string). */
  position: string;
  event_id: string;
  occurred_at: string | null;
  type: MovementType;
  /** The event's amount (an adjustment's is signed). */
  amount: number;
  posted_change: number;
  held_change: number;
  posted_after: number;
  held_after: number;
  available_after: number;
  /** The movement's own id: grant, redemption, hold, charge, refund or adjustment. */
  ref: string | null;
  /** The code redeemed, the charge refunded, the hold an excess charge exceeds, the event corrected. */
  refers_to: string | null;
  reason: string | null;
}

export interface Statement {
  user_id: string;
  from: string;
  to: string;
  opening: Balance;
  movements: StatementLine[];
  totals: { movements: number; posted_change: number; held_change: number };
  closing: Balance;
}

type PendingLine = Omit<StatementLine, 'posted_after' | 'held_after' | 'available_after'>;

/**
 * One account's statement for [from, to): the balance from every movement before `from`, each
 * movement of the period in log order with the balance after it, and the closing balance. Running
 * balances are computed at the end from the final opening, so opening + movements = closing holds
 * even if an event's time is earlier than one logged before it.
 */
export class StatementFold implements LedgerFold<Statement> {
  private openingPosted = 0;
  private openingHeld = 0;
  private readonly lines: PendingLine[] = [];

  constructor(
    private readonly userId: string,
    private readonly from: Date,
    private readonly to: Date,
  ) {}

  apply(e: LedgerRecord): void {
    const kind = movementIndex(e.type);
    if (kind < 0) return;
    const amount = amountOf(e);
    if (!validAmount(kind, amount)) return;
    const t = momentOf(kind, e);
    if (t >= this.to.getTime()) return;
    const posted = postedChange(kind, amount);
    const held = heldChange(kind, amount);
    if (t < this.from.getTime()) {
      this.openingPosted += posted;
      this.openingHeld += held;
      return;
    }
    const d = (e.data ?? {}) as LedgerFields;
    this.lines.push({
      position: String(e.position),
      event_id: e.id,
      occurred_at: timeText(kind, e.data),
      type: MOVEMENT_TYPES[kind]!,
      amount,
      posted_change: posted,
      held_change: held,
      ref: refOf(kind, d),
      refers_to: refersToOf(kind, d),
      reason: reasonOf(d),
    });
  }

  result(): Statement {
    let posted = this.openingPosted;
    let held = this.openingHeld;
    const movements = this.lines.map((l): StatementLine => {
      posted += l.posted_change;
      held += l.held_change;
      return {
        position: l.position,
        event_id: l.event_id,
        occurred_at: l.occurred_at,
        type: l.type,
        amount: l.amount,
        posted_change: l.posted_change,
        held_change: l.held_change,
        posted_after: posted,
        held_after: held,
        available_after: posted - held,
        ref: l.ref,
        refers_to: l.refers_to,
        reason: l.reason,
      };
    });
    return {
      user_id: this.userId,
      from: this.from.toISOString(),
      to: this.to.toISOString(),
      opening: balance(this.openingPosted, this.openingHeld),
      movements,
      totals: {
        movements: movements.length,
        posted_change: posted - this.openingPosted,
        held_change: held - this.openingHeld,
      },
      closing: balance(posted, held),
    };
  }
}

// ——— balance as of a time ———

export interface BalanceAt extends Balance {
  user_id: string;
  at: string;
  /** Movements up to `at`. */
  events: number;
  /** Position of the last of them (int64 as a string), or null. */
  last_position: string | null;
}

/** One account's balance as of `at` (inclusive): every movement that occurred at or before it. */
export class BalanceFold implements LedgerFold<BalanceAt> {
  private posted = 0;
  private held = 0;
  private events = 0;
  private last: bigint | string | null = null;

  constructor(
    private readonly userId: string,
    private readonly at: Date,
  ) {}

  apply(e: LedgerRecord): void {
    const kind = movementIndex(e.type);
    if (kind < 0) return;
    const amount = amountOf(e);
    if (!validAmount(kind, amount) || momentOf(kind, e) > this.at.getTime()) return;
    this.posted += postedChange(kind, amount);
    this.held += heldChange(kind, amount);
    this.events++;
    this.last = e.position;
  }

  result(): BalanceAt {
    return {
      user_id: this.userId,
      at: this.at.toISOString(),
      ...balance(this.posted, this.held),
      events: this.events,
      last_position: this.last === null ? null : String(this.last),
    };
  }
}

// ——— summary and trial balance ———

/**
 * The trial balance's accounts. Each movement is one journal entry, a debit to one account and a
 * credit of the same amount to another, so debits equal credits by construction and every
 * account's balance (credits − debits) says where the credits are:
 * - `user_balances_available`: what users can spend (posted − held); owed to users.
 * - `open_holds`: credits reserved for running tasks; also owed to users until captured
 *   (user_balances_available + open_holds = the posted balances).
 * - `issued`: credits brought into existence by grants and code redemptions (debit balance).
 * - `revenue`: credits consumed, by captures and charges.
 * - `refunds`: credits given back against captures and charges (debit balance, against revenue).
 * - `adjustments`: admin corrections, both ways.
 */
export const ACCOUNTS = [
  'user_balances_available',
  'open_holds',
  'issued',
  'revenue',
  'refunds',
  'adjustments',
] as const;
export type AccountName = (typeof ACCOUNTS)[number];
const USER = 0;
const HOLDS = 1;
const ISSUED = 2;
const REVENUE = 3;
const REFUNDS = 4;
const ADJUSTMENTS = 5;

/** [debit account, credit account] of each movement type (a negative adjustment swaps them). */
const JOURNAL: readonly (readonly [number, number])[] = [
  [ISSUED, USER], // granted
  [ISSUED, USER], // redeemed
  [USER, HOLDS], // reserved
  [HOLDS, REVENUE], // captured
  [HOLDS, USER], // released
  [HOLDS, USER], // expired
  [USER, REVENUE], // charged
  [REFUNDS, USER], // refunded
  [ADJUSTMENTS, USER], // adjusted (positive)
];

export interface MovementTotal {
  type: MovementType;
  count: number;
  /** Sum of the amounts (adjustments: net, signed). */
  amount: number;
}

export interface TrialBalanceLine {
  account: AccountName;
  /** Credits − debits of every movement before `from`. */
  opening_balance: number;
  debit: number;
  credit: number;
  closing_balance: number;
}

export interface Summary {
  from: string;
  to: string;
  /** Movements in the period. */
  events: number;
  movements: MovementTotal[];
  /** All accounts together, before and after the period. */
  balances: { opening: Balance; closing: Balance };
  trial_balance: {
    accounts: TrialBalanceLine[];
    total_debit: number;
    total_credit: number;
    /** Debits equal credits, opening and closing balances each sum to zero. */
    balanced: boolean;
  };
}

/**
 * Period totals by movement type and the trial balance, over the whole log. Summed exactly (each
 * amount is within the safe range, their sums over a log need not be), and given as numbers: a
 * closing balance in range is then exact whatever the totals that led to it.
 */
export class SummaryFold implements LedgerFold<Summary> {
  private readonly counts = new Array<number>(MOVEMENT_TYPES.length).fill(0);
  private readonly amounts = new Array<bigint>(MOVEMENT_TYPES.length).fill(0n);
  private readonly opening = new Array<bigint>(ACCOUNTS.length).fill(0n);
  private readonly debit = new Array<bigint>(ACCOUNTS.length).fill(0n);
  private readonly credit = new Array<bigint>(ACCOUNTS.length).fill(0n);
  private events = 0;
  private readonly fromMs: number;
  private readonly toMs: number;

  constructor(
    private readonly from: Date,
    private readonly to: Date,
  ) {
    this.fromMs = from.getTime();
    this.toMs = to.getTime();
  }

  apply(e: LedgerRecord): void {
    const kind = movementIndex(e.type);
    if (kind < 0) return;
    const amount = amountOf(e);
    if (!validAmount(kind, amount)) return;
    const t = momentOf(kind, e);
    if (t >= this.toMs) return;
    const entry = JOURNAL[kind]!;
    let dr = entry[0];
    let cr = entry[1];
    let abs = BigInt(amount);
    if (amount < 0) {
      dr = entry[1];
      cr = entry[0];
      abs = -abs;
    }
    if (t < this.fromMs) {
      this.opening[cr]! += abs;
      this.opening[dr]! -= abs;
      return;
    }
    this.events++;
    this.counts[kind]!++;
    this.amounts[kind]! += BigInt(amount);
    this.debit[dr]! += abs;
    this.credit[cr]! += abs;
  }

  result(): Summary {
    const closing = ACCOUNTS.map((_, i) => this.opening[i]! + this.credit[i]! - this.debit[i]!);
    const sum = (values: bigint[]) => values.reduce((s, v) => s + v, 0n);
    const totalDebit = sum(this.debit);
    const totalCredit = sum(this.credit);
    const userOpen = this.opening[USER]!;
    const holdsOpen = this.opening[HOLDS]!;
    const userClose = closing[USER]!;
    const holdsClose = closing[HOLDS]!;
    return {
      from: this.from.toISOString(),
      to: this.to.toISOString(),
      events: this.events,
      movements: MOVEMENT_TYPES.map((type, i) => ({
        type,
        count: this.counts[i]!,
        amount: Number(this.amounts[i]!),
      })),
      balances: {
        opening: exactBalance(userOpen, holdsOpen),
        closing: exactBalance(userClose, holdsClose),
      },
      trial_balance: {
        accounts: ACCOUNTS.map((account, i): TrialBalanceLine => ({
          account,
          opening_balance: Number(this.opening[i]!),
          debit: Number(this.debit[i]!),
          credit: Number(this.credit[i]!),
          closing_balance: Number(closing[i]!),
        })),
        total_debit: Number(totalDebit),
        total_credit: Number(totalCredit),
        balanced: totalDebit === totalCredit && sum(this.opening) === 0n && sum(closing) === 0n,
      },
    };
  }
}

// ——— every account's balance (reconciliation) ———

export interface AccountBalance {
  posted: number;
  held: number;
}

/** Every account's posted and held balance at the end of the log, as the balances projection keeps them. */
export class BalancesFold implements LedgerFold<Map<string, AccountBalance>> {
  private readonly accounts = new Map<string, AccountBalance>();
  private lastStream = '';
  private last: AccountBalance | undefined;

  apply(e: LedgerRecord): void {
    const kind = movementIndex(e.type);
    if (kind < 0) return;
    let account = this.last;
    // Events of one append come together: skip the map lookup while the stream stays the same.
    if (e.streamName !== this.lastStream || !account) {
      const id = accountOf(e.streamName);
      account = this.accounts.get(id);
      if (!account) {
        account = { posted: 0, held: 0 };
        this.accounts.set(id, account);
      }
      this.last = account;
      this.lastStream = e.streamName;
    }
    const amount = amountOf(e);
    if (!validAmount(kind, amount)) return;
    account.posted += postedChange(kind, amount);
    account.held += heldChange(kind, amount);
  }

  result(): Map<string, AccountBalance> {
    return this.accounts;
  }
}
