import { parseArgs } from 'node:util';
import { SingleBar, Presets } from 'cli-progress';
import { buildSystem } from '../system';
import type { RebuildProgress } from '../projections/types';
import { runCli } from './run';

const USAGE = `usage: npm run projections -- status
       npm run projections -- rebuild <name>
       npm run projections -- rebuild --all`;

/** `npm run projections`: each read model's checkpoint and lag; rebuild one or all with a progress bar. */
runCli(async (config, logger) => {
  const { positionals, values } = parseArgs({
    args: process.argv.slice(2),
    allowPositionals: true,
    options: { all: { type: 'boolean', default: false }, json: { type: 'boolean', default: false } },
  });
  const [command, name] = positionals;
  if (command !== 'status' && command !== 'rebuild') {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  const system = await buildSystem(config, logger, { role: 'cli' });
  try {
    if (command === 'status') {
      const status = await system.projections.status();
      if (values.json) {
        process.stdout.write(
          `${JSON.stringify(status, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v), 2)}\n`,
        );
      } else if (status.length === 0) {
        process.stdout.write('no projections\n');
      } else {
        const rows = status.map((s) => ({
          name: s.name,
          version: s.version,
          checkpoint: s.checkpoint ? String(s.checkpoint.position) : '-',
          lag: s.lag,
          error: s.lastError ?? '',
        }));
        console.table(rows);
      }
      return 0;
    }
    const names = values.all ? system.projections.readModels : name ? [name] : [];
    if (names.length === 0) {
      process.stderr.write(`${USAGE}\n`);
      return 2;
    }
    for (const n of names) {
      if (!system.projections.names.includes(n)) {
        process.stderr.write(
          `unknown projection ${n}; known: ${system.projections.names.join(', ') || 'none'}\n`,
        );
        return 2;
      }
    }
    for (const n of names)
      await rebuildWithProgress(n, (onProgress) => system.projections.rebuild(n, onProgress));
    return 0;
  } finally {
    await system.close();
  }
});

/** A progress bar with events/s and ETA; plain lines when not on a terminal. */
export async function rebuildWithProgress(
  name: string,
  rebuild: (onProgress: (p: RebuildProgress) => void) => Promise<void>,
): Promise<void> {
  const started = Date.now();
  const bar = new SingleBar(
    {
      format: `${name} [{bar}] {percentage}% | {value}/{total} events | {rate} events/s | ETA {eta_formatted}`,
      noTTYOutput: true,
      notTTYSchedule: 2_000,
      etaBuffer: 50,
    },
    Presets.shades_classic,
  );
  let startedBar = false;
  await rebuild((p) => {
    const rate = Math.round(p.processed / Math.max((Date.now() - started) / 1000, 0.001));
    if (!startedBar) {
      bar.start(Math.max(p.total, 1), p.processed, { rate });
      startedBar = true;
    }
    bar.setTotal(Math.max(p.total, 1));
    bar.update(p.processed, { rate });
  });
  if (startedBar) bar.stop();
  const seconds = (Date.now() - started) / 1000;
  process.stdout.write(`${name}: rebuilt in ${seconds.toFixed(1)} s\n`);
}
