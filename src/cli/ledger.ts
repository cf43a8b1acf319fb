import { parseArgs } from 'node:util';
import { Presets, SingleBar } from 'cli-progress';
import type { z } from 'zod';
import { reportJson, statementCsv, summaryCsv } from '../reports/format';
import { createLedgerReports } from '../reports/ledger';
import { BalanceQuery, StatementQuery, SummaryQuery } from '../reports/params';
import type { ReplayProgress } from '../reports/replay';
import { buildSystem } from '../system';
import { runCli } from './run';

const USAGE = `usage: npm run ledger -- statement --user <id> --from <date> --to <date> [--csv]
       npm run ledger -- summary --from <date> --to <date> [--csv]
       npm run ledger -- balance --user <id> --at <time>
       npm run ledger -- reconcile
       npm run ledger -- verify
dates: 2026-03-01 (UTC midnight) or 2026-03-01T12:00:00Z; periods are [from, to)`;

/** Without a terminal, progress lines are printed only for replays at least this long. */
const LONG_REPLAY = 100_000;

class UsageError extends Error {}

/**
 * `npm run ledger`: the finance reports, replayed from the event store. The report goes to stdout
 * (JSON, or CSV with --csv), progress to stderr; `verify` and `reconcile` exit 1 when they find
 * anything, a bad command line exits 2.
 */
runCli(async (config, logger) => {
  let command: () => Promise<{ text: string; ok: boolean }>;
  let open: () => Promise<ReturnType<typeof createLedgerReports> & { close(): Promise<void> }>;
  try {
    const { positionals, values } = parseArgs({
      args: process.argv.slice(2),
      allowPositionals: true,
      strict: true,
      options: {
        user: { type: 'string' },
        from: { type: 'string' },
        to: { type: 'string' },
        at: { type: 'string' },
        csv: { type: 'boolean', default: false },
      },
    });
    const [name, ...rest] = positionals;
    if (rest.length > 0) throw new UsageError(`unexpected ${rest.join(' ')}`);
    open = async () => {
      const system = await buildSystem(config, logger, { role: 'cli', projectors: [] });
      return {
        ...createLedgerReports({ store: system.store, db: system.db }),
        close: () => system.close(),
      };
    };
    const allowed = (options: string[]) => {
      const extra = Object.keys(values).filter((k) => !options.includes(k) && !(k === 'csv' && !values.csv));
      if (extra.length > 0) throw new UsageError(`${name} takes no --${extra.join(', --')}`);
    };
    switch (name) {
      case 'statement': {
        allowed(['user', 'from', 'to', 'csv']);
        const q = valid(StatementQuery, { user_id: values.user, from: values.from, to: values.to });
        command = () =>
          withReports(open, async (r) => {
            const s = await r.statement(q.user_id, q.from, q.to);
            return { text: values.csv ? statementCsv(s) : reportJson(s), ok: true };
          });
        break;
      }
      case 'summary': {
        allowed(['from', 'to', 'csv']);
        const q = valid(SummaryQuery, { from: values.from, to: values.to });
        command = () =>
          withReports(open, async (r) => {
            const progress = progressBar('summary');
            const s = await r.summary(q.from, q.to, { onProgress: progress.update }).finally(progress.stop);
            return { text: values.csv ? summaryCsv(s) : reportJson(s), ok: true };
          });
        break;
      }
      case 'balance': {
        allowed(['user', 'at']);
        const q = valid(BalanceQuery, { user_id: values.user, at: values.at });
        command = () =>
          withReports(open, async (r) => ({
            text: reportJson(await r.balanceAt(q.user_id, q.at)),
            ok: true,
          }));
        break;
      }
      case 'reconcile':
      case 'verify': {
        allowed([]);
        command = () =>
          withReports(open, async (r) => {
            const progress = progressBar(name);
            const options = { onProgress: progress.update };
            const report = await (name === 'verify' ? r.verify(options) : r.reconcile(options)).finally(
              progress.stop,
            );
            return { text: reportJson(report), ok: report.ok };
          });
        break;
      }
      default:
        throw new UsageError(name ? `unknown report ${name}` : 'which report?');
    }
  } catch (err) {
    if (!(err instanceof UsageError) && !isParseArgsError(err)) throw err;
    process.stderr.write(`${err.message}\n${USAGE}\n`);
    return 2;
  }
  const { text, ok } = await command();
  await new Promise<void>((resolve, reject) =>
    process.stdout.write(text, (err) => (err ? reject(err) : resolve())),
  );
  return ok ? 0 : 1;
});

async function withReports<T>(
  open: () => Promise<ReturnType<typeof createLedgerReports> & { close(): Promise<void> }>,
  run: (r: ReturnType<typeof createLedgerReports>) => Promise<T>,
): Promise<T> {
  const reports = await open();
  try {
    return await run(reports);
  } finally {
    await reports.close();
  }
}

/** The parsed options, or a usage error naming each bad one as its flag. */
function valid<S extends z.ZodType>(schema: S, input: Record<string, unknown>): z.output<S> {
  const parsed = schema.safeParse(input);
  if (parsed.success) return parsed.data;
  const flag = (key: PropertyKey | undefined) => `--${key === 'user_id' ? 'user' : String(key)}`;
  const lines = parsed.error.issues.map((i) =>
    i.code === 'invalid_type' && i.input === undefined
      ? `${flag(i.path[0])} is required`
      : `${flag(i.path[0])}: ${i.message}`,
  );
  throw new UsageError(lines.join('\n'));
}

function isParseArgsError(err: unknown): err is Error {
  const code = (err as { code?: string } | undefined)?.code;
  return typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS');
}

/**
 * A progress bar on stderr with events/s and ETA: on a terminal always, otherwise (logs, CI) as
 * occasional lines and only for long replays.
 */
function progressBar(name: string): { update: (p: ReplayProgress) => void; stop: () => void } {
  const started = Date.now();
  let bar: SingleBar | undefined;
  let decided = false;
  const update = (p: ReplayProgress) => {
    if (!decided) {
      decided = true;
      if (!process.stderr.isTTY && p.total < LONG_REPLAY) return;
      bar = new SingleBar(
        {
          format: `${name} [{bar}] {percentage}% | {value}/{total} events | {rate} events/s | ETA {eta_formatted}`,
          stream: process.stderr,
          noTTYOutput: true,
          notTTYSchedule: 2_000,
          etaBuffer: 50,
        },
        Presets.shades_classic,
      );
      bar.start(Math.max(p.total, 1), p.processed, { rate: 0 });
    }
    if (!bar) return;
    const rate = Math.round(p.processed / Math.max((Date.now() - started) / 1000, 0.001));
    bar.setTotal(Math.max(p.total, 1));
    bar.update(p.processed, { rate });
  };
  const stop = () => {
    bar?.stop();
    bar = undefined;
  };
  return { update, stop };
}
