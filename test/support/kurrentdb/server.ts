/**
 * An in-process KurrentDB for tests: a gRPC server speaking the real `Streams` protocol, with the
 * service definition and message classes of the generated code shipped inside
 * `@kurrent/kurrentdb-client` (google-protobuf registers message classes globally, so a second copy
 * of the protos would not do), over an in-memory log. Insecure (no TLS), like a dev node.
 *
 * Implements `Streams/Append` (the client falls back to it because `ServerFeatures` is left
 * unimplemented, as on servers older than 21.10) and `Streams/Read`: a stream forwards or backwards
 * (revision, start or end; max count; stream-not-found), $all forwards or backwards (position,
 * start or end; filters), and subscriptions to $all (start, end or after a position) with
 * stream-name or event-type filters by prefix or regex, checkpoints every interval of considered
 * events, and a caught-up message when the subscription goes live. Like a node, it refuses to read
 * $all from a position inside the log where no record starts. Anything else answers UNIMPLEMENTED,
 * as an older server would.
 */
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { StreamsService } from '@kurrent/kurrentdb-client/generated/kurrentdb/protocols/v1/streams_grpc_pb';
import {
  AppendReq,
  AppendResp,
  ReadReq,
  ReadResp,
} from '@kurrent/kurrentdb-client/generated/kurrentdb/protocols/v1/streams_pb';
import {
  Empty,
  StreamIdentifier,
  UUID,
} from '@kurrent/kurrentdb-client/generated/kurrentdb/protocols/v1/shared_pb';
import { Timestamp } from 'google-protobuf/google/protobuf/timestamp_pb';
import {
  MemoryLog,
  filterMatches,
  type Expected,
  type LogFilter,
  type ProposedEvent,
  type StoredEvent,
} from './memoryLog';

export interface KurrentDbTestServerOptions {
  host?: string;
  /** 0 (the default) picks a free port. */
  port?: number;
  /** Seed the system events a fresh node has (default true). */
  systemEvents?: boolean;
}

export interface KurrentDbTestServer {
  /** A connection string for the client: `kurrentdb://host:port?tls=false`. */
  readonly url: string;
  readonly port: number;
  readonly log: MemoryLog;
  /** Ends every open subscription with UNAVAILABLE, as a node restart would; answers how many. */
  dropSubscriptions(): number;
  stop(): Promise<void>;
}

/** KurrentDB reads 32 events per page; a filtered subscription's checkpoint interval is a multiple of it. */
const DEFAULT_SEARCH_WINDOW = 32;

