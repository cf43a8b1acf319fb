import type { Redis } from 'ioredis';
import { LRUCache } from 'lru-cache';
import type { RecordedEvent } from '../../eventstore/port';
import { appendAssistantMessage, loadChatForGeneration } from '../chats/generation';
import { foreseeOn, StreamMoved, type CommandHandler, type CommandMetadata } from '../handler';
import type { LedgerCommands, Provenance } from '../ledger/credits';
import { ledgerStream } from '../../events/ledger';
import { TASK_OUTCOMES, taskStream, type TaskOutcome } from '../../events/tasks';
import type { Projector } from '../../projections/types';
import type { ContentPart, ChatMessage } from '../../events/chats';
import type { Clock, IdGenerator } from '../../platform/clock';
import type { Config } from '../../platform/config';
import { BadRequest, ConcurrencyConflict, DependencyDown, DomainError } from '../../platform/errors';
import { InsufficientCredits, ledgerDecider } from '../ledger/decider';
import {
  countImages,
  fitHistory,
  imageAllowance,
  messageSize,
  type MessageSize,
} from '../../platform/llm/context';
import { costOf, holdFor, resolveMaxTokens } from '../../platform/llm/cost';
import { withRetryBeforeFirstToken } from '../../platform/llm/retry';
import {
  countPromptTokens,
  countResponseFormatTokens,
  countTextTokens,
  countToolCallTokens,
  countToolsTokens,
} from '../../platform/llm/tokens';
import { ToolCallAssembly } from '../../platform/llm/toolCalls';
import {
  isAbortError,
  ProviderError,
  type ChatMessageInput,
  type FinishReason,
  type GenerationParams,
  type ModelCatalog,
  type ModelInfo,
  type ResponseFormat,
  type TokenLogprob,
  type ToolCallDelta,
  type ToolOptions,
  type Usage,
} from '../../platform/llm/types';
import type { Logger } from '../../platform/logger';
import type { TaskMetrics } from '../../platform/metrics';
import type { TaskBuffer, TaskChunk } from '../../platform/taskBuffer';
import { StorableTextStream } from '../../platform/text';
import { taskDecider, TaskNotFound, type TaskCommand, type TaskState } from './decider';
import {
  ChatBusy,
  chatSlotStream,
  slotsDecider,
  userSlotsStream,
  type SlotCommand,
  type SlotsState,
} from './slots';

export type TaskFlowConfig = Pick<
  Config,
  | 'TASK_TIMEOUT_SECONDS'
  | 'TASKS_MAX_RUNNING_PER_USER'
  | 'LLM_RETRY_ATTEMPTS'
  | 'LLM_RETRY_BASE_DELAY_MS'
  | 'TASK_CANCEL_CHECK_MS'
>;

export interface TaskFlowDeps {
  commands: CommandHandler;
  ledger: LedgerCommands;
  models: ModelCatalog;
  buffer: TaskBuffer;
  clock: Clock;
  ids: IdGenerator;
  logger: Logger;
  config: TaskFlowConfig;
  /** With Redis, a cancel reaches the instance generating the task, wherever it was asked for. */
  redis?: Redis | undefined;
  /** Shared with the settlement reactor, which leaves this process's own tasks to it. */
  localTasks?: LocalTasks | undefined;
  /** Where the generations run here are counted (`/metrics`). */
  metrics?: TaskMetrics | undefined;
}

/**
 * Tasks this process generates and settles itself, kept a while after. The settlement reactor of
 * the same process waits for such a task's own settlement and skips it only when that succeeded,
 * rather than settle each twice at once; a settlement that failed, and everything a crashed process
 * left (the map is then empty), the reactor settles.
 */
export class LocalTasks {
  private readonly tasks = new Map<string, { done: Promise<void>; settledAt: bigint | null }>();
  constructor(private readonly capacity = 100_000) {}
  add(taskId: string, done: Promise<void>): void {
    this.tasks.set(taskId, { done, settledAt: null });
    if (this.tasks.size > this.capacity) this.tasks.delete(this.tasks.keys().next().value!);
  }
  settled(taskId: string, position: bigint): void {
    const t = this.tasks.get(taskId);
    if (t) t.settledAt = position;
  }
  /**
   * Where this process's own settlement of the task ended (waiting for it to finish trying), or
   * null when this process did not settle it.
   */
  async settledHere(taskId: string): Promise<bigint | null> {
    const t = this.tasks.get(taskId);
    if (!t) return null;
    await t.done;
    return t.settledAt;
  }
}

/** A task as `POST /tasks` answers it. */
export interface StartedTask {
  taskId: string;
  chatId: string | null;
  modelId: string;
  hold: number;
  promptTokens: number;
  maxTokens: number;
  /** Messages of the chat's history left out to fit the context window (0 outside a chat). */
  omittedMessages: number;
  /** The task's creation in the log, for `X-Event-Position`. */
  position: bigint;
}

/** What a reply is generated from, once the chat (or the completion request) is read. */
interface Generation {
  userId: string;
  chatId: string | null;
  model: ModelInfo;
  messages: ChatMessageInput[];
  params: Omit<GenerationParams, 'max_tokens'> & { max_tokens?: number | undefined };
  /** Functions offered to the model (completions only). */
  tools?: ToolOptions | undefined;
  /** JSON output (completions only). */
  responseFormat?: ResponseFormat | undefined;
  /** Each output token's log probability, with this many alternatives (completions only). */
  logprobs?: { top: number } | undefined;
  /** Tokens of the messages, when already counted (a chat's history, as it was fitted). */
  promptTokens?: number | undefined;
  /** Image parts of the messages, when already counted (likewise). */
  promptImages?: number | undefined;
  /** Messages of a chat's history left out to fit the model's context window (chats only). */
  omittedMessages?: number | undefined;
  /** The chat's slot stream, read before the chat (chats only): the slot is taken at its revision. */
  chatSlot?: { state: SlotsState; revision: bigint } | undefined;
}

