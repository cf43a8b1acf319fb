import { adminLedger } from './adminLedger';
import { chats } from './chats';
import { credits } from './credits';
import { models } from './models';
import { presetsResource } from './presets';
import { providerSessions } from './providerSessions';
import { sessions } from './sessions';
import { tasks } from './tasks';
import { users } from './users';
import type { Resource } from './types';

/** Presets whose model must be one of the app's catalog (400 otherwise). */
const presets: Resource = (router, ctx) =>
  presetsResource({ modelExists: (id) => ctx.deps.models.get(id) !== undefined })(router, ctx);

/** Every resource the API serves under /api/v1. Features add theirs here. */
export const allResources: readonly Resource[] = [
  users,
  sessions,
  providerSessions,
  credits,
  presets,
  chats,
  adminLedger,
  models,
  tasks,
];