export async function startKurrentDbTestServer(
  options: KurrentDbTestServerOptions = {},
): Promise<KurrentDbTestServer> {
  const log = new MemoryLog({ systemEvents: options.systemEvents ?? true });
  const subscriptions = new Set<AllSubscription>();
  const server = new grpc.Server({
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.http2.min_ping_interval_without_data_ms': 1_000,
  });

  const implementation: Partial<grpc.UntypedServiceImplementation> = {
    append(call: grpc.ServerReadableStream<AppendReq, AppendResp>, callback: grpc.sendUnaryData<AppendResp>) {
      let header: AppendReq.Options | undefined;
      const proposed: ProposedEvent[] = [];
      let failed = false;
      const fail = (status: grpc.status, details: string, exception?: string) => {
        if (failed) return;
        failed = true;
        const metadata = new grpc.Metadata();
        if (exception) metadata.set('exception', exception);
        callback({ code: status, details, metadata });
      };
      call.on('data', (req: AppendReq) => {
        if (failed) return;
        if (!header) {
          const opts = req.getOptions();
          if (req.getContentCase() !== AppendReq.ContentCase.OPTIONS || !opts) {
            return fail(grpc.status.INVALID_ARGUMENT, 'the first message must carry the options');
          }
          header = opts;
          return;
        }
        const message = req.getProposedMessage();
        if (!message) return fail(grpc.status.INVALID_ARGUMENT, 'expected a proposed message');
        const meta = message.getMetadataMap();
        const type = meta.get('type');
        const contentType = meta.get('content-type');
        if (type === undefined || contentType === undefined) {
          return fail(
            grpc.status.INVALID_ARGUMENT,
            `required metadata property ${type === undefined ? 'type' : 'content-type'} is missing`,
            'missing-required-metadata-property',
          );
        }
        proposed.push({
          id: uuidString(message.getId()),
          type,
          contentType,
          data: message.getData_asU8(),
          metadata: message.getCustomMetadata_asU8(),
        });
      });
      call.on('error', () => undefined);
      call.on('end', () => {
        if (failed) return;
        if (!header) return fail(grpc.status.INVALID_ARGUMENT, 'no options sent');
        const streamName = streamNameOf(header.getStreamIdentifier());
        const expected = expectedOf(header);
        const outcome = log.append(streamName, proposed, expected);
        const resp = new AppendResp();
        if (outcome.ok) {
          const success = new AppendResp.Success();
          if (outcome.lastRevision < 0n) success.setNoStream(new Empty());
          else success.setCurrentRevision(String(outcome.lastRevision));
          if (outcome.position < 0n) success.setNoPosition(new Empty());
          else {
            const position = new AppendResp.Position();
            position.setCommitPosition(String(outcome.position));
            position.setPreparePosition(String(outcome.position));
            success.setPosition(position);
          }
          resp.setSuccess(success);
        } else {
          resp.setWrongExpectedVersion(wrongExpectedVersion(expected, outcome.current));
        }
        callback(null, resp);
      });
    },

    read(call: grpc.ServerWritableStream<ReadReq, ReadResp>) {
      const opts = call.request.getOptions();
      if (!opts) return failCall(call, statusError(grpc.status.INVALID_ARGUMENT, 'options are required'));
      const structuredIds = opts.getUuidOption()?.hasStructured() ?? false;
      let filter: LogFilter | undefined;
      try {
        filter = filterOf(opts);
      } catch (err) {
        return failCall(call, statusError(grpc.status.INVALID_ARGUMENT, (err as Error).message));
      }
      const streamOptions = opts.getStream();
      const allOptions = opts.getAll();
      const from = allOptions?.getPosition();
      if (from && !log.isReadablePosition(BigInt(from.getCommitPosition()))) {
        return failCall(
          call,
          statusError(grpc.status.OUT_OF_RANGE, `Invalid position: ${from.getCommitPosition()}`),
        );
      }
      const backwards = opts.getReadDirection() === ReadReq.Options.ReadDirection.BACKWARDS;

      if (opts.getCountOptionCase() === ReadReq.Options.CountOptionCase.SUBSCRIPTION) {
        if (!allOptions) {
          return failCall(
            call,
            statusError(grpc.status.UNIMPLEMENTED, 'the test server subscribes to $all only'),
          );
        }
        let start: number;
        switch (allOptions.getAllOptionCase()) {
          case ReadReq.Options.AllOptions.AllOptionCase.END:
            start = log.events.length;
            break;
          case ReadReq.Options.AllOptions.AllOptionCase.POSITION:
            start = log.indexAfter(BigInt(allOptions.getPosition()!.getCommitPosition()));
            break;
          default:
            start = 0;
        }
        const window =
          opts.getFilter()?.getWindowCase() === ReadReq.Options.FilterOptions.WindowCase.MAX
            ? opts.getFilter()!.getMax()
            : DEFAULT_SEARCH_WINDOW;
        const multiplier = Math.max(1, opts.getFilter()?.getCheckpointintervalmultiplier() ?? 1);
        const subscription = new AllSubscription(log, call, {
          start,
          filter,
          checkpointInterval: filter ? window * multiplier : undefined,
          structuredIds,
          onClose: () => subscriptions.delete(subscription),
        });
        subscriptions.add(subscription);
        subscription.start();
        return;
      }

      const count = Number(
        BigInt(opts.getCount() || '0') > 2n ** 31n ? 2n ** 31n : BigInt(opts.getCount() || '0'),
      );
      const responses: ReadResp[] = [];
      if (streamOptions) {
        const streamName = streamNameOf(streamOptions.getStreamIdentifier());
        const stream = log.stream(streamName);
        if (!stream) {
          const notFound = new ReadResp.StreamNotFound();
          notFound.setStreamIdentifier(streamOptions.getStreamIdentifier());
          const resp = new ReadResp();
          resp.setStreamNotFound(notFound);
          responses.push(resp);
        } else {
          const Case = ReadReq.Options.StreamOptions.RevisionOptionCase;
          const last = stream.length - 1;
          let from: number;
          switch (streamOptions.getRevisionOptionCase()) {
            case Case.REVISION:
              from = Number(streamOptions.getRevision());
              break;
            case Case.END:
              from = backwards ? last : stream.length;
              break;
            default:
              from = backwards ? -1 : 0;
          }
          if (backwards) {
            for (let i = Math.min(from, last); i >= 0 && responses.length < count; i--) {
              responses.push(eventResp(stream[i]!, structuredIds));
            }
          } else {
            for (let i = from; i < stream.length && responses.length < count; i++) {
              responses.push(eventResp(stream[i]!, structuredIds));
            }
          }
        }
      } else if (allOptions) {
        const Case = ReadReq.Options.AllOptions.AllOptionCase;
        let from: number;
        switch (allOptions.getAllOptionCase()) {
          case Case.POSITION: {
            // Forwards from a position includes the event there; backwards starts before it.
            const index = log.indexFrom(BigInt(allOptions.getPosition()!.getCommitPosition()));
            from = backwards ? index - 1 : index;
            break;
          }
          case Case.END:
            from = backwards ? log.events.length - 1 : log.events.length;
            break;
          default:
            from = backwards ? -1 : 0;
        }
        const step = backwards ? -1 : 1;
        for (let i = from; i >= 0 && i < log.events.length && responses.length < count; i += step) {
          const event = log.events[i]!;
          if (filterMatches(filter, event)) responses.push(eventResp(event, structuredIds));
        }
      } else {
        return failCall(
          call,
          statusError(grpc.status.INVALID_ARGUMENT, 'stream or $all options are required'),
        );
      }
      for (const resp of responses) call.write(resp);
      call.end();
    },
  };

  server.addService(StreamsService, implementation as grpc.UntypedServiceImplementation);
  const host = options.host ?? '127.0.0.1';
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${host}:${options.port ?? 0}`, grpc.ServerCredentials.createInsecure(), (err, bound) =>
      err ? reject(err) : resolve(bound),
    ),
  );

  return {
    url: `kurrentdb://${host}:${port}?tls=false`,
    port,
    log,
    dropSubscriptions() {
      const open = [...subscriptions];
      for (const s of open) s.close(statusError(grpc.status.UNAVAILABLE, 'server is shutting down'));
      return open.length;
    },
    async stop() {
      for (const s of [...subscriptions]) s.close();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 500);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    },
  };
}