/** How long past its deadline a task is left to its own instance before the sweeper fails it. */
const SWEEP_GRACE_MS = 30_000;
/** The grace for tasks of a life of `lifeMs`: at most half of it, so short-lived tasks are swept soon. */
const sweepGraceMs = (lifeMs: number) => Math.min(SWEEP_GRACE_MS, Math.floor(lifeMs / 2));
/**
 * A hold outlives its task's deadline by this much (at most the task's own life): the task settles
 * first, and the expiry gives back a hold whose task was never recorded (its instance died between).
 */
const HOLD_MARGIN_MS = 5 * 60_000;
const CANCEL_CHANNEL = 'tasks:cancel';
/** Sizes of chat messages kept (two numbers and a key each: a few MB). */
const MESSAGE_SIZES_CACHED = 50_000;
const SYSTEM_ACTOR = 'system:tasks';
/** How often a chat's reply is started from its chat read again when the chat's slot moved meanwhile. */
const CHAT_READ_ATTEMPTS = 3;

/** A model the catalog does not offer. */
export class UnknownModel extends BadRequest {
  override readonly type = '/problems/unknown-model';
}

/**
 * A request the built-in model cannot serve: one that makes it call a tool, or asks for JSON. It
 * answers in text only.
 */
export class NotForLocalModel extends BadRequest {}

/** A reply asked for in a chat with no message at all (its preset has none, and none was sent). */
export class NothingToAnswer extends BadRequest {
  override readonly type = '/problems/chat-empty';
}

/**
 * The life of a task, from `POST /tasks` to its settlement:
 *
 * 1. take a slot of the user (TASKS_MAX_RUNNING_PER_USER at once, else 429) and of the chat (one
 *    reply at a time, else 409), both appends at an expected revision;
 * 2. hold the prompt + maximum output at the model's prices (402 when not available);
 * 3. record TaskCreated, and generate at once, in this process, whatever happens to the request
 *    (a `/chat/completions` whose client leaves is cancelled by its route: its reply is kept nowhere);
 * 4. deltas go to the task buffer, which the stream endpoint reads;
 * 5. the outcome (completed, failed, cancelled — the first recorded wins) carries the text and the
 *    usage; settling it saves the reply, captures the hold at the actual cost and releases the rest,
 *    and frees the slots. Settling is idempotent: the settlement reactor does it again from the
 *    event, so a crash between the outcome and its settlement loses nothing.
 *
 * A crash before step 3 leaves a hold that expires and slots that count as stale after a task's
 * longest life; a crash during 4 leaves a task the sweeper fails past its deadline.
 */
export class TaskFlow {
  private readonly running = new Map<
    string,
    { abort: AbortController; done: Promise<void>; startedAt: number }
  >();
  /** Looks in the task streams of long generations for a cancel that did not reach this process. */
  private readonly cancelChecker: NodeJS.Timeout;
  /** The check under way, if any: closing waits for it, and a check never overlaps the last. */
  private checkingCancels: Promise<void> | undefined;
  /** Starts past the closing check, not generating yet: closing waits for them too. */
  private readonly starting = new Set<Promise<unknown>>();
  /**
   * Sizes of chat messages already counted, by chat and message (a message never changes): a
   * chat's next task counts only its new messages, not its whole history again.
   */
  private readonly messageSizes = new LRUCache<string, MessageSize>({ max: MESSAGE_SIZES_CACHED });
  private readonly subscriber: Redis | undefined;
  private sweeper: NodeJS.Timeout | undefined;
  private sweeping: Promise<void> = Promise.resolve();
  private closed: Promise<void> | undefined;
  private closing = false;
  /** How long past its deadline a task is left to its own instance before the sweeper fails it. */
  private readonly graceMs: number;
  /** Stops counting this flow's generations in the metrics. */
  private readonly untrack: () => void;

  constructor(private readonly deps: TaskFlowDeps) {
    this.graceMs = sweepGraceMs(deps.config.TASK_TIMEOUT_SECONDS * 1000);
    this.untrack = deps.metrics?.trackRunning(() => this.running.size) ?? (() => undefined);
    // Every instance that generates checks its own generations, so this starts with the flow.
    this.cancelChecker = setInterval(() => {
      this.checkingCancels ??= this.checkCancels()
        .catch(() => undefined)
        .finally(() => (this.checkingCancels = undefined));
    }, deps.config.TASK_CANCEL_CHECK_MS);
    this.cancelChecker.unref();
    if (deps.redis) {
      // Queued until connected, and subscribed again by the client after any reconnect.
      this.subscriber = deps.redis.duplicate({ enableOfflineQueue: true });
      this.subscriber.on('error', () => undefined);
      this.subscriber.on('message', (_channel: string, taskId: string) => this.abortLocal(taskId, 'cancel'));
      this.subscriber
        .subscribe(CANCEL_CHANNEL)
        .catch((err: unknown) => deps.logger.warn({ err }, 'task cancel channel unavailable'));
    }
  }

  /**
   * A reply in a chat, from its history (hidden messages included) and its preset's parameters. A
   * history past the model's context window loses its oldest messages (`fitHistory`).
   */
  async startChatTask(
    input: { userId: string; chatId: string; model?: string | undefined },
    provenance: Provenance,
    ready?: Promise<unknown>,
  ): Promise<StartedTask> {
    const { commands } = this.deps;
    const warmed = this.beside(ready, input.userId);
    for (let attempt = 1; ; attempt++) {
      // The chat's slot is read afresh (another instance may be answering in the chat), and before
      // the chat: a slot seen free was freed after its reply was saved, so the chat read next has
      // it. The slot is taken at the revision read, or not at all: a slot that moved on since (a
      // reply saved since) means the history read may lack that reply, and both are read again.
      // A slot read taken is refused (409) as it was when asked, unless this instance has seen it
      // move on since: then both are read again, as for a free one.
      const chatSlot = await commands.read(slotsDecider, chatSlotStream(input.chatId));
      const chat = await loadChatForGeneration(commands, input.chatId, input.userId);
      if (chat.messages.length === 0) {
        throw new NothingToAnswer('This chat has no messages yet; send one before asking for a reply.');
      }
      const model = this.model(input.model ?? chat.model);
      const params = definedOnly(chat.parameters);
      const history = fitHistory(chat.messages, chat.opening, model, params.max_tokens, (i) => {
        const message = chat.messages[i]!;
        const key = `${chat.chatId}\u0000${message.messageId}`;
        let size = this.messageSizes.get(key);
        if (size === undefined) this.messageSizes.set(key, (size = messageSize(toModelMessage(message))));
        return size;
      });
      try {
        return await this.start(
          {
            userId: input.userId,
            chatId: chat.chatId,
            model,
            messages: history.messages.map(toModelMessage),
            promptTokens: history.promptTokens,
            promptImages: history.images,
            omittedMessages: history.omitted,
            chatSlot,
            params,
          },
          provenance,
          warmed,
        );
      } catch (err) {
        if (!(err instanceof StreamMoved) || attempt >= CHAT_READ_ATTEMPTS) throw err;
      }
    }
  }

