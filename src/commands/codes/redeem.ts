import type { RecordedEvent } from '../../eventstore/port';
import { codeStream, type CodeEvent } from '../../events/codes';
import { ledgerStream } from '../../events/ledger';
import type { Projector } from '../../projections/types';
import type { CommandHandler } from '../handler';
import { available, BalanceLimitReached, ledgerDecider, MAX_BALANCE } from '../ledger/decider';
import { codeDecider } from './decider';

export interface RedeemResult {
  balance: number;
  available: number;
  redeemed: number;
  /** Global position of the ledger credit, for X-Event-Position. */
  position: bigint;
}

/**
 * Redeeming is a process over two streams (no event store here has a multi-stream transaction):
 * first the code stream records the use — its expected revision decides who wins — then the
 * ledger is credited, idempotently on the use's event id. If the process dies between the steps,
 * `redemptionReactor` completes the credit; if both run, the ledger applies it once.
 */
export async function redeemCode(
  commands: CommandHandler,
  input: { code: string; userId: string; now: Date; requestId?: string | null },
): Promise<RedeemResult> {
  // A use the ledger would refuse to credit (the balance at its limit) is not recorded: its credit
  // could never land.
  const [code, ledger] = await Promise.all([
    commands.read(codeDecider, codeStream(input.code)),
    commands.read(ledgerDecider, ledgerStream(input.userId)),
  ]);
  const amount = code.state.issued?.amount ?? 0;
  if (ledger.state.posted + amount > MAX_BALANCE) throw new BalanceLimitReached(ledger.state.posted, amount);
  const use = await commands.handle(codeDecider, codeStream(input.code), {
    type: 'UseCode',
    data: { code: input.code, userId: input.userId },
    metadata: { now: input.now, actorId: input.userId, requestId: input.requestId ?? null },
  });
  const used = use.events[0];
  if (!used) throw new Error('a use of the code was decided but not recorded');
  return creditRedemption(commands, used);
}

/** The second step: credit the ledger for a recorded use. Safe to run any number of times. */
export async function creditRedemption(commands: CommandHandler, used: RecordedEvent): Promise<RedeemResult> {
  const { code, userId, amount, usedAt } = (used as unknown as Extract<CodeEvent, { type: 'CodeUsed' }>).data;
  const credited = await commands.handle(ledgerDecider, ledgerStream(userId), {
    type: 'RedeemCode',
    data: { userId, useId: used.id, code, amount },
    metadata: {
      now: new Date(usedAt),
      actorId: userId,
      requestId: used.metadata.requestId ?? null,
      correlationId: used.metadata.correlationId ?? used.metadata.requestId ?? null,
      causationId: used.id,
    },
  });
  return {
    balance: credited.state.posted,
    available: available(credited.state),
    redeemed: amount,
    position: credited.position,
  };
}

/** Completes every recorded use whose credit did not land (the process died between the steps). */
export function redemptionReactor(commands: CommandHandler): Projector {
  return {
    name: 'redemption_reactor',
    version: 1,
    eventTypes: ['CodeUsed'],
    tables: [],
    reactor: true,
    async apply(_db, events) {
      for (const used of events) await creditRedemption(commands, used);
    },
  };
}
