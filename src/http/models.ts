import { z } from 'zod';
import { NotFound } from '../platform/errors';
import type { ModelInfo } from '../platform/llm/types';
import { auth } from './middleware/auth';
import { bearerSecurity, problemResponses } from './openapi';
import type { Resource } from './types';

const ModelView = z
  .object({
    id: z.string(),
    object: z.literal('model'),
    created: z.number().int().meta({ description: 'Unix seconds (when this instance loaded its catalog)' }),
    owned_by: z.string().meta({ description: 'The provider' }),
    provider: z.string(),
    local: z.boolean().meta({ description: 'Served by the built-in offline model' }),
    default: z.boolean().meta({ description: 'The model of a task or completion that names none' }),
    context_length: z.number().int(),
    default_max_tokens: z.number().int(),
    max_output_tokens: z.number().int(),
    prices: z.object({ prompt: z.number(), completion: z.number() }).meta({
      description:
        'Credits per 1M prompt / completion tokens; each part of a reply costs ceil(tokens × price / 1M)',
    }),
  })
  .meta({ id: 'Model' });
const ModelList = z.object({ object: z.literal('list'), data: z.array(ModelView) }).meta({ id: 'ModelList' });
const ModelId = z.object({ id: z.string().min(1).max(200) });

type ModelView = z.infer<typeof ModelView>;

/**
 * The model catalog with prices (API.md, Tasks). Shaped as OpenAI's model list, with our fields
 * added, so an OpenAI SDK pointed at this service can list models as well as complete with them.
 */
export const models: Resource = (router, { deps, openapi }) => {
  const catalog = deps.models;
  const created = Math.floor(deps.clock.now().getTime() / 1000);
  const view = (m: ModelInfo): ModelView => ({
    id: m.id,
    object: 'model',
    created,
    owned_by: m.provider,
    provider: m.provider,
    local: m.local,
    default: m.id === catalog.default().id,
    context_length: m.contextLength,
    default_max_tokens: m.defaultMaxTokens,
    max_output_tokens: m.maxOutputTokens,
    prices: { prompt: m.promptPrice, completion: m.completionPrice },
  });

  openapi.registerPath({
    method: 'get',
    path: '/models',
    summary: 'Available models with their prices',
    tags: ['tasks'],
    security: bearerSecurity,
    responses: {
      200: { description: 'Every model', content: { 'application/json': { schema: ModelList } } },
      ...problemResponses(401),
    },
  });
  router.get('/models', auth(), (ctx) => {
    ctx.body = { object: 'list', data: catalog.list().map(view) };
  });

  openapi.registerPath({
    method: 'get',
    path: '/models/{id}',
    summary: 'One model with its prices',
    tags: ['tasks'],
    security: bearerSecurity,
    request: { params: ModelId },
    responses: {
      200: { description: 'The model', content: { 'application/json': { schema: ModelView } } },
      ...problemResponses(401, 404),
    },
  });
  router.get('/models/:id', auth(), (ctx) => {
    const { id } = ModelId.parse(ctx.params);
    const model = catalog.get(id);
    if (!model) throw new NotFound(`No model ${id}.`);
    ctx.body = view(model);
  });
};
