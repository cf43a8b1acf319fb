import fc from 'fast-check';
import { allResources } from '../../src/http/resources';
import { allProjectors } from '../../src/projections';
import { createLedgerReports } from '../../src/reports/ledger';
import { createTestApp, type TestApp } from '../support/app';
import { bearer } from '../support/tokens';

/**
 * Every operation of `/openapi.json`, called with generated input — bodies of any JSON shape,
 * mutations of well-formed ones, odd path parameters and query strings — as nobody, as a user and
 * as an admin: the service answers each with a status below 500, and every error as problem+json.
 */
let t: TestApp;
let operations: { method: string; path: string; hasBody: boolean }[] = [];

beforeAll(async () => {
  t = await createTestApp({
    resources: [...allResources],
    projectors: allProjectors,
    config: { RATE_LIMITS_ENABLED: false },
  });
  const doc = (await t.http.get('/openapi.json')).body as {
    paths: Record<string, Record<string, { requestBody?: unknown }>>;
  };
  operations = Object.entries(doc.paths).flatMap(([path, methods]) =>
    Object.entries(methods)
      .filter(([method]) => ['get', 'post', 'put', 'patch', 'delete'].includes(method))
      .map(([method, op]) => ({ method, path, hasBody: op.requestBody !== undefined })),
  );
});
afterAll(() => t?.close());

/** JSON of any shape, deep and wide enough to reach validation edge cases. */
const json = fc.jsonValue({ maxDepth: 4 });
/** Strings an attacker tries: empty, long, control characters, SQL, traversal, unicode. */
const nasty = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.constantFrom(
    '',
    ' ',
    "' or 1=1 --",
    '../../etc/passwd',
    '%00',
    '\u0000',
    'null',
    '-1',
    '1e309',
    'a'.repeat(5000),
    '😀',
    '{"$gt":""}',
  ),
);
/** Bodies near the valid ones: known field names with values of the wrong kind. */
const fields = [
  'username',
  'password',
  'email',
  'code',
  'amount',
  'reason',
  'chat_id',
  'preset_id',
  'model',
  'messages',
  'content',
  'title',
  'name',
  'parameters',
  'public',
  'permission',
  'disabled',
  'refresh_token',
  'identity_token',
  'phone',
  'count',
  'max_uses',
  'expires_at',
  'stream',
  'visible',
];
/** Text no database can hold, in bodies only: a URL cannot even carry half a surrogate pair. */
const unstorable = fc.constantFrom('nul \u0000', 'half \ud800', 'x\udfff', '\udc00\ud800');
const nearlyValid = fc.dictionary(fc.constantFrom(...fields), fc.oneof(json, nasty, unstorable), {
  maxKeys: 6,
});

