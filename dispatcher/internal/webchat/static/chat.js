// The imgate demo chat page: one login (uid + a random device id per page
// load) through @imgate/client's browser bundle. Every sent message gets
// a row whose outcome is the node's SendAck; every received message a row
// of its own. "To" #room publishes to a room joined with the Room form. Plain DOM, no framework; text goes in with textContent only.
import { Client } from './imgate.browser.js';

const $ = (id) => document.getElementById(id);
const enc = new TextEncoder();
const dec = new TextDecoder();
const maxRows = 2000; // oldest rows go beyond this

// The dispatcher is where this page came from: /chat/ sits beside
// /v1/endpoint, also behind a proxy that adds a path prefix.
const dispatcher = new URL('../', location.href).href.replace(/\/+$/, '');
// One device per page load: a second tab of the same uid is a second
// device (both get every message) instead of replacing the first.
const device = 'tab-' + Array.from(crypto.getRandomValues(new Uint8Array(4)), (b) => b.toString(16).padStart(2, '0')).join('');

const stats = { sent: 0, delivered: 0, pending: 0, unknown: 0, other: 0, received: 0 };
let client = null;

$('device').textContent = device;
const q = new URLSearchParams(location.search);
if (q.get('uid')) $('uid').value = q.get('uid');
if (q.get('to')) $('to').value = q.get('to');

function showStats() {
  const el = $('stats');
  const order = ['sent', 'delivered', 'pending', 'unknown', 'other', 'received'];
  const bs = el.querySelectorAll('b');
  order.forEach((k, i) => {
    el.dataset[k] = String(stats[k]);
    bs[i].textContent = String(stats[k]);
  });
}

function row(cls) {
  const log = $('log');
  // follow the newest row unless the user scrolled up to read
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 40;
  const li = document.createElement('li');
  li.className = cls;
  log.appendChild(li);
  while (log.children.length > maxRows) log.firstElementChild.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
  return li;
}

function span(cls, text) {
  const s = document.createElement('span');
  s.className = cls;
  s.textContent = text;
  return s;
}

function sys(text) {
  row('sys').textContent = `${new Date().toLocaleTimeString()} ${text}`;
}

function setState(state, reason) {
  const el = $('state');
  el.dataset.state = state;
  el.textContent = reason ? `${state} (${reason})` : state;
  $('node').textContent = client?.nodeId ?? '–';
  const live = client !== null && state !== 'closed';
  $('login-btn').disabled = live;
  $('uid').disabled = live;
  $('logout-btn').disabled = !live;
  $('send-btn').disabled = !live;
  $('join-btn').disabled = !live;
  $('leave-btn').disabled = !live;
}

function showRooms() {
  const rooms = client?.rooms ?? [];
  $('rooms').textContent = rooms.length ? rooms.map((r) => '#' + r).join(' ') : 'no room';
}

// outcomeText is what a row shows for a SendResult.
function outcomeText(r) {
  switch (r.outcome) {
    case 'DELIVERED':
    case 'PARTIAL':
      return `${r.outcome} ${r.acked}/${r.devices}${r.reason ? ' ' + r.reason : ''}`;
    case 'FAILED':
    case 'UNKNOWN':
      return `${r.outcome}${r.reason ? ' ' + r.reason : ''}`;
    case 'SENT':
      return `SENT ${r.devices}${r.reason ? ' ' + r.reason : ''}`;
    default:
      return r.outcome;
  }
}

