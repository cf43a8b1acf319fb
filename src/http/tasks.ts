import { z } from 'zod';
import { chunkOf, type StartedTask, type TaskFlow } from '../commands/tasks/flow';
import { StreamAlreadyClaimed, type TaskState } from '../commands/tasks/decider';
import type { Provenance } from '../commands/ledger/credits';
import type { TaskOutcome } from '../events/tasks';
import { BadRequest, Conflict, DomainError } from '../platform/errors';
import type {
  ChatMessageInput,
  FinishReason,
  TokenLogprob,
  ToolCallDelta,
  ToolOptions,
} from '../platform/llm/types';
import type { Logger } from '../platform/logger';
import { MAX_TOOL_CALL_ID } from '../platform/llm/toolCalls';
import type { TaskBuffer, TaskChunk } from '../platform/taskBuffer';
import { listTasks } from '../queries/tasks';
import { PageQuery } from '../queries/paging';
import { auth } from './middleware/auth';
import { consistentRead, EVENT_POSITION_HEADER, setEventPosition } from './middleware/consistency';
import { API_BASE, bearerSecurity, problemResponses } from './openapi';
import { GENERATION_FAILED, PROVIDER_REFUSED } from './openaiErrors';
import { openSse, SSE_HEADERS, STREAM_CLOSED } from './sse';
import type { AppContext, AuthedState, Resource } from './types';

const TaskId = z.object({ id: z.string().min(1).max(100) });
const TaskListQuery = PageQuery.extend({
  chat_id: z.string().min(1).max(100).optional(),
  status: z.enum(['queued', 'running', 'succeeded', 'failed', 'cancelled']).optional(),
});
const CreateTaskBody = z
  .strictObject({ chat_id: z.string().min(1).max(100), model: z.string().min(1).max(200).optional() })
  .meta({ id: 'CreateTask' });

