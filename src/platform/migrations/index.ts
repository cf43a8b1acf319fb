import type { Migration } from 'kysely';
import * as eventstore from './0001_eventstore';
import * as idempotency from './0002_idempotency';
import * as ledger from './0003_ledger';
import * as identity from './0004_identity';

/** Every migration, in order. Add new ones at the end; never edit one that has shipped. */
export const migrations: Record<string, Migration> = {
  '0001_eventstore': eventstore,
  '0002_idempotency': idempotency,
  '0003_ledger': ledger,
  '0004_identity': identity,
};
