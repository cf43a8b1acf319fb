import type { RecordedEvent } from '../eventstore/port';

/**
 * What the finance reports read of a stored ledger event. A `RecordedEvent` is one; unit tests
 * build them by hand. Data is read field by field, not parsed with zod: a report folds millions
 * of events, and `verify` checks the fields it uses itself (a malformed event is a breach, not a crash).
 * Nothing is read from the metadata: the event's data carries the movement's own time, so a
 * reader of the log needs neither the metadata document nor the time it was recorded.
 */
export type LedgerRecord = Pick<RecordedEvent, 'id' | 'type' | 'data' | 'streamName'> & {
  /**
   * The global position: a bigint from the port, or the int64 text a report reader got from the
   * database (reports only print it, and converting a million of them costs more than the rest).
   */
  position: bigint | string;
};

/** Every field a ledger event may carry, unchecked (as stored). */
export interface LedgerFields {
  userId?: unknown;
  amount?: unknown;
  grantId?: unknown;
  useId?: unknown;
  code?: unknown;
  holdId?: unknown;
  chargeId?: unknown;
  refundId?: unknown;
  adjustmentId?: unknown;
  corrects?: unknown;
  reason?: unknown;
}

/** Movement types, in the order every report lists them. */
export const MOVEMENT_TYPES = [
  'granted',
  'redeemed',
  'reserved',
  'captured',
  'released',
  'expired',
  'charged',
  'refunded',
  'adjusted',
] as const;
export type MovementType = (typeof MOVEMENT_TYPES)[number];

/** Index into MOVEMENT_TYPES by event type: folds keep their totals in arrays, not objects. */
export const MOVEMENT_INDEX: Readonly<Record<string, number>> = {
  CreditsGranted: 0,
  CodeRedeemed: 1,
  CreditsReserved: 2,
  CreditsCaptured: 3,
  CreditsReleased: 4,
  HoldExpired: 5,
  CreditsCharged: 6,
  CreditsRefunded: 7,
  CreditsAdjusted: 8,
};
export const GRANTED = 0;
export const REDEEMED = 1;
export const RESERVED = 2;
export const CAPTURED = 3;
export const RELEASED = 4;
export const EXPIRED = 5;
export const CHARGED = 6;
export const REFUNDED = 7;
export const ADJUSTED = 8;

/** The movement type index of an event, or -1 for a type the ledger does not know. */
export function movementIndex(type: string): number {
  return MOVEMENT_INDEX[type] ?? -1;
}

/** The event's amount as stored (a number), or NaN. */
export function amountOf(e: LedgerRecord): number {
  const a = (e.data as LedgerFields | null)?.amount;
  return typeof a === 'number' ? a : NaN;
}

/** What a movement does to the posted balance. */
export function postedChange(kind: number, amount: number): number {
  switch (kind) {
    case GRANTED:
    case REDEEMED:
    case REFUNDED:
    case ADJUSTED:
      return amount;
    case CAPTURED:
    case CHARGED:
      return -amount;
    default:
      return 0;
  }
}

/**
 * What a movement does to the open holds, by the event's own amount (as the balances projection
 * counts it): a capture and the release of its rest together close the whole hold.
 */
export function heldChange(kind: number, amount: number): number {
  switch (kind) {
    case RESERVED:
      return amount;
    case CAPTURED:
    case RELEASED:
    case EXPIRED:
      return -amount;
    default:
      return 0;
  }
}

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);

/** The movement's own id (its idempotency key): grant, use, hold, charge, refund or adjustment. */
export function refOf(kind: number, d: LedgerFields): string | null {
  switch (kind) {
    case GRANTED:
      return str(d.grantId);
    case REDEEMED:
      return str(d.useId);
    case RESERVED:
    case CAPTURED:
    case RELEASED:
    case EXPIRED:
      return str(d.holdId);
    case CHARGED:
      return str(d.chargeId);
    case REFUNDED:
      return str(d.refundId);
    case ADJUSTED:
      return str(d.adjustmentId);
    default:
      return null;
  }
}

/** What the movement points at: the code redeemed, the charge refunded, the hold an excess charge exceeds, the event an adjustment corrects. */
export function refersToOf(kind: number, d: LedgerFields): string | null {
  switch (kind) {
    case REDEEMED:
      return str(d.code);
    case CHARGED:
      return str(d.holdId);
    case REFUNDED:
      return str(d.chargeId);
    case ADJUSTED:
      return str(d.corrects);
    default:
      return null;
  }
}

export function reasonOf(d: LedgerFields): string | null {
  return str(d.reason);
}

const LEDGER_PREFIX = 'ledger-';

/** The account (user id) a ledger stream belongs to; the stream, not the data, names the account. */
export function accountOf(streamName: string): string {
  return streamName.startsWith(LEDGER_PREFIX) ? streamName.slice(LEDGER_PREFIX.length) : streamName;
}

/** The data field holding each movement type's time, by MOVEMENT_TYPES index. */
export const TIME_FIELDS = [
  'grantedAt',
  'redeemedAt',
  'reservedAt',
  'capturedAt',
  'releasedAt',
  'expiredAt',
  'chargedAt',
  'refundedAt',
  'adjustedAt',
] as const;

/**
 * When the movement happened, as the event states it (`grantedAt`, `capturedAt`, …: the time of
 * the command that decided it, the same instant as its metadata's `occurredAt`), in epoch
 * milliseconds; NaN when the event has no valid time (verify reports it, the other reports count
 * it as at the start of time). A replay always sees the same times: they are stored in the event.
 */
export function timeOf(kind: number, d: unknown): number {
  const text = timeText(kind, d);
  return text === null ? NaN : parseTime(text);
}

/** The movement's time as stored, for report lines (as written, so two runs print the same text). */
export function timeText(kind: number, d: unknown): string | null {
  if (d === null || typeof d !== 'object') return null;
  // One named read per type (each sees one shape of data), not a lookup by TIME_FIELDS[kind].
  const t = d as LedgerTimes;
  let at: unknown;
  switch (kind) {
    case GRANTED:
      at = t.grantedAt;
      break;
    case REDEEMED:
      at = t.redeemedAt;
      break;
    case RESERVED:
      at = t.reservedAt;
      break;
    case CAPTURED:
      at = t.capturedAt;
      break;
    case RELEASED:
      at = t.releasedAt;
      break;
    case EXPIRED:
      at = t.expiredAt;
      break;
    case CHARGED:
      at = t.chargedAt;
      break;
    case REFUNDED:
      at = t.refundedAt;
      break;
    case ADJUSTED:
      at = t.adjustedAt;
      break;
  }
  return typeof at === 'string' ? at : null;
}

type LedgerTimes = Partial<Record<(typeof TIME_FIELDS)[number], unknown>>;

let lastTimeText = '';
let lastTime = NaN;

/**
 * Date.parse, remembering the last answer: the events of one append share their time, and parsing
 * is a large part of what a summary costs per event.
 */
export function parseTime(text: string): number {
  if (text !== lastTimeText) {
    lastTime = Date.parse(text);
    lastTimeText = text;
  }
  return lastTime;
}
