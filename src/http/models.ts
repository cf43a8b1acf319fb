import { z } from 'zod';
import { NotFound } from '../platform/errors';
import type { ModelInfo } from '../platform/llm/types';
import { auth } from './middleware/auth';
import { pageOf, PageQuery } from '../queries/paging';
import { consistentRead } from './middleware/consistency';
import { bearerSecurity, problemResponses } from './openapi';
import type { AuthedState, Resource } from './types';

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
    image_tokens: z
      .number()
      .int()
      .meta({ description: 'The most one image of a prompt may count: a hold takes each image at this' }),
    prices: z.object({ prompt: z.number(), completion: z.number() }).meta({
      description:
        'Credits per 1M prompt / completion tokens; each part of a reply costs ceil(tokens × price / 1M)',
    }),
  })
  .meta({ id: 'Model' });
const ModelList = z
  .object({
    items: z.array(ModelView).meta({ description: 'This page of models' }),
    next_cursor: z.string().nullable(),
    object: z.literal('list'),
    data: z.array(ModelView).meta({ description: 'Every model, as OpenAI lists them (unpaged)' }),
  })
  .meta({ id: 'ModelList' });
const ModelId = z.object({ id: z.string().min(1).max(200) });

type ModelView = z.infer<typeof ModelView>;

/**
 * The model catalog with prices (API.md, Tasks). A list as every list of the API is (`items`,
 * `next_cursor`), and as OpenAI's model list (`object`, `data`: every model, since OpenAI's SDKs
 * do not page it), with our fields added, so an OpenAI SDK pointed at this service can list models
 * as well as complete with them.
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
    image_tokens: m.imageTokens,
    prices: { prompt: m.promptPrice, completion: m.completionPrice },
  });

  openapi.registerPath({
    method: 'get',
    path: '/models',
    summary: 'Available models with their prices',
    tags: ['tasks'],
    security: bearerSecurity,
    request: { query: PageQuery },
    responses: {
      200: { description: 'The models', content: { 'application/json': { schema: ModelList } } },
      ...problemResponses(401),
    },
  });
  router.get('/models', auth(), consistentRead<AuthedState>([]), (ctx) => {
    const all = catalog.list().map(view);
    ctx.body = { ...pageOf(all, PageQuery.parse(ctx.query)), object: 'list', data: all };
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
  router.get('/models/:id', auth(), consistentRead<AuthedState>([]), (ctx) => {
    const { id } = ModelId.parse(ctx.params);
    const model = catalog.get(id);
    if (!model) throw new NotFound(`No model ${id}.`);
    ctx.body = view(model);
  });
};
