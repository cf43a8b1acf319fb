import { z } from 'zod';

/** API.md lists: `{ items, next_cursor }`, `limit` 1–100 (default 20), an opaque `cursor`. */
export interface Page<T> {
  items: T[];
  next_cursor: string | null;
}

export const PageQuery = z.object({
  limit: z.coerce.number().int().min(1).max(100).default(20),
  cursor: z.string().max(500).optional(),
});

export function encodeCursor(values: unknown[]): string {
  return Buffer.from(JSON.stringify(values)).toString('base64url');
}

/** The cursor's values, or undefined for a cursor we did not make. */
export function decodeCursor<T extends unknown[]>(cursor: string): T | undefined {
  try {
    const values: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    return Array.isArray(values) ? (values as T) : undefined;
  } catch {
    return undefined;
  }
}
