import type { Command, DecidedEvent, Decider } from '../../src/commands/handler';

/**
 * given(events).when(command).then(events) for deciders: no I/O, the decider alone.
 * `thenThrows` takes the error class the decider must throw.
 */
export function deciderSpec<S, C extends Command, E extends DecidedEvent>(decider: Decider<S, C, E>) {
  return {
    given(events: E[]) {
      const state = events.reduce((s, e) => decider.evolve(s, e), decider.initialState());
      return {
        when(command: C) {
          const run = () => decider.decide(command, state);
          return {
            then(expected: E[]) {
              expect(run()).toEqual(expected);
            },
            thenThrows(errorClass: new (...args: never[]) => Error, message?: string | RegExp) {
              expect(run).toThrow(errorClass);
              if (message) expect(run).toThrow(message);
            },
          };
        },
      };
    },
  };
}
