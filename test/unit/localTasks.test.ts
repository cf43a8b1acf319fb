import { LocalTasks } from '../../src/commands/tasks/flow';

/** A generation this process runs, ended when `end` is called. */
function generation() {
  let end!: () => void;
  const done = new Promise<void>((resolve) => (end = resolve));
  return { done, end };
}

describe('the tasks this process settles itself', () => {
  it('answers where its own settlement ended, once its generation is over, position 0 included', async () => {
    const local = new LocalTasks();
    const g = generation();
    local.add('t1', g.done);
    let answer: bigint | null | undefined;
    const asked = local.settledHere('t1').then((p) => (answer = p));
    await Promise.resolve();
    // Still generating: whoever asks waits for the end.
    expect(answer).toBeUndefined();
    local.settled('t1', 0n);
    g.end();
    await asked;
    expect(answer).toBe(0n);
  });

  it('answers null for a task whose settlement here failed, and for one it never ran', async () => {
    const local = new LocalTasks();
    const g = generation();
    local.add('t1', g.done);
    g.end();
    expect(await local.settledHere('t1')).toBeNull();
    expect(await local.settledHere('elsewhere')).toBeNull();
  });

  it('forgets the oldest tasks past its capacity', async () => {
    const local = new LocalTasks(2);
    for (const id of ['a', 'b', 'c']) {
      local.add(id, Promise.resolve());
      local.settled(id, 7n);
    }
    expect(await local.settledHere('a')).toBeNull();
    expect(await local.settledHere('b')).toBe(7n);
    expect(await local.settledHere('c')).toBe(7n);
  });
});
