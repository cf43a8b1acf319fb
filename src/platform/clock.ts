import { randomFillSync } from 'node:crypto';
import { V7Generator } from 'uuidv7';

/** Time and ids, passed in so that deciders stay pure and tests can fix them. */
export interface Clock {
  now(): Date;
}
export interface IdGenerator {
  /** A UUIDv7: time-ordered, so ids index well. */
  next(): string;
}

export const systemClock: Clock = { now: () => new Date() };

/**
 * The generator's random bits, from the system's CSPRNG 4 KiB at a time: the library's own source
 * asks for 32 bytes per call, which made that call a visible share of a task's CPU (a task takes
 * a dozen ids).
 */
function bufferedRandom(): { nextUint32(): number } {
  const words = new Uint32Array(1024);
  let next = words.length;
  return {
    nextUint32() {
      if (next === words.length) {
        randomFillSync(words);
        next = 0;
      }
      return words[next++]!;
    },
  };
}

const v7 = new V7Generator(bufferedRandom());
export const uuidV7Ids: IdGenerator = { next: () => v7.generate().toString() };
