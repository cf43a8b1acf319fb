import type { Kysely } from 'kysely';
import type { Database } from '../platform/schema';

/** Tasks without an outcome whose deadline passed before `before`, oldest first: the sweeper's work. */
export async function listOverdueTasks(
  db: Kysely<Database>,
  before: Date,
  limit: number,
): Promise<{ id: string }[]> {
  return db
    .selectFrom('tasks')
    .select('id')
    .where('finished_at', 'is', null)
    .where('deadline_at', '<', before)
    .orderBy('deadline_at')
    .limit(limit)
    .execute();
}
