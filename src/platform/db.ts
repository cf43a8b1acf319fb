import fs from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import { PGlite } from '@electric-sql/pglite';
import { createPgConfig } from '@electric-sql/pglite/node-postgres';
import { PGLiteSocketServer } from '@electric-sql/pglite-socket';
import {
  Kysely,
  PostgresDialect,
  type PostgresCursor,
  type PostgresPool,
  type PostgresPoolClient,
  type PostgresQueryResult,
} from 'kysely';
import pg from 'pg';
import type { Config } from './config';
import { isConnectionFailure, isStatementTimeout, UNANSWERED_CONNECTION } from './errors';
import type { Logger } from './logger';
import type { Database } from './schema';
import { Mutex } from './mutex';
import { PREPARED_MARK } from './prepared';

export type { Database };

/** Session-scoped locks (projection runners): PostgreSQL advisory locks, or in-process ones for PGlite. */
export interface SessionLocks {
  tryAcquire(key: string): Promise<boolean>;
  release(key: string): Promise<void>;
  /** Called when held locks were lost (the lock connection dropped). */
  onLost(listener: () => void): void;
}

export interface Db {
  readonly kind: 'postgres' | 'pglite';
  readonly db: Kysely<Database>;
  /**
   * Calls `onNotify` with the payload of every NOTIFY on the channel, from this or any other
   * process; with none (`undefined`) when notifications may have been missed (a lost connection).
   */
  listen(channel: string, onNotify: (payload?: string) => void): Promise<() => Promise<void>>;
  readonly locks: SessionLocks;
  /**
   * One statement on a pooled connection; `name` prepares it once per connection (hot paths);
   * `arrays` returns each row as an array, which decodes a quarter faster than objects (bulk reads).
   */
  query<R>(
    text: string,
    values: readonly unknown[],
    name?: string,
    options?: { arrays?: boolean },
  ): Promise<R[]>;
  /** For the embedded database served over the wire protocol: the URL CLIs and psql can use. */
  readonly embeddedUrl?: string;
  close(): Promise<void>;
}

export interface OpenOptions {
  /** Serve an embedded database on EMBEDDED_DB_PORT so CLIs and psql can reach it while we hold it. */
  serveEmbedded?: boolean;
}

/** Opens the database the configuration names: PostgreSQL when DATABASE_URL is set, else PGlite. */
export async function openDatabase(config: Config, logger: Logger, options: OpenOptions = {}): Promise<Db> {
  if (config.DATABASE_URL) {
    return openServer(
      config.DATABASE_URL,
      config.DATABASE_POOL_SIZE,
      config.DATABASE_CONNECT_TIMEOUT_MS,
      logger,
      {
        keepIdle: config.DATABASE_POOL_MIN,
        idleTimeoutMs: config.DATABASE_POOL_IDLE_MS,
        statementTimeoutMs: config.DATABASE_STATEMENT_TIMEOUT_MS,
      },
    );
  }
  return openEmbedded(config, logger, options);
}

/**
 * For CLIs: the server when configured; else the running service's embedded database over the wire
 * protocol; else the data directory itself, when no service holds it. A CLI's statements have no
 * bound: an operator's migration, rebuild or verification may rightly run for long.
 */
export async function openDatabaseForCli(config: Config, logger: Logger): Promise<Db> {
  if (config.DATABASE_URL)
    return openServer(config.DATABASE_URL, 4, config.DATABASE_CONNECT_TIMEOUT_MS, logger);
  const running = await runningEmbeddedServer(config.DATA_DIR);
  if (running) {
    logger.debug({ url: running }, 'using the running service’s embedded database');
    return openServer(running, 1, config.DATABASE_CONNECT_TIMEOUT_MS, logger, { overEmbeddedSocket: true });
  }
  return openEmbedded(config, logger, { serveEmbedded: false });
}

/** Each marked text's name, the same on every connection of the process. */
const preparedNames = new Map<string, string>();
/** A guard, not a limit any statement of ours reaches: past it, marked texts are sent unnamed. */
const MAX_PREPARED = 500;

