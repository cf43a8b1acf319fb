import {
  CONTEXT_MARGIN,
  fitHistory,
  countImages,
  IMAGE_TOKENS_AT_MOST,
  imageAllowance,
  messageSize,
} from '../../src/platform/llm/context';
import { countMessageTokens, countPromptTokens, TOKENS_PER_IMAGE } from '../../src/platform/llm/tokens';
import type { ChatMessageInput } from '../../src/platform/llm/types';

const say = (role: 'system' | 'user' | 'assistant', words: number, tag: string = role): ChatMessageInput => ({
  role,
  content: `${tag} ${Array.from({ length: words }, (_, i) => `w${i}`).join(' ')}`,
});
const model = (
  contextLength: number,
  defaultMaxTokens = 50,
  maxOutputTokens = 100,
  imageTokens = IMAGE_TOKENS_AT_MOST,
) => ({
  contextLength,
  defaultMaxTokens,
  maxOutputTokens,
  imageTokens,
});
const tags = (messages: ChatMessageInput[]) => messages.map((m) => (m.content as string).split(' ')[0]);
/** What a prompt may take of a window, beside the reply's budget and the margin. */
const roomIn = (contextLength: number, output: number) =>
  contextLength - output - Math.ceil(contextLength * CONTEXT_MARGIN);
/** The window whose room for a prompt, beside `output`, is exactly `tokens`. */
function windowFor(tokens: number, output: number): number {
  let contextLength = tokens;
  while (roomIn(contextLength, output) < tokens) contextLength++;
  expect(roomIn(contextLength, output)).toBe(tokens);
  return contextLength;
}

/** A preset's system prompt and one example, then `turns` question-answer pairs and a last question. */
function chat(turns: number): ChatMessageInput[] {
  const out = [say('system', 20), say('user', 10, 'example-q'), say('assistant', 10, 'example-a')];
  for (let i = 0; i < turns; i++) out.push(say('user', 30, `q${i}`), say('assistant', 30, `a${i}`));
  out.push(say('user', 30, 'last'));
  return out;
}

