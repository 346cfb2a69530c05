// End-to-end tests of the TypeScript SDK against the real binaries: one
// fleet (embedded etcd, dispatcher, node-1 and node-2 with WebSocket
// listeners) for the whole file, clients of the SDK over the `ws` package.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { WebSocket } from 'ws';

import { Client, type SendResult } from '../src/index.js';
import { decode } from '../src/wire.js';
import { Fleet, GoClient, dec, enc, newClient, until, type TestClient } from './harness.js';

let fleet: Fleet;
const open: TestClient[] = [];

async function connected(uid: string, device: string, node?: string, extra: Parameters<typeof newClient>[3] = {}): Promise<TestClient> {
  const t = newClient(fleet.dispatcher, uid, device, extra);
  open.push(t);
  if (node) await fleet.only(node, () => t.c.connect());
  else await t.c.connect();
  if (node) assert.equal(t.c.nodeId, node, `${uid} should be on ${node}`);
  return t;
}

before(async () => {
  fleet = await Fleet.start({ nodes: 2 });
});

after(async () => {
  await Promise.all(open.map((t) => t.c.close()));
  await fleet?.stop();
});

/** A `ws` WebSocket that lets a test hold back DeliverAcks and see every Deliver and close the socket. */
function tapped(ctl: { dropAck: (msgId: string) => boolean; delivers: { msgId: string; attempt: number }[]; sockets: WebSocket[] }) {
  return class Tapped extends WebSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols);
      ctl.sockets.push(this);
      this.addEventListener('message', (ev) => {
        if (!(ev.data instanceof ArrayBuffer)) return;
        const f = decode(new Uint8Array(ev.data));
        if (f.body.case === 'deliver') ctl.delivers.push({ msgId: f.body.value.msgId, attempt: f.body.value.attempt });
      });
    }

    override send(data: never, ...rest: never[]): void {
      const f = decode(data as Uint8Array);
      if (f.body.case === 'deliverAck' && ctl.dropAck(f.body.value.msgId)) return;
      (super.send as (...a: unknown[]) => void)(data, ...rest);
    }
  };
}

