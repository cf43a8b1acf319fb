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

/** Every table, for kysely. Read-model tables are added here by the issues that own them. */
export interface Database {
  events: EventsTable;
  streams: StreamsTable;
  projection_checkpoints: ProjectionCheckpointsTable;
  idempotency_keys: IdempotencyKeysTable;
}
