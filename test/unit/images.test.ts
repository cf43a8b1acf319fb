import zlib from 'node:zlib';
import sharp from 'sharp';
import { BadRequest, PayloadTooLarge, UnsupportedMediaType } from '../../src/platform/errors';
import { AVATAR_SIZE, toAvatar } from '../../src/platform/images';

const RED = { r: 255, g: 0, b: 0 };
const BLUE = { r: 0, g: 0, b: 255 };

/** A `width`×`height` picture: red on the left half, blue on the right. */
async function halves(width: number, height: number): Promise<ReturnType<typeof sharp>> {
  const half = await sharp({ create: { width: width / 2, height, channels: 3, background: BLUE } })
    .png()
    .toBuffer();
  return sharp({ create: { width, height, channels: 3, background: RED } }).composite([
    { input: half, left: width / 2, top: 0 },
  ]);
}

/** The colour of one pixel of a JPEG. */
async function pixel(jpeg: Buffer, x: number, y: number): Promise<{ r: number; g: number; b: number }> {
  const { data, info } = await sharp(jpeg).raw().toBuffer({ resolveWithObject: true });
  const at = (y * info.width + x) * info.channels;
  return { r: data[at]!, g: data[at + 1]!, b: data[at + 2]! };
}

function near(actual: { r: number; g: number; b: number }, expected: { r: number; g: number; b: number }) {
  for (const c of ['r', 'g', 'b'] as const) expect(Math.abs(actual[c] - expected[c])).toBeLessThan(40);
}

/** A PNG of only a header that declares `width`×`height` pixels, with an IDAT that is not image data. */
function declaredPng(width: number, height: number): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
    const out = Buffer.alloc(8 + data.length + 4);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(zlib.crc32(body), 8 + data.length);
    return out;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB, no interlace
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(Buffer.alloc(64))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

async function expectJpegAvatar(out: Buffer) {
  const meta = await sharp(out).metadata();
  expect(meta.format).toBe('jpeg');
  expect([meta.width, meta.height]).toEqual([AVATAR_SIZE, AVATAR_SIZE]);
  return meta;
}

