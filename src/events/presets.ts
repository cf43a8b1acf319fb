import { z } from 'zod';

/**
 * Presets' events (stream `preset-{id}`): a model, its parameters and the messages a chat opens
 * with. Parameters keep the OpenAI names (`top_p`, `max_tokens`) because they are passed on as such.
 */
const id = z.string().min(1).max(200);
const at = z.string().datetime({ offset: true });

/** The most output tokens a preset may ask for; the model's own limit may be lower. */
export const MAX_TOKENS_CAP = 131_072;
/** Longest text of one message or message part, in characters. */
export const MAX_TEXT_LENGTH = 32_000;
export const MAX_PRESET_MESSAGES = 50;

/** Sampling parameters a preset (and so a chat) passes to the model. Unknown keys are refused. */
export const PresetParametersSchema = z
  .strictObject({
    temperature: z.number().min(0).max(2).optional(),
    top_p: z.number().min(0).max(1).optional(),
    max_tokens: z.number().int().min(1).max(MAX_TOKENS_CAP).optional(),
    presence_penalty: z.number().min(-2).max(2).optional(),
    frequency_penalty: z.number().min(-2).max(2).optional(),
    stop: z.array(z.string().min(1).max(100)).max(4).optional(),
  })
  .meta({ id: 'PresetParameters' });
export type PresetParameters = z.infer<typeof PresetParametersSchema>;

export const TemplateRoleSchema = z.enum(['system', 'user', 'assistant']);

/** A message a chat started from the preset begins with. */
export const TemplateMessageSchema = z
  .strictObject({ role: TemplateRoleSchema, content: z.string().min(1).max(MAX_TEXT_LENGTH) })
  .meta({ id: 'PresetMessage' });
export type TemplateMessage = z.infer<typeof TemplateMessageSchema>;

export const PresetFieldsSchema = z.object({
  name: z.string().min(1).max(100),
  description: z.string().max(1000),
  model: z.string().min(1).max(200),
  parameters: PresetParametersSchema,
  messages: z.array(TemplateMessageSchema).max(MAX_PRESET_MESSAGES),
  public: z.boolean(),
});
export type PresetFields = z.infer<typeof PresetFieldsSchema>;

export const PresetEventSchemas = {
  PresetCreated: PresetFieldsSchema.extend({ presetId: id, ownerId: id, createdAt: at }),
  /** Only the fields that changed; `parameters` and `messages` are replaced whole. */
  PresetUpdated: PresetFieldsSchema.partial().extend({ presetId: id, updatedBy: id, updatedAt: at }),
  PresetDeleted: z.object({ presetId: id, deletedBy: id, deletedAt: at }),
} as const;

export type PresetEventType = keyof typeof PresetEventSchemas;
export type PresetEvent = {
  [T in PresetEventType]: { type: T; data: z.infer<(typeof PresetEventSchemas)[T]> };
}[PresetEventType];

export const PRESET_EVENT_TYPES = Object.keys(PresetEventSchemas) as PresetEventType[];

export const presetStream = (presetId: string) => `preset-${presetId}`;
