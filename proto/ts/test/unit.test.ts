// Unit tests of the SDK's pure parts: wire vectors (docs/protocol.md §2.2,
// §12.1), the dispatcher's error classes (§1.3), Retry-After, backoff
// (§8.3) and the de-duplication window (§7.2).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Dedup, backoffDelay, defaultBackoff, dispatcherError, isTemporaryCode, mergeHints, parseRetryAfter, roomIdProblem, validRoom } from '../src/index.js';
import { decode, encode } from '../src/wire.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const unhex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s.replace(/ /g, ''), 'hex'));

describe('wire', () => {
  it('matches the protocol test vectors', () => {
    assert.equal(hex(encode('ping', { seq: 1n })), '1a020801');
    assert.equal(hex(encode('ping', { seq: 300n })), '1a0308ac02');
    assert.equal(hex(encode('ping', {})), '1a00');
    assert.equal(hex(encode('login', { token: 'T', clientVersion: 'ios/1' })), '0a0a0a015422056 96f732f31'.replace(/ /g, ''));
    assert.equal(hex(encode('deliverAck', { msgId: 'n1-abc-1' })), '420a0a086e312d6162632d31');
    const pong = decode(unhex('22 09 08 01 10 80 d0 ea b6 b7 33'));
    assert.equal(pong.body.case, 'pong');
    assert.equal(pong.body.case === 'pong' && pong.body.value.serverTimeMs, 1767225600000n);
    const ack = decode(unhex('12 1d 0a 01 31 12 02 6e 31 18 b0 ea 01 20 90 bf 05 28 80 80 04 30 80 d0 95 ff bc 31 38 90 4e'));
    assert.ok(ack.body.case === 'loginAck');
    assert.equal(ack.body.value.nodeId, 'n1');
    assert.equal(ack.body.value.heartbeatIntervalMs, 30000);
    assert.equal(ack.body.value.deliverTimeoutMs, 10000);
  });

  it('ignores unknown fields and frame types', () => {
    const p = decode(unhex('1a 04 08 01 78 05'));
    assert.ok(p.body.case === 'ping' && p.body.value.seq === 1n);
    // field 30: no frame type yet (12-16 are Request, Response and the rooms' frames now)
    assert.equal(decode(unhex('f2 01 00')).body.case, undefined);
    assert.equal(decode(new Uint8Array()).body.case, undefined);
    assert.throws(() => decode(unhex('1a 05 08')));
  });
});

describe('dispatcher errors', () => {
  const now = Date.parse('2026-12-01T12:00:00Z');
  it('classifies the codes of §1.3', () => {
    const body = (code: string) => JSON.stringify({ error: { code, message: 'm' } });
    const cases: [number, string, boolean][] = [
      [400, 'bad_parameter', false], [400, 'transport_unavailable', false], [401, 'unauthorized', false],
      [404, 'not_found', false], [405, 'method_not_allowed', false], [429, 'rate_limited', true],
      [503, 'no_node', true], [500, 'internal', true],
    ];
    for (const [status, code, temporary] of cases) {
      const e = dispatcherError(status, '1', body(code), now);
      assert.equal(e.code, code);
      assert.equal(e.temporary, temporary, code);
      assert.equal(e.status, status);
      assert.equal(e.retryAfterMs, 1000);
    }
  });
  it('classifies a foreign body by its status', () => {
    assert.equal(dispatcherError(502, null, '<html>bad gateway</html>').temporary, true);
    assert.equal(dispatcherError(502, null, '<html>bad gateway</html>').code, 'http_502');
    assert.equal(dispatcherError(408, null, '').temporary, true);
    assert.equal(dispatcherError(403, null, 'no').temporary, false);
    assert.ok(dispatcherError(500, null, 'x'.repeat(500)).message.length < 300);
  });
  it('reads Retry-After as seconds or a date, capped at an hour', () => {
    assert.equal(parseRetryAfter('3', now), 3000);
    assert.equal(parseRetryAfter(' 0 ', now), 0);
    assert.equal(parseRetryAfter('-4', now), 0);
    assert.equal(parseRetryAfter('999999', now), 3600_000);
    assert.equal(parseRetryAfter('Tue, 01 Dec 2026 12:00:30 GMT', now), 30_000);
    assert.equal(parseRetryAfter('Tue, 01 Dec 2026 11:00:30 GMT', now), 0);
    assert.equal(parseRetryAfter('soon', now), 0);
    assert.equal(parseRetryAfter(null, now), 0);
  });
});

