import http from 'node:http';
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import supertest from 'supertest';
import { createApp } from '../../src/http/app';
import { allResources } from '../../src/http/resources';
import { createModelCatalog } from '../../src/platform/llm/catalog';
import { createTestApp, type TestApp } from '../support/app';
import { bearer, mintToken } from '../support/tokens';

const API = '/api/v1';

let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({ resources: [...allResources] });
});
afterAll(() => t?.close());

describe('GET /models with nothing configured', () => {
  it('answers 401 problem+json without a token', async () => {
    const res = await t.http.get(`${API}/models`);
    expect(res.status).toBe(401);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  });

  it('lists the built-in local model, marked local, with its prices', async () => {
    const res = await t.http.get(`${API}/models`).set('Authorization', bearer());
    expect(res.status).toBe(200);
    expect(res.body).toEqual({
      object: 'list',
      data: [
        {
          id: 'local-echo',
          object: 'model',
          created: expect.any(Number),
          owned_by: 'local',
          provider: 'local',
          local: true,
          default: true,
          context_length: 8192,
          default_max_tokens: 512,
          max_output_tokens: 2048,
          image_tokens: 85,
          prices: { prompt: 10_000, completion: 20_000 },
        },
      ],
      items: res.body.data,
      next_cursor: null,
    });
  });

  it('answers one model by id, and 404 problem+json for an unknown one', async () => {
    const one = await t.http.get(`${API}/models/local-echo`).set('Authorization', bearer());
    expect(one.status).toBe(200);
    expect(one.body).toMatchObject({ id: 'local-echo', local: true });
    const missing = await t.http.get(`${API}/models/gpt-4o`).set('Authorization', bearer());
    expect(missing.status).toBe(404);
    expect(missing.body).toMatchObject({ status: 404, type: '/problems/not-found' });
  });

  it('accepts a preset of a catalog model and refuses one of an unknown model with 400', async () => {
    const auth = bearer();
    const preset = {
      name: 'Echo',
      model: 'local-echo',
      messages: [{ role: 'system', content: 'Be brief.' }],
    };
    expect((await t.http.post(`${API}/presets`).set('Authorization', auth).send(preset)).status).toBe(201);
    const unknown = await t.http
      .post(`${API}/presets`)
      .set('Authorization', auth)
      .send({ ...preset, model: 'gpt-4o' });
    expect(unknown.status).toBe(400);
    expect(unknown.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(unknown.body.detail).toMatch(/gpt-4o/);
  });

  it('is documented in /openapi.json', async () => {
    const res = await t.http.get('/openapi.json');
    expect(res.body.paths).toHaveProperty(['/models', 'get']);
    expect(res.body.paths).toHaveProperty(['/models/{id}', 'get']);
  });
});

describe('GET /models with a configured catalog', () => {
  let server: http.Server;
  let app: ReturnType<typeof supertest>;
  beforeAll(async () => {
    // Same dependencies, another catalog: no second database needed.
    const models = createModelCatalog(
      {
        ...t.deps.config,
        MODELS_JSON: JSON.stringify({
          default_model: 'deepseek-chat',
          providers: [
            {
              id: 'deepseek',
              type: 'openai',
              base_url: 'https://api.deepseek.com/v1',
              api_key_env: 'TEST_MODELS_E2E_KEY',
            },
          ],
          models: [
            {
              id: 'Qwen/Qwen2.5-7B-Instruct',
              provider: 'local',
              context_length: 32768,
              default_max_tokens: 1024,
              max_output_tokens: 8192,
              prompt_price: 0.5,
              completion_price: 1.25,
            },
            {
              id: 'deepseek-chat',
              provider: 'deepseek',
              context_length: 65536,
              default_max_tokens: 1024,
              max_output_tokens: 8192,
              prompt_price: 270,
              completion_price: 1100,
            },
          ],
        }),
      },
      { env: { TEST_MODELS_E2E_KEY: 'sk-e2e-not-a-real-key' } },
    );
    const configured = createApp({ ...t.deps, models }, allResources);
    app = supertest(configured.callback());
    const handle = configured.callback();
    server = http.createServer((req, res) => void handle(req, res));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  });
  afterAll(async () => {
    await new Promise<void>((resolve) => server?.close(() => resolve()));
  });

  it('lists the configured models in order with their prices and which one is the default', async () => {
    const res = await app.get(`${API}/models`).set('Authorization', bearer());
    expect(res.status).toBe(200);
    expect(res.body.data).toEqual([
      expect.objectContaining({
        id: 'Qwen/Qwen2.5-7B-Instruct',
        provider: 'local',
        local: true,
        default: false,
        prices: { prompt: 0.5, completion: 1.25 },
      }),
      expect.objectContaining({
        id: 'deepseek-chat',
        provider: 'deepseek',
        local: false,
        default: true,
        context_length: 65536,
        max_output_tokens: 8192,
        image_tokens: 1445,
        prices: { prompt: 270, completion: 1100 },
      }),
    ]);
    expect(JSON.stringify(res.body)).not.toContain('sk-e2e-not-a-real-key');
  });

  it('pages the models as every list does (items, next_cursor), while data keeps them all', async () => {
    const first = await app.get(`${API}/models?limit=1`).set('Authorization', bearer());
    expect(first.status).toBe(200);
    expect((first.body.items as { id: string }[]).map((m) => m.id)).toEqual(['Qwen/Qwen2.5-7B-Instruct']);
    expect(first.body.data).toHaveLength(2);
    const second = await app
      .get(`${API}/models`)
      .query({ limit: 1, cursor: first.body.next_cursor as string })
      .set('Authorization', bearer());
    expect((second.body.items as { id: string }[]).map((m) => m.id)).toEqual(['deepseek-chat']);
    expect(second.body.next_cursor).toBeNull();
    expect((await app.get(`${API}/models?limit=0`).set('Authorization', bearer())).status).toBe(400);
    expect((await app.get(`${API}/models?cursor=garbage`).set('Authorization', bearer())).status).toBe(400);
  });

  it('answers a model whose id has a slash, encoded in the path', async () => {
    const res = await app
      .get(`${API}/models/${encodeURIComponent('Qwen/Qwen2.5-7B-Instruct')}`)
      .set('Authorization', bearer());
    expect(res.status).toBe(200);
    expect(res.body.id).toBe('Qwen/Qwen2.5-7B-Instruct');
  });

  it('lets the official OpenAI client list and retrieve models with an access token as its key', async () => {
    const { port } = server.address() as AddressInfo;
    const client = new OpenAI({
      baseURL: `http://127.0.0.1:${port}${API}`,
      apiKey: mintToken(),
      maxRetries: 0,
    });
    const ids: string[] = [];
    for await (const model of client.models.list()) ids.push(model.id);
    expect(ids).toEqual(['Qwen/Qwen2.5-7B-Instruct', 'deepseek-chat']);
    expect((await client.models.retrieve('deepseek-chat')).owned_by).toBe('deepseek');
  });
});
