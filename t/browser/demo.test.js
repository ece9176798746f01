// Browser test of the demo page (conf/html), run by t/030-browser.t:
//
//     node t/browser/demo.test.js http://127.0.0.1:PORT
//
// Two users in two browser contexts of Debian's chromium: A signs up on the
// page, B through the API (so that it is not online yet); signing up as B
// again on the page shows "taken".  A finds B and subscribes: B's dot is
// grey, "never seen".  B opens the page with its session: its heartbeat
// makes it online and A's dot for B turns green.  B ticks "appear offline":
// A's dot turns grey, "last seen just now".  A's stream opens with a
// stream ticket, never a token in its URL; when the server ends it (after
// 4 s in the test), it opens again with a new ticket.  Saves a screenshot in t/browser/out/demo.png.
// Exits 0 when all is well, 1 with a message otherwise.
'use strict';

const { chromium } = require('playwright-core');
const fs = require('fs');
const path = require('path');

const base = process.argv[2] || 'http://127.0.0.1:8080';
const out = path.join(__dirname, 'out');
const suffix = `${process.pid}${Date.now() % 100000}`;
const nameA = 'alice' + suffix, nameB = 'bob' + suffix;

function step(msg) { console.log('# ' + msg); }

async function main() {
  fs.mkdirSync(out, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
           '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
    // playwright gives chromium a fresh temporary --user-data-dir of its
    // own (and removes it on close): it refuses one in args with launch()
  });
  const errors = [];
  try {
    const ctxA = await browser.newContext({ viewport: { width: 700, height: 640 } });
    const ctxB = await browser.newContext();
    const a = await ctxA.newPage();
    a.on('pageerror', (e) => errors.push(`A: ${e.message}`));
    const streams = [];   // the URLs of A's event streams
    a.on('request', (r) => { if (r.url().includes('/v1/events?')) streams.push(r.url()); });
    const tid = (p, id) => p.locator(`[data-testid="${id}"]`);

    step(`A signs up as ${nameA}`);
    await a.goto(base + '/');
    await tid(a, 'signup-name').fill(nameA);
    await tid(a, 'signup-submit').click();
    await tid(a, 'me-name').filter({ hasText: nameA }).waitFor({ timeout: 5000 });

    step(`B signs up as ${nameB} (through the API: its page is not open yet)`);
    const res = await ctxB.request.post(base + '/v1/users', { data: { name: nameB } });
    if (res.status() !== 201) throw new Error(`POST /v1/users: ${res.status()}`);
    const userB = await res.json();
    const idB = userB.id;

    step('a taken name is refused visibly');
    const c = await ctxB.newPage();
    await c.goto(base + '/');
    await tid(c, 'signup-name').fill(nameB.toUpperCase());
    await tid(c, 'signup-submit').click();
    await tid(c, 'error').filter({ hasText: 'taken' }).waitFor({ timeout: 5000 });
    await c.close();

    step(`A searches for ${nameB} and subscribes`);
    await tid(a, 'search-q').fill(nameB.slice(0, 6));
    await tid(a, 'search-submit').click();
    await tid(a, `subscribe-${idB}`).click();
    const buddy = tid(a, `buddy-${idB}`);
    await buddy.waitFor({ timeout: 5000 });
    await tid(a, 'stream-state').filter({ hasText: 'live' }).waitFor({ timeout: 5000 });
    await a.locator(`[data-testid="buddy-${idB}"][data-status="offline"]`)
           .waitFor({ timeout: 3000 });
    step('B is grey for A');

    const neverSeen = await tid(a, `seen-${idB}`).textContent();
    if (neverSeen !== 'never seen') throw new Error(`B's last seen reads "${neverSeen}"`);

    step('B opens the page (its session in localStorage): its heartbeat makes it online');
    const b = await ctxB.newPage();
    b.on('pageerror', (e) => errors.push(`B: ${e.message}`));
    await b.goto(base + '/');
    let t0 = Date.now();
    await b.evaluate((u) => localStorage.setItem('presence.me', JSON.stringify(u)),
                     { id: idB, name: userB.name, token: userB.token });
    await b.reload();
    await tid(b, 'me-name').filter({ hasText: nameB }).waitFor({ timeout: 5000 });
    await a.locator(`[data-testid="buddy-${idB}"][data-status="online"]`)
           .waitFor({ timeout: 5000 });
    step(`A sees B green after ${Date.now() - t0} ms`);
    const green = await tid(a, `dot-${idB}`).evaluate((e) => getComputedStyle(e).backgroundColor);
    if (green !== 'rgb(43, 178, 76)') throw new Error(`the online dot is ${green}`);

    step('B ticks "appear offline"');
    t0 = Date.now();
    await tid(b, 'invisible-toggle').check();
    await a.locator(`[data-testid="buddy-${idB}"][data-status="offline"]`)
           .waitFor({ timeout: 5000 });
    step(`A sees B grey after ${Date.now() - t0} ms`);
    const grey = await tid(a, `dot-${idB}`).evaluate((e) => getComputedStyle(e).backgroundColor);
    if (grey !== 'rgb(170, 170, 170)') throw new Error(`the offline dot is ${grey}`);
    const seen = await tid(a, `seen-${idB}`).textContent();
    if (!/last seen just now/.test(seen)) throw new Error(`B's last seen reads "${seen}"`);

    step("A's stream opened with a ticket; ended by the server, it opens with a new one");
    for (let i = 0; i < 100 && new Set(streams).size < 2; i++) await a.waitForTimeout(100);
    if (streams.some((u) => /[?&]token=/.test(u))) throw new Error(`a token in a URL: ${streams}`);
    if (!streams.every((u) => /[?&]ticket=[A-Za-z0-9_-]+/.test(u))) throw new Error(`no ticket: ${streams}`);
    if (new Set(streams).size < 2) throw new Error(`the stream did not open again: ${streams}`);
    await tid(a, 'stream-state').filter({ hasText: 'live' }).waitFor({ timeout: 5000 });
    step(`${streams.length} streams, each with its own ticket`);

    step('B comes back: green again, for the screenshot');
    await tid(b, 'invisible-toggle').uncheck();
    await a.locator(`[data-testid="buddy-${idB}"][data-status="online"]`)
           .waitFor({ timeout: 5000 });
    // the search results of A show B among its contacts now
    await tid(a, 'search-submit').click();
    await tid(a, `result-${idB}`).filter({ hasText: 'in your contacts' }).waitFor({ timeout: 5000 });

    await a.screenshot({ path: path.join(out, 'demo.png') });
    step(`screenshot: ${path.join(out, 'demo.png')}`);
    if (errors.length) throw new Error('page errors: ' + errors.join('; '));
  } finally {
    await browser.close();
  }
}

main().then(() => { console.log('ok - demo page'); process.exit(0); },
            (e) => { console.log('not ok - demo page: ' + (e && e.stack || e)); process.exit(1); });