/**
 * A client for kysely whose marked statements go named (its cursors go as they are). Once a
 * statement on it had no answer in time (see `BoundedClient`), it is not used again: the statement
 * may still be running there, and whatever came next would wait behind it. Its next statements (a
 * transaction's rollback) fail at once, and releasing it closes it.
 */
function preparing(client: pg.PoolClient, release: (err?: Error) => void): PostgresPoolClient {
  const unanswered = () => (client as { unanswered?: boolean }).unanswered === true;
  function query<R>(text: string, values: readonly unknown[]): Promise<PostgresQueryResult<R>>;
  function query<R>(cursor: PostgresCursor<R>): PostgresCursor<R>;
  function query(text: string | PostgresCursor<unknown>, values?: readonly unknown[]): unknown {
    if (typeof text !== 'string') return client.query(text as unknown as pg.Submittable);
    if (unanswered()) return Promise.reject(new Error(UNANSWERED_CONNECTION));
    if (!text.endsWith(PREPARED_MARK)) return client.query(text, values as unknown[]);
    let name = preparedNames.get(text);
    if (name === undefined && preparedNames.size < MAX_PREPARED) {
      preparedNames.set(text, (name = `prepared_${preparedNames.size + 1}`));
    }
    return client.query({ text, values: values as unknown[], ...(name ? { name } : {}) });
  }
  return { query, release: () => release(unanswered() ? new Error(UNANSWERED_CONNECTION) : undefined) };
}

/** pg's own `query`, which `BoundedClient` watches (taken once, not bound per statement). */
// eslint-disable-next-line @typescript-eslint/unbound-method -- always applied to a client
const sendQuery = pg.Client.prototype.query as unknown as (this: pg.Client, ...args: unknown[]) => unknown;

/** What pg keeps of a connection's backend, and of its cancel requests (not in its types). */
interface BackendKey {
  processID: number | null;
  secretKey: number | null;
}
interface CancelConnection {
  readonly stream: net.Socket;
  on(event: 'connect' | 'error', listener: () => void): void;
  connect(portOrPath: number | string, host?: string): void;
  cancel(processID: number, secretKey: number): void;
}

/**
 * Asks the server to cancel what a connection's backend is running: PostgreSQL's cancel request,
 * on a connection of its own (behind PgBouncer too, which forwards it). A server that does not
 * take the request (frozen, gone) is let go of after `timeoutMs`; nothing waits for it.
 */
function cancelOnServer(client: pg.Client, timeoutMs: number): void {
  const { processID, secretKey } = client as unknown as BackendKey;
  if (processID === null || secretKey === null) return;
  const con = new pg.Connection() as unknown as CancelConnection;
  con.on('error', () => undefined);
  if (timeoutMs > 0) con.stream.setTimeout(timeoutMs, () => con.stream.destroy());
  con.on('connect', () => con.cancel(processID, secretKey));
  if (client.host?.startsWith('/')) con.connect(`${client.host}/.s.PGSQL.${client.port}`);
  else con.connect(client.port, client.host);
}

