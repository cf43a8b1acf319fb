import { EventEmitter } from 'node:events';
import type { Redis } from 'ioredis';
import type { FinishReason, TokenLogprob, ToolCallDelta } from './llm/types';
import type { Logger } from './logger';

/** One piece of a task's output, as the SSE stream sends it. */
export type TaskChunk =
  /** A piece of the reply's text, with its tokens' log probabilities when a completion asked for them. */
  | { kind: 'delta'; content: string; logprobs?: TokenLogprob[] }
  /** A piece of the reasoning a reasoning model shows before it answers (completions only). */
  | { kind: 'reasoning'; content: string }
  /** A piece of a call of a tool the model was offered (completions only). */
  | ({ kind: 'tool_call' } & ToolCallDelta)
  | {
      kind: 'done';
      messageId: string | null;
      usage: { prompt_tokens: number; completion_tokens: number };
      cost: number;
      /** The provider's word on why the reply ended, when it gave one (absent from older buffers). */
      finishReason?: FinishReason;
      /**
       * The global position where the task's settlement ended: absent when it could not be settled
       * here (the reactor settles it), and in older buffers.
       */
      position?: string;
    }
  | {
      kind: 'error';
      detail: string;
      /** The provider refused the request as asked, before any output: the caller's to fix. */
      refused?: boolean;
      /** As for `done`. */
      position?: string;
    };

/**
 * Where a task's output waits for its reader: generation writes as it goes, independent of any HTTP
 * connection; the stream endpoint replays what is there, then follows live until `done`/`error`.
 */
export interface TaskBuffer {
  /** This instance generates the task: its readers here read its own output, not Redis'. */
  open(taskId: string): void;
  append(taskId: string, chunk: TaskChunk): void;
  /** Replays, then follows; ends after the terminal chunk or when `signal` aborts. */
  read(taskId: string, signal: AbortSignal): AsyncIterable<TaskChunk>;
  /**
   * The one reader an ended task's output will have read it to its end (a chat's claimed stream):
   * this instance frees what it holds of it at once, rather than keep it for a reader to come.
   */
  release(taskId: string): void;
  close(): Promise<void>;
}

const terminal = (c: TaskChunk) => c.kind === 'done' || c.kind === 'error';

/** A task buffer in this process's memory, which can also say what a task has written so far. */
export interface MemoryTaskBuffer extends TaskBuffer {
  /** The task's output so far (its end included, nothing after it); none once it has left memory. */
  written(taskId: string): readonly TaskChunk[] | undefined;
}

/** In process: one instance serves both the generation and its stream. Finished buffers are kept a while. */
export function createMemoryTaskBuffer(options: { keepMs?: number } = {}): MemoryTaskBuffer {
  const keepMs = options.keepMs ?? 10 * 60_000;
  // `ended`: the terminal chunk is in (a reply of thousands of deltas is not scanned per append).
  // `readers`: reading it now; `released`: to be emptied once they are done.
  const buffers = new Map<
    string,
    { chunks: TaskChunk[]; ended: boolean; readers: number; released: boolean; timer?: NodeJS.Timeout }
  >();
  const events = new EventEmitter();
  events.setMaxListeners(0);

  const bufferOf = (taskId: string) => {
    let b = buffers.get(taskId);
    if (!b) buffers.set(taskId, (b = { chunks: [], ended: false, readers: 0, released: false }));
    return b;
  };

  return {
    open() {},
    written: (taskId) => buffers.get(taskId)?.chunks,
    release(taskId) {
      // The entry stays, ended and empty, until its timer: an append that comes late is ignored
      // rather than starting a buffer nobody would end. A reader still at it keeps it whole.
      const b = buffers.get(taskId);
      if (!b?.ended) return;
      if (b.readers > 0) b.released = true;
      else b.chunks = [];
    },
    append(taskId, chunk) {
      const b = bufferOf(taskId);
      if (b.ended) return;
      b.chunks.push(chunk);
      if (terminal(chunk)) {
        b.ended = true;
        b.timer = setTimeout(() => buffers.delete(taskId), keepMs);
        b.timer.unref();
      }
      events.emit(taskId);
    },
    async *read(taskId, signal) {
      let next = 0;
      const reading = bufferOf(taskId);
      reading.readers++;
      try {
        yield* follow();
      } finally {
        reading.readers--;
        const b = buffers.get(taskId);
        if (b?.released && b.readers === 0) b.chunks = [];
        // A reader of a task that never wrote here leaves no empty buffer behind.
        if (b && !b.ended && b.chunks.length === 0 && b.readers === 0 && events.listenerCount(taskId) === 0)
          buffers.delete(taskId);
      }
      async function* follow(): AsyncGenerator<TaskChunk> {
        for (;;) {
          const b = bufferOf(taskId);
          while (next < b.chunks.length) {
            const chunk = b.chunks[next++]!;
            yield chunk;
            if (terminal(chunk)) return;
          }
          if (signal.aborted) return;
          await new Promise<void>((resolve) => {
            const wake = () => {
              events.off(taskId, wake);
              signal.removeEventListener('abort', wake);
              resolve();
            };
            events.on(taskId, wake);
            signal.addEventListener('abort', wake, { once: true });
          });
        }
      }
    },
    async close() {
      for (const b of buffers.values()) clearTimeout(b.timer);
      buffers.clear();
    },
  };
}