  /** A reply outside any chat: `/chat/completions`. */
  async startCompletion(
    input: {
      userId: string;
      model?: string | undefined;
      messages: ChatMessageInput[];
      params: Generation['params'];
      tools?: ToolOptions | undefined;
      responseFormat?: ResponseFormat | undefined;
      logprobs?: { top: number } | undefined;
    },
    provenance: Provenance,
    ready?: Promise<unknown>,
  ): Promise<StartedTask> {
    const model = input.model === undefined ? this.deps.models.default() : this.model(input.model);
    const choice = input.tools?.choice;
    // Offered tools, the local model answers in text, as any model may; told to call one, it cannot.
    if (model.local && input.tools && (choice === 'required' || typeof choice === 'object')) {
      throw new NotForLocalModel(
        `The model ${model.id} calls no tools; tool_choice can only be none or auto.`,
      );
    }
    if (model.local && input.responseFormat) {
      throw new NotForLocalModel(
        `The model ${model.id} answers in text only; it cannot follow response_format.`,
      );
    }
    return this.start({ ...input, chatId: null, model }, provenance, this.beside(ready, input.userId));
  }

  /**
   * A task started earlier, as its start answered: for a retry of the request that started it,
   * which goes on from it instead of starting another. Another user's task is 404.
   */
  async resume(taskId: string, userId: string): Promise<StartedTask> {
    const { state: s, position } = await this.deps.commands.read(taskDecider, taskStream(taskId));
    if (!s.created || s.userId !== userId) throw new TaskNotFound(`No task ${taskId}.`);
    return {
      position,
      taskId,
      chatId: s.chatId,
      modelId: s.model,
      hold: s.hold,
      promptTokens: s.promptTokens,
      maxTokens: s.maxTokens,
      omittedMessages: s.omittedMessages,
    };
  }

  /** The task's current state from its stream (no read-model lag); another user's task is 404. */
  async read(taskId: string, userId: string): Promise<TaskState> {
    const { state } = await this.deps.commands.read(taskDecider, taskStream(taskId));
    if (!state.created || state.userId !== userId) throw new TaskNotFound(`No task ${taskId}.`);
    return state;
  }