async function openServer(
  url: string,
  poolSize: number,
  connectTimeoutMs: number,
  logger: Logger,
  opts: {
    overEmbeddedSocket?: boolean;
    /**
     * Connections kept open however long idle (once opened): the first requests after a quiet spell
     * then find their connections there, their statements prepared, instead of opening them anew.
     */
    keepIdle?: number;
    /** How long a connection past `keepIdle` may stay idle before it is closed. */
    idleTimeoutMs?: number;
    /** How long a statement may go unanswered before it fails and its connection is closed (0: no bound). */
    statementTimeoutMs?: number;
  } = {},
): Promise<Db> {
  // Every connection here, the pool's and the session's: an attempt to a server that does not
  // answer (gone from the network, not refusing) fails after connectTimeoutMs instead of lasting
  // as long as TCP retries. Only the attempt: a wait for a free connection of the pool is load,
  // and waits. Over the service's embedded socket even the attempt waits its turn behind the
  // service's transactions, so it has no bound.
  const connectionTimeoutMillis = opts.overEmbeddedSocket ? 0 : connectTimeoutMs;
  // And every statement on them: a server that stops answering without closing the connection (a
  // network partition, a frozen host) fails the statements waiting on it after statementTimeoutMs
  // instead of holding them, and the requests and the shutdown waiting on those, for good. TCP
  // keepalive finds such a peer on a connection idle meanwhile.
  const query_timeout = opts.statementTimeoutMs || undefined;
  class BoundedClient extends pg.Client {
    /** A statement on it went unanswered past its bound: it is closed, never used again. */
    unanswered = false;
    constructor(config?: pg.ClientConfig) {
      super({
        ...config,
        connectionTimeoutMillis,
        query_timeout,
        keepAlive: true,
        keepAliveInitialDelayMillis: 10_000,
      });
    }

    /**
     * Every statement, however sent (a promise, a callback, the pool's): one given up on past its
     * bound marks the connection unanswered, and is cancelled on the server, which would else run
     * it to its end, holding its locks, though its connection is closed.
     */
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- pg's query has a dozen overloads; this one only watches them
    override query(...args: unknown[]): any {
      // Watched only where statements have a bound: a closure or a promise more per statement.
      if (!query_timeout) return sendQuery.apply(this, args);
      const last = args[args.length - 1];
      if (typeof last === 'function') {
        args[args.length - 1] = (err: unknown, res: unknown) => {
          this.failed(err);
          (last as (err: unknown, res: unknown) => void)(err, res);
        };
        return sendQuery.apply(this, args);
      }
      const sent = sendQuery.apply(this, args);
      if (!(sent instanceof Promise)) return sent; // a cursor, which reads as it goes
      return sent.catch((err: unknown) => {
        this.failed(err);
        throw err;
      });
    }

    /** A statement failed: one unanswered past its bound marks the connection, and is cancelled. */
    private failed(err: unknown): void {
      if (!isStatementTimeout(err) || this.unanswered) return;
      this.unanswered = true;
      cancelOnServer(this, connectTimeoutMs);
    }
  }
  // int8 stays a string from pg (its default); callers convert to bigint.
  const pool = new pg.Pool({
    connectionString: url,
    max: poolSize,
    min: Math.min(opts.keepIdle ?? 0, poolSize),
    idleTimeoutMillis: opts.idleTimeoutMs ?? 30_000,
    Client: BoundedClient,
  });
  pool.on('error', (err) => logger.warn({ err }, 'idle database connection failed'));
  // The pool hears a client's 'error' only while the client is idle. A connection that dies while
  // checked out (kysely holds one through a query or a transaction) emits 'error' to nobody, which
  // would crash the process; its query is rejected anyway, so there is nothing more to do here.
  pool.on('connect', (client) => {
    client.on('error', (err) => logger.debug({ err }, 'database connection failed in use'));
  });
  // Over the service's embedded database every client shares PGlite's one session, and with it
  // the prepared-statement names: a second client must not prepare the service's names again.
  const namesStatements = !opts.overEmbeddedSocket;
  // One wrapper per connection, as kysely keeps its own state per client object it is given.
  const wrappers = new WeakMap<pg.PoolClient, PostgresPoolClient>();
  // Ended once, by kysely or by close(): kysely ends the pool only if it ever used it, and a Db
  // used through `query` alone would otherwise keep its connections (DATABASE_POOL_MIN) open.
  let ended: Promise<void> | undefined;
  const end = () => (ended ??= pool.end());
  const kyselyPool: PostgresPool = namesStatements
    ? {
        async connect() {
          const client = await pool.connect();
          let wrapper = wrappers.get(client);
          if (!wrapper) wrappers.set(client, (wrapper = preparing(client, (err) => client.release(err))));
          return wrapper;
        },
        end,
      }
    : { connect: () => pool.connect(), end };
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool: kyselyPool }) });
  const sessionClient = new SessionClient(() => new BoundedClient({ connectionString: url }), logger);
  const locks: SessionLocks = opts.overEmbeddedSocket ? new LocalLocks() : sessionClient;
  return {
    kind: 'postgres',
    db,
    locks,
    async query<R>(text: string, values: readonly unknown[], name?: string, options?: { arrays?: boolean }) {
      const res = await pool.query(queryConfig(text, values, namesStatements ? name : undefined, options));
      return res.rows as R[];
    },
    listen: (channel, onNotify) => sessionClient.listen(channel, onNotify),
    async close() {
      await sessionClient.close();
      await db.destroy();
      await end();
    },
  };
}

