import type { Migration } from 'kysely';
import * as eventstore from './0001_eventstore';
import * as idempotency from './0002_idempotency';
import * as ledger from './0003_ledger';
import * as identity from './0004_identity';
import * as smsCodes from './0005_sms_codes';
import * as avatars from './0006_avatars';
import * as holds from './0007_holds';
import * as chats from './0008_chats';
import * as tasks from './0009_tasks';
import * as idempotencyRef from './0010_idempotency_ref';
import * as projectionErrors from './0011_projection_errors';
import * as taskOmittedMessages from './0012_task_omitted_messages';
import * as taskListFilters from './0013_task_list_filters';

/** Every migration, in order. Add new ones at the end; never edit one that has shipped. */
export const migrations: Record<string, Migration> = {
  '0001_eventstore': eventstore,
  '0002_idempotency': idempotency,
  '0003_ledger': ledger,
  '0004_identity': identity,
  '0005_sms_codes': smsCodes,
  '0006_avatars': avatars,
  '0007_holds': holds,
  '0008_chats': chats,
  '0009_tasks': tasks,
  '0010_idempotency_ref': idempotencyRef,
  '0011_projection_errors': projectionErrors,
  '0012_task_omitted_messages': taskOmittedMessages,
  '0013_task_list_filters': taskListFilters,
};