describe('fuzzing every operation of /openapi.json', () => {
  it('lists the operations it fuzzes', () => {
    expect(operations.length).toBeGreaterThan(30);
  });

  it('never answers 5xx, and answers every error as problem+json', async () => {
    const failures: string[] = [];
    const statuses = new Set<number>();
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 10_000 }),
        // A session of its own per call: a call that signs its caller out ends no later one's.
        fc.constantFrom(undefined, { userId: 'fuzz-user' }, { userId: 'fuzz-admin', permission: 2 as const }),
        fc.oneof(json, nearlyValid),
        nasty,
        fc.dictionary(fc.constantFrom('limit', 'cursor', 'status', 'from', 'to', 'user_id', 'at'), nasty, {
          maxKeys: 3,
        }),
        async (pick, auth, body, param, query) => {
          const op = operations[pick % operations.length]!;
          const path = op.path.replace(/\{[^}]+\}/g, () => encodeURIComponent(param));
          let req = t.http[op.method as 'get'](`/api/v1${path}`).query(query);
          if (auth) req = req.set('Authorization', bearer(auth));
          // Streams are not read to their end here: only the answer's status matters.
          if (op.path.endsWith('/stream')) req = req.timeout({ response: 5_000 });
          // Serialized here: any JSON text, top-level primitives and null included.
          const res = op.hasBody ? await req.type('json').send(JSON.stringify(body)) : await req;
          statuses.add(res.status);
          // Sign-in methods this server has no credentials for answer 503 by design (documented).
          const unconfigured =
            res.status === 503 &&
            (res.body as { type?: string }).type === '/problems/provider-not-configured';
          if (res.status >= 500 && !unconfigured)
            failures.push(`${op.method} ${path} → ${res.status} ${res.text?.slice(0, 200)}`);
          if (
            res.status >= 400 &&
            !String(res.headers['content-type']).startsWith('application/problem+json')
          ) {
            failures.push(`${op.method} ${path} → ${res.status} as ${String(res.headers['content-type'])}`);
          }
          return true;
        },
      ),
      // A fixed seed in CI; FUZZ_SEED and FUZZ_RUNS for longer hunts (`FUZZ_RUNS=20000 npm test -- fuzz`).
      { numRuns: Number(process.env.FUZZ_RUNS ?? 600), seed: Number(process.env.FUZZ_SEED ?? 20261201) },
    );
    expect(failures).toEqual([]);
    // The generated input got past authentication and validation, not only refused at the door.
    expect([...statuses]).toEqual(expect.arrayContaining([200, 400, 401, 403, 404]));
  }, 180_000);

  it('answers 400 for a cursor no list gave out, on every list', async () => {
    // Callers of their own: the fuzzing may have signed its callers out.
    const USER = bearer({ userId: 'cursor-user' });
    const ADMIN = bearer({ userId: 'cursor-admin', permission: 2 });
    const preset = await t.http
      .post('/api/v1/presets')
      .set('Authorization', USER)
      .send({ name: 'Cursors', model: 'local-echo', messages: [] });
    expect(preset.status).toBe(201);
    const chat = await t.http
      .post('/api/v1/chats')
      .set('Authorization', USER)
      .send({ preset_id: (preset.body as { id: string }).id });
    expect(chat.status).toBe(201);
    const lists: [string, string][] = [
      ['/users', ADMIN],
      ['/codes', ADMIN],
      ['/admin/projections', ADMIN],
      ['/models', USER],
      ['/users/me/sessions', USER],
      ['/users/me/credits', USER],
      ['/chats', USER],
      ['/presets', USER],
      [`/chats/${(chat.body as { id: string }).id}/messages`, USER],
    ];
    const cursor = (values: unknown) => Buffer.from(JSON.stringify(values)).toString('base64url');
    const forged = [
      'garbage',
      cursor({}),
      cursor([]),
      cursor(['abc']),
      cursor([{}]),
      cursor(['1e3']),
      cursor([-1]),
      cursor([-1e15]),
      cursor(['99999999999999999999']),
      cursor(['not a date', 'x']),
      cursor([{}, 1]),
      cursor(['-100000-01-01T00:00:00.000Z', 'x']),
      cursor(['+275760-09-13T00:00:00.000Z', 'x']),
      cursor(['2026-01-01T00:00:00.000Z', 'x', 'y']),
      // Text no row holds, which the database refuses to compare.
      cursor(['2020-01-01T00:00:00Z', '\u0000']),
      cursor(['2020-01-01T00:00:00Z', 'a\ud800']),
      cursor(['\u0000']),
    ];
    const answers: string[] = [];
    for (const [path, auth] of lists) {
      for (const c of forged) {
        const res = await t.http.get(`/api/v1${path}`).query({ cursor: c }).set('Authorization', auth);
        if (res.status !== 400) answers.push(`${path} ${c} → ${res.status}`);
      }
    }
    // Past a message sequence's column (integer), though a log position may go that far.
    const past = await t.http
      .get(`/api/v1${lists.at(-1)![0]}`)
      .query({ cursor: cursor([2 ** 31]) })
      .set('Authorization', USER);
    expect(past.status).toBe(400);
    expect(answers).toEqual([]);
  });

  it('leaves a ledger that verify finds without breach', async () => {
    // At least one real movement besides whatever the fuzzing got through: a sign-up grant.
    const created = await t.http
      .post('/api/v1/users')
      .send({ username: 'fuzz_after', password: 'long enough' });
    expect(created.status).toBe(201);
    const verification = await createLedgerReports({ store: t.deps.store, db: t.deps.db }).verify();
    expect(verification.events).toBeGreaterThan(0);
    expect(verification.breaches).toEqual([]);
    expect(verification.breach_count).toBe(0);
  });
});
