import {
  ChatNotFound,
  InvalidChat,
  InvalidMessage,
  chatDecider,
  type ChatCommand,
  type PresetSnapshot,
} from '../../src/commands/chats/decider';
import type { ChatEvent, ContentPart } from '../../src/events/chats';
import { deciderSpec } from '../support/spec';

const now = new Date('2026-03-01T10:00:00.000Z');
const at = now.toISOString();
const spec = deciderSpec(chatDecider);

const preset: PresetSnapshot = {
  presetId: 'p1',
  name: 'Translator',
  model: 'gpt-4o-mini',
  parameters: { temperature: 0.3 },
  messages: [
    { role: 'system', content: 'Translate to French.' },
    { role: 'user', content: 'Hello' },
    { role: 'assistant', content: 'Bonjour' },
  ],
};
const start = (title: string | null = null): ChatCommand => ({
  type: 'StartChat',
  data: { chatId: 'c1', ownerId: 'alice', title, preset, messageIds: ['m0', 'm1', 'm2'] },
  metadata: { now },
});
const started: ChatEvent = {
  type: 'ChatStarted',
  data: {
    chatId: 'c1',
    ownerId: 'alice',
    presetId: 'p1',
    title: 'Translator',
    model: 'gpt-4o-mini',
    parameters: { temperature: 0.3 },
    messages: [
      {
        messageId: 'm0',
        seq: 0,
        role: 'system',
        content: [{ type: 'text', text: 'Translate to French.' }],
        visible: false,
        taskId: null,
        status: null,
        sentAt: at,
      },
      {
        messageId: 'm1',
        seq: 1,
        role: 'user',
        content: [{ type: 'text', text: 'Hello' }],
        visible: true,
        taskId: null,
        status: null,
        sentAt: at,
      },
      {
        messageId: 'm2',
        seq: 2,
        role: 'assistant',
        content: [{ type: 'text', text: 'Bonjour' }],
        visible: true,
        taskId: null,
        status: 'complete',
        sentAt: at,
      },
    ],
    startedAt: at,
  },
};
const send = (content: unknown, userId = 'alice', messageId = 'm3', visible = true): ChatCommand => ({
  type: 'SendMessage',
  data: { chatId: 'c1', userId, messageId, content: content as ContentPart[], visible },
  metadata: { now },
});
const sent = (content: ContentPart[], messageId = 'm3', seq = 3, visible = true): ChatEvent => ({
  type: 'MessageSent',
  data: {
    chatId: 'c1',
    messageId,
    seq,
    role: 'user',
    content,
    visible,
    taskId: null,
    status: null,
    sentAt: at,
  },
});
const reply = (
  taskId = 't1',
  messageId = 'r1',
  status: 'complete' | 'partial' = 'complete',
  userId = 'alice',
): ChatCommand => ({
  type: 'AppendAssistantMessage',
  data: { chatId: 'c1', userId, messageId, taskId, text: 'Salut', status },
  metadata: { now },
});
const replied = (
  seq: number,
  taskId = 't1',
  messageId = 'r1',
  status: 'complete' | 'partial' = 'complete',
): ChatEvent => ({
  type: 'MessageSent',
  data: {
    chatId: 'c1',
    messageId,
    seq,
    role: 'assistant',
    content: [{ type: 'text', text: 'Salut' }],
    visible: true,
    taskId,
    status,
    sentAt: at,
  },
});
const deleted: ChatEvent = { type: 'ChatDeleted', data: { chatId: 'c1', deletedBy: 'alice', deletedAt: at } };
const text = (t: string): ContentPart => ({ type: 'text', text: t });
const image = (url: string): ContentPart => ({ type: 'image', url });

