import { CommandHandler } from '../../src/commands/handler';
import { ChatNotFound, chatDecider } from '../../src/commands/chats/decider';
import { appendAssistantMessage, loadChatForGeneration } from '../../src/commands/chats/generation';
import { startChat } from '../../src/commands/chats/start';
import { presetDecider, type Actor } from '../../src/commands/presets/decider';
import { chatStream } from '../../src/events/chats';
import { presetStream, type PresetFields } from '../../src/events/presets';
import { START, type EventStore, type LogPosition, type RecordedEvent } from '../../src/eventstore/port';
import { uuidV7Ids } from '../../src/platform/clock';
import { createLogger } from '../../src/platform/logger';
import { chatsProjector } from '../../src/projections/chats';
import { presetsProjector } from '../../src/projections/presets';
import { createProjectionEngine } from '../../src/projections/runner';
import type { Projector } from '../../src/projections/types';
import { openTestStore, testDatabases, type TestDatabase } from '../support/databases';

const logger = createLogger({ LOG_LEVEL: 'silent' });
const alice: Actor = { userId: 'alice', admin: false };
const admin: Actor = { userId: 'root', admin: true };

const fields = (over: Partial<PresetFields> = {}): PresetFields => ({
  name: 'Translator',
  description: '',
  model: 'gpt-4o-mini',
  parameters: { temperature: 0.2 },
  messages: [
    { role: 'system', content: 'Translate to French.' },
    { role: 'user', content: 'Hello' },
    { role: 'assistant', content: 'Bonjour' },
  ],
  public: false,
  ...over,
});

