import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import zlib from 'node:zlib';
import sharp from 'sharp';
import { z } from 'zod';
import { readFile } from '../../src/http/middleware/multipart';
import type { Resource } from '../../src/http/types';
import { toAvatar } from '../../src/platform/images';
import { createTestApp, type TestApp } from '../support/app';

const testRoutes: Resource = (router) => {
  router.put('/test/upload', async (ctx) => {
    const file = await readFile(ctx, { field: 'file', maxBytes: 1024 });
    ctx.body = {
      size: file.data.length,
      sha256: createHash('sha256').update(file.data).digest('hex'),
      filename: file.filename,
      mime_type: file.mimeType,
    };
  });
  router.put('/test/avatar', async (ctx) => {
    const file = await readFile(ctx, { field: 'file', maxBytes: 5 * 1024 * 1024 });
    ctx.type = 'image/jpeg';
    ctx.body = await toAvatar(file.data);
  });
  router.post('/test/json', (ctx) => {
    ctx.body = z.object({ name: z.string() }).parse(ctx.request.body);
  });
};

let t: TestApp;
beforeAll(async () => {
  t = await createTestApp({ resources: [testRoutes] });
});
afterAll(() => t?.close());

function expectProblem(res: { status: number; type: string; body: Record<string, unknown> }, status: number) {
  expect(res.status).toBe(status);
  expect(res.type).toBe('application/problem+json');
  expect(res.body.status).toBe(status);
}

