import { z } from 'zod';

const DATE = /^\d{4}-\d{2}-\d{2}$/;
const DATE_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})$/i;

/**
 * A report time: a date (midnight UTC) or a date-time with its offset. Never the local zone: reports
 * must not change with the machine. Events are timed to the millisecond; a time finer than that is
 * rounded to the millisecond that selects the same events: down for an instant up to which events
 * count (`at`), up for a period's bounds (`from` counts its events, `to` does not), so that an event
 * at 00:00:00.000 is inside a period up to 00:00:00.0001 and outside one from it.
 */
function reportTime(rounding: 'down' | 'up') {
  return z
    .string()
    .trim()
    .refine(
      (s) => (DATE.test(s) || DATE_TIME.test(s)) && !Number.isNaN(parseTime(s)),
      'must be a date (2026-03-01) or a date-time with offset (2026-03-01T12:00:00Z)',
    )
    .transform((s) => new Date(parseTime(s) + (rounding === 'up' && finerThanMs(s) ? 1 : 0)))
    .meta({ description: 'ISO 8601 date (UTC midnight) or date-time with offset', example: '2026-03-01' });
}

const ReportTime = reportTime('down');
const PeriodBound = reportTime('up');

/** Whether a time names a part of a millisecond (Date.parse drops it). */
function finerThanMs(s: string): boolean {
  const fraction = /\.(\d+)/.exec(s)?.[1] ?? '';
  return /[1-9]/.test(fraction.slice(3));
}

function parseTime(s: string): number {
  // Date.parse rolls 2026-02-30 over to March: only a calendar date that reads back the same is real.
  const [y, m, d] = s.slice(0, 10).split('-').map(Number) as [number, number, number];
  const day = new Date(Date.UTC(y, m - 1, d));
  if (day.getUTCFullYear() !== y || day.getUTCMonth() !== m - 1 || day.getUTCDate() !== d) return NaN;
  return Date.parse(DATE.test(s) ? `${s}T00:00:00Z` : s);
}

export const UserIdParam = z.string().trim().min(1).max(200);

const fromBeforeTo = {
  // Runs even when a time failed (then still a string): that failure is reported on its own.
  check: (q: { from: unknown; to: unknown }) =>
    !(q.from instanceof Date && q.to instanceof Date) || q.from.getTime() < q.to.getTime(),
  params: { message: 'from must be before to', path: ['to'] },
};

export const StatementQuery = z
  .object({ user_id: UserIdParam, from: PeriodBound, to: PeriodBound })
  .refine(fromBeforeTo.check, fromBeforeTo.params);
export const SummaryQuery = z
  .object({ from: PeriodBound, to: PeriodBound })
  .refine(fromBeforeTo.check, fromBeforeTo.params);
export const BalanceQuery = z.object({ user_id: UserIdParam, at: ReportTime });
