import type { Kysely } from 'kysely';
import { BadRequest } from '../platform/errors';
import type { Database } from '../platform/schema';
import { decodeCursor, encodeCursor, type Page } from './paging';

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

/** A newest-first cursor: the last item's creation time and id. Anything else is a 400. */
export function timeIdCursor(cursor: string | undefined): [Date, string] | undefined {
  if (cursor === undefined) return undefined;
  const values = decodeCursor<unknown[]>(cursor);
  const [at, id] = values ?? [];
  const when = typeof at === 'string' ? new Date(at) : undefined;
  if (!when || Number.isNaN(when.getTime()) || typeof id !== 'string' || values?.length !== 2) {
    throw new BadRequest('cursor is not one this list gave out.');
  }
  return [when, id];
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
  const after = timeIdCursor(opts.cursor);
  let query = db
    .selectFrom('presets')
    .selectAll()
    .where('deleted', '=', false)
    .where((eb) => eb.or([eb('public', '=', true), eb('owner_id', '=', opts.userId)]));
  if (after) {
    const [at, id] = after;
    query = query.where((eb) =>
      eb.or([eb('created_at', '<', at), eb.and([eb('created_at', '=', at), eb('id', '<', id)])]),
    );
  }
  const rows = await query
    .orderBy('created_at', 'desc')
    .orderBy('id', 'desc')
    .limit(opts.limit + 1)
    .execute();
  const page = rows.slice(0, opts.limit);
  const last = page[page.length - 1];
  return {
    items: page.map(view),
    next_cursor:
      rows.length > opts.limit && last ? encodeCursor([last.created_at.toISOString(), last.id]) : null,
  };
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
