/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  transform: {
    '^.+\\.ts$': [
      '@swc/jest',
      { jsc: { target: 'es2023', parser: { syntax: 'typescript' } }, module: { type: 'commonjs' } },
    ],
    // jose is ESM only: Node 20 loads it with require(esm), jest's CommonJS runtime needs it compiled.
    '/node_modules/jose/.+\\.js$': ['@swc/jest', { jsc: { target: 'es2023' }, module: { type: 'commonjs' } }],
  },
  transformIgnorePatterns: ['/node_modules/(?!jose/)'],
  testMatch: ['<rootDir>/test/**/*.test.ts'],
  // The suites share one PostgreSQL server; two workers keep the 2-core machine busy without
  // starving the database.
  maxWorkers: 2,
  testTimeout: 60_000,
};
