import { z } from 'zod';
import { presetRules, type Actor, type Preset, type PresetRules } from '../commands/presets/decider';
import {
  MAX_PRESET_MESSAGES,
  PresetParametersSchema,
  TemplateMessageSchema,
  presetStream,
} from '../events/presets';
import { NotFound } from '../platform/errors';
import { PageQuery } from '../queries/paging';
import { findPreset, listPresets, type PresetView } from '../queries/presets';
import { auth } from './middleware/auth';
import { consistentRead, setEventPosition } from './middleware/consistency';
import { API_BASE, bearerSecurity, problemResponses } from './openapi';
import type { AuthedState, AuthUser, Resource } from './types';

const Name = z.string().trim().min(1).max(100);
const Description = z.string().max(1000);
const Model = z.string().trim().min(1).max(200);
const Messages = z.array(TemplateMessageSchema).max(MAX_PRESET_MESSAGES);

const CreatePresetBody = z
  .strictObject({
    name: Name,
    description: Description.default(''),
    model: Model,
    parameters: PresetParametersSchema.default({}),
    messages: Messages.default([]),
    public: z.boolean().default(false),
  })
  .meta({ id: 'CreatePreset' });
const UpdatePresetBody = z
  .strictObject({
    name: Name.optional(),
    description: Description.optional(),
    model: Model.optional(),
    parameters: PresetParametersSchema.optional(),
    messages: Messages.optional(),
    public: z.boolean().optional(),
  })
  .refine((b) => Object.values(b).some((v) => v !== undefined), 'give at least one field to change')
  .meta({ id: 'UpdatePreset', description: '`parameters` and `messages` are replaced whole.' });
const PresetId = z.object({ id: z.string().min(1).max(100) });

/** A preset as the write side has it: commands answer without waiting for the read model. */
export function presetView(p: Preset): PresetView {
  return {
    id: p.presetId,
    name: p.name,
    description: p.description,
    model: p.model,
    parameters: p.parameters,
    messages: p.messages,
    public: p.public,
    owner_id: p.ownerId,
    created_at: p.createdAt,
    updated_at: p.updatedAt,
  };
}

export const actorOf = (user: AuthUser): Actor => ({ userId: user.id, admin: user.permission >= 2 });

/**
 * Presets (API.md): public presets and the caller's own. `rules.modelExists` checks a preset's model
 * against the model catalog.
 */
export function presetsResource(rules: PresetRules = {}): Resource {
  const decider = presetRules(rules);
  return (router, { deps, openapi }) => {
    const { commands, clock, ids } = deps;
    const db = deps.db.db;
    const metadataOf = (ctx: { state: AuthedState }) => ({
      now: clock.now(),
      actorId: ctx.state.user.id,
      requestId: ctx.state.requestId,
    });

    openapi.registerPath({
      method: 'get',
      path: '/presets',
      summary: 'Public presets and mine',
      tags: ['presets'],
      security: bearerSecurity,
      request: { query: PageQuery },
      responses: { 200: { description: '{items, next_cursor}' }, ...problemResponses(400, 401, 504) },
    });
    router.get('/presets', auth(), consistentRead<AuthedState>(['presets']), async (ctx) => {
      const { limit, cursor } = PageQuery.parse(ctx.query);
      ctx.body = await listPresets(db, { userId: ctx.state.user.id, limit, cursor });
    });

    openapi.registerPath({
      method: 'post',
      path: '/presets',
      summary: 'Create a preset (public ones: admins only)',
      tags: ['presets'],
      security: bearerSecurity,
      request: { body: { content: { 'application/json': { schema: CreatePresetBody } } } },
      responses: { 201: { description: 'The preset' }, ...problemResponses(400, 401, 403) },
    });
    router.post('/presets', auth(), async (ctx) => {
      const body = CreatePresetBody.parse(ctx.request.body);
      const presetId = ids.next();
      const r = await commands.handle(
        decider,
        presetStream(presetId),
        {
          type: 'CreatePreset',
          data: { presetId, actor: actorOf(ctx.state.user), fields: body },
          metadata: metadataOf(ctx),
        },
        { newStream: true },
      );
      if (!r.state.preset) throw new Error('a preset was created but its state has none');
      setEventPosition(ctx, r.position);
      ctx.status = 201;
      ctx.set('Location', `${API_BASE}/presets/${presetId}`);
      ctx.body = presetView(r.state.preset);
    });

    openapi.registerPath({
      method: 'get',
      path: '/presets/{id}',
      summary: 'A preset (public, or mine)',
      tags: ['presets'],
      security: bearerSecurity,
      request: { params: PresetId },
      responses: { 200: { description: 'The preset' }, ...problemResponses(401, 404, 504) },
    });
    router.get('/presets/:id', auth(), consistentRead<AuthedState>(['presets']), async (ctx) => {
      const { id } = PresetId.parse(ctx.params);
      const found = await findPreset(db, id, ctx.state.user.id);
      if (!found) throw new NotFound(`No preset ${id}.`);
      ctx.body = found;
    });

    openapi.registerPath({
      method: 'patch',
      path: '/presets/{id}',
      summary: 'Change a preset (mine, or a public one as an admin)',
      tags: ['presets'],
      security: bearerSecurity,
      request: {
        params: PresetId,
        body: { content: { 'application/json': { schema: UpdatePresetBody } } },
      },
      responses: { 200: { description: 'The preset' }, ...problemResponses(400, 401, 403, 404) },
    });
    router.patch('/presets/:id', auth(), async (ctx) => {
      const { id } = PresetId.parse(ctx.params);
      const changes = UpdatePresetBody.parse(ctx.request.body);
      const r = await commands.handle(decider, presetStream(id), {
        type: 'UpdatePreset',
        data: { presetId: id, actor: actorOf(ctx.state.user), changes: withoutUndefined(changes) },
        metadata: metadataOf(ctx),
      });
      if (!r.state.preset) throw new NotFound(`No preset ${id}.`);
      setEventPosition(ctx, r.position);
      ctx.body = presetView(r.state.preset);
    });

    openapi.registerPath({
      method: 'delete',
      path: '/presets/{id}',
      summary: 'Delete a preset (chats started from it keep their copy)',
      tags: ['presets'],
      security: bearerSecurity,
      request: { params: PresetId },
      responses: { 204: { description: 'Deleted' }, ...problemResponses(401, 403, 404) },
    });
    router.delete('/presets/:id', auth(), async (ctx) => {
      const { id } = PresetId.parse(ctx.params);
      const r = await commands.handle(decider, presetStream(id), {
        type: 'DeletePreset',
        data: { presetId: id, actor: actorOf(ctx.state.user) },
        metadata: metadataOf(ctx),
      });
      setEventPosition(ctx, r.position);
      ctx.status = 204;
    });
  };
}

/** exactOptionalPropertyTypes: a key given as undefined is not a change. */
function withoutUndefined<T extends object>(o: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as {
    [K in keyof T]?: Exclude<T[K], undefined>;
  };
}

/** Presets with any non-empty model id accepted (until the model catalog is wired in). */
export const presets: Resource = presetsResource();
