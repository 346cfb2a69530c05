/**
 * Encoding and decoding of frames. Over WebSocket one binary message is one
 * `Frame` protobuf body, without TCP's 4-byte length prefix
 * (docs/protocol.md §2.2).
 */
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import {
  ErrorCode, FrameSchema, KickReason, Outcome,
  type Frame,
} from './gen/wirepb/frame_pb.js';

export type FrameBody = Frame['body'];
type BodyInit<C extends NonNullable<FrameBody['case']>> = Extract<FrameBody, { case: C }>['value'];

/** encode serialises one frame body. */
export function encode<C extends NonNullable<FrameBody['case']>>(kind: C, value: Partial<BodyInit<C>>): Uint8Array {
  // create() accepts the nested init object and fills in defaults.
  const f = create(FrameSchema, { body: { case: kind, value } as never });
  return toBinary(FrameSchema, f);
}

/** decode parses one frame; it throws on a malformed body. Unknown frame types give body.case undefined. */
export function decode(b: Uint8Array): Frame {
  return fromBinary(FrameSchema, b);
}

/** The name of an enum value without its prefix, or the number for an unknown one. */
function name(e: Record<number, string>, v: number, prefix: string): string {
  const n = e[v];
  return n === undefined ? String(v) : n.startsWith(prefix) ? n.slice(prefix.length) : n;
}

export function errorCodeName(c: ErrorCode): string {
  return name(ErrorCode as unknown as Record<number, string>, c, 'ERROR_CODE_');
}

export function kickReasonName(r: KickReason): string {
  return name(KickReason as unknown as Record<number, string>, r, 'KICK_REASON_');
}

export function outcomeName(o: Outcome): string {
  return name(Outcome as unknown as Record<number, string>, o, 'OUTCOME_');
}
