import { credits } from './credits';
import { sessions } from './sessions';
import { users } from './users';
import type { Resource } from './types';

/** Every resource the API serves under /api/v1. Features add theirs here. */
export const allResources: readonly Resource[] = [users, sessions, credits];
