/**
 * Client: one logged-in device of one user, over WebSocket.
 */
import { backoffDelay, defaultBackoff, mergeHints, type Backoff, type BackoffHints } from './backoff.js';
import { Conn, type CloseReason, type ConnEvents, type InFlight } from './conn.js';
import { Dedup } from './dedup.js';
import { Emitter } from './emitter.js';
import { ImgateError, closedError, dispatcherError, isTemporaryCode, networkError } from './errors.js';
import type { Deliver, GoAway, RoomState, SendAck } from './gen/wirepb/frame_pb.js';
import { roomIdProblem } from './rooms.js';
import { encode, errorCodeName, outcomeName } from './wire.js';
import type { FetchLike, WebSocketConstructor } from './websocket.js';

export interface ClientOptions {
  /** the dispatcher's base URL, e.g. "http://127.0.0.1:8080"; the client calls GET <dispatcher>/v1/endpoint */
  dispatcher: string;
  uid: string;
  /**
   * This login of uid: a second login with the same uid and device replaces
   * this one (Kick REPLACED), so give each browser tab or install its own.
   */
  device: string;
  /** 'ws' or 'wss'; default 'wss' on an https: page, else 'ws' */
  transport?: 'ws' | 'wss';
  /**
   * The app's own login token, sent to the dispatcher as `Authorization:
   * Bearer …` (dispatcher `--auth jwt`). A function is called before every
   * endpoint request, so a short-lived token can be refreshed.
   */
  authToken?: string | (() => string | Promise<string>);
  /** preferred region, passed to the dispatcher */
  region?: string;
  /** the WebSocket constructor; default globalThis.WebSocket (Node 20: pass `WebSocket` from the `ws` package) */
  WebSocket?: WebSocketConstructor;
  /** the fetch function; default globalThis.fetch */
  fetch?: FetchLike;
  /**
   * How long a Send waits for its SendAck while the connection stays up;
   * then it resolves with outcome UNKNOWN. Default: LoginAck's
   * deliver_timeout_ms + 15 s, or 25 s when the node does not say.
   */
  sendAckTimeoutMs?: number;
  /** free text for the node's logs; default "imgate-ts/<version>" */
  clientVersion?: string;
  /** bounds the dispatcher call and the WebSocket handshake + Login/LoginAck (default 10 s) */
  dialTimeoutMs?: number;
  /** Ping interval when neither LoginAck nor the dispatcher says (default 30 s) */
  heartbeatIntervalMs?: number;
  /** the reconnect schedule until the dispatcher sends hints */
  backoff?: Partial<Backoff>;
  /** Sends awaiting their SendAck at once; more wait (default 256) */
  maxPending?: number;
  /** recent msg ids remembered to drop re-sent Delivers (default 4096) */
  dedupSize?: number;
}

/**
 * One de-duplicated Deliver. It is acknowledged to the node right after the
 * `message` listeners ran — except a broadcast room's (`broadcast`), which
 * needs no DeliverAck.
 */
export interface Message {
  msgId: string;
  fromUid: string;
  fromDevice: string;
  payload: Uint8Array;
  contentType: string;
  /** the sender's node's clock when it accepted the Send, ms since the epoch */
  sentAtMs: number;
  /** 1 unless the node had to re-send it */
  attempt: number;
  /** the node it came through */
  nodeId: string;
  /** the room it was published to (docs/protocol.md §13.4); '' for a one-to-one message */
  room: string;
  /**
   * a broadcast room's message: written once, never re-sent, not
   * acknowledged and not de-duplicated (a live room's traffic would push
   * the one-to-one ids out of the dedup window)
   */
  broadcast: boolean;
}

export type Outcome = 'DELIVERED' | 'PARTIAL' | 'OFFLINE' | 'FAILED' | 'STORED' | 'SENT' | 'UNKNOWN';

/** The node's answer to one Send, or UNKNOWN when there is none. */
export interface SendResult {
  /**
   * DELIVERED: every online device acknowledged; PARTIAL: some did;
   * OFFLINE: no device online, nothing delivered; FAILED: not delivered
   * (reason says why); STORED: handed to the app's backend for later;
   * SENT: a publish to a broadcast room, written once to `devices` member
   * connections, none acknowledges (docs/protocol.md §13.3);
   * UNKNOWN: no SendAck — the connection broke first (reason
   * CONNECTION_LOST), none came in time (SENDACK_TIMEOUT), the caller gave
   * up (ABORTED), or the node answered an outcome this SDK does not know
   * (UNKNOWN_OUTCOME). The message may or may not have been delivered; the
   * SDK never re-sends by itself.
   */
  outcome: Outcome;
  /** what the recipient sees as Message.msgId; empty when nothing was sent */
  msgId: string;
  /** online devices of the recipient (a publish: member connections), and how many acknowledged */
  devices: number;
  acked: number;
  /** a publish: the nodes where it reached a member (the sender's own when it holds other members); 0 for a send() */
  nodes: number;
  /** FAILED/PARTIAL: the wire ErrorCode name (DELIVERY_TIMEOUT, …); UNKNOWN: why */
  reason?: string;
  detail?: string;
  /** the node the Send went through */
  nodeId: string;
  /** the client_msg_id, unique for this client */
  clientMsgId: bigint;
}

export interface SendOptions {
  contentType?: string;
  /** gives up: before the Send was written it rejects (not sent); after, it resolves UNKNOWN/ABORTED */
  signal?: AbortSignal;
}

