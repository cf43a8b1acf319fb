import { backoffMs, withRetryBeforeFirstToken } from '../../src/platform/llm/retry';
import { LOCAL_ECHO } from '../../src/platform/llm/catalog';
import { LlmAborted, ProviderError, type LlmProvider, type StreamItem } from '../../src/platform/llm/types';

type Step = StreamItem | Error;

/** A provider whose n-th call plays the n-th script. */
function scripted(...scripts: Step[][]): LlmProvider & { calls: number } {
  const p = {
    calls: 0,
    stream() {
      const script = scripts[p.calls++] ?? [];
      return (async function* () {
        for (const step of script) {
          if (step instanceof Error) throw step;
          yield step;
        }
      })();
    },
  };
  return p;
}

const retryable = (status = 503) => new ProviderError('busy', { retryable: true, status });
const fatal = () => new ProviderError('bad request', { retryable: false, status: 400 });

async function run(provider: LlmProvider, signal = new AbortController().signal) {
  const items: StreamItem[] = [];
  try {
    for await (const item of provider.stream({
      model: LOCAL_ECHO,
      messages: [],
      params: { max_tokens: 5 },
      signal,
    }))
      items.push(item);
    return { items, error: undefined as unknown };
  } catch (error) {
    return { items, error };
  }
}

describe('retry before the first token', () => {
  it('retries retryable failures until an attempt succeeds', async () => {
    const inner = scripted(
      [retryable()],
      [retryable(429)],
      [{ delta: 'ok' }, { usage: { prompt_tokens: 1, completion_tokens: 1 } }],
    );
    const seen: [number, number | undefined][] = [];
    const begun: number[] = [];
    const out = await run(
      withRetryBeforeFirstToken(inner, {
        attempts: 3,
        baseDelayMs: 1,
        onRetry: (e, n) => seen.push([n, e.status]),
        onRetrying: (n) => begun.push(n),
      }),
    );
    expect(begun).toEqual([2, 3]);
    expect(out.error).toBeUndefined();
    expect(out.items).toEqual([{ delta: 'ok' }, { usage: { prompt_tokens: 1, completion_tokens: 1 } }]);
    expect(inner.calls).toBe(3);
    expect(seen).toEqual([
      [1, 503],
      [2, 429],
    ]);
  });

  it('stops after the last attempt with the last error', async () => {
    const inner = scripted([retryable()], [retryable(502)], [retryable(504)]);
    const out = await run(withRetryBeforeFirstToken(inner, { attempts: 2, baseDelayMs: 1 }));
    expect(out.error).toMatchObject({ status: 502 });
    expect(inner.calls).toBe(2);
  });

  it('never retries once something was yielded', async () => {
    // Even an error marked retryable: the caller already has part of a reply.
    const inner = scripted([{ delta: 'par' }, retryable()], [{ delta: 'again' }]);
    const out = await run(withRetryBeforeFirstToken(inner, { attempts: 5, baseDelayMs: 1 }));
    expect(out.items).toEqual([{ delta: 'par' }]);
    expect(out.error).toBeInstanceOf(ProviderError);
    expect(inner.calls).toBe(1);
  });

  it('does not retry errors that are not retryable, nor other errors', async () => {
    const a = scripted([fatal()], [{ delta: 'x' }]);
    expect((await run(withRetryBeforeFirstToken(a, { attempts: 5, baseDelayMs: 1 }))).error).toMatchObject({
      status: 400,
    });
    expect(a.calls).toBe(1);
    const b = scripted([new TypeError('bug')], [{ delta: 'x' }]);
    expect((await run(withRetryBeforeFirstToken(b, { attempts: 5, baseDelayMs: 1 }))).error).toBeInstanceOf(
      TypeError,
    );
    expect(b.calls).toBe(1);
  });

  it('an abort during the wait ends at once with LlmAborted', async () => {
    const inner = scripted([retryable()], [{ delta: 'late' }]);
    const controller = new AbortController();
    const begun: number[] = [];
    const pending = run(
      withRetryBeforeFirstToken(inner, {
        attempts: 3,
        baseDelayMs: 3_600_000,
        onRetrying: (n) => begun.push(n),
      }),
      controller.signal,
    );
    setImmediate(() => controller.abort());
    const out = await pending;
    expect(out.error).toBeInstanceOf(LlmAborted);
    expect(inner.calls).toBe(1);
    // No retry was made: none is counted.
    expect(begun).toEqual([]);
  });

  it('waits exponentially longer, with jitter in the upper half, at least Retry-After, at most the cap', () => {
    const at = (random: number, attempt: number, retryAfterMs?: number) =>
      backoffMs(
        { attempts: 5, baseDelayMs: 100, maxDelayMs: 1000, random: () => random },
        attempt,
        new ProviderError('x', { retryable: true, retryAfterMs }),
      );
    expect([at(0, 1), at(0, 2), at(0, 3)]).toEqual([50, 100, 200]);
    expect([at(0.999999, 1), at(0.999999, 2), at(0.999999, 3)]).toEqual([100, 200, 400]);
    expect(at(0, 10)).toBe(500); // capped before jitter
    expect(at(0, 1, 700)).toBe(700);
    expect(at(0, 1, 60_000)).toBe(1000);
  });
});