/** One subscription to $all: catches up from its start, then follows appends, in log order. */
class AllSubscription {
  private next: number;
  private considered = 0;
  private lastConsidered: bigint | undefined;
  private live = false;
  private pumping = false;
  private closed = false;
  private unlisten: (() => void) | undefined;

  constructor(
    private readonly log: MemoryLog,
    private readonly call: grpc.ServerWritableStream<ReadReq, ReadResp>,
    private readonly options: {
      start: number;
      filter: LogFilter | undefined;
      checkpointInterval: number | undefined;
      structuredIds: boolean;
      onClose: () => void;
    },
  ) {
    this.next = options.start;
  }

  start(): void {
    this.call.on('cancelled', () => this.close());
    this.call.on('error', () => this.close());
    const confirmation = new ReadResp.SubscriptionConfirmation();
    confirmation.setSubscriptionId(randomUUID());
    const resp = new ReadResp();
    resp.setConfirmation(confirmation);
    this.call.write(resp);
    this.unlisten = this.log.onAppend(() => void this.pump());
    void this.pump();
  }

  close(error?: grpc.ServiceError): void {
    if (this.closed) return;
    this.closed = true;
    this.unlisten?.();
    this.options.onClose();
    if (error) failCall(this.call, error);
    else if (!this.call.cancelled) this.call.end();
  }

  /** Sends everything not yet sent; one pump at a time, waiting for the client when its buffer is full. */
  private async pump(): Promise<void> {
    if (this.pumping || this.closed) return;
    this.pumping = true;
    try {
      const { filter, checkpointInterval } = this.options;
      while (!this.closed) {
        const event = this.log.events[this.next];
        if (event) {
          this.next++;
          this.considered++;
          this.lastConsidered = event.position;
          if (filterMatches(filter, event)) await this.send(eventResp(event, this.options.structuredIds));
          if (checkpointInterval && this.considered % checkpointInterval === 0) {
            await this.send(checkpointResp(event.position));
          }
          continue;
        }
        if (!this.live) {
          // Like KurrentDB: a checkpoint when catch-up reaches the end, then the caught-up message.
          this.live = true;
          if (checkpointInterval && this.lastConsidered !== undefined) {
            await this.send(checkpointResp(this.lastConsidered));
          }
          await this.send(caughtUpResp(this.lastConsidered));
          continue;
        }
        break;
      }
    } finally {
      this.pumping = false;
    }
  }

  private async send(resp: ReadResp): Promise<void> {
    if (this.closed || this.call.write(resp)) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        this.call.off('drain', done);
        this.call.off('cancelled', done);
        this.call.off('close', done);
        resolve();
      };
      this.call.on('drain', done);
      this.call.on('cancelled', done);
      this.call.on('close', done);
    });
  }
}

function eventResp(event: StoredEvent, structuredIds: boolean): ReadResp {
  const recorded = new ReadResp.ReadEvent.RecordedEvent();
  recorded.setId(uuidMessage(event.id, structuredIds));
  const identifier = new StreamIdentifier();
  identifier.setStreamName(Buffer.from(event.streamName, 'utf8'));
  recorded.setStreamIdentifier(identifier);
  recorded.setStreamRevision(String(event.revision));
  recorded.setCommitPosition(String(event.position));
  recorded.setPreparePosition(String(event.position));
  const metadata = recorded.getMetadataMap();
  metadata.set('type', event.type);
  metadata.set('content-type', event.contentType);
  metadata.set('created', String(event.created));
  recorded.setCustomMetadata(event.metadata);
  recorded.setData(event.data);
  const read = new ReadResp.ReadEvent();
  read.setEvent(recorded);
  read.setCommitPosition(String(event.position));
  const resp = new ReadResp();
  resp.setEvent(read);
  return resp;
}

