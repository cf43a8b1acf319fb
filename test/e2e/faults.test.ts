import net from 'node:net';
import type { Redis } from 'ioredis';
import { allResources } from '../../src/http/resources';
import { createLogger } from '../../src/platform/logger';
import { allProjectors } from '../../src/projections';
import { openRedis } from '../../src/system';
import { createTestApp, type TestApp } from '../support/app';

/**
 * Redis down: the service keeps serving — rate limits count in this instance's memory, task output
 * stays with the instance that generates it — and `/ready` says degraded rather than not ready.
 */
let t: TestApp;
let redis: Redis;

beforeAll(async () => {
  // A port nothing listens on: Redis as it is during an outage.
  const port = await new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port: p } = s.address() as net.AddressInfo;
      s.close(() => resolve(p));
    });
  });
  redis = openRedis(`redis://127.0.0.1:${port}`, createLogger({ LOG_LEVEL: 'silent' }));
  t = await createTestApp({
    resources: [...allResources],
    projectors: allProjectors,
    config: { RATE_LIMITS_ENABLED: true },
    deps: { redis },
  });
});
afterAll(async () => {
  await t?.close();
  redis?.disconnect();
});

describe('with Redis down', () => {
  it('says degraded on /ready, and stays in service', async () => {
    const res = await t.http.get('/ready');
    expect(res.status).toBe(200);
    expect(res.body).toEqual({
      status: 'degraded',
      checks: { database: 'up', eventstore: 'up', redis: 'down' },
    });
  });

  it('signs in, chats and streams a reply, charged, as without Redis', async () => {
    const API = '/api/v1';
    const created = await t.http.post(`${API}/users`).send({ username: 'no_redis', password: 'password123' });
    expect(created.status).toBe(201);
    const token = await t.http
      .post(`${API}/session/oauth2/token`)
      .type('form')
      .send({ username: 'no_redis', password: 'password123' });
    expect(token.status).toBe(200);
    const auth = `Bearer ${(token.body as { access_token: string }).access_token}`;
    const preset = await t.http
      .post(`${API}/presets`)
      .set('Authorization', auth)
      .send({ name: 'p', description: '', model: 'local-echo', parameters: {}, messages: [], public: false });
    const chat = await t.http
      .post(`${API}/chats`)
      .set('Authorization', auth)
      .send({ preset_id: (preset.body as { id: string }).id });
    const chatId = (chat.body as { id: string }).id;
    await t.http
      .post(`${API}/chats/${chatId}/messages`)
      .set('Authorization', auth)
      .send({ content: [{ type: 'text', text: 'Still there?' }] });
    const task = await t.http.post(`${API}/tasks`).set('Authorization', auth).send({ chat_id: chatId });
    expect(task.status).toBe(201);
    const stream = await t.http
      .get(`${API}/tasks/${(task.body as { id: string }).id}/stream`)
      .set('Authorization', auth)
      .buffer(true);
    expect(stream.status).toBe(200);
    expect(stream.text).toMatch(/event: done/);
  });

  it('still limits sign-in attempts, in this instance’s memory', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) {
      const res = await t.http
        .post('/api/v1/session/oauth2/token')
        .type('form')
        .send({ username: 'no_redis', password: 'wrong password' });
      statuses.push(res.status);
    }
    expect(statuses).toContain(429);
  });
});
