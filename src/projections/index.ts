import type { CommandHandler } from '../commands/handler';
import { redemptionReactor } from '../commands/codes/redeem';
import { signupGrantReactor } from '../commands/users/identity';
import { sessionsProjector, usersProjector } from './identity';
import { codesProjector } from './codes';
import { ledgerProjector } from './ledger';
import type { Projector } from './types';

/** Every read model and reactor the service runs. Features add theirs here. */
export function allProjectors(commands: CommandHandler): Projector[] {
  return [
    ledgerProjector,
    codesProjector,
    redemptionReactor(commands),
    usersProjector,
    sessionsProjector,
    signupGrantReactor(commands),
  ];
}
