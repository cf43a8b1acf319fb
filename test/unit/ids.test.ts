import { uuidV7Ids } from '../../src/platform/clock';

const V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe('ids', () => {
  it('are UUIDv7s, distinct and in the order they were taken, across many refills of the random buffer', () => {
    const ids = Array.from({ length: 5000 }, () => uuidV7Ids.next());
    for (const id of ids) expect(id).toMatch(V7);
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort()).toEqual(ids);
  });

  it('carry the time they were taken at in their first 48 bits', () => {
    const before = Date.now();
    const id = uuidV7Ids.next();
    const ms = parseInt(id.replace(/-/g, '').slice(0, 12), 16);
    expect(ms).toBeGreaterThanOrEqual(before);
    expect(ms).toBeLessThanOrEqual(Date.now());
  });

  it('end in fresh random bits, not only a counter', () => {
    // The last 32 bits of each id are drawn anew (within one millisecond the bits before them
    // count up). Two of 1,000 draws alike is a one-in-10,000 chance; three, one in 10^8.
    const tails = new Set(Array.from({ length: 1000 }, () => uuidV7Ids.next().slice(-8)));
    expect(tails.size).toBeGreaterThanOrEqual(999);
  });
});
