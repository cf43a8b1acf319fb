import fc from 'fast-check';
import { encode } from 'gpt-tokenizer/encoding/o200k_base';
import { costOf, creditsFor, holdFor, PromptTooLong, resolveMaxTokens } from '../../src/platform/llm/cost';
import {
  countPromptTokens,
  countResponseFormatTokens,
  countTextTokens,
  countToolCallTokens,
  encodeText,
  MAX_RUN,
  REPLY_PRIMING_TOKENS,
  TOKENS_PER_IMAGE,
  TOKENS_PER_MESSAGE,
  tokenPieces,
} from '../../src/platform/llm/tokens';
import type { ModelInfo } from '../../src/platform/llm/types';

describe('token counting', () => {
  it('counts text with the o200k_base tokenizer', () => {
    expect(countTextTokens('')).toBe(0);
    expect(countTextTokens('Hello world')).toBe(2);
    expect(countTextTokens('hello hello hello hello')).toBe(4);
  });

  it('counts special-token text as plain text instead of refusing it', () => {
    expect(countTextTokens('a <|endoftext|> b')).toBeGreaterThan(3);
  });

  it('counts a chat like the OpenAI cookbook: 3 per message, role and content, 3 to prime the reply', () => {
    const messages = [
      { role: 'system' as const, content: 'Be brief.' },
      { role: 'user' as const, content: 'Hello world' },
    ];
    expect(countPromptTokens(messages)).toBe(
      REPLY_PRIMING_TOKENS +
        2 * TOKENS_PER_MESSAGE +
        countTextTokens('system') +
        countTextTokens('Be brief.') +
        countTextTokens('user') +
        countTextTokens('Hello world'),
    );
    expect(countPromptTokens([])).toBe(REPLY_PRIMING_TOKENS);
    // A speaker's name is text of the message.
    expect(countPromptTokens([{ ...messages[1]!, name: 'ann_smith' }])).toBe(
      countPromptTokens([messages[1]!]) + countTextTokens('ann_smith'),
    );
  });

  it('counts text parts as text and each image as a flat amount', () => {
    const text = countPromptTokens([{ role: 'user', content: 'What is this?' }]);
    const withImages = countPromptTokens([
      {
        role: 'user',
        content: [
          { type: 'text', text: 'What is this?' },
          { type: 'image_url', image_url: { url: 'https://example.com/a.png' } },
          { type: 'image_url', image_url: { url: 'https://example.com/b.png' } },
        ],
      },
    ]);
    expect(withImages - text).toBe(2 * TOKENS_PER_IMAGE);
  });

  it('counts the calls and answers of tools in a chat, and the tools offered', () => {
    const call = {
      id: 'call_1',
      type: 'function' as const,
      function: { name: 'weather', arguments: '{"city":"Paris"}' },
    };
    expect(countToolCallTokens([call])).toBe(
      TOKENS_PER_MESSAGE + countTextTokens('weather') + countTextTokens('{"city":"Paris"}'),
    );
    const asked = [{ role: 'user' as const, content: 'Weather in Paris?' }];
    const answered = [
      ...asked,
      { role: 'assistant' as const, content: null, tool_calls: [call] },
      { role: 'tool' as const, tool_call_id: 'call_1', content: 'Sunny' },
    ];
    expect(countPromptTokens(answered) - countPromptTokens(asked)).toBe(
      2 * TOKENS_PER_MESSAGE +
        countTextTokens('assistant') +
        countToolCallTokens([call]) +
        countTextTokens('tool') +
        countTextTokens('call_1') +
        countTextTokens('Sunny'),
    );
    const tools = [
      {
        type: 'function' as const,
        function: {
          name: 'weather',
          parameters: { type: 'object', properties: { city: { type: 'string' } } },
        },
      },
    ];
    expect(countPromptTokens(asked, { tools }) - countPromptTokens(asked)).toBe(
      countTextTokens(JSON.stringify(tools)),
    );
    expect(countPromptTokens(asked, { tools, choice: 'required' }) - countPromptTokens(asked)).toBe(
      countTextTokens(JSON.stringify(tools)) + countTextTokens('"required"'),
    );
    expect(countPromptTokens(asked, { tools: [] })).toBe(countPromptTokens(asked));
  });

  it('counts a reply format as its JSON, and no format as nothing', () => {
    const format = {
      type: 'json_schema' as const,
      json_schema: { name: 'city', schema: { type: 'object' } },
    };
    expect(countResponseFormatTokens(format)).toBe(countTextTokens(JSON.stringify(format)));
    expect(countResponseFormatTokens({ type: 'json_object' })).toBeGreaterThan(0);
    expect(countResponseFormatTokens(undefined)).toBe(0);
  });

  it('splits text into one piece per token that join back to the text, whatever the characters', () => {
    const samples = ['Bonjour! Ça va?', '你好，世界', '🧑‍🤝‍🧑 family', '𝔘𝔫𝔦𝔠𝔬𝔡𝔢', ''];
    for (const s of samples) {
      const pieces = tokenPieces(s);
      expect(pieces.join('')).toBe(s);
      expect(pieces).toHaveLength(countTextTokens(s));
    }
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 60 }), (s) => {
        const pieces = tokenPieces(s);
        return pieces.join('') === s && pieces.length === countTextTokens(s);
      }),
    );
  });
});