/** The node's answer to one join() or leave() (its RoomState, docs/protocol.md §13.2). */
export interface RoomResult {
  room: string;
  /** whether the connection is a member of room now */
  joined: boolean;
  /**
   * '' when the Join/Leave was done; otherwise why it was refused, the wire
   * ErrorCode name: BAD_REQUEST, ROOM_LIMIT, FORBIDDEN, UNAVAILABLE,
   * RATE_LIMITED (or the number of a code this SDK does not know)
   */
  code: string;
  /** the node's human-readable detail */
  message: string;
}

/** A change of the set of rooms the connection is in (Client.rooms). */
export interface RoomEvent {
  room: string;
  joined: boolean;
  /**
   * true: the app's backend joined the connection or took it out
   * (RoomState request_id 0); false: the answer to this client's join(),
   * leave() or rejoin after a reconnect, or the client closed
   */
  byBackend: boolean;
}

export type State = 'connecting' | 'online' | 'reconnecting' | 'closed';

export interface StateEvent {
  state: State;
  nodeId?: string;
  reason?: string;
}

export interface KickEvent {
  reason: 'REPLACED' | 'ADMIN' | 'UNSPECIFIED';
  detail: string;
  /** ADMIN with ban: the client has stopped and does not reconnect until the app calls connect() again. */
  banned: boolean;
}

export interface GoAwayEvent {
  reconnectAfterMs: number;
  reason: string;
}

export interface ClientEvents {
  message: (m: Message) => void;
  state: (s: StateEvent) => void;
  kick: (k: KickEvent) => void;
  goaway: (g: GoAwayEvent) => void;
  room: (r: RoomEvent) => void;
  error: (e: ImgateError) => void;
}

/** The endpoint answer of GET /v1/endpoint (docs/protocol.md §1.3). */
interface Endpoint {
  node_id: string;
  addr: string;
  url?: string;
  transport?: string;
  token: string;
  heartbeat_interval_ms?: number;
  idle_timeout_ms?: number;
  reconnect?: BackoffHints;
}

export const version = '0.1.0';

/** A payload must leave this much of max_frame_bytes for the Deliver's other fields (§6.4). */
const deliverRoom = 1024;
/** The exclude list sent to the dispatcher keeps the last few failed nodes. */
const maxExclude = 4;
/** What is read of a dispatcher answer. */
const maxDispatcherBody = 64 << 10;

/** A Send (or publish) from the caller until it is settled. */
interface SendJob {
  kind: 'send';
  id: bigint;
  to: string;
  /** a publish: the room, to is '' */
  room: string;
  payload: Uint8Array;
  contentType: string;
  signal: AbortSignal | undefined;
  resolve: (r: SendResult) => void;
  reject: (e: unknown) => void;
  nodeId: string;
  done: boolean;
}

/** A Join or Leave until the current connection answered it. */
interface RoomJob {
  kind: 'join' | 'leave';
  room: string;
  /** null: the client's own, repeating on a new connection what the backend did on the old one */
  resolve: ((r: RoomResult) => void) | null;
  reject: ((e: unknown) => void) | null;
  done: boolean;
}

type Job = SendJob | RoomJob;

type Timer = ReturnType<typeof setTimeout>;

/**
 * Client connects to the access node the dispatcher names, logs in, sends
 * and receives, and keeps the session up: heartbeats, dead-connection
 * detection, reconnects with backoff and `exclude`, GoAway moves, Kicks.
 *
 * ```ts
 * const c = new Client({ dispatcher: 'http://127.0.0.1:8080', uid: 'alice', device: 'tab-1' });
 * c.on('message', (m) => console.log(m.fromUid, new TextDecoder().decode(m.payload)));
 * await c.connect();
 * const r = await c.send('bob', new TextEncoder().encode('hi'), { contentType: 'text/plain' });
 * ```
 */
export class Client extends Emitter<ClientEvents> {
  private readonly opts: Required<Pick<ClientOptions, 'dispatcher' | 'uid' | 'device' | 'transport' | 'clientVersion' | 'dialTimeoutMs' | 'heartbeatIntervalMs' | 'maxPending'>> & ClientOptions;
  private readonly WS: WebSocketConstructor;
  private readonly fetchFn: FetchLike;
  private readonly dedup: Dedup;
  private backoff: Backoff;
  private heartbeatHintMs = 0;
  private nextId = 0n;
  /** the last Join/Leave request_id (never 0: 0 is the backend's RoomState) */
  private nextReq = 0n;
  /** the rooms the connection is in, kept across reconnects to join them again */
  private readonly roomSet = new Set<string>();
  /** the connection whose RoomStates the room set follows: the current one, or the one being set up */
  private roomConn: Conn | null = null;

  private cur: Conn | null = null;
  /** connections left after a GoAway, still collecting SendAcks and Delivers */
  private readonly old = new Set<Conn>();
  /** Sends, Joins and Leaves not written yet, in order */
  private readonly queue: Job[] = [];
  /** while true, new Sends wait: a GoAway move waits for the old connection's SendAcks (§8.2) */
  private moving = false;
  private stateNow: State | 'idle' = 'idle';
  /** the node of the last `online` event */
  private onlineNode: string | undefined;
  /** one per connect() … close()/stop: aborted to stop the run */
  private life: AbortController | null = null;
  /** wakes the supervisor */
  private wake: (() => void) | null = null;
  private runDone: Promise<void> = Promise.resolve();

