import type { Kysely } from 'kysely';
import type { Database } from '../platform/schema';
import { newestFirstPage, type Page } from './paging';

/** A preset as API.md shows one. */
export interface PresetView {
  id: string;
  name: string;
  description: string;
  model: string;
  parameters: Record<string, unknown>;
  messages: { role: string; content: string }[];
  public: boolean;
  owner_id: string;
  created_at: string;
  updated_at: string;
}

type PresetRow = Database['presets'] extends infer T
  ? { [K in keyof T]: T[K] extends { __select__: infer S } ? S : T[K] }
  : never;

/** json(b) columns arrive parsed from node-postgres; a driver that hands text gets parsed here. */
export function jsonColumn<T>(value: unknown): T {
  return (typeof value === 'string' ? JSON.parse(value) : value) as T;
}

function view(r: PresetRow): PresetView {
  return {
    id: r.id,
    name: r.name,
    description: r.description,
    model: r.model,
    parameters: jsonColumn(r.parameters),
    messages: jsonColumn(r.messages),
    public: r.public,
    owner_id: r.owner_id,
    created_at: r.created_at.toISOString(),
    updated_at: r.updated_at.toISOString(),
  };
}

/** Public presets and the user's own, newest first. */
export async function listPresets(
  db: Kysely<Database>,
  opts: { userId: string; limit: number; cursor?: string | undefined },
): Promise<Page<PresetView>> {
  const query = db
    .selectFrom('presets')
    .selectAll()
    .where('deleted', '=', false)
    .where((eb) => eb.or([eb('public', '=', true), eb('owner_id', '=', opts.userId)]));
  return newestFirstPage(query, opts, view);
}

/** A preset the user may see (public, or theirs), or undefined: another's private preset is not found. */
export async function findPreset(
  db: Kysely<Database>,
  presetId: string,
  userId: string,
): Promise<PresetView | undefined> {
  const row = await db
    .selectFrom('presets')
    .selectAll()
    .where('id', '=', presetId)
    .where('deleted', '=', false)
    .where((eb) => eb.or([eb('public', '=', true), eb('owner_id', '=', userId)]))
    .executeTakeFirst();
  return row ? view(row) : undefined;
}
