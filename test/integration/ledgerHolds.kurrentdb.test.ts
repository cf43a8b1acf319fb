import { createKurrentDbEventStore, type KurrentDbEventStore } from '../../src/eventstore/kurrentdb';
import { createLogger } from '../../src/platform/logger';
import { startKurrentDbTestServer, type KurrentDbTestServer } from '../support/kurrentdb/server';
import { raceReserves } from '../support/ledger';

const logger = createLogger({ LOG_LEVEL: 'silent' });

describe('reserving credits on the KurrentDB adapter (in-process test server)', () => {
  let server: KurrentDbTestServer;
  let stores: KurrentDbEventStore[];
  beforeAll(async () => {
    server = await startKurrentDbTestServer();
    // One client connection per "instance".
    stores = Array.from({ length: 4 }, () => createKurrentDbEventStore(server.url, { logger }));
  });
  afterAll(async () => {
    await Promise.all(stores.map((s) => s.close()));
    await server.stop();
  });

  it('lets exactly 10 of 200 parallel reserves over 4 instances win against a balance covering 10; the rest get 402', async () => {
    await raceReserves(stores, stores[0]!, 'racer');
  });
});