  constructor(options: ClientOptions) {
    super();
    if (!options || !options.dispatcher) throw new TypeError('imgate: options.dispatcher is required');
    if (!options.uid) throw new TypeError('imgate: options.uid is required');
    if (!options.device) throw new TypeError('imgate: options.device is required');
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new TypeError('imgate: no WebSocket: pass options.WebSocket (in Node 20: `import { WebSocket } from "ws"`)');
    const f = options.fetch ?? (globalThis as { fetch?: FetchLike }).fetch;
    if (!f) throw new TypeError('imgate: no fetch: pass options.fetch');
    this.WS = WS;
    // A bare global fetch must be called with globalThis as this in browsers.
    this.fetchFn = options.fetch ? options.fetch : (u, i) => f.call(globalThis, u, i);
    const https = (globalThis as { location?: { protocol?: string } }).location?.protocol === 'https:';
    this.opts = {
      ...options,
      transport: options.transport ?? (https ? 'wss' : 'ws'),
      clientVersion: options.clientVersion ?? `imgate-ts/${version}`,
      dialTimeoutMs: positive(options.dialTimeoutMs, 10_000),
      heartbeatIntervalMs: positive(options.heartbeatIntervalMs, 30_000),
      maxPending: positive(options.maxPending, 256),
    };
    this.dedup = new Dedup(positive(options.dedupSize, 4096));
    this.backoff = mergeHints({ ...defaultBackoff }, {});
    const b = options.backoff ?? {};
    this.backoff = mergeHints(this.backoff, { base_ms: b.baseMs, factor: b.factor, jitter: b.jitter, max_ms: b.maxMs });
  }

  /** The node of the current connection (the last one while reconnecting). */
  get nodeId(): string | undefined {
    return this.cur?.nodeId;
  }

  /** The node's session id of the current connection. */
  get sessionId(): string | undefined {
    return this.cur?.sessionId;
  }

  /** The current state. */
  get state(): State | 'idle' {
    return this.stateNow;
  }

  /**
   * The rooms the connection is in, sorted: joined by join() or by the app's
   * backend, and kept while the client reconnects (it joins them again
   * before it is online). Empty once the client is closed.
   */
  get rooms(): string[] {
    return [...this.roomSet].sort();
  }

  /**
   * connect asks the dispatcher for a node, opens the WebSocket and
   * resolves once the node answered LoginAck. Temporary failures are
   * retried with backoff (each reported as an `error` event) until it
   * works, `signal` aborts or close() is called; a permanent failure
   * rejects at once and leaves the client closed. Calling connect() again
   * after the client closed (close(), Kick REPLACED, a permanent failure)
   * starts it anew; while it runs, connect() resolves when it is online.
   */
  async connect(opts: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.stateNow === 'online') return;
    if (this.life && this.stateNow !== 'closed') return this.waitOnline(opts.signal);
    const life = new AbortController();
    this.life = life;
    this.setState({ state: 'connecting' });
    const onAbort = (): void => life.abort();
    opts.signal?.addEventListener('abort', onAbort);
    try {
      const c = await this.connectLoop(life.signal, [], false, undefined);
      this.install(c);
    } catch (err) {
      if (this.life === life) {
        life.abort();
        this.finish(err instanceof ImgateError ? err : closedError(), false);
      }
      throw err;
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
    let stopped!: () => void;
    this.runDone = new Promise((r) => (stopped = r));
    void this.supervise(life).finally(stopped);
  }

  /**
   * send sends payload to every online device of uid `to` and resolves
   * with the node's SendAck — or outcome UNKNOWN when there will be none
   * (see SendResult). While the client reconnects, or moves after a
   * GoAway, the Send waits. It rejects (ImgateError, nothing sent) when
   * the client is closed or stops before the Send was written, for an empty
   * recipient, and for a payload above the node's limit
   * (max_frame_bytes − 1024).
   */
  send(to: string, payload: Uint8Array, opts: SendOptions = {}): Promise<SendResult> {
    if (!to) return Promise.reject(usage('empty_recipient', 'send: empty recipient'));
    return this.enqueueSend('send', to, '', payload, opts);
  }

  /**
   * publish sends payload to every member connection of room (docs/protocol.md
   * §13.3) but this one, and resolves with the node's SendAck like send():
   * DELIVERED when every member acknowledged, PARTIAL, FAILED (reason
   * NOT_MEMBER: this connection has not joined room), OFFLINE (no other
   * member), SENT (a broadcast room: written once, no acknowledgements),
   * or UNKNOWN; `nodes` counts the nodes holding members it reached. It
   * rejects like send(), and for a room id that is not 1–128 bytes of UTF-8
   * without control characters (code `bad_room`).
   */
  publish(room: string, payload: Uint8Array, opts: SendOptions = {}): Promise<SendResult> {
    const bad = roomIdProblem(room);
    if (bad) return Promise.reject(usage('bad_room', `publish: ${bad}`));
    return this.enqueueSend('publish', '', room, payload, opts);
  }

  /**
   * join makes the connection a member of room and resolves with the node's
   * answer: `joined` true and code '' when done (also when it already was
   * one); a refusal resolves too, with `joined` false (unless it was a
   * member already) and the reason in `code` (ROOM_LIMIT, FORBIDDEN,
   * BAD_REQUEST, UNAVAILABLE, RATE_LIMITED). While the client reconnects
   * the Join waits for the next connection; one written on a connection
   * that ends before its answer is written again on the next (a Join is
   * safe to repeat). It rejects (ImgateError) for a bad room id (code
   * `bad_room`, nothing sent), when the client is not connected or stops
   * first (kind `closed`), and when no answer comes within the SendAck
   * deadline (code `timeout`). The room stays joined across reconnects
   * until leave() (see `rooms`).
   */
  join(room: string): Promise<RoomResult> {
    return this.roomOp('join', room);
  }