/**
 * One long-lived connection per process for LISTEN and advisory locks. When it drops, held locks are
 * gone: listeners of `onLost` are told, and the next call reconnects.
 */
class SessionClient implements SessionLocks {
  private client: pg.Client | undefined;
  private connecting: Promise<pg.Client> | undefined;
  private readonly held = new Set<string>();
  private readonly lostListeners: (() => void)[] = [];
  private readonly channels = new Map<string, Set<(payload?: string) => void>>();
  private closed = false;
  private readonly mutex = new Mutex();

  constructor(
    private readonly newClient: () => pg.Client,
    private readonly logger: Logger,
  ) {}

  private async connection(): Promise<pg.Client> {
    if (this.client) return this.client;
    this.connecting ??= (async () => {
      const client = this.newClient();
      client.on('error', (err) => {
        this.logger.warn({ err }, 'database session connection failed');
        this.drop(client);
      });
      client.on('end', () => this.drop(client));
      client.on('notification', (msg) => {
        for (const listener of this.channels.get(msg.channel) ?? []) listener(msg.payload);
      });
      try {
        await client.connect();
        for (const channel of this.channels.keys()) await client.query(`LISTEN ${quoteIdent(channel)}`);
      } catch (err) {
        this.connecting = undefined;
        client.removeAllListeners();
        await client.end().catch(() => undefined);
        throw err;
      }
      this.client = client;
      this.connecting = undefined;
      return client;
    })();
    return this.connecting;
  }

  private drop(client: pg.Client): void {
    if (this.client !== client) return;
    this.client = undefined;
    if (this.held.size > 0) {
      this.held.clear();
      for (const listener of this.lostListeners) listener();
    }
    // Listeners resubscribe on reconnect; wake them so they poll meanwhile.
    for (const set of this.channels.values()) for (const listener of set) listener();
    if (!this.closed && this.channels.size > 0) this.reconnectSoon();
  }

  private reconnectSoon(delay = 500): void {
    setTimeout(() => {
      if (this.closed || this.client) return;
      this.connection().catch(() => this.reconnectSoon(Math.min(delay * 2, 10_000)));
    }, delay).unref();
  }

  async listen(channel: string, onNotify: (payload?: string) => void): Promise<() => Promise<void>> {
    const first = !this.channels.has(channel);
    const set = this.channels.get(channel) ?? new Set<(payload?: string) => void>();
    this.channels.set(channel, set);
    // Kept from here on, whatever the LISTEN below meets: each reconnect listens to every channel.
    set.add(onNotify);
    const client = this.client;
    if (first && client) {
      try {
        await client.query(`LISTEN ${quoteIdent(channel)}`);
      } catch (err) {
        if (this.closed || !isConnectionFailure(err)) {
          set.delete(onNotify);
          if (set.size === 0) this.channels.delete(channel);
          throw err;
        }
        // The connection died under the LISTEN before it said so: start it over, which listens again.
        this.logger.warn({ err, channel }, 'LISTEN failed; reconnecting');
        this.drop(client);
        client.end().catch(() => undefined);
      }
    } else if (first) {
      await this.connection().catch(() => this.reconnectSoon());
    }
    return async () => {
      set.delete(onNotify);
    };
  }

