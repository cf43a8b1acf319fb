import { allResources } from '../../src/http/resources';
import { allProjectors } from '../../src/projections';
import { createTestApp, type TestApp } from '../support/app';
import { bearer } from '../support/tokens';

/** API.md's cross-cutting promises, where two layers of the service answer the same thing. */
let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({ resources: [...allResources], projectors: allProjectors });
});
afterAll(() => t?.close());

const auth = bearer({ userId: 'contract-user' });

describe('problem+json titles', () => {
  // RFC 9457: a problem type has one title, whichever layer raised it.
  it('titles /problems/not-found alike for an unknown route and an unknown chat', async () => {
    const noRoute = await t.http.get('/api/v1/no-such-route').set('Authorization', auth);
    const noChat = await t.http.get('/api/v1/chats/no-such-chat').set('Authorization', auth);
    expect([noRoute.status, noChat.status]).toEqual([404, 404]);
    expect(noRoute.body.type).toBe(noChat.body.type);
    expect(noRoute.body.title).toBe(noChat.body.title);
  });

  it('titles /problems/bad-request alike for malformed JSON and a bad X-Consistent-After', async () => {
    const badJson = await t.http
      .post('/api/v1/presets')
      .set('Authorization', auth)
      .set('Content-Type', 'application/json')
      .send('{"name":');
    const badHeader = await t.http
      .get('/api/v1/chats')
      .set('Authorization', auth)
      .set('X-Consistent-After', 'abc');
    expect([badJson.status, badHeader.status]).toEqual([400, 400]);
    expect(badJson.body.type).toBe(badHeader.body.type);
    expect(badJson.body.title).toBe(badHeader.body.title);
  });
});

describe('Idempotency-Key replay', () => {
  // "A retry with the same key and body returns the first answer": a 401 with its challenge.
  it('replays a 401 with the WWW-Authenticate header the first answer had', async () => {
    const key = `contract-401-${process.pid}`;
    const send = () =>
      t.http.post('/api/v1/presets').set('Idempotency-Key', key).send({ name: 'x', model: 'local-echo' });
    const first = await send();
    expect(first.status).toBe(401);
    expect(first.headers['www-authenticate']).toBe('Bearer');
    const replay = await send();
    expect(replay.status).toBe(401);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(replay.headers['www-authenticate']).toBe('Bearer');
  });
});
