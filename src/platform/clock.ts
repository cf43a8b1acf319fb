import { uuidv7 } from 'uuidv7';

/** Time and ids, passed in so that deciders stay pure and tests can fix them. */
export interface Clock {
  now(): Date;
}
export interface IdGenerator {
  /** A UUIDv7: time-ordered, so ids index well. */
  next(): string;
}

export const systemClock: Clock = { now: () => new Date() };
export const uuidV7Ids: IdGenerator = { next: () => uuidv7() };