describe('TypeScript SDK against the real fleet', () => {
  it('delivers across nodes both ways', async () => {
    const alice = await connected('alice', 'tab-1', 'node-1');
    const bob = await connected('bob', 'tab-1', 'node-2');
    const r1 = await alice.c.send('bob', enc('hello bob'), { contentType: 'text/plain' });
    assert.equal(r1.outcome, 'DELIVERED', JSON.stringify(r1, (_k, v) => (typeof v === 'bigint' ? String(v) : v)));
    assert.equal(r1.devices, 1);
    assert.equal(r1.acked, 1);
    assert.equal(r1.nodeId, 'node-1');
    await until('bob to get the message', 10_000, () => bob.messages.length === 1);
    const m = bob.messages[0]!;
    assert.equal(dec(m.payload), 'hello bob');
    assert.equal(m.fromUid, 'alice');
    assert.equal(m.fromDevice, 'tab-1');
    assert.equal(m.contentType, 'text/plain');
    assert.equal(m.msgId, r1.msgId);
    assert.equal(m.nodeId, 'node-2');
    assert.ok(m.sentAtMs > Date.now() - 60_000);

    const r2 = await bob.c.send('alice', enc('hello alice'));
    assert.equal(r2.outcome, 'DELIVERED');
    await until('alice to get the message', 10_000, () => alice.messages.length === 1);
    assert.equal(dec(alice.messages[0]!.payload), 'hello alice');
    assert.equal(alice.messages[0]!.nodeId, 'node-1');

    const r3 = await alice.c.send('nobody-online', enc('x'));
    assert.equal(r3.outcome, 'OFFLINE');
    await assert.rejects(alice.c.send('bob', new Uint8Array(70_000)), (e: Error & { code?: string }) => e.code === 'payload_too_large');
  });

  it('hands a re-sent Deliver to the app once', async () => {
    const held = new Set<string>();
    const ctl = {
      // hold back the first DeliverAck of every message: the node re-sends it
      dropAck: (id: string) => {
        if (held.has(id)) return false;
        held.add(id);
        return true;
      },
      delivers: [] as { msgId: string; attempt: number }[],
      sockets: [] as WebSocket[],
    };
    const carol = await connected('carol', 'tab-1', 'node-1', { WebSocket: tapped(ctl) });
    const dave = await connected('dave', 'tab-1', 'node-2');
    const results = await Promise.all([1, 2, 3].map((i) => dave.c.send('carol', enc(`m${i}`))));
    for (const r of results) assert.equal(r.outcome, 'DELIVERED');
    // each message came at least twice on the wire, and reached the app once
    for (const r of results) {
      const copies = ctl.delivers.filter((d) => d.msgId === r.msgId);
      assert.ok(copies.length >= 2, `${r.msgId} came ${copies.length} times`);
      assert.ok(copies.some((d) => d.attempt >= 2));
    }
    assert.equal(carol.messages.length, 3);
    assert.deepEqual(carol.messages.map((m) => dec(m.payload)).sort(), ['m1', 'm2', 'm3']);
    assert.equal(new Set(carol.messages.map((m) => m.msgId)).size, 3);
    assert.ok(carol.messages.every((m) => m.attempt === 1));
  });

  it('answers UNKNOWN when no SendAck comes in time, and when the connection breaks first', async () => {
    const ctl = { dropAck: () => true, delivers: [] as { msgId: string; attempt: number }[], sockets: [] as WebSocket[] };
    await connected('erin', 'tab-1', 'node-2', { WebSocket: tapped(ctl) }); // never acknowledges
    const sctl = { dropAck: () => false, delivers: [] as { msgId: string; attempt: number }[], sockets: [] as WebSocket[] };
    const sender = await connected('sam', 'tab-1', 'node-1', { WebSocket: tapped(sctl), sendAckTimeoutMs: 300 });
    const r = await sender.c.send('erin', enc('never acked'));
    assert.equal(r.outcome, 'UNKNOWN');
    assert.equal(r.reason, 'SENDACK_TIMEOUT');

    // The Send waits for a SendAck that cannot come before the deliver
    // timeout (10 s); the socket breaks under it.
    const slow = await connected('sam', 'tab-2', 'node-1', { WebSocket: tapped(sctl) });
    const before = sctl.sockets.length;
    const p = slow.c.send('erin', enc('lost'));
    await until('the Deliver to reach erin', 10_000, () => new Set(ctl.delivers.map((d) => d.msgId)).size >= 2);
    sctl.sockets[before - 1]!.terminate();
    const lost = await p;
    assert.equal(lost.outcome, 'UNKNOWN');
    assert.equal(lost.reason, 'CONNECTION_LOST');
    // …and the client comes back by itself
    await until('sam/tab-2 to reconnect', 20_000, () => slow.states.includes('reconnecting') && slow.c.state === 'online');
  });

  it('stops after a kick with ban (POST /v1/kick) until the app connects again', async () => {
    const banned = await connected('ivan', 'phone', 'node-2');
    const resp = await fetch(fleet.dispatcher + '/v1/kick', {
      method: 'POST',
      headers: { Authorization: 'Bearer ts-fleet-push-token' },
      body: JSON.stringify({ uid: 'ivan', reason: 'account suspended', ban: true }),
    });
    assert.equal(resp.status, 200);
    assert.equal(((await resp.json()) as { kicked: number }).kicked, 1);
    await until('the banned client to stop', 10_000, () => banned.c.state === 'closed');
    assert.deepEqual(banned.kicks, ['ADMIN']);
    assert.ok(!banned.states.slice(banned.states.indexOf('closed')).includes('reconnecting'));
    await banned.c.connect(); // the app says so
    assert.equal(banned.c.state, 'online');
  });

  it('stops after Kick REPLACED and does not reconnect', async () => {
    const first = await connected('gina', 'phone', 'node-1');
    const second = await connected('gina', 'phone', 'node-2'); // same uid and device: replaces the first
    await until('the first login to be kicked', 10_000, () => first.c.state === 'closed');
    assert.deepEqual(first.kicks, ['REPLACED']);
    const ping = await connected('hank', 'tab-1');
    const r = await ping.c.send('gina', enc('to the new one'));
    assert.equal(r.outcome, 'DELIVERED');
    assert.equal(r.devices, 1);
    await until('the second login to get it', 10_000, () => second.messages.length === 1);
    assert.equal(first.messages.length, 0);
    assert.equal(first.c.state, 'closed');
    assert.equal(first.states.at(-1), 'closed');
    assert.ok(!first.states.slice(first.states.indexOf('closed')).includes('reconnecting'));
    await assert.rejects(first.c.send('hank', enc('x')), (e: Error & { kind?: string }) => e.kind === 'closed');
  });

  it('reconnects one backoff step after Kick ADMIN (close 4102), unlike REPLACED', async () => {
    const closes: number[] = [];
    class Watched extends WebSocket {
      constructor(url: string, protocols?: string | string[]) {
        super(url, protocols);
        this.addEventListener('close', (ev) => closes.push(ev.code));
      }
    }
    const pat = await connected('pat', 'tab-1', 'node-1', { WebSocket: Watched });
    const at: Record<string, number> = {};
    pat.c.on('kick', () => (at['kick'] = Date.now()));
    pat.c.on('state', (s) => {
      if (s.state === 'online' && at['kick'] !== undefined) at['online'] ??= Date.now();
    });
    const r = await fleet.cmd('kick node-1 pat tab-1');
    assert.equal(r['kicked'], 1);
    await until('the kick', 10_000, () => pat.kicks.length === 1);
    assert.deepEqual(pat.kicks, ['ADMIN']);
    await until('pat to be online again', 20_000, () => at['online'] !== undefined);
    assert.ok(pat.states.includes('reconnecting'), pat.states.join(','));
    assert.ok(closes.includes(4102), `close codes ${closes.join(',')}`);
    // one backoff step first (base 500 ms ± 20 %), not at once (§8.1)
    assert.ok(at['online']! - at['kick']! >= 350, `back after ${at['online']! - at['kick']!} ms`);
    assert.equal(pat.c.state, 'online');
    const quinn = await connected('quinn', 'tab-1');
    const sent = await quinn.c.send('pat', enc('after the kick'));
    assert.equal(sent.outcome, 'DELIVERED');
    await until('pat to get it', 10_000, () => pat.messages.some((m) => dec(m.payload) === 'after the kick'));
  });

  it('talks to a Go SDK client over TCP across nodes', async () => {
    const go = await fleet.only('node-1', () => GoClient.start(fleet.dispatcher, 'ivan'));
    try {
      assert.equal(go.node, 'node-1');
      const web = await connected('judy', 'tab-1', 'node-2');
      const r = await web.c.send('ivan', enc('ws to tcp'));
      assert.equal(r.outcome, 'DELIVERED');
      const m = await go.message();
      assert.equal(m.payload, 'ws to tcp');
      assert.equal(m.from, 'judy');
      assert.equal(m.id, r.msgId);
      const s = await go.send('judy', 'tcp to ws');
      assert.equal(s.outcome, 'delivered', s.error);
      await until('judy to get it', 10_000, () => web.messages.length === 1);
      assert.equal(dec(web.messages[0]!.payload), 'tcp to ws');
      assert.equal(web.messages[0]!.fromUid, 'ivan');
    } finally {
      await go.stop();
    }
  });

  it('moves clients off a drained node without losing a message', async () => {
    // Sender and receiver both on node-1; node-1 is drained through etcd
    // while the sender sends; both move to node-2.
    const rx = await connected('kate', 'tab-1', 'node-1');
    const tx = await connected('leo', 'tab-1', 'node-1');
    const N = 160;
    const results: SendResult[] = [];
    let drained = false;
    let next = 0;
    // eight Sends in flight at a time, so that the move has SendAcks to wait for
    const worker = async (): Promise<void> => {
      while (next < N) {
        const i = next++;
        if (i === 40) {
          drained = true;
          void fleet.setState('node-1', 'drain');
        }
        results.push(await tx.c.send('kate', enc(`n${i}`)));
        if (tx.c.nodeId === 'node-1' && i > 40) await new Promise((r) => setTimeout(r, 10));
      }
    };
    const sending = Promise.all(Array.from({ length: 8 }, worker));
    await sending;
    assert.ok(drained);
    await until('both clients to be on node-2', 20_000, () => tx.c.nodeId === 'node-2' && rx.c.nodeId === 'node-2');
    // every message more once the move is over still arrives
    const last = await tx.c.send('kate', enc('after'));
    assert.equal(last.outcome, 'DELIVERED');
    assert.ok(tx.goaways >= 1 && rx.goaways >= 1, 'both heard GoAway');

    const byOutcome: Record<string, number> = {};
    for (const r of results) byOutcome[r.outcome] = (byOutcome[r.outcome] ?? 0) + 1;
    const got = new Map<string, number>();
    for (const m of rx.messages) got.set(m.msgId, (got.get(m.msgId) ?? 0) + 1);
    // The sender's Sends never end unanswered: a move waits for the old
    // connection's SendAcks before it logs in elsewhere.
    assert.equal(byOutcome['UNKNOWN'] ?? 0, 0, JSON.stringify(byOutcome));
    for (const r of results) {
      if (r.outcome === 'DELIVERED') assert.equal(got.get(r.msgId), 1, `${r.msgId} DELIVERED but received ${got.get(r.msgId) ?? 0} times`);
      else {
        assert.ok(r.outcome === 'FAILED' && (r.reason === 'RECIPIENT_GONE' || r.reason === 'DELIVERY_TIMEOUT'), JSON.stringify(r, (_k, v) => (typeof v === 'bigint' ? String(v) : v)));
        // FAILED is true only for a message the app never got (§8.4: a
        // kicked connection's acks still count)
        assert.equal(got.get(r.msgId), undefined, `${r.msgId} FAILED but received`);
      }
    }
    for (const [id, n] of got) assert.equal(n, 1, `${id} received ${n} times`);
    assert.ok((byOutcome['DELIVERED'] ?? 0) >= N - 5, JSON.stringify(byOutcome));
    const nodes = new Set(results.map((r) => r.nodeId));
    assert.deepEqual([...nodes].sort(), ['node-1', 'node-2']);
    console.log(`drain: ${JSON.stringify(byOutcome)}, received ${got.size}`);
    await fleet.setState('node-1', 'active');
  });

  it('reports 400 transport_unavailable as permanent', async () => {
    const c = new Client({ dispatcher: fleet.dispatcher, uid: 'mia', device: 'tab-1', transport: 'wss', WebSocket });
    await assert.rejects(c.connect(), (e: Error & { kind?: string; code?: string; temporary?: boolean; status?: number }) =>
      e.kind === 'dispatcher' && e.code === 'transport_unavailable' && e.temporary === false && e.status === 400);
    assert.equal(c.state, 'closed');
  });

  it('moves a client off a node that gets SIGTERM', async () => {
    const rx = await connected('nina', 'tab-1', 'node-2');
    const tx = await connected('omar', 'tab-1', 'node-1');
    const states: string[] = [];
    rx.c.on('state', (s) => states.push(`${s.state}@${s.nodeId ?? ''}`));
    await fleet.cmd('term node-2');
    await until('nina to move to node-1', 20_000, () => rx.c.nodeId === 'node-1' && rx.c.state === 'online');
    assert.equal(rx.goaways, 1);
    // the move is a state event too: online again, on the new node
    await until('the state event of the move', 10_000, () => states.includes('online@node-1'));
    const r = await tx.c.send('nina', enc('after SIGTERM'));
    assert.equal(r.outcome, 'DELIVERED');
    await until('nina to get it', 10_000, () => rx.messages.length === 1);
    await fleet.cmd('wait-exit node-2');
  });
});
