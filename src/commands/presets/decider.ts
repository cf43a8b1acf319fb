import type { Command, Decider } from '../handler';
import { PresetFieldsSchema, type PresetEvent, type PresetFields } from '../../events/presets';
import { BadRequest, Forbidden, NotFound } from '../../platform/errors';

export class PresetNotFound extends NotFound {}
export class InvalidPreset extends BadRequest {}
export class UnknownModel extends BadRequest {}

/** Who runs a command: admins may publish presets and change public ones. */
export interface Actor {
  userId: string;
  admin: boolean;
}

export interface Preset extends PresetFields {
  presetId: string;
  ownerId: string;
  createdAt: string;
  updatedAt: string;
}

export interface PresetState {
  preset: Preset | null;
  deleted: boolean;
}

export const initialPreset = (): PresetState => ({ preset: null, deleted: false });

export type PresetCommand =
  | Command<'CreatePreset', { presetId: string; actor: Actor; fields: PresetFields }>
  | Command<'UpdatePreset', { presetId: string; actor: Actor; changes: Partial<PresetFields> }>
  | Command<'DeletePreset', { presetId: string; actor: Actor }>;

/** Public presets are everyone's to read; private ones only their owner's. */
export function presetVisibleTo(s: PresetState, userId: string): s is PresetState & { preset: Preset } {
  return s.preset !== null && !s.deleted && (s.preset.public || s.preset.ownerId === userId);
}

/** The owner changes a preset; admins also change (and unpublish) public ones. */
function mayChange(p: Preset, actor: Actor): boolean {
  return p.ownerId === actor.userId || (p.public && actor.admin);
}

export interface PresetRules {
  /** Whether the model catalog has this model. */
  modelExists?: (modelId: string) => boolean;
}

const FIELD_NAMES = ['name', 'description', 'model', 'parameters', 'messages', 'public'] as const;

/**
 * A preset's rules. Another user's private preset is answered exactly like a missing one (404);
 * a public preset its reader may not change is 403; publishing needs an admin (403).
 */
export function presetRules(rules: PresetRules = {}) {
  const modelExists = rules.modelExists ?? ((id: string) => id.trim() !== '');

  function validFields(fields: PresetFields): PresetFields {
    const parsed = PresetFieldsSchema.safeParse(fields);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const where = issue?.path.map(String).join('.') ?? '';
      throw new InvalidPreset(`${where || 'preset'}: ${issue?.message ?? 'invalid'}`);
    }
    if (!modelExists(parsed.data.model)) {
      throw new UnknownModel(`Model ${parsed.data.model} is not available.`);
    }
    return parsed.data;
  }

  function decide(cmd: PresetCommand, s: PresetState): PresetEvent[] {
    const now = cmd.metadata.now.toISOString();
    switch (cmd.type) {
      case 'CreatePreset': {
        const { presetId, actor } = cmd.data;
        if (s.preset) return []; // the same preset again (a retried request): idempotent
        const fields = validFields(cmd.data.fields);
        if (fields.public && !actor.admin) throw new Forbidden('Only admins may create public presets.');
        return [
          { type: 'PresetCreated', data: { presetId, ownerId: actor.userId, ...fields, createdAt: now } },
        ];
      }
      case 'UpdatePreset': {
        const { presetId, actor, changes } = cmd.data;
        if (!presetVisibleTo(s, actor.userId)) throw new PresetNotFound(`No preset ${presetId}.`);
        const p = s.preset;
        if (!mayChange(p, actor)) throw new Forbidden('Only its owner or an admin may change this preset.');
        if (changes.public === true && !actor.admin)
          throw new Forbidden('Only admins may make presets public.');
        const { presetId: _i, ownerId: _o, createdAt: _c, updatedAt: _u, ...current } = p;
        const next = validFields({ ...current, ...definedOnly(changes) });
        const changed: Partial<PresetFields> = {};
        for (const name of FIELD_NAMES) {
          if (JSON.stringify(next[name]) !== JSON.stringify(current[name])) {
            (changed as Record<string, unknown>)[name] = next[name];
          }
        }
        if (Object.keys(changed).length === 0) return [];
        return [
          { type: 'PresetUpdated', data: { presetId, ...changed, updatedBy: actor.userId, updatedAt: now } },
        ];
      }
      case 'DeletePreset': {
        const { presetId, actor } = cmd.data;
        if (!presetVisibleTo(s, actor.userId)) throw new PresetNotFound(`No preset ${presetId}.`);
        if (!mayChange(s.preset, actor))
          throw new Forbidden('Only its owner or an admin may delete this preset.');
        return [{ type: 'PresetDeleted', data: { presetId, deletedBy: actor.userId, deletedAt: now } }];
      }
    }
    const _exhaustive: never = cmd;
    return _exhaustive;
  }

  const decider: Decider<PresetState, PresetCommand, PresetEvent> = {
    name: 'preset',
    initialState: initialPreset,
    evolve: evolvePreset,
    decide,
  };
  return decider;
}

/** exactOptionalPropertyTypes: a key present as undefined is no change. */
function definedOnly<T extends object>(o: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as {
    [K in keyof T]?: Exclude<T[K], undefined>;
  };
}

export function evolvePreset(s: PresetState, e: PresetEvent): PresetState {
  switch (e.type) {
    case 'PresetCreated': {
      const { createdAt, ...rest } = e.data;
      s.preset = { ...rest, createdAt, updatedAt: createdAt };
      break;
    }
    case 'PresetUpdated': {
      if (!s.preset) break;
      const { presetId: _p, updatedBy: _b, updatedAt, ...changes } = e.data;
      s.preset = { ...s.preset, ...definedOnly(changes), updatedAt };
      break;
    }
    case 'PresetDeleted':
      s.deleted = true;
      break;
  }
  return s;
}

/** The preset decider with any non-empty model id accepted (until the model catalog is wired in). */
export const presetDecider = presetRules();