describe.each(testDatabases())('presets and chats on %s', (kind) => {
  let t: TestDatabase & { store: EventStore };
  let commands: CommandHandler;
  let clock = Date.parse('2026-04-01T08:00:00.000Z');
  const metadata = (actorId: string) => ({ now: new Date((clock += 1000)), actorId });

  beforeAll(async () => {
    t = await openTestStore(kind);
    commands = new CommandHandler(t.store, { ids: uuidV7Ids });
  });
  afterAll(() => t?.close());

  async function createPreset(presetId: string, actor: Actor, over: Partial<PresetFields> = {}) {
    await commands.handle(presetDecider, presetStream(presetId), {
      type: 'CreatePreset',
      data: { presetId, actor, fields: fields(over) },
      metadata: metadata(actor.userId),
    });
  }

  /** A history touching every event type: presets created, changed, deleted; chats started, renamed, deleted, talked in. */
  async function writeHistory(): Promise<void> {
    await createPreset('p-pub', admin, { public: true, name: 'Public' });
    await createPreset('p-own', alice);
    await createPreset('p-gone', alice, { name: 'Gone' });
    await commands.handle(presetDecider, presetStream('p-own'), {
      type: 'UpdatePreset',
      data: { presetId: 'p-own', actor: alice, changes: { name: 'Renamed', parameters: { top_p: 0.5 } } },
      metadata: metadata('alice'),
    });
    await commands.handle(presetDecider, presetStream('p-gone'), {
      type: 'DeletePreset',
      data: { presetId: 'p-gone', actor: alice },
      metadata: metadata('alice'),
    });
    for (const [chatId, presetId] of [
      ['c1', 'p-own'],
      ['c2', 'p-pub'],
      ['c3', 'p-own'],
    ] as const) {
      await startChat(
        commands,
        uuidV7Ids,
        { chatId, userId: 'alice', presetId, title: null },
        metadata('alice'),
      );
    }
    for (let i = 0; i < 3; i++) {
      await commands.handle(chatDecider, chatStream('c1'), {
        type: 'SendMessage',
        data: {
          chatId: 'c1',
          userId: 'alice',
          messageId: `c1-u${i}`,
          content: [
            { type: 'text', text: `question ${i}` },
            { type: 'image', url: `https://example.com/${i}.png` },
          ],
          visible: i !== 1,
        },
        metadata: metadata('alice'),
      });
      await appendAssistantMessage(
        commands,
        {
          chatId: 'c1',
          userId: 'alice',
          messageId: `c1-a${i}`,
          taskId: `task-${i}`,
          text: `answer ${i}`,
          status: i === 2 ? 'partial' : 'complete',
        },
        metadata('alice'),
      );
    }
    await commands.handle(chatDecider, chatStream('c2'), {
      type: 'RenameChat',
      data: { chatId: 'c2', userId: 'alice', title: 'About Paris' },
      metadata: metadata('alice'),
    });
    await commands.handle(chatDecider, chatStream('c3'), {
      type: 'SendMessage',
      data: {
        chatId: 'c3',
        userId: 'alice',
        messageId: 'c3-u0',
        content: [{ type: 'text', text: 'bye' }],
        visible: true,
      },
      metadata: metadata('alice'),
    });
    await commands.handle(chatDecider, chatStream('c3'), {
      type: 'DeleteChat',
      data: { chatId: 'c3', userId: 'alice' },
      metadata: metadata('alice'),
    });
  }

  async function allEvents(projector: Projector): Promise<RecordedEvent[]> {
    const out: RecordedEvent[] = [];
    let from: LogPosition = START;
    await t.store.head(); // every append so far is readable once head answers
    for (;;) {
      const batch = await t.store.readAll({
        from,
        maxCount: 500,
        filter: { eventTypes: projector.eventTypes },
      });
      out.push(...batch.events);
      from = batch.next;
      if (batch.caughtUp) return out;
    }
  }

  async function rows() {
    const db = t.db.db;
    return {
      presets: await db.selectFrom('presets').selectAll().orderBy('id').execute(),
      chats: await db.selectFrom('chats').selectAll().orderBy('id').execute(),
      messages: await db.selectFrom('chat_messages').selectAll().orderBy('chat_id').orderBy('seq').execute(),
    };
  }

  async function replay(projector: Projector, events: RecordedEvent[], batchSize: number) {
    for (let i = 0; i < events.length; i += batchSize) {
      const batch = events.slice(i, i + batchSize);
      await t.db.db.transaction().execute((trx) => projector.apply(trx, batch));
    }
  }

  async function clear() {
    await t.db.db.deleteFrom('chat_messages').execute();
    await t.db.db.deleteFrom('chats').execute();
    await t.db.db.deleteFrom('presets').execute();
  }

  it('gives the same rows when the log is replayed twice, in any batching', async () => {
    await writeHistory();
    const projectors = [presetsProjector, chatsProjector];
    const logs = await Promise.all(projectors.map(allEvents));
    for (const [i, p] of projectors.entries()) await replay(p, logs[i]!, 1000);
    const once = await rows();

    // The read model says what the history did.
    expect(once.presets.map((r) => [r.id, r.name, r.public, r.deleted])).toEqual([
      ['p-gone', 'Gone', false, true],
      ['p-own', 'Renamed', false, false],
      ['p-pub', 'Public', true, false],
    ]);
    expect(once.presets.find((r) => r.id === 'p-own')!.parameters).toEqual({ top_p: 0.5 });
    expect(once.chats.map((r) => [r.id, r.title, r.deleted])).toEqual([
      ['c1', 'Renamed', false],
      ['c2', 'About Paris', false],
      ['c3', 'Renamed', true],
    ]);
    const c1 = once.messages.filter((m) => m.chat_id === 'c1');
    expect(c1.map((m) => [m.seq, m.role, m.visible, m.status, m.task_id])).toEqual([
      [0, 'system', false, null, null],
      [1, 'user', true, null, null],
      [2, 'assistant', true, 'complete', null],
      [3, 'user', true, null, null],
      [4, 'assistant', true, 'complete', 'task-0'],
      [5, 'user', false, null, null],
      [6, 'assistant', true, 'complete', 'task-1'],
      [7, 'user', true, null, null],
      [8, 'assistant', true, 'partial', 'task-2'],
    ]);
    expect(c1[3]!.content).toEqual([
      { type: 'text', text: 'question 0' },
      { type: 'image', url: 'https://example.com/0.png' },
    ]);
    expect(once.messages.filter((m) => m.chat_id === 'c3')).toEqual([]);

    // Again over the same rows: whole, then in small overlapping batches.
    for (const [i, p] of projectors.entries()) await replay(p, logs[i]!, 1000);
    expect(await rows()).toEqual(once);
    for (const [i, p] of projectors.entries()) {
      const log = logs[i]!;
      for (let start = 0; start < log.length; start += 2) {
        await replay(p, log.slice(Math.max(0, start - 3), start + 2), 5);
      }
    }
    expect(await rows()).toEqual(once);

    // From empty tables in batches of one: the same rows as all at once.
    await clear();
    for (const [i, p] of projectors.entries()) await replay(p, logs[i]!, 1);
    expect(await rows()).toEqual(once);
  });

  it('rebuilds through the projection engine to the same rows', async () => {
    const before = await rows();
    await clear();
    const engine = createProjectionEngine({
      db: t.db,
      store: t.store,
      logger,
      projectors: [presetsProjector, chatsProjector],
      rebuildBatchSize: 4,
    });
    try {
      await engine.rebuild('presets');
      await engine.rebuild('chats');
      expect(await rows()).toEqual(before);
      await engine.rebuild('chats');
      expect(await rows()).toEqual(before);
    } finally {
      await engine.stop();
    }
  });

  it('loads a chat’s whole history for generation, hidden messages included, for its owner only', async () => {
    const chat = await loadChatForGeneration(commands, 'c1', 'alice');
    expect(chat).toMatchObject({ chatId: 'c1', model: 'gpt-4o-mini', parameters: { top_p: 0.5 } });
    expect(chat.messages.map((m) => [m.role, m.visible])).toEqual([
      ['system', false],
      ['user', true],
      ['assistant', true],
      ['user', true],
      ['assistant', true],
      ['user', false],
      ['assistant', true],
      ['user', true],
      ['assistant', true],
    ]);
    expect(chat.messages[0]!.content).toEqual([{ type: 'text', text: 'Translate to French.' }]);
    // A fresh handler (no cache) reads the same history from the stream.
    const fresh = new CommandHandler(t.store, { ids: uuidV7Ids });
    expect((await loadChatForGeneration(fresh, 'c1', 'alice')).messages).toEqual(chat.messages);
    await expect(loadChatForGeneration(commands, 'c1', 'bob')).rejects.toBeInstanceOf(ChatNotFound);
    await expect(loadChatForGeneration(commands, 'c3', 'alice')).rejects.toBeInstanceOf(ChatNotFound);
    await expect(loadChatForGeneration(commands, 'nope', 'alice')).rejects.toBeInstanceOf(ChatNotFound);
  });

  it('appends a task’s reply once, even from two handlers racing', async () => {
    const other = new CommandHandler(t.store, { ids: uuidV7Ids });
    const reply = {
      chatId: 'c2',
      userId: 'alice',
      messageId: 'c2-a0',
      taskId: 'task-race',
      text: 'once',
      status: 'complete' as const,
    };
    const results = await Promise.all([
      appendAssistantMessage(commands, reply, metadata('alice')),
      appendAssistantMessage(other, { ...reply, messageId: 'c2-a0-other' }, metadata('alice')),
    ]);
    expect(results.filter((r) => r.appended)).toHaveLength(1);
    const history = await t.store.readStream(chatStream('c2'));
    expect(history.filter((e) => e.type === 'MessageSent')).toHaveLength(1);
    expect((await appendAssistantMessage(commands, reply, metadata('alice'))).appended).toBe(false);
    // A reply for a chat deleted meanwhile is dropped, not an error.
    expect(
      (await appendAssistantMessage(commands, { ...reply, chatId: 'c3', taskId: 'late' }, metadata('alice')))
        .appended,
    ).toBe(false);
  });
});
