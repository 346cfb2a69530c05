// The dispatcher's chat page (/chat/, --chat-page) in a real headless
// Chromium against the real binaries (test/fleet: embedded etcd, the
// dispatcher with --chat-page, node-1 and node-2 with --ws-addr and the
// page's origin in --ws-allowed-origins). Driven through the page's own
// form; every assertion reads the page's DOM.
//
// Chromium is Debian's (/usr/bin/chromium, or $CHROMIUM), driven by
// playwright-core (which ships no browser). A missing Chromium fails the
// test: `apt-get install -y chromium`. Screenshots go to
// proto/ts/artifacts/web/ (gitignored), printed at the start.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';

import { Fleet } from '../harness.js';

declare global {
  interface Window {
    imgateChat?: { device: string };
    __flow?: Promise<number>;
    __stop?: boolean;
  }
}

const here = dirname(fileURLToPath(import.meta.url)); // build-test/test/web
export const artifacts = join(here, '..', '..', '..', 'artifacts', 'web');
const chromiumPath = process.env['CHROMIUM'] || '/usr/bin/chromium';
const wait = { timeout: 30_000 };

let fleet: Fleet;
let browser: Browser;
const pages: Page[] = [];
const pageErrors: string[] = [];

const noChromium = `no Chromium at ${chromiumPath}: install it (apt-get install -y chromium) or set CHROMIUM to its path`;

// Its own test, so that a machine without Chromium counts a failure, not
// only cancelled tests.
it('has Chromium to drive', () => {
  assert.ok(existsSync(chromiumPath), noChromium);
});

/** open loads the page in a context of its own (its own tab, storage and device id), uid filled in from the query. */
async function open(uid: string, name: string): Promise<Page> {
  const ctx = await browser.newContext({ viewport: { width: 820, height: 760 } });
  const page = await ctx.newPage();
  pages.push(page);
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') pageErrors.push(`${name} console: ${m.text()}`);
  });
  // /chat redirects to chat/, keeping the query
  await page.goto(`${fleet.dispatcher}/chat?uid=${encodeURIComponent(uid)}`);
  assert.equal(new URL(page.url()).pathname, '/chat/');
  await page.waitForFunction(() => window.imgateChat !== undefined, null, wait);
  assert.equal(await page.inputValue('#uid'), uid);
  return page;
}

async function state(page: Page): Promise<string> {
  return (await page.getAttribute('#state', 'data-state')) ?? '';
}

async function nodeOf(page: Page): Promise<string> {
  return (await page.textContent('#node')) ?? '';
}

/** login clicks "Log in" while only `node` is eligible, so the page lands there. */
async function login(page: Page, node: string): Promise<void> {
  await fleet.only(node, async () => {
    await page.click('#login-btn');
    await page.waitForFunction(() => document.getElementById('state')?.dataset['state'] === 'online', null, wait);
  });
  assert.equal(await nodeOf(page), node);
}

interface Row { text: string; outcome: string; msgId: string; shown: string }

/** send fills the form, clicks Send and waits for the row's outcome. */
async function send(page: Page, to: string, text: string): Promise<Row> {
  await page.fill('#to', to);
  await page.fill('#text', text);
  await page.click('#send-btn');
  const h = await page.waitForFunction((t) => {
    const li = Array.from(document.querySelectorAll<HTMLElement>('#log li.out')).find((l) => l.querySelector('.text')?.textContent === t);
    return li && li.dataset['outcome'] !== 'PENDING' ? li.querySelector('.outcome')!.textContent : null;
  }, text, wait);
  const shown = String(await h.jsonValue());
  const rows = await outRows(page, text);
  assert.equal(rows.length, 1);
  return { ...rows[0]!, shown };
}

async function outRows(page: Page, prefix: string): Promise<Row[]> {
  return page.$$eval('#log li.out', (ls, p) => ls
    .map((l) => ({
      text: l.querySelector('.text')?.textContent ?? '',
      outcome: (l as HTMLElement).dataset['outcome'] ?? '',
      msgId: (l as HTMLElement).dataset['msgid'] ?? '',
      shown: l.querySelector('.outcome')?.textContent ?? '',
    }))
    .filter((r) => r.text.startsWith(p)), prefix);
}

