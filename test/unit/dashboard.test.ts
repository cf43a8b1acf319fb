import fs from 'node:fs';
import { createMetrics } from '../../src/platform/metrics';

describe('the Grafana dashboard', () => {
  it('asks Prometheus only for metrics the service exposes', async () => {
    const dashboard = JSON.parse(fs.readFileSync('deploy/grafana/dashboards/chat-credits.json', 'utf8')) as {
      panels: { title: string; targets?: { expr: string }[] }[];
    };
    const metrics = await createMetrics().registry.getMetricsAsJSON();
    // prom-client's typings give the type as a number; it is the name Prometheus uses ('histogram').
    const exposed = new Set(
      metrics.flatMap((m) =>
        String(m.type) === 'histogram' ? ['_bucket', '_sum', '_count'].map((s) => m.name + s) : [m.name],
      ),
    );
    // A metric's name has an underscore; labels (le, model) and functions but one have none.
    const asked = dashboard.panels.flatMap((p) =>
      (p.targets ?? []).flatMap((t) =>
        [...t.expr.matchAll(/(?<![$\w])[a-z][a-z0-9]*(?:_[a-z0-9]+)+/g)]
          .map((m) => m[0])
          .filter((name) => name !== 'histogram_quantile')
          .map((name) => ({ panel: p.title, name })),
      ),
    );
    expect(asked.length).toBeGreaterThan(10);
    expect(asked.filter((a) => !exposed.has(a.name))).toEqual([]);
  });

  it('groups each metric only by labels it has', () => {
    const dashboard = JSON.parse(fs.readFileSync('deploy/grafana/dashboards/chat-credits.json', 'utf8')) as {
      panels: { title: string; targets?: { expr: string }[] }[];
    };
    // Each metric's labels, under every name Prometheus gives it (a histogram's buckets add `le`).
    const labels = new Map<string, string[]>();
    for (const m of createMetrics().registry.getMetricsAsArray()) {
      const names = [...((m as unknown as { labelNames?: string[] }).labelNames ?? [])];
      labels.set(m.name, names);
      labels.set(`${m.name}_count`, names);
      labels.set(`${m.name}_sum`, names);
      labels.set(`${m.name}_bucket`, [...names, 'le']);
    }
    const unknown: string[] = [];
    let grouped = 0;
    for (const p of dashboard.panels) {
      for (const { expr } of p.targets ?? []) {
        const metrics = [...expr.matchAll(/(?<![$\w])[a-z][a-z0-9]*(?:_[a-z0-9]+)+(?=\[|\)|\{|$)/g)]
          .map((m) => m[0])
          .filter((name) => labels.has(name));
        for (const by of expr.matchAll(/\bby \(([^)]*)\)/g)) {
          for (const label of by[1]!.split(',').map((l) => l.trim())) {
            for (const metric of metrics) {
              grouped++;
              if (!labels.get(metric)!.includes(label)) unknown.push(`${p.title}: ${metric} has no ${label}`);
            }
          }
        }
      }
    }
    expect(grouped).toBeGreaterThan(10);
    expect(unknown).toEqual([]);
  });
});
