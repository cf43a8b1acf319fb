/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  transform: {
    '^.+\\.ts$': [
      '@swc/jest',
      { jsc: { target: 'es2023', parser: { syntax: 'typescript' } }, module: { type: 'commonjs' } },
    ],
  },
  testMatch: ['<rootDir>/test/**/*.test.ts'],
  // The suites share one PostgreSQL server; two workers keep the 2-core machine busy without
  // starving the database.
  maxWorkers: 2,
  testTimeout: 60_000,
};
