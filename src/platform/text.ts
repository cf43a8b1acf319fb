/**
 * Text PostgreSQL cannot hold, in `text` or in `jsonb`: NUL (U+0000), and a UTF-16 surrogate
 * without its pair (JSON can carry one as `\ud800`; it is no character).
 */
const UNSTORABLE = /\0|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const UNSTORABLE_ALL = new RegExp(UNSTORABLE.source, 'g');

/** Whether any string or key of a JSON-like value holds text the database cannot store. */
export function holdsUnstorableText(value: unknown, depth = 0): boolean {
  if (typeof value === 'string') return UNSTORABLE.test(value);
  if (typeof value !== 'object' || value === null || depth > 64) return false;
  if (Array.isArray(value)) return value.some((v) => holdsUnstorableText(v, depth + 1));
  return Object.entries(value).some(([k, v]) => UNSTORABLE.test(k) || holdsUnstorableText(v, depth + 1));
}

/** The text with each NUL and each unpaired surrogate replaced by U+FFFD, as a decoder would. */
export function storableText(text: string): string {
  return UNSTORABLE.test(text) ? text.replace(UNSTORABLE_ALL, '\uFFFD') : text;
}

/**
 * Makes streamed text storable piece by piece, as `storableText` makes whole text. A piece that
 * ends in the first half of a surrogate pair keeps it back until the next piece, which may hold
 * the second half.
 */
export class StorableTextStream {
  private held = '';

  /** The piece made storable, less a trailing first half kept for the next piece. */
  push(piece: string): string {
    let text = this.held + piece;
    this.held = '';
    const last = text.charCodeAt(text.length - 1);
    if (last >= 0xd800 && last <= 0xdbff) {
      this.held = text.slice(-1);
      text = text.slice(0, -1);
    }
    return storableText(text);
  }

  /** What was kept back (a first half that never got its second), made storable. */
  end(): string {
    const rest = storableText(this.held);
    this.held = '';
    return rest;
  }
}