  tryAcquire(key: string): Promise<boolean> {
    return this.mutex.run(async () => {
      if (this.held.has(key)) return false; // held by this process already: not reentrant, as LocalLocks
      const client = await this.connection();
      const res = await this.ask<{ ok: boolean }>(
        client,
        'select pg_try_advisory_lock(hashtextextended($1, 0)) as ok',
        [key],
      );
      if (res.rows[0]?.ok) this.held.add(key);
      return Boolean(res.rows[0]?.ok);
    });
  }

  release(key: string): Promise<void> {
    return this.mutex.run(async () => {
      if (!this.held.delete(key) || !this.client) return;
      await this.ask(this.client, 'select pg_advisory_unlock(hashtextextended($1, 0))', [key]).catch(
        () => undefined,
      );
    });
  }

  /**
   * A statement on the session connection. One with no answer in time ends the connection (and
   * the locks with it, which its listeners hear): what came next would wait behind it.
   */
  private async ask<R extends pg.QueryResultRow>(
    client: pg.Client,
    text: string,
    values: unknown[],
  ): Promise<pg.QueryResult<R>> {
    try {
      return await client.query<R>(text, values);
    } catch (err) {
      if (isStatementTimeout(err)) {
        this.drop(client);
        client.end().catch(() => undefined);
      }
      throw err;
    }
  }

  onLost(listener: () => void): void {
    this.lostListeners.push(listener);
  }

  async close(): Promise<void> {
    this.closed = true;
    const client = this.client ?? (await this.connecting?.catch(() => undefined));
    this.client = undefined;
    if (client) {
      client.removeAllListeners('end');
      await client.end().catch(() => undefined);
    }
  }
}

/** PGlite is one process: locks are an in-process set. */
class LocalLocks implements SessionLocks {
  private readonly held = new Set<string>();
  async tryAcquire(key: string): Promise<boolean> {
    if (this.held.has(key)) return false;
    this.held.add(key);
    return true;
  }
  async release(key: string): Promise<void> {
    this.held.delete(key);
  }
  onLost(): void {}
}

/**
 * Holds a data directory for this process: PGlite is one process's database, and a second process
 * opening the same files (another `npm start`, a tool while a service runs) would write beside the
 * first and lose what it wrote. The lock file names its process; one whose process is gone (killed)
 * is taken over. Answers its release.
 */
function lockDataDir(dataDir: string): () => void {
  const file = path.join(dataDir, 'pgdata.lock');
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
      return () => {
        if (readPid(file) === process.pid) fs.rmSync(file, { force: true });
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = readPid(file);
      if (holder !== undefined && holder !== process.pid && alive(holder)) {
        throw new Error(
          `DATA_DIR ${dataDir} is in use by process ${holder}, which has its embedded database open. ` +
            `Stop it first, or point DATA_DIR elsewhere (if no such process is running, remove ${file}).`,
          { cause: err },
        );
      }
      fs.rmSync(file, { force: true }); // its process is gone (or it is this one)
    }
  }
  throw new Error(`DATA_DIR ${dataDir}: could not take ${file}`);
}

