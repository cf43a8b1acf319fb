import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { ConfigError, type Config } from '../config';
import type { Logger } from '../logger';
import { IMAGE_TOKENS_AT_MOST } from './context';
import { PRICE_DECIMALS } from './cost';
import { createLocalProvider } from './localProvider';
import { createOpenAIProvider } from './openaiProvider';
import { TOKENS_PER_IMAGE } from './tokens';
import type { LlmProvider, ModelCatalog, ModelInfo } from './types';

/**
 * The model catalog: which models the service offers, who serves them, and at what price. It comes
 * from a JSON file (`MODELS_FILE`) and/or inline JSON (`MODELS_JSON`, whose entries replace the
 * file's of the same id); `models.example.json` shows every field. With neither set, the built-in
 * offline model is the only one, so a fresh machine can chat. Provider keys come from the
 * environment (`api_key_env`) or the file, and never appear in logs or errors.
 */

export const LOCAL_PROVIDER_ID = 'local';

/** The model of a fresh machine: priced so a reply visibly costs credits. */
export const LOCAL_ECHO: ModelInfo = {
  id: 'local-echo',
  provider: LOCAL_PROVIDER_ID,
  upstream: 'local-echo',
  contextLength: 8192,
  defaultMaxTokens: 512,
  maxOutputTokens: 2048,
  promptPrice: 10_000,
  completionPrice: 20_000,
  // It counts an image as the prompt's count does.
  imageTokens: TOKENS_PER_IMAGE,
  local: true,
};

const Id = z
  .string()
  .min(1)
  .max(200)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$/, 'letters, digits and . _ : / @ + - only');
const Comment = z.string().optional();
const Price = z
  .number()
  .min(0)
  .max(1e9)
  .refine((p) => hasAtMostDecimals(p, PRICE_DECIMALS), `at most ${PRICE_DECIMALS} decimals`);
const Tokens = z.number().int().min(1).max(100_000_000);

const OpenAIProviderConfig = z.strictObject({
  id: Id,
  type: z.literal('openai'),
  comment: Comment,
  base_url: z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' }),
  /** The key itself; prefer `api_key_env` so the file holds no secret. */
  api_key: z.string().min(1).optional(),
  /** The environment variable holding the key. */
  api_key_env: z
    .string()
    .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'an environment variable name')
    .optional(),
  max_tokens_param: z.enum(['max_tokens', 'max_completion_tokens']).optional(),
  headers: z.record(z.string(), z.string()).optional(),
  timeout_ms: z.number().int().min(100).max(3_600_000).optional(),
});
const LocalProviderConfig = z.strictObject({
  id: Id,
  type: z.literal('local'),
  comment: Comment,
  delay_ms: z.number().int().min(0).max(10_000).optional(),
});
const ProviderConfig = z.discriminatedUnion('type', [OpenAIProviderConfig, LocalProviderConfig]);
type ProviderConfig = z.infer<typeof ProviderConfig>;

const ModelConfig = z.strictObject({
  id: Id,
  comment: Comment,
  provider: Id,
  /** The name at the provider; default: `id`. */
  upstream: z.string().min(1).max(200).optional(),
  context_length: Tokens,
  default_max_tokens: Tokens,
  max_output_tokens: Tokens,
  prompt_price: Price,
  completion_price: Price,
  /** The most one image may count; default `IMAGE_TOKENS_AT_MOST` (85 for the built-in model). */
  image_tokens: Tokens.optional(),
});
type ModelConfig = z.infer<typeof ModelConfig>;

const uniqueIds = (items: { id: string }[]) => new Set(items.map((i) => i.id)).size === items.length;

export const ModelsFileSchema = z.strictObject({
  comment: Comment,
  default_model: Id.optional(),
  providers: z.array(ProviderConfig).default([]).refine(uniqueIds, 'a provider id is listed twice'),
  models: z.array(ModelConfig).default([]).refine(uniqueIds, 'a model id is listed twice'),
});
type ModelsFile = z.infer<typeof ModelsFileSchema>;

export interface CatalogOptions {
  /** Where `api_key_env` keys are read. Default `process.env`. */
  env?: Record<string, string | undefined>;
  logger?: Logger | undefined;
}

type CatalogConfig = Pick<
  Config,
  'MODELS_FILE' | 'MODELS_JSON' | 'LOCAL_MODEL_DELAY_MS' | 'LLM_IDLE_TIMEOUT_MS'
>;

/** The catalog of the configuration; throws a `ConfigError` naming what is wrong. */
export function createModelCatalog(config: CatalogConfig, options: CatalogOptions = {}): ModelCatalog {
  const sources: { variable: string; file: ModelsFile }[] = [];
  if (config.MODELS_FILE) {
    sources.push({
      variable: 'MODELS_FILE',
      file: parseSource('MODELS_FILE', readModelsFile(config.MODELS_FILE)),
    });
  }
  if (config.MODELS_JSON) {
    sources.push({ variable: 'MODELS_JSON', file: parseSource('MODELS_JSON', config.MODELS_JSON) });
  }
  if (sources.length === 0) return catalogOf([LOCAL_ECHO], LOCAL_ECHO, builtInProviders(config));

  const variable = sources.map((s) => s.variable).join(' + ');
  const merged = merge(sources.map((s) => s.file));
  const problem = (message: string) => new ConfigError([{ variable, message }]);

  const providerConfigs = new Map<string, ProviderConfig>([
    [LOCAL_PROVIDER_ID, { id: LOCAL_PROVIDER_ID, type: 'local' }],
  ]);
  for (const p of merged.providers) providerConfigs.set(p.id, p);
  if (merged.models.length === 0) throw problem('lists no models');
  const models = merged.models.map((m) => modelInfo(m, providerConfigs, problem));
  const defaultModel = merged.default_model ?? models[0]!.id;
  const fallback = models.find((m) => m.id === defaultModel);
  if (!fallback) throw problem(`default_model "${defaultModel}" is not one of the models`);

  const env = options.env ?? process.env;
  const providers = new Map<string, () => LlmProvider>();
  for (const p of providerConfigs.values()) {
    if (!models.some((m) => m.provider === p.id)) continue;
    providers.set(p.id, once(providerFactory(p, config, env, options.logger, problem)));
  }
  return catalogOf(models, fallback, providers);
}