  /**
   * Waits for the task's outcome (a task generated elsewhere is looked at every half second), at
   * most until the sweeper would have failed it: then 503.
   */
  async outcomeOf(taskId: string, userId: string): Promise<TaskOutcome> {
    for (;;) {
      await this.running.get(taskId)?.done;
      // A store away for a moment is waited out: the reply is kept nowhere but in the answer, and a
      // client that got an error would ask (and pay) again. A refusal (not the user's task) is final.
      const state = await this.retried(taskId, 'task outcome not read', () => this.read(taskId, userId), {
        final: (err) => err instanceof DomainError,
      });
      if (state.outcome) return state.outcome;
      const giveUpAt = Date.parse(state.deadlineAt ?? '') + 4 * this.graceMs;
      if (!(this.deps.clock.now().getTime() < giveUpAt)) {
        throw new DependencyDown('The reply did not finish; the task will be failed and its hold released.');
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }

  /** Claims the task's stream: exactly one claim succeeds (409 after it). Answers the state claimed and the claim's position. */
  claimStream(taskId: string, userId: string, provenance: Provenance) {
    return this.handle(taskId, 'ClaimStream', { taskId, userId }, provenance);
  }

  /** Asks for the task to stop: recorded, then its generation (on whichever instance) is aborted. */
  /** Asks a task to stop; answers the position of the request (or of the task, when already asked). */
  async cancel(taskId: string, userId: string, provenance: Provenance): Promise<bigint> {
    const { position } = await this.handle(taskId, 'RequestCancel', { taskId, userId }, provenance);
    if (!this.abortLocal(taskId, 'cancel') && this.deps.redis) {
      await this.deps.redis.publish(CANCEL_CHANNEL, taskId).catch((err: unknown) => {
        this.deps.logger.warn({ err, taskId }, 'task cancel not published; the task runs to its end');
      });
    }
    return position;
  }

  /**
   * Settles an outcome (see `settleTask`), unless this process generated the task and settled it
   * already: a stream claimed after its task ended is answered without settling it twice. Answers
   * the position where the settlement ended, for reading its effects (`X-Consistent-After`).
   */
  async settle(outcome: TaskOutcome, causationId: string | null): Promise<bigint> {
    return (
      (await this.deps.localTasks?.settledHere(outcome.data.taskId)) ??
      (await settleTask(this.deps, outcome, causationId))
    );
  }

  /** Fails every task past its deadline (and grace) whose instance never recorded an outcome. */
  async sweep(listOverdue: (before: Date) => Promise<{ id: string }[]>): Promise<number> {
    const before = new Date(this.deps.clock.now().getTime() - this.graceMs);
    let failed = 0;
    for (const { id } of await listOverdue(before)) {
      if (this.running.has(id)) continue; // ours and still stopping: it records its own outcome
      try {
        if (await this.sweepOne(id)) failed++;
      } catch (err) {
        // One task that cannot be swept now must not hold up the others: it is tried next time.
        this.deps.logger.error({ err, taskId: id }, 'task not swept');
      }
    }
    return failed;
  }

  private async sweepOne(id: string): Promise<boolean> {
    const { state } = await this.deps.commands.read(taskDecider, taskStream(id));
    if (!state.created) return false;
    if (state.outcome) {
      await this.settle(state.outcome, null);
      return false;
    }
    const recorded = await this.record(id, 'FailTask', {
      taskId: id,
      messageId: null,
      content: '',
      usage: { promptTokens: 0, completionTokens: 0 },
      cost: 0,
      reason: 'The task did not finish in time; its hold was released.',
    });
    const eventId = recorded?.id ?? null;
    if (eventId !== null) this.deps.metrics?.swept(state.model);
    const { state: after } = await this.deps.commands.read(taskDecider, taskStream(id));
    if (after.outcome) {
      const settledAt = await this.settle(after.outcome, eventId);
      // A stream still waiting (on an instance that could not see the dead one's output) ends.
      this.deps.buffer.append(id, chunkOf(after.outcome, settledAt));
    }
    return eventId !== null;
  }

  /** Runs `sweep` every `intervalMs` until `close`. */
  startSweeper(intervalMs: number, listOverdue: (before: Date) => Promise<{ id: string }[]>): void {
    if (this.sweeper) return;
    this.sweeper = setInterval(() => {
      this.sweeping = this.sweeping
        .then(() => this.sweep(listOverdue))
        .then(
          (n) => void (n > 0 && this.deps.logger.warn({ failed: n }, 'tasks past their deadline failed')),
          (err: unknown) => this.deps.logger.error({ err }, 'task sweep failed'),
        );
    }, intervalMs);
    this.sweeper.unref();
  }

  /** Tasks generating in this process. */
  get runningCount(): number {
    return this.running.size;
  }

  /**
   * Stops the sweeper, lets running generations finish for up to `graceMs`, then stops the rest:
   * they are recorded as failed and settled (the hold released for what was not generated).
   */
  async close(graceMs = 10_000): Promise<void> {
    if (this.closed) return this.closed;
    this.closed = this.shutdown(graceMs);
    return this.closed;
  }

  private async shutdown(graceMs: number): Promise<void> {
    this.closing = true;
    clearInterval(this.sweeper);
    clearInterval(this.cancelChecker);
    this.sweeper = undefined;
    const late = () => new Promise<'late'>((resolve) => setTimeout(() => resolve('late'), graceMs).unref());
    // A sweep under way ends before generations are waited for; one that hangs on the store is left.
    await Promise.race([this.sweeping, late()]);
    // Until none is left: a request that was already starting one adds it meanwhile. Were it not
    // waited for, it would generate on a closed store and leave its task to the sweeper.
    const all = async () => {
      while (this.running.size > 0 || this.starting.size > 0) {
        await Promise.allSettled([...this.starting, ...[...this.running.values()].map((r) => r.done)]);
      }
    };
    // A cancel check under way ends before the store closes; one that hangs (its database gone) is left.
    const checked = Promise.race([this.checkingCancels, late()]);
    if ((await Promise.race([all(), late()])) === 'late') {
      // A start still under way gets one more grace; one that hangs (its database gone) is left.
      await Promise.race([Promise.allSettled(this.starting), late()]);
      for (const id of this.running.keys()) this.abortLocal(id, 'shutdown');
      while (this.running.size > 0) await Promise.all([...this.running.values()].map((r) => r.done));
    }
    await checked;
    this.untrack();
    await this.subscriber?.quit().catch(() => this.subscriber?.disconnect());
  }

  private model(id: string): ModelInfo {
    const model = this.deps.models.get(id);
    if (!model) throw new UnknownModel(`No model ${id}; GET /models lists those offered.`);
    return model;
  }

  /**
   * What a start awaits before its first write: the request's `ready` (its session check and rate
   * limit) and the reads of the user's streams the start writes (their slots and their ledger) into
   * the command cache, each write then being one round trip. Both run beside the start's own
   * reads; one that fails first (an unknown chat) leaves this to run out, not unhandled.
   */
  private beside(ready: Promise<unknown> | undefined, userId: string): Promise<unknown> {
    const { commands } = this.deps;
    const all = Promise.all([
      ready,
      commands.warm(slotsDecider, userSlotsStream(userId)),
      commands.warm(ledgerDecider, ledgerStream(userId)),
    ]);
    all.catch(() => undefined);
    return all;
  }

  /** Starts a task once `ready` (see `beside`) has resolved, before any write. */
  private async start(g: Generation, provenance: Provenance, ready: Promise<unknown>): Promise<StartedTask> {
    if (this.closing) throw new DependencyDown('The service is restarting; ask again in a moment.');
    const started = this.begin(g, provenance, ready);
    this.starting.add(started);
    try {
      return await started;
    } finally {
      this.starting.delete(started);
    }
  }

  private async begin(g: Generation, provenance: Provenance, ready: Promise<unknown>): Promise<StartedTask> {
    const { config, ledger, clock, ids } = this.deps;
    // Nothing is counted for a request refused (its session, its rate limit): a completion's
    // messages may be megabytes.
    await ready;
    // The messages as counted already (a chat's fitted history) or now; the tools and the format on top.
    const promptTokens =
      (g.promptTokens ?? countPromptTokens(g.messages)) +
      countToolsTokens(g.tools) +
      countResponseFormatTokens(g.responseFormat);
    const maxTokens = resolveMaxTokens(g.model, promptTokens, g.params.max_tokens);
    // Its images at the most they may count, as its output at the most; the two within the window
    // (the room `resolveMaxTokens` left is never below the count).
    const heldPrompt = Math.min(
      promptTokens + imageAllowance(g.promptImages ?? countImages(g.messages), g.model.imageTokens),
      g.model.contextLength - maxTokens,
    );
    const hold = holdFor(g.model, heldPrompt, maxTokens);
    const taskId = ids.next();
    const now = clock.now();
    const lifeMs = config.TASK_TIMEOUT_SECONDS * 1000;
    const deadline = new Date(now.getTime() + lifeMs);
    const staleBefore = new Date(now.getTime() - lifeMs - this.graceMs).toISOString();
    const staleAt = new Date(deadline.getTime() + this.graceMs).toISOString();
    const metadata = { ...this.metadataOf(provenance), correlationId: taskId };

    const take = (owner: string, capacity: number): SlotCommand => ({
      type: 'TakeTaskSlot',
      data: { owner, taskId, capacity, staleAt, staleBefore },
      metadata,
    });
    const user = {
      stream: userSlotsStream(g.userId),
      command: take(`user:${g.userId}`, config.TASKS_MAX_RUNNING_PER_USER),
    };
    const chat = g.chatId
      ? { stream: chatSlotStream(g.chatId), command: take(`chat:${g.chatId}`, 1), read: g.chatSlot }
      : undefined;
    let holdMayExist = false;
    const reserve = () => {
      holdMayExist = true;
      return ledger.reserve({
        userId: g.userId,
        holdId: taskId,
        amount: hold,
        reason: `task ${g.model.id}`,
        expiresAt: new Date(deadline.getTime() + Math.min(HOLD_MARGIN_MS, lifeMs)),
        now,
        metadata: { ...provenance, correlationId: taskId },
      });
    };
    // Both slots at once (distinct streams); whatever was taken is freed if either is refused. The
    // hold goes with them only when both look free: held beside a slot that is then refused, it
    // would turn a sibling request that could have run into a 402, and write a hold and its
    // release for a request refused. Sent together, the three share one statement (the event
    // store's group commit); each still succeeds or fails on its own. A slot is judged as cached,
    // which holds what was read and any take here since (a double click), never while a take here
    // is under way, and the chat's as just read when it was empty. The user's slots are not read
    // afresh: a user at their limit through another instance is the rare miss, and costs a hold
    // and its release.
    const { commands } = this.deps;
    const looksFree = (
      stream: string,
      command: SlotCommand,
      read?: { state: SlotsState; revision: bigint },
    ) => {
      // The chat's slot cached past its revision read has moved on here: its take will not hold.
      const foreseen = commands.foresee(slotsDecider, stream, command, read?.revision);
      if (foreseen === 'changing') return false;
      const decided = foreseen ?? (read ? foreseeOn(slotsDecider, read.state, command) : undefined);
      return Array.isArray(decided) && decided.length > 0;
    };
    const slotsLikely =
      looksFree(user.stream, user.command) && (!chat || looksFree(chat.stream, chat.command, chat.read));
    const [taken, early] = await Promise.all([
      Promise.allSettled([
        commands.handle(slotsDecider, user.stream, user.command),
        // At the revision read (as a new stream when it was empty): one round trip, and a slot moved
        // on since is StreamMoved, with nothing decided again.
        ...(chat
          ? [commands.handle(slotsDecider, chat.stream, chat.command, { atRevision: chat.read?.revision })]
          : []),
      ]),
      hold > 0 && slotsLikely ? Promise.allSettled([reserve()]) : undefined,
    ]);
    let created: { position: bigint };
    try {
      // The chat's refusal (409) says more than the user's (429).
      for (const r of taken.slice().reverse()) if (r.status === 'rejected') throw r.reason;
      if (early?.[0].status === 'rejected') throw early[0].reason;
      if (hold > 0 && !early) await reserve();
      created = await this.deps.commands.handle(
        taskDecider,
        taskStream(taskId),
        {
          type: 'CreateTask',
          data: {
            taskId,
            userId: g.userId,
            chatId: g.chatId,
            model: g.model.id,
            promptTokens,
            maxTokens,
            hold,
            deadlineAt: deadline.toISOString(),
            ...(g.chatId ? { omittedMessages: g.omittedMessages ?? 0 } : {}),
          },
          metadata,
        },
        { newStream: true },
      );
    } catch (err) {
      // Undo what was taken (a hold may have landed though its answer was lost); the caller hears
      // the original refusal or failure, whatever the undoing meets.
      const undo = { actorId: SYSTEM_ACTOR, correlationId: taskId };
      let undone = true;
      // No hold was made when the ledger refused it (402), whether beside the slots or after them.
      const holdAnswer: unknown = early?.[0].status === 'rejected' ? early[0].reason : err;
      if (holdMayExist && !(holdAnswer instanceof InsufficientCredits)) {
        await ledger
          .release({ userId: g.userId, holdId: taskId, reason: 'task not started', metadata: undo })
          .catch((e: unknown) => {
            undone = false;
            this.deps.logger.warn(
              { err: e, taskId },
              'task hold not released; it is given back when it expires',
            );
          });
      }
      // The chat's slot is not ours when its take was refused, or found it moved on.
      const chatTake = taken[1];
      const chatNotTaken =
        chatTake?.status === 'rejected' &&
        (chatTake.reason instanceof ChatBusy || chatTake.reason instanceof StreamMoved);
      await freeSlots(this.deps.commands, g.userId, chatNotTaken ? null : g.chatId, taskId, metadata).catch(
        (e: unknown) => {
          undone = false;
          this.deps.logger.warn({ err: e, taskId }, 'task slots not freed; they count as stale later');
        },
      );
      // Tried again only once nothing of this try is left: else a try would hold twice.
      if (err instanceof StreamMoved && !undone) {
        throw new ConcurrencyConflict('This chat changed while its reply was being started; ask again.');
      }
      throw err;
    }
    this.deps.metrics?.started(g.model.id, g.chatId ? 'chat' : 'completion');
    this.generate(taskId, g, promptTokens, maxTokens, hold, deadline);
    return {
      taskId,
      chatId: g.chatId,
      modelId: g.model.id,
      hold,
      promptTokens,
      maxTokens,
      omittedMessages: g.omittedMessages ?? 0,
      position: created.position,
    };
  }

  /** Runs the generation in the background; its outcome is recorded and settled whatever happens. */
  private generate(
    taskId: string,
    g: Generation,
    promptTokens: number,
    maxTokens: number,
    hold: number,
    deadline: Date,
  ): void {
    this.deps.buffer.open(taskId);
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort('timeout'), Math.max(0, deadline.getTime() - Date.now()));
    timer.unref();
    // The model is asked once the request that started the task has been answered: the SDK's
    // request setup is a millisecond or more of synchronous work, which would hold up the 201.
    const done = new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => this.produce(taskId, g, promptTokens, maxTokens, hold, abort.signal))
      .catch((err: unknown) => {
        this.deps.logger.error({ err, taskId }, 'task not settled here; the reactor or the sweeper will');
        // Whoever reads the stream is not left waiting.
        this.deps.buffer.append(taskId, {
          kind: 'error',
          // Recorded, its outcome is settled by the reactor (a reply charged as generated); not
          // recorded, the sweeper fails it and releases its hold. The reader learns which from the task.
          detail: 'The reply could not be settled here; the service settles it shortly (see the task).',
        });
      })
      .finally(() => {
        clearTimeout(timer);
        this.running.delete(taskId);
      });
    this.running.set(taskId, { abort, done, startedAt: Date.now() });
    this.deps.localTasks?.add(taskId, done);
  }