const MAX_COMPLETION_MESSAGES = 500;
const MAX_CONTENT_LENGTH = 200_000;
const CompletionPart = z.discriminatedUnion('type', [
  z.object({ type: z.literal('text'), text: z.string().max(MAX_CONTENT_LENGTH) }),
  z.object({
    type: z.literal('image_url'),
    image_url: z.object({
      // A link, or the picture itself as a data URL (how apps send an upload), which the body limit
      // bounds: a completion's messages go upstream and are stored nowhere.
      url: z.union(
        [
          z
            .string()
            .max(2048)
            .regex(/^https?:\/\//i),
          z.string().regex(/^data:image\/(png|jpe?g|gif|webp);base64,[A-Za-z0-9+/]+={0,2}$/),
        ],
        { error: 'must be an http(s) URL, or a data: URL of a PNG, JPEG, GIF or WebP image in base64' },
      ),
      detail: z.enum(['auto', 'low', 'high']).optional(),
    }),
  }),
  // What an assistant declined to say, as OpenAI's SDK sends a reply back: passed on as its text.
  z.object({ type: z.literal('refusal'), refusal: z.string().max(MAX_CONTENT_LENGTH) }),
]);
const MAX_TOOLS = 128;
const FunctionName = z
  .string()
  .regex(/^[A-Za-z0-9_-]{1,64}$/, { error: 'must be 1 to 64 letters, digits, underscores or dashes' });
/** A call a model made, sent back: as the model named it (which a provider may not have checked). */
const ToolCallIn = z.object({
  id: z.string().min(1).max(MAX_TOOL_CALL_ID),
  type: z.literal('function'),
  function: z.object({
    name: z.string().min(1).max(MAX_CONTENT_LENGTH),
    arguments: z.string().max(MAX_CONTENT_LENGTH),
  }),
});
// A JSON Schema, passed on as it is: the provider judges it.
const JsonSchema = z.record(z.string(), z.unknown()).optional();
/** What a function and a reply format both have: a name, what it is for, and a strict flag. */
const described = {
  name: FunctionName,
  description: z.string().max(10_000).optional(),
  strict: z.boolean().nullish(),
};
const ToolIn = z.object({
  type: z.literal('function', { error: 'only function tools are offered' }),
  function: z.object({ ...described, parameters: JsonSchema }),
});
const ToolChoiceIn = z.union([
  z.enum(['none', 'auto', 'required']),
  z.object({ type: z.literal('function'), function: z.object({ name: FunctionName }) }),
]);
const CompletionMessage = z
  .object({
    // `developer` is OpenAI's newer name for `system`.
    role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
    /** Who says it, among speakers of the same role (the provider judges the name). */
    name: z.string().min(1).max(256).optional(),
    content: z.union([z.string().max(MAX_CONTENT_LENGTH), z.array(CompletionPart).min(1).max(64)]).nullish(),
    /** The calls an assistant message made; answered by the `tool` messages after it. */
    tool_calls: z.array(ToolCallIn).min(1).max(MAX_TOOLS).optional(),
    tool_call_id: z.string().min(1).max(MAX_TOOL_CALL_ID).optional(),
    /** The reasoning of an assistant message, sent back as the client's provider asks. */
    reasoning_content: z.string().max(MAX_CONTENT_LENGTH).optional(),
  })
  .superRefine((m, ctx) => {
    const issue = (path: string, message: string) => ctx.addIssue({ code: 'custom', path: [path], message });
    if (m.role === 'tool' && m.tool_call_id === undefined)
      issue('tool_call_id', 'a tool message answers a call: its tool_call_id is required');
    if (m.role !== 'tool' && m.tool_call_id !== undefined)
      issue('tool_call_id', 'only a tool message answers a call');
    if (m.role !== 'assistant' && m.tool_calls !== undefined)
      issue('tool_calls', 'only an assistant message makes calls');
    if (m.role !== 'assistant' && m.reasoning_content !== undefined)
      issue('reasoning_content', 'only an assistant message has reasoning');
    if (m.content == null && !(m.role === 'assistant' && m.tool_calls))
      issue('content', 'is required (only an assistant message with tool_calls may have none)');
    if (m.role === 'tool' && Array.isArray(m.content) && m.content.some((p) => p.type !== 'text'))
      issue('content', 'a tool message is text');
    if (m.role !== 'assistant' && Array.isArray(m.content) && m.content.some((p) => p.type === 'refusal'))
      issue('content', 'only an assistant message has a refusal');
  });
/**
 * OpenAI's request, the parts we serve. Unknown fields are ignored, as OpenAI-compatible servers do
 * (`user`, `metadata`, `store`, `service_tier`, `prediction`: none changes the reply), except those
 * asking for what we cannot give (more than one choice, audio, web search, the functions API that
 * tools replaced): a client relying on one hears a 400 rather than getting a plain reply.
 */
const CompletionBody = z
  .object({
    model: z.string().min(1).max(200).optional(),
    messages: z.array(CompletionMessage).min(1).max(MAX_COMPLETION_MESSAGES),
    tools: z.array(ToolIn).max(MAX_TOOLS).nullish(),
    tool_choice: ToolChoiceIn.nullish(),
    parallel_tool_calls: z.boolean().nullish(),
    functions: z.array(z.unknown()).max(0, 'the functions API is not offered: use tools').nullish(),
    // Saying to call none, or leaving it to a model offered none, asks for nothing but text.
    function_call: z
      .enum(['none', 'auto'], { error: 'the functions API is not offered: use tool_choice' })
      .nullish(),
    response_format: z
      .discriminatedUnion('type', [
        z.object({ type: z.literal('text') }),
        z.object({ type: z.literal('json_object') }),
        z.object({
          type: z.literal('json_schema'),
          json_schema: z.object({ ...described, schema: JsonSchema }),
        }),
      ])
      .nullish(),
    logprobs: z.boolean().nullish(),
    top_logprobs: z.number().int().min(0).max(20).nullish(),
    stream: z.boolean().nullish(),
    stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
    max_tokens: z.number().int().min(1).nullish(),
    max_completion_tokens: z.number().int().min(1).nullish(),
    temperature: z.number().min(0).max(2).nullish(),
    top_p: z.number().min(0).max(1).nullish(),
    presence_penalty: z.number().min(-2).max(2).nullish(),
    frequency_penalty: z.number().min(-2).max(2).nullish(),
    stop: z.union([z.string().min(1), z.array(z.string().min(1)).max(4)]).nullish(),
    n: z.literal(1).nullish(),
    modalities: z.array(z.literal('text', { error: 'only text replies are offered' })).nullish(),
    audio: z.null({ error: 'audio replies are not offered' }).optional(),
    web_search_options: z.null({ error: 'web search is not offered' }).optional(),
    // Token ids (as the provider's tokenizer numbers them) made more or less likely, -100 to 100.
    logit_bias: z
      .record(z.string().regex(/^\d{1,10}$/, { error: 'must be token ids' }), z.number().min(-100).max(100))
      .refine((bias) => Object.keys(bias).length <= 1024, { error: 'at most 1,024 tokens' })
      .nullish(),
    verbosity: z.enum(['low', 'medium', 'high']).nullish(),
    seed: z.number().int().min(Number.MIN_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER).nullish(),
    // Providers name their own efforts (none, minimal, low, medium, high, xhigh, max…): they judge it.
    reasoning_effort: z
      .string()
      .regex(/^[a-z]{1,16}$/, { error: 'must be an effort the provider knows, such as low, medium or high' })
      .nullish(),
  })
  .superRefine((b, ctx) => {
    // As OpenAI answers it: alternatives are of the tokens' probabilities, which must be asked for.
    if (b.top_logprobs != null && b.logprobs !== true) {
      ctx.addIssue({ code: 'custom', path: ['top_logprobs'], message: 'needs logprobs set to true' });
    }
    const offered = b.tools ?? [];
    const choice = b.tool_choice;
    // `none` and `auto` without tools ask for a text reply, which is what comes.
    if (choice === 'required' && offered.length === 0) {
      ctx.addIssue({ code: 'custom', path: ['tool_choice'], message: 'required needs tools to call' });
    }
    if (
      typeof choice === 'object' &&
      choice !== null &&
      !offered.some((t) => t.function.name === choice.function.name)
    ) {
      ctx.addIssue({
        code: 'custom',
        path: ['tool_choice', 'function', 'name'],
        message: `names no tool of the request: ${choice.function.name}`,
      });
    }
    const names = new Set<string>();
    offered.forEach((t, i) => {
      if (names.has(t.function.name)) {
        ctx.addIssue({ code: 'custom', path: ['tools', i, 'function', 'name'], message: 'is given twice' });
      }
      names.add(t.function.name);
    });
  })
  .meta({ id: 'ChatCompletionRequest' });

/** A task that failed or was cancelled, answered to a non-streaming completion. */
class GenerationFailed extends DomainError {
  readonly status = 502;
  readonly type = '/problems/generation-failed';
  readonly title = 'The model did not complete the reply';
  /** Response headers (the errors middleware sets them). */
  readonly headers: Record<string, string>;
  constructor(detail: string, charged: boolean, settledAt: bigint) {
    super(detail);
    // What was generated before the failure is charged: an SDK retrying on its own would charge
    // it again for every attempt, so it is told not to (OpenAI's SDKs heed `x-should-retry`).
    // Where its settlement ended, as a completed one says: a read given it sees the charge.
    this.headers = {
      ...(charged ? { 'x-should-retry': 'false' } : {}),
      [EVENT_POSITION_HEADER]: settledAt.toString(),
    };
  }
}

/**
 * A completion the provider refused as it was asked, before any output (a parameter or a schema it
 * does not take, a prompt too large): the caller's request to fix, as OpenAI would answer it.
 */
class ProviderRefused extends BadRequest {
  override readonly type = '/problems/provider-refused';
}

/** How long a completion's answer waits for its tokens' probabilities after its outcome (see there). */
const LOGPROBS_WAIT_MS = 1_000;

/** How often a stream with no news checks whether its task ended elsewhere (another instance, no Redis). */
const STALL_CHECK_MS = 5_000;

/** A task as `GET /tasks/{id}` shows it. */
function taskView(s: TaskState) {
  const o = s.outcome?.data;
  return {
    id: s.taskId,
    chat_id: s.chatId,
    model: s.model,
    status: s.status,
    hold: s.hold,
    usage: o ? { prompt_tokens: o.usage.promptTokens, completion_tokens: o.usage.completionTokens } : null,
    cost: o ? o.cost : null,
    message_id: o ? o.messageId : null,
    error: s.outcome?.type === 'TaskFailed' ? s.outcome.data.reason : null,
    omitted_messages: s.omittedMessages,
    created_at: s.createdAt,
  };
}

const provenanceOf = (ctx: { state: AuthedState }): Provenance => ({
  actorId: ctx.state.user.id,
  requestId: ctx.state.requestId,
});

/** Tasks (model replies in a chat, streamed) and the OpenAI-compatible `/chat/completions`. */
export const tasks: Resource = (router, { deps, openapi }) => {
  const flowOf = (): TaskFlow => {
    if (!deps.tasks) throw new Error('tasks need deps.tasks');
    return deps.tasks;
  };
  const heartbeatMs = deps.config.SSE_HEARTBEAT_MS;
  /**
   * Starts a task once per request: a retry of a request with an `Idempotency-Key` that already
   * started one (its answer was streamed, or its instance died) goes on from that task, neither
   * counted by the rate limit nor holding credits again. The session check (see `auth`) and the
   * rate limit run beside the start's reads; the start awaits them before its first write.
   */
  const startOnce = async (
    ctx: AppContext & { state: AuthedState },
    start: (flow: TaskFlow, ready: Promise<unknown>) => Promise<StartedTask>,
  ): Promise<StartedTask> => {
    const flow = flowOf();
    const earlier = ctx.state.idempotent?.ref;
    if (earlier) {
      await ctx.state.sessionChecked;
      return flow.resume(earlier, ctx.state.user.id);
    }
    const ready = (async () => {
      await ctx.state.sessionChecked;
      await ctx.rateLimits.consume('tasks', ctx.state.user.id);
    })();
    // The start awaits it, unless it fails first (an unknown chat): then it is left to run out.
    ready.catch(() => undefined);
    const t = await start(flow, ready);
    // Unnamed, the task still runs and the answer is still kept; only a retry after a stream or a
    // crash would start another.
    await ctx.state.idempotent?.remember(t.taskId).catch((err: unknown) => {
      ctx.log.warn({ err, taskId: t.taskId }, 'task not named under its idempotency key');
    });
    return t;
  };

  openapi.registerPath({
    method: 'post',
    path: '/tasks',
    summary: 'Generate the next reply in a chat (holds its maximum cost)',
    tags: ['tasks'],
    security: bearerSecurity,
    request: { body: { content: { 'application/json': { schema: CreateTaskBody } } } },
    responses: {
      201: { description: '{id, chat_id, status, hold}' },
      ...problemResponses(400, 401, 402, 404, 409, 429),
    },
  });
  router.post('/tasks', auth(0, { checkBeside: true }), async (ctx) => {
    const body = CreateTaskBody.parse(ctx.request.body);
    const t = await startOnce(ctx, (flow, ready) =>
      flow.startChatTask(
        { userId: ctx.state.user.id, chatId: body.chat_id, model: body.model },
        provenanceOf(ctx),
        ready,
      ),
    );
    setEventPosition(ctx, t.position);
    ctx.status = 201;
    ctx.set('Location', `${API_BASE}/tasks/${t.taskId}`);
    ctx.body = {
      id: t.taskId,
      chat_id: t.chatId,
      model: t.modelId,
      status: 'running',
      hold: t.hold,
      prompt_tokens: t.promptTokens,
      max_tokens: t.maxTokens,
      omitted_messages: t.omittedMessages,
    };
  });

  openapi.registerPath({
    method: 'get',
    path: '/tasks',
    summary: 'My tasks, newest first (in one chat, or in one status, when asked): what each cost',
    tags: ['tasks'],
    security: bearerSecurity,
    request: { query: TaskListQuery },
    responses: { 200: { description: '{items, next_cursor}' }, ...problemResponses(400, 401, 504) },
  });
  router.get('/tasks', auth(), consistentRead<AuthedState>(['tasks']), async (ctx) => {
    const query = TaskListQuery.parse(ctx.query);
    ctx.body = await listTasks(deps.db.db, {
      userId: ctx.state.user.id,
      chatId: query.chat_id,
      status: query.status,
      limit: query.limit,
      cursor: query.cursor,
    });
  });

  openapi.registerPath({
    method: 'get',
    path: '/tasks/{id}',
    summary: 'A task: status, usage, cost, the reply’s message',
    tags: ['tasks'],
    security: bearerSecurity,
    request: { params: TaskId },
    responses: { 200: { description: 'The task' }, ...problemResponses(401, 404) },
  });
  router.get('/tasks/:id', auth(), consistentRead<AuthedState>([]), async (ctx) => {
    const { id } = TaskId.parse(ctx.params);
    ctx.body = taskView(await flowOf().read(id, ctx.state.user.id));
  });

  openapi.registerPath({
    method: 'get',
    path: '/tasks/{id}/stream',
    summary:
      'The reply as it is generated (SSE: delta…, then done or error, with the position where its settlement ended); only the first call streams',
    tags: ['tasks'],
    security: bearerSecurity,
    request: { params: TaskId },
    responses: { 200: { description: 'text/event-stream' }, ...problemResponses(401, 404, 409) },
  });
  router.get('/tasks/:id/stream', auth(), consistentRead<AuthedState>([]), async (ctx) => {
    const { id } = TaskId.parse(ctx.params);
    const flow = flowOf();
    if (ctx.method === 'HEAD') {
      // What a GET would answer, without claiming the stream: a HEAD must not use up the one read.
      const state = await flow.read(id, ctx.state.user.id);
      if (state.claimed) throw new StreamAlreadyClaimed();
      ctx.status = 200;
      ctx.set(SSE_HEADERS);
      return;
    }
    const { state: claimed, position } = await flow.claimStream(id, ctx.state.user.id, provenanceOf(ctx));
    setEventPosition(ctx, position);
    const sse = openSse(ctx, heartbeatMs);
    // Settled before the client hears `done` (idempotent), so the reply is saved and the chat free,
    // even when the generating instance is still settling (or died after recording the outcome).
    const task = followed(flow, id, claimed.userId, ctx.log);
    let ended = false;
    void followTask(id, claimed.outcome, deps.buffer!, sse.signal, task, (c) => {
      if (c.kind === 'done' || c.kind === 'error') ended = true;
      if (c.kind === 'delta') sse.send('delta', { content: c.content });
      // A chat's task offers no tools, and its events have no place for reasoning (API.md).
      else if (c.kind === 'tool_call' || c.kind === 'reasoning') return;
      // Where the settlement ended: a read with `X-Consistent-After` then shows the reply and the charge.
      // (An absent one, from a chunk of an older buffer, is left out of the JSON.)
      else if (c.kind === 'done') {
        sse.send('done', { message_id: c.messageId, usage: c.usage, cost: c.cost, position: c.position });
      } else sse.send('error', { detail: c.detail, position: c.position });
    })
      .catch((err: unknown) => {
        ctx.log.warn({ err, taskId: id }, 'task stream ended early');
        // Not the task's end: the stream's. The client is told so, and where to see the end.
        sse.send('error', {
          detail: `The stream broke off; the task goes on. GET /tasks/${id} shows how it ends.`,
        });
      })
      .finally(() => {
        sse.end();
        // A chat's task has had its one stream: nobody reads its output again. (A completion's task
        // may be claimed here too; its output is the completion's to free.)
        if (ended && claimed.chatId !== null) deps.buffer!.release(id);
      });
  });

  openapi.registerPath({
    method: 'post',
    path: '/tasks/{id}/cancel',
    summary: 'Stop a task; it settles like any other (charged for what was generated)',
    tags: ['tasks'],
    security: bearerSecurity,
    request: { params: TaskId },
    responses: { 202: { description: 'Cancel asked for' }, ...problemResponses(401, 404, 409) },
  });
  router.post('/tasks/:id/cancel', auth(), async (ctx) => {
    const { id } = TaskId.parse(ctx.params);
    setEventPosition(ctx, await flowOf().cancel(id, ctx.state.user.id, provenanceOf(ctx)));
    ctx.status = 202;
    ctx.body = { id, status: 'cancelling' };
  });

  openapi.registerPath({
    method: 'post',
    path: '/chat/completions',
    summary: 'OpenAI-compatible chat completion (stream or not), charged to my credits',
    tags: ['tasks'],
    security: bearerSecurity,
    request: { body: { content: { 'application/json': { schema: CompletionBody } } } },
    responses: {
      200: { description: 'chat.completion, or a text/event-stream of chat.completion.chunk' },
      ...problemResponses(400, 401, 402, 429, 502),
    },
  });
  router.post('/chat/completions', auth(0, { checkBeside: true }), async (ctx) => {
    const body = CompletionBody.parse(ctx.request.body);
    const flow = flowOf();
    const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? undefined;
    const stop = body.stop == null ? undefined : typeof body.stop === 'string' ? [body.stop] : body.stop;
    const params = Object.fromEntries(
      Object.entries({
        max_tokens: maxTokens,
        temperature: body.temperature,
        top_p: body.top_p,
        presence_penalty: body.presence_penalty,
        frequency_penalty: body.frequency_penalty,
        stop,
        seed: body.seed,
        reasoning_effort: body.reasoning_effort,
        logit_bias: body.logit_bias,
        verbosity: body.verbosity,
      }).filter(([, v]) => v !== undefined && v !== null),
    );
    const messages: ChatMessageInput[] = body.messages.map((m) => ({
      role: m.role === 'developer' ? 'system' : m.role,
      content: Array.isArray(m.content)
        ? m.content.map((p) => (p.type === 'refusal' ? { type: 'text' as const, text: p.refusal } : p))
        : (m.content ?? null),
      ...(m.name !== undefined ? { name: m.name } : {}),
      ...(m.tool_calls ? { tool_calls: m.tool_calls } : {}),
      ...(m.tool_call_id !== undefined ? { tool_call_id: m.tool_call_id } : {}),
      ...(m.reasoning_content !== undefined ? { reasoning_content: m.reasoning_content } : {}),
    }));
    const tools: ToolOptions | undefined =
      body.tools && body.tools.length > 0
        ? {
            tools: body.tools,
            ...(body.tool_choice != null ? { choice: body.tool_choice } : {}),
            ...(body.parallel_tool_calls != null ? { parallel: body.parallel_tool_calls } : {}),
          }
        : undefined;
    const t = await startOnce(ctx, (f, ready) =>
      f.startCompletion(
        {
          userId: ctx.state.user.id,
          model: body.model,
          messages,
          params,
          tools,
          responseFormat:
            body.response_format && body.response_format.type !== 'text' ? body.response_format : undefined,
          logprobs: body.logprobs === true ? { top: body.top_logprobs ?? 0 } : undefined,
        },
        provenanceOf(ctx),
        ready,
      ),
    );
    setEventPosition(ctx, t.position);
    const id = `chatcmpl-${t.taskId}`;
    const created = Math.floor(Date.now() / 1000);
    const model = t.modelId;
    // Answered, a completion's output is read again only by a retry under its Idempotency-Key.
    const answered = () => {
      if (!ctx.state.idempotent) deps.buffer!.release(t.taskId);
    };
    // A completion is kept nowhere but in its answer: once its client has gone, generating on would
    // only charge for text nobody gets, and hold a slot (the Stop button, an SDK's timeout). It is
    // cancelled, and charged for what was generated. Under an Idempotency-Key it goes on, for the
    // retry that will take it up.
    const leftBehind = () => {
      if (ctx.state.idempotent) return;
      flow.cancel(t.taskId, ctx.state.user.id, provenanceOf(ctx)).catch((err: unknown) => {
        // Finished meanwhile (409), or not recorded now: it runs to its end and is charged.
        if (!(err instanceof Conflict)) ctx.log.warn({ err, taskId: t.taskId }, 'completion not cancelled');
      });
    };
    if (!body.stream) {
      const gone = () => {
        if (!ctx.res.writableEnded) leftBehind();
      };
      ctx.res.once('close', gone);
      if (ctx.req.socket.destroyed) gone(); // gone before the task had started
      // The tokens' probabilities are kept nowhere but in the task's output, read as it comes. When
      // the task ran here, its output has ended by the time its outcome is known; elsewhere (a
      // retry under an Idempotency-Key) this instance may not see it, and answers without them.
      const reading = new AbortController();
      const logprobs = body.logprobs
        ? logprobsIn(deps.buffer!, t.taskId, reading.signal, ctx.log)
        : undefined;
      let outcome: TaskOutcome;
      try {
        outcome = await flow.outcomeOf(t.taskId, ctx.state.user.id);
      } finally {
        ctx.res.off('close', gone);
        if (logprobs) setTimeout(() => reading.abort(), LOGPROBS_WAIT_MS).unref();
      }
      void (logprobs ?? Promise.resolve()).then(answered, answered);
      // Settled (here already, as a rule): a read given its position sees the charge. Should it not
      // settle now, the reply is answered all the same (it is kept nowhere else), with the position
      // of its start; the settlement reactor settles it.
      const settledAt = await flow.settle(outcome, null).catch((err: unknown) => {
        ctx.log.warn({ err, taskId: t.taskId }, 'completion not settled before its answer');
        return t.position;
      });
      setEventPosition(ctx, settledAt);
      if (outcome.type === 'TaskFailed' && outcome.data.providerStatus !== undefined) {
        throw new ProviderRefused(outcome.data.reason);
      }
      if (outcome.type !== 'TaskCompleted') {
        throw new GenerationFailed(
          outcome.type === 'TaskFailed' ? outcome.data.reason : 'The task was cancelled.',
          outcome.data.cost > 0,
          settledAt,
        );
      }
      const usage = outcome.data.usage;
      const calls = outcome.data.toolCalls;
      ctx.body = {
        id,
        object: 'chat.completion',
        created,
        model,
        choices: [
          {
            index: 0,
            // As OpenAI answers a reply of calls alone: no content.
            message: {
              role: 'assistant',
              content: calls ? outcome.data.content || null : outcome.data.content,
              // As DeepSeek answers it, for the clients that show it.
              ...(outcome.data.reasoning ? { reasoning_content: outcome.data.reasoning } : {}),
              ...(calls ? { tool_calls: calls } : {}),
              refusal: null,
            },
            logprobs: choiceLogprobs(await logprobs),
            finish_reason: finishReasonOf(
              outcome.data.finishReason,
              usage.completionTokens,
              t.maxTokens,
              !!calls,
            ),
          },
        ],
        usage: openAiUsage(outcome),
      };
      return;
    }
    const includeUsage = body.stream_options?.include_usage === true;
    const task = followed(flow, t.taskId, ctx.state.user.id, ctx.log);
    // Followed before the response opens: OpenAI answers a request it refuses with its status,
    // streamed or not, and a provider refuses before any output. The response waits for the task's
    // first piece (at most COMPLETION_OPEN_WAIT_MS: a model may think long before it), and a failure
    // is then the 400 or 502 a completion not streamed answers.
    const leaving = new AbortController();
    const leave = () => leaving.abort(STREAM_CLOSED);
    ctx.res.once('close', leave);
    if (ctx.req.socket.destroyed) leave(); // gone while the task started
    const early: TaskChunk[] = [];
    let deliver: ((c: TaskChunk) => void) | null = null;
    let firstCame!: () => void;
    const first = new Promise<void>((resolve) => (firstCame = resolve));
    const following = followTask(t.taskId, null, deps.buffer!, leaving.signal, task, (c) => {
      if (deliver) return deliver(c);
      early.push(c);
      firstCame();
    });
    let waiting: NodeJS.Timeout | undefined;
    await Promise.race([
      first,
      following.catch(() => undefined),
      new Promise((resolve) => (waiting = setTimeout(resolve, deps.config.COMPLETION_OPEN_WAIT_MS))),
    ]);
    clearTimeout(waiting);
    // Failed before any output (refused, or the provider down through every retry): nothing was
    // sent yet, so it is answered with its status, as the same completion not streamed is, and
    // nothing generated was charged.
    const failed = early[0];
    if (failed?.kind === 'error') {
      ctx.res.off('close', leave);
      answered();
      if (failed.refused) throw new ProviderRefused(failed.detail);
      throw new GenerationFailed(
        failed.detail,
        false,
        failed.position ? BigInt(failed.position) : t.position,
      );
    }
    const sse = openSse(ctx, heartbeatMs);
    const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) =>
      sse.send(null, { id, object: 'chat.completion.chunk', created, model, choices, ...extra });
    chunk([{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null, logprobs: null }]);
    let ended = false;
    let called = false;
    const onChunk = (c: TaskChunk) => {
      if (c.kind === 'delta') {
        chunk([
          {
            index: 0,
            delta: { content: c.content },
            finish_reason: null,
            logprobs: choiceLogprobs(c.logprobs),
          },
        ]);
        return;
      }
      if (c.kind === 'reasoning') {
        chunk([{ index: 0, delta: { reasoning_content: c.content }, finish_reason: null, logprobs: null }]);
        return;
      }
      if (c.kind === 'tool_call') {
        called = true;
        chunk([{ index: 0, delta: { tool_calls: [toolCallDelta(c)] }, finish_reason: null, logprobs: null }]);
        return;
      }
      ended = true;
      if (c.kind === 'error') {
        sse.send(null, {
          error: { message: c.detail, ...(c.refused ? PROVIDER_REFUSED : GENERATION_FAILED) },
        });
      } else {
        const finish = finishReasonOf(c.finishReason, c.usage.completion_tokens, t.maxTokens, called);
        chunk([{ index: 0, delta: {}, finish_reason: finish, logprobs: null }]);
        if (includeUsage) chunk([], { usage: withTotal(c.usage) });
      }
    };
    for (const c of early) onChunk(c);
    deliver = onChunk;
    ctx.res.off('close', leave);
    if (sse.signal.aborted) leave();
    else sse.signal.addEventListener('abort', leave, { once: true });
    void following
      .then(() => {
        if (sse.signal.aborted && !ended) leftBehind();
        sse.send(null, '[DONE]');
        sse.end();
      })
      .catch((err: unknown) => {
        ctx.log.warn({ err, taskId: t.taskId }, 'completion stream ended early');
        if (!ended) {
          // The client hears that its reply was cut short, and what it will not get is not
          // generated on (a retry under its Idempotency-Key would take the task up instead).
          leftBehind();
          sse.send(null, {
            error: {
              message: 'The reply could not be followed to its end; it was stopped.',
              ...GENERATION_FAILED,
            },
          });
        }
        sse.send(null, '[DONE]');
        sse.end();
      })
      .finally(() => {
        if (ended) answered();
      });
  });
};