describe('backoff', () => {
  it('grows, caps and jitters as §8.3 says', () => {
    const b = { ...defaultBackoff };
    assert.equal(backoffDelay(b, 1, 0.5), 500);
    assert.equal(backoffDelay(b, 2, 0.5), 1000);
    assert.equal(backoffDelay(b, 20, 0.5), 30_000);
    assert.equal(backoffDelay(b, 1, 0), 400);
    assert.ok(Math.abs(backoffDelay(b, 1, 0.999999) - 600) < 0.01);
  });
  it('applies only sane hints', () => {
    const m = mergeHints({ ...defaultBackoff }, { base_ms: 100, factor: 0.5, jitter: 3, max_ms: 50 });
    assert.deepEqual(m, { baseMs: 100, factor: 2, jitter: 0.2, maxMs: 100 });
    assert.deepEqual(mergeHints(m, null), m);
  });
});

describe('dedup', () => {
  it('remembers the last size ids', () => {
    const d = new Dedup(3);
    for (const id of ['a', 'b', 'c']) d.add(id);
    assert.ok(d.has('a') && d.has('c'));
    d.add('d');
    assert.ok(!d.has('a') && d.has('b') && d.has('d'));
    d.add('b'); // already there: nothing evicted
    assert.ok(d.has('c'));
    assert.equal(d.length, 3);
  });
});

describe('room ids', () => {
  it('follows the nodes\' rule: 1-128 bytes of UTF-8 without control characters', () => {
    for (const ok of ['a', 'team/go', 'x'.repeat(128), 'é'.repeat(64), '房间'.repeat(21), '😀'.repeat(32), 'sp ace', 'u\u00a0nbsp']) {
      assert.equal(validRoom(ok), true, JSON.stringify(ok));
    }
    for (const bad of ['', 'x'.repeat(129), 'é'.repeat(65), '😀'.repeat(33), 'a\nb', '\u0000', 'del\u007f', 'c1\u009f', 'lone\ud800', '\udc00x', 'x\ud83d']) {
      assert.equal(validRoom(bad), false, JSON.stringify(bad));
      assert.ok(roomIdProblem(bad) !== '');
    }
    assert.equal(validRoom(7 as unknown as string), false);
    assert.match(roomIdProblem('a\tb'), /control character \(U\+0009\)/);
    assert.match(roomIdProblem('x'.repeat(129)), /128 bytes/);
  });

  it('classes the rooms\' error codes as permanent', () => {
    for (const c of ['ROOM_LIMIT', 'NOT_MEMBER', 'FORBIDDEN', 'BAD_REQUEST']) assert.equal(isTemporaryCode(c), false, c);
    for (const c of ['RATE_LIMITED', 'UNAVAILABLE', 'DELIVERY_TIMEOUT']) assert.equal(isTemporaryCode(c), true, c);
  });

  it('encodes the rooms\' frames and fields', () => {
    assert.equal(hex(encode('join', { requestId: 1n, room: 'r' })), '72050801120172');
    assert.equal(hex(encode('leave', { requestId: 2n, room: 'r' })), '7a050802120172');
    const rs = decode(unhex('82 01 07 08 00 12 01 72 18 01'));
    assert.ok(rs.body.case === 'roomState' && rs.body.value.joined && rs.body.value.room === 'r' && rs.body.value.requestId === 0n);
    const d = decode(unhex('3a 05 42 01 72 48 01'));
    assert.ok(d.body.case === 'deliver' && d.body.value.room === 'r' && d.body.value.broadcast);
  });
});