function checkpointResp(position: bigint): ReadResp {
  const checkpoint = new ReadResp.Checkpoint();
  checkpoint.setCommitPosition(String(position));
  checkpoint.setPreparePosition(String(position));
  checkpoint.setTimestamp(Timestamp.fromDate(new Date()));
  const resp = new ReadResp();
  resp.setCheckpoint(checkpoint);
  return resp;
}

function caughtUpResp(position: bigint | undefined): ReadResp {
  const caughtUp = new ReadResp.CaughtUp();
  caughtUp.setTimestamp(Timestamp.fromDate(new Date()));
  if (position !== undefined) {
    const at = new ReadResp.Position();
    at.setCommitPosition(String(position));
    at.setPreparePosition(String(position));
    caughtUp.setPosition(at);
  }
  const resp = new ReadResp();
  resp.setCaughtUp(caughtUp);
  return resp;
}

/** The wrong-expected-version answer, with the fields the client reads to build its error. */
function wrongExpectedVersion(
  expected: Expected,
  current: bigint | undefined,
): AppendResp.WrongExpectedVersion {
  const wrong = new AppendResp.WrongExpectedVersion();
  switch (expected.kind) {
    case 'any':
      wrong.setExpectedAny(new Empty());
      wrong.setAny2060(new Empty());
      break;
    case 'stream_exists':
      wrong.setExpectedStreamExists(new Empty());
      wrong.setStreamExists2060(new Empty());
      break;
    case 'no_stream':
      wrong.setExpectedNoStream(new Empty());
      break;
    case 'revision':
      wrong.setExpectedRevision(String(expected.revision));
      break;
  }
  if (current === undefined) {
    wrong.setCurrentNoStream(new Empty());
    wrong.setNoStream2060(new Empty());
  } else {
    wrong.setCurrentRevision(String(current));
  }
  return wrong;
}

function expectedOf(options: AppendReq.Options): Expected {
  const Case = AppendReq.Options.ExpectedStreamRevisionCase;
  switch (options.getExpectedStreamRevisionCase()) {
    case Case.REVISION:
      return { kind: 'revision', revision: BigInt(options.getRevision()) };
    case Case.NO_STREAM:
      return { kind: 'no_stream' };
    case Case.STREAM_EXISTS:
      return { kind: 'stream_exists' };
    default:
      return { kind: 'any' };
  }
}

function filterOf(options: ReadReq.Options): LogFilter | undefined {
  const filter = options.getFilter();
  if (!filter) return undefined;
  const byStream = filter.getStreamIdentifier();
  const expression = byStream ?? filter.getEventType();
  if (!expression) return undefined;
  const regex = expression.getRegex();
  return {
    on: byStream ? 'stream' : 'type',
    prefixes: expression.getPrefixList(),
    regex: regex ? new RegExp(regex) : undefined,
  };
}

function streamNameOf(identifier: StreamIdentifier | undefined): string {
  return Buffer.from(identifier?.getStreamName_asU8() ?? new Uint8Array()).toString('utf8');
}

function uuidString(uuid: UUID | undefined): string {
  if (!uuid) return randomUUID();
  const structured = uuid.getStructured();
  if (!structured) return uuid.getString();
  const hex = (v: string) => BigInt.asUintN(64, BigInt(v)).toString(16).padStart(16, '0');
  const s = hex(structured.getMostSignificantBits()) + hex(structured.getLeastSignificantBits());
  return `${s.slice(0, 8)}-${s.slice(8, 12)}-${s.slice(12, 16)}-${s.slice(16, 20)}-${s.slice(20)}`;
}

function uuidMessage(id: string, structured: boolean): UUID {
  const uuid = new UUID();
  if (!structured) return uuid.setString(id);
  const hex = id.replace(/-/g, '');
  const bits = new UUID.Structured();
  bits.setMostSignificantBits(BigInt.asIntN(64, BigInt(`0x${hex.slice(0, 16)}`)).toString());
  bits.setLeastSignificantBits(BigInt.asIntN(64, BigInt(`0x${hex.slice(16)}`)).toString());
  return uuid.setStructured(bits);
}

/** Ends a server stream with an error status (after what is already queued), the grpc-js way. */
function failCall(call: grpc.ServerWritableStream<ReadReq, ReadResp>, error: grpc.ServiceError): void {
  call.emit('error', error);
}

function statusError(code: grpc.status, details: string): grpc.ServiceError {
  return Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
}