/**
 * OpenAI's `finish_reason`: the provider's, when it gave one that is passed on. Otherwise (and for
 * replies recorded before it was kept), `length` when the reply used all the output it was allowed.
 * A reply that called tools says `tool_calls` where it would say `stop`, as OpenAI does: some
 * servers end such a reply with `stop`, or nothing, and agent loops go by this reason.
 */
function finishReasonOf(
  said: FinishReason | undefined,
  completionTokens: number,
  maxTokens: number,
  calledTools: boolean,
): FinishReason {
  const reason = said ?? (completionTokens >= maxTokens ? 'length' : 'stop');
  return calledTools && reason === 'stop' ? 'tool_calls' : reason;
}

/** What of `whole` comes after `sent`, when `sent` is where it starts (else nothing: it went another way). */
const restOf = (whole: string, sent: string) => (whole.startsWith(sent) ? whole.slice(sent.length) : '');

/** A streamed piece of a tool call in OpenAI's chunk shape: id, type and name come with its first piece. */
function toolCallDelta(c: ToolCallDelta) {
  const fn = {
    ...(c.name !== undefined ? { name: c.name } : {}),
    ...(c.arguments !== undefined ? { arguments: c.arguments } : {}),
  };
  return { index: c.index, ...(c.id !== undefined ? { id: c.id, type: 'function' } : {}), function: fn };
}

