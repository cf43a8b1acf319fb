import { AppendBatcher, type BatchRunner, type PendingAppend } from '../../src/eventstore/appendBatcher';
import { WrongExpectedRevision, type AppendResult } from '../../src/eventstore/port';

const result = (n: number): AppendResult => ({
  nextExpectedRevision: BigInt(n),
  position: BigInt(n),
  logPosition: { txid: 1n, position: BigInt(n) },
});
const append = (streamName: string): PendingAppend => ({ streamName, events: [], expected: 'any' });

/** A runner whose statements finish when the test says so. */
function scriptedRunner() {
  const calls: { kind: 'single' | 'batch'; streams: string[]; finish: (err?: Error) => void }[] = [];
  let failStreams = new Set<string>();
  let counter = 0;
  const runner: BatchRunner = {
    single: (a) =>
      new Promise((resolve, reject) => {
        calls.push({
          kind: 'single',
          streams: [a.streamName],
          finish: (err) => (err ? reject(err) : resolve(result(++counter))),
        });
      }),
    batch: (appends) =>
      new Promise((resolve, reject) => {
        calls.push({
          kind: 'batch',
          streams: appends.map((a) => a.streamName),
          finish: (err) => {
            if (err) return reject(err);
            resolve(
              new Map(
                appends.filter((a) => !failStreams.has(a.streamName)).map((a) => [a, result(++counter)]),
              ),
            );
          },
        });
      }),
  };
  return { runner, calls, failing: (streams: string[]) => (failStreams = new Set(streams)) };
}

const tick = () => new Promise((r) => setImmediate(r));