  /**
   * leave ends the connection's membership of room, and the client's: it is
   * not joined again after a reconnect. It resolves with `joined` false and
   * code '' (leaving a room the connection is not in is no error), or
   * `joined` true with code RATE_LIMITED; it rejects like join().
   */
  leave(room: string): Promise<RoomResult> {
    return this.roomOp('leave', room);
  }

  private roomOp(kind: 'join' | 'leave', room: string): Promise<RoomResult> {
    const bad = roomIdProblem(room);
    if (bad) return Promise.reject(usage('bad_room', `${kind}: ${bad}`));
    if (!this.life || this.stateNow === 'closed' || this.stateNow === 'idle') {
      return Promise.reject(closedError(`${kind}: the client is not connected (call connect())`));
    }
    return new Promise<RoomResult>((resolve, reject) => {
      this.queue.push({ kind, room, resolve, reject, done: false });
      this.pump();
    });
  }

  private enqueueSend(what: 'send' | 'publish', to: string, room: string, payload: Uint8Array, opts: SendOptions): Promise<SendResult> {
    if (!(payload instanceof Uint8Array)) return Promise.reject(usage('bad_payload', `${what}: payload must be a Uint8Array`));
    if (!this.life || this.stateNow === 'closed' || this.stateNow === 'idle') {
      return Promise.reject(closedError(`${what}: the client is not connected (call connect())`));
    }
    if (opts.signal?.aborted) return Promise.reject(abortError());
    return new Promise<SendResult>((resolve, reject) => {
      this.nextId++;
      const job: SendJob = {
        kind: 'send', id: this.nextId, to, room, payload, contentType: opts.contentType ?? '', signal: opts.signal,
        resolve, reject, nodeId: '', done: false,
      };
      this.queue.push(job);
      if (opts.signal) {
        const sig = opts.signal;
        const onAbort = (): void => {
          const i = this.queue.indexOf(job);
          if (i >= 0) {
            this.queue.splice(i, 1);
            job.done = true;
            reject(abortError());
          }
        };
        sig.addEventListener('abort', onAbort, { once: true });
      }
      this.pump();
    });
  }

  /**
   * close shuts every connection down gracefully (the DeliverAcks written
   * so far leave first), rejects the Sends not written yet, settles the
   * ones in flight as UNKNOWN, and resolves when the sockets are closed
   * (about a second at most). The client stays usable: connect() again.
   */
  async close(): Promise<void> {
    const life = this.life;
    if (!life) return;
    life.abort();
    this.wake?.();
    const conns = [this.cur, ...this.old].filter((c): c is Conn => c !== null);
    await Promise.all(conns.map((c) => c.shutdown('closed')));
    await this.runDone;
    if (this.life === life) this.finish(closedError(), true);
  }

  // ---- the supervisor ----------------------------------------------------

  /**
   * supervise owns the current connection's lifecycle: it reconnects after a
   * drop and moves after a GoAway, until life is aborted or the client
   * stops for good (Kick REPLACED, a permanent failure).
   */
  private async supervise(life: AbortController): Promise<void> {
    while (!life.signal.aborted) {
      const c = this.cur!;
      if (c.closedWhy === null && !c.goneAway) {
        await new Promise<void>((r) => (this.wake = r));
        this.wake = null;
        continue;
      }
      if (life.signal.aborted) break;
      try {
        if (c.closedWhy !== null) {
          await this.reconnect(life, c);
        } else {
          await this.move(life, c);
        }
      } catch (err) {
        if (!life.signal.aborted && this.life === life) {
          life.abort();
          const e = err instanceof ImgateError ? err : networkError('internal', String(err));
          this.emitError(e);
          this.finish(e, false);
        }
        return;
      }
    }
  }

  /** reconnect replaces the lost connection c (§8.3). */
  private async reconnect(life: AbortController, c: Conn): Promise<void> {
    const why = c.closedWhy;
    const cause = why instanceof ImgateError ? why : undefined;
    if (cause?.kind === 'kicked') {
      const banned = cause.code === 'ADMIN' && !cause.temporary;
      this.emitEvent('kick', { reason: kickReason(cause.code), detail: cause.detail ?? '', banned }, (e) => this.listenerThrew(e));
      if (cause.code === 'REPLACED' || banned) {
        // Never reconnect by ourselves: two copies of one device would
        // evict each other; a banned user stays out until the app says so.
        life.abort();
        this.finish(cause, false);
        return;
      }
    } else if (cause) {
      this.emitError(cause);
    }
    this.setState({ state: 'reconnecting', nodeId: c.nodeId, reason: cause?.message ?? 'connection lost' });
    const next = await this.connectLoop(life.signal, [c.nodeId], true, cause);
    this.install(next);
  }

