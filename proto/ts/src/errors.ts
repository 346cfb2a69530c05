/**
 * Errors of the imgate client. Every error the client reports — a rejected
 * promise or an `error` event — is an {@link ImgateError}.
 */

/** Where an error came from. */
export type ErrorKind =
  /** a non-2xx answer of the dispatcher's `GET /v1/endpoint` (§1.3) */
  | 'dispatcher'
  /** an `Error` frame from the access node, or a close code 4000+code */
  | 'server'
  /** a `Kick` frame (code `REPLACED`, `ADMIN`, `UNSPECIFIED`) */
  | 'kicked'
  /** network failure, timeout, connection closed without a frame */
  | 'network'
  /** a frame or an answer the client could not understand */
  | 'protocol'
  /** the client was closed, or is not connected */
  | 'closed'
  /** a bad argument (empty recipient, payload too large, …) */
  | 'usage';

export interface ImgateErrorInit {
  kind: ErrorKind;
  code: string;
  message: string;
  temporary: boolean;
  status?: number;
  retryAfterMs?: number;
  nodeId?: string;
  fatal?: boolean;
  detail?: string;
  cause?: unknown;
}

/**
 * ImgateError says what failed and whether trying again can help.
 *
 * - `code`: for `dispatcher`, the JSON error code (`no_node`,
 *   `transport_unavailable`, …) or `http_<status>` when the body was not the
 *   dispatcher's JSON; for `server`, the wire `ErrorCode` name without its
 *   prefix (`TOKEN_EXPIRED`; the same names as SendResult.reason and
 *   RoomResult.code, e.g. `NOT_MEMBER`, `ROOM_LIMIT`, `FORBIDDEN`); for `kicked`, the reason (`REPLACED`); for
 *   the others a short name (`timeout`, `connection_closed`, `closed`, …).
 * - `temporary`: a retry (the client's own reconnect loop) may succeed.
 *   Permanent errors stop the reconnect loop (docs/protocol.md §8.3 step 6).
 */
export class ImgateError extends Error {
  readonly kind: ErrorKind;
  readonly code: string;
  readonly temporary: boolean;
  /** HTTP status of a dispatcher answer */
  readonly status?: number;
  /** the dispatcher's Retry-After, in ms (0 or absent: none) */
  readonly retryAfterMs?: number;
  /** the node the error came from */
  readonly nodeId?: string;
  /** an Error frame's fatal flag */
  readonly fatal?: boolean;
  /** a Kick's detail */
  readonly detail?: string;

  constructor(init: ImgateErrorInit) {
    super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = 'ImgateError';
    this.kind = init.kind;
    this.code = init.code;
    this.temporary = init.temporary;
    if (init.status !== undefined) this.status = init.status;
    if (init.retryAfterMs !== undefined) this.retryAfterMs = init.retryAfterMs;
    if (init.nodeId !== undefined) this.nodeId = init.nodeId;
    if (init.fatal !== undefined) this.fatal = init.fatal;
    if (init.detail !== undefined) this.detail = init.detail;
  }
}

/** Dispatcher codes a retry cannot fix (docs/protocol.md §1.3). */
const permanentDispatcherCodes = new Set(['bad_parameter', 'unauthorized', 'forbidden', 'not_found', 'method_not_allowed', 'transport_unavailable']);
const temporaryDispatcherCodes = new Set(['rate_limited', 'no_node', 'internal']);

/** Retry-After is capped at one hour, as in the Go SDK. */
const maxRetryAfterMs = 3600_000;

/** parseRetryAfter reads delay-seconds or an HTTP date; 0 when absent or bad. */
export function parseRetryAfter(v: string | null | undefined, nowMs: number = Date.now()): number {
  const s = (v ?? '').trim();
  if (s === '') return 0;
  if (/^-?\d+$/.test(s)) {
    const n = Number(s);
    if (n <= 0) return 0;
    return Math.min(n * 1000, maxRetryAfterMs);
  }
  const t = Date.parse(s);
  if (Number.isNaN(t)) return 0;
  const d = t - nowMs;
  return d > 0 ? Math.min(d, maxRetryAfterMs) : 0;
}

