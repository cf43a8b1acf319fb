import path from 'node:path';
import { ConfigError, testConfig } from '../../src/platform/config';
import { createModelCatalog, LOCAL_ECHO } from '../../src/platform/llm/catalog';

const config = (overrides: { MODELS_JSON?: string; MODELS_FILE?: string } = {}) => testConfig(overrides);
const json = (value: unknown) => JSON.stringify(value);

const openai = {
  id: 'openai',
  type: 'openai',
  base_url: 'https://api.openai.com/v1',
  api_key_env: 'TEST_OPENAI_KEY',
};
const gpt = {
  id: 'gpt-4o-mini',
  provider: 'openai',
  context_length: 128000,
  default_max_tokens: 1024,
  max_output_tokens: 16384,
  prompt_price: 150,
  completion_price: 600,
};
const env = { TEST_OPENAI_KEY: 'sk-secret-value-123' };

function configError(make: () => unknown): ConfigError {
  try {
    make();
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

describe('model catalog', () => {
  it('offers the built-in local model alone when nothing is configured', () => {
    const catalog = createModelCatalog(config());
    expect(catalog.list()).toEqual([LOCAL_ECHO]);
    expect(catalog.default()).toEqual(LOCAL_ECHO);
    expect(catalog.get('local-echo')).toMatchObject({ local: true, provider: 'local' });
    expect(catalog.get('gpt-4o-mini')).toBeUndefined();
    expect(LOCAL_ECHO.promptPrice).toBeGreaterThan(0);
    expect(LOCAL_ECHO.completionPrice).toBeGreaterThan(0);
    expect(typeof catalog.provider(LOCAL_ECHO).stream).toBe('function');
  });

  it('reads providers and models from MODELS_JSON, in order, with the upstream name defaulting to the id', () => {
    const catalog = createModelCatalog(
      config({
        MODELS_JSON: json({
          default_model: 'qwen',
          providers: [
            openai,
            {
              id: 'dashscope',
              type: 'openai',
              base_url: 'https://dashscope.aliyuncs.com/compatible-mode/v1',
            },
          ],
          models: [
            gpt,
            {
              ...gpt,
              id: 'qwen',
              provider: 'dashscope',
              upstream: 'qwen-plus',
              prompt_price: 0.5,
              // Qwen's vision models count a large image at up to 16,384 tokens.
              image_tokens: 16384,
            },
            {
              ...gpt,
              id: 'echo',
              provider: 'local',
              context_length: 4096,
              max_output_tokens: 1024,
              default_max_tokens: 100,
            },
          ],
        }),
      }),
      { env },
    );
    expect(catalog.list().map((m) => m.id)).toEqual(['gpt-4o-mini', 'qwen', 'echo']);
    expect(catalog.get('gpt-4o-mini')).toEqual({
      id: 'gpt-4o-mini',
      provider: 'openai',
      upstream: 'gpt-4o-mini',
      contextLength: 128000,
      defaultMaxTokens: 1024,
      maxOutputTokens: 16384,
      promptPrice: 150,
      completionPrice: 600,
      // Unsaid, an image is held at the most GPT-4o counts for one at high detail.
      imageTokens: 1445,
      local: false,
    });
    expect(catalog.get('qwen')).toMatchObject({
      upstream: 'qwen-plus',
      promptPrice: 0.5,
      imageTokens: 16384,
      local: false,
    });
    // `local` is always there as a provider: a configuration may offer the built-in model too. It
    // counts an image as the prompt's count does.
    expect(catalog.get('echo')).toMatchObject({ local: true, imageTokens: 85 });
    expect(LOCAL_ECHO.imageTokens).toBe(85);
    expect(catalog.default().id).toBe('qwen');
    // One client per provider, shared by its models.
    expect(catalog.provider(catalog.get('gpt-4o-mini')!)).toBe(catalog.provider(catalog.get('gpt-4o-mini')!));
  });

  it('takes the first model as the default when none is named', () => {
    const catalog = createModelCatalog(
      config({ MODELS_JSON: json({ providers: [openai], models: [gpt] }) }),
      { env },
    );
    expect(catalog.default().id).toBe('gpt-4o-mini');
  });

  it('refuses to start when a provider key named by api_key_env is not set, without echoing any key', () => {
    const err = configError(() =>
      createModelCatalog(config({ MODELS_JSON: json({ providers: [openai], models: [gpt] }) }), { env: {} }),
    );
    expect(err.problems).toEqual([
      { variable: 'MODELS_JSON', message: 'provider "openai": TEST_OPENAI_KEY is not set' },
    ]);

    const inline = configError(() =>
      createModelCatalog(
        config({
          MODELS_JSON: json({
            providers: [{ id: 'x', type: 'openai', base_url: 'ftp://nope', api_key: 'sk-inline-secret' }],
            models: [{ ...gpt, provider: 'x' }],
          }),
        }),
      ),
    );
    expect(inline.message).toMatch(/providers\[0\]\.base_url/);
    expect(inline.message).not.toContain('sk-inline-secret');
    const badJson = configError(() =>
      createModelCatalog(config({ MODELS_JSON: '{"api_key": sk-inline-secret}' })),
    );
    expect(badJson.message).toMatch(/MODELS_JSON: not valid JSON/);
    expect(badJson.message).not.toContain('sk-inline-secret');
  });

  it.each([
    [
      'a model of an unknown provider',
      { models: [{ ...gpt, provider: 'nobody' }] },
      /provider "nobody" is not in providers/,
    ],
    [
      'the same model twice',
      { providers: [openai], models: [gpt, gpt] },
      /models: a model id is listed twice/,
    ],
    [
      'output as long as the context',
      { providers: [openai], models: [{ ...gpt, max_output_tokens: 128000 }] },
      /max_output_tokens must be below context_length/,
    ],
    [
      'a default above the maximum',
      { providers: [openai], models: [{ ...gpt, default_max_tokens: 20000 }] },
      /default_max_tokens must be at most max_output_tokens/,
    ],
    [
      'a price with too many decimals',
      { providers: [openai], models: [{ ...gpt, prompt_price: 0.0000001 }] },
      /models\[0\]\.prompt_price: at most 6 decimals/,
    ],
    [
      'a negative price',
      { providers: [openai], models: [{ ...gpt, completion_price: -1 }] },
      /models\[0\]\.completion_price/,
    ],
    ['a misspelt field', { providers: [openai], models: [{ ...gpt, context_lenght: 5 }] }, /context_lenght/],
    [
      'images counted at nothing',
      { providers: [openai], models: [{ ...gpt, image_tokens: 0 }] },
      /models\[0\]\.image_tokens/,
    ],
    ['no models', { providers: [openai], models: [] }, /lists no models/],
    [
      'an unknown default model',
      { default_model: 'gpt-5', providers: [openai], models: [gpt] },
      /default_model "gpt-5"/,
    ],
    [
      'an unknown provider type',
      { providers: [{ ...openai, type: 'anthropic' }], models: [gpt] },
      /providers\[0\]/,
    ],
    [
      'api_key and api_key_env both',
      { providers: [{ ...openai, api_key: 'k' }], models: [gpt] },
      /api_key or api_key_env, not both/,
    ],
  ])('refuses %s', (_name, file, message) => {
    const err = configError(() => createModelCatalog(config({ MODELS_JSON: json(file) }), { env }));
    expect(err.problems[0]?.variable).toBe('MODELS_JSON');
    expect(err.message).toMatch(message);
  });

  it('merges MODELS_JSON over MODELS_FILE: same ids replaced in place, new ones added', () => {
    const catalog = createModelCatalog(
      config({
        MODELS_FILE: path.join(__dirname, '../../models.example.json'),
        MODELS_JSON: json({
          default_model: 'extra',
          models: [
            { ...gpt, prompt_price: 1 },
            { ...gpt, id: 'extra', provider: 'local' },
          ],
        }),
      }),
      { env: { OPENAI_API_KEY: 'a', DEEPSEEK_API_KEY: 'b', DASHSCOPE_API_KEY: 'c', VLLM_API_KEY: 'd' } },
    );
    const ids = catalog.list().map((m) => m.id);
    expect(ids[0]).toBe('gpt-4o-mini');
    expect(ids.at(-1)).toBe('extra');
    expect(catalog.get('gpt-4o-mini')?.promptPrice).toBe(1);
    expect(catalog.default().id).toBe('extra');
  });

  it('accepts models.example.json, with its OpenAI, DeepSeek, DashScope, vLLM and Ollama providers', () => {
    const catalog = createModelCatalog(
      config({ MODELS_FILE: path.join(__dirname, '../../models.example.json') }),
      {
        env: { OPENAI_API_KEY: 'a', DEEPSEEK_API_KEY: 'b', DASHSCOPE_API_KEY: 'c', VLLM_API_KEY: 'd' },
      },
    );
    expect(new Set(catalog.list().map((m) => m.provider))).toEqual(
      new Set(['openai', 'deepseek', 'dashscope', 'vllm', 'ollama', 'local']),
    );
    for (const model of catalog.list()) expect(catalog.provider(model)).toBeDefined();
  });

  it('names MODELS_FILE when the file cannot be read', () => {
    const err = configError(() => createModelCatalog(config({ MODELS_FILE: '/nonexistent/models.json' })));
    expect(err.problems).toEqual([
      { variable: 'MODELS_FILE', message: 'cannot read /nonexistent/models.json (ENOENT)' },
    ]);
  });
});
