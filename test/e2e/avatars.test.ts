import zlib from 'node:zlib';
import sharp from 'sharp';
import { allResources } from '../../src/http/resources';
import { allProjectors } from '../../src/projections';
import { createTestApp, signedInUser, type TestApp } from '../support/app';

let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({ resources: [...allResources], projectors: allProjectors });
});
afterAll(() => t?.close());

const signedIn = () => signedInUser(t, 'avatar');

const png = (width: number, height: number, color = { r: 200, g: 30, b: 30 }) =>
  sharp({ create: { width, height, channels: 3, background: color } })
    .png()
    .toBuffer();

/** A PNG header declaring a huge picture, with no real pixels behind it. */
function bomb(): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const out = Buffer.alloc(8 + data.length + 4);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(zlib.crc32(body), 8 + data.length);
    return out;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(30_000, 0);
  ihdr.writeUInt32BE(30_000, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(Buffer.alloc(64))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

describe('avatars', () => {
  it('stores an upload as a 128×128 JPEG and serves it to its owner', async () => {
    const u = await signedIn();
    const put = await t.http
      .put('/api/v1/users/me/avatar')
      .set('Authorization', u.auth)
      .attach('file', await png(400, 300), { filename: 'me.png', contentType: 'image/png' });
    expect(put.status).toBe(200);
    expect(put.body.avatar_url).toMatch(new RegExp(`/users/${u.id}/avatar`));
    for (const path of ['/api/v1/users/me/avatar', `/api/v1/users/${u.id}/avatar`]) {
      const get = await t.http.get(path).set('Authorization', u.auth).buffer(true);
      expect(get.status).toBe(200);
      expect(get.headers['content-type']).toBe('image/jpeg');
      const meta = await sharp(get.body as Buffer).metadata();
      expect([meta.format, meta.width, meta.height]).toEqual(['jpeg', 128, 128]);
      // A client holding this avatar is told so (304), and one holding another gets it again.
      const etag = get.headers.etag as string;
      expect(etag).toMatch(/^".+"$/);
      const again = await t.http.get(path).set('Authorization', u.auth).set('If-None-Match', etag);
      expect(again.status).toBe(304);
      const other = await t.http.get(path).set('Authorization', u.auth).set('If-None-Match', '"old"');
      expect(other.status).toBe(200);
    }
  });

  it('refuses wrong types, corrupt data, bombs and oversized files with 4xx, keeping the old avatar', async () => {
    const u = await signedIn();
    await t.http
      .put('/api/v1/users/me/avatar')
      .set('Authorization', u.auth)
      .attach('file', await png(64, 64, { r: 0, g: 0, b: 250 }), 'blue.png');
    const before = (await t.http.get('/api/v1/users/me/avatar').set('Authorization', u.auth).buffer(true))
      .body as Buffer;

    const cases: [Buffer, number][] = [
      [Buffer.from('just some text, not an image'), 415],
      [(await png(64, 64)).subarray(0, 60), 400],
      [bomb(), 413],
      [Buffer.concat([await png(10, 10), Buffer.alloc(5 * 1024 * 1024 + 1)]), 413],
    ];
    for (const [data, status] of cases) {
      const res = await t.http
        .put('/api/v1/users/me/avatar')
        .set('Authorization', u.auth)
        .attach('file', data, { filename: 'x.png', contentType: 'image/png' });
      expect(res.status).toBe(status);
      expect(res.headers['content-type']).toMatch(/problem\+json/);
    }
    const json = await t.http.put('/api/v1/users/me/avatar').set('Authorization', u.auth).send({ file: 'x' });
    expect(json.status).toBe(415);
    const after = (await t.http.get('/api/v1/users/me/avatar').set('Authorization', u.auth).buffer(true))
      .body as Buffer;
    expect(after.equals(before)).toBe(true);
  });

  it('never shows or changes another user’s avatar (404)', async () => {
    const owner = await signedIn();
    const other = await signedIn();
    await t.http
      .put('/api/v1/users/me/avatar')
      .set('Authorization', owner.auth)
      .attach('file', await png(32, 32), 'a.png');
    const res = await t.http.get(`/api/v1/users/${owner.id}/avatar`).set('Authorization', other.auth);
    expect(res.status).toBe(404);
    expect((await t.http.get('/api/v1/users/me/avatar').set('Authorization', other.auth)).status).toBe(404);
  });
});
