import type { Projector } from '../../src/projections/types';
import { chats } from '../../src/http/chats';
import { presets } from '../../src/http/presets';
import { chatsProjector } from '../../src/projections/chats';
import { presetsProjector } from '../../src/projections/presets';
import { createTestApp, type TestApp } from '../support/app';
import { bearer } from '../support/tokens';

let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({ resources: [presets, chats], projectors: [presetsProjector, chatsProjector] });
});
afterAll(() => t?.close());

const API = '/api/v1';
const admin = bearer({ userId: 'admin-1', permission: 2 });
const as = (userId: string) => bearer({ userId });

const translator = {
  name: 'Translator',
  description: 'English to French',
  model: 'gpt-4o-mini',
  parameters: { temperature: 0.3, max_tokens: 256, stop: ['\n\n'] },
  messages: [
    { role: 'system', content: 'Translate everything to French.' },
    { role: 'user', content: 'Good morning' },
    { role: 'assistant', content: 'Bonjour' },
  ],
};

type Res = { body: unknown; headers: Record<string, string | undefined> };
const idOf = (res: Res) => (res.body as { id: string }).id;
const positionOf = (res: Res) => res.headers['x-event-position'] ?? '';
const itemsOf = <T = { id: string }>(res: Res) => (res.body as { items: T[] }).items;
const ids = (res: Res) => itemsOf(res).map((i) => i.id);
const cursorOf = (res: Res) => (res.body as { next_cursor: string | null }).next_cursor;

/** Sends a command and remembers its position, so the next read can wait for it. */
async function command(method: 'post' | 'patch' | 'delete', path: string, auth: string, body?: object) {
  const req = t.http[method](`${API}${path}`).set('Authorization', auth);
  const res = body === undefined ? await req : await req.send(body);
  return res;
}

async function read(path: string, auth: string, after?: string) {
  const req = t.http.get(`${API}${path}`).set('Authorization', auth);
  return after ? req.set('X-Consistent-After', after) : req;
}

async function newPreset(auth: string, body: object = translator) {
  const res = await command('post', '/presets', auth, body);
  expect(res.status).toBe(201);
  return res;
}

async function newChat(auth: string, presetId: string, title?: string) {
  const res = await command('post', '/chats', auth, { preset_id: presetId, ...(title ? { title } : {}) });
  expect(res.status).toBe(201);
  return res;
}

