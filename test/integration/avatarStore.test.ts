import { createHash } from 'node:crypto';
import sharp from 'sharp';
import { loadAvatarBlob, saveAvatarBlob } from '../../src/platform/avatarStore';
import { toAvatar } from '../../src/platform/images';
import { openTestDatabase, testDatabases, type TestDatabase } from '../support/databases';

describe.each(testDatabases())('avatar blobs on %s', (kind) => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await openTestDatabase(kind);
  });
  afterAll(() => t?.close());

  it('stores a JPEG under the SHA-256 of its bytes and gives the same bytes back', async () => {
    const jpeg = await toAvatar(
      await sharp({ create: { width: 40, height: 30, channels: 3, background: 'teal' } })
        .png()
        .toBuffer(),
    );
    const id = await saveAvatarBlob(t.db.db, jpeg, new Date('2025-01-02T03:04:05Z'));
    expect(id).toBe(createHash('sha256').update(jpeg).digest('hex'));
    const loaded = await loadAvatarBlob(t.db.db, id);
    expect(Buffer.isBuffer(loaded)).toBe(true);
    expect(loaded!.equals(jpeg)).toBe(true);
  });

  it('keeps one row per picture: saving it again (even at once) changes nothing', async () => {
    const jpeg = Buffer.from('not really a jpeg, but bytes are bytes');
    const first = new Date('2025-01-01T00:00:00Z');
    const ids = await Promise.all(
      Array.from({ length: 5 }, (_, i) =>
        saveAvatarBlob(t.db.db, jpeg, new Date(first.getTime() + i * 1000)),
      ),
    );
    expect(new Set(ids).size).toBe(1);
    const rows = await t.db.db.selectFrom('avatar_blobs').selectAll().where('id', '=', ids[0]!).execute();
    expect(rows).toHaveLength(1);
    expect(rows[0]!.data.equals(jpeg)).toBe(true);
  });

  it('answers undefined for an id it does not have', async () => {
    expect(await loadAvatarBlob(t.db.db, 'f'.repeat(64))).toBeUndefined();
  });
});
