import { DependencyDown } from '../errors';

/**
 * A sign-in method this server has no credentials for. 503 like a provider that is down (the
 * request is fine, the server cannot serve it), with its own type so clients can hide the button;
 * no Retry-After, as waiting will not help.
 */
export class ProviderNotConfigured extends DependencyDown {
  override readonly type = '/problems/provider-not-configured';
}

/** What a provider answered: its status and the body as text (providers label JSON inconsistently). */
export interface ProviderAnswer {
  status: number;
  text: string;
}

/**
 * One HTTP request to a sign-in or SMS provider, given up after `timeoutMs`. An unreachable, slow or
 * failing connection is a DependencyDown (503) naming the provider, never the URL: provider URLs
 * carry secrets in their query (WeChat's `secret`).
 */
export async function callProvider(
  provider: string,
  url: string,
  init: RequestInit,
  timeoutMs: number,
): Promise<ProviderAnswer> {
  let response: Response;
  try {
    response = await fetch(url, { ...init, redirect: 'manual', signal: AbortSignal.timeout(timeoutMs) });
    return { status: response.status, text: await response.text() };
  } catch (err) {
    const timedOut = err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError');
    throw new DependencyDown(
      timedOut
        ? `${provider} did not answer within ${timeoutMs} ms; retry shortly.`
        : `${provider} is unreachable (${networkReason(err)}); retry shortly.`,
    );
  }
}

/** Parses a provider's JSON object body; anything else is the provider misbehaving (503). */
export function parseProviderJson(provider: string, answer: ProviderAnswer): Record<string, unknown> {
  let body: unknown;
  try {
    body = JSON.parse(answer.text);
  } catch {
    body = undefined;
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new DependencyDown(
      `${provider} answered HTTP ${answer.status} with a body that is not a JSON object; retry shortly.`,
    );
  }
  return body as Record<string, unknown>;
}

/** `ECONNREFUSED` and the like, from undici's `fetch failed` and its cause: no hosts, paths or queries. */
function networkReason(err: unknown): string {
  for (let e: unknown = err, depth = 0; e && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && /^[A-Z_]+$/.test(code)) return code;
  }
  return 'network error';
}