/**
 * dispatcherError turns a non-2xx answer into an ImgateError: the JSON
 * body `{"error":{"code","message"}}` when there is one, else a short
 * excerpt classified by status (408, 429 and 5xx temporary).
 */
export function dispatcherError(status: number, retryAfter: string | null, body: string, nowMs: number = Date.now()): ImgateError {
  const retryAfterMs = parseRetryAfter(retryAfter, nowMs);
  let code = '';
  let message = '';
  try {
    const j = JSON.parse(body) as { error?: { code?: unknown; message?: unknown } };
    if (j && typeof j === 'object' && j.error && typeof j.error.code === 'string' && j.error.code !== '') {
      code = j.error.code;
      message = typeof j.error.message === 'string' ? j.error.message : '';
    }
  } catch {
    // not JSON: keep an excerpt below
  }
  let temporary: boolean;
  if (code !== '' && permanentDispatcherCodes.has(code)) temporary = false;
  else if (code !== '' && temporaryDispatcherCodes.has(code)) temporary = true;
  else temporary = status === 408 || status === 429 || status >= 500;
  if (code === '') {
    message = body.trim();
    if (message.length > 200) message = message.slice(0, 200) + '…';
    if (message === '') message = `HTTP ${status}`;
  }
  const c = code || `http_${status}`;
  return new ImgateError({
    kind: 'dispatcher', code: c, temporary, status, retryAfterMs,
    message: `dispatcher: HTTP ${status}${code ? ' ' + code : ''}${message ? ': ' + message : ''}`,
  });
}

/**
 * Wire error codes caused by what the client sent: a retry cannot fix them
 * (§4.2). The rooms' codes (§13.5) — ROOM_LIMIT (25, a Join beyond the
 * node's rooms per connection), NOT_MEMBER (26, a publish to a room not
 * joined), FORBIDDEN (27, the node's join policy or the backend refused) —
 * come in RoomState.code and SendAck.reason, never in an Error frame today;
 * should a node send one as an Error it is no better on a retry either.
 */
const permanentServerCodes = new Set([
  'BAD_FRAME', 'FRAME_TOO_LARGE', 'NOT_LOGGED_IN', 'ALREADY_LOGGED_IN', 'BAD_REQUEST', 'TOKEN_MISMATCH',
  'ROOM_LIMIT', 'NOT_MEMBER', 'FORBIDDEN',
]);

/**
 * isTemporaryCode reports whether a wire ErrorCode name (an Error's code, a
 * SendAck's reason, a RoomState's code) may go away on a retry:
 * RATE_LIMITED and UNAVAILABLE do, ROOM_LIMIT, NOT_MEMBER, FORBIDDEN and
 * BAD_REQUEST do not.
 */
export function isTemporaryCode(code: string): boolean {
  return !permanentServerCodes.has(code);
}

export function serverError(code: string, message: string, fatal: boolean, nodeId: string): ImgateError {
  return new ImgateError({
    kind: 'server', code, fatal, nodeId, temporary: !permanentServerCodes.has(code),
    message: `node ${nodeId}: ${code}${message ? ': ' + message : ''}`,
  });
}

/**
 * kickedError is a Kick frame. REPLACED, and ADMIN with `ban` (the backend
 * keeps the user out), are not temporary: the client stops for good.
 */
export function kickedError(reason: string, detail: string, nodeId: string, ban = false): ImgateError {
  const banned = ban && reason === 'ADMIN';
  return new ImgateError({
    kind: 'kicked', code: reason, nodeId, detail, temporary: reason !== 'REPLACED' && !banned,
    message: `kicked by node ${nodeId}: ${reason}${banned ? ', banned' : ''}${detail ? ' (' + detail + ')' : ''}`,
  });
}

export function networkError(code: string, message: string, nodeId?: string, cause?: unknown): ImgateError {
  const init: ImgateErrorInit = { kind: 'network', code, message, temporary: true, cause };
  if (nodeId !== undefined) init.nodeId = nodeId;
  return new ImgateError(init);
}

export function closedError(message = 'client closed'): ImgateError {
  return new ImgateError({ kind: 'closed', code: 'closed', message, temporary: false });
}
