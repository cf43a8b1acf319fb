import {
  OpenAPIRegistry,
  OpenApiGeneratorV31,
  extendZodWithOpenApi,
  type ResponseConfig,
  type RouteConfig,
} from '@asteasolutions/zod-to-openapi';
import { z } from 'zod';
import packageJson from '../../package.json';
import { PROBLEM_CONTENT_TYPE, ProblemSchema } from './problem';
import { CONSISTENT_AFTER_HEADER } from './middleware/consistency';

// Gives `.openapi(...)` to zod schemas created from now on (zod 4 copies methods at construction,
// so schemas built before this runs lack it). Prefer `.meta({ id, description, example })`, which
// zod-to-openapi reads the same way and which works whatever the import order.
extendZodWithOpenApi(z);

export const API_BASE = '/api/v1';
export const TOKEN_URL = `${API_BASE}/session/oauth2/token`;

/**
 * A request path as the router matches it (case and a trailing slash ignored), for middleware
 * that treats a route apart before routing: compare it with a path in lower case.
 */
export const routedPath = (path: string): string => path.toLowerCase().replace(/(.)\/+$/, '$1');

/** For `registerPath({ security })` on routes behind `auth()`. */
export const bearerSecurity = [{ bearerAuth: [] }, { oauth2: [] }];

/** A registry with the security schemes every document has. */
export function createOpenApiRegistry(): OpenAPIRegistry {
  const registry = new OpenAPIRegistry();
  registry.registerComponent('securitySchemes', 'bearerAuth', {
    type: 'http',
    scheme: 'bearer',
    bearerFormat: 'JWT',
    description: 'An access token from /session/oauth2/token (or another sign-in endpoint).',
  });
  registry.registerComponent('securitySchemes', 'oauth2', {
    type: 'oauth2',
    description: 'Username and password sign-in (the docs page’s “Authorize” button).',
    flows: { password: { tokenUrl: TOKEN_URL, scopes: {} } },
  });
  return registry;
}

const STATUS_DESCRIPTIONS: Record<number, string> = {
  400: 'Malformed or invalid input',
  401: 'No or bad access token',
  402: 'Not enough credits',
  403: 'Not allowed',
  404: 'Not found',
  409: 'Conflict with the current state',
  413: 'Body too large',
  415: 'Unsupported Content-Type',
  422: 'Idempotency key reused with another body',
  429: 'Rate limited',
  503: 'A dependency is down',
  504: 'Read model not caught up in time',
};

/** `responses` entries answering problem+json, e.g. `{ 200: …, ...problemResponses(400, 401, 404) }`. */
export function problemResponses(...statuses: number[]): Record<number, ResponseConfig> {
  return Object.fromEntries(
    statuses.map((status) => [
      status,
      {
        description: STATUS_DESCRIPTIONS[status] ?? 'Error',
        content: { [PROBLEM_CONTENT_TYPE]: { schema: ProblemSchema } },
      },
    ]),
  );
}

export type OpenApiDocument = ReturnType<OpenApiGeneratorV31['generateDocument']>;

/** The OpenAPI 3.1 document for everything registered. Paths are relative to the `/api/v1` server. */
export function generateOpenApiDocument(registry: OpenAPIRegistry): OpenApiDocument {
  // Every GET takes `X-Consistent-After` (API.md): a bad one is a 400, one its read model does not
  // reach in time a 504. Said once here for all of them, as the middleware does it for all of them.
  const definitions = registry.definitions.map((d) =>
    d.type === 'route' && d.route.method === 'get' ? { ...d, route: withConsistentRead(d.route) } : d,
  );
  // ProblemSchema (meta id 'Problem') is listed so components.schemas.Problem exists even when no path uses it.
  return new OpenApiGeneratorV31([...definitions, ProblemSchema]).generateDocument({
    openapi: '3.1.0',
    info: {
      title: 'Chat Credits API',
      version: packageJson.version,
      description: packageJson.description,
    },
    servers: [{ url: API_BASE }],
  });
}

const ConsistentAfterHeader = z.object({
  [CONSISTENT_AFTER_HEADER]: z
    .string()
    .regex(/^[0-9]+$/)
    .optional()
    .meta({
      description: 'A position a command answered (X-Event-Position): the read waits until it shows it.',
    }),
});

/** A GET's route as documented: the header it takes, and the answers it brings (the route's own first). */
function withConsistentRead(route: RouteConfig): RouteConfig {
  const headers = route.request?.headers ?? z.object({});
  return {
    ...route,
    // (No route declares its headers as a list; one that did would keep them as they are.)
    request: {
      ...route.request,
      headers: headers instanceof z.ZodObject ? headers.extend(ConsistentAfterHeader.shape) : headers,
    },
    responses: { ...problemResponses(400, 504), ...route.responses },
  };
}