describe('presets and chats', () => {
  it('starts a chat from a preset: its messages come first, the system one hidden; sent messages follow in order', async () => {
    const alice = as('alice');
    const preset = await newPreset(alice);
    expect(preset.headers['x-event-position']).toMatch(/^\d+$/);
    expect(preset.headers.location).toBe(`${API}/presets/${preset.body.id}`);
    expect(preset.body).toMatchObject({ ...translator, public: false, owner_id: 'alice' });

    const chat = await newChat(alice, idOf(preset));
    expect(chat.body).toMatchObject({
      title: 'Translator',
      preset_id: preset.body.id,
      model: 'gpt-4o-mini',
      parameters: translator.parameters,
    });
    const chatId = chat.body.id as string;

    const text = await command('post', `/chats/${chatId}/messages`, alice, {
      content: [{ type: 'text', text: 'How do I say "cat"?' }],
    });
    expect(text.status).toBe(201);
    expect(text.body).toEqual({
      id: expect.any(String),
      role: 'user',
      content: [{ type: 'text', text: 'How do I say "cat"?' }],
      visible: true,
      created_at: expect.any(String),
    });
    const image = await command('post', `/chats/${chatId}/messages`, alice, {
      content: [
        { type: 'text', text: 'And this?' },
        { type: 'image', url: 'https://images.example.com/cat.jpg' },
      ],
    });
    expect(image.status).toBe(201);
    const hidden = await command('post', `/chats/${chatId}/messages`, alice, {
      content: [{ type: 'text', text: 'Answer briefly.' }],
      visible: false,
    });
    expect(hidden.body.visible).toBe(false);

    const listed = await read(`/chats/${chatId}/messages`, alice, hidden.headers['x-event-position']);
    expect(listed.status).toBe(200);
    expect(listed.body.next_cursor).toBeNull();
    expect(itemsOf<{ role: string; content: unknown }>(listed).map((m) => [m.role, m.content])).toEqual([
      ['user', [{ type: 'text', text: 'Good morning' }]],
      ['assistant', [{ type: 'text', text: 'Bonjour' }]],
      ['user', [{ type: 'text', text: 'How do I say "cat"?' }]],
      [
        'user',
        [
          { type: 'text', text: 'And this?' },
          { type: 'image', url: 'https://images.example.com/cat.jpg' },
        ],
      ],
    ]);
    expect(listed.body.items[1]).toMatchObject({ status: 'complete', task_id: null });
    expect(listed.body.items[2]).toEqual(text.body);
    expect(JSON.stringify(listed.body)).not.toContain('Translate everything');
    expect(JSON.stringify(listed.body)).not.toContain('Answer briefly');

    const one = await read(`/chats/${chatId}`, alice);
    expect(one.status).toBe(200);
    expect(one.body).toMatchObject({
      id: chatId,
      title: 'Translator',
      last_message_at: hidden.body.created_at,
    });
  });

  it('answers 400 for image URLs that are not http(s) or too long, and for malformed content', async () => {
    const bob = as('bob');
    const preset = await newPreset(bob);
    const chat = await newChat(bob, idOf(preset));
    const chatId = idOf(chat);
    const bad = [
      [{ type: 'image', url: 'javascript:alert(1)' }],
      [{ type: 'image', url: 'ftp://example.com/a.png' }],
      [{ type: 'image', url: 'file:///etc/passwd' }],
      [{ type: 'image', url: `https://example.com/${'a'.repeat(2048)}` }],
      [{ type: 'image', url: 'not a url' }],
      [{ type: 'text', text: '' }],
      [{ type: 'text', text: 'x'.repeat(32_001) }],
      [{ type: 'video', url: 'https://example.com/a.mp4' }],
      Array.from({ length: 5 }, (_, i) => ({ type: 'image', url: `https://example.com/${i}.png` })),
      [],
    ];
    for (const content of bad) {
      const res = await command('post', `/chats/${chatId}/messages`, bob, { content });
      expect(res.status).toBe(400);
      expect(res.headers['content-type']).toMatch(/problem\+json/);
    }
    const js = await command('post', `/chats/${chatId}/messages`, bob, {
      content: [{ type: 'image', url: 'javascript:alert(1)' }],
    });
    expect(js.body.errors).toEqual([expect.objectContaining({ path: 'content.0.url' })]);
    expect((await command('post', `/chats/${chatId}/messages`, bob, { content: 'hi' })).status).toBe(400);
    expect((await command('post', '/chats', bob, {})).status).toBe(400);
    expect((await command('patch', `/chats/${chatId}`, bob, { title: '  ' })).status).toBe(400);
    expect(
      (await command('post', '/presets', bob, { ...translator, parameters: { temperature: 3 } })).status,
    ).toBe(400);
    expect((await command('post', '/presets', bob, { ...translator, name: '' })).status).toBe(400);
    expect((await command('post', '/presets', bob, { ...translator, unknown: 1 })).status).toBe(400);
    expect((await read('/chats?limit=0', bob)).status).toBe(400);
    expect((await read('/chats?limit=101', bob)).status).toBe(400);
    expect((await read('/chats?cursor=garbage', bob)).status).toBe(400);
    // Once the chat is in the read model: before that, the chat is not found (404).
    expect((await read(`/chats/${chatId}/messages?cursor=WyJ4Il0`, bob, positionOf(chat))).status).toBe(400);
  });

  it('answers 400 for text no database can hold (NUL, half a surrogate pair), and stores nothing', async () => {
    const bob = as('bob');
    const preset = await newPreset(bob);
    const chat = await newChat(bob, idOf(preset));
    const chatId = idOf(chat);
    const before = itemsOf(await read(`/chats/${chatId}/messages`, bob, positionOf(chat)));
    for (const text of ['nul \u0000 here', 'half \ud800 a pair', 'other half \udc00', '\ude00\ud83d']) {
      const res = await command('post', `/chats/${chatId}/messages`, bob, {
        content: [{ type: 'text', text }],
      });
      expect(res.status).toBe(400);
      expect(res.headers['content-type']).toMatch(/problem\+json/);
    }
    expect((await command('patch', `/chats/${chatId}`, bob, { title: 'a\ud800' })).status).toBe(400);
    expect((await command('post', '/presets', bob, { ...translator, name: 'b\udfff' })).status).toBe(400);
    // A whole pair is a character like any other, and the read model goes on.
    const ok = await command('post', `/chats/${chatId}/messages`, bob, {
      content: [{ type: 'text', text: 'fine \u{1F600}' }],
    });
    expect(ok.status).toBe(201);
    const after = itemsOf<{ content: unknown }>(await read(`/chats/${chatId}/messages`, bob, positionOf(ok)));
    expect(after).toHaveLength(before.length + 1);
    expect(after.at(-1)!.content).toEqual([{ type: 'text', text: 'fine \u{1F600}' }]);
  });

  it('answers 404 on every route for another user’s chat or private preset', async () => {
    const owner = as('carol');
    const other = as('mallory');
    const preset = await newPreset(owner);
    const presetId = preset.body.id as string;
    const chat = await newChat(owner, presetId);
    const chatId = chat.body.id as string;
    const after = chat.headers['x-event-position'] as string;

    const attempts = [
      read(`/presets/${presetId}`, other, after),
      command('patch', `/presets/${presetId}`, other, { name: 'mine' }),
      command('delete', `/presets/${presetId}`, other),
      command('post', '/chats', other, { preset_id: presetId }),
      read(`/chats/${chatId}`, other, after),
      command('patch', `/chats/${chatId}`, other, { title: 'mine' }),
      command('delete', `/chats/${chatId}`, other),
      command('post', `/chats/${chatId}/messages`, other, { content: [{ type: 'text', text: 'hi' }] }),
      read(`/chats/${chatId}/messages`, other, after),
      // Admins have no business with a user's private preset or chat either.
      read(`/presets/${presetId}`, admin, after),
      command('delete', `/presets/${presetId}`, admin),
      read(`/chats/${chatId}`, admin, after),
    ];
    for (const res of await Promise.all(attempts)) {
      expect(res.status).toBe(404);
      expect(res.headers['content-type']).toMatch(/problem\+json/);
    }
    // Exactly what a missing one answers.
    const missing = await read('/chats/00000000-0000-7000-8000-000000000000', other);
    const theirs = await read(`/chats/${chatId}`, other);
    expect({ ...theirs.body, detail: '', instance: '', request_id: '' }).toEqual({
      ...missing.body,
      detail: '',
      instance: '',
      request_id: '',
    });
    const lists = await Promise.all([read('/chats', other, after), read('/presets', other, after)]);
    for (const list of lists)
      expect(JSON.stringify(list.body)).not.toMatch(new RegExp(`${chatId}|${presetId}`));

    // The owner still has both, unchanged.
    expect((await read(`/presets/${presetId}`, owner, after)).body.name).toBe('Translator');
    expect((await read(`/chats/${chatId}/messages`, owner, after)).body.items).toHaveLength(2);
  });

  it('lets only admins publish presets; others see public ones but may not change them (403)', async () => {
    const dave = as('dave');
    const refused = await command('post', '/presets', dave, { ...translator, public: true });
    expect(refused.status).toBe(403);
    const own = await newPreset(dave);
    expect((await command('patch', `/presets/${own.body.id}`, dave, { public: true })).status).toBe(403);

    const published = await newPreset(admin, { ...translator, name: 'Everyone’s', public: true });
    const id = published.body.id as string;
    const after = published.headers['x-event-position'] as string;
    expect(published.body).toMatchObject({ public: true, owner_id: 'admin-1' });

    expect((await read(`/presets/${id}`, dave, after)).body.name).toBe('Everyone’s');
    const listed = await read('/presets?limit=100', dave, after);
    expect(ids(listed)).toEqual(expect.arrayContaining([id, own.body.id]));
    expect(
      itemsOf<{ public: boolean; owner_id: string }>(listed).every(
        (p: { public: boolean; owner_id: string }) => p.public || p.owner_id === 'dave',
      ),
    ).toBe(true);

    expect((await command('patch', `/presets/${id}`, dave, { name: 'Hijacked' })).status).toBe(403);
    expect((await command('delete', `/presets/${id}`, dave)).status).toBe(403);
    // Anyone who sees it may start a chat from it.
    expect((await newChat(dave, id)).body.preset_id).toBe(id);

    const otherAdmin = bearer({ userId: 'admin-2', permission: 2 });
    const changed = await command('patch', `/presets/${id}`, otherAdmin, {
      description: 'Curated',
      parameters: { temperature: 1 },
    });
    expect(changed.status).toBe(200);
    expect(changed.body).toMatchObject({
      description: 'Curated',
      parameters: { temperature: 1 },
      name: 'Everyone’s',
    });
    const seen = await read(`/presets/${id}`, dave, changed.headers['x-event-position']);
    expect(seen.body).toMatchObject({ description: 'Curated', parameters: { temperature: 1 } });

    const gone = await command('delete', `/presets/${id}`, otherAdmin);
    expect(gone.status).toBe(204);
    expect((await read(`/presets/${id}`, dave, gone.headers['x-event-position'])).status).toBe(404);
    expect((await command('post', '/chats', dave, { preset_id: id })).status).toBe(404);
  });

  it('pages chats newest first, presets, and messages in order, with cursors', async () => {
    const erin = as('erin');
    const preset = await newPreset(erin, { ...translator, messages: [] });
    const created: string[] = [];
    let last = '';
    for (let i = 0; i < 7; i++) {
      const res = await newChat(erin, idOf(preset), `chat ${i}`);
      created.push(idOf(res));
      last = positionOf(res);
    }
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const q: string = cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
      const page = await read(`/chats?limit=3${q}`, erin, last);
      expect(page.status).toBe(200);
      expect(page.body.items.length).toBeLessThanOrEqual(3);
      seen.push(...ids(page));
      cursor = cursorOf(page);
      pages++;
    } while (cursor);
    expect(pages).toBe(3);
    expect(seen).toEqual([...created].reverse());

    const chatId = created[0]!;
    for (let i = 0; i < 5; i++) {
      const res = await command('post', `/chats/${chatId}/messages`, erin, {
        content: [{ type: 'text', text: `m${i}` }],
        visible: i !== 2,
      });
      last = positionOf(res);
    }
    const texts: string[] = [];
    cursor = null;
    do {
      const q: string = cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
      const page = await read(`/chats/${chatId}/messages?limit=2${q}`, erin, last);
      texts.push(...itemsOf<{ content: { text: string }[] }>(page).map((m) => m.content[0]!.text));
      cursor = cursorOf(page);
    } while (cursor);
    expect(texts).toEqual(['m0', 'm1', 'm3', 'm4']);

    const mine = [preset.body.id as string];
    for (let i = 0; i < 2; i++) {
      const res = await newPreset(erin, { ...translator, name: `preset ${i}` });
      mine.push(idOf(res));
      last = positionOf(res);
    }
    const listed: string[] = [];
    cursor = null;
    do {
      const q: string = cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
      const page = await read(`/presets?limit=1${q}`, erin, last);
      expect(page.body.items.length).toBeLessThanOrEqual(1);
      listed.push(...ids(page));
      cursor = cursorOf(page);
    } while (cursor);
    expect(new Set(listed).size).toBe(listed.length);
    expect(listed.filter((id) => mine.includes(id))).toEqual([...mine].reverse());
  });

  it('renames, and after deleting a chat answers 404 everywhere and lists it no more', async () => {
    const fay = as('fay');
    const preset = await newPreset(fay);
    const chatId = idOf(await newChat(fay, idOf(preset)));
    const renamed = await command('patch', `/chats/${chatId}`, fay, { title: '  Holiday French ' });
    expect(renamed.status).toBe(200);
    expect(renamed.body.title).toBe('Holiday French');
    expect((await read(`/chats/${chatId}`, fay, renamed.headers['x-event-position'])).body.title).toBe(
      'Holiday French',
    );

    const deleted = await command('delete', `/chats/${chatId}`, fay);
    expect(deleted.status).toBe(204);
    const after = deleted.headers['x-event-position'] as string;
    expect(after).toMatch(/^\d+$/);
    expect((await read(`/chats/${chatId}`, fay, after)).status).toBe(404);
    expect((await read(`/chats/${chatId}/messages`, fay, after)).status).toBe(404);
    expect((await command('patch', `/chats/${chatId}`, fay, { title: 'x' })).status).toBe(404);
    expect(
      (await command('post', `/chats/${chatId}/messages`, fay, { content: [{ type: 'text', text: 'hi' }] }))
        .status,
    ).toBe(404);
    expect((await command('delete', `/chats/${chatId}`, fay)).status).toBe(404);
    expect(ids(await read('/chats', fay, after))).not.toContain(chatId);

    // Deleting the preset leaves chats started from it as they were.
    const keep = await newChat(fay, idOf(preset));
    const presetGone = await command('delete', `/presets/${preset.body.id}`, fay);
    expect(presetGone.status).toBe(204);
    const still = await read(`/chats/${keep.body.id}/messages`, fay, presetGone.headers['x-event-position']);
    expect(still.body.items).toHaveLength(2);
  });

  it('documents the routes in OpenAPI', async () => {
    const doc = await t.http.get('/openapi.json');
    expect(Object.keys((doc.body as { paths: object }).paths)).toEqual(
      expect.arrayContaining(['/presets', '/presets/{id}', '/chats', '/chats/{id}', '/chats/{id}/messages']),
    );
    expect(doc.body.components.schemas).toHaveProperty('MessageContent');
  });
});