  private async produce(
    taskId: string,
    g: Generation,
    promptTokens: number,
    maxTokens: number,
    hold: number,
    signal: AbortSignal,
  ): Promise<void> {
    const { buffer, models, config, logger, metrics } = this.deps;
    const provider = withRetryBeforeFirstToken(models.provider(g.model), {
      attempts: config.LLM_RETRY_ATTEMPTS,
      baseDelayMs: config.LLM_RETRY_BASE_DELAY_MS,
      onRetry: (err, attempt, delayMs) =>
        logger.warn({ taskId, attempt, delayMs, status: err.status, error: err.message }, 'provider retry'),
      onRetrying: () => metrics?.retried(g.model.id),
    });
    const askedAt = performance.now();
    const seconds = () => (performance.now() - askedAt) / 1000;
    let outputCame = false;
    const output = () => {
      if (outputCame) return;
      outputCame = true;
      metrics?.firstOutput(g.model.id, seconds());
    };
    let text = '';
    // A model may send NUL or half a surrogate pair; stored as sent, its reply could never be saved.
    const storable = new StorableTextStream();
    // A token's probabilities go with the text that came out with it (the storable text may hold
    // back half a character for the next piece).
    const add = (delta: string, logprobs?: TokenLogprob[]) => {
      if (!delta && !logprobs) return;
      output();
      text += delta;
      buffer.append(taskId, { kind: 'delta', content: delta, ...(logprobs ? { logprobs } : {}) });
    };
    // Passed on and kept for a completion; a chat's task has no place for it (its tokens still count).
    let reasoning = '';
    const storableReasoning = new StorableTextStream();
    const addReasoning = (piece: string) => {
      if (!piece) return;
      output();
      reasoning += piece;
      if (!g.chatId) buffer.append(taskId, { kind: 'reasoning', content: piece });
    };
    const calls = new ToolCallAssembly(() => `call_${this.deps.ids.next().replaceAll('-', '')}`);
    const addCall = (piece: ToolCallDelta | null) => {
      if (!piece) return;
      output();
      buffer.append(taskId, { kind: 'tool_call', ...piece });
    };
    let reported: Usage | null = null;
    let finish: FinishReason | null = null;
    let failure: string | null = null;
    /** The provider's status when it refused the request as asked (before any output). */
    let refusedWith: number | null = null;
    try {
      const stream = provider.stream({
        model: g.model,
        messages: g.messages,
        params: { ...g.params, max_tokens: maxTokens },
        tools: g.tools,
        responseFormat: g.responseFormat,
        logprobs: g.logprobs,
        signal,
      });
      for await (const item of stream) {
        if ('usage' in item) reported = item.usage;
        else if ('finish' in item) finish = item.finish;
        else if ('toolCall' in item) addCall(calls.push(item.toolCall));
        else if ('reasoning' in item) addReasoning(storableReasoning.push(item.reasoning));
        else if ('delta' in item) add(storable.push(item.delta), g.logprobs ? item.logprobs : undefined);
      }
    } catch (err) {
      if (!(isAbortError(err) && signal.aborted)) {
        failure = err instanceof ProviderError ? `The model failed: ${err.message}` : 'The model failed.';
        if (err instanceof ProviderError && !err.afterOutput && isRefusal(err.status))
          refusedWith = err.status!;
        if (!(err instanceof ProviderError)) logger.error({ err, taskId }, 'generation failed');
      }
    }
    add(storable.end());
    addReasoning(storableReasoning.end());
    for (const piece of calls.end()) addCall(piece);
    const toolCalls = calls.list();
    const why = signal.aborted ? String(signal.reason) : null;
    const completed = failure === null && why === null;
    // A provider's count is taken only when it is one: anything else is counted here.
    if (reported && !(isCount(reported.prompt_tokens) && isCount(reported.completion_tokens))) {
      logger.warn({ taskId, usage: reported }, 'provider usage is not a count; counted with the tokenizer');
      reported = null;
    }
    const counted = {
      promptTokens: completed && reported ? reported.prompt_tokens : promptTokens,
      completionTokens:
        completed && reported
          ? reported.completion_tokens
          : countTextTokens(text) + countTextTokens(reasoning) + countToolCallTokens(toolCalls),
    };
    // Charged at most for what the hold was sized for on the output side: the model was asked for
    // `maxTokens`, and more (a provider miscounting, or our tokenizer counting another model's text
    // higher) is not the user's to pay. No prompt is longer than the model's context window.
    const usage = {
      promptTokens: Math.min(counted.promptTokens, g.model.contextLength),
      completionTokens: Math.min(counted.completionTokens, maxTokens),
    };
    if (usage.promptTokens !== counted.promptTokens || usage.completionTokens !== counted.completionTokens) {
      logger.warn(
        {
          taskId,
          counted,
          maxTokens,
          contextLength: g.model.contextLength,
          source: reported ? 'provider' : 'tokenizer',
        },
        'usage past what the model was asked for; charged up to the limits',
      );
    }
    // Nothing generated, nothing owed: a provider that failed at once, or a cancel before any output.
    const owed = completed || text.length > 0 || reasoning.length > 0 || toolCalls.length > 0;
    const cost = owed
      ? costOf(g.model, { prompt_tokens: usage.promptTokens, completion_tokens: usage.completionTokens })
      : 0;
    // A chat keeps a reply with text (or a complete one); reasoning alone is charged, not saved.
    const messageId = g.chatId && (completed || text.length > 0) ? this.deps.ids.next() : null;
    const common = {
      taskId,
      messageId,
      content: text,
      usage: owed ? usage : { promptTokens, completionTokens: 0 },
      cost,
    };
    let recorded: RecordedEvent | null;
    if (completed) {
      recorded = await this.record(taskId, 'CompleteTask', {
        ...common,
        usageSource: reported ? 'provider' : 'tokenizer',
        ...(finish ? { finishReason: finish } : {}),
        ...(reasoning && !g.chatId ? { reasoning } : {}),
        ...(toolCalls.length > 0 ? { toolCalls } : {}),
      });
    } else if (why === 'cancel') {
      recorded = await this.record(taskId, 'CancelTask', common);
    } else {
      const reason =
        failure ??
        (why === 'timeout'
          ? 'The task ran past its time limit.'
          : 'The service restarted while the reply was generated.');
      recorded = await this.record(taskId, 'FailTask', {
        ...common,
        reason,
        ...(refusedWith !== null ? { providerStatus: refusedWith } : {}),
      });
    }
    if (recorded) {
      const end = completed ? 'succeeded' : why === 'cancel' ? 'cancelled' : 'failed';
      metrics?.finished(g.model.id, end, seconds(), owed ? { ...usage, cost } : null);
    }
    // Ours, as recorded; or the one recorded first (the sweeper's), read from the stream.
    let outcome = recorded ? ({ type: recorded.type, data: recorded.data } as TaskOutcome) : null;
    const eventId = recorded?.id ?? null;
    // Failing still, the settlement reactor settles it (it waits for this attempt and sees it failed).
    const settled = await this.retried(taskId, 'task not settled', async () => {
      outcome ??= (await this.deps.commands.read(taskDecider, taskStream(taskId))).state.outcome;
      if (!outcome) throw new Error(`task ${taskId} has no outcome after recording one`);
      return { outcome, at: await settleTask(this.deps, outcome, eventId, hold) };
    });
    this.deps.localTasks?.settled(taskId, settled.at);
    buffer.append(taskId, chunkOf(settled.outcome, settled.at));
  }

