import { sql } from 'kysely';
import type { RecordedEvent } from '../../src/eventstore/port';
import { uuidV7Ids } from '../../src/platform/clock';
import { chatsProjector } from '../../src/projections/chats';
import { ledgerProjector } from '../../src/projections/ledger';
import { tasksProjector } from '../../src/projections/tasks';
import type { Projector } from '../../src/projections/types';
import { openTestDatabase, testDatabases, type TestDatabase } from '../support/databases';

/**
 * The ledger, tasks and chats projectors write a batch in a few statements: what they write must be
 * what applying its events one by one writes, and applying it again must change nothing.
 */
const T0 = Date.parse('2030-01-01T00:00:00.000Z');
const at = (seconds: number) => new Date(T0 + seconds * 1000).toISOString();

let position = 100n;
/** An event as the store delivers it, at the next global position. */
function recorded(
  stream: string,
  type: string,
  data: Record<string, unknown>,
): RecordedEvent<string, Record<string, unknown>> {
  position += 1n;
  return {
    id: uuidV7Ids.next(),
    type,
    data,
    metadata: { occurredAt: at(0), schemaVersion: 1 },
    streamName: stream,
    revision: 0n,
    position,
    logPosition: { txid: position, position },
    recordedAt: new Date(T0 + Number(position)),
  };
}