const model = (promptPrice: number, completionPrice: number, extra: Partial<ModelInfo> = {}): ModelInfo => ({
  id: 'm',
  provider: 'p',
  upstream: 'm',
  contextLength: 1000,
  defaultMaxTokens: 100,
  maxOutputTokens: 400,
  promptPrice,
  completionPrice,
  imageTokens: 1445,
  local: false,
  ...extra,
});

describe('token counting of long runs', () => {
  // Encoded at once, these took 24 s, and overflowed the encoder's stack: the jest timeout fails them.
  it('counts 200,000 letters, Chinese characters, emoji, dots or spaces in a row, and splits them back into the text', () => {
    for (const char of ['a', '你', '🎉', '.', ' ', '\n']) {
      const text = char.repeat(200_000);
      const pieces = tokenPieces(text);
      expect(pieces.join('')).toBe(text);
      expect(pieces.length).toBeGreaterThan(0);
      // Each piece of MAX_RUN characters counts as it would alone.
      expect(pieces.length).toBe((200_000 / MAX_RUN) * encode(char.repeat(MAX_RUN)).length);
    }
  });

  it('counts text whose runs are no longer than MAX_RUN exactly as the encoder does', () => {
    const text = `Look at ${'x'.repeat(MAX_RUN)} and ${'é'.repeat(MAX_RUN - 1)}, then the end.`;
    expect(encodeText(text)).toEqual(encode(text));
    // One character more, and the run is counted in pieces, with the text around it as it was.
    const longer = `Look at ${'x'.repeat(MAX_RUN + 1)}, then the end.`;
    expect(encodeText(longer)).toEqual([
      ...encode('Look at '),
      ...encode('x'.repeat(MAX_RUN)),
      ...encode('x'),
      ...encode(', then the end.'),
    ]);
  });
});

describe('cost in credits', () => {
  it('charges ceil(tokens × price / 1M) per part', () => {
    const m = model(1000, 2000);
    expect(costOf(m, { prompt_tokens: 1000, completion_tokens: 500 })).toBe(1 + 1);
    expect(costOf(m, { prompt_tokens: 1001, completion_tokens: 500 })).toBe(2 + 1);
    expect(costOf(m, { prompt_tokens: 0, completion_tokens: 0 })).toBe(0);
    expect(costOf(model(150, 600), { prompt_tokens: 2_000_000, completion_tokens: 1_000_000 })).toBe(
      300 + 600,
    );
    expect(holdFor(m, 1000, 1500)).toBe(1 + 3);
  });

  it('is exact for fractional prices: no float error rounds an exact amount up', () => {
    expect(creditsFor(1_000_000, 0.1)).toBe(1);
    expect(creditsFor(3_000_000, 0.1)).toBe(1); // 0.3 → 1
    expect(creditsFor(10_000_000, 0.3)).toBe(3); // 0.3 × 10 is exactly 3, not 3.0000000000000004
    expect(creditsFor(1, 0.000001)).toBe(1);
    expect(creditsFor(0, 123.456)).toBe(0);
  });

  it('a hold always covers the capture of any usage within it', () => {
    const price = fc.integer({ min: 0, max: 100_000_000 }).map((n) => n / 1000);
    fc.assert(
      fc.property(
        price,
        price,
        fc.integer({ min: 0, max: 200_000 }),
        fc.integer({ min: 0, max: 200_000 }),
        fc.integer({ min: 0, max: 200_000 }),
        (pp, cp, prompt, maxTokens, used) => {
          const m = model(pp, cp);
          const completion = Math.min(used, maxTokens);
          return (
            costOf(m, { prompt_tokens: prompt, completion_tokens: completion }) <=
            holdFor(m, prompt, maxTokens)
          );
        },
      ),
    );
  });

  it('refuses bad token counts and prices', () => {
    expect(() => creditsFor(-1, 1)).toThrow(RangeError);
    expect(() => creditsFor(1.5, 1)).toThrow(RangeError);
    expect(() => creditsFor(1, Number.NaN)).toThrow(RangeError);
  });
});

describe('output budget', () => {
  const m = model(1, 1, { contextLength: 1000, defaultMaxTokens: 100, maxOutputTokens: 400 });

  it('is the request’s, else the model’s default, within the maximum and the room left', () => {
    expect(resolveMaxTokens(m, 50)).toBe(100);
    expect(resolveMaxTokens(m, 50, 300)).toBe(300);
    expect(resolveMaxTokens(m, 50, 5000)).toBe(400);
    expect(resolveMaxTokens(m, 900, 300)).toBe(100);
  });

  it('answers 400 when the prompt leaves no room for a reply', () => {
    expect(() => resolveMaxTokens(m, 1000)).toThrow(PromptTooLong);
    expect(new PromptTooLong('x').status).toBe(400);
  });
});
