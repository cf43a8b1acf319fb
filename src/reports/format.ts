import type { Statement, Summary } from './folds';

/** A report as JSON text: key order as built, two-space indent, a final newline. */
export function reportJson(report: unknown): string {
  return `${JSON.stringify(report, null, 2)}\n`;
}

type Cell = string | number | boolean | null;

/**
 * One CSV field (RFC 4180). Text that a spreadsheet would run as a formula (=, +, -, @, tab, CR
 * first) gets a leading apostrophe: reasons are typed by admins and users and end up in Excel.
 */
function field(v: Cell): string {
  if (v === null) return '';
  if (typeof v !== 'string') return String(v);
  const safe = /^[=+\-@\t\r]/.test(v) ? `'${v}` : v;
  return /[",\r\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

function csv(header: readonly string[], rows: readonly (readonly Cell[])[]): string {
  return [header, ...rows].map((r) => r.map(field).join(',')).join('\r\n') + '\r\n';
}

const STATEMENT_COLUMNS = [
  'position',
  'event_id',
  'occurred_at',
  'type',
  'amount',
  'posted_change',
  'held_change',
  'posted_after',
  'held_after',
  'available_after',
  'ref',
  'refers_to',
  'reason',
] as const;

/** A statement as CSV: an `opening` line, one line per movement, a `closing` line. */
export function statementCsv(s: Statement): string {
  const edge = (type: 'opening' | 'closing', at: string, b: Statement['opening']): Cell[] => [
    null,
    null,
    at,
    type,
    null,
    null,
    null,
    b.posted,
    b.held,
    b.available,
    null,
    null,
    null,
  ];
  return csv(STATEMENT_COLUMNS, [
    edge('opening', s.from, s.opening),
    ...s.movements.map((m) => STATEMENT_COLUMNS.map((c) => m[c])),
    edge('closing', s.to, s.closing),
  ]);
}

/**
 * A summary as CSV: one `movement` line per type (count, amount), then one `account` line per
 * trial-balance account (opening, debit, credit, closing), then the `total` line.
 */
export function summaryCsv(s: Summary): string {
  const header = [
    'section',
    'name',
    'count',
    'amount',
    'opening_balance',
    'debit',
    'credit',
    'closing_balance',
  ];
  const tb = s.trial_balance;
  return csv(header, [
    ...s.movements.map((m): Cell[] => ['movement', m.type, m.count, m.amount, null, null, null, null]),
    ...tb.accounts.map((a): Cell[] => [
      'account',
      a.account,
      null,
      null,
      a.opening_balance,
      a.debit,
      a.credit,
      a.closing_balance,
    ]),
    [
      'total',
      tb.balanced ? 'balanced' : 'unbalanced',
      s.events,
      null,
      null,
      tb.total_debit,
      tb.total_credit,
      null,
    ],
  ]);
}
