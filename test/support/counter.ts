import { sql, type Kysely } from 'kysely';
import type { Command, Decider } from '../../src/commands/handler';
import type { Database } from '../../src/platform/schema';
import type { Projector } from '../../src/projections/types';
import { BadRequest } from '../../src/platform/errors';

/** A fixture aggregate for testing the platform: a counter that can be incremented and reset. */
export type CounterEvent =
  | { type: 'CounterIncremented'; data: { by: number; incrementedAt: string } }
  | { type: 'CounterReset'; data: { resetAt: string } };

export type CounterCommand = Command<'Increment', { by: number }> | Command<'Reset', Record<string, never>>;

export interface CounterState {
  value: number;
}

export const counterDecider: Decider<CounterState, CounterCommand, CounterEvent> = {
  name: 'counter',
  initialState: () => ({ value: 0 }),
  evolve(state, event) {
    switch (event.type) {
      case 'CounterIncremented':
        return { value: state.value + event.data.by };
      case 'CounterReset':
        return { value: 0 };
    }
  },
  decide(command, state) {
    switch (command.type) {
      case 'Increment':
        if (command.data.by <= 0) throw new BadRequest('increment must be positive');
        return [
          {
            type: 'CounterIncremented',
            data: { by: command.data.by, incrementedAt: command.metadata.now.toISOString() },
          },
        ];
      case 'Reset':
        return state.value === 0
          ? []
          : [{ type: 'CounterReset', data: { resetAt: command.metadata.now.toISOString() } }];
    }
  },
};

/** Read model over counters: one row per stream, changed only by newer events. */
export function counterProjector(version = 1): Projector {
  return {
    name: 'counters',
    version,
    eventTypes: ['CounterIncremented', 'CounterReset'],
    tables: ['counters'],
    async apply(trx, events) {
      for (const e of events) {
        const delta = e.type === 'CounterIncremented' ? (e.data as { by: number }).by : null;
        await sql`
          insert into ${sql.table('counters')} (stream_name, value, events, last_position)
          values (${e.streamName}, ${delta ?? 0}, 1, ${String(e.position)})
          on conflict (stream_name) do update set
            value = case when ${delta}::int is null then 0 else ${sql.ref('counters.value')} + ${delta}::int end,
            events = ${sql.ref('counters.events')} + 1,
            last_position = excluded.last_position
          where ${sql.ref('counters.last_position')} < excluded.last_position`.execute(trx);
      }
    },
  };
}

export async function createCounterTable(db: Kysely<Database>): Promise<void> {
  await sql`create table if not exists counters (
    stream_name text primary key,
    value integer not null,
    events integer not null,
    last_position bigint not null
  )`.execute(db);
}

export async function counterRows(
  db: Kysely<Database>,
): Promise<{ stream_name: string; value: number; events: number }[]> {
  const res = await sql<{ stream_name: string; value: number; events: number }>`
    select stream_name, value, events from counters order by stream_name`.execute(db);
  return res.rows;
}
