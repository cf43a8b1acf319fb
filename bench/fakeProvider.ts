import { startFakeOpenAI } from '../test/support/fakes/openai';

/**
 * The fake OpenAI-compatible provider in a process of its own, so the benchmark measures the
 * service's CPU alone: `node --import tsx bench/fakeProvider.ts <tokenDelayMs>` prints its URL.
 */
const tokenDelayMs = Number(process.argv[2] ?? 10);
void startFakeOpenAI({
  reply: 'Event sourcing keeps every change as an event, so any state can be rebuilt by replay.',
  tokenDelayMs,
  firstTokenDelayMs: 0,
  keepRequests: false,
}).then((fake) => {
  console.log(fake.url);
  process.on('SIGTERM', () => void fake.close().then(() => process.exit(0)));
});
