import { credits } from './credits';
import type { Resource } from './types';

/** Every resource the API serves under /api/v1. Features add theirs here. */
export const allResources: readonly Resource[] = [credits];