  /**
   * Records an outcome, retrying a store that is briefly away; the first outcome recorded wins.
   * Answers the recorded event, or null when another outcome was there first.
   */
  private async record<T extends 'CompleteTask' | 'FailTask' | 'CancelTask'>(
    taskId: string,
    type: T,
    data: Extract<TaskCommand, { type: T }>['data'],
  ): Promise<RecordedEvent | null> {
    return this.retried(taskId, 'task outcome not recorded', async () => {
      const { events } = await this.handle(taskId, type, data, { actorId: SYSTEM_ACTOR });
      return events[0] ?? null;
    });
  }

  /**
   * `run`, tried again when it fails (a store away for a moment), five times in all, waiting 0.4,
   * 0.8, 1.6 and 3.2 s between; an error that `final` picks out is thrown at once.
   */
  private async retried<T>(
    taskId: string,
    what: string,
    run: () => Promise<T>,
    options: { final?: (err: unknown) => boolean } = {},
  ): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await run();
      } catch (err) {
        if (attempt >= 5 || options.final?.(err)) throw err;
        this.deps.logger.warn({ err, taskId, attempt }, `${what}; retrying`);
        await new Promise((resolve) => setTimeout(resolve, 200 * 2 ** attempt));
      }
    }
  }

  private handle(
    taskId: string,
    type: TaskCommand['type'],
    data: TaskCommand['data'],
    provenance: Provenance,
  ) {
    return this.deps.commands.handle(taskDecider, taskStream(taskId), {
      type,
      data,
      metadata: { ...this.metadataOf(provenance), correlationId: taskId },
    } as TaskCommand);
  }

  private metadataOf(p: Provenance): CommandMetadata {
    return {
      now: this.deps.clock.now(),
      actorId: p.actorId,
      requestId: p.requestId ?? null,
      causationId: p.causationId ?? null,
    };
  }

  /**
   * Stops the generations whose task has a cancel recorded, which its message did not bring: Redis
   * lost it (a reconnect, a publish that failed), or there is no Redis and the cancel was asked of
   * another instance. Only generations older than one interval are looked at, so a short reply costs
   * no read, and a long one a read per interval.
   */
  private async checkCancels(): Promise<void> {
    const before = Date.now() - this.deps.config.TASK_CANCEL_CHECK_MS;
    for (const [taskId, run] of [...this.running]) {
      if (run.startedAt > before || run.abort.signal.aborted || this.closing) continue;
      try {
        const { state } = await this.deps.commands.read(taskDecider, taskStream(taskId));
        if (state.cancelRequested) {
          this.deps.logger.warn({ taskId }, 'task cancel found in its stream; its message never came');
          this.abortLocal(taskId, 'cancel');
        }
      } catch (err) {
        this.deps.logger.warn({ err, taskId }, 'task cancel not checked; tried again next time');
      }
    }
  }

  private abortLocal(taskId: string, why: 'cancel' | 'shutdown'): boolean {
    const run = this.running.get(taskId);
    if (!run) return false;
    run.abort.abort(why);
    return true;
  }
}

