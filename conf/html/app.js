// The presence demo: sign up, find people, subscribe, and watch their dots
// turn green or grey live (EventSource on /v1/events).  No build step.
'use strict';

const HEARTBEAT_MS = 10000;   // well under presence_heartbeat_timeout (30 s)
const RENDER_MS = 5000;       // "last seen N minutes ago" refresh

const $ = (id) => document.getElementById(id);
let me = JSON.parse(localStorage.getItem('presence.me') || 'null');
let contacts = new Map();     // id -> {id, name, status, last_seen, seq}
let stream = null, streamIds = '';
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

function renderBuddies() {
  const ul = $('buddies');
  ul.replaceChildren();
  const list = [...contacts.values()].sort((a, b) => a.name.localeCompare(b.name));
  for (const c of list) {
    const li = document.createElement('li');
    li.dataset.testid = 'buddy-' + c.id;
    li.dataset.status = c.status;
    const dot = document.createElement('span');
    dot.className = 'dot ' + c.status;
    dot.dataset.testid = 'dot-' + c.id;
    dot.title = c.status;
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = c.name;
    const seen = document.createElement('span');
    seen.className = 'seen';
    seen.dataset.testid = 'seen-' + c.id;
    seen.textContent = c.status === 'online' ? 'online' : ago(c.last_seen);
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
  Object.assign(c, { status: s.status, last_seen: s.last_seen, seq: s.seq });
  renderBuddies();
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
// stays far below), reopened only when the list of ids changes
function openStream() {
  const ids = [...contacts.keys()].sort((a, b) => a - b).slice(0, 255).join(',');
  if (ids === streamIds && stream) return;
  if (stream) stream.close();
  stream = null;
  streamIds = ids;
  if (!ids) { setStreamState('no stream'); return; }

  const es = new EventSource(`/v1/events?ids=${ids}&token=${encodeURIComponent(me.token)}`);
  stream = es;
  setStreamState('connecting…');
  es.onopen = async () => {
    if (stream !== es) return;
    setStreamState('live', true);
    // the snapshot after the stream is open: events above its seq win
    try {
      const snap = await api('GET', '/v1/status?ids=' + ids);
      if (stream === es) snap.statuses.forEach(apply);
    } catch (e) { showError('status: ' + e.message); }
  };
  es.onmessage = (ev) => {
    if (stream !== es) return;
    try { apply(JSON.parse(ev.data)); } catch (e) { /* not ours */ }
  };
  es.onerror = () => {
    if (stream !== es) return;
    // EventSource reconnects by itself while it says CONNECTING
    setStreamState(es.readyState === EventSource.CLOSED ? 'stream closed' : 'reconnecting…');
  };
}

async function heartbeat() {
  try {
    await api('POST', '/v1/heartbeat');
  } catch (e) { showError('heartbeat: ' + e.message); }
}

async function setInvisible(invisible) {
  try {
    await api('PUT', '/v1/status', { status: invisible ? 'offline' : 'online' });
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
  if (stream) stream.close();
  stream = null; streamIds = '';
  contacts = new Map();
  timers.forEach(clearInterval);
  timers = [];
  showError(msg || '');
  show();
}

async function start() {
  $('me-name').textContent = me.name;
  $('me-id').textContent = '#' + me.id;
  const invisible = !!localStorage.getItem('presence.invisible');
  $('invisible').checked = invisible;
  // an invisible user stays invisible across reloads; otherwise the
  // first heartbeat makes us online at once
  if (invisible) await setInvisible(true); else await heartbeat();
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
