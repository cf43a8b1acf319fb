import { ToolCallAssembly } from '../../src/platform/llm/toolCalls';

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
    expect(calls.push({ index: 3, id: 'call_x', name: 'a' }).index).toBe(0);
    expect(calls.push({ index: 7, id: 'call_y', name: 'b' }).index).toBe(1);
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
    expect(calls.push({ index: 1, id: '', name: 'time' }).id).toBe('call_made2');
    expect(calls.list().map((c) => c.id)).toEqual(['call_made1', 'call_made2']);
  });

  it('makes what it passes on storable: no NUL, and a surrogate pair split between pieces kept whole', () => {
    const calls = new ToolCallAssembly(ids());
    const pair = '🎉';
    calls.push({ index: 0, id: 'call_a', name: 'say\u0000it' });
    const first = calls.push({ index: 0, arguments: `{"x":"\u0000${pair[0]}` });
    const second = calls.push({ index: 0, arguments: `${pair[1]}"}` });
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
