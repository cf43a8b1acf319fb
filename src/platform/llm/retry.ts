import { setTimeout as sleep } from 'node:timers/promises';
import { LlmAborted, ProviderError, type LlmProvider, type StreamItem, type StreamRequest } from './types';

export interface RetryOptions {
  /** Attempts in all, the first included (1 = no retry). */
  attempts: number;
  /** Wait before the first retry; doubled for each further one, with jitter. */
  baseDelayMs: number;
  /** No wait is longer than this, whatever the backoff or `Retry-After` says. Default 10 s. */
  maxDelayMs?: number;
  /** [0, 1): for tests that want a fixed jitter. */
  random?: () => number;
  /** Told before each wait (for logs). */
  onRetry?: (err: ProviderError, attempt: number, delayMs: number) => void;
  /** Told as each retry begins, its wait over (for metrics: a wait cut short by an abort asks nothing). */
  onRetrying?: (attempt: number) => void;
}

/**
 * `provider` with retries of retryable `ProviderError`s, but only while nothing has been yielded:
 * once a token went out, a second attempt would repeat or contradict it, so the error goes to the
 * caller. Waits are exponential with jitter (half fixed, half random), at least the upstream's
 * `Retry-After`; an abort during a wait ends at once with `LlmAborted`.
 */
export function withRetryBeforeFirstToken(provider: LlmProvider, options: RetryOptions): LlmProvider {
  return { stream: (req) => streamWithRetry(provider, options, req) };
}

async function* streamWithRetry(
  provider: LlmProvider,
  options: RetryOptions,
  req: StreamRequest,
): AsyncGenerator<StreamItem> {
  const attempts = Math.max(1, options.attempts);
  for (let attempt = 1; ; attempt++) {
    let yielded = false;
    try {
      for await (const item of provider.stream(req)) {
        yielded = true;
        yield item;
      }
      return;
    } catch (err) {
      if (yielded || attempt >= attempts || !(err instanceof ProviderError) || !err.retryable) throw err;
      if (req.signal.aborted) throw new LlmAborted();
      const delayMs = backoffMs(options, attempt, err);
      options.onRetry?.(err, attempt, delayMs);
      await sleep(delayMs, undefined, { signal: req.signal }).catch(() => {
        throw new LlmAborted();
      });
      options.onRetrying?.(attempt + 1);
    }
  }
}

/** The wait after failed attempt `attempt` (1-based). */
export function backoffMs(options: RetryOptions, attempt: number, err?: ProviderError): number {
  const max = options.maxDelayMs ?? 10_000;
  const exponential = Math.min(max, options.baseDelayMs * 2 ** (attempt - 1));
  const jittered = exponential / 2 + (exponential / 2) * (options.random ?? Math.random)();
  return Math.round(Math.min(max, Math.max(jittered, err?.retryAfterMs ?? 0)));
}
