// The presence demo: sign up, find people, subscribe, and watch their dots
// turn green, hollow (idle) or grey live (EventSource on /v1/events), with
// the devices each contact is on.  Each tab is a device of its user: it
// heartbeats with ?device=, idle=1 while the page is hidden, and says
// /v1/leave with navigator.sendBeacon when the page goes away.  No build step.
'use strict';

const HEARTBEAT_MS = 10000;   // well under presence_heartbeat_timeout (30 s)
const RENDER_MS = 5000;       // "last seen N minutes ago" refresh
const REOPEN_MS = 2000;       // a stream that ended opens again this much later
const HIDE_MS = 500;          // hidden this long: the idle heartbeat
                              // (under presence_offline_grace, 5 s: the
                              // stream's close is this device leaving)

// this tab's device name (1..16 of a-z 0-9 _ -): kept across reloads of the
// tab (sessionStorage), so a reload is a leave and a heartbeat within the
// grace, which nobody sees; a duplicated tab, which copies sessionStorage,
// hears the other tab answer for the name and picks a new one
function newDevice() {
  return 'web-' + Math.random().toString(36).slice(2, 8).padEnd(6, '0');
}
let device = sessionStorage.getItem('presence.device') || newDevice();
sessionStorage.setItem('presence.device', device);
let deviceChecked = false;
const tabs = typeof BroadcastChannel === 'function'
             ? new BroadcastChannel('presence.devices') : null;
if (tabs) {
  tabs.onmessage = (ev) => {
    const m = ev.data || {};
    if (m.ask === device) tabs.postMessage({ taken: device });
    else if (m.taken === device && !deviceChecked) {
      device = newDevice();
      sessionStorage.setItem('presence.device', device);
    }
  };
  tabs.postMessage({ ask: device });
}
const deviceReady = new Promise((resolve) => setTimeout(() => {
  deviceChecked = true;
  resolve();
}, tabs ? 150 : 0));

const $ = (id) => document.getElementById(id);
let me = JSON.parse(localStorage.getItem('presence.me') || 'null');
let contacts = new Map();     // id -> {id, name, status, last_seen, seq,
                              //        activity, devices}
let stream = null, streamIds = '', streamOn = false;
let streamGen = 0, reopenTimer = null;  // gen: the stream now wanted
let lastEventId = '';         // the id of the last message of streamIds
let timers = [];

function showError(msg) {
  $('error').textContent = msg;
  $('error').hidden = !msg;
}

