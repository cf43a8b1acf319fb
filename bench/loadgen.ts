/**
 * A load generator in a process of its own, so the service's figures are not shared with the
 * client's CPU: `node --import tsx bench/loadgen.ts '<spec json>'` sends `concurrency` requests at a
 * time for `seconds`, each client to its own target in turn, and prints one JSON line of results.
 */
interface Spec {
  targets: { url: string; method: string; headers: Record<string, string>; body?: string }[];
  concurrency: number;
  seconds: number;
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '{}') as Spec;
  const until = Date.now() + spec.seconds * 1000;
  const latencies: number[] = [];
  let errors = 0;
  const statuses: Record<number, number> = {};
  await Promise.all(
    Array.from({ length: spec.concurrency }, async (_, i) => {
      const target = spec.targets[i % spec.targets.length]!;
      while (Date.now() < until) {
        const t0 = performance.now();
        try {
          const res = await fetch(target.url, {
            method: target.method,
            headers: target.headers,
            ...(target.body === undefined ? {} : { body: target.body }),
          });
          await res.arrayBuffer();
          statuses[res.status] = (statuses[res.status] ?? 0) + 1;
          if (res.status >= 400) errors++;
          else latencies.push(performance.now() - t0);
        } catch {
          errors++;
        }
      }
    }),
  );
  latencies.sort((a, b) => a - b);
  const at = (p: number) =>
    latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))];
  console.log(
    JSON.stringify({
      ok: latencies.length,
      errors,
      statuses,
      perSecond: latencies.length / spec.seconds,
      p50: at(50),
      p99: at(99),
    }),
  );
}

void main();
