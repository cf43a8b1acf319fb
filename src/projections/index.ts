import type { CommandHandler } from '../commands/handler';
import { createLedgerCommands, type LedgerCommandsConfig } from '../commands/ledger/credits';
import { taskSettlementReactor, type LocalTasks } from '../commands/tasks/flow';
import { systemClock, type Clock } from '../platform/clock';
import { ConfigSchema } from '../platform/config';
import { redemptionReactor } from '../commands/codes/redeem';
import { signupGrantReactor } from '../commands/users/identity';
import { sessionsProjector, usersProjector } from './identity';
import { chatsProjector } from './chats';
import { codesProjector } from './codes';
import { openHoldsProjector } from './holds';
import { ledgerProjector } from './ledger';
import { presetsProjector } from './presets';
import { tasksProjector } from './tasks';
import type { Projector } from './types';

/** Every read model and reactor the service runs. Features add theirs here. */
export function allProjectors(
  commands: CommandHandler,
  options: { config?: LedgerCommandsConfig; clock?: Clock; localTasks?: LocalTasks } = {},
): Projector[] {
  const clock = options.clock ?? systemClock;
  const config = options.config ?? ConfigSchema.parse({});
  const ledger = createLedgerCommands({ commands, config, clock });
  return [
    ledgerProjector,
    openHoldsProjector,
    codesProjector,
    redemptionReactor(commands),
    usersProjector,
    sessionsProjector,
    signupGrantReactor(commands),
    presetsProjector,
    chatsProjector,
    tasksProjector,
    taskSettlementReactor({ commands, ledger, clock, localTasks: options.localTasks }),
  ];
}
