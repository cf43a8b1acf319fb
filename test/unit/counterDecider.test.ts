import { counterDecider, type CounterCommand } from '../support/counter';
import { deciderSpec } from '../support/spec';
import { BadRequest } from '../../src/platform/errors';

const now = new Date('2026-01-02T03:04:05.000Z');
const meta = { now };
const spec = deciderSpec(counterDecider);
const increment = (by: number): CounterCommand => ({ type: 'Increment', data: { by }, metadata: meta });

describe('the fixture counter decider (given/when/then)', () => {
  it('records an increment with the time the command carries', () => {
    spec
      .given([])
      .when(increment(3))
      .then([{ type: 'CounterIncremented', data: { by: 3, incrementedAt: now.toISOString() } }]);
  });

  it('refuses a non-positive increment', () => {
    spec.given([]).when(increment(0)).thenThrows(BadRequest, 'positive');
  });

  it('resets only a counter that is not already zero', () => {
    const incremented = {
      type: 'CounterIncremented' as const,
      data: { by: 2, incrementedAt: now.toISOString() },
    };
    spec
      .given([incremented])
      .when({ type: 'Reset', data: {}, metadata: meta })
      .then([{ type: 'CounterReset', data: { resetAt: now.toISOString() } }]);
    spec.given([]).when({ type: 'Reset', data: {}, metadata: meta }).then([]);
  });
});
