import DataLoader from 'dataloader';

/**
 * Reads asked for while the work under way runs (until `setImmediate`) go to `load` together, at
 * most `max` at a time: under load they come dozens at a time, and each statement costs both the
 * service and the database a round trip and a wake-up whatever it reads. Nothing is cached: each
 * read goes to the database.
 */
export function gathered<K, V>(
  load: (keys: readonly K[]) => Promise<readonly (V | Error)[]>,
  max = 100,
): DataLoader<K, V> {
  return new DataLoader<K, V>(load, {
    cache: false,
    batchScheduleFn: (run) => setImmediate(run),
    maxBatchSize: max,
  });
}
