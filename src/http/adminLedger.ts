import { z } from 'zod';
import { statementCsv, summaryCsv } from '../reports/format';
import { createLedgerReports } from '../reports/ledger';
import { BalanceQuery, StatementQuery, SummaryQuery } from '../reports/params';
import { ACCOUNTS } from '../reports/folds';
import { MOVEMENT_TYPES } from '../reports/records';
import { auth } from './middleware/auth';
import { consistentRead } from './middleware/consistency';
import { bearerSecurity, problemResponses } from './openapi';
import type { AppContext, AuthedState, Resource } from './types';
import type { ParameterizedContext } from 'koa';

const int = z.number().int();
const position = z
  .string()
  .meta({ description: 'Global event position (int64 as a string)', example: '1042' });
const BalanceSchema = z.object({ posted: int, held: int, available: int }).meta({ id: 'LedgerBalance' });

const StatementSchema = z
  .object({
    user_id: z.string(),
    from: z.string(),
    to: z.string(),
    opening: BalanceSchema,
    movements: z.array(
      z.object({
        position,
        event_id: z.string(),
        occurred_at: z.string().nullable(),
        type: z.enum(MOVEMENT_TYPES),
        amount: int,
        posted_change: int,
        held_change: int,
        posted_after: int,
        held_after: int,
        available_after: int,
        ref: z.string().nullable(),
        refers_to: z.string().nullable(),
        reason: z.string().nullable(),
      }),
    ),
    totals: z.object({ movements: int, posted_change: int, held_change: int }),
    closing: BalanceSchema,
  })
  .meta({ id: 'LedgerStatement', description: 'opening + Σ movements = closing' });

const SummarySchema = z
  .object({
    from: z.string(),
    to: z.string(),
    events: int,
    movements: z.array(z.object({ type: z.enum(MOVEMENT_TYPES), count: int, amount: int })),
    balances: z.object({ opening: BalanceSchema, closing: BalanceSchema }),
    trial_balance: z.object({
      accounts: z.array(
        z.object({
          account: z.enum(ACCOUNTS),
          opening_balance: int.meta({ description: 'credits − debits before `from`' }),
          debit: int,
          credit: int,
          closing_balance: int,
        }),
      ),
      total_debit: int,
      total_credit: int,
      balanced: z.boolean(),
    }),
    as_of_position: position,
  })
  .meta({ id: 'LedgerSummary' });

const BalanceAtSchema = BalanceSchema.extend({
  user_id: z.string(),
  at: z.string(),
  events: int,
  last_position: position.nullable(),
}).meta({ id: 'LedgerBalanceAt' });

const AccountBalance = z.object({ posted: int, held: int });
const ReconciliationSchema = z
  .object({
    as_of_position: position,
    checkpoint: position.nullable(),
    accounts: int,
    differences: z.array(
      z.object({
        user_id: z.string(),
        kind: z.enum(['missing_row', 'unexpected_row', 'mismatch']),
        replayed: AccountBalance.nullable(),
        projected: AccountBalance.nullable(),
      }),
    ),
    ok: z.boolean(),
  })
  .meta({ id: 'LedgerReconciliation' });

const VerificationSchema = z
  .object({
    events: int,
    accounts: int,
    totals: z.record(z.string(), int),
    breach_count: int,
    breaches: z.array(
      z.object({
        position,
        event_id: z.string(),
        stream: z.string(),
        type: z.string(),
        rule: z.string(),
        message: z.string(),
      }),
    ),
    truncated: z.boolean(),
    ok: z.boolean(),
    as_of_position: position,
  })
  .meta({ id: 'LedgerVerification' });

const CSV = 'text/csv; charset=utf-8';
const csvContent = { 'text/csv': { schema: z.string() } };

/** CSV when the client asks for it first; JSON otherwise. */
function wantsCsv(ctx: ParameterizedContext<AuthedState, AppContext>): boolean {
  ctx.vary('Accept');
  return ctx.accepts('application/json', 'text/csv') === 'text/csv';
}

/**
 * Admin finance reports (API.md "Admin reports and operations"): replays of the event store, never
 * the read models (reconcile reads the balances projection only to compare it with the replay).
 */
export const adminLedger: Resource = (router, { deps, openapi }) => {
  const reports = createLedgerReports({ store: deps.store, db: deps.db });
  const register = (
    path: string,
    summary: string,
    query: z.ZodType | undefined,
    schema: z.ZodType,
    csv = false,
  ) =>
    openapi.registerPath({
      method: 'get',
      path,
      summary,
      tags: ['admin'],
      security: bearerSecurity,
      ...(query ? { request: { query: query as z.ZodObject } } : {}),
      responses: {
        200: {
          description: summary,
          content: { 'application/json': { schema }, ...(csv ? csvContent : {}) },
        },
        ...problemResponses(...(query ? [400] : []), 401, 403),
      },
    });

  register(
    '/admin/ledger/statement',
    'A user’s statement for [from, to) with running balances',
    StatementQuery,
    StatementSchema,
    true,
  );
  router.get('/admin/ledger/statement', auth(2), consistentRead<AuthedState>([]), async (ctx) => {
    const q = StatementQuery.parse(ctx.query);
    const statement = await reports.statement(q.user_id, q.from, q.to);
    if (wantsCsv(ctx)) {
      ctx.type = CSV;
      ctx.attachment(`statement-${q.user_id}.csv`);
      ctx.body = statementCsv(statement);
    } else ctx.body = statement;
  });

  register(
    '/admin/ledger/summary',
    'Period totals by movement type and the trial balance',
    SummaryQuery,
    SummarySchema,
    true,
  );
  router.get('/admin/ledger/summary', auth(2), consistentRead<AuthedState>([]), async (ctx) => {
    const q = SummaryQuery.parse(ctx.query);
    const summary = await reports.summary(q.from, q.to);
    if (wantsCsv(ctx)) {
      ctx.type = CSV;
      ctx.attachment('summary.csv');
      ctx.body = summaryCsv(summary);
    } else ctx.body = summary;
  });

  register('/admin/ledger/balance', 'A user’s balance as of a time', BalanceQuery, BalanceAtSchema);
  router.get('/admin/ledger/balance', auth(2), consistentRead<AuthedState>([]), async (ctx) => {
    const q = BalanceQuery.parse(ctx.query);
    ctx.body = await reports.balanceAt(q.user_id, q.at);
  });

  register(
    '/admin/ledger/reconcile',
    'Replayed balances against the balances projection',
    undefined,
    ReconciliationSchema,
  );
  // Compared as of the balances projection's checkpoint: `X-Consistent-After` waits for it.
  router.get('/admin/ledger/reconcile', auth(2), consistentRead<AuthedState>(['ledger']), async (ctx) => {
    ctx.body = await reports.reconcile();
  });

  register(
    '/admin/ledger/verify',
    'The ledger’s invariants over the whole log',
    undefined,
    VerificationSchema,
  );
  router.get('/admin/ledger/verify', auth(2), consistentRead<AuthedState>([]), async (ctx) => {
    ctx.body = await reports.verify();
  });
};
