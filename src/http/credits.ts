import { randomInt } from 'node:crypto';
import { z } from 'zod';
import { codeDecider } from '../commands/codes/decider';
import { redeemCode } from '../commands/codes/redeem';
import { ledgerDecider } from '../commands/ledger/decider';
import { userDecider } from '../commands/users/decider';
import { codeStream } from '../events/codes';
import { ledgerStream } from '../events/ledger';
import { userStream } from '../events/users';
import { NotFound } from '../platform/errors';
import { findCode, listCodes } from '../queries/codes';
import { balanceOf, creditHistory } from '../queries/credits';
import { PageQuery } from '../queries/paging';
import { auth } from './middleware/auth';
import { consistentRead, setEventPosition } from './middleware/consistency';
import { bearerSecurity, problemResponses } from './openapi';
import type { AuthedState, Resource } from './types';

const RedeemBody = z.strictObject({ code: z.string().trim().min(1).max(64) }).meta({ id: 'RedeemCode' });
const GrantBody = z
  .strictObject({
    amount: z
      .number()
      .int()
      .refine((n) => n !== 0 && Number.isSafeInteger(n), 'a non-zero whole number of credits'),
    reason: z.string().trim().min(1).max(500),
  })
  .meta({ id: 'GrantCredits', description: 'Positive grants credits; negative is an adjustment.' });
const IssueBody = z
  .strictObject({
    amount: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
    count: z.number().int().min(1).max(1000).default(1),
    max_uses: z.number().int().min(1).max(1_000_000).default(1),
    expires_at: z.string().datetime({ offset: true }).optional(),
  })
  .meta({ id: 'IssueCodes' });
const CodeStatusQuery = PageQuery.extend({
  status: z.enum(['active', 'used_up', 'expired', 'revoked']).optional(),
});
const UserId = z.object({ id: z.string().min(1).max(100) });
const CodeParam = z.object({ code: z.string().min(1).max(64) });

/** No 0/O, 1/I/L: codes are read aloud and typed from screenshots. */
const CODE_ALPHABET = '23456789ABCDEFGHJKMNPQRSTUVWXYZ';
const CODE_LENGTH = 16;

function newCode(): string {
  let code = '';
  for (let i = 0; i < CODE_LENGTH; i++) code += CODE_ALPHABET[randomInt(CODE_ALPHABET.length)];
  return code;
}

const normalise = (code: string) => code.toUpperCase().replace(/[\s-]/g, '');

