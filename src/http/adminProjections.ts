import { z } from 'zod';
import { pageOf, PageQuery } from '../queries/paging';
import { auth } from './middleware/auth';
import { consistentRead } from './middleware/consistency';
import { bearerSecurity, problemResponses } from './openapi';
import type { AuthedState, Resource } from './types';

const ProjectionStatusSchema = z
  .object({
    name: z.string(),
    version: z.number().int(),
    state: z.enum(['starting', 'running', 'standby', 'rebuilding', 'failed', 'stopped']),
    checkpoint: z
      .object({
        position: z
          .string()
          .meta({ description: 'Global event position (int64 as a string)', example: '1042' }),
        txid: z.string(),
      })
      .nullable()
      .meta({ description: 'The last applied point of the log; null before the first event' }),
    lag: z.number().int().meta({ description: 'Events in its filter not yet applied (capped)' }),
    last_error: z.string().nullable(),
  })
  .meta({ id: 'ProjectionStatus' });

/** `GET /admin/projections`: each read model's checkpoint, state and lag (admins). */
export const adminProjections: Resource = (router, { deps, openapi }) => {
  openapi.registerPath({
    method: 'get',
    path: '/admin/projections',
    summary: 'Projection checkpoints and lag',
    tags: ['admin'],
    security: bearerSecurity,
    request: { query: PageQuery },
    responses: {
      200: {
        description: 'The projections',
        content: {
          'application/json': {
            schema: z.object({ items: z.array(ProjectionStatusSchema), next_cursor: z.string().nullable() }),
          },
        },
      },
      ...problemResponses(400, 401, 403),
    },
  });

  router.get('/admin/projections', auth(2), consistentRead<AuthedState>([]), async (ctx) => {
    const query = PageQuery.parse(ctx.query);
    const statuses = await deps.projections.status();
    ctx.body = pageOf(
      statuses.map((s) => ({
        name: s.name,
        version: s.version,
        state: s.state,
        checkpoint: s.checkpoint
          ? { position: s.checkpoint.position.toString(), txid: s.checkpoint.txid.toString() }
          : null,
        lag: s.lag,
        last_error: s.lastError,
      })),
      query,
    );
  });
};
