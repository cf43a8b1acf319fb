import { createHash } from 'node:crypto';
import sharp from 'sharp';
import supertest from 'supertest';
import { createApp } from '../../src/http/app';
import { allResources } from '../../src/http/resources';
import { allProjectors } from '../../src/projections';
import { holdingReadsOf } from '../support/holdReads';
import { createTestApp, type TestApp } from '../support/app';

/**
 * GET /users/me/avatar reads the user (the command handler's cached state, which later commands
 * change in place), then loads the blob of its avatar: the ETag must name that picture, not one
 * set while the blob was loading, or a client revalidating with it is told 304 for a picture it
 * does not have and keeps the old one.
 */
let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({ resources: [...allResources], projectors: allProjectors });
});
afterAll(() => t?.close());

const png = (color: { r: number; g: number; b: number }) =>
  sharp({ create: { width: 64, height: 64, channels: 3, background: color } })
    .png()
    .toBuffer();

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('an avatar changed while another request serves it', () => {
  it('is served with the ETag of the picture sent', async () => {
    const username = `etag_${process.pid}`;
    expect((await t.http.post('/api/v1/users').send({ username, password: 'correct horse' })).status).toBe(
      201,
    );
    const login = await t.http
      .post('/api/v1/session/oauth2/token')
      .type('form')
      .send({ username, password: 'correct horse' });
    const auth = `Bearer ${login.body.access_token as string}`;
    const put = (color: { r: number; g: number; b: number }) =>
      png(color).then((file) =>
        t.http
          .put('/api/v1/users/me/avatar')
          .set('Authorization', auth)
          .attach('file', file, { filename: 'me.png', contentType: 'image/png' }),
      );
    expect((await put({ r: 200, g: 30, b: 30 })).status).toBe(200);

    // A second instance of the app on the same command handler, whose avatar blob reads are slow.
    const slow = holdingReadsOf(t.deps.db, 'avatar_blobs');
    const other = supertest(createApp({ ...t.deps, db: slow.db }, [...allResources]).callback());
    const getting = other
      .get('/api/v1/users/me/avatar')
      .set('Authorization', auth)
      .buffer(true)
      .then((r) => r);
    await slow.held; // the user is read (red avatar); its blob is being loaded
    const blue = await put({ r: 30, g: 30, b: 200 }); // now blue
    expect(blue.status).toBe(200);
    slow.release();
    const got = await getting;
    expect(got.status).toBe(200);
    const body = got.body as Buffer;
    const etag = String(got.headers.etag);

    // The avatar's id is the SHA-256 of its bytes: the ETag names the bytes sent, and a client
    // revalidating the old picture gets the new one.
    const revalidated = await t.http
      .get('/api/v1/users/me/avatar')
      .set('Authorization', auth)
      .set('If-None-Match', etag);
    expect({ etag, sentBytes: `"${sha256(body)}"`, revalidatedStatus: revalidated.status }).toEqual({
      etag: `"${sha256(body)}"`,
      sentBytes: `"${sha256(body)}"`,
      // The client holds the old picture: it must be sent the new one.
      revalidatedStatus: 200,
    });
  });
});
