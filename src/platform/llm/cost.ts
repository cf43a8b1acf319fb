import { DomainError } from '../errors';
import type { ModelInfo, Usage } from './types';

/**
 * Credits for model use. Prices are credits per 1M tokens and may be fractional; each part (prompt,
 * completion) costs ceil(tokens × price / 1M) whole credits. Rounding up per part means:
 * - any use of a priced model costs at least one credit per part used, and
 * - a hold for (prompt, max output) always covers the capture of (prompt, ≤ max output), because the
 *   rounded-up cost only grows with tokens.
 * The arithmetic is exact (integers in millionths of a credit), so no float error can round a price
 * the wrong way.
 */

/** Prices have at most this many decimals (configuration refuses more). */
export const PRICE_DECIMALS = 6;
const SCALE = 10n ** BigInt(PRICE_DECIMALS);
const PER_TOKENS = 1_000_000n;

/** Whole credits for `tokens` at `price` credits per 1M tokens, rounded up. */
export function creditsFor(tokens: number, price: number): number {
  if (!Number.isSafeInteger(tokens) || tokens < 0) throw new RangeError(`bad token count ${tokens}`);
  if (!(price >= 0) || !Number.isFinite(price)) throw new RangeError(`bad price ${price}`);
  const scaledPrice = BigInt(Math.round(price * Number(SCALE)));
  const numerator = BigInt(tokens) * scaledPrice;
  const denominator = PER_TOKENS * SCALE;
  return Number((numerator + denominator - 1n) / denominator);
}

/** Credits to hold before a generation: the prompt plus every output token it may produce. */
export function holdFor(model: ModelInfo, promptTokens: number, maxTokens: number): number {
  return creditsFor(promptTokens, model.promptPrice) + creditsFor(maxTokens, model.completionPrice);
}

/** Credits a finished (or stopped) generation costs. At most `holdFor` of the same prompt and max. */
export function costOf(model: ModelInfo, usage: Usage): number {
  return (
    creditsFor(usage.prompt_tokens, model.promptPrice) +
    creditsFor(usage.completion_tokens, model.completionPrice)
  );
}

/** The prompt alone fills the model's context window. */
export class PromptTooLong extends DomainError {
  readonly status = 400;
  readonly type = '/problems/prompt-too-long';
  readonly title = 'Prompt too long';
}

/**
 * The output budget of a request: what it asked for (else the model's default), at most the model's
 * maximum and what is left of the context window after the prompt. 400 if nothing is left.
 */
export function resolveMaxTokens(model: ModelInfo, promptTokens: number, requested?: number): number {
  const room = model.contextLength - promptTokens;
  if (room < 1) {
    throw new PromptTooLong(
      `the prompt is ${promptTokens} tokens; ${model.id} takes at most ${model.contextLength - 1} with room for a reply`,
    );
  }
  const wanted = requested ?? model.defaultMaxTokens;
  return Math.max(1, Math.min(wanted, model.maxOutputTokens, room));
}
