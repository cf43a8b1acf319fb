import type { ColumnType, Generated } from 'kysely';

/** The event log. Written only by the event store adapter. */
export interface EventsTable {
  position: Generated<string>;
  txid: Generated<string>;
  event_id: string;
  stream_name: string;
  revision: string;
  category: string;
  type: string;
  data: unknown;
  metadata: unknown;
  recorded_at: Generated<Date>;
}

export interface StreamsTable {
  stream_name: string;
  revision: string;
}

export interface ProjectionCheckpointsTable {
  name: string;
  version: number;
  txid: string;
  position: string;
  updated_at: ColumnType<Date, Date | string | undefined, Date | string>;
}

export interface IdempotencyKeysTable {
  scope: string;
  key: string;
  request_hash: string;
  status: number | null;
  headers: Record<string, string> | null;
  body: Buffer | null;
  created_at: Generated<Date>;
  completed_at: Date | null;
}

export interface BalancesTable {
  user_id: string;
  posted: string;
  held: string;
  last_position: string;
}

export interface LedgerEntriesTable {
  id: string;
  user_id: string;
  position: string;
  type: string;
  amount: string;
  balance_after: string;
  reason: string | null;
  ref: string | null;
  created_at: Date;
}

export interface CodesTable {
  code: string;
  amount: string;
  max_uses: number;
  uses: number;
  expires_at: Date | null;
  revoked_at: Date | null;
  batch_id: string;
  issued_by: string;
  created_at: Date;
  last_position: string;
}

export interface CodeRedemptionsTable {
  use_id: string;
  code: string;
  user_id: string;
  amount: string;
  used_at: Date;
}

export interface UsersTable {
  id: string;
  username: string;
  email: string | null;
  nickname: string;
  permission: number;
  disabled: boolean;
  avatar_id: string | null;
  method: string;
  /** `[{provider, subject}]`: the external identities linked to the user. */
  identities: ColumnType<{ provider: string; subject: string }[], string, string>;
  created_at: Date;
  updated_at: Date;
  last_position: string;
}

export interface SessionsTable {
  id: string;
  user_id: string;
  method: string;
  user_agent: string | null;
  ip: string | null;
  created_at: Date;
  last_used_at: Date;
  expires_at: Date;
  revoked_at: Date | null;
  revoke_reason: string | null;
  last_position: string;
}

/** Every table, for kysely. Read-model tables are added here by the issues that own them. */
export interface Database {
  events: EventsTable;
  streams: StreamsTable;
  projection_checkpoints: ProjectionCheckpointsTable;
  idempotency_keys: IdempotencyKeysTable;
  balances: BalancesTable;
  ledger_entries: LedgerEntriesTable;
  codes: CodesTable;
  code_redemptions: CodeRedemptionsTable;
  users: UsersTable;
  sessions: SessionsTable;
}