  /**
   * move handles a GoAway on c (§8.2): after reconnect_after_ms, and once
   * every Send written on c has its SendAck (bounded by the SendAck
   * deadline), log in elsewhere with c excluded; meanwhile new Sends wait,
   * so none is written on c that the new login's Kick REPLACED could leave
   * without an answer, and a sender's messages keep their order across the
   * move. c keeps acknowledging Delivers until the new connection is up.
   */
  private async move(life: AbortController, c: Conn): Promise<void> {
    this.moving = true;
    try {
      await this.sleepUnless(life.signal, c.goAwayAfterMs, () => c.closedWhy !== null);
      // Joins and Leaves in flight too: their answers on c would not count
      // once the new connection is set up (they would be written again).
      const busy = (): boolean => c.pending.size > 0 || c.roomWaits.size > 0;
      const deadline = Date.now() + c.sendAckTimeoutMs;
      while (busy() && c.closedWhy === null && !life.signal.aborted && Date.now() < deadline) {
        await this.sleepUnless(life.signal, Math.min(50, deadline - Date.now()), () => !busy() || c.closedWhy !== null);
      }
      if (life.signal.aborted) return;
      if (c.closedWhy !== null) {
        const w = c.closedWhy;
        if (w instanceof ImgateError && w.kind === 'kicked' && w.code === 'REPLACED') {
          // Replaced before we logged in anywhere: another login of this device.
          return this.reconnect(life, c);
        }
      }
      const lostFirst = c.closedWhy !== null;
      if (lostFirst) {
        const w = c.closedWhy;
        this.setState({ state: 'reconnecting', nodeId: c.nodeId, reason: w instanceof ImgateError ? w.message : 'connection lost' });
      }
      // From here a Kick REPLACED on c is most likely our own new login: it ends the move, not the client.
      this.old.add(c);
      const next = await this.connectLoop(life.signal, [c.nodeId], lostFirst, undefined);
      this.moving = false;
      this.install(next);
      void c.shutdown('moved').then(() => this.old.delete(c));
    } finally {
      this.moving = false;
    }
  }

  /** install makes c the connection Sends go to. */
  private install(c: Conn): void {
    this.cur = c;
    this.roomConn = c;
    this.setState({ state: 'online', nodeId: c.nodeId });
    this.pump();
  }

  /**
   * connectLoop asks the dispatcher and logs in until it works, a failure
   * is permanent, or signal aborts. Failed nodes are added to exclude (the
   * last maxExclude kept); no_node clears it so a one-node fleet comes
   * back. waitFirst waits one backoff step first, so that the clients of a
   * dead node spread out.
   */
  private async connectLoop(signal: AbortSignal, exclude0: string[], waitFirst: boolean, cause: ImgateError | undefined): Promise<Conn> {
    let exclude = [...exclude0];
    let retry = 0;
    let last = cause;
    let wait = waitFirst;
    for (;;) {
      if (wait) {
        retry++;
        const delay = Math.max(backoffDelay(this.backoff, retry), last?.retryAfterMs ?? 0);
        if (retry > 1 || waitFirst) this.setState({ state: this.stateNow === 'connecting' ? 'connecting' : 'reconnecting', ...(this.cur ? { nodeId: this.cur.nodeId } : {}), reason: last?.message ?? 'reconnecting' });
        await this.sleepUnless(signal, delay, () => false);
      }
      if (signal.aborted) throw closedError();
      wait = true;
      let node = '';
      try {
        const ep = await this.endpoint(signal, exclude);
        node = ep.node_id;
        this.backoff = mergeHints(this.backoff, ep.reconnect);
        if (ep.heartbeat_interval_ms && ep.heartbeat_interval_ms > 0) this.heartbeatHintMs = ep.heartbeat_interval_ms;
        const c = await this.dialNode(signal, ep);
        await this.rejoin(c, signal);
        return c;
      } catch (err) {
        if (signal.aborted) throw closedError();
        const e = err instanceof ImgateError ? err : networkError('connect_failed', String(err), node || undefined, err);
        if (!e.temporary) throw e;
        this.emitError(e);
        last = e;
        if (e.kind === 'dispatcher' && e.code === 'no_node') {
          exclude = [];
        } else if (node && !exclude.includes(node)) {
          exclude.push(node);
          if (exclude.length > maxExclude) exclude = exclude.slice(exclude.length - maxExclude);
        }
      }
    }
  }

  /** endpoint calls GET /v1/endpoint (docs/protocol.md §1.3). */
  private async endpoint(signal: AbortSignal, exclude: string[]): Promise<Endpoint> {
    const q = new URLSearchParams();
    q.set('uid', this.opts.uid);
    q.set('device', this.opts.device);
    q.set('transport', this.opts.transport);
    if (this.opts.region) q.set('region', this.opts.region);
    if (exclude.length > 0) q.set('exclude', exclude.join(','));
    const u = this.opts.dispatcher.replace(/\/+$/, '') + '/v1/endpoint?' + q.toString();
    const headers: Record<string, string> = { Accept: 'application/json' };
    const tok = typeof this.opts.authToken === 'function' ? await this.opts.authToken() : this.opts.authToken;
    if (tok) headers['Authorization'] = 'Bearer ' + tok;
    const ac = new AbortController();
    const onAbort = (): void => ac.abort();
    signal.addEventListener('abort', onAbort);
    const t = setTimeout(() => ac.abort(), this.opts.dialTimeoutMs);
    let status: number;
    let body: string;
    let retryAfter: string | null;
    try {
      const resp = await this.fetchFn(u, { method: 'GET', headers, signal: ac.signal });
      status = resp.status;
      retryAfter = resp.headers.get('Retry-After');
      body = (await resp.text()).slice(0, maxDispatcherBody);
    } catch (err) {
      const timedOut = ac.signal.aborted && !signal.aborted;
      throw networkError(timedOut ? 'timeout' : 'dispatcher_unreachable', `dispatcher: ${timedOut ? `no answer within ${this.opts.dialTimeoutMs} ms` : String(err)}`, undefined, err);
    } finally {
      clearTimeout(t);
      signal.removeEventListener('abort', onAbort);
    }
    if (status < 200 || status > 299) throw dispatcherError(status, retryAfter, body);
    let ep: Endpoint;
    try {
      ep = JSON.parse(body) as Endpoint;
    } catch (err) {
      throw new ImgateError({ kind: 'protocol', code: 'bad_endpoint', message: 'dispatcher: the endpoint answer is not JSON', temporary: true, cause: err });
    }
    if (!ep || typeof ep.addr !== 'string' || !ep.addr || typeof ep.token !== 'string' || !ep.token) {
      throw new ImgateError({ kind: 'protocol', code: 'bad_endpoint', message: 'dispatcher: endpoint answer without addr or token', temporary: true });
    }
    if ((ep.transport || 'tcp') !== this.opts.transport) {
      throw new ImgateError({ kind: 'protocol', code: 'wrong_transport', message: `dispatcher: transport "${ep.transport ?? ''}", this client asked for ${this.opts.transport}`, temporary: true });
    }
    return ep;
  }

