import type { Kysely } from 'kysely';
import type { Database, Db } from '../../src/platform/db';

type Fn = (...args: unknown[]) => unknown;

/**
 * The app's database, with every read of `table` (from `selectFrom`, in a transaction too) held
 * before it runs until `release` is called: a slow query, a pool busy under load. `held` resolves
 * once one is waiting. Give `db` to a second app (`createApp({ ...t.deps, db })`).
 */
export function holdingReadsOf(db: Db, table: string): { db: Db; held: Promise<void>; release: () => void } {
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  let onHeld!: () => void;
  const held = new Promise<void>((resolve) => (onHeld = resolve));
  /** A query builder whose execution waits for the gate. */
  const gated = <B extends object>(builder: B): B =>
    new Proxy(builder, {
      get(target, prop, receiver) {
        const value = Reflect.get(target, prop, receiver) as unknown;
        if (typeof value !== 'function') return value;
        const call = (...args: unknown[]) => (value as Fn).apply(target, args);
        if (prop === 'execute' || prop === 'executeTakeFirst' || prop === 'executeTakeFirstOrThrow') {
          return async (...args: unknown[]) => {
            onHeld();
            await gate;
            return call(...args);
          };
        }
        return (...args: unknown[]) => {
          const r = call(...args);
          return r !== null && typeof r === 'object' && 'execute' in r ? gated(r) : r;
        };
      },
    });
  const kysely = (k: Kysely<Database>): Kysely<Database> =>
    new Proxy(k, {
      get(target, prop, receiver) {
        const value = Reflect.get(target, prop, receiver) as unknown;
        if (prop === 'selectFrom') {
          return (from: never, ...rest: unknown[]) => {
            const query = (value as Fn).call(target, from, ...rest) as object;
            return (from as string) === table ? gated(query) : query;
          };
        }
        if (prop === 'transaction') return () => transaction(target.transaction());
        return typeof value === 'function' ? (value as Fn).bind(target) : value;
      },
    });
  /** A transaction builder whose transaction's queries go through the hold too. */
  const transaction = <B extends object>(builder: B): B =>
    new Proxy(builder, {
      get(target, prop, receiver) {
        const value = Reflect.get(target, prop, receiver) as Fn;
        if (prop === 'execute') {
          return (run: (trx: Kysely<Database>) => Promise<unknown>) =>
            value.call(target, (trx: Kysely<Database>) => run(kysely(trx)));
        }
        return (...args: unknown[]) => transaction(value.apply(target, args) as object);
      },
    });
  const wrapped = kysely(db.db);
  return {
    db: new Proxy(db, {
      get: (target, prop, receiver) =>
        prop === 'db' ? wrapped : (Reflect.get(target, prop, receiver) as unknown),
    }),
    held,
    release,
  };
}