describe.each(testDatabases())('projector batches on %s', (kind) => {
  let t: TestDatabase;
  beforeEach(async () => {
    t = await openTestDatabase(kind);
  });
  afterEach(() => t.close());

  const apply = (projector: Projector, events: RecordedEvent[]) =>
    t.db.db.transaction().execute((trx) => projector.apply(trx, events));

  /** The projector's tables emptied, then the events applied one batch each. */
  async function oneByOne(projector: Projector, events: RecordedEvent[]) {
    for (const table of projector.tables) await sql`delete from ${sql.table(table)}`.execute(t.db.db);
    for (const e of events) await apply(projector, [e]);
  }

  /**
   * `batch` applied again, whole and then as each of `parts`, leaves what `read` gives as `expected`;
   * so does applying it one event per batch from empty tables.
   */
  async function expectReplaysTo(
    projector: Projector,
    batch: RecordedEvent[],
    parts: RecordedEvent[][],
    read: () => Promise<unknown>,
    expected: unknown,
  ) {
    await apply(projector, batch);
    for (const part of parts) await apply(projector, part);
    expect(await read()).toEqual(expected);
    await oneByOne(projector, batch);
    expect(await read()).toEqual(expected);
  }

  describe('ledger', () => {
    const ledger = (userId: string, type: string, data: Record<string, unknown>) =>
      recorded(`ledger-${userId}`, type, { userId, ...data });
    const grant = (userId: string, amount: number) =>
      ledger(userId, 'CreditsGranted', {
        grantId: `g-${position}`,
        amount,
        reason: 'test',
        grantedAt: at(1),
      });
    const rows = async () => ({
      balances: await t.db.db.selectFrom('balances').selectAll().orderBy('user_id').execute(),
      entries: await t.db.db.selectFrom('ledger_entries').selectAll().orderBy('position').execute(),
    });

    it('gives each entry the balance right after it, for two users interleaved in one batch', async () => {
      const batch = [
        grant('alice', 100),
        grant('bob', 50),
        ledger('alice', 'CreditsReserved', {
          holdId: 'h1',
          amount: 30,
          reason: 'task',
          expiresAt: at(900),
          reservedAt: at(2),
        }),
        ledger('alice', 'CreditsCaptured', { holdId: 'h1', amount: 30, capturedAt: at(3) }),
        ledger('bob', 'CreditsCharged', {
          chargeId: 'c1',
          amount: 20,
          reason: 'excess',
          holdId: null,
          chargedAt: at(3),
        }),
        ledger('alice', 'CreditsRefunded', {
          refundId: 'r1',
          chargeId: 'h1',
          amount: 10,
          reason: 'sorry',
          refundedAt: at(4),
        }),
        ledger('bob', 'CreditsReserved', {
          holdId: 'h2',
          amount: 5,
          reason: 'task',
          expiresAt: at(900),
          reservedAt: at(5),
        }),
        ledger('alice', 'CreditsAdjusted', {
          adjustmentId: 'a1',
          amount: -5,
          reason: 'fix',
          corrects: null,
          adjustedAt: at(6),
        }),
      ];
      await apply(ledgerProjector, batch);
      const once = await rows();
      expect(
        once.entries.map((e) => [e.user_id, e.type, e.amount, e.balance_after, e.reason, e.ref]),
      ).toEqual([
        ['alice', 'granted', '100', '100', 'test', batch[0]!.data.grantId],
        ['bob', 'granted', '50', '50', 'test', batch[1]!.data.grantId],
        ['alice', 'captured', '-30', '70', 'usage', 'h1'],
        ['bob', 'charged', '-20', '30', 'excess', 'c1'],
        ['alice', 'refunded', '10', '80', 'sorry', 'h1'],
        ['alice', 'adjusted', '-5', '75', 'fix', null],
      ]);
      expect(once.entries.map((e) => e.id)).toEqual([0, 1, 3, 4, 5, 7].map((i) => batch[i]!.id));
      expect(once.balances).toEqual([
        { user_id: 'alice', posted: '75', held: '0', last_position: String(batch[7]!.position) },
        { user_id: 'bob', posted: '30', held: '5', last_position: String(batch[6]!.position) },
      ]);

      // The same batch again, whole or in part: nothing changes; one by one: the same rows.
      await expectReplaysTo(ledgerProjector, batch, [batch.slice(2)], rows, once);
    });

    it('goes on from the balance rows earlier batches left, for users old and new', async () => {
      const first = [grant('alice', 100), grant('alice', 20)];
      const second = [grant('alice', 5), grant('carol', 7), grant('alice', 1), grant('carol', 3)];
      await apply(ledgerProjector, first);
      await apply(ledgerProjector, second);
      const { balances, entries } = await rows();
      expect(entries.map((e) => [e.user_id, e.balance_after])).toEqual([
        ['alice', '100'],
        ['alice', '120'],
        ['alice', '125'],
        ['carol', '7'],
        ['alice', '126'],
        ['carol', '10'],
      ]);
      expect(balances.map((b) => [b.user_id, b.posted])).toEqual([
        ['alice', '126'],
        ['carol', '10'],
      ]);
      // An earlier batch again after a later one: nothing changes.
      await apply(ledgerProjector, first);
      expect(await rows()).toEqual({ balances, entries });
      // A batch of events seen and new: only the new ones count.
      const more = grant('alice', 2);
      await apply(ledgerProjector, [...second, more]);
      const after = await rows();
      expect(after.entries.map((e) => [e.user_id, e.balance_after])).toEqual([
        ...entries.map((e) => [e.user_id, e.balance_after]),
        ['alice', '128'],
      ]);
      expect(after.balances.map((b) => [b.user_id, b.posted, b.last_position])).toEqual([
        ['alice', '128', String(more.position)],
        ['carol', '10', String(second[3]!.position)],
      ]);
    });
  });

  describe('tasks', () => {
    const task = (taskId: string, type: string, data: Record<string, unknown>) =>
      recorded(`task-${taskId}`, type, { taskId, ...data });
    const created = (taskId: string) =>
      task(taskId, 'TaskCreated', {
        userId: 'alice',
        chatId: 'c1',
        model: 'gpt-4o-mini',
        promptTokens: 12,
        maxTokens: 100,
        hold: 500,
        deadlineAt: at(120),
        createdAt: at(1),
      });
    const outcome = (taskId: string, type: string, data: Record<string, unknown>) =>
      task(taskId, type, {
        userId: 'alice',
        chatId: 'c1',
        messageId: `m-${taskId}`,
        content: 'partial answer',
        usage: { promptTokens: 13, completionTokens: 40 },
        cost: 53,
        ...data,
      });
    const rows = () => t.db.db.selectFrom('tasks').selectAll().orderBy('id').execute();

    it('ends a task’s whole life in one batch where one event per batch ends it, and replays to no change', async () => {
      // Four tasks' lives interleaved, as a busy log holds them.
      const batch = [
        created('t1'),
        created('t2'),
        created('t3'),
        task('t1', 'TaskStreamClaimed', { claimedAt: at(2) }),
        created('t4'),
        task('t3', 'TaskStreamClaimed', { claimedAt: at(2) }),
        task('t1', 'TaskCancelRequested', { requestedAt: at(3) }),
        outcome('t2', 'TaskCompleted', { usageSource: 'provider', completedAt: at(5) }),
        task('t4', 'TaskCancelRequested', { requestedAt: at(3) }),
        outcome('t1', 'TaskCancelled', { cancelledAt: at(4) }),
        outcome('t3', 'TaskFailed', { messageId: null, reason: 'provider down', failedAt: at(6) }),
      ];
      const lastOf = (taskId: string) =>
        String(batch.findLast((e) => e.streamName === `task-${taskId}`)!.position);
      // Split: the second batch holds only later events of tasks the first one created.
      await apply(tasksProjector, batch.slice(0, 5));
      await apply(tasksProjector, batch.slice(5));
      const split = await rows();
      expect(
        split.map((r) => [r.id, r.status, r.claimed, r.prompt_tokens, r.completion_tokens, r.cost]),
      ).toEqual([
        ['t1', 'cancelled', true, 13, 40, '53'],
        ['t2', 'succeeded', false, 13, 40, '53'],
        ['t3', 'failed', true, 13, 40, '53'],
        ['t4', 'running', false, 12, 0, null],
      ]);
      expect(split.map((r) => [r.message_id, r.error, r.finished_at?.toISOString() ?? null])).toEqual([
        ['m-t1', null, at(4)],
        ['m-t2', null, at(5)],
        [null, 'provider down', at(6)],
        [null, null, null],
      ]);
      expect(split.map((r) => r.last_position)).toEqual(['t1', 't2', 't3', 't4'].map(lastOf));

      await t.db.db.deleteFrom('tasks').execute();
      await apply(tasksProjector, batch);
      expect(await rows()).toEqual(split);
      await expectReplaysTo(tasksProjector, batch, [batch.slice(3), batch.slice(0, 5)], rows, split);
    });

    it('keeps the first TaskCreated’s row when another one comes for the same task', async () => {
      const first = created('t5');
      await apply(tasksProjector, [first]);
      const again = task('t5', 'TaskCreated', { ...first.data, model: 'other', hold: 1 });
      const claimed = task('t5', 'TaskStreamClaimed', { claimedAt: at(2) });
      await apply(tasksProjector, [again, claimed]);
      const [row] = await rows();
      expect(row).toMatchObject({ model: 'gpt-4o-mini', hold: '500', claimed: true });
      expect(row!.last_position).toBe(String(claimed.position));
    });
    it('applies only what is newer than the row when a batch overlaps what the row has seen', async () => {
      const start = created('t6');
      const claim = task('t6', 'TaskStreamClaimed', { claimedAt: at(2) });
      const done = outcome('t6', 'TaskCompleted', { usageSource: 'provider', completedAt: at(5) });
      await apply(tasksProjector, [start, claim]);
      await apply(tasksProjector, [start, claim, done]);
      const overlapped = await rows();
      expect(overlapped.map((r) => [r.status, r.claimed, r.last_position])).toEqual([
        ['succeeded', true, String(done.position)],
      ]);
      await oneByOne(tasksProjector, [start, claim, done]);
      expect(await rows()).toEqual(overlapped);
    });

    it('keeps the first of two TaskCreated in one batch, and takes what follows it', async () => {
      const first = created('t7');
      const batch = [
        first,
        task('t7', 'TaskStreamClaimed', { claimedAt: at(2) }),
        task('t7', 'TaskCreated', { ...first.data, hold: 1 }),
      ];
      await apply(tasksProjector, batch);
      const together = await rows();
      expect(together.map((r) => [r.hold, r.claimed, r.last_position])).toEqual([
        ['500', true, String(batch[1]!.position)],
      ]);
      await oneByOne(tasksProjector, batch);
      expect(await rows()).toEqual(together);
    });

    it('stores timestamps at the edges of what an event may carry (year 0, past 9999)', async () => {
      const edge = task('t8', 'TaskCreated', {
        ...created('t8').data,
        createdAt: '0000-01-01T00:00:00Z',
        deadlineAt: '9999-12-31T23:59:59-05:00',
      });
      await apply(tasksProjector, [edge]);
      const [row] = await rows();
      expect(row!.created_at.getTime()).toBe(Date.parse('0000-01-01T00:00:00Z'));
      expect(row!.deadline_at.getTime()).toBe(Date.parse('9999-12-31T23:59:59-05:00'));
    });
  });

  describe('chats', () => {
    const chat = (chatId: string, type: string, data: Record<string, unknown>) =>
      recorded(`chat-${chatId}`, type, { chatId, ...data });
    const message = (messageId: string, seq: number, role = 'user') => ({
      messageId,
      seq,
      role,
      content: [{ type: 'text', text: messageId }],
      visible: role !== 'system',
      taskId: role === 'assistant' ? `task-${messageId}` : null,
      status: role === 'assistant' ? 'complete' : null,
      sentAt: at(seq + 10),
    });
    const started = (chatId: string) =>
      chat(chatId, 'ChatStarted', {
        ownerId: 'alice',
        presetId: 'p1',
        title: 'New chat',
        model: 'gpt-4o-mini',
        parameters: { temperature: 0.2 },
        messages: [message(`${chatId}-0`, 0, 'system'), message(`${chatId}-1`, 1)],
        startedAt: at(1),
      });
    const sent = (chatId: string, seq: number, role = 'user') =>
      chat(chatId, 'MessageSent', message(`${chatId}-${seq}`, seq, role));
    const renamed = (chatId: string, title: string) =>
      chat(chatId, 'ChatRenamed', { title, renamedAt: at(30) });
    const deleted = (chatId: string) =>
      chat(chatId, 'ChatDeleted', { deletedBy: 'alice', deletedAt: at(40) });
    const rows = async () => ({
      chats: await t.db.db.selectFrom('chats').selectAll().orderBy('id').execute(),
      messages: await t.db.db
        .selectFrom('chat_messages')
        .selectAll()
        .orderBy('chat_id')
        .orderBy('seq')
        .execute(),
    });

    it('ends a chat started, talked in, renamed and deleted in one batch where one by one ends it', async () => {
      const gone = [
        started('c1'),
        sent('c1', 2),
        sent('c1', 3, 'assistant'),
        renamed('c1', 'Gone'),
        deleted('c1'),
      ];
      const kept = [started('c2'), sent('c2', 2), renamed('c2', 'Kept'), sent('c2', 3, 'assistant')];
      const batch = [
        gone[0]!,
        kept[0]!,
        gone[1]!,
        kept[1]!,
        gone[2]!,
        kept[2]!,
        gone[3]!,
        kept[3]!,
        gone[4]!,
      ];
      await apply(chatsProjector, batch);
      const once = await rows();
      expect(once.chats.map((c) => [c.id, c.title, c.deleted, c.last_position])).toEqual([
        ['c1', 'Gone', true, String(gone[4]!.position)],
        ['c2', 'Kept', false, String(kept[3]!.position)],
      ]);
      expect(once.chats.map((c) => [c.updated_at.toISOString(), c.last_message_at?.toISOString()])).toEqual([
        [at(40), at(13)],
        [at(13), at(13)],
      ]);
      expect(once.chats[1]!.parameters).toEqual({ temperature: 0.2 });
      expect(once.messages.map((m) => [m.chat_id, m.seq, m.role, m.visible, m.status, m.task_id])).toEqual([
        ['c2', 0, 'system', false, null, null],
        ['c2', 1, 'user', true, null, null],
        ['c2', 2, 'user', true, null, null],
        ['c2', 3, 'assistant', true, 'complete', 'task-c2-3'],
      ]);
      expect(once.messages[2]!.content).toEqual([{ type: 'text', text: 'c2-2' }]);

      // Again, whole or from its middle: the deleted chat's messages do not come back.
      await expectReplaysTo(chatsProjector, batch, [batch.slice(4)], rows, once);
    });

    it('removes the messages of earlier batches on delete, and a replay after it brings none back', async () => {
      const first = [started('c3'), sent('c3', 2), started('c4')];
      const second = [sent('c3', 3, 'assistant'), renamed('c4', 'Four'), deleted('c3'), sent('c4', 2)];
      await apply(chatsProjector, first);
      expect((await rows()).messages.map((m) => m.id)).toEqual(['c3-0', 'c3-1', 'c3-2', 'c4-0', 'c4-1']);
      await apply(chatsProjector, second);
      const after = await rows();
      expect(after.chats.map((c) => [c.id, c.title, c.deleted])).toEqual([
        ['c3', 'New chat', true],
        ['c4', 'Four', false],
      ]);
      expect(after.messages.map((m) => m.id)).toEqual(['c4-0', 'c4-1', 'c4-2']);

      await apply(chatsProjector, first);
      await apply(chatsProjector, [...first, ...second]);
      expect(await rows()).toEqual(after);
      await oneByOne(chatsProjector, [...first, ...second]);
      expect(await rows()).toEqual(after);
    });

    it('keeps what a message after a delete in the same batch adds, as one by one does', async () => {
      const start = started('c5');
      const batch = [sent('c5', 2), deleted('c5'), sent('c5', 3)];
      await apply(chatsProjector, [start]);
      await apply(chatsProjector, batch);
      const after = await rows();
      expect(after.chats.map((c) => [c.deleted, c.last_message_at?.toISOString()])).toEqual([[true, at(13)]]);
      expect(after.messages.map((m) => m.id)).toEqual(['c5-3']);
      await oneByOne(chatsProjector, [start, ...batch]);
      expect(await rows()).toEqual(after);
    });

    it('adds nothing for events before a ChatStarted in its batch, and keeps the first of two', async () => {
      const other = { ...started('c6').data, title: 'Second', messages: [message('c6-other', 0, 'system')] };
      const batch = [sent('c6', 2), started('c6'), chat('c6', 'ChatStarted', other), sent('c6', 3)];
      await apply(chatsProjector, batch);
      const together = await rows();
      expect(together.chats.map((c) => c.title)).toEqual(['New chat']);
      expect(together.messages.map((m) => m.id)).toEqual(['c6-0', 'c6-1', 'c6-3']);
      await oneByOne(chatsProjector, batch);
      expect(await rows()).toEqual(together);
    });

    it('applies only what is newer than the row when a batch overlaps what the row has seen', async () => {
      const all = [started('c7'), sent('c7', 2), renamed('c7', 'Later'), sent('c7', 3)];
      await apply(chatsProjector, all.slice(0, 2));
      await apply(chatsProjector, all);
      const overlapped = await rows();
      expect(overlapped.chats.map((c) => [c.title, c.last_position])).toEqual([
        ['Later', String(all[3]!.position)],
      ]);
      expect(overlapped.messages.map((m) => m.id)).toEqual(['c7-0', 'c7-1', 'c7-2', 'c7-3']);
      await oneByOne(chatsProjector, all);
      expect(await rows()).toEqual(overlapped);
    });

    it('stores timestamps at the edges of what an event may carry (year 0, past 9999)', async () => {
      const start = chat('c8', 'ChatStarted', { ...started('c8').data, startedAt: '0000-06-01T00:00:00Z' });
      const late = chat('c8', 'MessageSent', { ...message('c8-2', 2), sentAt: '9999-12-31T23:59:59-05:00' });
      await apply(chatsProjector, [start, late]);
      const { chats, messages } = await rows();
      expect(chats[0]!.created_at.getTime()).toBe(Date.parse('0000-06-01T00:00:00Z'));
      expect(chats[0]!.last_message_at!.getTime()).toBe(Date.parse('9999-12-31T23:59:59-05:00'));
      expect(messages.at(-1)!.created_at.getTime()).toBe(Date.parse('9999-12-31T23:59:59-05:00'));
    });
  });
});
