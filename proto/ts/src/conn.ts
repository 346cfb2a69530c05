/**
 * Conn is one logged-in WebSocket connection to one access node.
 */
import type { Deliver, GoAway, LoginAck, RoomState, SendAck } from './gen/wirepb/frame_pb.js';
import { ImgateError, kickedError, networkError, serverError } from './errors.js';
import { decode, encode, errorCodeName, kickReasonName } from './wire.js';
import { OPEN, subprotocol, type WebSocketConstructor, type WebSocketLike } from './websocket.js';

/** One Send written on a connection, waiting for its SendAck. */
export interface InFlight {
  /** called once: with the SendAck, or with why none will come */
  settle(ack: SendAck | null, why?: ImgateError | 'timeout'): void;
}

/** What a connection tells its client. */
export interface ConnEvents {
  deliver(c: Conn, d: Deliver): void;
  goAway(c: Conn, g: GoAway): void;
  /** a non-fatal Error frame */
  serverError(c: Conn, e: ImgateError): void;
  /** the connection ended; why is an ImgateError, or the reason the client gave */
  closed(c: Conn, why: ImgateError | CloseReason): void;
  /** a Send finished on c (a slot is free) */
  settled(c: Conn): void;
  /** a RoomState with request_id 0: the app's backend joined c to a room or took it out (§13.1) */
  roomState(c: Conn, rs: RoomState): void;
}

/** Why the client itself closed a connection. */
export type CloseReason = 'closed' | 'moved';

export interface DialParams {
  url: string;
  nodeId: string;
  token: string;
  uid: string;
  device: string;
  clientVersion: string;
  /** the dispatcher's heartbeat hint, 0 when none */
  heartbeatHintMs: number;
  dialTimeoutMs: number;
  heartbeatMs: number;
  sendAckTimeoutMs?: number;
  WebSocket: WebSocketConstructor;
  signal: AbortSignal;
}

/** Delivers kept while waiting for LoginAck; more are dropped unacked (the node re-sends them). */
const maxEarly = 64;
/** How much a frame from the node may exceed max_frame_bytes (a re-sent Deliver grows). */
const nodeSlack = 64;
/** Bound of a graceful close (docs/protocol.md §8.4: the Go SDK's 1 s). */
const shutdownGraceMs = 1000;
const defaultMaxFrame = 65536;

type Timer = ReturnType<typeof setTimeout>;

export class Conn {
  nodeId: string;
  sessionId = '';
  heartbeatMs = 30_000;
  readTimeoutMs = 65_000;
  sendAckTimeoutMs = 25_000;
  maxFrame = defaultMaxFrame;

  /** Sends written here, by client_msg_id */
  readonly pending = new Map<bigint, InFlight>();
  /**
   * Joins and Leaves written here, by request_id: called once, with the
   * RoomState that answers it, or with null when the connection ended first.
   */
  readonly roomWaits = new Map<bigint, (rs: RoomState | null) => void>();
  /** set once the connection ended */
  closedWhy: ImgateError | CloseReason | null = null;
  /** whether a GoAway was seen (a second one is ignored), and its reconnect_after_ms */
  goneAway = false;
  goAwayAfterMs = 0;

  private readonly ws: WebSocketLike;
  private readonly ev: ConnEvents;
  private loggedIn = false;
  /** no more Delivers are handed over: the client is closing this connection */
  private handStop = false;
  private pingTimer: Timer | undefined;
  private readTimer: Timer | undefined;
  private seq = 0n;
  private closedResolve!: () => void;
  /** resolves once the socket is closed (or the close grace ran out) */
  readonly socketClosed: Promise<void>;

  private constructor(ws: WebSocketLike, nodeId: string, ev: ConnEvents) {
    this.ws = ws;
    this.nodeId = nodeId;
    this.ev = ev;
    this.socketClosed = new Promise((r) => (this.closedResolve = r));
  }