// fetch with the token; resolves to the JSON body (or null), throws an
// Error with the API's message for any non-2xx answer
async function api(method, path, body) {
  const headers = {};
  if (me) headers.Authorization = 'Bearer ' + me.token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, { method, headers,
      body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new Error('the server cannot be reached');
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { /* not JSON */ }
  if (!res.ok) {
    const err = new Error((data && data.error && data.error.message)
                          || `${method} ${path}: HTTP ${res.status}`);
    err.status = res.status;
    if (res.status === 401 && me) signOut('your session is no longer valid: sign up again');
    throw err;
  }
  return data;
}

function ago(ms) {
  if (ms == null) return 'never seen';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return 'last seen just now';
  const m = Math.floor(s / 60);
  if (m < 60) return `last seen ${m} minute${m === 1 ? '' : 's'} ago`;
  const h = Math.floor(m / 60);
  if (h < 48) return `last seen ${h} hour${h === 1 ? '' : 's'} ago`;
  return 'last seen ' + new Date(ms).toLocaleDateString();
}

function hidden() {
  return document.visibilityState === 'hidden';
}

function statusText(c) {
  if (c.status !== 'online') return ago(c.last_seen);
  const on = (c.devices || []).join(', ');
  return (c.activity === 'idle' ? 'idle' : 'online') + (on ? ' on ' + on : '');
}

function renderBuddies() {
  const ul = $('buddies');
  ul.replaceChildren();
  const list = [...contacts.values()].sort((a, b) => a.name.localeCompare(b.name));
  for (const c of list) {
    const li = document.createElement('li');
    li.dataset.testid = 'buddy-' + c.id;
    li.dataset.status = c.status;
    li.dataset.activity = c.status === 'online' ? c.activity || 'active' : '';
    li.dataset.devices = c.status === 'online' ? (c.devices || []).join(',') : '';
    const dot = document.createElement('span');
    dot.className = 'dot ' + c.status + (li.dataset.activity === 'idle' ? ' idle' : '');
    dot.dataset.testid = 'dot-' + c.id;
    dot.title = c.status === 'online' ? li.dataset.activity : c.status;
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = c.name;
    const seen = document.createElement('span');
    seen.className = 'seen';
    seen.dataset.testid = 'seen-' + c.id;
    seen.textContent = statusText(c);
    const rm = document.createElement('button');
    rm.className = 'link';
    rm.textContent = 'remove';
    rm.dataset.testid = 'unsubscribe-' + c.id;
    rm.onclick = () => unsubscribe(c.id);
    li.append(dot, name, seen, rm);
    ul.append(li);
  }
  $('no-buddies').hidden = list.length > 0;
}

// a status from the snapshot or an event: only if newer than what we have
function apply(s) {
  const c = contacts.get(s.id);
  if (!c || s.error) return;
  if (c.seq != null && s.seq != null && s.seq <= c.seq) return;
  Object.assign(c, { status: s.status, last_seen: s.last_seen, seq: s.seq,
                     activity: s.activity, devices: s.devices });
  renderBuddies();
}

// the snapshot of the stream's users: events above its seq win
async function snapshot(es, ids) {
  try {
    const snap = await api('GET', '/v1/status?ids=' + ids);
    if (stream === es) snap.statuses.forEach(apply);
  } catch (e) { showError('status: ' + e.message); }
}

async function loadBuddies() {
  const data = await api('GET', '/v1/subscriptions');
  const old = contacts;
  contacts = new Map();
  for (const s of data.subscriptions) {
    const prev = old.get(s.id);
    // the list has no seq: keep what the stream told us
    contacts.set(s.id, prev ? { ...prev, name: s.name } : { ...s, seq: null });
  }
  renderBuddies();
  openStream();
}

function setStreamState(text, live) {
  $('stream').textContent = text;
  $('stream').classList.toggle('live', !!live);
}

// one EventSource for all contacts (at most 255 ids per stream; a demo
// stays far below), reopened only when the list of ids changes or the
// stream ends.  It opens with a stream ticket (POST /v1/events/ticket),
// never with the token: a URL ends up in logs.  A ticket opens one stream
// within a minute, so EventSource's own reconnect (same URL, old ticket)
// is not used: a stream that fails is closed and opened with a new one,
// which resumes after the last message seen (?last_event_id=: a new
// EventSource cannot send Last-Event-ID), so no change is lost between
// the two; the server says {"resync": true} when it cannot, and the page
// takes a new snapshot.  The stream names this tab's device: its close is
// the device leaving, its opening the device being there.
function openStream(force) {
  const ids = [...contacts.keys()].sort((a, b) => a - b).slice(0, 255).join(',');
  if (!force && ids === streamIds && streamOn) return;
  closeStream();
  if (ids !== streamIds) lastEventId = '';
  streamIds = ids;
  if (!ids) { setStreamState('no stream'); return; }
  streamOn = true;
  const gen = ++streamGen;
  setStreamState('connecting…');
  api('POST', '/v1/events/ticket').then((t) => {
    if (gen !== streamGen) return;
    listen(ids, gen, t.ticket);
  }, (e) => {
    if (gen !== streamGen || !me) return;
    setStreamState('reconnecting…');
    reopenLater(gen);
  });
}

function closeStream() {
  streamGen++;
  streamOn = false;
  if (reopenTimer) clearTimeout(reopenTimer);
  reopenTimer = null;
  if (stream) stream.close();
  stream = null;
}

function reopenLater(gen) {
  if (reopenTimer) clearTimeout(reopenTimer);
  reopenTimer = setTimeout(() => {
    reopenTimer = null;
    if (gen === streamGen && me) openStream(true);
  }, REOPEN_MS);
}

function listen(ids, gen, ticket) {
  const resume = lastEventId;
  let url = `/v1/events?ids=${ids}&device=${device}&ticket=${encodeURIComponent(ticket)}`;
  if (resume) url += '&last_event_id=' + encodeURIComponent(resume);
  const es = new EventSource(url);
  stream = es;
  es.onopen = () => {
    if (stream !== es) return;
    setStreamState('live', true);
    // a new stream: the snapshot after it is open (seq drops what the
    // page has already); a resumed one is first given what it missed, or
    // {"resync": true} when the server cannot (then the snapshot)
    if (!resume) snapshot(es, ids);
  };
  es.onmessage = (ev) => {
    if (stream !== es) return;
    if (ev.lastEventId) lastEventId = ev.lastEventId;
    let m;
    try { m = JSON.parse(ev.data); } catch (e) { return; /* not ours */ }
    if (m && m.resync) snapshot(es, ids); else apply(m);
  };
  es.onerror = () => {
    if (stream !== es) return;
    // not EventSource's reconnect: it would send the old ticket again
    es.close();
    stream = null;
    setStreamState('reconnecting…');
    reopenLater(gen);
  };
}

// a heartbeat of this tab's device: idle while the page is hidden; none
// once the page is going away (its leave is the last word)
let leaving = false;
let hideTimer = null;

async function heartbeat() {
  if (leaving) return;
  try {
    await api('POST', `/v1/heartbeat?device=${device}` + (hidden() ? '&idle=1' : ''));
  } catch (e) { showError('heartbeat: ' + e.message); }
}

// hidden: idle HIDE_MS later (a tab being closed is hidden just before
// it goes: its idle heartbeat would come after its leave and bring the
// device back); shown again: active at once (the server makes the user
// active on any device's active heartbeat)
document.addEventListener('visibilitychange', () => {
  if (!me || localStorage.getItem('presence.invisible')) return;
  clearTimeout(hideTimer);
  if (hidden()) {
    hideTimer = setTimeout(() => { if (hidden()) heartbeat(); }, HIDE_MS);
  } else {
    heartbeat();
  }
});

// the page goes away (tab closed, navigation, reload): this device leaves
// now rather than at its stream's lease; a beacon cannot set headers, so
// the token goes in its form body, never in the URL
window.addEventListener('pagehide', () => {
  if (!me) return;
  leaving = true;
  clearTimeout(hideTimer);
  navigator.sendBeacon(`/v1/leave?device=${device}`,
                       new URLSearchParams({ token: me.token }));
  closeStream();
});

// back from the back/forward cache: the device is here again
window.addEventListener('pageshow', (ev) => {
  if (!ev.persisted || !me) return;
  leaving = false;
  if (!localStorage.getItem('presence.invisible')) heartbeat();
  openStream(true);
});

async function setInvisible(invisible) {
  try {
    // "online" is a heartbeat of this tab's device (not of "default")
    await api('PUT', `/v1/status?device=${device}` + (hidden() ? '&idle=1' : ''),
              { status: invisible ? 'offline' : 'online' });
    localStorage.setItem('presence.invisible', invisible ? '1' : '');
    showError('');
  } catch (e) {
    $('invisible').checked = !invisible;
    showError('status: ' + e.message);
  }
}

async function search(q) {
  const data = await api('GET', '/v1/users?q=' + encodeURIComponent(q));
  const ul = $('results');
  ul.replaceChildren();
  for (const u of data.users) {
    if (u.id === me.id) continue;
    const li = document.createElement('li');
    li.dataset.testid = 'result-' + u.id;
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = u.name;
    li.append(name);
    if (u.subscribed || contacts.has(u.id)) {
      const s = document.createElement('span');
      s.className = 'muted';
      s.textContent = 'in your contacts';
      li.append(s);
    } else {
      const b = document.createElement('button');
      b.textContent = 'Subscribe';
      b.dataset.testid = 'subscribe-' + u.id;
      b.onclick = () => subscribe(u.id).then(() => search(q)).catch((e) => showError(e.message));
      li.append(b);
    }
    ul.append(li);
  }
  if (!ul.children.length) {
    const li = document.createElement('li');
    li.className = 'muted';
    li.textContent = 'nobody found';
    ul.append(li);
  }
}

async function subscribe(id) {
  const s = await api('PUT', '/v1/subscriptions/' + id);
  contacts.set(s.id, { ...s, seq: null });
  renderBuddies();
  openStream();
  showError('');
}

async function unsubscribe(id) {
  try {
    await api('DELETE', '/v1/subscriptions/' + id);
    contacts.delete(id);
    renderBuddies();
    openStream();
  } catch (e) { showError(e.message); }
}

function signOut(msg) {
  localStorage.removeItem('presence.me');
  localStorage.removeItem('presence.invisible');
  me = null;
  closeStream();
  streamIds = '';
  contacts = new Map();
  timers.forEach(clearInterval);
  timers = [];
  showError(msg || '');
  show();
}

async function start() {
  $('me-name').textContent = me.name;
  $('me-id').textContent = '#' + me.id;
  await deviceReady;
  const invisible = !!localStorage.getItem('presence.invisible');
  $('invisible').checked = invisible;
  // an invisible user stays invisible across reloads; otherwise the
  // first heartbeat makes us online at once
  if (invisible) await setInvisible(true); else await heartbeat();
  $('me-device').textContent = device;
  timers.push(setInterval(heartbeat, HEARTBEAT_MS));
  timers.push(setInterval(renderBuddies, RENDER_MS));
  try { await loadBuddies(); } catch (e) { showError('contacts: ' + e.message); }
}

function show() {
  $('signup').hidden = !!me;
  $('app').hidden = !me;
  if (me) start();
}

$('signup-form').onsubmit = async (ev) => {
  ev.preventDefault();
  const name = $('signup-name').value.trim();
  try {
    const u = await api('POST', '/v1/users', { name });
    me = { id: u.id, name: u.name, token: u.token };
    localStorage.setItem('presence.me', JSON.stringify(me));
    showError('');
    show();
  } catch (e) {
    showError(e.status === 409 ? `the name "${name}" is taken: pick another`
                               : 'sign up: ' + e.message);
  }
};

$('search-form').onsubmit = (ev) => {
  ev.preventDefault();
  search($('search-q').value.trim()).then(() => showError(''),
                                          (e) => showError('search: ' + e.message));
};

$('invisible').onchange = (ev) => setInvisible(ev.target.checked);
$('signout').onclick = () => signOut();

show();
