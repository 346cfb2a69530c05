// End-to-end tests of the SDK's rooms (docs/protocol.md §13) against the
// real binaries: a 2-node fleet of its own, whose nodes make a room of more
// than 3 member connections a broadcast room and allow 3 rooms per
// connection, so that both kinds and ROOM_LIMIT are cheap to reach.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { WebSocket } from 'ws';

import { Client, type RoomEvent } from '../src/index.js';
import type { RoomState } from '../src/gen/wirepb/frame_pb.js';
import { decode, encode } from '../src/wire.js';
import { Fleet, dec, enc, newClient, until, type TestClient } from './harness.js';

const ackedMax = 3;
const maxPerConn = 3;
const pushToken = 'ts-fleet-push-token';

let fleet: Fleet;
const open: TestClient[] = [];

before(async () => {
  fleet = await Fleet.start({ nodes: 2, nodeArgs: `--room-acked-max ${ackedMax} --room-max-per-conn ${maxPerConn}` });
});

after(async () => {
  await Promise.all(open.map((t) => t.c.close()));
  await fleet?.stop();
});

/** What a tapped client wrote and read on the wire. */
interface Tap {
  sockets: WebSocket[];
  /** DeliverAcks written, by msg id */
  acks: string[];
  /** Joins written: [socket index, room] */
  joins: [number, string][];
  /** RoomStates read: [socket index, frame] */
  roomStates: [number, RoomState][];
  /** rewrites the room of a Join about to be written on socket i */
  joinRoom?: (i: number, room: string) => string;
}

function tapped(tap: Tap) {
  return class Tapped extends WebSocket {
    private readonly i: number;
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols);
      this.i = tap.sockets.length;
      tap.sockets.push(this);
      this.addEventListener('message', (ev) => {
        if (!(ev.data instanceof ArrayBuffer)) return;
        const f = decode(new Uint8Array(ev.data));
        if (f.body.case === 'roomState') tap.roomStates.push([this.i, f.body.value]);
      });
    }

    override send(data: never, ...rest: never[]): void {
      const f = decode(data as Uint8Array);
      if (f.body.case === 'deliverAck') tap.acks.push(f.body.value.msgId);
      if (f.body.case === 'join') {
        tap.joins.push([this.i, f.body.value.room]);
        const room = tap.joinRoom?.(this.i, f.body.value.room);
        if (room !== undefined && room !== f.body.value.room) {
          data = encode('join', { requestId: f.body.value.requestId, room }) as never;
        }
      }
      (super.send as (...a: unknown[]) => void)(data, ...rest);
    }
  };
}

function newTap(): Tap {
  return { sockets: [], acks: [], joins: [], roomStates: [] };
}

interface RoomClient extends TestClient {
  roomEvents: RoomEvent[];
  tap: Tap;
}

async function connected(uid: string, device: string, node: string): Promise<RoomClient> {
  const tap = newTap();
  const t = newClient(fleet.dispatcher, uid, device, { WebSocket: tapped(tap) }) as RoomClient;
  t.tap = tap;
  t.roomEvents = [];
  t.c.on('room', (r) => t.roomEvents.push(r));
  open.push(t);
  await fleet.only(node, () => t.c.connect());
  assert.equal(t.c.nodeId, node, `${uid} should be on ${node}`);
  return t;
}

/** roomInfo is the dispatcher's GET /v1/rooms/{room} (docs/operations.md). */
async function roomInfo(room: string): Promise<{ members: number; incomplete: boolean; broadcast: boolean }> {
  const resp = await fetch(`${fleet.dispatcher}/v1/rooms/${encodeURIComponent(room)}`, { headers: { Authorization: `Bearer ${pushToken}` } });
  assert.equal(resp.status, 200, await resp.clone().text());
  return (await resp.json()) as { members: number; incomplete: boolean; broadcast: boolean };
}

