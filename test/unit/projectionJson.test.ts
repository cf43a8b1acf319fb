import { jsonChunks, pgTimestamp } from '../../src/projections/json';

describe('rows sent to PostgreSQL as JSON', () => {
  it('writes timestamps as PostgreSQL reads them, BC and past 9999 included', () => {
    expect(pgTimestamp(new Date('2030-01-02T03:04:05.678Z'))).toBe('2030-01-02T03:04:05.678+00:00');
    expect(pgTimestamp(new Date('0000-01-01T00:00:00Z'))).toBe('0001-01-01T00:00:00.000+00:00 BC');
    expect(pgTimestamp(new Date('-000001-12-31T23:00:00Z'))).toBe('0002-12-31T23:00:00.000+00:00 BC');
    expect(pgTimestamp(new Date('+010000-01-01T04:59:59Z'))).toBe('10000-01-01T04:59:59.000+00:00');
  });

  it('splits rows into arrays of at most about maxChars, in order, a larger row alone', () => {
    const rows = [{ a: 'x'.repeat(10) }, { a: 'y'.repeat(10) }, { a: 'z'.repeat(50) }, { a: 1 }];
    const chunks = jsonChunks(rows, 40);
    expect(chunks.map((c) => JSON.parse(c) as unknown[])).toEqual([[rows[0], rows[1]], [rows[2]], [rows[3]]]);
    expect(jsonChunks([])).toEqual([]);
    expect(jsonChunks(rows)).toEqual([JSON.stringify(rows)]);
  });
});
