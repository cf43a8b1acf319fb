import { LOCAL_ECHO } from '../../src/platform/llm/catalog';
import { createLocalProvider, localReply } from '../../src/platform/llm/localProvider';
import { countPromptTokens, countTextTokens, tokenPieces } from '../../src/platform/llm/tokens';
import {
  LlmAborted,
  type ChatMessageInput,
  type StreamItem,
  type ToolOptions,
  type Usage,
} from '../../src/platform/llm/types';

const provider = createLocalProvider({ delayMs: 0 });
const conversation: ChatMessageInput[] = [
  { role: 'system', content: 'You are helpful.' },
  { role: 'user', content: 'Hi there' },
  { role: 'assistant', content: 'Hello!' },
  { role: 'user', content: [{ type: 'text', text: 'What is the capital of France?' }] },
];

async function run(
  messages: ChatMessageInput[],
  options: {
    maxTokens?: number;
    signal?: AbortSignal;
    onDelta?: (n: number) => void;
    delayMs?: number;
    tools?: ToolOptions;
  } = {},
) {
  const p = options.delayMs ? createLocalProvider({ delayMs: options.delayMs }) : provider;
  const items: StreamItem[] = [];
  let error: unknown;
  try {
    for await (const item of p.stream({
      model: LOCAL_ECHO,
      messages,
      params: { max_tokens: options.maxTokens ?? 512 },
      tools: options.tools,
      signal: options.signal ?? new AbortController().signal,
    })) {
      items.push(item);
      if ('delta' in item) options.onDelta?.(items.length);
    }
  } catch (err) {
    error = err;
  }
  const deltas = items.flatMap((i) => ('delta' in i ? [i.delta] : []));
  const usage = items.flatMap((i) => ('usage' in i ? [i.usage] : []));
  const finish = items.flatMap((i) => ('finish' in i ? [i.finish] : []));
  return { text: deltas.join(''), deltas, finish, usage, error, last: items.at(-1) };
}

describe('local provider', () => {
  it('answers the last user message, the same way every time', async () => {
    const first = await run(conversation);
    const second = await run(conversation);
    expect(first.text).toBe(second.text);
    expect(first.text).toBe(localReply(conversation));
    expect(first.text).toContain('What is the capital of France?');
    expect(first.text).not.toContain('Hi there');
    expect((await run([{ role: 'user', content: 'Something else' }])).text).not.toBe(first.text);
  });

  it('streams token by token, then real usage last', async () => {
    const out = await run(conversation);
    const reply = localReply(conversation);
    expect(out.deltas).toEqual(tokenPieces(reply).filter((p) => p !== ''));
    expect(out.deltas.length).toBeGreaterThan(10);
    expect(out.usage).toEqual<Usage[]>([
      { prompt_tokens: countPromptTokens(conversation), completion_tokens: countTextTokens(reply) },
    ]);
    expect(out.last).toEqual({ usage: out.usage[0] });
  });

  it('answers in text when offered tools, and counts them in the prompt as a provider bills them', async () => {
    const tools: ToolOptions = {
      tools: [{ type: 'function', function: { name: 'weather', parameters: { type: 'object' } } }],
      choice: 'auto',
    };
    const out = await run(conversation, { tools });
    expect(out.text).toBe(localReply(conversation));
    expect(out.finish).toEqual(['stop']);
    expect(out.usage[0]!.prompt_tokens).toBe(countPromptTokens(conversation, tools));
    expect(out.usage[0]!.prompt_tokens).toBeGreaterThan(countPromptTokens(conversation));
  });

  it('stops at max_tokens and counts exactly those', async () => {
    const out = await run(conversation, { maxTokens: 5 });
    expect(out.text).toBe(tokenPieces(localReply(conversation)).slice(0, 5).join(''));
    expect(out.usage[0]?.completion_tokens).toBe(5);
    expect(out.finish).toEqual(['length']);
    // A reply that fits says so, exactly at its length too.
    const whole = tokenPieces(localReply(conversation)).length;
    expect((await run(conversation)).finish).toEqual(['stop']);
    expect((await run(conversation, { maxTokens: whole })).finish).toEqual(['stop']);
    expect((await run(conversation, { maxTokens: whole - 1 })).finish).toEqual(['length']);
  });

  it('mentions images and handles a conversation without a user message', async () => {
    const withImage = await run([
      {
        role: 'user',
        content: [
          { type: 'text', text: 'Look' },
          { type: 'image_url', image_url: { url: 'https://example.com/cat.png' } },
        ],
      },
    ]);
    expect(withImage.text).toContain('1 image');
    const empty = await run([{ role: 'system', content: 'Be nice.' }]);
    expect(empty.text).toMatch(/built-in local model/);
    expect(empty.error).toBeUndefined();
  });

  it('quotes a long message only in part', () => {
    const long = 'x'.repeat(5000);
    const reply = localReply([{ role: 'user', content: long }]);
    expect(reply.length).toBeLessThan(600);
    expect(reply).toContain('…');
  });

  it('stops on abort with LlmAborted, before the usage', async () => {
    const controller = new AbortController();
    const out = await run(conversation, {
      signal: controller.signal,
      onDelta: (n) => n === 3 && controller.abort(),
    });
    expect(out.error).toBeInstanceOf(LlmAborted);
    expect(out.deltas).toHaveLength(3);
    expect(out.usage).toEqual([]);
  });

  it('an abort during the pause before a token ends the stream at once', async () => {
    const controller = new AbortController();
    const pending = run(conversation, { delayMs: 3_600_000, signal: controller.signal });
    setImmediate(() => controller.abort());
    const out = await pending;
    expect(out.error).toBeInstanceOf(LlmAborted);
    expect(out.deltas).toEqual([]);
  });

  it('does not start when already aborted', async () => {
    const controller = new AbortController();
    controller.abort();
    const out = await run(conversation, { signal: controller.signal });
    expect(out.error).toBeInstanceOf(LlmAborted);
    expect(out.deltas).toEqual([]);
  });
});