function readPid(file: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists, under another user.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function openEmbedded(config: Config, logger: Logger, options: OpenOptions): Promise<Db> {
  const inMemory = config.DATA_DIR === 'memory://' || config.DATA_DIR === ':memory:';
  const dataDir = inMemory ? undefined : path.resolve(config.DATA_DIR);
  if (dataDir) fs.mkdirSync(dataDir, { recursive: true });
  const unlock = dataDir ? lockDataDir(dataDir) : () => undefined;
  let pglite: PGlite;
  try {
    pglite = await PGlite.create(dataDir ? path.join(dataDir, 'pgdata') : 'memory://');
  } catch (err) {
    unlock();
    throw err;
  }

  // PGlite has one session. Our pool holds `gate` for each connection checkout (a whole transaction),
  // and the wire-protocol server takes it for each message it runs, so neither side's statements can
  // land inside the other's transaction.
  const gate = new Mutex();
  const inner = new pg.Pool({ ...createPgConfig(pglite), max: 1, idleTimeoutMillis: 0 });
  const checkout = async (): Promise<{ client: pg.PoolClient; release: () => void }> => {
    for (;;) {
      const unlock = await gate.acquire();
      // A wire client may be between the statements of its own transaction: let it finish.
      if (!pglite.isInTransaction()) {
        const client = await inner.connect();
        return {
          client,
          release: () => {
            client.release();
            unlock();
          },
        };
      }
      unlock();
      await new Promise((r) => setTimeout(r, 2));
    }
  };
  const pool: PostgresPool = {
    async connect(): Promise<PostgresPoolClient> {
      const { client, release } = await checkout();
      return preparing(client, release);
    },
    end: () => inner.end(),
  };
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });

  let socketServer: PGLiteSocketServer | undefined;
  let embeddedUrl: string | undefined;
  if (options.serveEmbedded) {
    const gated = new Proxy(pglite, {
      get(target, prop) {
        if (prop === 'runExclusive') {
          return <T>(fn: () => Promise<T>) => gate.run(() => target.runExclusive(fn));
        }
        const value: unknown = Reflect.get(target, prop, target);
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
    socketServer = new PGLiteSocketServer({
      db: gated,
      host: config.EMBEDDED_DB_HOST,
      port: config.EMBEDDED_DB_PORT,
      maxConnections: 16,
    });
    await socketServer.start();
    const conn = socketServer.getServerConn();
    embeddedUrl = `postgres://postgres@${conn}/postgres?sslmode=disable`;
    if (dataDir) {
      fs.writeFileSync(
        path.join(dataDir, 'server.json'),
        JSON.stringify({ url: embeddedUrl, pid: process.pid }, null, 2),
      );
    }
    logger.info({ url: embeddedUrl }, 'embedded database served over the PostgreSQL wire protocol');
  }

  return {
    kind: 'pglite',
    db,
    locks: new LocalLocks(),
    async query<R>(text: string, values: readonly unknown[], name?: string, options?: { arrays?: boolean }) {
      const { client, release } = await checkout();
      try {
        const res = await client.query(queryConfig(text, values, name, options));
        return res.rows as R[];
      } finally {
        release();
      }
    },
    ...(embeddedUrl ? { embeddedUrl } : {}),
    async listen(channel, onNotify) {
      const unsubscribe = await pglite.listen(channel, onNotify);
      return async () => unsubscribe();
    },
    async close() {
      if (socketServer) {
        await socketServer.stop();
        if (dataDir) fs.rmSync(path.join(dataDir, 'server.json'), { force: true });
      }
      await db.destroy();
      await pglite.close();
      unlock();
    },
  };
}

/** The URL of a live service's embedded database for this data directory, if one is running. */
async function runningEmbeddedServer(dataDir: string): Promise<string | undefined> {
  if (dataDir === 'memory://' || dataDir === ':memory:') return undefined;
  let info: { url: string; pid: number };
  try {
    info = JSON.parse(
      fs.readFileSync(path.join(path.resolve(dataDir), 'server.json'), 'utf8'),
    ) as typeof info;
  } catch {
    return undefined;
  }
  if (!alive(info.pid)) return undefined; // the process that wrote it is gone
  const { hostname, port } = new URL(info.url);
  const reachable = await new Promise<boolean>((resolve) => {
    const socket = net.connect(Number(port), hostname, () => {
      socket.end();
      resolve(true);
    });
    socket.on('error', () => resolve(false));
  });
  return reachable ? info.url : undefined;
}

function queryConfig(
  text: string,
  values: readonly unknown[],
  name: string | undefined,
  options: { arrays?: boolean } | undefined,
): pg.QueryConfig {
  return {
    text,
    values: [...values],
    ...(name ? { name } : {}),
    ...(options?.arrays ? { rowMode: 'array' } : {}),
  } as pg.QueryConfig;
}

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}