  /**
   * dial opens the WebSocket, sends Login and resolves once LoginAck came.
   * Delivers that arrive before the LoginAck are handed over right after
   * it. A Kick or a fatal Error refuses the attempt.
   */
  static dial(p: DialParams, ev: ConnEvents): Promise<Conn> {
    return new Promise<Conn>((resolve, reject) => {
      let ws: WebSocketLike;
      try {
        ws = new p.WebSocket(p.url, subprotocol);
      } catch (err) {
        reject(networkError('connect_failed', `connect to node ${p.nodeId} (${p.url}): ${String(err)}`, p.nodeId, err));
        return;
      }
      ws.binaryType = 'arraybuffer';
      const c = new Conn(ws, p.nodeId, ev);
      const early: Deliver[] = [];
      let done = false;
      const fail = (e: ImgateError): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        p.signal.removeEventListener('abort', onAbort);
        c.loggedIn = false;
        c.abort(e);
        reject(e);
      };
      const onAbort = (): void => fail(networkError('aborted', 'connect aborted', p.nodeId));
      const timer = setTimeout(
        () => fail(networkError('timeout', `login to node ${p.nodeId}: no LoginAck within ${p.dialTimeoutMs} ms`, p.nodeId)),
        p.dialTimeoutMs,
      );
      if (p.signal.aborted) {
        onAbort();
        return;
      }
      p.signal.addEventListener('abort', onAbort);

      ws.onopen = () => {
        try {
          ws.send(encode('login', { token: p.token, uid: p.uid, device: p.device, clientVersion: p.clientVersion }));
        } catch (err) {
          fail(networkError('write_failed', `login to node ${p.nodeId}: ${String(err)}`, p.nodeId, err));
        }
      };
      ws.onerror = () => {
        // Details come with the close event that always follows.
      };
      ws.onclose = (e: { code?: number; reason?: string }) => {
        c.closedResolve();
        if (!done) fail(closeError(e.code ?? 1006, e.reason ?? '', p.nodeId, 'before LoginAck'));
        else c.onSocketClose(e.code ?? 1006, e.reason ?? '');
      };
      ws.onmessage = (e: { data: unknown }) => {
        if (done) {
          c.onMessage(e.data);
          return;
        }
        const b = bytesOf(e.data);
        if (b === null) {
          fail(new ImgateError({ kind: 'protocol', code: 'text_message', message: `node ${p.nodeId} sent a text message`, temporary: true, nodeId: p.nodeId }));
          return;
        }
        let f;
        try {
          f = decode(b);
        } catch (err) {
          fail(new ImgateError({ kind: 'protocol', code: 'bad_frame', message: `node ${p.nodeId}: undecodable frame before LoginAck`, temporary: true, nodeId: p.nodeId, cause: err }));
          return;
        }
        switch (f.body.case) {
          case 'loginAck': {
            done = true;
            clearTimeout(timer);
            p.signal.removeEventListener('abort', onAbort);
            c.loggedIn = true;
            c.configure(f.body.value, p);
            resolve(c);
            for (const d of early) c.onDeliver(d);
            break;
          }
          case 'deliver':
            if (early.length < maxEarly) early.push(f.body.value);
            break;
          case 'kick':
            fail(kickedError(kickReasonName(f.body.value.reason), f.body.value.detail, p.nodeId, f.body.value.ban));
            break;
          case 'error': {
            const er = f.body.value;
            const se = serverError(errorCodeName(er.code), er.message, er.fatal, p.nodeId);
            if (er.fatal) fail(se);
            else ev.serverError(c, se);
            break;
          }
          default:
            // unknown frame types and frames out of place are skipped
            break;
        }
      };
    });
  }

  private configure(ack: LoginAck, p: DialParams): void {
    if (ack.nodeId) this.nodeId = ack.nodeId;
    this.sessionId = ack.sessionId;
    let hb = p.heartbeatHintMs > 0 ? p.heartbeatHintMs : p.heartbeatMs;
    if (ack.heartbeatIntervalMs > 0) {
      hb = ack.heartbeatIntervalMs;
    } else if (ack.idleTimeoutMs > 0 && hb >= ack.idleTimeoutMs / 2) {
      hb = Math.floor(ack.idleTimeoutMs / 3); // stay well inside the node's idle timeout
    }
    this.heartbeatMs = Math.max(100, hb);
    // §5.3: nothing at all for 2 × heartbeat + 5 s means the connection is dead.
    this.readTimeoutMs = 2 * this.heartbeatMs + 5000;
    // No SendAck comes later than the node's worst case (§6.3): the deliver
    // timeout plus a margin for a directory lookup that waits out a dead home.
    this.sendAckTimeoutMs = p.sendAckTimeoutMs && p.sendAckTimeoutMs > 0
      ? p.sendAckTimeoutMs
      : ack.deliverTimeoutMs > 0 ? ack.deliverTimeoutMs + 15_000 : 25_000;
    if (ack.maxFrameBytes > 0) this.maxFrame = ack.maxFrameBytes;
    this.pingTimer = setInterval(() => this.ping(), this.heartbeatMs);
    unref(this.pingTimer);
    this.touch();
  }

  /** isOpen: logged in, not closing, the socket open. */
  get isOpen(): boolean {
    return this.loggedIn && this.closedWhy === null && this.ws.readyState === OPEN;
  }

  /** write sends one frame; false when the connection cannot take it. */
  write(frame: Uint8Array): boolean {
    if (this.closedWhy !== null || this.ws.readyState !== OPEN) return false;
    try {
      this.ws.send(frame);
      return true;
    } catch (err) {
      this.abort(networkError('write_failed', `write to node ${this.nodeId}: ${String(err)}`, this.nodeId, err));
      return false;
    }
  }

  private ping(): void {
    this.seq++;
    this.write(encode('ping', { seq: this.seq }));
  }

  /** touch restarts the dead-connection timer: any frame counts. */
  private touch(): void {
    if (this.readTimer !== undefined) clearTimeout(this.readTimer);
    if (this.closedWhy !== null) return;
    this.readTimer = setTimeout(() => {
      this.abort(networkError('heartbeat_lost', `nothing from node ${this.nodeId} for ${this.readTimeoutMs} ms (heartbeat lost)`, this.nodeId));
    }, this.readTimeoutMs);
    unref(this.readTimer);
  }

  private onMessage(data: unknown): void {
    if (this.closedWhy !== null) return;
    this.touch();
    const b = bytesOf(data);
    if (b === null) {
      this.abort(new ImgateError({ kind: 'protocol', code: 'text_message', message: `node ${this.nodeId} sent a text message`, temporary: true, nodeId: this.nodeId }));
      return;
    }
    if (b.byteLength > Math.max(this.maxFrame, defaultMaxFrame) + nodeSlack) {
      this.abort(new ImgateError({ kind: 'protocol', code: 'frame_too_large', message: `node ${this.nodeId} sent a frame of ${b.byteLength} bytes`, temporary: true, nodeId: this.nodeId }));
      return;
    }
    let f;
    try {
      f = decode(b);
    } catch (err) {
      this.abort(new ImgateError({ kind: 'protocol', code: 'bad_frame', message: `node ${this.nodeId}: undecodable frame`, temporary: true, nodeId: this.nodeId, cause: err }));
      return;
    }
    switch (f.body.case) {
      case 'pong':
        break;
      case 'sendAck': {
        const a = f.body.value;
        const s = this.pending.get(a.clientMsgId);
        if (s) {
          this.pending.delete(a.clientMsgId);
          s.settle(a);
          this.ev.settled(this);
        }
        break;
      }
      case 'deliver':
        this.onDeliver(f.body.value);
        break;
      case 'roomState': {
        const rs = f.body.value;
        if (rs.requestId === 0n) {
          this.ev.roomState(this, rs);
          break;
        }
        const w = this.roomWaits.get(rs.requestId);
        if (w) {
          this.roomWaits.delete(rs.requestId);
          w(rs);
        }
        break;
      }
      case 'kick':
        this.abort(kickedError(kickReasonName(f.body.value.reason), f.body.value.detail, this.nodeId, f.body.value.ban));
        break;
      case 'goAway':
        if (!this.goneAway) {
          this.goneAway = true;
          this.ev.goAway(this, f.body.value);
        }
        break;
      case 'error': {
        const er = f.body.value;
        const se = serverError(errorCodeName(er.code), er.message, er.fatal, this.nodeId);
        if (er.fatal) this.abort(se);
        else this.ev.serverError(this, se);
        break;
      }
      default:
        break; // a newer node's frame type
    }
  }

  onDeliver(d: Deliver): void {
    if (this.handStop || this.closedWhy !== null) return; // not ACKed: the node re-sends elsewhere
    this.ev.deliver(this, d);
  }

  /** ack writes a DeliverAck. */
  ack(msgId: string): void {
    this.write(encode('deliverAck', { msgId }));
  }

  private onSocketClose(code: number, reason: string): void {
    this.abort(closeError(code, reason, this.nodeId, ''));
  }

  /**
   * abort ends the connection for why (the first reason wins): timers stop,
   * every Send waiting here is settled as unknown, the socket is closed.
   */
  abort(why: ImgateError | CloseReason): void {
    if (this.closedWhy !== null) return;
    this.closedWhy = why;
    this.handStop = true;
    if (this.pingTimer !== undefined) clearInterval(this.pingTimer);
    if (this.readTimer !== undefined) clearTimeout(this.readTimer);
    const lost = typeof why === 'string' ? networkError('connection_closed', `connection to node ${this.nodeId} closed by the client (${why})`, this.nodeId) : why;
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const s of pending) s.settle(null, lost);
    const waits = [...this.roomWaits.values()];
    this.roomWaits.clear();
    for (const w of waits) w(null);
    if (this.ws.readyState <= OPEN) {
      try {
        this.ws.close(1000);
      } catch {
        // already closing
      }
    }
    const t = setTimeout(() => {
      // The node did not finish the close handshake in time.
      this.ws.terminate?.();
      this.closedResolve();
    }, shutdownGraceMs);
    unref(t);
    void this.socketClosed.then(() => clearTimeout(t));
    if (this.loggedIn) this.ev.closed(this, why);
  }

  /**
   * shutdown closes gracefully (docs/protocol.md §8.4): no more Delivers
   * are handed over; the DeliverAcks already written leave first, since
   * a WebSocket close goes out behind the data queued before it; then the
   * node answers the Close. Resolves when the socket closed, at most about
   * a second later.
   */
  shutdown(why: CloseReason): Promise<void> {
    this.abort(why);
    return this.socketClosed;
  }
}

