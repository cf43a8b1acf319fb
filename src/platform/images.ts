import os from 'node:os';
import sharp, { type SharpOptions } from 'sharp';
import { BadRequest, PayloadTooLarge, UnsupportedMediaType } from './errors';

/** Side of the square avatar, in pixels. */
export const AVATAR_SIZE = 128;

/**
 * Images larger than this are refused before they are decoded: a small file can declare a huge
 * canvas (a "decompression bomb"), and decoding it would take gigabytes. 50 MP covers any photo
 * that fits in an upload.
 */
export const MAX_INPUT_PIXELS = 50_000_000;
const MAX_SIDE = 16_384;

type Format = 'jpeg' | 'png' | 'gif' | 'webp';

const INPUT_OPTIONS: SharpOptions = {
  limitInputPixels: MAX_INPUT_PIXELS,
  // Truncated or damaged data is an error, not a half-grey picture.
  failOn: 'warning',
  // Animated GIF/WebP: the first frame only.
  pages: 1,
};

// Avatars are each processed once: libvips' operation cache would only hold memory.
sharp.cache(false);
// One libvips thread per image; uploads run side by side only as far as `slots` lets them.
sharp.concurrency(1);

/**
 * sharp runs on libuv's thread pool (4 threads by default), which fs, dns, crypto and argon2 share:
 * at most this many images at a time leaves threads for them, whatever the number of uploads.
 */
const slots = createSemaphore(Math.max(1, Math.min(2, os.availableParallelism() - 1)));

/**
 * An uploaded image as a 128×128 JPEG avatar: the first frame, turned upright by its EXIF
 * orientation, cover-cropped, on white where it was transparent, without metadata. Accepts JPEG,
 * PNG, WebP and GIF by their content (415 otherwise); corrupt data is 400, an image of more than
 * `MAX_INPUT_PIXELS` is 413 without being decoded.
 */
export async function toAvatar(input: Buffer): Promise<Buffer> {
  const format = sniff(input);
  if (!format) throw new UnsupportedMediaType('The file is not a JPEG, PNG, WebP or GIF image.');
  return slots.run(async () => {
    // The header only (no pixels are decoded), so the size can be told in the answer.
    const meta = await sharp(input, { ...INPUT_OPTIONS, limitInputPixels: false })
      .metadata()
      .catch((err: unknown) => {
        throw undecodable(err);
      });
    if (meta.format !== format) {
      throw new UnsupportedMediaType('The file is not a JPEG, PNG, WebP or GIF image.');
    }
    const { width, height } = meta;
    if (!width || !height) throw new BadRequest('The image could not be read: it has no size.');
    if (width > MAX_SIDE || height > MAX_SIDE || width * height > MAX_INPUT_PIXELS) {
      throw new PayloadTooLarge(
        `The image is ${width}×${height} pixels; at most ${MAX_SIDE} pixels a side and ${MAX_INPUT_PIXELS / 1_000_000} megapixels are accepted.`,
      );
    }
    try {
      return await sharp(input, INPUT_OPTIONS)
        .autoOrient()
        .resize(AVATAR_SIZE, AVATAR_SIZE, { fit: 'cover', position: 'centre' })
        .flatten({ background: '#ffffff' })
        .toColourspace('srgb')
        .jpeg({ quality: 85, mozjpeg: true })
        .timeout({ seconds: 10 })
        .toBuffer();
    } catch (err) {
      throw undecodable(err);
    }
  });
}

/** The format by the file's magic bytes: other decoders (SVG, PDF, TIFF...) are never reached. */
function sniff(b: Buffer): Format | undefined {
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg';
  if (b.length >= 8 && b.subarray(0, 8).equals(PNG_SIGNATURE)) return 'png';
  if (b.length >= 6 && /^GIF8[79]a$/.test(b.toString('latin1', 0, 6))) return 'gif';
  if (b.length >= 12 && b.toString('latin1', 0, 4) === 'RIFF' && b.toString('latin1', 8, 12) === 'WEBP') {
    return 'webp';
  }
  return undefined;
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function undecodable(err: unknown): Error {
  const message = err instanceof Error ? err.message : '';
  if (/pixel limit/i.test(message)) {
    return new PayloadTooLarge(`The image has more than ${MAX_INPUT_PIXELS / 1_000_000} megapixels.`);
  }
  // libvips' own words stay in the server: they name internals, not anything the client can act on.
  return new BadRequest('The image could not be decoded: it is corrupt or truncated.');
}

interface Semaphore {
  run<T>(fn: () => Promise<T>): Promise<T>;
}

function createSemaphore(limit: number): Semaphore {
  let active = 0;
  const waiting: (() => void)[] = [];
  return {
    async run(fn) {
      if (active >= limit) await new Promise<void>((resolve) => waiting.push(resolve));
      else active++;
      try {
        return await fn();
      } finally {
        // Hand the slot straight to the next waiter (active stays the same), or free it.
        const next = waiting.shift();
        if (next) next();
        else active--;
      }
    },
  };
}