/** A choice's `logprobs` as OpenAI shapes it: null when none came (not asked, or not given). */
function choiceLogprobs(tokens: TokenLogprob[] | undefined) {
  return tokens && tokens.length > 0 ? { content: tokens, refusal: null } : null;
}

/**
 * The log probabilities of a task's text, as its buffer has them: up to its end, or up to `signal`.
 * A buffer that cannot be read gives what it gave so far (the answer goes on without the rest).
 */
async function logprobsIn(
  buffer: TaskBuffer,
  taskId: string,
  signal: AbortSignal,
  log: Logger,
): Promise<TokenLogprob[]> {
  const tokens: TokenLogprob[] = [];
  try {
    for await (const c of buffer.read(taskId, signal)) {
      if (c.kind === 'delta' && c.logprobs) tokens.push(...c.logprobs);
    }
  } catch (err) {
    log.warn({ err, taskId }, 'log probabilities not read');
  }
  return tokens;
}

function withTotal(u: { prompt_tokens: number; completion_tokens: number }) {
  return { ...u, total_tokens: u.prompt_tokens + u.completion_tokens };
}

function openAiUsage(outcome: TaskOutcome) {
  const u = outcome.data.usage;
  return withTotal({ prompt_tokens: u.promptTokens, completion_tokens: u.completionTokens });
}