/** members waits until the room's home counts n member connections over the fleet. */
async function members(room: string, n: number): Promise<void> {
  const end = Date.now() + 15_000;
  for (;;) {
    const info = await roomInfo(room);
    if (info.members === n && !info.incomplete) return;
    if (Date.now() > end) throw new Error(`room ${room}: ${JSON.stringify(info)}, want ${n} members`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function backend(room: string, what: 'join' | 'leave', uids: string[]): Promise<{ changed: number }> {
  const resp = await fetch(`${fleet.dispatcher}/v1/rooms/${encodeURIComponent(room)}/${what}`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${pushToken}` },
    body: JSON.stringify({ uids }),
  });
  assert.equal(resp.status, 200, await resp.clone().text());
  return (await resp.json()) as { changed: number };
}

const show = (r: unknown): string => JSON.stringify(r, (_k, v) => (typeof v === 'bigint' ? String(v) : v));

describe('rooms against the real fleet', () => {
  it('publishes to every other member on both nodes, once each, until one leaves', async () => {
    const room = 'team/go';
    const ann = await connected('ann', 'tab-1', 'node-1');
    const ben = await connected('ben', 'tab-1', 'node-2');
    const cat = await connected('cat', 'tab-1', 'node-1');
    for (const t of [ann, ben, cat]) {
      const r = await t.c.join(room);
      assert.deepEqual(r, { room, joined: true, code: '', message: '' });
      assert.deepEqual(t.c.rooms, [room]);
      assert.deepEqual(t.roomEvents, [{ room, joined: true, byBackend: false }]);
    }
    // joining again is no change
    assert.equal((await ann.c.join(room)).joined, true);
    assert.equal(ann.roomEvents.length, 1);
    await members(room, 3);

    const r = await ann.c.publish(room, enc('hello room'), { contentType: 'text/plain' });
    assert.equal(r.outcome, 'DELIVERED', show(r));
    assert.equal(r.devices, 2);
    assert.equal(r.acked, 2);
    assert.equal(r.nodes, 2);
    assert.equal(r.nodeId, 'node-1');
    assert.ok(r.msgId);
    for (const t of [ben, cat]) {
      await until(`${t.c.nodeId} member to get it`, 10_000, () => t.messages.length === 1);
      const m = t.messages[0]!;
      assert.equal(m.msgId, r.msgId);
      assert.equal(m.room, room);
      assert.equal(m.broadcast, false);
      assert.equal(m.fromUid, 'ann');
      assert.equal(dec(m.payload), 'hello room');
      assert.equal(m.contentType, 'text/plain');
      assert.ok(t.tap.acks.includes(r.msgId), 'an acknowledged room message is acknowledged');
    }
    assert.equal(ann.messages.length, 0, 'the publisher does not get its own message');

    // one-to-one messages still say room '' and broadcast false
    const d = await ben.c.send('cat', enc('direct'));
    assert.equal(d.outcome, 'DELIVERED');
    assert.equal(d.nodes, 0);
    await until('cat to get the direct message', 10_000, () => cat.messages.length === 2);
    assert.equal(cat.messages[1]!.room, '');
    assert.equal(cat.messages[1]!.broadcast, false);

    const left = await ben.c.leave(room);
    assert.deepEqual(left, { room, joined: false, code: '', message: '' });
    assert.deepEqual(ben.c.rooms, []);
    assert.deepEqual(ben.roomEvents.at(-1), { room, joined: false, byBackend: false });
    await members(room, 2);
    const r2 = await ann.c.publish(room, enc('after ben left'));
    assert.equal(r2.outcome, 'DELIVERED', show(r2));
    assert.equal(r2.devices, 1);
    assert.equal(r2.nodes, 1);
    await until('cat to get the second', 10_000, () => cat.messages.length === 3);
    assert.equal(dec(cat.messages[2]!.payload), 'after ben left');

    // ben is no member now: NOT_MEMBER, and nothing reached anyone
    const nm = await ben.c.publish(room, enc('not a member'));
    assert.equal(nm.outcome, 'FAILED');
    assert.equal(nm.reason, 'NOT_MEMBER');
    assert.equal(nm.msgId, '');
    assert.equal(ben.messages.length, 1);
    const r3 = await ann.c.publish(room, enc('last'));
    assert.equal(r3.outcome, 'DELIVERED');
    await until('cat to get the last', 10_000, () => cat.messages.length === 4);
    assert.equal(ben.messages.length, 1, 'ben got nothing after leaving');
    // leaving a room one is not in is no error
    assert.deepEqual(await ben.c.leave('never-joined'), { room: 'never-joined', joined: false, code: '', message: '' });
    assert.equal(ben.roomEvents.length, 2);
  });

  it('rejects a bad room id locally, and room calls before connect()', async () => {
    const dan = await connected('dan', 'tab-1', 'node-2');
    const joinsBefore = dan.tap.joins.length;
    const bad = ['', 'x'.repeat(129), 'é'.repeat(65), 'a\nb', 'tab\there', 'del\u007f', 'c1\u0085', 'lone\ud800'];
    for (const room of bad) {
      for (const call of [() => dan.c.join(room), () => dan.c.leave(room), () => dan.c.publish(room, enc('x'))]) {
        await assert.rejects(call(), (e: Error & { kind?: string; code?: string }) => e.kind === 'usage' && e.code === 'bad_room', JSON.stringify(room));
      }
    }
    assert.equal(dan.tap.joins.length, joinsBefore, 'nothing was written');
    // the longest ids are fine: 128 bytes, in ASCII or in 2-byte UTF-8
    for (const room of ['x'.repeat(128), 'é'.repeat(64)]) {
      assert.equal((await dan.c.join(room)).joined, true);
      assert.equal((await dan.c.leave(room)).joined, false);
    }
    const idle = new Client({ dispatcher: fleet.dispatcher, uid: 'dan', device: 'tab-2', WebSocket });
    await assert.rejects(idle.join('r'), (e: Error & { kind?: string }) => e.kind === 'closed');
    await assert.rejects(idle.leave('r'), (e: Error & { kind?: string }) => e.kind === 'closed');
    await assert.rejects(idle.publish('r', enc('x')), (e: Error & { kind?: string }) => e.kind === 'closed');
    assert.deepEqual(idle.rooms, []);
  });

  it('answers a join beyond the rooms per connection ROOM_LIMIT, not joined', async () => {
    const eve = await connected('eve', 'tab-1', 'node-1');
    for (let i = 1; i <= maxPerConn; i++) assert.equal((await eve.c.join(`lim-${i}`)).joined, true);
    const r = await eve.c.join('lim-over');
    assert.equal(r.joined, false);
    assert.equal(r.code, 'ROOM_LIMIT');
    assert.ok(r.message);
    assert.deepEqual(eve.c.rooms, ['lim-1', 'lim-2', 'lim-3']);
    assert.ok(!eve.roomEvents.some((e) => e.room === 'lim-over'));
    for (let i = 1; i <= maxPerConn; i++) await eve.c.leave(`lim-${i}`);
    assert.deepEqual(eve.c.rooms, []);
  });

  it('writes a broadcast room message once, SENT, and does not acknowledge it', async () => {
    const room = 'live';
    const ts = [
      await connected('fay', 'tab-1', 'node-1'),
      await connected('gus', 'tab-1', 'node-2'),
      await connected('hal', 'tab-1', 'node-1'),
      await connected('ida', 'tab-1', 'node-2'),
    ];
    for (const t of ts) assert.equal((await t.c.join(room)).joined, true);
    await members(room, ackedMax + 1);
    assert.equal((await roomInfo(room)).broadcast, true);
    const r = await ts[0]!.c.publish(room, enc('to everyone'));
    assert.equal(r.outcome, 'SENT', show(r));
    assert.equal(r.devices, 3);
    assert.equal(r.acked, 0);
    assert.equal(r.nodes, 2);
    for (const t of ts.slice(1)) {
      await until('a member to get the broadcast', 10_000, () => t.messages.length === 1);
      const m = t.messages[0]!;
      assert.equal(m.room, room);
      assert.equal(m.broadcast, true);
      assert.equal(m.msgId, r.msgId);
      // the DeliverAck of a message leaves right after the listeners ran: none did
      assert.ok(!t.tap.acks.includes(r.msgId), 'a broadcast Deliver is not acknowledged');
    }
    for (const t of ts) await t.c.leave(room);
  });

  it('follows the backend joining and removing it (POST /v1/rooms/{room}/join)', async () => {
    const room = 'ops';
    const jo = await connected('jo', 'tab-1', 'node-2');
    const kim = await connected('kim', 'tab-1', 'node-1');
    assert.equal((await kim.c.join(room)).joined, true);
    const j = await backend(room, 'join', ['jo']);
    assert.equal(j.changed, 1);
    await until('the room event', 10_000, () => jo.roomEvents.length === 1);
    assert.deepEqual(jo.roomEvents[0], { room, joined: true, byBackend: true });
    assert.deepEqual(jo.c.rooms, [room]);
    await members(room, 2);
    const r = await kim.c.publish(room, enc('to jo'));
    assert.equal(r.outcome, 'DELIVERED', show(r));
    await until('jo to get it', 10_000, () => jo.messages.length === 1);
    assert.equal(jo.messages[0]!.room, room);
    // and jo, joined by the backend, may publish
    assert.equal((await jo.c.publish(room, enc('from jo'))).outcome, 'DELIVERED');

    assert.equal((await backend(room, 'leave', ['jo'])).changed, 1);
    await until('the leave event', 10_000, () => jo.roomEvents.length === 2);
    assert.deepEqual(jo.roomEvents[1], { room, joined: false, byBackend: true });
    assert.deepEqual(jo.c.rooms, []);
    assert.equal((await jo.c.publish(room, enc('x'))).reason, 'NOT_MEMBER');
  });

  it('joins its rooms again after a reconnect, before it is online, and drops a refused one', async () => {
    const lee = await connected('lee', 'tab-1', 'node-1');
    const mo = await connected('mo', 'tab-1', 'node-2');
    assert.equal((await lee.c.join('club')).joined, true);
    assert.equal((await lee.c.join('doomed')).joined, true);
    assert.equal((await backend('side', 'join', ['lee'])).changed, 1);
    await until('the backend join', 10_000, () => lee.c.rooms.length === 3);
    for (const room of ['club', 'side']) assert.equal((await mo.c.join(room)).joined, true);
    await members('club', 2);
    await members('side', 2);

    // On the next connection the Join of 'doomed' goes out as a Join of an
    // invalid id: the node refuses it (BAD_REQUEST) under its request_id.
    const second = lee.tap.sockets.length;
    lee.tap.joinRoom = (i, room) => (i >= second && room === 'doomed' ? '' : room);
    let atOnline: { rooms: string[]; answered: string[] } | undefined;
    lee.c.on('state', (s) => {
      if (s.state === 'online' && atOnline === undefined) {
        atOnline = { rooms: lee.c.rooms, answered: lee.tap.roomStates.filter(([i]) => i >= second).map(([, rs]) => `${rs.room}:${rs.joined}`).sort() };
      }
    });
    const events = lee.roomEvents.length;
    lee.tap.sockets[second - 1]!.terminate();
    await until('lee to be back online', 20_000, () => atOnline !== undefined);
    assert.ok(lee.states.includes('reconnecting'), lee.states.join(','));
    // the rejoin was answered before the client said online
    assert.deepEqual(atOnline!.answered, [':false', 'club:true', 'side:true']);
    assert.deepEqual(atOnline!.rooms, ['club', 'side']);
    assert.deepEqual(lee.roomEvents.slice(events), [{ room: 'doomed', joined: false, byBackend: false }]);
    assert.deepEqual(lee.c.rooms, ['club', 'side']);
    assert.equal(lee.c.nodeId, 'node-2', 'the reconnect excludes the node it lost');

    await members('club', 2);
    await members('side', 2);
    for (const room of ['club', 'side']) {
      const r = await mo.c.publish(room, enc(`after the reconnect: ${room}`));
      assert.equal(r.outcome, 'DELIVERED', show(r));
      assert.equal(r.devices, 1);
    }
    await until('lee to get both', 10_000, () => lee.messages.length === 2);
    assert.deepEqual(lee.messages.map((m) => m.room).sort(), ['club', 'side']);
  });

  it('takes its rooms along when its node drains (GoAway move)', async () => {
    const ned = await connected('ned', 'tab-1', 'node-1');
    const oli = await connected('oli', 'tab-1', 'node-2');
    for (const t of [ned, oli]) assert.equal((await t.c.join('moving')).joined, true);
    await members('moving', 2);
    const joinsBefore = ned.tap.joins.length;
    await fleet.setState('node-1', 'drain');
    try {
      await until('ned to move to node-2', 20_000, () => ned.c.nodeId === 'node-2' && ned.c.state === 'online');
      assert.ok(ned.goaways >= 1);
      assert.deepEqual(ned.c.rooms, ['moving']);
      assert.deepEqual(ned.tap.joins.slice(joinsBefore), [[1, 'moving']], 'joined again on the new connection, once');
      await members('moving', 2);
      const r = await oli.c.publish('moving', enc('after the move'));
      assert.equal(r.outcome, 'DELIVERED', show(r));
      assert.equal(r.nodes, 1);
      await until('ned to get it', 10_000, () => ned.messages.some((m) => dec(m.payload) === 'after the move'));
      assert.equal(ned.messages.length, 1);
    } finally {
      await fleet.setState('node-1', 'active');
    }
  });

  it('forgets its rooms when closed', async () => {
    const pia = await connected('pia', 'tab-1', 'node-1');
    assert.equal((await pia.c.join('bye')).joined, true);
    await pia.c.close();
    assert.deepEqual(pia.c.rooms, []);
    assert.deepEqual(pia.roomEvents.at(-1), { room: 'bye', joined: false, byBackend: false });
    await fleet.only('node-2', () => pia.c.connect());
    assert.deepEqual(pia.c.rooms, []);
    await members('bye', 0);
  });
});
