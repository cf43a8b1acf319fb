import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** The Prometheus handles the service updates; each app has its own registry (tests build many). */
export interface Metrics {
  readonly registry: Registry;
  readonly httpRequestDuration: Histogram<'method' | 'route' | 'status'>;
  readonly eventstoreAppends: Counter;
  /** Events appended (an append may carry several). */
  readonly eventstoreAppendedEvents: Counter;
  readonly eventstoreAppendDuration: Histogram;
  readonly projectionLag: Gauge<'projection'>;
  readonly projectionEventsApplied: Counter<'projection'>;
  /** For `createPostgresEventStore(db, { onAppend })`. */
  readonly onAppend: (seconds: number, events: number) => void;
  /** For `createProjectionEngine({ onApplied })`. */
  readonly onApplied: (projection: string, events: number) => void;
}

/** A fresh registry with process metrics and the service's own metrics. */
export function createMetrics(): Metrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const registers = [registry];

  const httpRequestDuration = new Histogram({
    name: 'http_request_duration_seconds',
    help: 'HTTP request duration by method, matched route template and status',
    labelNames: ['method', 'route', 'status'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers,
  });
  const eventstoreAppends = new Counter({
    name: 'eventstore_appends_total',
    help: 'Successful appends to the event store',
    registers,
  });
  const eventstoreAppendedEvents = new Counter({
    name: 'eventstore_appended_events_total',
    help: 'Events appended to the event store',
    registers,
  });
  const eventstoreAppendDuration = new Histogram({
    name: 'eventstore_append_duration_seconds',
    help: 'Event store append duration',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers,
  });
  const projectionLag = new Gauge({
    name: 'projection_lag_events',
    help: 'Events in a projection’s filter not yet applied',
    labelNames: ['projection'] as const,
    registers,
  });
  const projectionEventsApplied = new Counter({
    name: 'projection_events_applied_total',
    help: 'Events applied by a projection',
    labelNames: ['projection'] as const,
    registers,
  });

  return {
    registry,
    httpRequestDuration,
    eventstoreAppends,
    eventstoreAppendedEvents,
    eventstoreAppendDuration,
    projectionLag,
    projectionEventsApplied,
    onAppend: (seconds, events) => {
      eventstoreAppends.inc();
      eventstoreAppendedEvents.inc(events);
      eventstoreAppendDuration.observe(seconds);
    },
    onApplied: (projection, events) => {
      projectionEventsApplied.inc({ projection }, events);
    },
  };
}