  private dialNode(signal: AbortSignal, ep: Endpoint): Promise<Conn> {
    // A dispatcher without the url field: the path is fixed (§2.2).
    const url = ep.url || `${this.opts.transport}://${ep.addr}/v1/ws`;
    const events: ConnEvents = {
      deliver: (c, d) => this.onDeliver(c, d),
      goAway: (c, g) => this.onGoAway(c, g),
      serverError: (_c, e) => this.emitError(e),
      closed: (c, why) => this.onClosed(c, why),
      settled: () => this.pump(),
      roomState: (c, rs) => this.onBackendRoom(c, rs),
    };
    return Conn.dial({
      url, nodeId: ep.node_id, token: ep.token, uid: this.opts.uid, device: this.opts.device,
      clientVersion: this.opts.clientVersion, heartbeatHintMs: this.heartbeatHintMs,
      dialTimeoutMs: this.opts.dialTimeoutMs, heartbeatMs: this.opts.heartbeatIntervalMs,
      ...(this.opts.sendAckTimeoutMs !== undefined ? { sendAckTimeoutMs: this.opts.sendAckTimeoutMs } : {}),
      WebSocket: this.WS, signal,
    }, events);
  }

  // ---- connection events ---------------------------------------------------

  private onDeliver(c: Conn, d: Deliver): void {
    const id = d.msgId;
    if (!id) return;
    if (d.broadcast) {
      // At most once, never re-sent: no DeliverAck, nothing to de-duplicate.
      this.emitEvent('message', messageOf(c, d), (e) => this.listenerThrew(e));
      return;
    }
    if (this.dedup.has(id)) {
      c.ack(id); // a re-send: the node did not get our ACK, or sent before it did
      return;
    }
    this.dedup.add(id);
    this.emitEvent('message', messageOf(c, d), (e) => this.listenerThrew(e));
    c.ack(id);
  }

  private onGoAway(c: Conn, g: GoAway): void {
    c.goAwayAfterMs = g.reconnectAfterMs;
    this.emitEvent('goaway', { reconnectAfterMs: g.reconnectAfterMs, reason: g.reason }, (e) => this.listenerThrew(e));
    if (c === this.cur) this.wake?.();
  }

  private onClosed(c: Conn, why: ImgateError | CloseReason): void {
    // Only the current connection's end matters to the supervisor; an old
    // connection of a move ending (Kick REPLACED by our own new login, or
    // the node closing it) is the normal end of the move.
    if (c === this.cur && typeof why !== 'string') this.wake?.();
    this.pump();
  }

  // ---- sending ---------------------------------------------------------------

  /** pump writes waiting Sends on the current connection while it can take them. */
  private pump(): void {
    const c = this.cur;
    while (this.queue.length > 0 && c && c.isOpen && !this.moving) {
      const head = this.queue[0]!;
      if (head.done) {
        this.queue.shift();
        continue;
      }
      if (head.kind !== 'send') {
        this.queue.shift();
        if (!this.writeRoom(c, head)) {
          this.queue.unshift(head);
          return;
        }
        continue;
      }
      if (c.pending.size >= this.opts.maxPending) return;
      const job = this.queue.shift() as SendJob;
      const limit = c.maxFrame - deliverRoom;
      if (job.payload.byteLength > limit) {
        job.done = true;
        job.reject(usage('payload_too_large', `send: payload of ${job.payload.byteLength} bytes, limit ${limit}`));
        continue;
      }
      const frame = encode('send', { clientMsgId: job.id, toUid: job.to, room: job.room, payload: job.payload, contentType: job.contentType });
      if (frame.byteLength > c.maxFrame) {
        job.done = true;
        job.reject(usage('payload_too_large', `send: frame of ${frame.byteLength} bytes, limit ${c.maxFrame}`));
        continue;
      }
      job.nodeId = c.nodeId;
      const inflight = this.track(c, job);
      c.pending.set(job.id, inflight);
      if (!c.write(frame)) {
        // not written: try the next connection
        c.pending.delete(job.id);
        inflight.cancelTimer();
        this.queue.unshift(job);
        return;
      }
    }
  }

  // ---- rooms -----------------------------------------------------------------

  /** writeRoom writes job's Join or Leave on c; false when c cannot take it. */
  private writeRoom(c: Conn, job: RoomJob): boolean {
    const id = ++this.nextReq;
    // The answer cannot come before the write returns; a write that fails
    // ends c, which must not find this job waiting (it is still the caller's).
    if (!c.write(encode(job.kind, { requestId: id, room: job.room }))) return false;
    const timer = setTimeout(() => {
      if (!c.roomWaits.delete(id) || job.done) return;
      job.done = true;
      job.reject?.(networkError('timeout', `${job.kind} ${JSON.stringify(job.room)}: no answer from node ${c.nodeId} within ${c.sendAckTimeoutMs} ms`, c.nodeId));
    }, c.sendAckTimeoutMs);
    c.roomWaits.set(id, (rs) => {
      clearTimeout(timer);
      this.roomAnswered(c, job, rs);
    });
    return true;
  }

