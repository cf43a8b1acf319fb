import { Redis } from 'ioredis';
import { createLogger } from '../../src/platform/logger';
import {
  createMemoryTaskBuffer,
  createRedisTaskBuffer,
  type TaskBuffer,
  type TaskChunk,
} from '../../src/platform/taskBuffer';

async function collect(buffer: TaskBuffer, taskId: string, signal = new AbortController().signal) {
  const chunks: TaskChunk[] = [];
  for await (const c of buffer.read(taskId, signal)) chunks.push(c);
  return chunks;
}

const done: TaskChunk = {
  kind: 'done',
  messageId: 'm1',
  usage: { prompt_tokens: 3, completion_tokens: 2 },
  cost: 1,
};

function contract(
  name: string,
  make: () => Promise<{ writer: TaskBuffer; reader: TaskBuffer; close(): Promise<void> }>,
) {
  describe(name, () => {
    let b: Awaited<ReturnType<typeof make>>;
    beforeEach(async () => {
      b = await make();
    });
    afterEach(() => b.close());

    it('replays what was written before the reader came, then follows live to the end', async () => {
      const id = crypto.randomUUID();
      b.writer.append(id, { kind: 'delta', content: 'Hel' });
      b.writer.append(id, { kind: 'delta', content: 'lo' });
      const reading = collect(b.reader, id);
      await new Promise((r) => setTimeout(r, 50));
      b.writer.append(id, { kind: 'delta', content: '!' });
      b.writer.append(id, done);
      expect(await reading).toEqual([
        { kind: 'delta', content: 'Hel' },
        { kind: 'delta', content: 'lo' },
        { kind: 'delta', content: '!' },
        done,
      ]);
    });

    it('carries the pieces of tool calls as they came, and follows on past them to the end', async () => {
      const id = crypto.randomUUID();
      const calls: TaskChunk[] = [
        { kind: 'tool_call', index: 0, id: 'call_a', name: 'weather', arguments: '' },
        { kind: 'tool_call', index: 0, arguments: '{"city":"Paris"}' },
        { kind: 'tool_call', index: 1, id: 'call_b', name: 'time', arguments: '{}' },
      ];
      b.writer.append(id, { kind: 'delta', content: 'Looking.' });
      for (const c of calls.slice(0, 2)) b.writer.append(id, c);
      const reading = collect(b.reader, id);
      await new Promise((r) => setTimeout(r, 50));
      b.writer.append(id, calls[2]!);
      const finished = { ...done, finishReason: 'tool_calls' as const };
      b.writer.append(id, finished);
      expect(await reading).toEqual([{ kind: 'delta', content: 'Looking.' }, ...calls, finished]);
    });

    it('keeps nothing after the terminal chunk, and a late reader still gets everything', async () => {
      const id = crypto.randomUUID();
      b.writer.append(id, { kind: 'delta', content: 'a' });
      b.writer.append(id, { kind: 'error', detail: 'upstream failed' });
      b.writer.append(id, { kind: 'delta', content: 'ignored' });
      await new Promise((r) => setTimeout(r, 50));
      expect(await collect(b.reader, id)).toEqual([
        { kind: 'delta', content: 'a' },
        { kind: 'error', detail: 'upstream failed' },
      ]);
    });

    it('stops following when the reader goes away', async () => {
      const id = crypto.randomUUID();
      b.writer.append(id, { kind: 'delta', content: 'a' });
      const abort = new AbortController();
      const got: TaskChunk[] = [];
      const reading = (async () => {
        for await (const c of b.reader.read(id, abort.signal)) got.push(c);
      })();
      // Once what was written has come (from Redis, another instance's, it takes a moment) the
      // reader leaves, and its reading ends though the task has not.
      for (let i = 0; i < 200 && got.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      abort.abort();
      await reading;
      expect(got).toEqual([{ kind: 'delta', content: 'a' }]);
    });

    it('keeps order across many deltas', async () => {
      const id = crypto.randomUUID();
      const reading = collect(b.reader, id);
      for (let i = 0; i < 500; i++) b.writer.append(id, { kind: 'delta', content: String(i) });
      b.writer.append(id, done);
      const chunks = await reading;
      expect(chunks.slice(0, -1).map((c) => (c.kind === 'delta' ? c.content : ''))).toEqual(
        Array.from({ length: 500 }, (_, i) => String(i)),
      );
    });
  });
}

describe('memory task buffer, released', () => {
  it('frees an ended task’s output, ignoring what comes late, and keeps one still going', async () => {
    const buffer = createMemoryTaskBuffer();
    buffer.append('ended', { kind: 'delta', content: 'a' });
    buffer.append('ended', done);
    buffer.append('going', { kind: 'delta', content: 'b' });
    buffer.release('ended');
    buffer.release('going');
    buffer.append('ended', { kind: 'error', detail: 'late' });
    expect(buffer.written('ended')).toEqual([]);
    expect(buffer.written('going')).toEqual([{ kind: 'delta', content: 'b' }]);
    await buffer.close();
  });

  it('keeps an ended task’s output whole for a reader still at it, and frees it when it is done', async () => {
    const buffer = createMemoryTaskBuffer();
    buffer.append('t', { kind: 'delta', content: 'a' });
    buffer.append('t', done);
    const reader = buffer.read('t', new AbortController().signal)[Symbol.asyncIterator]();
    expect((await reader.next()).value).toEqual({ kind: 'delta', content: 'a' });
    buffer.release('t');
    expect((await reader.next()).value).toEqual(done);
    expect((await reader.next()).done).toBe(true);
    expect(buffer.written('t')).toEqual([]);
    await buffer.close();
  });
});

contract('memory task buffer', async () => {
  const buffer = createMemoryTaskBuffer();
  return { writer: buffer, reader: buffer, close: () => buffer.close() };
});

const withRedis = process.env.REDIS_URL ? describe : describe.skip;
withRedis('with Redis', () => {
  const logger = createLogger({ LOG_LEVEL: 'silent' });
  const ready = (r: Redis) => new Promise((res) => (r.status === 'ready' ? res(null) : r.once('ready', res)));
  // Two buffers on two connections: the writer and the reader are different instances.
  contract('redis task buffer across instances', async () => {
    const a = new Redis(process.env.REDIS_URL!);
    const b = new Redis(process.env.REDIS_URL!);
    await Promise.all([ready(a), ready(b)]);
    const writer = createRedisTaskBuffer(a, logger);
    const reader = createRedisTaskBuffer(b, logger);
    return {
      writer,
      reader,
      async close() {
        await writer.close();
        await reader.close();
        a.disconnect();
        b.disconnect();
      },
    };
  });

  it('forgets the tasks generated here once their output has left memory, and reads them from Redis', async () => {
    const r = new Redis(process.env.REDIS_URL!);
    await ready(r);
    const buffer = createRedisTaskBuffer(r, logger, { keepSeconds: 1 });
    const id = crypto.randomUUID();
    buffer.open(id);
    buffer.append(id, { kind: 'delta', content: 'x' });
    buffer.append(id, done);
    for (let waited = 0; (await r.xlen(`task:${id}:out`)) < 2; waited += 10) {
      if (waited > 3_000) throw new Error('not written');
      await new Promise((res) => setTimeout(res, 10));
    }
    // Kept longer in Redis than in memory, as when it was read back from Redis by another instance.
    await r.persist(`task:${id}:out`);
    await new Promise((res) => setTimeout(res, 1_200));
    const stop = new AbortController();
    const timer = setTimeout(() => stop.abort(), 2_000);
    try {
      expect(await collect(buffer, id, stop.signal)).toEqual([{ kind: 'delta', content: 'x' }, done]);
    } finally {
      clearTimeout(timer);
      await r.del(`task:${id}:out`);
      await buffer.close();
      r.disconnect();
    }
  });

  describe('when the generating instance loses Redis for a while', () => {
    let a: Redis;
    let b: Redis;
    let writer: TaskBuffer;
    let reader: TaskBuffer;
    beforeEach(async () => {
      a = new Redis(process.env.REDIS_URL!, { enableOfflineQueue: false });
      b = new Redis(process.env.REDIS_URL!);
      await Promise.all([ready(a), ready(b)]);
      writer = createRedisTaskBuffer(a, logger);
      reader = createRedisTaskBuffer(b, logger);
    });
    afterEach(async () => {
      await writer.close();
      await reader.close();
      a.disconnect();
      b.disconnect();
    });
    const delta = (content: string): TaskChunk => ({ kind: 'delta', content });
    const eventuallyAsync = async (ok: () => Promise<boolean>) => {
      for (let waited = 0; !(await ok()); waited += 10) {
        if (waited > 3_000) throw new Error('not reached');
        await new Promise((res) => setTimeout(res, 10));
      }
    };
    const eventually = (ok: () => boolean) => eventuallyAsync(() => Promise.resolve(ok()));
    /**
     * Until the writer's connection, disconnected, is closed for good: connecting again before that
     * is refused ("already connecting/connected").
     */
    const gone = () => eventually(() => a.status === 'end');
    const readAll = async (id: string) => {
      const stop = new AbortController();
      const timer = setTimeout(() => stop.abort(), 3_000);
      try {
        return await collect(reader, id, stop.signal);
      } finally {
        clearTimeout(timer);
        await b.del(`task:${id}:out`);
      }
    };

    /** A task of three pieces and its end, in Redis before the writer went away; then Redis holds only `kept`. */
    const endedThenLost = async (kept: { id: string; piece: TaskChunk }) => {
      const id = crypto.randomUUID();
      writer.open(id);
      for (const c of ['1', '2', '3']) writer.append(id, delta(c));
      writer.append(id, done);
      await eventuallyAsync(async () => (await b.xlen(`task:${id}:out`)) === 4);
      a.disconnect();
      await b.del(`task:${id}:out`);
      await b.xadd(`task:${id}:out`, kept.id, 'c', JSON.stringify(kept.piece));
      await gone();
      return id;
    };
    const whole = [delta('1'), delta('2'), delta('3'), done];

    /** A task whose first piece reached Redis before the writer's connection went away. */
    const firstPieceThenAway = async () => {
      const id = crypto.randomUUID();
      writer.open(id);
      writer.append(id, delta('1'));
      await eventuallyAsync(async () => (await b.xlen(`task:${id}:out`)) === 1);
      a.disconnect();
      return id;
    };

    it('writes what Redis missed once it is back, before what follows, so no reader elsewhere gets a reply with a hole', async () => {
      const id = await firstPieceThenAway();
      writer.append(id, delta('2'));
      writer.append(id, delta('3'));
      await gone();
      await a.connect();
      writer.append(id, delta('4'));
      writer.append(id, done);
      expect(await readAll(id)).toEqual([delta('1'), delta('2'), delta('3'), delta('4'), done]);
    });

    it('writes an end that came while Redis was away as soon as it is back', async () => {
      const id = await firstPieceThenAway();
      writer.append(id, delta('2'));
      writer.append(id, done);
      await gone();
      await a.connect();
      expect(await readAll(id)).toEqual([delta('1'), delta('2'), done]);
    });

    it('writes again, shortly, what Redis refused though it stayed connected, the end included', async () => {
      const id = crypto.randomUUID();
      const multi = a.multi.bind(a);
      let refusals = 0;
      jest.spyOn(a, 'multi').mockImplementation(() => {
        const m = multi();
        const exec = m.exec.bind(m);
        m.exec = () => (refusals++ < 2 ? Promise.reject(new Error('Command timed out')) : exec());
        return m;
      });
      writer.open(id);
      writer.append(id, delta('1'));
      writer.append(id, done);
      expect(await readAll(id)).toEqual([delta('1'), done]);
      expect(refusals).toBe(3); // the first write refused, then its retry; the next retry writes both
    });

    it('writes again what Redis lost while away (a restart without its data), before what follows', async () => {
      const id = crypto.randomUUID();
      writer.open(id);
      writer.append(id, delta('1'));
      writer.append(id, delta('2'));
      await eventuallyAsync(async () => (await b.xlen(`task:${id}:out`)) === 2);
      a.disconnect();
      await b.del(`task:${id}:out`);
      writer.append(id, delta('3'));
      await gone();
      await a.connect();
      writer.append(id, done);
      expect(await readAll(id)).toEqual([delta('1'), delta('2'), delta('3'), done]);
    });

    it('writes again the part of an ended task that a lagging replica did not have, with nothing more to come', async () => {
      // The replica that took over had the first piece only.
      const id = await endedThenLost({ id: '0-1', piece: delta('1') });
      await a.connect();
      expect(await readAll(id)).toEqual(whole);
    });

    it('writes anew a stream that Redis lost but for a later piece (a write sent again on reconnecting)', async () => {
      const id = await endedThenLost({ id: '0-3', piece: delta('3') });
      await a.connect();
      // Read once rewritten: a reader that came before would have had the later piece already.
      await eventuallyAsync(async () => (await b.xlen(`task:${id}:out`)) === 4);
      expect(await readAll(id)).toEqual(whole);
    });

    it('makes a reader elsewhere wait at a hole in what Redis holds, from the start or after what it read, until the writer fills it', async () => {
      // Redis kept a later piece only (a write sent again on reconnecting), or lost one in the middle.
      const fromStart = await endedThenLost({ id: '0-3', piece: delta('3') });
      const inMiddle = crypto.randomUUID();
      writer.open(inMiddle);
      for (const c of ['1', '2', '3']) writer.append(inMiddle, delta(c));
      writer.append(inMiddle, done);
      await a.connect();
      await eventuallyAsync(async () => (await b.xlen(`task:${inMiddle}:out`)) === 4);
      a.disconnect();
      await b.xdel(`task:${inMiddle}:out`, '0-2');
      // The readers start while the writer is away, and read what they can.
      const reading = [fromStart, inMiddle].map((id) => readAll(id));
      await gone();
      await a.connect();
      expect(await Promise.all(reading)).toEqual([whole, whole]);
    });

    it('reads past a hole that nobody fills, once it has waited a while, rather than hang', async () => {
      const id = await endedThenLost({ id: '0-3', piece: delta('3') });
      await b.xadd(`task:${id}:out`, '0-4', 'c', JSON.stringify(done));
      const patient = createRedisTaskBuffer(b, logger, { holeWaitMs: 1_000 });
      const read = async (forMs: number) => {
        const stop = new AbortController();
        const timer = setTimeout(() => stop.abort(), forMs);
        try {
          return await collect(patient, id, stop.signal);
        } finally {
          clearTimeout(timer);
        }
      };
      try {
        // Nothing while it waits; then what there is.
        expect(await read(200)).toEqual([]);
        expect(await read(5_000)).toEqual([delta('3'), done]);
      } finally {
        await patient.close();
        await b.del(`task:${id}:out`);
      }
    });

    it('reads a stream that lost its first pieces only to its length limit without waiting', async () => {
      // As a reply of more than 100,000 pieces leaves it: its first ones trimmed, the rest whole.
      const id = crypto.randomUUID();
      const pipeline = b.pipeline();
      for (let n = 2; n <= 100_001; n++) {
        const piece = n === 100_001 ? done : delta(String(n));
        pipeline.xadd(`task:${id}:out`, `0-${n}`, 'c', JSON.stringify(piece));
      }
      await pipeline.exec();
      const patient = createRedisTaskBuffer(b, logger, { holeWaitMs: 60_000 });
      const stop = new AbortController();
      const timer = setTimeout(() => stop.abort(), 20_000);
      try {
        const all = await collect(patient, id, stop.signal);
        expect(all).toHaveLength(100_000);
        expect([all[0], all.at(-1)]).toEqual([delta('2'), done]);
      } finally {
        clearTimeout(timer);
        await patient.close();
        await b.del(`task:${id}:out`);
      }
    });

    it('writes again what was lost task by task, so that a running task’s next piece waits for one rewrite, not all', async () => {
      const ended: string[] = [];
      for (let i = 0; i < 20; i++) {
        const id = crypto.randomUUID();
        writer.open(id);
        writer.append(id, delta(`ended ${i}`));
        writer.append(id, done);
        ended.push(id);
      }
      const live = crypto.randomUUID();
      writer.open(live);
      writer.append(live, delta('1'));
      // All in Redis before it goes away (the live task's piece is written last).
      await eventuallyAsync(async () => (await b.xlen(`task:${live}:out`)) === 1);
      a.disconnect();
      await b.del(...ended.map((id) => `task:${id}:out`));
      await gone();
      // The keys each write touches, in the order they are written.
      const written: string[] = [];
      const multi = a.multi.bind(a);
      jest.spyOn(a, 'multi').mockImplementation(() => {
        const m = multi();
        const xadd = m.xadd.bind(m) as (...args: unknown[]) => typeof m;
        let first = true;
        m.xadd = (...args: unknown[]) => {
          if (first) written.push(String(args[0]));
          // The running task's next piece comes while the first rewrite is under way.
          if (first && written.length === 1) writer.append(live, delta('2'));
          first = false;
          return xadd(...args);
        };
        return m;
      });
      await a.connect();
      await eventually(() => written.includes(`task:${live}:out`));
      // Written right after the rewrite under way when it came, not after all twenty.
      expect(written.indexOf(`task:${live}:out`)).toBe(1);
      for (const id of ended) await b.del(`task:${id}:out`);
      writer.append(live, done);
      expect(await readAll(live)).toEqual([delta('1'), delta('2'), done]);
    });

    it('tries again, rewrite and all, a clearing of a stream with a hole that Redis refused', async () => {
      const id = await endedThenLost({ id: '0-3', piece: delta('3') });
      const multi = a.multi.bind(a);
      let refused = 0;
      jest.spyOn(a, 'multi').mockImplementation(() => {
        const m = multi();
        const del = m.del.bind(m) as (...args: unknown[]) => typeof m;
        let clears = false;
        m.del = (...args: unknown[]) => {
          clears = true;
          return del(...args);
        };
        const exec = m.exec.bind(m);
        m.exec = () => (clears && refused++ === 0 ? Promise.reject(new Error('Command timed out')) : exec());
        return m;
      });
      await a.connect();
      await eventuallyAsync(async () => (await b.xlen(`task:${id}:out`)) === 4);
      expect(await readAll(id)).toEqual(whole);
      expect(refused).toBeGreaterThan(1);
    });

    it('writes, before it closes, all that waited, though it is more than one write holds', async () => {
      const id = await firstPieceThenAway();
      for (let i = 2; i <= 1_300; i++) writer.append(id, delta(String(i)));
      await gone();
      await a.connect();
      writer.append(id, done);
      await writer.close();
      expect(await b.xlen(`task:${id}:out`)).toBe(1_301);
      const all = await readAll(id);
      expect(all).toHaveLength(1_301);
      expect(all.at(-1)).toEqual(done);
    });

    it('does not double a piece whose write landed though its answer was lost', async () => {
      const id = await firstPieceThenAway();
      writer.append(id, delta('2'));
      // As if the write of the second piece had reached Redis before the connection broke.
      await b.xadd(`task:${id}:out`, '0-2', 'c', JSON.stringify(delta('2')));
      await gone();
      await a.connect();
      writer.append(id, done);
      expect(await readAll(id)).toEqual([delta('1'), delta('2'), done]);
    });
  });

  it('a task ended by another instance (the sweeper) is still read from Redis there, with what its own instance wrote', async () => {
    const a = new Redis(process.env.REDIS_URL!);
    const b = new Redis(process.env.REDIS_URL!);
    await Promise.all([ready(a), ready(b)]);
    const generating = createRedisTaskBuffer(a, logger);
    const sweeping = createRedisTaskBuffer(b, logger);
    const id = crypto.randomUUID();
    try {
      generating.open(id);
      generating.append(id, { kind: 'delta', content: 'x' });
      generating.append(id, { kind: 'delta', content: 'y' });
      // Both pieces in Redis before the sweeper ends the task, as when it finds it overdue.
      for (let waited = 0; (await b.xlen(`task:${id}:out`)) < 2; waited += 10) {
        if (waited > 3_000) throw new Error('the pieces did not reach Redis');
        await new Promise((res) => setTimeout(res, 10));
      }
      const failed: TaskChunk = { kind: 'error', detail: 'The task ran past its time limit.' };
      sweeping.append(id, failed);
      expect(await collect(sweeping, id)).toEqual([
        { kind: 'delta', content: 'x' },
        { kind: 'delta', content: 'y' },
        failed,
      ]);
    } finally {
      await b.del(`task:${id}:out`);
      await generating.close();
      await sweeping.close();
      a.disconnect();
      b.disconnect();
    }
  });

  it('serves the generating instance from memory when Redis is unreachable', async () => {
    const down = new Redis('redis://127.0.0.1:1', {
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
    });
    down.on('error', () => undefined);
    const buffer = createRedisTaskBuffer(down, logger);
    const id = crypto.randomUUID();
    buffer.append(id, { kind: 'delta', content: 'x' });
    buffer.append(id, done);
    expect(await collect(buffer, id)).toEqual([{ kind: 'delta', content: 'x' }, done]);
    await buffer.close();
    down.disconnect();
  });
});
