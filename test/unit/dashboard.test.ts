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
});