/** Credits (API.md): a user's balance and history, redeeming codes; admin grants and redeem codes. */
export const credits: Resource = (router, { deps, openapi }) => {
  const { commands, clock, ids } = deps;
  const db = deps.db.db;

  openapi.registerPath({
    method: 'get',
    path: '/users/me/credits',
    summary: 'My balance, holds and history',
    tags: ['credits'],
    security: bearerSecurity,
    request: { query: PageQuery },
    responses: { 200: { description: 'Balance and history' }, ...problemResponses(400, 401, 504) },
  });
  router.get('/users/me/credits', auth(), consistentRead<AuthedState>(['ledger']), async (ctx) => {
    const { limit, cursor } = PageQuery.parse(ctx.query);
    const userId = ctx.state.user.id;
    // One snapshot for both: read apart, a batch of the ledger projection committed between them
    // would answer a balance that the history's newest entry contradicts.
    ctx.body = await db
      .transaction()
      .setIsolationLevel('repeatable read')
      .setAccessMode('read only')
      .execute(async (trx) => ({
        ...(await balanceOf(trx, userId)),
        history: await creditHistory(trx, userId, limit, cursor),
      }));
  });

  openapi.registerPath({
    method: 'post',
    path: '/users/me/credits',
    summary: 'Redeem a code',
    tags: ['credits'],
    security: bearerSecurity,
    request: { body: { content: { 'application/json': { schema: RedeemBody } } } },
    responses: { 200: { description: 'Credited' }, ...problemResponses(400, 401, 404, 409) },
  });
  router.post('/users/me/credits', auth(), async (ctx) => {
    const { code } = RedeemBody.parse(ctx.request.body);
    const result = await redeemCode(commands, {
      code: normalise(code),
      userId: ctx.state.user.id,
      now: clock.now(),
      requestId: ctx.state.requestId,
    });
    setEventPosition(ctx, result.position);
    ctx.body = { balance: result.balance, available: result.available, redeemed: result.redeemed };
  });

  openapi.registerPath({
    method: 'post',
    path: '/users/{id}/credits',
    summary: 'Grant (or, negative, adjust) a user’s credits',
    tags: ['admin'],
    security: bearerSecurity,
    request: { params: UserId, body: { content: { 'application/json': { schema: GrantBody } } } },
    responses: {
      201: { description: 'The ledger entry' },
      ...problemResponses(400, 401, 402, 403, 404, 409),
    },
  });
  router.post('/users/:id/credits', auth(2), async (ctx) => {
    const { id: userId } = UserId.parse(ctx.params);
    const { amount, reason } = GrantBody.parse(ctx.request.body);
    // Credits for nobody would count as issued, and an admin's typo would go unnoticed.
    if (!(await commands.read(userDecider, userStream(userId))).state.registered) {
      throw new NotFound('No such user.');
    }
    const metadata = { now: clock.now(), actorId: ctx.state.user.id, requestId: ctx.state.requestId };
    const movementId = ids.next();
    const result = await commands.handle(
      ledgerDecider,
      ledgerStream(userId),
      amount > 0
        ? { type: 'GrantCredits', data: { userId, grantId: movementId, amount, reason }, metadata }
        : {
            type: 'AdjustCredits',
            data: { userId, adjustmentId: movementId, amount, reason, corrects: null },
            metadata,
          },
    );
    const event = result.events[0]!;
    setEventPosition(ctx, result.position);
    ctx.status = 201;
    ctx.body = {
      id: event.id,
      type: amount > 0 ? 'granted' : 'adjusted',
      amount,
      balance_after: result.state.posted,
      reason,
      // As the history shows the entry: a grant's own id, the entry an adjustment corrects (none here).
      ref: amount > 0 ? movementId : null,
      created_at: metadata.now.toISOString(),
    };
  });

  openapi.registerPath({
    method: 'post',
    path: '/codes',
    summary: 'Issue redeem codes (shown once here)',
    tags: ['admin'],
    security: bearerSecurity,
    request: { body: { content: { 'application/json': { schema: IssueBody } } } },
    responses: { 201: { description: 'The new codes' }, ...problemResponses(400, 401, 403) },
  });
  router.post('/codes', auth(2), async (ctx) => {
    const body = IssueBody.parse(ctx.request.body);
    const now = clock.now();
    const batchId = ids.next();
    const issued: string[] = [];
    let position = 0n;
    while (issued.length < body.count) {
      const code = newCode();
      const r = await commands.handle(codeDecider, codeStream(code), {
        type: 'IssueCode',
        data: {
          code,
          amount: body.amount,
          maxUses: body.max_uses,
          expiresAt: body.expires_at ?? null,
          batchId,
          issuedBy: ctx.state.user.id,
        },
        metadata: { now, actorId: ctx.state.user.id, requestId: ctx.state.requestId },
      });
      if (r.events.length === 0) continue; // that code exists already: draw another
      issued.push(code);
      position = r.position;
    }
    setEventPosition(ctx, position);
    ctx.status = 201;
    ctx.body = { codes: issued, batch_id: batchId };
  });

  openapi.registerPath({
    method: 'get',
    path: '/codes',
    summary: 'Redemption codes, newest first, by status',
    tags: ['admin'],
    security: bearerSecurity,
    request: { query: CodeStatusQuery },
    responses: { 200: { description: '{ items, next_cursor }' }, ...problemResponses(400, 401, 403) },
  });
  router.get('/codes', auth(2), consistentRead<AuthedState>(['codes']), async (ctx) => {
    const q = CodeStatusQuery.parse(ctx.query);
    ctx.body = await listCodes(db, { limit: q.limit, cursor: q.cursor, status: q.status, now: clock.now() });
  });

  openapi.registerPath({
    method: 'get',
    path: '/codes/{code}',
    summary: 'A redemption code: amount, uses, expiry, status',
    tags: ['admin'],
    security: bearerSecurity,
    request: { params: CodeParam },
    responses: { 200: { description: 'The code' }, ...problemResponses(401, 403, 404) },
  });
  router.get('/codes/:code', auth(2), consistentRead<AuthedState>(['codes']), async (ctx) => {
    const { code } = CodeParam.parse(ctx.params);
    const found = await findCode(db, normalise(code), clock.now());
    if (!found) throw new NotFound(`No code ${code}.`);
    ctx.body = found;
  });

  openapi.registerPath({
    method: 'delete',
    path: '/codes/{code}',
    summary: 'Revoke a redemption code: it can no longer be redeemed',
    tags: ['admin'],
    security: bearerSecurity,
    request: { params: CodeParam },
    responses: { 204: { description: 'Revoked' }, ...problemResponses(401, 403, 404) },
  });
  router.delete('/codes/:code', auth(2), async (ctx) => {
    const { code } = CodeParam.parse(ctx.params);
    const r = await commands.handle(codeDecider, codeStream(normalise(code)), {
      type: 'RevokeCode',
      data: { code: normalise(code), revokedBy: ctx.state.user.id, reason: 'revoked by an admin' },
      metadata: { now: clock.now(), actorId: ctx.state.user.id, requestId: ctx.state.requestId },
    });
    setEventPosition(ctx, r.position);
    ctx.status = 204;
  });
};