  /**
   * roomAnswered settles job with rs, c's answer. An answer that does not
   * come (c ended first), or comes from a connection the room set no
   * longer follows (the old one of a move), says nothing of the current
   * connection: the Join or Leave is written again there.
   */
  private roomAnswered(c: Conn, job: RoomJob, rs: RoomState | null): void {
    if (job.done) return;
    if (rs === null || c !== this.roomConn) {
      if (!this.life || this.life.signal.aborted) {
        job.done = true;
        job.reject?.(closedError(`${job.kind}: the client closed before the node answered`));
        return;
      }
      this.queue.unshift(job);
      this.pump();
      return;
    }
    job.done = true;
    this.applyRoom(job.room, rs.joined, false);
    job.resolve?.({ room: job.room, joined: rs.joined, code: rs.code === 0 ? '' : errorCodeName(rs.code), message: rs.message });
  }

  /** onBackendRoom is a RoomState with request_id 0: the app's backend changed c's rooms. */
  private onBackendRoom(c: Conn, rs: RoomState): void {
    if (!rs.room) return;
    if (c === this.roomConn) {
      this.applyRoom(rs.room, rs.joined, true);
      return;
    }
    if (c.closedWhy !== null || !this.life || this.life.signal.aborted) return;
    // The old connection of a move, after the new one took its rooms: the
    // backend meant this device, so do the same on the new connection.
    this.applyRoom(rs.room, rs.joined, true);
    this.queue.push({ kind: rs.joined ? 'join' : 'leave', room: rs.room, resolve: null, reject: null, done: false });
    this.pump();
  }

  /**
   * rejoin joins c, just logged in, to every room of the set before c
   * becomes the current connection (docs/protocol.md §13.1); a refused
   * room leaves the set. It fails — the caller dials again — when c ends
   * first or does not answer within the dial timeout.
   */
  private rejoin(c: Conn, signal: AbortSignal): Promise<void> {
    this.roomConn = c;
    const rooms = [...this.roomSet].sort();
    if (rooms.length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      let left = rooms.length;
      const onAbort = (): void => c.abort('closed');
      const timer = setTimeout(() => {
        c.abort(networkError('timeout', `rejoin on node ${c.nodeId}: ${left} of ${rooms.length} rooms unanswered after ${this.opts.dialTimeoutMs} ms`, c.nodeId));
      }, this.opts.dialTimeoutMs);
      signal.addEventListener('abort', onAbort);
      const end = (err?: ImgateError): void => {
        if (left < 0) return;
        left = -1;
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve();
      };
      const lost = (): ImgateError => {
        const w = c.closedWhy;
        if (w instanceof ImgateError) return w;
        if (w === 'closed' || signal.aborted) return closedError();
        return networkError('connection_closed', `node ${c.nodeId}: the connection ended during the rejoin`, c.nodeId);
      };
      // A refusal for a while (RATE_LIMITED, UNAVAILABLE) is asked again
      // after 100 ms, 200 ms, …, within the dial timeout; any other answer
      // settles the room (a refused one leaves the set).
      const ask = (room: string, retryMs: number): void => {
        if (left < 0) return;
        const id = ++this.nextReq;
        if (!c.write(encode('join', { requestId: id, room }))) {
          c.abort(networkError('write_failed', `rejoin on node ${c.nodeId}: the connection cannot take a Join`, c.nodeId));
          end(lost());
          return;
        }
        c.roomWaits.set(id, (rs) => {
          if (rs === null) {
            end(lost());
            return;
          }
          if (!rs.joined && rs.code !== 0 && isTemporaryCode(errorCodeName(rs.code))) {
            setTimeout(() => ask(room, retryMs * 2), retryMs);
            return;
          }
          this.applyRoom(room, rs.joined, false);
          if (--left === 0) end();
        });
      };
      for (const room of rooms) ask(room, 100);
    });
  }

  /** applyRoom records that the connection is (or is not) in room, with a `room` event when that changes. */
  private applyRoom(room: string, joined: boolean, byBackend: boolean): void {
    if (joined === this.roomSet.has(room)) return;
    if (joined) this.roomSet.add(room);
    else this.roomSet.delete(room);
    this.emitEvent('room', { room, joined, byBackend }, (e) => this.listenerThrew(e));
  }

  /** track builds the InFlight of job on c, with its SendAck deadline and abort. */
  private track(c: Conn, job: SendJob): InFlight & { cancelTimer(): void } {
    let timer: Timer | undefined;
    let onAbort: (() => void) | undefined;
    const settle = (ack: SendAck | null, why?: ImgateError | 'timeout' | 'aborted'): void => {
      if (job.done) return;
      job.done = true;
      if (timer !== undefined) clearTimeout(timer);
      if (onAbort) job.signal?.removeEventListener('abort', onAbort);
      job.resolve(ack ? resultOf(job, ack) : unknown(job, why));
    };
    timer = setTimeout(() => {
      if (c.pending.delete(job.id)) {
        settle(null, 'timeout');
        this.pump();
      }
    }, c.sendAckTimeoutMs);
    if (job.signal) {
      onAbort = () => {
        if (c.pending.delete(job.id)) {
          settle(null, 'aborted');
          this.pump();
        }
      };
      job.signal.addEventListener('abort', onAbort, { once: true });
    }
    return { settle, cancelTimer: () => clearTimeout(timer) };
  }

  // ---- helpers ---------------------------------------------------------------

  /** finish stops the client: Sends not written are rejected, the state is closed. */
  private finish(why: ImgateError, byClose: boolean): void {
    for (const c of [this.cur, ...this.old]) c?.abort('closed');
    this.old.clear();
    const q = this.queue.splice(0);
    const err = byClose ? closedError() : why;
    for (const j of q) {
      if (!j.done) {
        j.done = true;
        j.reject?.(err);
      }
    }
    this.moving = false;
    this.roomConn = null;
    for (const room of [...this.roomSet].sort()) this.applyRoom(room, false, false);
    this.setState({ state: 'closed', ...(this.cur ? { nodeId: this.cur.nodeId } : {}), reason: byClose ? 'closed' : why.kind === 'kicked' ? why.code : why.message });
  }

  private setState(s: StateEvent): void {
    // online → online is a GoAway move that landed on another node: an
    // event too, so that a UI showing the node follows it.
    if (s.state === this.stateNow && s.state !== 'reconnecting' && !(s.state === 'online' && s.nodeId !== this.onlineNode)) return;
    this.stateNow = s.state;
    if (s.state === 'online') this.onlineNode = s.nodeId;
    this.emitEvent('state', s, (e) => this.listenerThrew(e));
  }

  private waitOnline(signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const off = this.on('state', (s) => {
        if (s.state === 'online') {
          off();
          resolve();
        } else if (s.state === 'closed') {
          off();
          reject(closedError(s.reason ?? 'closed'));
        }
      });
      signal?.addEventListener('abort', () => {
        off();
        reject(abortError());
      }, { once: true });
    });
  }

  /** sleepUnless waits ms, or less when signal aborts, or when stop() turns true (checked every 50 ms). */
  private sleepUnless(signal: AbortSignal, ms: number, stop: () => boolean): Promise<void> {
    return new Promise((resolve) => {
      if (signal.aborted || ms <= 0 || stop()) {
        resolve();
        return;
      }
      const end = Date.now() + ms;
      let t: Timer;
      const finish = (): void => {
        clearTimeout(t);
        signal.removeEventListener('abort', finish);
        resolve();
      };
      const tick = (): void => {
        if (stop() || Date.now() >= end) finish();
        else t = setTimeout(tick, Math.min(50, end - Date.now()));
      };
      signal.addEventListener('abort', finish);
      t = setTimeout(tick, Math.min(50, ms));
    });
  }

  private emitError(e: ImgateError): void {
    this.emitEvent('error', e, () => undefined);
  }

  private listenerThrew(err: unknown): void {
    this.emitError(new ImgateError({ kind: 'usage', code: 'listener_threw', message: `an event listener threw: ${String(err)}`, temporary: true, cause: err }));
  }
}

