import fs from 'node:fs';
import path from 'node:path';
import { ConfigError, ConfigSchema, loadConfig } from '../../src/platform/config';

describe('configuration', () => {
  it('is the embedded default when nothing is set', () => {
    const config = loadConfig({});
    expect(config).toMatchObject({ PORT: 8000, DATA_DIR: './data', LOG_LEVEL: 'info', CORS_ORIGINS: ['*'] });
    expect(config.DATABASE_URL).toBeUndefined();
    expect(config.REDIS_URL).toBeUndefined();
  });

  it('parses numbers, lists and booleans from strings', () => {
    const config = loadConfig({
      PORT: '9000',
      CORS_ORIGINS: 'https://a.example, https://b.example',
      TRUST_PROXY: 'true',
    });
    expect(config.PORT).toBe(9000);
    expect(config.CORS_ORIGINS).toEqual(['https://a.example', 'https://b.example']);
    expect(config.TRUST_PROXY).toBe(true);
  });

  it('treats an empty URL as unset', () => {
    expect(loadConfig({ DATABASE_URL: '', REDIS_URL: ' ' }).DATABASE_URL).toBeUndefined();
  });

  it('refuses to start naming every bad variable', () => {
    let error: unknown;
    try {
      loadConfig({
        PORT: 'eighty',
        LOG_LEVEL: 'loud',
        REDIS_URL: 'http://x',
        BODY_LIMIT: 'huge',
        UNRELATED: 'x',
      });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const problems = (error as ConfigError).problems.map((p) => p.variable).sort();
    expect(problems).toEqual(['BODY_LIMIT', 'LOG_LEVEL', 'PORT', 'REDIS_URL']);
    expect((error as ConfigError).message).toMatch(/PORT: .*\n.*/);
  });

  it('requires a shared JWT_SECRET of 32+ characters with a database server', () => {
    expect(() => loadConfig({ DATABASE_URL: 'postgres://db/x' })).toThrow(/JWT_SECRET/);
    expect(() => loadConfig({ DATABASE_URL: 'postgres://db/x', JWT_SECRET: 'short' })).toThrow(/at least 32/);
    expect(
      loadConfig({ DATABASE_URL: 'postgres://db/x', JWT_SECRET: 'x'.repeat(32) }).JWT_SECRET,
    ).toHaveLength(32);
  });
});

describe('the settings’ documentation', () => {
  const root = path.resolve(__dirname, '../..');
  const names = Object.keys(ConfigSchema.shape);

  it('lists every setting in .env.example', () => {
    const example = fs.readFileSync(path.join(root, '.env.example'), 'utf8');
    expect(names.filter((n) => !new RegExp(`^#? ?${n}=`, 'm').test(example))).toEqual([]);
  });

  it('names every setting in the README, the rate limits by their suffix and id/secret pairs once', () => {
    const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
    const rates = readme.split('\n').find((l) => l.includes('`RATE_LIMIT_*`')) ?? '';
    const named = (n: string) => {
      if (readme.includes(n)) return true;
      const rate = /^RATE_LIMIT_(.+)$/.exec(n);
      if (rate) return rates.includes(`\`${rate[1]}\``);
      const secret = /^(.+)_SECRET$/.exec(n);
      return secret !== null && readme.includes(`${secret[1]}_ID\`/\`_SECRET`);
    };
    expect(names.filter((n) => !named(n))).toEqual([]);
  });
});

describe('a whole-number setting', () => {
  const problem = (variable: string, value: string) => {
    try {
      loadConfig({ [variable]: value });
      return undefined;
    } catch (err) {
      return err instanceof ConfigError
        ? err.problems.find((p) => p.variable === variable)?.message
        : undefined;
    }
  };

  it.each(['PORT', 'SHUTDOWN_TIMEOUT_MS', 'DATABASE_STATEMENT_TIMEOUT_MS', 'SIGNUP_CREDITS'])(
    'refuses %s set empty, or not in digits, naming it, instead of taking it as 0',
    (variable) => {
      for (const value of ['', '  ', '0x50', '1e3', '12abc']) {
        expect(problem(variable, value)).toMatch(/must be a whole number/);
      }
      expect(problem(variable, ' 5000 ')).toBeUndefined();
    },
  );
});
