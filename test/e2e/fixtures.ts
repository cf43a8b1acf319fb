import { DomainError } from '../../src/platform/errors';

/** A DomainError with extensions, as features define them. */
export class InsufficientCreditsForTest extends DomainError {
  readonly status = 402;
  readonly type = '/problems/insufficient-credits';
  readonly title = 'Not enough credits';
  constructor(available: number, required: number) {
    super(`available ${available}, needed ${required}`);
    this.extensions.available = available;
    this.extensions.required = required;
  }
}
