import { CommandHandler } from '../../src/commands/handler';
import { createLedgerCommands, type LedgerCommandsConfig } from '../../src/commands/ledger/credits';
import {
  InsufficientCredits,
  available,
  initialLedger,
  ledgerDecider,
} from '../../src/commands/ledger/decider';
import type { EventStore, RecordedEvent } from '../../src/eventstore/port';
import { ledgerStream, type LedgerEvent } from '../../src/events/ledger';
import { uuidV7Ids, type Clock } from '../../src/platform/clock';

/** Ledger test helpers: a hand-moved clock, fresh folds of a stream, and the reservation race. */
export const T0 = new Date('2030-01-01T00:00:00.000Z');
export const at = (seconds: number) => new Date(T0.getTime() + seconds * 1000);

/** A clock the test moves by hand: no sleeping for expiries. */
export function manualClock(start = T0): Clock & { set(d: Date): void } {
  let now = start;
  return { now: () => now, set: (d) => (now = d) };
}

export const config = (over: Partial<LedgerCommandsConfig> = {}): LedgerCommandsConfig => ({
  CREDIT_EXCESS_POLICY: 'charge_available',
  DIRECT_CHARGES: false,
  HOLD_TTL_SECONDS: 900,
  ...over,
});

/** A user's ledger folded afresh from its stream (no handler cache), and the events it holds. */
export async function fold(store: EventStore, userId: string) {
  const events = await store.readStream(ledgerStream(userId));
  const state = events.reduce(
    (s, e) => ledgerDecider.evolve(s, e as unknown as LedgerEvent),
    initialLedger(),
  );
  return { state, events };
}

export async function grant(commands: CommandHandler, userId: string, amount: number) {
  return commands.handle(ledgerDecider, ledgerStream(userId), {
    type: 'GrantCredits',
    data: { userId, grantId: `grant-${userId}-${amount}`, amount, reason: 'test' },
    metadata: { now: T0, actorId: 'admin-1', requestId: 'req-grant' },
  });
}

const RESOLUTIONS = new Set(['CreditsCaptured', 'CreditsReleased', 'HoldExpired']);

/** The events that resolved a hold (a capture with its released remainder, a release or an expiry). */
export const resolutionsOf = (events: RecordedEvent[], holdId: string) =>
  events.filter((e) => RESOLUTIONS.has(e.type) && (e.data as { holdId: string }).holdId === holdId);

/**
 * 200 reservations of 10 racing against a balance of 100, from as many instances as `stores`: each
 * its own handler (and cache) on a store client of its own, as separate service processes would
 * be. Exactly 10 may win; the other 190 must be told 402. Checked against a fresh fold of the stream.
 */
export async function raceReserves(stores: EventStore[], reader: EventStore, userId: string): Promise<void> {
  expect(stores.length).toBeGreaterThanOrEqual(4);
  const instances = stores.map((s) => {
    // Retries generous enough that every loser ends with a decision, not with "try again".
    const commands = new CommandHandler(s, { ids: uuidV7Ids, maxRetries: 200 });
    return { commands, ledger: createLedgerCommands({ commands, config: config(), clock: manualClock() }) };
  });
  await grant(instances[0]!.commands, userId, 100);
  const results = await Promise.allSettled(
    Array.from({ length: 200 }, (_, i) =>
      instances[i % instances.length]!.ledger.reserve({
        userId,
        holdId: `hold-${i}`,
        amount: 10,
        reason: 'task',
        expiresAt: at(900),
        metadata: { actorId: userId, requestId: `req-${i}` },
      }),
    ),
  );
  const won = results.filter((r) => r.status === 'fulfilled');
  const lost = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
  expect(won).toHaveLength(10);
  expect(lost).toHaveLength(190);
  for (const err of lost) {
    expect(err).toBeInstanceOf(InsufficientCredits);
    expect((err as InsufficientCredits).status).toBe(402);
  }
  const { state, events } = await fold(reader, userId);
  expect(state.posted).toBe(100);
  expect(state.held).toBe(100);
  expect(available(state)).toBe(0);
  expect(state.holds.size).toBe(10);
  const reserved = events.filter((e) => e.type === 'CreditsReserved');
  expect(reserved).toHaveLength(10);
  expect(new Set(reserved.map((e) => (e.data as { holdId: string }).holdId)).size).toBe(10);
}