describe('toAvatar', () => {
  it('makes a 128×128 JPEG of a PNG, cover-cropped to its centre', async () => {
    // 400×100: cover-cropping keeps the middle 100×100, half red, half blue.
    const out = await toAvatar(await (await halves(400, 100)).png().toBuffer());
    await expectJpegAvatar(out);
    near(await pixel(out, 10, 64), RED);
    near(await pixel(out, 117, 64), BLUE);
  });

  it('accepts JPEG, WebP and GIF as well', async () => {
    const image = await halves(64, 64);
    for (const input of [
      await image.clone().jpeg().toBuffer(),
      await image.clone().webp().toBuffer(),
      await image.clone().gif().toBuffer(),
    ]) {
      await expectJpegAvatar(await toAvatar(input));
    }
  });

  it('turns a photo upright by its EXIF orientation', async () => {
    // Stored sideways (red left, blue right) with orientation 6 (rotate 90° clockwise to show):
    // shown upright, red is on top.
    const sideways = await (await halves(200, 100)).jpeg().withMetadata({ orientation: 6 }).toBuffer();
    expect((await sharp(sideways).metadata()).orientation).toBe(6);
    const out = await toAvatar(sideways);
    near(await pixel(out, 64, 5), RED);
    near(await pixel(out, 64, 122), BLUE);
  });

  it('strips EXIF, ICC and other metadata', async () => {
    const tagged = await (
      await halves(64, 64)
    )
      .jpeg()
      .withMetadata({ orientation: 1 })
      .withExif({ IFD0: { Copyright: 'someone', Artist: 'someone' } })
      .withIccProfile('p3')
      .toBuffer();
    const taggedMeta = await sharp(tagged).metadata();
    expect(taggedMeta.exif).toBeDefined();
    expect(taggedMeta.icc).toBeDefined();
    const meta = await expectJpegAvatar(await toAvatar(tagged));
    expect(meta.exif).toBeUndefined();
    expect(meta.icc).toBeUndefined();
    expect(meta.xmp).toBeUndefined();
    expect(meta.orientation).toBeUndefined();
  });

  it('takes the first frame of an animated GIF', async () => {
    const frame = (background: typeof RED) =>
      sharp({ create: { width: 32, height: 32, channels: 3, background } })
        .png()
        .toBuffer();
    const animated = await sharp([await frame(RED), await frame(BLUE)], { join: { animated: true } })
      .gif()
      .toBuffer();
    expect((await sharp(animated).metadata()).pages).toBe(2);
    const out = await toAvatar(animated);
    near(await pixel(out, 64, 64), RED);
  });

  it('puts transparent parts on white', async () => {
    const clear = await sharp({
      create: { width: 32, height: 32, channels: 4, background: { r: 0, g: 0, b: 0, alpha: 0 } },
    })
      .png()
      .toBuffer();
    near(await pixel(await toAvatar(clear), 64, 64), { r: 255, g: 255, b: 255 });
  });

  it.each([
    ['plain text', Buffer.from('hello, this is not an image')],
    [
      'an SVG',
      Buffer.from(
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
      ),
    ],
    ['an empty file', Buffer.alloc(0)],
  ])('answers 415 for %s', async (_what, input) => {
    await expect(toAvatar(input)).rejects.toBeInstanceOf(UnsupportedMediaType);
  });

  it('answers 415 for an image format it does not take (TIFF, AVIF), whatever the name says', async () => {
    const image = await halves(16, 16);
    await expect(toAvatar(await image.clone().tiff().toBuffer())).rejects.toBeInstanceOf(
      UnsupportedMediaType,
    );
    await expect(toAvatar(await image.clone().avif().toBuffer())).rejects.toBeInstanceOf(
      UnsupportedMediaType,
    );
  });

  it('answers 400 for truncated and corrupt images', async () => {
    const jpeg = await (await halves(256, 256)).jpeg().toBuffer();
    const png = await (await halves(256, 256)).png().toBuffer();
    await expect(toAvatar(jpeg.subarray(0, jpeg.length / 2))).rejects.toBeInstanceOf(BadRequest);
    await expect(toAvatar(png.subarray(0, png.length / 2))).rejects.toBeInstanceOf(BadRequest);
    // The right magic bytes, then noise.
    const noise = Buffer.concat([png.subarray(0, 8), Buffer.from('garbage'.repeat(50))]);
    await expect(toAvatar(noise)).rejects.toBeInstanceOf(BadRequest);
  });

  it('refuses a tiny file declaring 20000×20000 pixels with 413, before decoding it', async () => {
    const bomb = declaredPng(20_000, 20_000);
    expect(bomb.length).toBeLessThan(200);
    expect(await sharp(bomb, { limitInputPixels: false }).metadata()).toMatchObject({
      width: 20_000,
      height: 20_000,
    });
    // Its pixel data is not valid: had it been decoded, the answer would be 400.
    const err = await toAvatar(bomb).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PayloadTooLarge);
    expect((err as Error).message).toMatch(/20000×20000/);
    await expect(toAvatar(declaredPng(16_000, 4_000))).rejects.toBeInstanceOf(PayloadTooLarge);
    await expect(toAvatar(declaredPng(40_000, 10))).rejects.toBeInstanceOf(PayloadTooLarge);
  });

  it('processes many uploads at once, failures included, without losing a slot', async () => {
    const good = await (await halves(300, 300)).png().toBuffer();
    const results = await Promise.allSettled(
      Array.from({ length: 12 }, (_, i) => toAvatar(i % 3 === 0 ? good.subarray(0, 100) : good)),
    );
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(8);
    const reasons = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
    expect(reasons).toHaveLength(4);
    for (const reason of reasons) expect(reason).toBeInstanceOf(BadRequest);
    await expectJpegAvatar(await toAvatar(good));
  });
});