describe('append group commit', () => {
  it('sends a lone append on its own, once the work under way has run', async () => {
    const { runner, calls } = scriptedRunner();
    const batcher = new AppendBatcher(runner, { maxInFlight: 2, maxBatch: 10 });
    const done = batcher.submit(append('a-1'));
    expect(calls).toHaveLength(0);
    await tick();
    expect(calls.map((c) => c.kind)).toEqual(['single']);
    calls[0]!.finish();
    await expect(done).resolves.toEqual(result(1));
  });

  it('sends appends made together in one statement, though nothing is in flight', async () => {
    const { runner, calls } = scriptedRunner();
    const batcher = new AppendBatcher(runner, { maxInFlight: 4, maxBatch: 10 });
    // As a task's start makes them: one now, the others a few promise steps later.
    const together = [batcher.submit(append('slots-1'))];
    await Promise.resolve();
    together.push(batcher.submit(append('slots-2')));
    await Promise.resolve().then(() => together.push(batcher.submit(append('ledger-1'))));
    await tick();
    expect(calls.map((c) => [c.kind, c.streams])).toEqual([['batch', ['slots-1', 'slots-2', 'ledger-1']]]);
    calls[0]!.finish();
    expect((await Promise.all(together)).map((r) => r.position)).toEqual([1n, 2n, 3n]);
  });

  it('batches appends that arrive while statements are in flight, one per stream', async () => {
    const { runner, calls } = scriptedRunner();
    const batcher = new AppendBatcher(runner, { maxInFlight: 1, maxBatch: 10 });
    const first = batcher.submit(append('a-1'));
    await tick();
    const waiting = ['b-1', 'c-1', 'b-1', 'd-1'].map((s) => batcher.submit(append(s)));
    await tick();
    expect(calls).toHaveLength(1);
    calls[0]!.finish();
    await first;
    await tick();
    await tick();
    // b-1's second append waits: one append per stream in a statement, in order.
    expect(calls[1]).toMatchObject({ kind: 'batch', streams: ['b-1', 'c-1', 'd-1'] });
    calls[1]!.finish();
    await tick();
    await tick();
    expect(calls[2]).toMatchObject({ kind: 'single', streams: ['b-1'] });
    calls[2]!.finish();
    const results = await Promise.all(waiting);
    expect(results.map((r) => r.position)).toEqual([2n, 3n, 5n, 4n]);
  });

  it('keeps a stream out of a statement while another statement holds it', async () => {
    const { runner, calls } = scriptedRunner();
    const batcher = new AppendBatcher(runner, { maxInFlight: 2, maxBatch: 10 });
    void batcher.submit(append('a-1'));
    void batcher.submit(append('a-1'));
    void batcher.submit(append('b-1'));
    await tick();
    // a-1's second append waits for its first, though a statement could still go.
    expect(calls.map((c) => c.streams)).toEqual([['a-1', 'b-1']]);
    calls[0]!.finish();
    await tick();
    await tick();
    expect(calls.map((c) => c.streams)).toEqual([['a-1', 'b-1'], ['a-1']]);
  });

  it('retries on its own an append whose expectation failed in the batch, and passes on its error', async () => {
    const { runner, calls, failing } = scriptedRunner();
    const batcher = new AppendBatcher(runner, { maxInFlight: 1, maxBatch: 10 });
    const first = batcher.submit(append('a-1'));
    await tick();
    const ok = batcher.submit(append('b-1'));
    const conflicting = batcher.submit(append('c-1'));
    calls[0]!.finish();
    await first;
    await tick();
    failing(['c-1']);
    calls[1]!.finish();
    await expect(ok).resolves.toBeDefined();
    await tick();
    expect(calls[2]).toMatchObject({ kind: 'single', streams: ['c-1'] });
    calls[2]!.finish(new WrongExpectedRevision('c-1', 0n, 3n));
    await expect(conflicting).rejects.toBeInstanceOf(WrongExpectedRevision);
  });

  it('runs every append on its own when the batch statement fails as a whole', async () => {
    const { runner, calls } = scriptedRunner();
    const batcher = new AppendBatcher(runner, { maxInFlight: 1, maxBatch: 10 });
    const first = batcher.submit(append('a-1'));
    await tick();
    const rest = [batcher.submit(append('b-1')), batcher.submit(append('c-1'))];
    calls[0]!.finish();
    await first;
    await tick();
    calls[1]!.finish(Object.assign(new Error('duplicate key'), { code: '23505' }));
    await tick();
    expect(calls.slice(2).map((c) => [c.kind, c.streams[0]])).toEqual([
      ['single', 'b-1'],
      ['single', 'c-1'],
    ]);
    calls[2]!.finish();
    calls[3]!.finish();
    await expect(Promise.all(rest)).resolves.toHaveLength(2);
  });

  it('settles once every append submitted is answered, those queued behind a statement included', async () => {
    const { runner, calls } = scriptedRunner();
    const batcher = new AppendBatcher(runner, { maxInFlight: 1, maxBatch: 10 });
    await batcher.settled();
    const answered: string[] = [];
    for (const s of ['a-1', 'a-1', 'b-1']) void batcher.submit(append(s)).then(() => answered.push(s));
    let settled = false;
    const settling = batcher.settled().then(() => (settled = true));
    await tick();
    // The second append to a-1 waits for the first's statement.
    expect(calls.map((c) => c.streams)).toEqual([['a-1', 'b-1']]);
    calls[0]!.finish();
    await tick();
    await tick();
    expect(settled).toBe(false);
    expect(calls.map((c) => c.streams)).toEqual([['a-1', 'b-1'], ['a-1']]);
    calls[1]!.finish();
    await settling;
    expect(answered.sort()).toEqual(['a-1', 'a-1', 'b-1']);
  });

  it('never puts more than maxBatch appends in one statement', async () => {
    const { runner, calls } = scriptedRunner();
    const batcher = new AppendBatcher(runner, { maxInFlight: 1, maxBatch: 3 });
    for (let i = 0; i <= 7; i++) void batcher.submit(append(`x-${i}`));
    await tick();
    expect(calls[0]!.streams).toHaveLength(3);
    calls[0]!.finish();
    await tick();
    await tick();
    expect(calls[1]!.streams).toHaveLength(3);
  });
});