/** How a stream looks at its task when its output says nothing: its state, and its settlement. */
export interface FollowedTask {
  /** Null when it cannot be read now: no news, asked again at the next check. */
  current: () => Promise<TaskState | null>;
  /** Where its settlement ended; null when it cannot settle here now (the reactor settles it). */
  settle: (outcome: TaskOutcome) => Promise<bigint | null>;
}

/**
 * A task as a stream follows it. A store that does not answer, or a settlement that fails, does not
 * end the stream: its client would get a reply cut short with no end (and a streamed completion's
 * reply is kept nowhere else). Its end then goes out without the settlement's position.
 */
export const followed = (flow: TaskFlow, taskId: string, userId: string, log: Logger): FollowedTask => ({
  current: () =>
    flow.read(taskId, userId).catch((err: unknown) => {
      log.warn({ err, taskId }, 'task not read for its stream; looked at again later');
      return null;
    }),
  settle: (outcome) =>
    flow.settle(outcome, null).catch((err: unknown) => {
      log.warn({ err, taskId }, 'task not settled before its stream ended; the reactor settles it');
      return null;
    }),
});

/**
 * Follows a task's output to its end: what the buffer holds, then what follows, until done or
 * error, each piece to `onChunk`. A task that had already ended (`known`), or that ends where this
 * instance cannot see its buffer, is finished from its outcome event (settled first, so the reply is
 * saved and the chat free before the client hears of the end), skipping the text and the pieces of
 * tool calls already sent.
 */
