import type { AppendResult, ExpectedRevision, NewEvent } from './port';

export interface PendingAppend {
  readonly streamName: string;
  readonly events: readonly NewEvent[];
  readonly expected: ExpectedRevision;
}

export interface BatchRunner {
  /** One append on its own, with the full conflict and idempotency handling. */
  single(append: PendingAppend): Promise<AppendResult>;
  /**
   * Several appends to distinct streams in one statement. Answers a result for each append that
   * was written; an append missing from the answer was not written (its expectation failed) and
   * is retried on its own. Throws when the statement failed as a whole (nothing was written).
   */
  batch(appends: readonly PendingAppend[]): Promise<Map<PendingAppend, AppendResult>>;
}

interface Queued extends PendingAppend {
  resolve(result: AppendResult): void;
  reject(error: unknown): void;
}

/**
 * Group commit for appends. While `maxInFlight` statements are running, new appends wait, and the
 * next statement takes all of them (one per stream) at once: under load many appends share one
 * round trip and one commit. Appends are sent once the work under way has run (`setImmediate`):
 * those a request makes together (a task's slots and its hold) share a statement, and a lone
 * append waits for nothing else. Appends to a stream already in flight wait for it, so one
 * stream's appends keep their order and no two statements of this process lock the same stream.
 */
export class AppendBatcher {
  private readonly queue: Queued[] = [];
  private readonly inFlightStreams = new Set<string>();
  private inFlight = 0;
  private scheduled = false;
  /** Whoever waits for every append to be answered. */
  private readonly idle: (() => void)[] = [];

  constructor(
    private readonly runner: BatchRunner,
    private readonly options: { maxInFlight: number; maxBatch: number },
  ) {}

  submit(append: PendingAppend): Promise<AppendResult> {
    return new Promise<AppendResult>((resolve, reject) => {
      this.queue.push({ ...append, resolve, reject });
      this.schedule();
    });
  }

  /** Once every append submitted so far (and any submitted meanwhile) is answered: closing waits for it. */
  async settled(): Promise<void> {
    while (this.queue.length > 0 || this.inFlight > 0 || this.scheduled) {
      await new Promise<void>((resolve) => this.idle.push(resolve));
    }
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.pump();
    });
  }

  private pump(): void {
    while (this.inFlight < this.options.maxInFlight && this.queue.length > 0) {
      const batch = this.take();
      if (batch.length === 0) return;
      this.inFlight++;
      for (const a of batch) this.inFlightStreams.add(a.streamName);
      void this.run(batch).finally(() => {
        for (const a of batch) this.inFlightStreams.delete(a.streamName);
        this.inFlight--;
        if (this.queue.length > 0) this.schedule();
        else if (this.inFlight === 0) for (const wake of this.idle.splice(0)) wake();
      });
    }
  }

  /** Up to maxBatch queued appends, in queue order, at most one per stream and none to a stream in flight. */
  private take(): Queued[] {
    const batch: Queued[] = [];
    const streams = new Set<string>();
    for (let i = 0; i < this.queue.length && batch.length < this.options.maxBatch;) {
      const a = this.queue[i]!;
      if (this.inFlightStreams.has(a.streamName) || streams.has(a.streamName)) {
        i++;
        continue;
      }
      streams.add(a.streamName);
      batch.push(a);
      this.queue.splice(i, 1);
    }
    return batch;
  }

  private async run(batch: Queued[]): Promise<void> {
    if (batch.length === 1) {
      await this.runSingle(batch[0]!);
      return;
    }
    let written: Map<PendingAppend, AppendResult>;
    try {
      written = await this.runner.batch(batch);
    } catch {
      // The statement failed as a whole (a re-sent event id, a deadlock with another instance…):
      // nothing was written; each append goes again on its own, where every case is handled.
      await Promise.all(batch.map((a) => this.runSingle(a)));
      return;
    }
    const notWritten: Queued[] = [];
    for (const a of batch) {
      const result = written.get(a);
      if (result) a.resolve(result);
      else notWritten.push(a);
    }
    // Not written: its expectation failed in the batch. Alone, it fails the same way with the full
    // error (or, if it was a retry of an append already stored, answers as that one).
    await Promise.all(notWritten.map((a) => this.runSingle(a)));
  }

  private async runSingle(a: Queued): Promise<void> {
    try {
      a.resolve(await this.runner.single(a));
    } catch (err) {
      a.reject(err);
    }
  }
}
