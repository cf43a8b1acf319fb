import { createHash } from 'node:crypto';
import { z } from 'zod';

/**
 * Users' events (stream `user-{id}`), and the reservations that keep usernames, emails and external
 * identities unique (stream `unique-{kind}-{digest}`): an event store has no unique index, so each
 * value is a stream of its own, claimed by appending with `no_stream` (or the revision that released it).
 */
const id = z.string().min(1).max(200);
const at = z.string().datetime({ offset: true });
const permission = z.union([z.literal(0), z.literal(1), z.literal(2)]);

export const IdentityProviderSchema = z.enum(['wechat', 'apple', 'phone']);
export type IdentityProvider = z.infer<typeof IdentityProviderSchema>;

export const SignInMethodSchema = z.enum(['password', 'wechat', 'apple', 'sms', 'admin']);
export type SignInMethod = z.infer<typeof SignInMethodSchema>;

export const UserEventSchemas = {
  UserRegistered: z.object({
    userId: id,
    username: z.string().min(1),
    email: z.string().nullable(),
    nickname: z.string(),
    /** argon2id; null for users who sign in only through a provider. */
    passwordHash: z.string().nullable(),
    permission,
    method: SignInMethodSchema,
    /** The sign-up grant this registration earned (SIGNUP_CREDITS then); credited by a process step. */
    signupCredits: z.number().int().min(0).optional(),
    registeredAt: at,
  }),
  ProfileChanged: z.object({
    userId: id,
    nickname: z.string().optional(),
    email: z.string().nullable().optional(),
    changedAt: at,
  }),
  PasswordChanged: z.object({
    userId: id,
    passwordHash: z.string(),
    /** `self` (knew the old one) or `admin` (reset). */
    by: z.enum(['self', 'admin']),
    /**
     * Every session started before the change ends, but this one: the session of a user who
     * changed their own password (null for an admin's reset). Absent on changes recorded before
     * the user's stream said so; those ended the sessions only through the sessions read model.
     */
    keptSessionId: id.nullable().optional(),
    changedAt: at,
  }),
  AvatarChanged: z.object({ userId: id, avatarId: z.string().min(1), changedAt: at }),
  PermissionChanged: z.object({ userId: id, permission, changedAt: at }),
  UserDisabled: z.object({ userId: id, disabledAt: at }),
  UserEnabled: z.object({ userId: id, enabledAt: at }),
  IdentityLinked: z.object({
    userId: id,
    provider: IdentityProviderSchema,
    /** The provider's stable id: WeChat unionid (else openid), Apple `sub`, an E.164 phone number. */
    subject: z.string().min(1),
    linkedAt: at,
  }),
} as const;

export type UserEventType = keyof typeof UserEventSchemas;
export type UserEvent = {
  [T in UserEventType]: { type: T; data: z.infer<(typeof UserEventSchemas)[T]> };
}[UserEventType];

export const userStream = (userId: string) => `user-${userId}`;

/** What must be unique across users. */
export type UniqueKind = 'username' | 'email' | IdentityProvider;

export const UniqueEventSchemas = {
  ValueReserved: z.object({ kind: z.string(), value: z.string(), userId: id, reservedAt: at }),
  ValueReleased: z.object({ kind: z.string(), value: z.string(), userId: id, releasedAt: at }),
} as const;

export type UniqueEventType = keyof typeof UniqueEventSchemas;
export type UniqueEvent = {
  [T in UniqueEventType]: { type: T; data: z.infer<(typeof UniqueEventSchemas)[T]> };
}[UniqueEventType];

/** Usernames and emails compare case-insensitively; identities exactly. */
export function normaliseUnique(kind: UniqueKind, value: string): string {
  return kind === 'username' || kind === 'email' ? value.trim().toLowerCase() : value;
}

/**
 * The reservation stream of a value. Its name carries a digest, not the value: emails and provider
 * ids may hold characters a stream name should not, and the name stays short.
 */
export function uniqueStream(kind: UniqueKind, value: string): string {
  const digest = createHash('sha256').update(normaliseUnique(kind, value)).digest('hex').slice(0, 40);
  return `unique-${kind}-${digest}`;
}