/** The place of a piece of ours in a task's stream (its entry id `0-n`), or undefined for another's. */
const placeOf = (entryId: string): number | undefined =>
  /^0-\d+$/.test(entryId) ? Number(entryId.slice(2)) : undefined;

/**
 * Redis Streams: any instance can serve a task's stream, wherever it is generated. Every write also
 * goes to this instance's memory buffer, so when Redis is down the instance that generates still
 * serves its own tasks (the documented fallback: a stream request that lands elsewhere then waits).
 */
export function createRedisTaskBuffer(
  redis: Redis,
  logger: Logger,
  options: { keepSeconds?: number; holeWaitMs?: number } = {},
): TaskBuffer {
  const keepSeconds = options.keepSeconds ?? 600;
  /**
   * How long a reader waits at a hole in a task's stream (Redis lost pieces its writer has not
   * written again yet) before it reads on past it: the writer may be gone, with what was lost.
   */
  const holeWaitMs = options.holeWaitMs ?? 10_000;
  const local = createMemoryTaskBuffer({ keepMs: keepSeconds * 1000 });
  // The tasks generated here (opened), until their output leaves this instance's memory
  // (`keepSeconds` after it ended, as the memory buffer drops it); after that, Redis alone has it.
  const localTasks = new Map<string, NodeJS.Timeout | undefined>();
  /**
   * The output of each task generated here that is not in Redis yet, and how much went before it.
   * Redis always holds a beginning of a task's output, never one with a piece missing: what could
   * not be written (Redis away, a write failed) waits here and goes first, once Redis is back.
   */
  const unwritten = new Map<string, { queue: TaskChunk[]; written: number; clear?: boolean }>();
  const ended = (taskId: string) => {
    if (localTasks.get(taskId) !== undefined) return;
    const timer = setTimeout(() => {
      localTasks.delete(taskId);
      unwritten.delete(taskId);
    }, keepSeconds * 1000);
    timer.unref();
    localTasks.set(taskId, timer);
  };
  const key = (taskId: string) => `task:${taskId}:out`;
  /** How soon output that Redis refused is written again (its connection up all along). */
  const RETRY_MS = 1_000;
  /** How many tasks' streams are looked at in one round trip after an outage. */
  const REGAIN_BATCH = 500;
  /** At most this many pieces go in one write, so that another task's next piece waits for no more. */
  const WRITE_BATCH = 500;
  /** A task's stream keeps about this many entries, its last ones. */
  const MAX_ENTRIES = 100_000;
  const retrying = new Map<string, NodeJS.Timeout>();
  const channel = (taskId: string) => `task:${taskId}:wake`;
  // Readers wait for a wake-up on one subscriber connection shared by all of them, then read with
  // plain XRANGE: no blocking command ties up a connection per open stream.
  const subscriber = redis.duplicate();
  subscriber.on('error', () => undefined);
  const wakes = new EventEmitter();
  wakes.setMaxListeners(0);
  subscriber.on('message', (ch: string) => wakes.emit(ch));
  const listening = new Map<string, number>();
  let writes = Promise.resolve();

  async function listen(ch: string, delta: 1 | -1): Promise<void> {
    const n = (listening.get(ch) ?? 0) + delta;
    if (n <= 0) listening.delete(ch);
    else listening.set(ch, n);
    try {
      if (delta === 1 && n === 1) await subscriber.subscribe(ch);
      if (delta === -1 && n <= 0) await subscriber.unsubscribe(ch);
    } catch {
      // Without the wake-up, readers still poll.
    }
  }

  /**
   * One write of pieces of a task's output, each at the entry id `idOf` gives it (`*`: after the
   * last), that wakes its readers; the output is kept `keepSeconds` once it has ended.
   */
  const writeOf = (taskId: string, chunks: TaskChunk[], idOf: (i: number) => string, clearFirst = false) => {
    const multi = redis.multi();
    // A stream with a hole goes in the same transaction as the start of its rewrite: no reader sees
    // it missing, and a clearing that fails leaves it to be tried again, rewrite and all.
    if (clearFirst) multi.del(key(taskId));
    chunks.forEach((c, i) =>
      multi.xadd(key(taskId), 'MAXLEN', '~', String(MAX_ENTRIES), idOf(i), 'c', JSON.stringify(c)),
    );
    return multi
      .expire(key(taskId), chunks.some(terminal) ? keepSeconds : keepSeconds * 6)
      .publish(channel(taskId), '1');
  };

  /**
   * Writes what waits of a task's output, in order per instance: chained, so a delta never
   * overtakes the one before it. Each piece has its place in the entry's id (`0-1`, `0-2`…), so a
   * write whose answer was lost, written again, is refused as already there rather than doubled.
   */
  const flush = (taskId: string): Promise<void> => {
    writes = writes.then(async () => {
      const w = unwritten.get(taskId);
      if (!w || w.queue.length === 0 || redis.status !== 'ready') return;
      // A write just refused is tried again by its timer (or once Redis is back), not at each piece:
      // Redis may refuse them all for a while before its connection is known to be lost.
      if (retrying.has(taskId)) return;
      const batch = w.queue.slice(0, WRITE_BATCH);
      const clear = w.clear === true;
      let done = 0;
      try {
        const all = (await writeOf(taskId, batch, (i) => `0-${w.written + i + 1}`, clear).exec()) ?? [];
        if (clear && all[0]?.[0]) throw all[0][0];
        w.clear = false;
        const results = clear ? all.slice(1) : all;
        // Written, or refused as not past the stream's last entry: an earlier write of it landed
        // (its answer lost), or another instance ended the task there (its sweeper), after which
        // nothing is read.
        let refused = 0;
        for (; done < batch.length; done++) {
          const err = results[done]?.[0];
          if (!err) continue;
          if (!/equal or smaller/.test(err.message)) break;
          refused++;
        }
        w.queue.splice(0, done);
        w.written += done;
        if (refused > 0) {
          logger.warn(
            { taskId, refused },
            'task output already in redis, or ended there by another instance',
          );
        }
        if (done < batch.length) {
          logger.warn(
            { err: results[done]?.[0]?.message, taskId },
            'task output not written to redis; kept for later',
          );
        }
      } catch (err) {
        logger.warn(
          { err: (err as Error).message, taskId },
          'task output not written to redis; kept for later',
        );
      }
      // More than one write's worth: the rest after what else waits by now.
      if (done === batch.length && w.queue.length > 0) void flush(taskId);
      // Not all written with Redis there (a write refused, or timed out): tried again shortly, as
      // the task may write nothing more (its end included).
      else if (w.queue.length > 0 && redis.status === 'ready' && !retrying.has(taskId)) {
        const timer = setTimeout(() => {
          retrying.delete(taskId);
          void flush(taskId);
        }, RETRY_MS);
        timer.unref();
        retrying.set(taskId, timer);
      }
    });
    return writes;
  };
  /** The rewrites under way after outages: closing waits for them. */
  const regaining = new Set<Promise<void>>();
  /**
   * Back after an outage: what Redis lost meanwhile is written again, then what waited goes out
   * (though its task may write nothing more). A Redis restarted without its data, or a replica that
   * lagged when it took over, holds less of a task's output than was written to it, or (a write
   * that was in flight, sent again on reconnecting) its later pieces without the earlier ones. A
   * stream is whole when it holds our ids `0-1`…`0-n`, each once, up to the last written; anything
   * else of ours is written again from this instance's memory, so that a reader elsewhere gets no
   * reply with a hole. A stream whose last entry is not ours was ended by another instance (its
   * sweeper) and is left as it is.
   */
  const back = () => {
    // Back: what waits goes now, not when a retry's timer says.
    for (const timer of retrying.values()) clearTimeout(timer);
    retrying.clear();
    writes = writes.then(async () => {
      try {
        const tasks = [...unwritten].filter(([, w]) => w.written > 0);
        for (let i = 0; i < tasks.length && redis.status === 'ready'; i += REGAIN_BATCH) {
          const batch = tasks.slice(i, i + REGAIN_BATCH);
          const looks = redis.pipeline();
          for (const [taskId] of batch) looks.xlen(key(taskId)).xrevrange(key(taskId), '+', '-', 'COUNT', 1);
          const results = (await looks.exec()) ?? [];
          batch.forEach(([taskId, w], j) => {
            const [lengthErr, length] = results[2 * j] ?? [new Error('no answer')];
            const [lastErr, entries] = results[2 * j + 1] ?? [new Error('no answer')];
            if (lengthErr || lastErr) return;
            const last = (entries as [string, string[]][])[0]?.[0];
            const n = last === undefined ? 0 : placeOf(last);
            if (n === undefined) return;
            // A stream longer than it keeps lost its first entries by design, not to an outage.
            const whole = length === n || n > MAX_ENTRIES;
            if (whole && n >= w.written) return;
            const all = local.written(taskId);
            if (!all || all.length < w.written) return;
            // A whole beginning is added to; a stream with a hole is cleared and written anew.
            const from = whole ? n : 0;
            if (!whole) w.clear = true;
            logger.warn(
              { taskId, written: w.written, kept: length },
              'redis lost part of a task output; written again from memory',
            );
            w.queue = [...all.slice(from, w.written), ...w.queue];
            w.written = from;
          });
        }
      } catch (err) {
        logger.warn({ err: (err as Error).message }, 'task output in redis not checked after an outage');
      }
    });
    // Task by task, those still running first, each after what else waits by then: live output
    // waits for one task's rewrite at a time, not for all of them.
    const going = writes.then(async () => {
      const waiting = [...unwritten].filter(([, w]) => w.queue.length > 0).map(([id]) => id);
      const running = (id: string) => localTasks.get(id) === undefined;
      for (const taskId of [...waiting.filter(running), ...waiting.filter((id) => !running(id))]) {
        await flush(taskId);
      }
    });
    regaining.add(going);
    void going.finally(() => regaining.delete(going));
  };
  redis.on('ready', back);

  return {
    open(taskId) {
      if (!localTasks.has(taskId)) localTasks.set(taskId, undefined);
      if (!unwritten.has(taskId)) unwritten.set(taskId, { queue: [], written: 0 });
    },
    append(taskId, chunk) {
      local.append(taskId, chunk);
      const w = unwritten.get(taskId);
      if (w) {
        if (terminal(chunk)) ended(taskId);
        w.queue.push(chunk);
        void flush(taskId);
        return;
      }
      // A task generated elsewhere, ended here (the sweeper): its end goes after whatever its own
      // instance wrote, and this instance goes on reading it from Redis.
      writes = writes.then(async () => {
        if (redis.status !== 'ready') return;
        try {
          await writeOf(taskId, [chunk], () => '*').exec();
        } catch (err) {
          logger.warn({ err: (err as Error).message, taskId }, 'task output not written to redis');
        }
      });
    },
    async *read(taskId, signal) {
      if (localTasks.has(taskId) || redis.status !== 'ready') {
        yield* local.read(taskId, signal);
        return;
      }
      const ch = channel(taskId);
      await listen(ch, 1);
      try {
        let last = '-';
        let yielded = 0;
        /** The place (`0-n`) the next piece must have: 1 at first, unless the stream was trimmed. */
        let next: number | undefined;
        let holeSince: number | undefined;
        /**
         * Whether a piece of ours at place `n` may be read now. Places follow one another: a
         * stream of ours only lacks pieces before those it holds once it is longer than it keeps
         * (`MAXLEN ~` keeps at least that many). Anything else is a hole that its writer fills
         * once it is back, so the reader waits for it (a while), rather than give a reply with a
         * hole. The wait is bounded: a writer back after an outage rewrites the tasks still running
         * first and the ended ones after, and one gone for good never fills it.
         */
        const readable = async (n: number) => {
          if (n === (next ?? 1)) return true;
          // Trimmed past where this reader is (its first pieces, or more for a reader far behind).
          if (n > (next ?? 1) && (await redis.xlen(key(taskId))) >= MAX_ENTRIES) return true;
          holeSince ??= Date.now();
          if (Date.now() - holeSince < holeWaitMs) return false;
          logger.warn(
            { taskId, expected: next ?? 1, found: n },
            'task output in redis has a hole; read past it',
          );
          return true;
        };
        while (!signal.aborted) {
          let items: [string, string[]][];
          try {
            items = await redis.xrange(key(taskId), last === '-' ? '-' : `(${last}`, '+', 'COUNT', 500);
          } catch {
            if (localTasks.has(taskId)) {
              // Go on from this instance's copy, past what was already read from Redis.
              let skip = yielded;
              for await (const chunk of local.read(taskId, signal)) if (skip-- <= 0) yield chunk;
              return;
            }
            items = [];
          }
          let hole = false;
          for (const [entryId, fields] of items) {
            // A sweeper's end (another instance's) has no place of ours.
            const n = placeOf(entryId);
            if (n !== undefined) {
              try {
                hole = !(await readable(n));
              } catch {
                hole = true;
              }
              if (hole) break;
              next = n + 1;
            }
            holeSince = undefined;
            last = entryId;
            yielded++;
            const chunk = JSON.parse(fields[1] ?? '{}') as TaskChunk;
            yield chunk;
            if (terminal(chunk)) return;
          }
          if (items.length > 0 && !hole) continue;
          // Wait for the next write (or poll: a wake-up lost to a reconnect costs at most this).
          await new Promise<void>((resolve) => {
            const done = () => {
              clearTimeout(timer);
              wakes.off(ch, done);
              signal.removeEventListener('abort', done);
              resolve();
            };
            const timer = setTimeout(done, 250);
            wakes.on(ch, done);
            signal.addEventListener('abort', done, { once: true });
          });
        }
      } finally {
        await listen(ch, -1);
      }
    },
    // What Redis holds expires on its own; a hole in it now harms nobody.
    release: (taskId) => local.release(taskId),
    async close() {
      // What waits goes out: the rewrites after an outage, and any write a write queued after it.
      await Promise.all(regaining);
      for (let last = writes; ; last = writes) {
        await last;
        if (last === writes) break;
      }
      redis.off('ready', back);
      for (const timer of [...localTasks.values(), ...retrying.values()]) clearTimeout(timer);
      localTasks.clear();
      retrying.clear();
      unwritten.clear();
      subscriber.disconnect();
      await local.close();
    },
  };
}
