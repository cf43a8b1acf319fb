import { storableText, StorableTextStream } from '../text';
import type { ToolCall, ToolCallDelta } from './types';

/**
 * The tool calls of one reply, put together from their streamed pieces. Each piece is made
 * storable as it passes (a model may send NUL, or split a surrogate pair between two pieces of
 * arguments), and a call whose provider sent no id gets one, in its first piece, so a client can
 * answer it. Calls are numbered 0, 1, 2… in the order they begin, whatever the provider numbered
 * them: a call's `index` is its place in `list()`.
 */
export class ToolCallAssembly {
  /** By the provider's index, in the order the calls began. */
  private readonly calls = new Map<number, { index: number; call: ToolCall; args: StorableTextStream }>();

  /** `newId` makes an id for a call that came without one. */
  constructor(private readonly newId: () => string) {}

  /** The piece as it is passed on: storable, with the call's id when it is the call's first. */
  push(piece: ToolCallDelta): ToolCallDelta {
    let entry = this.calls.get(piece.index);
    const first = entry === undefined;
    if (!entry) {
      const id = piece.id ? storableText(piece.id) : this.newId();
      entry = {
        index: this.calls.size,
        call: { id, type: 'function', function: { name: '', arguments: '' } },
        args: new StorableTextStream(),
      };
      this.calls.set(piece.index, entry);
    }
    const name = piece.name ? storableText(piece.name) : '';
    const args = piece.arguments ? entry.args.push(piece.arguments) : '';
    entry.call.function.name += name;
    entry.call.function.arguments += args;
    return {
      index: entry.index,
      ...(first ? { id: entry.call.id } : {}),
      ...(name ? { name } : {}),
      ...(args || first ? { arguments: args } : {}),
    };
  }

  /** The last pieces: what each call's arguments kept back, for calls that had some. */
  end(): ToolCallDelta[] {
    const rest: ToolCallDelta[] = [];
    for (const entry of this.calls.values()) {
      const tail = entry.args.end();
      if (!tail) continue;
      entry.call.function.arguments += tail;
      rest.push({ index: entry.index, arguments: tail });
    }
    return rest;
  }

  /** The calls, in the order they began. */
  list(): ToolCall[] {
    return [...this.calls.values()].map((e) => e.call);
  }
}