/** closeError names a close the client did not ask for, from its code (docs/protocol.md §9.1). */
function closeError(code: number, reason: string, nodeId: string, when: string): ImgateError {
  const at = when ? ` ${when}` : '';
  if (code >= 4100 && code < 4200) {
    const names: Record<number, string> = { 0: 'UNSPECIFIED', 1: 'REPLACED', 2: 'ADMIN' };
    return kickedError(names[code - 4100] ?? reason ?? String(code - 4100), '', nodeId);
  }
  if (code >= 4000 && code < 4100) {
    return serverError(reason || String(code - 4000), `connection closed with ${code}${at}`, true, nodeId);
  }
  if (code === 1009) return serverError('FRAME_TOO_LARGE', `connection closed with 1009${at}`, true, nodeId);
  const why = code === 1001 ? 'the node is going away' : code === 1000 ? 'the node closed the connection' : `connection closed (${code}${reason ? ' ' + reason : ''})`;
  return networkError('connection_closed', `node ${nodeId}: ${why}${at}`, nodeId);
}

function bytesOf(data: unknown): Uint8Array | null {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return null;
}

/** unref lets Node exit while only the client's timers are pending; browsers have no such thing. */
function unref(t: unknown): void {
  const u = t as { unref?: () => void };
  if (typeof u?.unref === 'function') u.unref();
}