function builtInProviders(config: CatalogConfig): Map<string, () => LlmProvider> {
  const local = createLocalProvider({ delayMs: config.LOCAL_MODEL_DELAY_MS });
  return new Map([[LOCAL_PROVIDER_ID, () => local]]);
}

function catalogOf(
  models: ModelInfo[],
  fallback: ModelInfo,
  providers: Map<string, () => LlmProvider>,
): ModelCatalog {
  const byId = new Map(models.map((m) => [m.id, m]));
  return {
    list: () => [...models],
    get: (id) => byId.get(id),
    default: () => fallback,
    provider(model) {
      const make = providers.get(model.provider);
      if (!make) throw new Error(`model ${model.id}: provider ${model.provider} is not in the catalog`);
      return make();
    },
  };
}

function readModelsFile(file: string): string {
  try {
    return fs.readFileSync(path.resolve(file), 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'unreadable';
    throw new ConfigError([{ variable: 'MODELS_FILE', message: `cannot read ${file} (${code})` }]);
  }
}

function parseSource(variable: string, text: string): ModelsFile {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    // V8's message quotes the text around the error, which may be a key: give the position only.
    const at = /position (\d+)/.exec((err as Error).message)?.[1];
    throw new ConfigError([{ variable, message: `not valid JSON${at ? ` (at character ${at})` : ''}` }]);
  }
  const parsed = ModelsFileSchema.safeParse(json);
  if (!parsed.success) {
    throw new ConfigError(
      parsed.error.issues.map((i) => ({ variable, message: `${pathOf(i.path)}: ${i.message}` })),
    );
  }
  return parsed.data;
}

const pathOf = (p: readonly PropertyKey[]) =>
  p.reduce<string>(
    (s, k) => (typeof k === 'number' ? `${s}[${k}]` : s ? `${s}.${String(k)}` : String(k)),
    '',
  ) || '(root)';

/** Later sources replace earlier entries of the same id, in place; new ones go at the end. */
function merge(files: ModelsFile[]): ModelsFile {
  const providers = new Map<string, ProviderConfig>();
  const models = new Map<string, ModelConfig>();
  let defaultModel: string | undefined;
  for (const f of files) {
    for (const p of f.providers) providers.set(p.id, p);
    for (const m of f.models) models.set(m.id, m);
    defaultModel = f.default_model ?? defaultModel;
  }
  return {
    providers: [...providers.values()],
    models: [...models.values()],
    ...(defaultModel ? { default_model: defaultModel } : {}),
  };
}

function modelInfo(
  m: ModelConfig,
  providers: Map<string, ProviderConfig>,
  problem: (message: string) => ConfigError,
): ModelInfo {
  const provider = providers.get(m.provider);
  if (!provider) throw problem(`model "${m.id}": provider "${m.provider}" is not in providers`);
  if (m.max_output_tokens >= m.context_length) {
    throw problem(`model "${m.id}": max_output_tokens must be below context_length`);
  }
  if (m.default_max_tokens > m.max_output_tokens) {
    throw problem(`model "${m.id}": default_max_tokens must be at most max_output_tokens`);
  }
  return {
    id: m.id,
    provider: m.provider,
    upstream: m.upstream ?? m.id,
    contextLength: m.context_length,
    defaultMaxTokens: m.default_max_tokens,
    maxOutputTokens: m.max_output_tokens,
    promptPrice: m.prompt_price,
    completionPrice: m.completion_price,
    imageTokens: m.image_tokens ?? (provider.type === 'local' ? TOKENS_PER_IMAGE : IMAGE_TOKENS_AT_MOST),
    local: provider.type === 'local',
  };
}

function providerFactory(
  p: ProviderConfig,
  config: CatalogConfig,
  env: Record<string, string | undefined>,
  logger: Logger | undefined,
  problem: (message: string) => ConfigError,
): () => LlmProvider {
  if (p.type === 'local') {
    const delayMs = p.delay_ms ?? config.LOCAL_MODEL_DELAY_MS;
    return () => createLocalProvider({ delayMs });
  }
  if (p.api_key && p.api_key_env) throw problem(`provider "${p.id}": give api_key or api_key_env, not both`);
  const apiKey = p.api_key_env ? env[p.api_key_env]?.trim() : p.api_key;
  // Checked now, not at the first request: a missing key should stop start-up, not fail chats.
  if (p.api_key_env && !apiKey) throw problem(`provider "${p.id}": ${p.api_key_env} is not set`);
  return () =>
    createOpenAIProvider({
      id: p.id,
      baseURL: p.base_url,
      apiKey,
      idleTimeoutMs: p.timeout_ms ?? config.LLM_IDLE_TIMEOUT_MS,
      maxTokensParam: p.max_tokens_param,
      headers: p.headers,
      logger,
    });
}

function once<T>(make: () => T): () => T {
  let made: { value: T } | undefined;
  return () => (made ??= { value: make() }).value;
}

function hasAtMostDecimals(n: number, decimals: number): boolean {
  const scaled = n * 10 ** decimals;
  return Math.abs(scaled - Math.round(scaled)) < 1e-6;
}
