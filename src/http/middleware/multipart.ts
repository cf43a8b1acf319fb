import busboy from 'busboy';
import type { Context } from 'koa';
import { BadRequest, PayloadTooLarge, UnsupportedMediaType } from '../../platform/errors';

/** One uploaded file, read whole into memory (bounded by `maxBytes`). */
export interface UploadedFile {
  data: Buffer;
  /** The name the client gave, if any; never a path to use on disk. */
  filename: string | null;
  /** The type the client declared: a hint only; judge the content itself. */
  mimeType: string;
}

export interface ReadFileOptions {
  /** The form field that carries the file. */
  field: string;
  maxBytes: number;
}

/** Other fields are read and dropped; these bound how much of that a client can make us do. */
const LIMITS = { fields: 20, fieldSize: 16 * 1024, fieldNameSize: 100, parts: 21, headerPairs: 20 };

/**
 * Reads the one file of a multipart/form-data request (`body()` leaves multipart unread for this).
 * Not multipart → 415; the file over `maxBytes` → 413 as soon as it is, without reading the rest;
 * the field missing or empty, another file, too many parts or a malformed body → 400. A request
 * whose body is left unread is answered with `Connection: close`, so nothing more is read from it.
 */
export async function readFile(
  ctx: Pick<Context, 'req' | 'is' | 'set'>,
  options: ReadFileOptions,
): Promise<UploadedFile> {
  const { field, maxBytes } = options;
  if (!ctx.is('multipart/form-data')) {
    throw new UnsupportedMediaType(`Send the file as multipart/form-data, in the field "${field}".`);
  }
  let parser: busboy.Busboy;
  try {
    parser = busboy({ headers: ctx.req.headers, limits: { ...LIMITS, files: 1, fileSize: maxBytes } });
  } catch {
    throw new BadRequest('The multipart/form-data Content-Type has no boundary.');
  }
  const req = ctx.req;

  return new Promise<UploadedFile>((resolve, reject) => {
    let file: UploadedFile | undefined;
    let settled = false;

    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      req.unpipe(parser);
      parser.removeAllListeners();
      // Keep a late parser error from being unhandled.
      parser.on('error', () => undefined);
      if (!req.complete) ctx.set('Connection', 'close');
      reject(err);
    };

    parser.on('file', (name, stream, info) => {
      if (name !== field) {
        stream.resume();
        fail(new BadRequest(`Unexpected file field "${name.slice(0, 100)}": send the file in "${field}".`));
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      stream.on('data', (chunk: Buffer) => {
        size += chunk.length;
        chunks.push(chunk);
      });
      stream.on('limit', () => {
        stream.removeAllListeners('data');
        fail(new PayloadTooLarge(`The file is larger than the limit of ${maxBytes} bytes.`));
      });
      stream.on('end', () => {
        if (settled) return;
        file = {
          data: Buffer.concat(chunks, size),
          filename: info.filename ?? null,
          mimeType: info.mimeType,
        };
      });
    });
    parser.on('filesLimit', () => fail(new BadRequest(`Send one file only, in "${field}".`)));
    parser.on('fieldsLimit', () => fail(new BadRequest('The form has too many fields.')));
    parser.on('partsLimit', () => fail(new BadRequest('The form has too many parts.')));
    parser.on('error', () => fail(new BadRequest('The multipart/form-data body is malformed.')));
    parser.on('close', () => {
      if (settled) return;
      if (!file) return fail(new BadRequest(`The form has no file in "${field}".`));
      if (file.data.length === 0) return fail(new BadRequest(`The file in "${field}" is empty.`));
      settled = true;
      resolve(file);
    });
    req.on('aborted', () => fail(new BadRequest('The upload was interrupted.')));
    req.pipe(parser);
  });
}
