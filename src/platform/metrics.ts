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
  /** For the task flow: what its generations do, by model. */
  readonly tasks: TaskMetrics;
}

/** How a task ended, as its outcome records it. */
export type TaskEnd = 'succeeded' | 'failed' | 'cancelled';

/** What the task flow reports of the generations it runs (model ids come from the catalog). */
export interface TaskMetrics {
  /** A task was created: by a chat's `POST /tasks`, or by `/chat/completions`. */
  started(model: string, kind: 'chat' | 'completion'): void;
  /** The first piece of a task's output came, `seconds` after the model was asked. */
  firstOutput(model: string, seconds: number): void;
  /** The model was asked again, having failed before any output. */
  retried(model: string): void;
  /** This instance recorded a task's outcome: how long it ran, and what it was charged (if anything). */
  finished(
    model: string,
    end: TaskEnd,
    seconds: number,
    charged: { promptTokens: number; completionTokens: number; cost: number } | null,
  ): void;
  /** The sweeper failed a task its own instance never ended (it stopped, or lost the store). */
  swept(model: string): void;
  /** Counts the generations of a task flow in `tasks_running` until the returned function is called. */
  trackRunning(count: () => number): () => void;
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
    tasks: createTaskMetrics(registers),
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

function createTaskMetrics(registers: Registry[]): TaskMetrics {
  const counter = <L extends string>(name: string, help: string, labelNames: readonly L[]) =>
    new Counter({ name, help, labelNames, registers });
  const histogram = <L extends string>(
    name: string,
    help: string,
    labelNames: readonly L[],
    buckets: number[],
  ) => new Histogram({ name, help, labelNames, buckets, registers });
  const started = counter(
    'tasks_started_total',
    'Tasks created, by model and kind (chat: POST /tasks; completion: /chat/completions)',
    ['model', 'kind'],
  );
  const finished = counter(
    'tasks_finished_total',
    'Task outcomes recorded by this instance, by model and status',
    ['model', 'status'],
  );
  const swept = counter(
    'tasks_swept_total',
    'Tasks failed by the sweeper because their own instance never ended them',
    ['model'],
  );
  const firstOutput = histogram(
    'task_first_output_seconds',
    'From asking the model to the first piece of its output, by model',
    ['model'],
    [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60],
  );
  const duration = histogram(
    'task_duration_seconds',
    'From asking the model to the recorded outcome, by model and status',
    ['model', 'status'],
    [0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600],
  );
  const tokens = counter(
    'task_tokens_total',
    'Tokens finished tasks were charged for, by model and side (prompt, completion)',
    ['model', 'side'],
  );
  const cost = counter(
    'task_cost_credits_total',
    'What finished tasks cost in credits, by model, as recorded with their outcome',
    ['model'],
  );
  const retries = counter(
    'task_provider_retries_total',
    'Models asked again after failing before any output, by model',
    ['model'],
  );
  const counts = new Set<() => number>();
  new Gauge({
    name: 'tasks_running',
    help: 'Tasks this instance is generating or settling',
    registers,
    collect() {
      let n = 0;
      for (const count of counts) n += count();
      this.set(n);
    },
  });
  return {
    started: (model, kind) => started.inc({ model, kind }),
    firstOutput: (model, seconds) => firstOutput.observe({ model }, seconds),
    retried: (model) => retries.inc({ model }),
    finished(model, status, seconds, charged) {
      finished.inc({ model, status });
      duration.observe({ model, status }, seconds);
      if (!charged) return;
      tokens.inc({ model, side: 'prompt' }, charged.promptTokens);
      tokens.inc({ model, side: 'completion' }, charged.completionTokens);
      cost.inc({ model }, charged.cost);
    },
    swept: (model) => swept.inc({ model }),
    trackRunning(count) {
      counts.add(count);
      return () => counts.delete(count);
    },
  };
}