function messageOf(c: Conn, d: Deliver): Message {
  return {
    msgId: d.msgId, fromUid: d.fromUid, fromDevice: d.fromDevice, payload: d.payload,
    contentType: d.contentType, sentAtMs: Number(d.sentAtMs), attempt: d.attempt, nodeId: c.nodeId,
    room: d.room, broadcast: d.broadcast,
  };
}

const knownOutcomes = new Set(['DELIVERED', 'PARTIAL', 'OFFLINE', 'FAILED', 'STORED', 'SENT']);

function resultOf(job: SendJob, a: SendAck): SendResult {
  const name = outcomeName(a.outcome);
  const known = knownOutcomes.has(name);
  const r: SendResult = {
    outcome: known ? (name as Outcome) : 'UNKNOWN', msgId: a.msgId, devices: a.devices, acked: a.acked, nodes: a.nodes,
    nodeId: job.nodeId, clientMsgId: job.id,
  };
  if (!known) {
    r.reason = 'UNKNOWN_OUTCOME';
    r.detail = `the node answered outcome ${a.outcome}`;
  } else if (a.reason !== 0) {
    r.reason = errorCodeName(a.reason);
  }
  if (a.detail) r.detail = a.detail;
  return r;
}

function unknown(job: SendJob, why: ImgateError | 'timeout' | 'aborted' | undefined): SendResult {
  const r: SendResult = { outcome: 'UNKNOWN', msgId: '', devices: 0, acked: 0, nodes: 0, nodeId: job.nodeId, clientMsgId: job.id };
  if (why === 'timeout') {
    r.reason = 'SENDACK_TIMEOUT';
    r.detail = 'no SendAck in time';
  } else if (why === 'aborted') {
    r.reason = 'ABORTED';
    r.detail = 'the caller gave up after the Send was written';
  } else {
    r.reason = 'CONNECTION_LOST';
    r.detail = why?.message ?? 'the connection closed before the SendAck';
  }
  return r;
}

function kickReason(code: string): KickEvent['reason'] {
  return code === 'REPLACED' || code === 'ADMIN' ? code : 'UNSPECIFIED';
}

function positive(v: number | undefined, def: number): number {
  return v !== undefined && v > 0 ? v : def;
}

function usage(code: string, message: string): ImgateError {
  return new ImgateError({ kind: 'usage', code, message, temporary: false });
}

function abortError(): ImgateError {
  return new ImgateError({ kind: 'usage', code: 'aborted', message: 'aborted before the Send was written (not sent)', temporary: false });
}