export async function followTask(
  taskId: string,
  known: TaskOutcome | null,
  buffer: TaskBuffer,
  signal: AbortSignal,
  task: FollowedTask,
  onChunk: (c: TaskChunk) => void,
  stallCheckMs = STALL_CHECK_MS,
): Promise<void> {
  let sent = '';
  let sentReasoning = '';
  /** Each tool call's arguments sent so far, by index. */
  const sentCalls = new Map<number, string>();
  const send = (c: TaskChunk) => {
    if (c.kind === 'delta') sent += c.content;
    if (c.kind === 'reasoning') sentReasoning += c.content;
    if (c.kind === 'tool_call') sentCalls.set(c.index, (sentCalls.get(c.index) ?? '') + (c.arguments ?? ''));
    onChunk(c);
  };
  const finishFrom = async (outcome: TaskOutcome) => {
    const settledAt = await task.settle(outcome);
    const completed = outcome.type === 'TaskCompleted' ? outcome.data : null;
    const thought = restOf(completed?.reasoning ?? '', sentReasoning);
    if (thought) send({ kind: 'reasoning', content: thought });
    const rest = restOf(outcome.data.content, sent);
    if (rest) send({ kind: 'delta', content: rest });
    const calls = completed?.toolCalls ?? [];
    calls.forEach((call, index) => {
      const args = call.function.arguments;
      const before = sentCalls.get(index);
      const more = restOf(args, before ?? '');
      if (before === undefined) {
        send({ kind: 'tool_call', index, id: call.id, name: call.function.name, arguments: args });
      } else if (more) {
        send({ kind: 'tool_call', index, arguments: more });
      }
    });
    send(chunkOf(outcome, settledAt));
  };
  if (known) return finishFrom(known);
  const reader = buffer.read(taskId, signal)[Symbol.asyncIterator]();
  try {
    let pending = reader.next();
    for (;;) {
      let timer: NodeJS.Timeout | undefined;
      const stalled = new Promise<'stalled'>((resolve) => {
        timer = setTimeout(() => resolve('stalled'), stallCheckMs);
      });
      const next = await Promise.race([pending, stalled]);
      clearTimeout(timer);
      if (signal.aborted) return;
      if (next === 'stalled') {
        const state = await task.current();
        if (state?.outcome) return await finishFrom(state.outcome);
        continue;
      }
      if (next.done) return;
      send(next.value);
      if (next.value.kind === 'done' || next.value.kind === 'error') return;
      pending = reader.next();
    }
  } finally {
    // Ends the buffer's reader (and its Redis subscription) wherever this stopped.
    void reader.return?.(undefined);
  }
}
