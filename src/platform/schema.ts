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
  /** Why the read model last failed, until a batch goes through again. */
  last_error: string | null;
}

export interface IdempotencyKeysTable {
  scope: string;
  key: string;
  request_hash: string;
  status: number | null;
  headers: Record<string, string> | null;
  body: Buffer | null;
  /** What the first request started that outlives it (a task id): a retry goes on from it. */
  ref: string | null;
  /** The lease of the request holding the key: only it writes the answer. */
  lease: string | null;
  /** The answer holds secrets and is sealed with a key drawn from the request. */
  sealed: Generated<boolean>;
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

/** A hold not yet captured, released or expired. */
export interface OpenHoldsTable {
  user_id: string;
  hold_id: string;
  amount: string;
  expires_at: Date;
  reserved_position: string;
  reserved_event_id: string;
  correlation_id: string | null;
}

/** The last ledger position applied to open_holds per user (replays below it change nothing). */
export interface OpenHoldsSeenTable {
  user_id: string;
  last_position: string;
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

export interface PresetsTable {
  id: string;
  owner_id: string;
  name: string;
  description: string;
  model: string;
  /** PresetParameters (events/presets.ts). */
  parameters: ColumnType<Record<string, unknown>, string, string>;
  /** `[{role, content}]`: the messages a chat from this preset starts with. */
  messages: ColumnType<{ role: string; content: string }[], string, string>;
  public: boolean;
  deleted: boolean;
  created_at: Date;
  updated_at: Date;
  last_position: string;
}

export interface ChatsTable {
  id: string;
  owner_id: string;
  title: string;
  preset_id: string;
  model: string;
  parameters: ColumnType<Record<string, unknown>, string, string>;
  deleted: boolean;
  created_at: Date;
  updated_at: Date;
  last_message_at: Date | null;
  last_position: string;
}

export interface ChatMessagesTable {
  id: string;
  chat_id: string;
  seq: number;
  role: string;
  /** ContentPart[] (events/chats.ts). */
  content: ColumnType<({ type: 'text'; text: string } | { type: 'image'; url: string })[], string, string>;
  visible: boolean;
  status: string | null;
  task_id: string | null;
  created_at: Date;
}

export interface TasksTable {
  id: string;
  user_id: string;
  chat_id: string | null;
  model: string;
  status: string;
  hold: string;
  prompt_tokens: number;
  completion_tokens: number;
  cost: string | null;
  message_id: string | null;
  error: string | null;
  claimed: boolean;
  created_at: Date;
  deadline_at: Date;
  finished_at: Date | null;
  last_position: string;
  /** Messages of a chat's history the task left out to fit its model's window. */
  omitted_messages: number;
}

/** Avatar JPEGs by the SHA-256 (hex) of their bytes. */
export interface AvatarBlobsTable {
  id: string;
  data: Buffer;
  created_at: Date;
}

/** The SMS sign-in code pending for a phone number (0005_sms_codes): its digest, never the code. */
export interface SmsCodesTable {
  phone: string;
  code_digest: string;
  sent_at: Date;
  expires_at: Date;
  attempts: ColumnType<number, number | undefined, number>;
  used_at: Date | null;
}

/** Every table, for kysely. Read-model tables are added here by the issues that own them. */
export interface Database {
  events: EventsTable;
  streams: StreamsTable;
  projection_checkpoints: ProjectionCheckpointsTable;
  idempotency_keys: IdempotencyKeysTable;
  balances: BalancesTable;
  ledger_entries: LedgerEntriesTable;
  open_holds: OpenHoldsTable;
  open_holds_seen: OpenHoldsSeenTable;
  codes: CodesTable;
  code_redemptions: CodeRedemptionsTable;
  users: UsersTable;
  sessions: SessionsTable;
  avatar_blobs: AvatarBlobsTable;
  sms_codes: SmsCodesTable;
  tasks: TasksTable;
  presets: PresetsTable;
  chats: ChatsTable;
  chat_messages: ChatMessagesTable;
}
