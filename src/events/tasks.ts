import { z } from 'zod';

/**
 * Tasks' events (stream `task-{id}`): one model reply being generated for a chat. The hold on the
 * user's credits has the task's id; the terminal event carries the text and usage, so settling it
 * (the assistant message, the capture) can be completed from the event alone by a reactor.
 */
const id = z.string().min(1).max(200);
const at = z.string().datetime({ offset: true });
const usage = z.object({
  promptTokens: z.number().int().min(0),
  completionTokens: z.number().int().min(0),
});

export const TaskEventSchemas = {
  TaskCreated: z.object({
    taskId: id,
    userId: id,
    /** The chat it replies in; null for an OpenAI-compatible completion outside any chat. */
    chatId: id.nullable(),
    model: z.string().min(1),
    promptTokens: z.number().int().min(0),
    maxTokens: z.number().int().min(1),
    /** Credits held for prompt + max output at the model's prices (hold id = task id). */
    hold: z.number().int().min(0),
    /** Past this, a task with no outcome is failed by the sweeper and its hold released. */
    deadlineAt: at,
    /**
     * A chat's task: how many messages of its history were left out, the oldest, so that the rest
     * fit the model's context window with room for the reply. Absent before this was recorded.
     */
    omittedMessages: z.number().int().min(0).optional(),
    createdAt: at,
  }),
  TaskStreamClaimed: z.object({ taskId: id, claimedAt: at }),
  TaskCancelRequested: z.object({ taskId: id, requestedAt: at }),
  TaskCompleted: z.object({
    taskId: id,
    userId: id,
    chatId: id.nullable(),
    messageId: id.nullable(),
    content: z.string(),
    usage,
    cost: z.number().int().min(0),
    /** How usage was counted: the provider's report, or our tokenizer when it sent none. */
    usageSource: z.enum(['provider', 'tokenizer']),
    /**
     * Why the reply ended, as the provider said (OpenAI's `finish_reason`); absent when it said
     * nothing passed on, and in events recorded before it was kept.
     */
    finishReason: z.enum(['stop', 'length', 'content_filter', 'tool_calls']).optional(),
    /** The reasoning the model showed before it answered, when it showed any (its tokens are in `usage`). */
    reasoning: z.string().optional(),
    /**
     * The functions the model called, when a completion offered it some (OpenAI's shape; the
     * arguments are JSON text as the model wrote it). Their tokens are in `usage`.
     */
    toolCalls: z
      .array(
        z.object({
          id: z.string(),
          type: z.literal('function'),
          function: z.object({ name: z.string(), arguments: z.string() }),
        }),
      )
      .optional(),
    completedAt: at,
  }),
  TaskFailed: z.object({
    taskId: id,
    userId: id,
    chatId: id.nullable(),
    /** The partial reply saved as such, if any text came before the failure. */
    messageId: id.nullable(),
    content: z.string(),
    usage,
    cost: z.number().int().min(0),
    reason: z.string(),
    /**
     * The provider's HTTP status when it refused the request as asked, before any output (400, 413,
     * 422): the caller's request, not the service, was at fault.
     */
    providerStatus: z.number().int().min(400).max(499).optional(),
    failedAt: at,
  }),
  TaskCancelled: z.object({
    taskId: id,
    userId: id,
    chatId: id.nullable(),
    messageId: id.nullable(),
    content: z.string(),
    usage,
    cost: z.number().int().min(0),
    cancelledAt: at,
  }),
} as const;

export type TaskEventType = keyof typeof TaskEventSchemas;
export type TaskEvent = {
  [T in TaskEventType]: { type: T; data: z.infer<(typeof TaskEventSchemas)[T]> };
}[TaskEventType];
export type TaskOutcome = Extract<TaskEvent, { type: 'TaskCompleted' | 'TaskFailed' | 'TaskCancelled' }>;
export const TASK_OUTCOMES = ['TaskCompleted', 'TaskFailed', 'TaskCancelled'] as const;

export const taskStream = (taskId: string) => `task-${taskId}`;