describe('fitting a chat history to the context window', () => {
  it('sends a history that fits as it is, to the last token of its room', () => {
    const messages = chat(3);
    const whole = countPromptTokens(messages);
    const fitted = fitHistory(messages, 3, model(windowFor(whole, 50)));
    expect(fitted).toEqual({ messages, omitted: 0, promptTokens: whole, images: 0 });
    // One token less of room, and the oldest turn goes.
    const cut = fitHistory(messages, 3, model(windowFor(whole - 1, 50)));
    expect(cut.omitted).toBe(2);
    expect(tags(cut.messages)).toEqual(['system', 'example-q', 'example-a', 'q1', 'a1', 'q2', 'a2', 'last']);
  });

  it('keeps a margin of the window free, for tokenizers that count more than ours', () => {
    const messages = chat(3);
    const whole = countPromptTokens(messages);
    // The whole window less the reply's budget would hold it; the margin does not.
    expect(fitHistory(messages, 3, model(whole + 50)).omitted).toBeGreaterThan(0);
    expect(CONTEXT_MARGIN).toBeGreaterThan(0);
  });

  it('leaves out the oldest turns, keeping the opening and the newest, with room for the reply', () => {
    const messages = chat(10);
    const whole = countPromptTokens(messages);
    const contextLength = Math.floor(whole / 2);
    const fitted = fitHistory(messages, 3, model(contextLength, 50));
    expect(fitted.omitted).toBeGreaterThan(0);
    expect(fitted.messages).toHaveLength(messages.length - fitted.omitted);
    // The opening, then an unbroken run of the newest messages, starting on a question.
    expect(tags(fitted.messages).slice(0, 3)).toEqual(['system', 'example-q', 'example-a']);
    expect(fitted.messages.slice(3)).toEqual(messages.slice(3 + fitted.omitted));
    expect(fitted.messages[3]!.role).toBe('user');
    expect(tags(fitted.messages).at(-1)).toBe('last');
    // Its count is the prompt's, and it leaves the default output budget and the margin.
    expect(fitted.promptTokens).toBe(countPromptTokens(fitted.messages));
    expect(fitted.promptTokens).toBeLessThanOrEqual(roomIn(contextLength, 50));
    // As many as fit: one more turn would not.
    const oneMore = messages.slice(3 + fitted.omitted - 2);
    expect(countPromptTokens([...messages.slice(0, 3), ...oneMore])).toBeGreaterThan(
      roomIn(contextLength, 50),
    );
  });

  it('keeps room for the output the chat asks for, at most the model maximum', () => {
    const messages = chat(10);
    const contextLength = countPromptTokens(messages);
    const asked = fitHistory(messages, 3, model(contextLength, 50, 400), 300);
    expect(asked.promptTokens).toBeLessThanOrEqual(roomIn(contextLength, 300));
    // Short of it by less than a turn (a question and its answer).
    const turn = countPromptTokens(messages.slice(3, 5));
    expect(asked.promptTokens).toBeGreaterThan(roomIn(contextLength, 300) - turn);
    const capped = fitHistory(messages, 3, model(contextLength, 50, 100), 300);
    expect(capped.promptTokens).toBeLessThanOrEqual(roomIn(contextLength, 100));
    expect(capped.omitted).toBeLessThan(asked.omitted);
  });

  it('does not begin the kept conversation on an answer whose question was left out', () => {
    const messages = chat(6);
    const opening = countPromptTokens(messages.slice(0, 3));
    const last = countMessageTokens(messages.at(-1)!);
    const answer = countMessageTokens(messages.at(-2)!);
    // Room for the opening, the last question and the answer before it, but not its question.
    const fitted = fitHistory(messages, 3, model(windowFor(opening + last + answer, 50), 50));
    expect(tags(fitted.messages)).toEqual(['system', 'example-q', 'example-a', 'last']);
    expect(fitted.omitted).toBe(messages.length - 4);
    expect(fitted.promptTokens).toBe(countPromptTokens(fitted.messages));
  });

  it('sends the opening and the last message when not even they leave room, for the budget to shrink', () => {
    const messages = chat(4);
    const fitted = fitHistory(messages, 3, model(80, 50));
    expect(tags(fitted.messages)).toEqual(['system', 'example-q', 'example-a', 'last']);
    expect(fitted.promptTokens).toBe(countPromptTokens(fitted.messages));
    expect(fitted.promptTokens).toBeGreaterThan(roomIn(80, 50));
  });

  it('keeps a chat that is all opening, and a lone message, whatever their size, and sends nothing of none', () => {
    const opening = chat(0).slice(0, 3);
    expect(fitHistory(opening, 3, model(10)).omitted).toBe(0);
    expect(fitHistory(opening, 5, model(10)).messages).toEqual(opening);
    const lone = [say('user', 100)];
    expect(fitHistory(lone, 0, model(10))).toEqual({
      messages: lone,
      omitted: 0,
      promptTokens: countPromptTokens(lone),
      images: 0,
    });
    expect(fitHistory([], 2, model(10))).toEqual({
      messages: [],
      omitted: 0,
      promptTokens: countPromptTokens([]),
      images: 0,
    });
  });

  it('counts each message once at most, and none older than the first that does not fit', () => {
    const messages = chat(200);
    const counted: number[] = [];
    const sizeOf = (i: number) => {
      counted.push(i);
      return messageSize(messages[i]!);
    };
    // Room for the opening and the last eight, the first of them an answer, which then goes too.
    const contextLength = windowFor(countPromptTokens([...messages.slice(0, 3), ...messages.slice(-8)]), 50);
    const fitted = fitHistory(messages, 3, model(contextLength, 50), undefined, sizeOf);
    expect(fitted.messages).toEqual([...messages.slice(0, 3), ...messages.slice(-7)]);
    expect(fitted.promptTokens).toBe(countPromptTokens(fitted.messages));
    // The opening, the eight, the one that did not fit: each once.
    expect(counted.length).toBe(3 + 8 + 1);
    expect(new Set(counted).size).toBe(counted.length);
    expect(Math.min(...counted.filter((i) => i >= 3))).toBe(messages.length - 9);
  });

  it('takes each image at the most a provider may count for it, while the prompt counts it as low detail', () => {
    const picture = (i: number): ChatMessageInput => ({
      role: 'user',
      content: [
        { type: 'text', text: `picture ${i}` },
        { type: 'image_url', image_url: { url: `https://example.com/${i}.png` } },
      ],
    });
    const messages = [say('system', 5), ...Array.from({ length: 6 }, (_, i) => picture(i))];
    expect(messageSize(messages[1]!)).toEqual({ tokens: countMessageTokens(messages[1]!), images: 1 });
    // Counted as the prompt counts them, all six would fit; at their most, three do.
    const atMost = (m: ChatMessageInput) => countMessageTokens(m) + IMAGE_TOKENS_AT_MOST - TOKENS_PER_IMAGE;
    const three = countMessageTokens(messages[0]!) + 3 * atMost(messages[6]!) + countPromptTokens([]);
    const contextLength = windowFor(three + 10, 50);
    expect(countPromptTokens(messages)).toBeLessThan(roomIn(contextLength, 50));
    const fitted = fitHistory(messages, 1, model(contextLength, 50));
    expect(fitted.messages).toEqual([messages[0], ...messages.slice(4)]);
    expect(fitted.omitted).toBe(3);
    expect(fitted.promptTokens).toBe(countPromptTokens(fitted.messages));
    expect(fitted.images).toBe(3);
    // A model whose catalog says its images count less fits more of them.
    const small = fitHistory(messages, 1, model(contextLength, 50, 100, TOKENS_PER_IMAGE));
    expect(small.messages).toEqual(messages);
    expect(small.images).toBe(6);
    // An answer with a picture, left out with its question, takes its picture out of the count.
    const turns = messages.map((m, i) => (i > 0 && i % 2 === 0 ? { ...m, role: 'assistant' as const } : m));
    const cut = fitHistory(turns, 1, model(contextLength, 50));
    expect(cut.messages).toEqual([turns[0], ...turns.slice(5)]);
    expect(cut.images).toBe(countImages(cut.messages));
    expect(cut.images).toBe(2);
  });

  it('may leave out the whole conversation of a chat without opening messages but its last', () => {
    const messages = chat(5).slice(3);
    const fitted = fitHistory(messages, 0, model(countPromptTokens([messages.at(-1)!]) + 100, 50));
    expect(tags(fitted.messages)).toEqual(['last']);
    expect(fitted.omitted).toBe(messages.length - 1);
  });
});