describe('chat decider', () => {
  it('starts a chat with the preset’s messages first, its system prompt hidden, titled after the preset', () => {
    spec.given([]).when(start()).then([started]);
    spec.given([started]).when(start()).then([]);
  });

  it('takes a given title, trimmed, and refuses an empty or overlong one', () => {
    const [e] = chatDecider.decide(start('  Trip to Paris '), chatDecider.initialState());
    expect(e?.type === 'ChatStarted' && e.data.title).toBe('Trip to Paris');
    spec.given([]).when(start('   ')).thenThrows(InvalidChat);
    spec
      .given([])
      .when(start('x'.repeat(201)))
      .thenThrows(InvalidChat);
  });

  it('appends user messages after the preset’s, text and images, visible or hidden; the same id twice appends once', () => {
    const content = [text('What is this?'), image('https://example.com/a.png')];
    spec
      .given([started])
      .when(send(content))
      .then([sent(content)]);
    spec
      .given([started, sent(content)])
      .when(send(content))
      .then([]);
    spec
      .given([started, sent(content)])
      .when(send([text('psst')], 'alice', 'm4', false))
      .then([sent([text('psst')], 'm4', 4, false)]);
  });

  it('refuses bad content with 400: empty, too long, non-http(s) image URLs, too many images', () => {
    spec.given([started]).when(send([])).thenThrows(InvalidMessage);
    spec
      .given([started])
      .when(send([text('')]))
      .thenThrows(InvalidMessage, 'content.0.text');
    spec
      .given([started])
      .when(send([text('x'.repeat(32_001))]))
      .thenThrows(InvalidMessage, 'content.0.text');
    spec
      .given([started])
      .when(send([image('javascript:alert(1)')]))
      .thenThrows(InvalidMessage, 'content.0.url');
    spec
      .given([started])
      .when(send([image('ftp://example.com/a.png')]))
      .thenThrows(InvalidMessage, 'http');
    spec
      .given([started])
      .when(send([image('data:image/png;base64,AAAA')]))
      .thenThrows(InvalidMessage);
    spec
      .given([started])
      .when(send([image(`https://example.com/${'a'.repeat(2048)}`)]))
      .thenThrows(InvalidMessage, 'content.0.url');
    spec
      .given([started])
      .when(send(Array.from({ length: 5 }, (_, i) => image(`https://example.com/${i}.png`))))
      .thenThrows(InvalidMessage, 'images');
    spec
      .given([started])
      .when(send([{ type: 'audio', url: 'https://x' }]))
      .thenThrows(InvalidMessage);
  });

  it('answers 404 for a missing, deleted or someone else’s chat, on every command', () => {
    const cmds: ChatCommand[] = [
      send([text('hi')], 'bob'),
      { type: 'RenameChat', data: { chatId: 'c1', userId: 'bob', title: 'x' }, metadata: { now } },
      { type: 'DeleteChat', data: { chatId: 'c1', userId: 'bob' }, metadata: { now } },
      reply('t1', 'r1', 'complete', 'bob'),
    ];
    for (const cmd of cmds) spec.given([started]).when(cmd).thenThrows(ChatNotFound);
    spec
      .given([])
      .when(send([text('hi')]))
      .thenThrows(ChatNotFound);
    spec
      .given([started, deleted])
      .when(send([text('hi')]))
      .thenThrows(ChatNotFound);
    spec
      .given([started, deleted])
      .when({ type: 'DeleteChat', data: { chatId: 'c1', userId: 'alice' }, metadata: { now } })
      .thenThrows(ChatNotFound);
  });

  it('renames (nothing when the title is the same) and deletes', () => {
    spec
      .given([started])
      .when({
        type: 'RenameChat',
        data: { chatId: 'c1', userId: 'alice', title: ' Paris ' },
        metadata: { now },
      })
      .then([{ type: 'ChatRenamed', data: { chatId: 'c1', title: 'Paris', renamedAt: at } }]);
    spec
      .given([started])
      .when({
        type: 'RenameChat',
        data: { chatId: 'c1', userId: 'alice', title: 'Translator' },
        metadata: { now },
      })
      .then([]);
    spec
      .given([started])
      .when({ type: 'DeleteChat', data: { chatId: 'c1', userId: 'alice' }, metadata: { now } })
      .then([deleted]);
  });

  it('appends a task’s reply once however often it is offered, partial ones marked', () => {
    spec
      .given([started])
      .when(reply())
      .then([replied(3)]);
    spec
      .given([started, replied(3)])
      .when(reply())
      .then([]);
    spec
      .given([started, replied(3)])
      .when(reply('t1', 'other-id'))
      .then([]);
    spec
      .given([started, replied(3)])
      .when(reply('t2', 'r2', 'partial'))
      .then([replied(4, 't2', 'r2', 'partial')]);
  });

  it('drops a reply for a chat its owner deleted meanwhile', () => {
    spec.given([started, deleted]).when(reply()).then([]);
  });

  it('keeps the whole history in order in its state, hidden messages included', () => {
    const events = [started, sent([text('Hi')]), replied(4)];
    const s = events.reduce((acc, e) => chatDecider.evolve(acc, e), chatDecider.initialState());
    expect(s.messages.map((m) => [m.seq, m.role, m.visible])).toEqual([
      [0, 'system', false],
      [1, 'user', true],
      [2, 'assistant', true],
      [3, 'user', true],
      [4, 'assistant', true],
    ]);
    expect(s.chat).toMatchObject({ model: 'gpt-4o-mini', parameters: { temperature: 0.3 } });
  });
});