export type SettleDeps = Pick<TaskFlowDeps, 'commands' | 'ledger' | 'clock' | 'localTasks'>;

/**
 * Completes what an outcome implies: the reply saved as an assistant message, the hold captured at
 * the cost (the rest released) or released when nothing is owed, the slots freed. Every step is
 * idempotent on the task id, so running it twice (inline and by the reactor) changes nothing.
 * Answers the global position of its last step's event, so that a read given it sees the reply and
 * the charge. A step done before answers its stream's last event, which is at or after it.
 */
export async function settleTask(
  deps: SettleDeps,
  outcome: TaskOutcome,
  causationId: string | null,
  /** The task's hold when the caller knows it (else read from the task's stream). */
  knownHold?: number,
): Promise<bigint> {
  const d = outcome.data;
  let position = 0n;
  const reached = (p: bigint) => (position = later(position, p));
  const { commands, ledger, clock } = deps;
  const metadata: CommandMetadata = {
    now: clock.now(),
    actorId: SYSTEM_ACTOR,
    correlationId: d.taskId,
    causationId,
  };
  // The reply and the charge at once (their appends share a statement); the slots only after both,
  // so that the chat's next task reads the reply, and the user's next hold sees this one settled.
  // (A start takes the chat's slot only at the revision it read before reading the chat.)
  const saving = async () => {
    if (!d.chatId || !d.messageId) return;
    const saved = await appendAssistantMessage(
      commands,
      {
        chatId: d.chatId,
        userId: d.userId,
        messageId: d.messageId,
        taskId: d.taskId,
        text: d.content,
        status: outcome.type === 'TaskCompleted' ? 'complete' : 'partial',
      },
      metadata,
    );
    reached(saved.position);
  };
  const charging = async () => {
    const hold = knownHold ?? (await commands.read(taskDecider, taskStream(d.taskId))).state.hold;
    if (hold === 0) return;
    const provenance: Provenance = { actorId: SYSTEM_ACTOR, correlationId: d.taskId, causationId };
    const reason =
      outcome.type === 'TaskCompleted' ? 'usage' : outcome.type === 'TaskFailed' ? 'failed' : 'cancelled';
    const { position: charged } =
      d.cost > 0
        ? await ledger.capture({
            userId: d.userId,
            holdId: d.taskId,
            cost: d.cost,
            reason,
            metadata: provenance,
          })
        : await ledger.release({ userId: d.userId, holdId: d.taskId, reason, metadata: provenance });
    reached(charged);
  };
  // Both to their end before a failure is passed on: a retry of the settlement then starts afresh.
  for (const r of await Promise.allSettled([saving(), charging()]))
    if (r.status === 'rejected') throw r.reason;
  reached(await freeSlots(commands, d.userId, d.chatId, d.taskId, metadata));
  return position;
}

