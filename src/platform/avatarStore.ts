import { createHash } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { Database } from './schema';

/** Stores an avatar JPEG under the SHA-256 of its bytes (hex) and returns that id; storing it again is a no-op. */
export async function saveAvatarBlob(db: Kysely<Database>, jpeg: Buffer, now: Date): Promise<string> {
  const id = createHash('sha256').update(jpeg).digest('hex');
  await db
    .insertInto('avatar_blobs')
    .values({ id, data: jpeg, created_at: now })
    .onConflict((oc) => oc.column('id').doNothing())
    .execute();
  return id;
}

/** The avatar JPEG stored under `id`, if any. */
export async function loadAvatarBlob(db: Kysely<Database>, id: string): Promise<Buffer | undefined> {
  const row = await db.selectFrom('avatar_blobs').select('data').where('id', '=', id).executeTakeFirst();
  return row?.data;
}
