import { initialTask, type TaskState } from '../../src/commands/tasks/decider';
import type { TaskOutcome } from '../../src/events/tasks';
import type { TaskFlow } from '../../src/commands/tasks/flow';
import { followed, followTask } from '../../src/http/tasks';
import { createLogger } from '../../src/platform/logger';
import { createMemoryTaskBuffer, type TaskBuffer, type TaskChunk } from '../../src/platform/taskBuffer';

const completed: TaskOutcome = {
  type: 'TaskCompleted',
  data: {
    taskId: 't1',
    userId: 'u1',
    chatId: null,
    messageId: null,
    content: 'Looking.',
    usage: { promptTokens: 20, completionTokens: 15 },
    cost: 7,
    usageSource: 'provider',
    finishReason: 'tool_calls',
    reasoning: 'Paris, so the weather and the time there.',
    toolCalls: [
      { id: 'call_a', type: 'function', function: { name: 'weather', arguments: '{"city":"Paris"}' } },
      { id: 'call_b', type: 'function', function: { name: 'time', arguments: '{}' } },
    ],
    completedAt: '2026-12-06T12:00:00.000Z',
  },
};
const doneChunk: TaskChunk = {
  kind: 'done',
  messageId: null,
  usage: { prompt_tokens: 20, completion_tokens: 15 },
  cost: 7,
  finishReason: 'tool_calls',
  // Where the settlement ended, as settling answered it.
  position: '4242',
};

/** The task as stored: ended with `completed`, which settling records. */
function storedTask() {
  const settled: TaskOutcome[] = [];
  return {
    settled,
    task: {
      current: (): Promise<TaskState> => Promise.resolve({ ...initialTask(), outcome: completed }),
      settle: (o: TaskOutcome) => {
        settled.push(o);
        return Promise.resolve(4242n);
      },
    },
  };
}

describe('following a task to its end from its outcome', () => {
  it('gives a task that had ended its reasoning, text and whole tool calls, settled first', async () => {
    const { settled, task } = storedTask();
    const got: TaskChunk[] = [];
    const buffer = createMemoryTaskBuffer();
    await followTask('t1', completed, buffer, new AbortController().signal, task, (c) => {
      expect(settled).toHaveLength(1);
      got.push(c);
    });
    expect(got).toEqual([
      { kind: 'reasoning', content: 'Paris, so the weather and the time there.' },
      { kind: 'delta', content: 'Looking.' },
      { kind: 'tool_call', index: 0, id: 'call_a', name: 'weather', arguments: '{"city":"Paris"}' },
      { kind: 'tool_call', index: 1, id: 'call_b', name: 'time', arguments: '{}' },
      doneChunk,
    ]);
    await buffer.close();
  });

  it('goes on, from a buffer that stalls, with only what was not sent yet', async () => {
    const { task } = storedTask();
    const buffer = createMemoryTaskBuffer();
    const sentBefore: TaskChunk[] = [
      { kind: 'reasoning', content: 'Paris, so the weather and the time there.' },
      { kind: 'delta', content: 'Looking.' },
      { kind: 'tool_call', index: 0, id: 'call_a', name: 'weather', arguments: '' },
      { kind: 'tool_call', index: 0, arguments: '{"city":' },
    ];
    for (const c of sentBefore) buffer.append('t1', c);
    const got: TaskChunk[] = [];
    await followTask('t1', null, buffer, new AbortController().signal, task, (c) => got.push(c), 20);
    expect(got).toEqual([
      ...sentBefore,
      { kind: 'tool_call', index: 0, arguments: '"Paris"}' },
      { kind: 'tool_call', index: 1, id: 'call_b', name: 'time', arguments: '{}' },
      doneChunk,
    ]);
    await buffer.close();
  });
});

describe('following a task whose buffer stalled in its reasoning', () => {
  it('gives the rest of the reasoning, then the reply', async () => {
    const { task } = storedTask();
    const buffer = createMemoryTaskBuffer();
    buffer.append('t1', { kind: 'reasoning', content: 'Paris, so ' });
    const got: TaskChunk[] = [];
    await followTask('t1', null, buffer, new AbortController().signal, task, (c) => got.push(c), 20);
    expect(got.slice(0, 3)).toEqual([
      { kind: 'reasoning', content: 'Paris, so ' },
      { kind: 'reasoning', content: 'the weather and the time there.' },
      { kind: 'delta', content: 'Looking.' },
    ]);
    expect(got.at(-1)).toEqual(doneChunk);
    await buffer.close();
  });
});

describe('following a task whose store fails for a moment', () => {
  const log = createLogger({ LOG_LEVEL: 'silent' });
  const storeDown = () => Promise.reject(new Error('connection terminated unexpectedly'));
  /** What the stream of task t1 sends, its task followed over `flow` as the routes do. */
  const sent = async (flow: TaskFlow, known: TaskOutcome | null, buffer: TaskBuffer) => {
    const got: TaskChunk[] = [];
    const task = followed(flow, 't1', 'u1', log);
    await followTask('t1', known, buffer, new AbortController().signal, task, (c) => got.push(c), 20);
    return got;
  };

  it('takes a read that fails at a stall for no news, and ends when the task has', async () => {
    let reads = 0;
    const flow = {
      read: () => (++reads === 1 ? storeDown() : Promise.resolve({ ...initialTask(), outcome: completed })),
      settle: () => Promise.resolve(4242n),
    } as unknown as TaskFlow;
    const buffer = createMemoryTaskBuffer();
    buffer.append('t1', { kind: 'delta', content: 'Look' });
    const got = await sent(flow, null, buffer);
    expect(reads).toBe(2);
    expect(got.filter((c) => c.kind === 'delta')).toEqual([
      { kind: 'delta', content: 'Look' },
      { kind: 'delta', content: 'ing.' },
    ]);
    expect(got.at(-1)).toEqual(doneChunk);
    await buffer.close();
  });

  it('sends the end of a task it cannot settle now, without a position (the reactor settles it)', async () => {
    const flow = { settle: storeDown } as unknown as TaskFlow;
    const buffer = createMemoryTaskBuffer();
    const got = await sent(flow, completed, buffer);
    expect(got.find((c) => c.kind === 'delta')).toEqual({ kind: 'delta', content: 'Looking.' });
    const { position, ...rest } = doneChunk;
    expect(position).toBeDefined();
    expect(got.at(-1)).toEqual(rest);
    await buffer.close();
  });
});
