/**
 * A timestamp as PostgreSQL reads it, for rows sent as JSON (the form `pg` sends a Date in):
 * `toISOString` writes year 0 and years past 9999 in ways PostgreSQL refuses.
 */
export function pgTimestamp(at: Date): string {
  let year = at.getUTCFullYear();
  const bc = year < 1;
  if (bc) year = 1 - year; // year 0 is 1 BC
  const p = (n: number, width = 2) => String(n).padStart(width, '0');
  const date = `${p(year, 4)}-${p(at.getUTCMonth() + 1)}-${p(at.getUTCDate())}`;
  const time = `${p(at.getUTCHours())}:${p(at.getUTCMinutes())}:${p(at.getUTCSeconds())}.${p(at.getUTCMilliseconds(), 3)}`;
  return `${date}T${time}+00:00${bc ? ' BC' : ''}`;
}

/** `pgTimestamp`, or null. */
export const pgTimestampOrNull = (at: Date | null): string | null => (at ? pgTimestamp(at) : null);

/**
 * Rows as JSON arrays of about `maxChars` at most each (a row larger than that goes alone): a whole
 * batch in one string could pass V8's limit on a string's length (about 512 MiB) in a rebuild.
 */
export function jsonChunks(rows: readonly unknown[], maxChars = 16 * 2 ** 20): string[] {
  const chunks: string[] = [];
  let parts: string[] = [];
  let size = 0;
  for (const row of rows) {
    const json = JSON.stringify(row);
    if (parts.length > 0 && size + json.length > maxChars) {
      chunks.push(`[${parts.join(',')}]`);
      parts = [];
      size = 0;
    }
    parts.push(json);
    size += json.length + 1;
  }
  if (parts.length > 0) chunks.push(`[${parts.join(',')}]`);
  return chunks;
}

/**
 * Two lists of rows as pairs of JSON arrays for statements that take one of each (`'[]'` where one
 * list has run out): one pair, unless the rows pass `jsonChunks`' size.
 */
export function jsonChunkPairs(a: readonly unknown[], b: readonly unknown[]): [string, string][] {
  const as = jsonChunks(a);
  const bs = jsonChunks(b);
  return Array.from({ length: Math.max(as.length, bs.length) }, (_, i) => [as[i] ?? '[]', bs[i] ?? '[]']);
}
