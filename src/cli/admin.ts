import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { ensureAdmin } from '../commands/users/identity';
import { identityDeps } from '../http/identityDeps';
import { buildSystem } from '../system';
import { runCli } from './run';

const USAGE = `usage: npm run admin -- create <username> [--password-stdin]
  Creates an admin (permission 2), or makes an existing user of that name one.
  The password is read from stdin with --password-stdin; otherwise one is generated and printed once.`;

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks)
    .toString('utf8')
    .replace(/\r?\n$/, '');
}

/** `npm run admin -- create <username>`: the first admin, without a running service or one beside it. */
runCli(async (config, logger) => {
  const { positionals, values } = parseArgs({
    args: process.argv.slice(2),
    options: { 'password-stdin': { type: 'boolean', default: false }, help: { type: 'boolean' } },
    allowPositionals: true,
    strict: true,
  });
  const [verb, username] = positionals;
  if (values.help || verb !== 'create' || !username || positionals.length > 2) {
    process.stderr.write(`${USAGE}\n`);
    return values.help ? 0 : 2;
  }
  if (!/^[A-Za-z0-9_]{3,32}$/.test(username)) {
    process.stderr.write('username must be 3–32 letters, digits or underscores\n');
    return 2;
  }
  const generated = !values['password-stdin'];
  const password = generated ? randomBytes(18).toString('base64url') : await readStdin();
  if (password.length < 8) {
    process.stderr.write('password must be at least 8 characters\n');
    return 2;
  }
  const system = await buildSystem(config, logger, { role: 'cli', projectors: [] });
  try {
    const result = await ensureAdmin(identityDeps(system), { username, password }, { requestId: 'cli' });
    if (result.created) {
      process.stdout.write(`created admin ${username} (${result.userId})\n`);
      if (generated)
        process.stdout.write(`password: ${password}\n(shown once; change it after signing in)\n`);
    } else {
      process.stdout.write(
        `${username} (${result.userId}) ${result.promoted ? 'is now an admin' : 'was already an admin'}; password unchanged\n`,
      );
    }
    return 0;
  } finally {
    await system.close();
  }
});
