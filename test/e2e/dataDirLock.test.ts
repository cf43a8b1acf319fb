import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const root = path.resolve(__dirname, '../..');

/**
 * Two services on one embedded data directory (a second `npm start` in another terminal, a
 * restarted container whose old one still runs): PGlite is one process's database, and a second
 * process writing the same files would lose what it wrote. The second refuses to start, naming
 * DATA_DIR; once the first has stopped, the directory opens again.
 */
interface Service {
  child: ChildProcess;
  output: () => string;
  /** The HTTP port once serving, or the exit code if it stopped first. */
  outcome: Promise<{ port: number } | { exit: number | null }>;
}

function startService(dataDir: string): Service {
  let output = '';
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/serve.ts'], {
    cwd: root,
    env: {
      ...process.env,
      DATABASE_URL: '',
      REDIS_URL: '',
      DATA_DIR: dataDir,
      LOG_LEVEL: 'info',
      PORT: '0',
      // `0 = any free port` (README): the two do not collide on the wire-protocol port.
      EMBEDDED_DB_PORT: '0',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const outcome = new Promise<{ port: number } | { exit: number | null }>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`service neither served nor exited:\n${output}`)),
      90_000,
    );
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ exit: code });
    });
    const check = () => {
      const m = /"port":(\d+)[^\n]*"msg":"serving/.exec(output);
      if (m) {
        clearTimeout(timer);
        resolve({ port: Number(m[1]) });
      } else if (child.exitCode === null) setTimeout(check, 100);
    };
    check();
  });
  return { child, output: () => output, outcome };
}

async function stop(s: Service | undefined): Promise<void> {
  if (!s || s.child.exitCode !== null || s.child.signalCode !== null) return;
  const exited = new Promise((r) => s.child.once('exit', r));
  s.child.kill('SIGTERM');
  const timer = setTimeout(() => s.child.kill('SIGKILL'), 30_000);
  await exited;
  clearTimeout(timer);
}

let dataDir: string;
let first: Service | undefined;
let second: Service | undefined;

beforeAll(() => {
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'review8-twice-'));
});
afterAll(async () => {
  await stop(second);
  await stop(first);
  fs.rmSync(dataDir, { recursive: true, force: true });
});

describe('npm start on a data directory another running service holds', () => {
  it('refuses to start, naming DATA_DIR, and starts once the other has stopped', async () => {
    first = startService(dataDir);
    expect(await first.outcome).toEqual({ port: expect.any(Number) });

    second = startService(dataDir);
    const outcome = await second.outcome;
    expect(outcome).toEqual({ exit: expect.any(Number) });
    expect((outcome as { exit: number }).exit).not.toBe(0);
    expect(second.output()).toMatch(/DATA_DIR/);

    await stop(first);
    second = startService(dataDir);
    expect(await second.outcome).toEqual({ port: expect.any(Number) });
  }, 200_000);
});