describe('multipart uploads (readFile)', () => {
  it('reads the file of the form, with its name and declared type', async () => {
    const data = randomBytes(1000);
    const res = await t.http
      .put('/api/v1/test/upload')
      .field('note', 'other fields are ignored')
      .attach('file', data, { filename: 'me.bin', contentType: 'application/octet-stream' });
    expect(res.status).toBe(200);
    expect(res.body).toEqual({
      size: 1000,
      sha256: createHash('sha256').update(data).digest('hex'),
      filename: 'me.bin',
      mime_type: 'application/octet-stream',
    });
  });

  it('answers 415 for a body that is not multipart/form-data', async () => {
    const json = await t.http.put('/api/v1/test/upload').send({ file: 'x' });
    expectProblem(json, 415);
    expect(json.body.type).toBe('/problems/unsupported-media-type');
    const none = await t.http.put('/api/v1/test/upload');
    expectProblem(none, 415);
  });

  it('answers 413 for a file over the limit', async () => {
    const res = await t.http.put('/api/v1/test/upload').attach('file', randomBytes(64 * 1024), 'big.bin');
    expectProblem(res, 413);
    expect(res.body.type).toBe('/problems/payload-too-large');
    expect(res.body.detail).toMatch(/1024 bytes/);
  });

  it('answers 413 as soon as the file passes the limit, without waiting for the rest', async () => {
    // A raw request that sends 4 KB of a file and then nothing more: the answer must not wait.
    const handle = t.app.callback();
    const server = http.createServer((req, res) => void handle(req, res));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const boundary = 'b0undary';
      const req = http.request({
        port,
        method: 'PUT',
        path: '/api/v1/test/upload',
        headers: {
          'Content-Type': `multipart/form-data; boundary=${boundary}`,
          'Content-Length': String(10 * 1024 * 1024),
        },
      });
      req.on('error', () => undefined);
      const answer = new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }>(
        (resolve) =>
          req.on('response', (res) => {
            let body = '';
            res.setEncoding('utf8');
            res.on('data', (c: string) => (body += c));
            res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
          }),
      );
      req.write(
        `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n` +
          'Content-Type: application/octet-stream\r\n\r\n',
      );
      req.write(randomBytes(4096));
      const res = await answer;
      req.destroy();
      expect(res.status).toBe(413);
      expect(res.headers.connection).toBe('close');
      expect(JSON.parse(res.body)).toMatchObject({ status: 413, type: '/problems/payload-too-large' });
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('answers 400 when the field is missing or the file is empty', async () => {
    const missing = await t.http.put('/api/v1/test/upload').field('note', 'no file here');
    expectProblem(missing, 400);
    expect(missing.body.detail).toMatch(/no file in "file"/);
    const empty = await t.http.put('/api/v1/test/upload').attach('file', Buffer.alloc(0), 'empty.bin');
    expectProblem(empty, 400);
    expect(empty.body.detail).toMatch(/empty/);
  });

  it('answers 400 for a file in another field, or two files', async () => {
    const other = await t.http.put('/api/v1/test/upload').attach('avatar', randomBytes(10), 'a.bin');
    expectProblem(other, 400);
    expect(other.body.detail).toMatch(/Unexpected file field "avatar"/);
    const two = await t.http
      .put('/api/v1/test/upload')
      .attach('file', randomBytes(10), 'a.bin')
      .attach('file', randomBytes(10), 'b.bin');
    expectProblem(two, 400);
    expect(two.body.detail).toMatch(/one file/);
  });

  it('answers 400 for too many fields', async () => {
    let req = t.http.put('/api/v1/test/upload');
    for (let i = 0; i < 30; i++) req = req.field(`f${i}`, 'x');
    const res = await req.attach('file', randomBytes(10), 'a.bin');
    expectProblem(res, 400);
    expect(res.body.detail).toMatch(/too many (fields|parts)/);
  });

  it('answers 400 for a malformed multipart body or one without a boundary', async () => {
    const garbage = await t.http
      .put('/api/v1/test/upload')
      .set('Content-Type', 'multipart/form-data; boundary=xyz')
      .send('this is not a multipart body');
    expectProblem(garbage, 400);
    const noBoundary = await t.http
      .put('/api/v1/test/upload')
      .set('Content-Type', 'multipart/form-data')
      .send('--xyz\r\n');
    expectProblem(noBoundary, 400);
  });

  it('answers 415 when a route that takes JSON is sent multipart', async () => {
    const res = await t.http.post('/api/v1/test/json').field('name', 'ann');
    expectProblem(res, 415);
    expect(res.body.type).toBe('/problems/unsupported-media-type');
  });
});

describe('avatar upload, end to end', () => {
  it('answers a 128×128 JPEG for an uploaded PNG', async () => {
    const png = await sharp({ create: { width: 300, height: 200, channels: 3, background: 'orange' } })
      .png()
      .toBuffer();
    const res = await t.http
      .put('/api/v1/test/avatar')
      .attach('file', png, { filename: 'me.png', contentType: 'image/png' })
      .buffer(true);
    expect(res.status).toBe(200);
    expect(res.type).toBe('image/jpeg');
    expect(await sharp(res.body as Buffer).metadata()).toMatchObject({
      format: 'jpeg',
      width: 128,
      height: 128,
    });
  });

  it('judges the content, not the declared type: text labelled image/png is 415', async () => {
    const res = await t.http
      .put('/api/v1/test/avatar')
      .attach('file', Buffer.from('<?php echo "hi"; ?>'), { filename: 'me.png', contentType: 'image/png' });
    expectProblem(res, 415);
  });

  it('answers 413 for a decompression bomb and 400 for a truncated image', async () => {
    const ihdr = Buffer.alloc(13);
    ihdr.writeUInt32BE(20_000, 0);
    ihdr.writeUInt32BE(20_000, 4);
    ihdr.set([8, 2, 0, 0, 0], 8);
    const chunk = (type: string, data: Buffer) => {
      const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
      const len = Buffer.alloc(4);
      len.writeUInt32BE(data.length);
      const crc = Buffer.alloc(4);
      crc.writeUInt32BE(zlib.crc32(body));
      return Buffer.concat([len, body, crc]);
    };
    const bomb = Buffer.concat([
      Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
      chunk('IHDR', ihdr),
      chunk('IDAT', zlib.deflateSync(Buffer.alloc(64))),
      chunk('IEND', Buffer.alloc(0)),
    ]);
    expectProblem(await t.http.put('/api/v1/test/avatar').attach('file', bomb, 'bomb.png'), 413);

    const jpeg = await sharp({ create: { width: 300, height: 300, channels: 3, background: 'green' } })
      .jpeg()
      .toBuffer();
    const truncated = await t.http
      .put('/api/v1/test/avatar')
      .attach('file', jpeg.subarray(0, 400), 'cut.jpg');
    expectProblem(truncated, 400);
  });

  it('answers 413 for a file over 5 MB', async () => {
    const res = await t.http
      .put('/api/v1/test/avatar')
      .attach('file', randomBytes(6 * 1024 * 1024), 'huge.jpg');
    expectProblem(res, 413);
  });
});
