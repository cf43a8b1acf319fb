import type { Projector } from './types';

/** Every read model the service keeps. Features add their projectors here. */
export function allProjectors(): Projector[] {
  return [];
}
