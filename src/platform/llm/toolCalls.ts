import { storableText, StorableTextStream } from '../text';
import type { ToolCall, ToolCallDelta } from './types';

/** Longest id of a call we pass on; a client sends it back, and we take back no longer one. */
export const MAX_TOOL_CALL_ID = 200;

interface Entry {
  index: number;
  /** The id the provider gave it, if any: its next pieces may repeat it. */
  providerId: string | undefined;
  call: ToolCall;
  args: StorableTextStream;
}

/**
 * The tool calls of one reply, put together from their streamed pieces. Like the official SDK, a
 * provider's `index` says which call a piece adds to; the pieces' ways differ by provider, and each
 * gives the same calls:
 * - a call's first piece has its id and name, the next ones only more arguments (OpenAI);
 * - every piece repeats the id and the name (the name is set, never added to), or brings an id of
 *   its own, or the first id comes late (the call keeps the id it was first passed on with);
 * - whole calls, one per chunk, all at one index (or none): where the SDK would merge them, a piece
 *   that brings both another id and a name starts a new call.
 * Each piece is made storable as it passes (a model may send NUL, or split a surrogate pair between
 * two pieces of arguments). A call whose provider sent no id, or one too long to be sent back, gets
 * one of ours in its first piece, so a client can answer it. Calls are numbered 0, 1, 2… in the
 * order they begin, whatever the provider numbered them: a call's `index` is its place in `list()`.
 */
export class ToolCallAssembly {
  private readonly entries: Entry[] = [];
  /** The call each provider index currently adds to. */
  private readonly current = new Map<number, Entry>();

  /** `newId` makes an id for a call that came without a usable one. */
  constructor(private readonly newId: () => string) {}

  /**
   * The piece as it is passed on: storable, with the call's id (and name) when it is the call's
   * first; null when it brings nothing new (an id or name repeated).
   */
  push(piece: ToolCallDelta): ToolCallDelta | null {
    const id = piece.id ? storableText(piece.id) : undefined;
    let entry = this.current.get(piece.index);
    const another =
      entry?.providerId !== undefined && id !== undefined && id !== entry.providerId && !!piece.name;
    const first = entry === undefined || another;
    if (entry && !first) entry.providerId ??= id;
    if (first) {
      const usable = id !== undefined && id.length <= MAX_TOOL_CALL_ID ? id : this.newId();
      entry = {
        index: this.entries.length,
        providerId: id,
        call: { id: usable, type: 'function', function: { name: '', arguments: '' } },
        args: new StorableTextStream(),
      };
      this.entries.push(entry);
      this.current.set(piece.index, entry);
    }
    const call = entry!.call;
    // Named in a later piece than its first, or again in each: the name is set, never added to.
    const name = piece.name ? storableText(piece.name) : '';
    const renamed = name !== '' && name !== call.function.name;
    if (renamed) call.function.name = name;
    const args = piece.arguments ? entry!.args.push(piece.arguments) : '';
    call.function.arguments += args;
    if (!first && !renamed && !args) return null;
    return {
      index: entry!.index,
      ...(first ? { id: call.id } : {}),
      ...(renamed ? { name } : {}),
      ...(args || first ? { arguments: args } : {}),
    };
  }

  /** The last pieces: what each call's arguments kept back, for calls that had some. */
  end(): ToolCallDelta[] {
    const rest: ToolCallDelta[] = [];
    for (const entry of this.entries) {
      const tail = entry.args.end();
      if (!tail) continue;
      entry.call.function.arguments += tail;
      rest.push({ index: entry.index, arguments: tail });
    }
    return rest;
  }

  /** The calls, in the order they began. */
  list(): ToolCall[] {
    return this.entries.map((e) => e.call);
  }
}
