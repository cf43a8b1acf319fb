import { z } from 'zod';
import { chatDecider, MAX_TITLE_LENGTH, type ChatState } from '../commands/chats/decider';
import { startChat } from '../commands/chats/start';
import { UserContentSchema, chatStream } from '../events/chats';
import { Conflict, NotFound } from '../platform/errors';
import { chatSlotStream, slotsDecider } from '../commands/tasks/slots';
import { findChat, listChats, listMessages, type ChatView } from '../queries/chats';
import { PageQuery } from '../queries/paging';
import { auth } from './middleware/auth';
import { consistentRead, setEventPosition } from './middleware/consistency';
import { API_BASE, bearerSecurity, problemResponses } from './openapi';
import type { AuthedState, Resource } from './types';

const Title = z.string().trim().min(1).max(MAX_TITLE_LENGTH);
const StartChatBody = z
  .strictObject({ preset_id: z.string().min(1).max(100), title: Title.optional() })
  .meta({ id: 'StartChat' });
const RenameChatBody = z.strictObject({ title: Title }).meta({ id: 'RenameChat' });
const SendMessageBody = z
  .strictObject({ content: UserContentSchema, visible: z.boolean().default(true) })
  .meta({
    id: 'SendMessage',
    description: 'Hidden messages (visible: false) reach the model but are never listed.',
  });
const ChatId = z.object({ id: z.string().min(1).max(100) });

/** A chat as the write side has it: commands answer without waiting for the read model. */
function chatView(s: ChatState): ChatView {
  const chat = s.chat;
  if (!chat) throw new Error('a chat command left no chat state');
  const last = s.messages[s.messages.length - 1];
  return {
    id: chat.chatId,
    title: chat.title,
    preset_id: chat.presetId,
    model: chat.model,
    parameters: chat.parameters,
    created_at: chat.startedAt,
    updated_at: chat.updatedAt,
    last_message_at: last?.sentAt ?? null,
  };
}

