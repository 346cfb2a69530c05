// wss: WebSocket inside the node's TLS front (--wss-addr with --tls-cert
// and --tls-key), against its own fleet of two nodes whose certificate
// comes from a CA made for the run.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { WebSocket } from 'ws';

import type { ImgateError } from '../src/index.js';
import { Fleet, dec, enc, newClient, until, type TestClient } from './harness.js';

let fleet: Fleet;
const open: TestClient[] = [];

before(async () => {
  fleet = await Fleet.start({ nodes: 2, wss: true });
});

after(async () => {
  await Promise.all(open.map((t) => t.c.close()));
  await fleet?.stop();
});

describe('wss', () => {
  it('logs in and delivers across nodes over wss, trusting the fleet CA', async () => {
    const ca = readFileSync(fleet.info.ca!);
    const urls: string[] = [];
    // the `ws` package takes the trust roots as a TLS option
    class Trusting extends WebSocket {
      constructor(url: string, protocols?: string | string[]) {
        super(url, protocols, { ca });
        urls.push(url);
      }
    }
    const client = (uid: string) => {
      const t = newClient(fleet.dispatcher, uid, 'tab-1', { transport: 'wss', WebSocket: Trusting as unknown as typeof WebSocket });
      open.push(t);
      return t;
    };
    const rosa = client('rosa');
    await fleet.only('node-1', () => rosa.c.connect());
    const sid = client('sid');
    await fleet.only('node-2', () => sid.c.connect());
    assert.equal(rosa.c.nodeId, 'node-1');
    assert.equal(sid.c.nodeId, 'node-2');
    assert.equal(urls.length, 2);
    for (const u of urls) assert.match(u, /^wss:\/\/127\.0\.0\.1:\d+\/v1\/ws$/);

    const r = await rosa.c.send('sid', enc('over TLS'));
    assert.equal(r.outcome, 'DELIVERED');
    await until('sid to get it', 10_000, () => sid.messages.length === 1);
    assert.equal(dec(sid.messages[0]!.payload), 'over TLS');
    const back = await sid.c.send('rosa', enc('and back'));
    assert.equal(back.outcome, 'DELIVERED');
    await until('rosa to get it', 10_000, () => rosa.messages.length === 1);
  });

  it('does not log in when the certificate is not trusted', async () => {
    const t = newClient(fleet.dispatcher, 'tess', 'tab-1', { transport: 'wss' }); // the default roots
    open.push(t);
    const stop = new AbortController();
    const first = new Promise<ImgateError>((r) => t.c.once('error', (e) => r(e)));
    const connecting = t.c.connect({ signal: stop.signal }).then(() => 'online', () => 'stopped');
    const e = await first;
    assert.equal(e.kind, 'network', `${e.kind}/${e.code}: ${e.message}`);
    assert.equal(e.temporary, true);
    stop.abort();
    assert.equal(await connecting, 'stopped');
    assert.notEqual(t.c.state, 'online');
  });
});
