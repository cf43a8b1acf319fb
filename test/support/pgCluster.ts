import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/**
 * A PostgreSQL cluster of a test's own, in a temp dir on a port of its own, that the test may
 * stop and start at will: the shared server on 5432 serves other suites and must never be touched.
 */
export interface PgCluster {
  readonly url: string;
  readonly port: number;
  /** Starts it again, on the same port. */
  start(): Promise<void>;
  /** `immediate` is a crash (no checkpoint, recovery on the next start); `fast` a clean shutdown. */
  stop(mode: 'fast' | 'immediate'): Promise<void>;
  /**
   * Suspends its processes (SIGSTOP), as a frozen host: connections stay open and nothing on them
   * is answered, nor any new one.
   */
  freeze(): void;
  /** Resumes them (SIGCONT). */
  thaw(): void;
  /** Stops it if it runs and deletes its directory. */
  destroy(): Promise<void>;
}

export async function createPgCluster(): Promise<PgCluster> {
  const bin = await binDir();
  const port = await portOutsideEphemeralRange();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pgcluster-'));
  const data = path.join(dir, 'data');
  const log = path.join(dir, 'log');
  // initdb and postgres refuse to run as root: as root, run them as the postgres OS user, who must
  // own the directory (its socket goes there too, not to /tmp where another cluster may be).
  const asRoot = process.getuid?.() === 0;
  if (asRoot) await run('chown', ['postgres:postgres', dir]);
  const exec = (tool: string, args: string[]) =>
    asRoot
      ? run('runuser', ['-u', 'postgres', '--', path.join(bin, tool), ...args])
      : run(path.join(bin, tool), args);
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`;
  const pgCtl = (args: string[]) =>
    exec('pg_ctl', ['-D', data, '-w', '-t', '30', ...args]).catch((err: Error) => {
      const tail = fs.existsSync(log) ? fs.readFileSync(log, 'utf8').slice(-2_000) : '';
      throw new Error(`${err.message}\n${tail}`);
    });

  const cluster: PgCluster = {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    start: () => pgCtl(['-l', log, '-o', options, 'start']).then(() => undefined),
    stop: (mode) => pgCtl(['-m', mode, 'stop']).then(() => undefined),
    // The server first, so that it starts no process meanwhile; resumed last.
    freeze: () => serverProcesses(data).forEach((pid) => process.kill(pid, 'SIGSTOP')),
    thaw: () =>
      serverProcesses(data)
        .reverse()
        .forEach((pid) => process.kill(pid, 'SIGCONT')),
    async destroy() {
      // By its pid file rather than by what we think it is doing: a start that timed out may yet run.
      if (fs.existsSync(path.join(data, 'postmaster.pid'))) {
        await cluster.stop('immediate').catch(() => undefined);
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await exec('initdb', ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync']);
    await cluster.start();
  } catch (err) {
    await cluster.destroy();
    throw err;
  }
  return cluster;
}

/** The cluster's server process (from its pid file), then its children. */
function serverProcesses(data: string): number[] {
  const server = Number(fs.readFileSync(path.join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const children = fs
    .readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        // The parent's pid is the second field after the command, which is in parentheses.
        return Number(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]) === server;
      } catch {
        return false; // ended meanwhile
      }
    })
    .map(Number);
  return [server, ...children];
}

/** The server binaries: pg_config's, else the newest under /usr/lib/postgresql (Debian keeps them off PATH). */
async function binDir(): Promise<string> {
  const configured = await run('pg_config', ['--bindir']).then(
    (r) => r.stdout.trim(),
    () => undefined,
  );
  if (configured && fs.existsSync(path.join(configured, 'pg_ctl'))) return configured;
  const root = '/usr/lib/postgresql';
  const versions = (fs.existsSync(root) ? fs.readdirSync(root) : [])
    .filter((v) => fs.existsSync(path.join(root, v, 'bin', 'pg_ctl')))
    .sort((a, b) => Number(b) - Number(a));
  if (!versions[0]) throw new Error('no PostgreSQL server binaries (pg_ctl) found');
  return path.join(root, versions[0], 'bin');
}

/**
 * A free port below Linux's ephemeral range (32768 and up). The cluster must get its port back
 * after a stop; an ephemeral one could meanwhile go to another suite's `listen(0)` or outgoing
 * connection.
 */
async function portOutsideEphemeralRange(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const free = await new Promise<boolean>((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error('no free port found between 20000 and 32000');
}
