import { allResources } from '../../src/http/resources';
import { allProjectors } from '../../src/projections';
import { createTestApp, type TestApp } from '../support/app';
import { bearer } from '../support/tokens';

/**
 * /openapi.json against what the routes do. API.md: every GET accepts `X-Consistent-After` and
 * answers 504 when the read model does not get there in time; lists take `limit` 1–100 (400
 * otherwise). The document lists these answers for every GET that gives them.
 */
let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({
    resources: [...allResources],
    projectors: allProjectors,
    config: { CONSISTENCY_TIMEOUT_MS: 50 },
  });
});
afterAll(() => t?.close());

const admin = bearer({ userId: 'review7-openapi-admin', permission: 2 });

interface Operation {
  parameters?: { name: string; in: string }[];
  responses: Record<string, unknown>;
}
type Doc = { paths: Record<string, Record<string, Operation>> };

async function doc(): Promise<Doc> {
  const res = await t.http.get('/openapi.json');
  expect(res.status).toBe(200);
  return res.body as Doc;
}

describe('/openapi.json response statuses', () => {
  it('lists the 504 every GET answers for an X-Consistent-After not reached, and the header', async () => {
    const { paths } = await doc();
    const undocumented: string[] = [];
    for (const [path, ops] of Object.entries(paths)) {
      const op = ops.get;
      if (!op) continue;
      const url = `/api/v1${path.replace(/\{[^}]+\}/g, 'x')}`;
      const res = await t.http.get(url).set('Authorization', admin).set('X-Consistent-After', '999999999999');
      expect(res.status).toBe(504);
      if (!('504' in op.responses)) undocumented.push(`GET ${path}`);
    }
    expect(undocumented).toEqual([]);
    for (const ops of Object.values(paths)) {
      if (ops.get) expect(ops.get.parameters?.some((p) => p.name === 'X-Consistent-After')).toBe(true);
    }
  });

  it('lists the 400 that GET /models answers for a limit outside 1–100', async () => {
    const { paths } = await doc();
    const op = paths['/models']!.get!;
    expect((op.parameters ?? []).some((p) => p.in === 'query' && p.name === 'limit')).toBe(true);
    const res = await t.http.get('/api/v1/models?limit=0').set('Authorization', admin);
    expect(res.status).toBe(400);
    expect(Object.keys(op.responses)).toContain('400');
  });
});
