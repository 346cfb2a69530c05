/**
 * Room ids (docs/protocol.md §13.1): 1–128 bytes of UTF-8 without control
 * characters — the nodes' own rule (gateway.ValidRoom), checked before a
 * Join, Leave or publish is written so that a bad id fails at once.
 */

/** The longest room id, in UTF-8 bytes. */
export const maxRoomBytes = 128;

/**
 * roomIdProblem says what is wrong with room as a room id, or returns ''
 * when it is one. A string with a lone UTF-16 surrogate is not valid UTF-8
 * (the encoder would change it), and control characters are Unicode's Cc:
 * U+0000–U+001F and U+007F–U+009F.
 */
export function roomIdProblem(room: unknown): string {
  if (typeof room !== 'string') return 'a room id is a string';
  if (room.length === 0) return 'empty room id';
  let bytes = 0;
  for (let i = 0; i < room.length; i++) {
    const u = room.charCodeAt(i);
    if (u <= 0x1f || (u >= 0x7f && u <= 0x9f)) return `room id with a control character (U+${u.toString(16).toUpperCase().padStart(4, '0')})`;
    if (u >= 0xd800 && u <= 0xdbff) {
      const lo = i + 1 < room.length ? room.charCodeAt(i + 1) : 0;
      if (lo < 0xdc00 || lo > 0xdfff) return 'room id is not valid UTF-8 (a lone surrogate)';
      bytes += 4;
      i++;
    } else if (u >= 0xdc00 && u <= 0xdfff) {
      return 'room id is not valid UTF-8 (a lone surrogate)';
    } else {
      bytes += u < 0x80 ? 1 : u < 0x800 ? 2 : 3;
    }
    if (bytes > maxRoomBytes) return `room id over ${maxRoomBytes} bytes of UTF-8`;
  }
  return '';
}

/** validRoom reports whether room is a room id the nodes accept. */
export function validRoom(room: unknown): room is string {
  return roomIdProblem(room) === '';
}