/** Chats and their messages (API.md). Only its owner sees a chat; anyone else gets 404. */
export const chats: Resource = (router, { deps, openapi }) => {
  const { commands, clock, ids } = deps;
  const db = deps.db.db;
  const metadataOf = (ctx: { state: AuthedState }) => ({
    now: clock.now(),
    actorId: ctx.state.user.id,
    requestId: ctx.state.requestId,
  });

  openapi.registerPath({
    method: 'post',
    path: '/chats',
    summary: 'Start a chat from a preset; its messages become the chat’s first',
    tags: ['chats'],
    security: bearerSecurity,
    request: { body: { content: { 'application/json': { schema: StartChatBody } } } },
    responses: { 201: { description: 'The chat' }, ...problemResponses(400, 401, 404) },
  });
  router.post('/chats', auth(), async (ctx) => {
    const body = StartChatBody.parse(ctx.request.body);
    const chatId = ids.next();
    const { state, position } = await startChat(
      commands,
      ids,
      { chatId, userId: ctx.state.user.id, presetId: body.preset_id, title: body.title ?? null },
      metadataOf(ctx),
    );
    setEventPosition(ctx, position);
    ctx.status = 201;
    ctx.set('Location', `${API_BASE}/chats/${chatId}`);
    ctx.body = chatView(state);
  });

  openapi.registerPath({
    method: 'get',
    path: '/chats',
    summary: 'My chats, newest first',
    tags: ['chats'],
    security: bearerSecurity,
    request: { query: PageQuery },
    responses: { 200: { description: '{items, next_cursor}' }, ...problemResponses(400, 401, 504) },
  });
  router.get('/chats', auth(), consistentRead<AuthedState>(['chats']), async (ctx) => {
    const { limit, cursor } = PageQuery.parse(ctx.query);
    ctx.body = await listChats(db, { userId: ctx.state.user.id, limit, cursor });
  });

  openapi.registerPath({
    method: 'get',
    path: '/chats/{id}',
    summary: 'One of my chats',
    tags: ['chats'],
    security: bearerSecurity,
    request: { params: ChatId },
    responses: { 200: { description: 'The chat' }, ...problemResponses(401, 404, 504) },
  });
  router.get('/chats/:id', auth(), consistentRead<AuthedState>(['chats']), async (ctx) => {
    const { id } = ChatId.parse(ctx.params);
    const found = await findChat(db, id, ctx.state.user.id);
    if (!found) throw new NotFound(`No chat ${id}.`);
    ctx.body = found;
  });

  openapi.registerPath({
    method: 'patch',
    path: '/chats/{id}',
    summary: 'Rename a chat',
    tags: ['chats'],
    security: bearerSecurity,
    request: { params: ChatId, body: { content: { 'application/json': { schema: RenameChatBody } } } },
    responses: { 200: { description: 'The chat' }, ...problemResponses(400, 401, 404) },
  });
  router.patch('/chats/:id', auth(), async (ctx) => {
    const { id } = ChatId.parse(ctx.params);
    const { title } = RenameChatBody.parse(ctx.request.body);
    const r = await commands.handle(chatDecider, chatStream(id), {
      type: 'RenameChat',
      data: { chatId: id, userId: ctx.state.user.id, title },
      metadata: metadataOf(ctx),
    });
    setEventPosition(ctx, r.position);
    ctx.body = chatView(r.state);
  });

  openapi.registerPath({
    method: 'delete',
    path: '/chats/{id}',
    summary: 'Delete a chat',
    tags: ['chats'],
    security: bearerSecurity,
    request: { params: ChatId },
    responses: { 204: { description: 'Deleted' }, ...problemResponses(401, 404) },
  });
  router.delete('/chats/:id', auth(), async (ctx) => {
    const { id } = ChatId.parse(ctx.params);
    const userId = ctx.state.user.id;
    const r = await commands.handle(chatDecider, chatStream(id), {
      type: 'DeleteChat',
      data: { chatId: id, userId },
      metadata: metadataOf(ctx),
    });
    // A reply still being generated has nowhere to go: it is cancelled, and charged only for what was
    // generated so far (its settlement, the one of any cancel, frees the chat's slot).
    if (deps.tasks) {
      const { state } = await commands.read(slotsDecider, chatSlotStream(id));
      const provenance = { actorId: userId, requestId: ctx.state.requestId };
      for (const taskId of state.taken.keys()) {
        await deps.tasks.cancel(taskId, userId, provenance).catch((err: unknown) => {
          // Ended meanwhile (409), or a slot whose task was never recorded (404): nothing to stop.
          if (!(err instanceof Conflict || err instanceof NotFound)) {
            ctx.log.warn({ err, taskId }, 'reply of a deleted chat not cancelled; it runs to its end');
          }
        });
      }
    }
    setEventPosition(ctx, r.position);
    ctx.status = 204;
  });

  openapi.registerPath({
    method: 'post',
    path: '/chats/{id}/messages',
    summary: 'Send a message (text, and images by http(s) URL)',
    tags: ['chats'],
    security: bearerSecurity,
    request: { params: ChatId, body: { content: { 'application/json': { schema: SendMessageBody } } } },
    responses: { 201: { description: 'The message' }, ...problemResponses(400, 401, 404) },
  });
  router.post('/chats/:id/messages', auth(), async (ctx) => {
    const { id } = ChatId.parse(ctx.params);
    const body = SendMessageBody.parse(ctx.request.body);
    const messageId = ids.next();
    const r = await commands.handle(chatDecider, chatStream(id), {
      type: 'SendMessage',
      data: {
        chatId: id,
        userId: ctx.state.user.id,
        messageId,
        content: body.content,
        visible: body.visible,
      },
      metadata: metadataOf(ctx),
    });
    const sent = r.state.messages.find((m) => m.messageId === messageId);
    if (!sent) throw new Error('a message was sent but the chat state has none');
    setEventPosition(ctx, r.position);
    ctx.status = 201;
    ctx.body = {
      id: sent.messageId,
      role: 'user',
      content: sent.content,
      visible: sent.visible,
      created_at: sent.sentAt,
    };
  });

  openapi.registerPath({
    method: 'get',
    path: '/chats/{id}/messages',
    summary: 'A chat’s visible messages, in order',
    tags: ['chats'],
    security: bearerSecurity,
    request: { params: ChatId, query: PageQuery },
    responses: { 200: { description: '{items, next_cursor}' }, ...problemResponses(400, 401, 404, 504) },
  });
  router.get('/chats/:id/messages', auth(), consistentRead<AuthedState>(['chats']), async (ctx) => {
    const { id } = ChatId.parse(ctx.params);
    const { limit, cursor } = PageQuery.parse(ctx.query);
    if (!(await findChat(db, id, ctx.state.user.id))) throw new NotFound(`No chat ${id}.`);
    ctx.body = await listMessages(db, { chatId: id, limit, cursor });
  });
};
