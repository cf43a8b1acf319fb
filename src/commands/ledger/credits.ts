import { z } from 'zod';
import { ledgerStream } from '../../events/ledger';
import type { Clock } from '../../platform/clock';
import type { Config } from '../../platform/config';
import { BadRequest } from '../../platform/errors';
import type { CommandHandler, HandleResult } from '../handler';
import { available, ledgerDecider, type Ledger, type LedgerCommand } from './decider';

/** The settings the ledger's commands follow. */
export type LedgerCommandsConfig = Pick<
  Config,
  'CREDIT_EXCESS_POLICY' | 'DIRECT_CHARGES' | 'HOLD_TTL_SECONDS'
>;

export interface LedgerCommandsDeps {
  commands: CommandHandler;
  config: LedgerCommandsConfig;
  clock: Clock;
}

/** Who asked, on which request, and what caused it: kept in the metadata of every event decided. */
export interface Provenance {
  /** The user or admin acting, or a system actor (`system:hold-expiry`). */
  actorId: string | null;
  requestId?: string | null | undefined;
  /** Ties the events of one flow together (a task's reserve and capture); defaults to the request id. */
  correlationId?: string | null | undefined;
  /** The event that led to this command (the task completion that captures its hold). */
  causationId?: string | null | undefined;
}

/** The handler's answer: the last event's global position (for X-Event-Position), the new state, the events. */
export type LedgerResult = HandleResult<Ledger>;

const id = z.string().min(1).max(200);
const credits = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);
const reason = z.string().trim().min(1).max(500);
const when = z.union([z.date(), z.iso.datetime({ offset: true })]);
const common = { userId: id, metadata: z.custom<Provenance>((v) => typeof v === 'object' && v !== null) };

const ReserveInput = z.object({
  ...common,
  holdId: id,
  amount: credits,
  reason,
  /** Default: now + HOLD_TTL_SECONDS. */
  expiresAt: when.optional(),
  now: z.date().optional(),
});
const CaptureInput = z.object({
  ...common,
  holdId: id,
  /** The actual cost: at most the hold is captured, the rest released; any excess follows the policy. */
  cost: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  reason: reason.default('usage'),
  now: z.date().optional(),
});
const ReleaseInput = z.object({
  ...common,
  holdId: id,
  reason: reason.default('released'),
  now: z.date().optional(),
});
const ExpireInput = z.object({
  ...common,
  holdId: id,
  reason: reason.default('hold expired'),
  now: z.date().optional(),
});
const ChargeInput = z.object({ ...common, chargeId: id, amount: credits, reason, now: z.date().optional() });
const RefundInput = z.object({
  ...common,
  refundId: id,
  /** The capture (its hold id) or the direct charge refunded. */
  chargeId: id,
  amount: credits,
  reason,
  now: z.date().optional(),
});

export type ReserveCreditsInput = z.input<typeof ReserveInput>;
export type CaptureCreditsInput = z.input<typeof CaptureInput>;
export type ReleaseCreditsInput = z.input<typeof ReleaseInput>;
export type ExpireHoldInput = z.input<typeof ExpireInput>;
export type ChargeCreditsInput = z.input<typeof ChargeInput>;
export type RefundCreditsInput = z.input<typeof RefundInput>;

/** The hold lifecycle and the other movements the HTTP layer and the task flow run on a user's ledger. */
export interface LedgerCommands {
  /** Holds `amount` until captured, released or expired; 402 when available credits do not cover it. */
  reserve(input: ReserveCreditsInput): Promise<LedgerResult>;
  /** Captures the actual cost (at most the hold), releases the rest, and handles an excess by CREDIT_EXCESS_POLICY. */
  capture(input: CaptureCreditsInput): Promise<LedgerResult>;
  /** Gives the whole hold back (a failed or cancelled task). */
  release(input: ReleaseCreditsInput): Promise<LedgerResult>;
  /** Gives back a hold past its expiry; decides nothing for a hold resolved meanwhile or not yet due. */
  expire(input: ExpireHoldInput): Promise<LedgerResult>;
  /** A charge without a hold: refused (409) unless DIRECT_CHARGES. */
  charge(input: ChargeCreditsInput): Promise<LedgerResult>;
  /** Returns up to what is left of a capture or charge. */
  refund(input: RefundCreditsInput): Promise<LedgerResult>;
}

/**
 * The ledger's commands with their inputs checked (a zod error is a 400) and the configuration
 * applied. Every command is idempotent on its own id (hold, charge, refund): a retried request or a
 * process manager running a step again applies nothing twice and gets the current state back.
 */
export function createLedgerCommands({ commands, config, clock }: LedgerCommandsDeps): LedgerCommands {
  const run = (
    type: LedgerCommand['type'],
    data: LedgerCommand['data'],
    input: { metadata: Provenance; reason: string; now?: Date | undefined },
  ): Promise<LedgerResult> => {
    const m = input.metadata;
    const command = {
      type,
      data,
      metadata: {
        now: input.now ?? clock.now(),
        actorId: m.actorId,
        requestId: m.requestId ?? null,
        correlationId: m.correlationId ?? m.requestId ?? null,
        causationId: m.causationId ?? null,
        reason: input.reason,
      },
    } as LedgerCommand;
    return commands.handle(ledgerDecider, ledgerStream(command.data.userId), command);
  };

  return {
    async reserve(raw) {
      const input = ReserveInput.parse(raw);
      const now = input.now ?? clock.now();
      const expiresAt =
        input.expiresAt === undefined
          ? new Date(now.getTime() + config.HOLD_TTL_SECONDS * 1000)
          : new Date(input.expiresAt);
      if (expiresAt.getTime() <= now.getTime()) {
        throw new BadRequest(`A hold must expire after it is made; ${expiresAt.toISOString()} has passed.`);
      }
      const { userId, holdId, amount, reason } = input;
      // Milliseconds, as everywhere else: the expiry sweep pages by it.
      const data = { userId, holdId, amount, reason, expiresAt: expiresAt.toISOString() };
      return run('ReserveCredits', data, { ...input, now });
    },
    async capture(raw) {
      const input = CaptureInput.parse(raw);
      const { userId, holdId, cost } = input;
      return run('CaptureCredits', { userId, holdId, cost, excess: config.CREDIT_EXCESS_POLICY }, input);
    },
    async release(raw) {
      const input = ReleaseInput.parse(raw);
      return run('ReleaseCredits', { userId: input.userId, holdId: input.holdId }, input);
    },
    async expire(raw) {
      const input = ExpireInput.parse(raw);
      return run('ExpireHold', { userId: input.userId, holdId: input.holdId }, input);
    },
    async charge(raw) {
      const input = ChargeInput.parse(raw);
      const { userId, chargeId, amount, reason } = input;
      return run(
        'ChargeCredits',
        { userId, chargeId, amount, reason, allowDirect: config.DIRECT_CHARGES },
        input,
      );
    },
    async refund(raw) {
      const input = RefundInput.parse(raw);
      const { userId, refundId, chargeId, amount, reason } = input;
      return run('RefundCredits', { userId, refundId, chargeId, amount, reason }, input);
    },
  };
}

/** A ledger state as the API shows it. */
export function ledgerBalance(state: Ledger): { balance: number; held: number; available: number } {
  return { balance: state.posted, held: state.held, available: available(state) };
}
