import type { RecordedEvent } from '../../src/eventstore/port';
import { consistentRead } from '../../src/http/middleware/consistency';
import type { Resource } from '../../src/http/types';
import type { Projector } from '../../src/projections/types';
import { createTestApp, type TestApp } from '../support/app';

/** Remembers what it applied, slowly, so a read that does not wait would miss the last event. */
const applied: bigint[] = [];
const slow: Projector = {
  name: 'slow',
  version: 1,
  eventTypes: ['Pinged'],
  tables: [],
  async apply(_trx, events: readonly RecordedEvent[]) {
    await new Promise((r) => setTimeout(r, 150));
    applied.push(...events.map((e) => e.position));
  },
};

const reads: Resource = (router) => {
  router.get('/test/read', consistentRead(['slow']), (ctx) => {
    ctx.body = { applied: applied.map(String) };
  });
};

let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({
    resources: [reads],
    projectors: [slow],
    // Time enough for the slow projection on a loaded machine; the test of the 504 waits it out.
    config: { CONSISTENCY_TIMEOUT_MS: 5_000 },
  });
});
afterAll(() => t?.close());

async function ping(): Promise<bigint> {
  const result = await t.deps.store.append(
    `ping-${crypto.randomUUID()}`,
    [
      {
        id: crypto.randomUUID(),
        type: 'Pinged',
        data: {},
        metadata: { occurredAt: new Date().toISOString(), schemaVersion: 1 },
      },
    ],
    'no_stream',
  );
  return result.position;
}

describe('X-Consistent-After', () => {
  it('reads without waiting when the header is absent', async () => {
    const res = await t.http.get('/api/v1/test/read');
    expect(res.status).toBe(200);
  });

  it.each(['abc', '-1', '1.5', '1e3', '0x10', '99999999999999999999'])(
    'answers 400 for %p',
    async (value) => {
      const res = await t.http.get('/api/v1/test/read').set('X-Consistent-After', value);
      expect(res.status).toBe(400);
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(res.body.detail).toMatch(/X-Consistent-After/);
    },
  );

  it('waits until the projection has applied the position', async () => {
    const position = await ping();
    const res = await t.http.get('/api/v1/test/read').set('X-Consistent-After', String(position));
    expect(res.status).toBe(200);
    expect(res.body.applied).toContain(String(position));
  });

  it('reads at once for position 0, the start of the log, which no event has', async () => {
    const res = await t.http.get('/api/v1/test/read').set('X-Consistent-After', '0');
    expect(res.status).toBe(200);
  });

  it('answers 504 when the projection does not get there in time', async () => {
    const position = await ping();
    const res = await t.http
      .get('/api/v1/test/read')
      .set('X-Consistent-After', String(position + 1_000_000n));
    expect(res.status).toBe(504);
    expect(res.body).toMatchObject({ type: '/problems/consistency-timeout', status: 504 });
  });
});
