import {
  InvalidPreset,
  PresetNotFound,
  UnknownModel,
  presetDecider,
  presetRules,
  type PresetCommand,
} from '../../src/commands/presets/decider';
import type { PresetEvent, PresetFields } from '../../src/events/presets';
import { Forbidden } from '../../src/platform/errors';
import { deciderSpec } from '../support/spec';

const now = new Date('2026-03-01T10:00:00.000Z');
const at = now.toISOString();
const spec = deciderSpec(presetDecider);
const alice = { userId: 'alice', admin: false };
const bob = { userId: 'bob', admin: false };
const admin = { userId: 'root', admin: true };

const fields = (over: Partial<PresetFields> = {}): PresetFields => ({
  name: 'Translator',
  description: 'English to French',
  model: 'gpt-4o-mini',
  parameters: { temperature: 0.3, max_tokens: 512 },
  messages: [{ role: 'system', content: 'Translate to French.' }],
  public: false,
  ...over,
});
const create = (actor = alice, over: Partial<PresetFields> = {}): PresetCommand => ({
  type: 'CreatePreset',
  data: { presetId: 'p1', actor, fields: fields(over) },
  metadata: { now },
});
const created = (ownerId = 'alice', over: Partial<PresetFields> = {}): PresetEvent => ({
  type: 'PresetCreated',
  data: { presetId: 'p1', ownerId, ...fields(over), createdAt: at },
});
const update = (actor: typeof alice, changes: Partial<PresetFields>): PresetCommand => ({
  type: 'UpdatePreset',
  data: { presetId: 'p1', actor, changes },
  metadata: { now },
});
const remove = (actor: typeof alice): PresetCommand => ({
  type: 'DeletePreset',
  data: { presetId: 'p1', actor },
  metadata: { now },
});
const deleted: PresetEvent = {
  type: 'PresetDeleted',
  data: { presetId: 'p1', deletedBy: 'alice', deletedAt: at },
};

describe('preset decider', () => {
  it('creates a private preset for its owner, and again is nothing (a retried request)', () => {
    spec.given([]).when(create()).then([created()]);
    spec.given([created()]).when(create()).then([]);
  });

  it('lets only admins create public presets (403 otherwise)', () => {
    spec
      .given([])
      .when(create(alice, { public: true }))
      .thenThrows(Forbidden, 'admins');
    spec
      .given([])
      .when(create(admin, { public: true }))
      .then([created('root', { public: true })]);
  });

  it('validates name, description, parameters and template messages (400)', () => {
    spec
      .given([])
      .when(create(alice, { name: '' }))
      .thenThrows(InvalidPreset, 'name');
    spec
      .given([])
      .when(create(alice, { name: 'x'.repeat(101) }))
      .thenThrows(InvalidPreset, 'name');
    spec
      .given([])
      .when(create(alice, { description: 'x'.repeat(1001) }))
      .thenThrows(InvalidPreset, 'description');
    spec
      .given([])
      .when(create(alice, { parameters: { temperature: 2.5 } }))
      .thenThrows(InvalidPreset, 'parameters.temperature');
    spec
      .given([])
      .when(create(alice, { parameters: { top_p: -0.1 } }))
      .thenThrows(InvalidPreset, 'parameters.top_p');
    spec
      .given([])
      .when(create(alice, { parameters: { max_tokens: 0 } }))
      .thenThrows(InvalidPreset, 'parameters.max_tokens');
    spec
      .given([])
      .when(create(alice, { parameters: { presence_penalty: -3 } }))
      .thenThrows(InvalidPreset, 'presence_penalty');
    spec
      .given([])
      .when(create(alice, { parameters: { stop: ['a', 'b', 'c', 'd', 'e'] } }))
      .thenThrows(InvalidPreset, 'parameters.stop');
    spec
      .given([])
      .when(create(alice, { messages: [{ role: 'tool' as 'system', content: 'x' }] }))
      .thenThrows(InvalidPreset, 'messages.0.role');
  });

  it('refuses a model the catalog does not have', () => {
    const strict = deciderSpec(presetRules({ modelExists: (id) => id === 'known' }));
    strict.given([]).when(create(alice)).thenThrows(UnknownModel, 'gpt-4o-mini');
    strict
      .given([])
      .when(create(alice, { model: 'known' }))
      .then([created('alice', { model: 'known' })]);
    spec
      .given([])
      .when(create(alice, { model: '' }))
      .thenThrows(InvalidPreset, 'model');
    // Without a catalog, any non-blank id is accepted.
    spec
      .given([])
      .when(create(alice, { model: ' ' }))
      .thenThrows(UnknownModel);
  });

  it('records only the fields that changed, and nothing when none did', () => {
    spec
      .given([created()])
      .when(update(alice, { name: 'Traductrice', parameters: { temperature: 0.3, max_tokens: 512 } }))
      .then([
        {
          type: 'PresetUpdated',
          data: { presetId: 'p1', name: 'Traductrice', updatedBy: 'alice', updatedAt: at },
        },
      ]);
    spec
      .given([created()])
      .when(update(alice, { name: 'Translator' }))
      .then([]);
  });

  it('answers 404 for another user’s private preset, and for a deleted one', () => {
    spec
      .given([created()])
      .when(update(bob, { name: 'mine now' }))
      .thenThrows(PresetNotFound);
    spec.given([created()]).when(remove(bob)).thenThrows(PresetNotFound);
    // An admin has no business with a user's private preset either.
    spec.given([created()]).when(remove(admin)).thenThrows(PresetNotFound);
    spec
      .given([created(), deleted])
      .when(update(alice, { name: 'again' }))
      .thenThrows(PresetNotFound);
    spec.given([created(), deleted]).when(remove(alice)).thenThrows(PresetNotFound);
    spec.given([]).when(remove(alice)).thenThrows(PresetNotFound);
  });

  it('answers 403 to a user changing a public preset they can see but do not own; admins may', () => {
    const pub = created('root', { public: true });
    spec
      .given([pub])
      .when(update(bob, { name: 'x' }))
      .thenThrows(Forbidden);
    spec.given([pub]).when(remove(bob)).thenThrows(Forbidden);
    const otherAdmin = { userId: 'root2', admin: true };
    spec
      .given([pub])
      .when(update(otherAdmin, { public: false }))
      .then([
        { type: 'PresetUpdated', data: { presetId: 'p1', public: false, updatedBy: 'root2', updatedAt: at } },
      ]);
    spec
      .given([pub])
      .when(remove(otherAdmin))
      .then([{ type: 'PresetDeleted', data: { presetId: 'p1', deletedBy: 'root2', deletedAt: at } }]);
  });

  it('lets only admins make a preset public', () => {
    spec
      .given([created()])
      .when(update(alice, { public: true }))
      .thenThrows(Forbidden, 'admins');
    spec
      .given([created('root')])
      .when(update(admin, { public: true }))
      .then([
        { type: 'PresetUpdated', data: { presetId: 'p1', public: true, updatedBy: 'root', updatedAt: at } },
      ]);
  });

  it('folds updates into the state', () => {
    const s = [
      created(),
      {
        type: 'PresetUpdated',
        data: { presetId: 'p1', name: 'B', updatedBy: 'alice', updatedAt: '2026-03-02T00:00:00.000Z' },
      },
    ].reduce((acc, e) => presetDecider.evolve(acc, e as PresetEvent), presetDecider.initialState());
    expect(s.preset).toMatchObject({
      name: 'B',
      model: 'gpt-4o-mini',
      updatedAt: '2026-03-02T00:00:00.000Z',
      createdAt: at,
    });
  });
});