/** The reactor that settles every outcome from its event: what a crash after recording it left undone. */
export function taskSettlementReactor(deps: SettleDeps): Projector {
  return {
    name: 'task_settlement',
    version: 1,
    eventTypes: [...TASK_OUTCOMES],
    tables: [],
    reactor: true,
    async apply(_db, events) {
      for (const e of events) {
        const outcome = { type: e.type, data: e.data } as TaskOutcome;
        if ((await deps.localTasks?.settledHere(outcome.data.taskId)) != null) continue;
        await settleTask(deps, outcome, e.id);
      }
    },
  };
}

async function freeSlots(
  commands: CommandHandler,
  userId: string,
  chatId: string | null,
  taskId: string,
  metadata: CommandMetadata,
): Promise<bigint> {
  const free = (stream: string, owner: string) =>
    commands.handle(slotsDecider, stream, { type: 'FreeTaskSlot', data: { owner, taskId }, metadata });
  // Both at once (their appends share a statement), each to its end before a failure is passed on.
  const freed = await Promise.allSettled([
    free(userSlotsStream(userId), `user:${userId}`),
    ...(chatId ? [free(chatSlotStream(chatId), `chat:${chatId}`)] : []),
  ]);
  let position = 0n;
  for (const r of freed) {
    if (r.status === 'rejected') throw r.reason;
    position = later(position, r.value.position);
  }
  return position;
}

const later = (a: bigint, b: bigint) => (a > b ? a : b);

/**
 * A provider's refusal of the request as it was asked (a bad parameter, a schema it cannot take, a
 * prompt too large): the caller's to fix, unlike its key, its model or its load (401, 404, 429).
 */
const isRefusal = (status: number | undefined) => status === 400 || status === 413 || status === 422;

const isCount = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0;

/**
 * The stream's last event for an outcome, settled up to `settledAt`; null when it could not be
 * settled here (the reactor settles it), and the event then says no position.
 */
export function chunkOf(outcome: TaskOutcome, settledAt: bigint | null): TaskChunk {
  const d = outcome.data;
  const position = settledAt === null ? {} : { position: settledAt.toString() };
  if (outcome.type === 'TaskCompleted') {
    return {
      kind: 'done',
      messageId: d.messageId,
      usage: { prompt_tokens: d.usage.promptTokens, completion_tokens: d.usage.completionTokens },
      cost: d.cost,
      ...(outcome.data.finishReason ? { finishReason: outcome.data.finishReason } : {}),
      ...position,
    };
  }
  return {
    kind: 'error',
    detail: outcome.type === 'TaskFailed' ? outcome.data.reason : 'The task was cancelled.',
    ...(outcome.type === 'TaskFailed' && outcome.data.providerStatus !== undefined ? { refused: true } : {}),
    ...position,
  };
}

/** The parameters that are set (a preset's parameters may carry explicit undefineds). */
export function definedOnly<T extends object>(params: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(params).filter(([, v]) => v !== undefined)) as {
    [K in keyof T]?: Exclude<T[K], undefined>;
  };
}

/** A stored chat message as the model is sent it: images as `image_url` parts. */
function toModelMessage(m: ChatMessage): ChatMessageInput {
  const parts = m.content.map((p: ContentPart) =>
    p.type === 'text'
      ? { type: 'text' as const, text: p.text }
      : { type: 'image_url' as const, image_url: { url: p.url } },
  );
  // Text alone goes as one string, which every compatible provider takes; its parts on lines of
  // their own, as the user wrote them apart.
  const textOnly = parts.every((p) => p.type === 'text');
  return {
    role: m.role,
    content: textOnly ? parts.map((p) => (p.type === 'text' ? p.text : '')).join('\n') : parts,
  };
}