async function login(uid) {
  const c = new Client({ dispatcher, uid, device });
  client = c;
  c.on('state', (s) => {
    if (client !== c) return;
    setState(s.state, s.reason);
    sys(`${s.state}${s.nodeId ? ' on ' + s.nodeId : ''}${s.reason ? ': ' + s.reason : ''}`);
  });
  c.on('message', (m) => {
    stats.received++;
    showStats();
    const li = row('in');
    li.dataset.msgid = m.msgId;
    li.dataset.from = m.fromUid;
    if (m.room) li.dataset.room = m.room;
    li.appendChild(span('text', m.contentType.startsWith('text/') || m.contentType === ''
      ? dec.decode(m.payload) : `[${m.payload.length} bytes, ${m.contentType}]`));
    li.appendChild(span('meta', `${m.room ? 'in #' + m.room + (m.broadcast ? ' (broadcast)' : '') + ' · ' : ''}from ${m.fromUid}/${m.fromDevice} · via ${m.nodeId} · ${new Date(m.sentAtMs).toLocaleTimeString()}` +
      (m.attempt > 1 ? ` · attempt ${m.attempt}` : '')));
  });
  c.on('room', (r) => {
    if (client !== c) return;
    showRooms();
    if (r.byBackend) sys(`${r.joined ? 'joined to' : 'taken out of'} #${r.room} by the app's backend`);
    else if (!r.joined && c.state !== 'closed') sys(`left #${r.room}`);
  });
  c.on('goaway', (g) => sys(`GoAway: the node drains (${g.reason || 'no reason'}); moving to another node`));
  c.on('kick', (k) => sys(`kicked: ${k.reason}${k.detail ? ' (' + k.detail + ')' : ''}`));
  c.on('error', (e) => sys(`${e.kind} error ${e.code}: ${e.message}${e.temporary ? ' (retrying)' : ''}`));
  setState('connecting');
  try {
    await c.connect();
  } catch (e) {
    if (client === c) setState('closed', e.code || String(e));
  }
}

async function send(to, text) {
  const li = row('out');
  li.dataset.outcome = 'PENDING';
  li.dataset.to = to;
  li.appendChild(span('text', text));
  const outcome = span('outcome', '…');
  li.appendChild(outcome);
  const meta = span('meta', `to ${to}`);
  li.appendChild(meta);
  stats.sent++;
  stats.pending++;
  showStats();
  let r;
  try {
    const opts = { contentType: 'text/plain; charset=utf-8' };
    r = to.startsWith('#') ? await client.publish(to.slice(1), enc.encode(text), opts) : await client.send(to, enc.encode(text), opts);
  } catch (e) {
    // rejected: nothing was sent (closed, kicked, too large)
    r = { outcome: 'NOT_SENT', reason: e.code || String(e), msgId: '', nodeId: '' };
  }
  stats.pending--;
  if (r.outcome === 'DELIVERED') stats.delivered++;
  else if (r.outcome === 'UNKNOWN') stats.unknown++;
  else stats.other++;
  showStats();
  li.dataset.outcome = r.outcome;
  li.dataset.msgid = r.msgId;
  outcome.textContent = r.outcome === 'NOT_SENT' ? `NOT SENT ${r.reason}` : outcomeText(r);
  if (r.outcome === 'UNKNOWN') outcome.title = 'no answer from the node: the message may or may not have arrived';
  else if (/^(RECIPIENT_GONE|DELIVERY_TIMEOUT|UNAVAILABLE)$/.test(r.reason ?? '')) {
    outcome.title = 'not confirmed: a device may have shown it without its acknowledgement getting back';
  }
  meta.textContent = `to ${to}${r.nodeId ? ' · via ' + r.nodeId : ''}${r.msgId ? ' · ' + r.msgId : ''}`;
}

$('login').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const uid = $('uid').value.trim();
  if (uid && (client === null || client.state === 'closed')) void login(uid);
});

$('logout-btn').addEventListener('click', async () => {
  const c = client;
  if (!c) return;
  await c.close();
  if (client === c) setState('closed', 'logged out');
});

// joinOrLeave asks the node and shows its answer (a refusal is an answer).
async function joinOrLeave(join) {
  const room = $('room').value.trim().replace(/^#/, '');
  if (!client || !room) return;
  try {
    const r = join ? await client.join(room) : await client.leave(room);
    if (join) sys(r.joined ? `joined #${r.room}` : `join #${r.room} refused: ${r.code}${r.message ? ' (' + r.message + ')' : ''}`);
  } catch (e) {
    sys(`${join ? 'join' : 'leave'} #${room}: ${e.code || String(e)}`);
  }
  showRooms();
}

$('room-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  void joinOrLeave(true);
});
$('leave-btn').addEventListener('click', () => void joinOrLeave(false));

$('send').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const to = $('to').value.trim();
  const text = $('text').value;
  if (!client || !to || text === '') return;
  $('text').value = '';
  void send(to, text);
});

// For the browser console: imgateChat.client, imgateChat.stats.
window.imgateChat = { get client() { return client; }, stats, device, dispatcher };