describe('read-your-writes with a slow read model', () => {
  let slow: TestApp;
  const delayed = (p: Projector): Projector => ({
    ...p,
    async apply(trx, events) {
      await new Promise((r) => setTimeout(r, 100));
      await p.apply(trx, events);
    },
  });
  beforeAll(async () => {
    slow = await createTestApp({
      resources: [presets, chats],
      projectors: [delayed(presetsProjector), delayed(chatsProjector)],
    });
  });
  afterAll(() => slow?.close());

  it('sees its own new chat and message when reading with X-Consistent-After', async () => {
    const gus = as('gus');
    const preset = await slow.http.post(`${API}/presets`).set('Authorization', gus).send(translator);
    const chat = await slow.http
      .post(`${API}/chats`)
      .set('Authorization', gus)
      .send({ preset_id: preset.body.id });
    expect(chat.status).toBe(201);
    const listed = await slow.http
      .get(`${API}/chats`)
      .set('Authorization', gus)
      .set('X-Consistent-After', positionOf(chat));
    expect(ids(listed)).toEqual([idOf(chat)]);

    const sent = await slow.http
      .post(`${API}/chats/${chat.body.id}/messages`)
      .set('Authorization', gus)
      .send({ content: [{ type: 'text', text: 'fresh' }] });
    const messages = await slow.http
      .get(`${API}/chats/${chat.body.id}/messages`)
      .set('Authorization', gus)
      .set('X-Consistent-After', positionOf(sent));
    expect(itemsOf(messages).at(-1)).toEqual(sent.body);
  });
});
