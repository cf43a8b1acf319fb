import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { testConfig, type Config } from '../src/platform/config';
import { openDatabase, type Db } from '../src/platform/db';
import { createLogger } from '../src/platform/logger';
import { migrateToLatest } from '../src/platform/migrate';
import { onServer } from '../test/support/databases';

export { onServer };

export const run = promisify(execFile);
export const logger = createLogger({ LOG_LEVEL: 'silent' });

/** One line of the report: a figure, and the reference it is judged against, measured in the same run. */
export interface Figure {
  suite: string;
  name: string;
  value: number;
  unit: string;
  reference?: { name: string; value: number };
  /** value / reference (or, for latencies, as stated in the name). */
  ratio?: number;
  target?: string;
  met?: boolean;
}

export interface BenchContext {
  quick: boolean;
  serverUrl: string | undefined;
  figures: Figure[];
  note(line: string): void;
}

/** Runs a suite on the server first (when there is one), then on the embedded default beside it. */
export async function onEachDatabase(
  ctx: BenchContext,
  run: (ctx: BenchContext, serverUrl: string | undefined) => Promise<void>,
): Promise<void> {
  if (ctx.serverUrl) await run(ctx, ctx.serverUrl);
  await run(ctx, undefined);
}

/** A database of its own on the server for one benchmark, dropped afterwards. */
export async function serverDatabase(
  serverUrl: string,
): Promise<{ url: string; config: Config; drop(): Promise<void> }> {
  const name = `bench_${randomBytes(4).toString('hex')}`;
  await onServer(serverUrl, `create database "${name}"`);
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    config: testConfig({ DATABASE_URL: url.toString(), DATABASE_POOL_SIZE: 40 }),
    drop: () => onServer(serverUrl, `drop database if exists "${name}" with (force)`),
  };
}

export async function openBenchDb(config: Config): Promise<Db> {
  const db = await openDatabase(config, logger);
  await migrateToLatest(db.db);
  return db;
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

export function writeResults(figures: Figure[], notes: string[]): string {
  const dir = path.join(__dirname, 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(
    file,
    JSON.stringify(
      { at: new Date().toISOString(), node: process.version, cpus: os.cpus().length, figures, notes },
      null,
      2,
    ),
  );
  return file;
}

export function printTable(figures: Figure[]): void {
  const rows = figures.map((f) => ({
    suite: f.suite,
    figure: f.name,
    value: `${format(f.value)} ${f.unit}`,
    reference: f.reference ? `${format(f.reference.value)} (${f.reference.name})` : '',
    ratio: f.ratio === undefined ? '' : `${(f.ratio * 100).toFixed(0)}%`,
    target: f.target ?? '',
    met: f.met === undefined ? '' : f.met ? 'yes' : 'NO',
  }));
  const cols = Object.keys(rows[0] ?? {}) as (keyof (typeof rows)[number])[];
  const width = (c: (typeof cols)[number]) => Math.max(c.length, ...rows.map((r) => r[c].length));
  const line = (r: Record<string, string>) => cols.map((c) => r[c]!.padEnd(width(c))).join(' | ');
  console.log(line(Object.fromEntries(cols.map((c) => [c, c]))));
  console.log(cols.map((c) => '-'.repeat(width(c))).join('-|-'));
  for (const r of rows) console.log(line(r));
}

function format(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  return n >= 100 ? Math.round(n).toLocaleString('en-US') : n.toFixed(2);
}

/** A port free on this machine now, for a process started next. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

/** Resolves once the process has ended (at once if it has, by exit or by signal). */
export function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

const ROOT = path.join(__dirname, '..');

export function startProcess(args: string[], env: Record<string, string>): Promise<ChildProcess> {
  // The database is the benchmark's to choose: a service started for the embedded figures must not
  // find the server in the environment.
  const { DATABASE_URL: _chosenHere, ...inherited } = process.env;
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: { ...inherited, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return Promise.resolve(child);
}

export function firstLine(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    child.once('exit', (code) => reject(new Error(`exited ${code} before printing`)));
  });
}

export async function waitUntilUp(url: string): Promise<void> {
  const until = Date.now() + 60_000;
  while (Date.now() < until) {
    if (
      await fetch(url).then(
        (r) => r.ok,
        () => false,
      )
    )
      return;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error('the service did not start within 60 s');
}
