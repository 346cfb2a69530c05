/**
 * @imgate/client — the imgate access layer's client for browsers and Node,
 * over WebSocket. See README.md and docs/protocol.md.
 */
export { Client, version } from './client.js';
export type {
  ClientEvents, ClientOptions, GoAwayEvent, KickEvent, Message, Outcome, RoomEvent, RoomResult, SendOptions, SendResult, State, StateEvent,
} from './client.js';
export { ImgateError, parseRetryAfter, dispatcherError, isTemporaryCode } from './errors.js';
export { maxRoomBytes, roomIdProblem, validRoom } from './rooms.js';
export type { ErrorKind } from './errors.js';
export { backoffDelay, defaultBackoff, mergeHints } from './backoff.js';
export type { Backoff, BackoffHints } from './backoff.js';
export { Dedup } from './dedup.js';
export type { FetchLike, WebSocketConstructor, WebSocketLike } from './websocket.js';
