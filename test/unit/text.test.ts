import fc from 'fast-check';
import { StorableTextStream, holdsUnstorableText, storableText } from '../../src/platform/text';

const FFFD = '\uFFFD';
/** Text of any UTF-16 code units, surrogate halves and NUL often among them. */
const anyText = fc.string({
  unit: fc
    .oneof(fc.integer({ min: 0xd800, max: 0xdfff }), fc.constant(0), fc.integer({ min: 0, max: 0xffff }))
    .map((c) => String.fromCharCode(c)),
});

describe('storable text', () => {
  it('replaces NUL and each half of a surrogate pair standing alone, and nothing else', () => {
    expect(storableText('a\u0000b')).toBe(`a${FFFD}b`);
    expect(storableText('x\ud800y')).toBe(`x${FFFD}y`);
    expect(storableText('x\udc00')).toBe(`x${FFFD}`);
    expect(storableText('\udc00\ud800')).toBe(FFFD + FFFD);
    expect(storableText('\ud83d\ude00 \u00e9 \t\n')).toBe('\u{1F600} \u00e9 \t\n');
  });

  it('finds such text in strings and keys at any depth of a value', () => {
    expect(holdsUnstorableText({ a: [{ b: 'ok' }], c: 1, d: null })).toBe(false);
    expect(holdsUnstorableText({ a: [{ b: 'no\u0000' }] })).toBe(true);
    expect(holdsUnstorableText([1, { ['k\ud800']: 1 }])).toBe(true);
    expect(holdsUnstorableText('\u{1F600}')).toBe(false);
  });

  it('makes any text storable, as a UTF-8 round trip would, less NUL', () => {
    fc.assert(
      fc.property(anyText, (s) => {
        const out = storableText(s);
        expect(holdsUnstorableText(out)).toBe(false);
        expect(out).toBe(Buffer.from(s, 'utf8').toString('utf8').replaceAll('\u0000', FFFD));
      }),
    );
  });

  it('gives streamed pieces the same text as the whole, a pair split across two pieces kept whole', () => {
    fc.assert(
      fc.property(fc.array(anyText, { maxLength: 8 }), (pieces) => {
        const stream = new StorableTextStream();
        const out = pieces.map((p) => stream.push(p)).join('') + stream.end();
        expect(out).toBe(storableText(pieces.join('')));
      }),
    );
    const stream = new StorableTextStream();
    expect(stream.push('a\ud83d')).toBe('a');
    expect(stream.push('\ude00b')).toBe('\u{1F600}b');
    expect(stream.push('\ud800')).toBe('');
    expect(stream.end()).toBe(FFFD);
  });
});
