import { MAX_TOOL_CALL_ID, ToolCallAssembly } from '../../src/platform/llm/toolCalls';

const ids = () => {
  let n = 0;
  return () => `call_made${++n}`;
};

describe('tool calls put together from their pieces', () => {
  it('passes each piece on and keeps each call whole, in the order the calls began', () => {
    const calls = new ToolCallAssembly(ids());
    expect(calls.push({ index: 0, id: 'call_a', name: 'weather', arguments: '' })).toEqual({
      index: 0,
      id: 'call_a',
      name: 'weather',
      arguments: '',
    });
    expect(calls.push({ index: 0, arguments: '{"city":' })).toEqual({ index: 0, arguments: '{"city":' });
    expect(calls.push({ index: 0, arguments: '"Paris"}' })).toEqual({ index: 0, arguments: '"Paris"}' });
    calls.push({ index: 1, id: 'call_b', name: 'time' });
    expect(calls.end()).toEqual([]);
    expect(calls.list()).toEqual([
      { id: 'call_a', type: 'function', function: { name: 'weather', arguments: '{"city":"Paris"}' } },
      { id: 'call_b', type: 'function', function: { name: 'time', arguments: '' } },
    ]);
  });

  it('numbers the calls 0, 1, 2… whatever the provider numbered them', () => {
    const calls = new ToolCallAssembly(ids());
    expect(calls.push({ index: 3, id: 'call_x', name: 'a' })!.index).toBe(0);
    expect(calls.push({ index: 7, id: 'call_y', name: 'b' })!.index).toBe(1);
    expect(calls.push({ index: 3, arguments: '{}' })).toEqual({ index: 0, arguments: '{}' });
    expect(calls.list().map((c) => [c.id, c.function.arguments])).toEqual([
      ['call_x', '{}'],
      ['call_y', ''],
    ]);
  });

  it('gives a call without an id one, in its first piece only', () => {
    const calls = new ToolCallAssembly(ids());
    expect(calls.push({ index: 0, name: 'weather' })).toEqual({
      index: 0,
      id: 'call_made1',
      name: 'weather',
      arguments: '',
    });
    expect(calls.push({ index: 0, arguments: '{}' })).toEqual({ index: 0, arguments: '{}' });
    expect(calls.push({ index: 1, id: '', name: 'time' })!.id).toBe('call_made2');
    expect(calls.list().map((c) => c.id)).toEqual(['call_made1', 'call_made2']);
  });

  it('takes whole calls sent one per chunk at one index, or with no index, as separate calls', () => {
    const calls = new ToolCallAssembly(ids());
    expect(calls.push({ index: 0, id: 'call_a', name: 'weather', arguments: '{"city":"Paris"}' })).toEqual({
      index: 0,
      id: 'call_a',
      name: 'weather',
      arguments: '{"city":"Paris"}',
    });
    expect(calls.push({ index: 0, id: 'call_b', name: 'time', arguments: '{}' })).toEqual({
      index: 1,
      id: 'call_b',
      name: 'time',
      arguments: '{}',
    });
    expect(calls.list().map((c) => [c.id, c.function.name, c.function.arguments])).toEqual([
      ['call_a', 'weather', '{"city":"Paris"}'],
      ['call_b', 'time', '{}'],
    ]);
  });

  it('names a call once when every piece repeats its id and name, and passes on nothing for a piece with nothing new', () => {
    const calls = new ToolCallAssembly(ids());
    calls.push({ index: 0, id: 'call_a', name: 'weather', arguments: '{"city":' });
    expect(calls.push({ index: 0, id: 'call_a', name: 'weather', arguments: '"Paris"}' })).toEqual({
      index: 0,
      arguments: '"Paris"}',
    });
    expect(calls.push({ index: 0, id: 'call_a', name: 'weather' })).toBeNull();
    expect(calls.push({ index: 0, id: 'call_a' })).toBeNull();
    expect(calls.list()).toEqual([
      { id: 'call_a', type: 'function', function: { name: 'weather', arguments: '{"city":"Paris"}' } },
    ]);
  });

  it('keeps one call whose id comes late, or changes with each piece, as the SDK would', () => {
    const late = new ToolCallAssembly(ids());
    late.push({ index: 0, name: 'weather', arguments: '{"city":' });
    expect(late.push({ index: 0, id: 'call_late', arguments: '"Paris"}' })).toEqual({
      index: 0,
      arguments: '"Paris"}',
    });
    expect(late.list()).toEqual([
      { id: 'call_made1', type: 'function', function: { name: 'weather', arguments: '{"city":"Paris"}' } },
    ]);
    const changing = new ToolCallAssembly(ids());
    changing.push({ index: 0, id: 'frag1', name: 'weather', arguments: '{"city":' });
    changing.push({ index: 0, id: 'frag2', arguments: '"Paris"' });
    changing.push({ index: 0, id: 'frag3', arguments: '}' });
    expect(changing.list()).toEqual([
      { id: 'frag1', type: 'function', function: { name: 'weather', arguments: '{"city":"Paris"}' } },
    ]);
  });

  it('gives a call whose id is too long to be sent back one of its own', () => {
    const calls = new ToolCallAssembly(ids());
    const long = `call_${'x'.repeat(MAX_TOOL_CALL_ID)}`;
    expect(calls.push({ index: 0, id: long, name: 'weather' })!.id).toBe('call_made1');
    // Its next pieces, which repeat the long id, still belong to it.
    expect(calls.push({ index: 0, id: long, arguments: '{}' })).toEqual({ index: 0, arguments: '{}' });
    expect(calls.list().map((c) => [c.id, c.function.arguments])).toEqual([['call_made1', '{}']]);
  });

  it('makes what it passes on storable: no NUL, and a surrogate pair split between pieces kept whole', () => {
    const calls = new ToolCallAssembly(ids());
    const pair = '🎉';
    calls.push({ index: 0, id: 'call_a', name: 'say\u0000it' });
    const first = calls.push({ index: 0, arguments: `{"x":"\u0000${pair[0]}` })!;
    const second = calls.push({ index: 0, arguments: `${pair[1]}"}` })!;
    expect(first.arguments).not.toContain('\u0000');
    expect(first.arguments!.endsWith(pair[0]!)).toBe(false);
    expect(second.arguments!.startsWith(pair)).toBe(true);
    const [call] = calls.list();
    expect(call!.function.name).not.toContain('\u0000');
    expect(call!.function.arguments).toBe(first.arguments! + second.arguments!);
    expect(call!.function.arguments).toContain(pair);
  });

  it('gives out a first half that never got its second at the end, made storable', () => {
    const calls = new ToolCallAssembly(ids());
    calls.push({ index: 0, id: 'call_a', name: 'f', arguments: `{"x":"${'🎉'[0]}` });
    const rest = calls.end();
    expect(rest).toHaveLength(1);
    expect(rest[0]!.index).toBe(0);
    expect(rest[0]!.arguments).not.toBe('🎉'[0]);
    expect(calls.list()[0]!.function.arguments).toBe(`{"x":"${rest[0]!.arguments}`);
  });
});
