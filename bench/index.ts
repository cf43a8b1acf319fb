import { parseArgs } from 'node:util';
import { eventstoreBench } from './eventstore';
import { httpBench } from './http';
import { ledgerBench } from './ledger';
import { tasksBench } from './tasks';
import { printTable, writeResults, type BenchContext } from './support';

/**
 * `npm run bench [-- <suite>...] [--quick]`: runs the benchmarks and prints one table, each figure
 * with the reference measured in the same run. Uses DATABASE_URL for the server figures.
 */
const suites: Record<string, (ctx: BenchContext) => Promise<void>> = {
  eventstore: eventstoreBench,
  ledger: ledgerBench,
  tasks: tasksBench,
  http: httpBench,
};

async function main(): Promise<void> {
  const { positionals, values } = parseArgs({
    args: process.argv.slice(2),
    allowPositionals: true,
    options: { quick: { type: 'boolean', default: false } },
  });
  const chosen = positionals.length > 0 ? positionals : Object.keys(suites);
  for (const name of chosen) {
    if (!suites[name]) {
      console.error(`unknown suite ${name}; known: ${Object.keys(suites).join(', ')}`);
      process.exit(2);
    }
  }
  const notes: string[] = [];
  const ctx: BenchContext = {
    quick: values.quick,
    serverUrl: process.env.DATABASE_URL,
    figures: [],
    note: (line) => notes.push(line),
  };
  for (const name of chosen) {
    console.error(`running ${name}${ctx.quick ? ' (quick)' : ''}…`);
    const started = Date.now();
    await suites[name]!(ctx);
    console.error(`${name}: ${((Date.now() - started) / 1000).toFixed(0)} s`);
  }
  printTable(ctx.figures);
  for (const n of notes) console.log(`note: ${n}`);
  console.log(`results: ${writeResults(ctx.figures, notes)}`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
