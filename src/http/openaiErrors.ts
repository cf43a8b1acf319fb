import { API_BASE, routedPath } from './openapi';
import type { Problem } from './problem';

const COMPLETIONS = `${API_BASE}/chat/completions`;
const MODELS = `${API_BASE}/models`;

/** A reply the model did not complete, as OpenAI's error object says it (an answer's or a stream's). */
export const GENERATION_FAILED = { type: 'server_error', code: 'generation_failed' } as const;
/** A request the provider refused as asked, as OpenAI's error object says a bad request. */
export const PROVIDER_REFUSED = { type: 'invalid_request_error', code: null } as const;

/** The routes OpenAI's clients call: their errors carry OpenAI's `error` member too. */
export function isOpenAiRoute(path: string): boolean {
  const routed = routedPath(path);
  return routed === COMPLETIONS || routed === MODELS || routed.startsWith(`${MODELS}/`);
}

/**
 * OpenAI's error object for a problem (`{message, type, param, code}`), which OpenAI's SDKs read
 * for their error's message and code: without it they say only "400 status code (no body)". It is
 * added beside the problem's members, which stay as API.md has them.
 */
export function openAiError(
  problem: Problem,
  path: string,
): { message: string; type: string; param: string | null; code: string | null } {
  const errors = Array.isArray(problem.errors) ? (problem.errors as { path?: unknown }[]) : [];
  const param = typeof errors[0]?.path === 'string' && errors[0].path !== '' ? errors[0].path : null;
  const [type, code] = kindOf(problem, path);
  return { message: problem.detail, type, param, code };
}

function kindOf(problem: Problem, path: string): [type: string, code: string | null] {
  switch (problem.status) {
    case 400:
      if (problem.type === '/problems/unknown-model') return ['invalid_request_error', 'model_not_found'];
      if (problem.type === '/problems/prompt-too-long') {
        return ['invalid_request_error', 'context_length_exceeded'];
      }
      return ['invalid_request_error', null];
    case 401:
      return ['invalid_request_error', 'invalid_api_key'];
    case 402:
      return ['insufficient_quota', 'insufficient_quota'];
    case 404:
      return ['invalid_request_error', routedPath(path).startsWith(`${MODELS}/`) ? 'model_not_found' : null];
    case 429:
      return ['rate_limit_error', 'rate_limit_exceeded'];
    case 502:
      return [GENERATION_FAILED.type, GENERATION_FAILED.code];
    default:
      return [problem.status >= 500 ? 'server_error' : 'invalid_request_error', null];
  }
}