async function inRows(page: Page, prefix: string): Promise<{ text: string; msgId: string; from: string; meta: string }[]> {
  return page.$$eval('#log li.in', (ls, p) => ls
    .map((l) => ({
      text: l.querySelector('.text')?.textContent ?? '',
      msgId: (l as HTMLElement).dataset['msgid'] ?? '',
      from: (l as HTMLElement).dataset['from'] ?? '',
      meta: l.querySelector('.meta')?.textContent ?? '',
    }))
    .filter((r) => r.text.startsWith(p)), prefix);
}

/** received waits until page shows a received message with this text. */
async function received(page: Page, text: string): Promise<{ msgId: string; from: string; meta: string }> {
  await page.waitForFunction((t) => Array.from(document.querySelectorAll('#log li.in .text')).some((e) => e.textContent === t), text, wait);
  const rows = (await inRows(page, text)).filter((r) => r.text === text);
  assert.equal(rows.length, 1, `${text} shown ${rows.length} times`);
  return rows[0]!;
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(artifacts, `${name}.png`) });
}

describe('the chat page in Chromium', () => {
  before(async () => {
    if (!existsSync(chromiumPath)) throw new Error(noChromium);
    rmSync(artifacts, { recursive: true, force: true });
    mkdirSync(artifacts, { recursive: true });
    console.log(`screenshots: ${artifacts}`);
    // both at once; whichever came up is stopped by after() when the other failed
    const [f, b] = await Promise.allSettled([
      Fleet.start({ nodes: 2, web: true }),
      // playwright-core gives every launch a fresh temporary --user-data-dir.
      chromium.launch({
        executablePath: chromiumPath,
        headless: true,
        chromiumSandbox: false,
        args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
          '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      }),
    ]);
    if (f.status === 'fulfilled') fleet = f.value;
    if (b.status === 'fulfilled') browser = b.value;
    if (f.status === 'rejected') throw f.reason;
    if (b.status === 'rejected') throw b.reason;
  });

  after(async () => {
    await browser?.close();
    await fleet?.stop();
  });

  let alice: Page;
  let bob: Page;

  it('two pages on different nodes exchange messages both ways; outcomes are shown', async () => {
    [alice, bob] = await Promise.all([open('alice', 'alice'), open('bob', 'bob')]);
    await login(alice, 'node-1');
    await login(bob, 'node-2');

    const a1 = await send(alice, 'bob', 'hello bob, from node-1');
    assert.equal(a1.shown, 'DELIVERED 1/1');
    const got1 = await received(bob, 'hello bob, from node-1');
    assert.equal(got1.from, 'alice');
    assert.equal(got1.msgId, a1.msgId);
    assert.match(got1.meta, /via node-2/);

    const b1 = await send(bob, 'alice', 'hello alice, from node-2');
    assert.equal(b1.shown, 'DELIVERED 1/1');
    assert.equal((await received(alice, 'hello alice, from node-2')).msgId, b1.msgId);

    // a second tab of bob is a second device: both get it
    const bob2 = await open('bob', 'bob-tab-2');
    await login(bob2, 'node-1');
    const devices = await Promise.all([bob, bob2].map((p) => p.evaluate(() => window.imgateChat!.device)));
    assert.notEqual(devices[0], devices[1]);
    const a2 = await send(alice, 'bob', 'to both of bob\'s tabs');
    assert.equal(a2.shown, 'DELIVERED 2/2');
    await received(bob, 'to both of bob\'s tabs');
    await received(bob2, 'to both of bob\'s tabs');
    await shot(bob2, '1-bob-second-tab');
    await bob2.click('#logout-btn');
    await bob2.waitForFunction(() => document.getElementById('state')?.dataset['state'] === 'closed', null, wait);

    assert.equal((await send(alice, 'bob', 'one tab again')).shown, 'DELIVERED 1/1');
    assert.equal((await send(alice, 'nobody-here', 'anyone?')).shown, 'OFFLINE');
    await received(bob, 'one tab again');
    await shot(alice, '1-alice');
    await shot(bob, '1-bob');
    assert.deepEqual(pageErrors, []);
  });

  it('two pages on different nodes join a room; a publish reaches the other member once', async () => {
    const join = async (page: Page, room: string): Promise<void> => {
      await page.fill('#room', room);
      await page.click('#join-btn');
      await page.waitForFunction((r) => (document.getElementById('rooms')?.textContent ?? '').split(' ').includes('#' + r), room, wait);
    };
    await join(alice, 'team');
    await join(bob, 'team');
    // Bob's membership reaches the room's home one hop after his RoomState:
    // publish until it counts him (the ones before reach nobody: OFFLINE).
    let r: Row | undefined;
    for (let i = 0; i < 50; i++) {
      r = await send(alice, '#team', `hello team ${i}`);
      if (r.outcome !== 'OFFLINE') break;
    }
    assert.equal(r!.shown, 'DELIVERED 1/1');
    const got = await received(bob, r!.text);
    assert.equal(got.msgId, r!.msgId);
    assert.match(got.meta, /^in #team · from alice\//);
    assert.equal(await bob.$eval(`#log li.in[data-msgid="${r!.msgId}"]`, (l) => (l as HTMLElement).dataset['room']), 'team');
    assert.equal((await inRows(alice, 'hello team')).length, 0); // the publisher does not get its own
    // A page that has not joined is refused, and after leaving bob gets nothing.
    await bob.fill('#room', 'team');
    await bob.click('#leave-btn');
    await bob.waitForFunction(() => document.getElementById('rooms')?.textContent === 'no room', null, wait);
    assert.equal((await send(bob, '#team', 'not a member')).shown, 'FAILED NOT_MEMBER');
    await shot(bob, '1-bob-room');
    assert.deepEqual(pageErrors, []);
  });

  it('a SIGTERM-drained node moves its page to the other node without losing a message', async () => {
    assert.equal(await nodeOf(alice), 'node-1');
    assert.equal(await nodeOf(bob), 'node-2');
    // Both pages send through their own form, one message every 20 ms
    // with at most 4 awaiting their outcome, until told to stop (at most
    // 1500 each).
    const flow = (page: Page, to: string, prefix: string) => page.evaluate(({ to, prefix }) => {
      window.__stop = false;
      window.__flow = (async () => {
        const pending = () => document.querySelectorAll('#log li.out[data-outcome="PENDING"]').length;
        const tick = () => new Promise((r) => setTimeout(r, 20));
        let i = 0;
        for (; i < 1500 && !window.__stop; i++) {
          while (pending() >= 4) await tick();
          (document.getElementById('to') as HTMLInputElement).value = to;
          (document.getElementById('text') as HTMLInputElement).value = `${prefix}${i}`;
          (document.getElementById('send') as HTMLFormElement).requestSubmit();
          await tick();
        }
        return i;
      })();
    }, { to, prefix });
    const sentAtLeast = (page: Page, prefix: string, n: number) => page.waitForFunction(({ prefix, n }) =>
      Array.from(document.querySelectorAll('#log li.out .text')).filter((e) => e.textContent!.startsWith(prefix)).length >= n,
    { prefix, n }, wait);

    await flow(alice, 'bob', 'a→b #');
    await flow(bob, 'alice', 'b→a #');
    await Promise.all([sentAtLeast(alice, 'a→b #', 25), sentAtLeast(bob, 'b→a #', 25)]);
    await fleet.cmd('term node-2');
    // bob's page hears GoAway and logs in on node-1
    await bob.waitForFunction(() => document.getElementById('node')?.textContent === 'node-1' &&
      document.getElementById('state')?.dataset['state'] === 'online', null, wait);
    await shot(bob, '2-bob-just-moved');
    const [aMoved, bMoved] = await Promise.all([alice, bob].map((p) => p.evaluate(() =>
      document.querySelectorAll('#log li.out').length)));
    // messages keep flowing after the move, then stop
    await Promise.all([alice.waitForFunction((n) => document.querySelectorAll('#log li.out').length >= n + 25, aMoved!, wait),
      bob.waitForFunction((n) => document.querySelectorAll('#log li.out').length >= n + 25, bMoved!, wait)]);
    const counts = await Promise.all([alice, bob].map((p) => p.evaluate(async () => {
      window.__stop = true;
      return window.__flow!;
    })));
    // every message answered
    await Promise.all([alice, bob].map((p) => p.waitForFunction(() =>
      document.querySelectorAll('#log li.out[data-outcome="PENDING"]').length === 0, null, { timeout: 60_000 })));
    await fleet.cmd('wait-exit node-2');
    assert.ok((await bob.textContent('#log'))!.includes('GoAway'), 'bob\'s page shows the GoAway');
    assert.equal(await nodeOf(alice), 'node-1');
    assert.equal(await state(alice), 'online');

    // Every message is counted. DELIVERED must have been shown exactly
    // once. FAILED/PARTIAL with RECIPIENT_GONE, DELIVERY_TIMEOUT or
    // UNAVAILABLE means "not confirmed" (docs/protocol.md §6.1): a Deliver
    // the old connection never handed to the page (it was closing) fails
    // RECIPIENT_GONE, and only the Sends in flight at that moment (at most
    // 4, the page's window) may end so. One the page has shown must not:
    // the kicked old connection stays open for the acks the page wrote
    // before it read the Kick (§8.4), so a shown message is DELIVERED. Nothing
    // may be unanswered, UNKNOWN (a move waits for the old connection's
    // SendAcks, §8.2), shown twice, or shown without being sent.
    const notConfirmed = /^(FAILED|PARTIAL) (.* )?(RECIPIENT_GONE|DELIVERY_TIMEOUT|UNAVAILABLE)$/;
    for (const [from, to, prefix, n] of [[alice, bob, 'a→b #', counts[0]!], [bob, alice, 'b→a #', counts[1]!]] as const) {
      const out = await outRows(from, prefix);
      const got = await inRows(to, prefix);
      const byOutcome: Record<string, number> = {};
      for (const r of out) byOutcome[r.outcome] = (byOutcome[r.outcome] ?? 0) + 1;
      const seen = new Map<string, number>();
      for (const g of got) seen.set(g.text, (seen.get(g.text) ?? 0) + 1);
      const sent = new Map(out.map((r) => [r.text, r]));
      const dup = [...seen].filter(([, k]) => k > 1).map(([t]) => t);
      const lost = out.filter((r) => r.outcome === 'DELIVERED' && !seen.has(r.text)).map((r) => r.text);
      const unconfirmed = out.filter((r) => r.outcome !== 'DELIVERED');
      const unexplained = unconfirmed.filter((r) => !notConfirmed.test(r.shown)).map((r) => `${r.text}: ${r.shown}`);
      const phantom = got.filter((g) => !sent.has(g.text)).map((g) => g.text);
      const idMismatch = got.filter((g) => sent.has(g.text) && sent.get(g.text)!.msgId !== g.msgId).map((g) => g.text);
      console.log(`drain: ${prefix} sent ${n}, rows ${out.length}, ${JSON.stringify(byOutcome)}; received ${got.length}; ` +
        `lost ${lost.length}, duplicated ${dup.length}, unanswered ${byOutcome['PENDING'] ?? 0}` +
        (unconfirmed.length ? `; not confirmed: ${unconfirmed.map((r) => `${r.text} ${r.shown} (${seen.has(r.text) ? 'shown' : 'not shown'})`).join(', ')}` : ''));
      assert.equal(out.length, n, `${prefix}: ${out.length} rows for ${n} sends`);
      assert.deepEqual(lost, [], `${prefix}: DELIVERED but never shown`);
      assert.deepEqual(dup, [], `${prefix}: shown more than once`);
      assert.deepEqual(phantom, [], `${prefix}: shown but never sent`);
      assert.deepEqual(idMismatch, [], `${prefix}: msg id differs between sender and recipient`);
      assert.equal(byOutcome['PENDING'] ?? 0, 0, `${prefix}: unanswered`);
      assert.equal(byOutcome['UNKNOWN'] ?? 0, 0, `${prefix}: ${JSON.stringify(byOutcome)}`);
      assert.deepEqual(unexplained, [], `${prefix}: outcomes other than DELIVERED or not confirmed`);
      assert.ok(unconfirmed.length <= 4, `${prefix}: ${unconfirmed.length} not confirmed, more than were in flight`);
      const falselyFailed = unconfirmed.filter((r) => seen.has(r.text)).map((r) => `${r.text}: ${r.shown}`);
      assert.deepEqual(falselyFailed, [], `${prefix}: shown to the recipient, yet not DELIVERED to the sender`);
    }
    await shot(alice, '2-alice-after-drain');
    await shot(bob, '2-bob-moved-to-node-1');
    assert.deepEqual(pageErrors, []);
  });
});