describe("the tokens a hold adds for a prompt's images", () => {
  it('adds, for each image part of any message, what it may count beyond the low-detail price', () => {
    const picture = (url: string) => ({ type: 'image_url' as const, image_url: { url } });
    const prompt: ChatMessageInput[] = [
      { role: 'system', content: 'Describe what you are shown.' },
      {
        role: 'user',
        content: [
          { type: 'text', text: 'These two:' },
          picture('https://a/1.png'),
          picture('https://a/2.png'),
        ],
      },
      { role: 'assistant', content: 'A cat and a dog.' },
      { role: 'user', content: [picture('https://a/3.png')] },
    ];
    const images = countImages(prompt);
    expect(images).toBe(3);
    expect(imageAllowance(images, IMAGE_TOKENS_AT_MOST)).toBe(3 * (IMAGE_TOKENS_AT_MOST - TOKENS_PER_IMAGE));
    expect(imageAllowance(images, 258)).toBe(3 * (258 - TOKENS_PER_IMAGE));
    // A model that counts an image at no more than the prompt's count adds nothing, nor less.
    expect(imageAllowance(images, TOKENS_PER_IMAGE)).toBe(0);
    expect(imageAllowance(images, 64)).toBe(0);
    expect(countImages(prompt.filter((m) => typeof m.content === 'string'))).toBe(0);
    expect(countImages([])).toBe(0);
  });
});
