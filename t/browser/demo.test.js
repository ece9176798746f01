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
// 4 s in the test), it opens again with a new ticket.  Devices (issue 14):
// B opens a second tab, A sees two devices (the screenshot, in
// t/browser/out/demo.png, shows them); B closes it: still online, one
// device, no offline in between; B's page is hidden: A's dot for B turns
// hollow (idle), and full again when it is shown; A's stream is cut and
// held back while B goes offline: A sees the change after the reopen,
// from the resumed stream (no new snapshot); B closes its last tab: grey
// within the grace
// (1 s here).  Exits 0 when all is well, 1 with a message otherwise.
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

    step('B comes back: green again');
    await tid(b, 'invisible-toggle').uncheck();
    await a.locator(`[data-testid="buddy-${idB}"][data-status="online"]`)
           .waitFor({ timeout: 5000 });
    // the search results of A show B among its contacts now
    await tid(a, 'search-submit').click();
    await tid(a, `result-${idB}`).filter({ hasText: 'in your contacts' }).waitFor({ timeout: 5000 });

    // from now on A's page records every status it shows for B: a move of
    // devices must never show B offline in between
    await a.evaluate((id) => {
      window.__shown = [];
      const note = () => {
        const li = document.querySelector(`[data-testid="buddy-${id}"]`);
        const v = li ? li.dataset.status : 'none';
        if (window.__shown[window.__shown.length - 1] !== v) window.__shown.push(v);
      };
      note();
      new MutationObserver(note).observe(document.getElementById('buddies'),
                                         { childList: true, subtree: true, attributes: true });
    }, idB);
    const shown = () => a.evaluate(() => window.__shown.slice());
    const devicesOf = () => tid(a, `buddy-${idB}`).getAttribute('data-devices');
    const deviceB = await tid(b, 'me-device').textContent();

    step('B opens a second tab: A sees two devices');
    const b2 = await ctxB.newPage();
    b2.on('pageerror', (e) => errors.push(`B2: ${e.message}`));
    await b2.goto(base + '/');
    await tid(b2, 'me-name').filter({ hasText: nameB }).waitFor({ timeout: 5000 });
    const deviceB2 = await tid(b2, 'me-device').filter({ hasText: /web-/ }).textContent();
    if (deviceB2 === deviceB) throw new Error(`both tabs are device ${deviceB}`);
    const both = [deviceB, deviceB2].sort().join(',');
    await a.locator(`[data-testid="buddy-${idB}"][data-devices="${both}"]`)
           .waitFor({ timeout: 5000 });
    const seen2 = await tid(a, `seen-${idB}`).textContent();
    if (!seen2.includes(deviceB) || !seen2.includes(deviceB2)) {
      throw new Error(`B's line reads "${seen2}"`);
    }
    await a.screenshot({ path: path.join(out, 'demo.png') });
    step(`two devices (${both}); screenshot: ${path.join(out, 'demo.png')}`);

    step('B closes the second tab: still online, on one device');
    await b2.close({ runBeforeUnload: true });
    await a.locator(`[data-testid="buddy-${idB}"][data-devices="${deviceB}"]`)
           .waitFor({ timeout: 5000 });
    await a.waitForTimeout(1500);   // past the grace: still online
    if ((await shown()).includes('offline')) throw new Error(`B was shown offline: ${await shown()}`);
    if (await devicesOf() !== deviceB) throw new Error(`devices: ${await devicesOf()}`);

    step("B's page is hidden: A's dot for B turns hollow (idle)");
    const visibility = (p, state) => p.evaluate((st) => {
      Object.defineProperty(document, 'visibilityState', { value: st, configurable: true });
      Object.defineProperty(document, 'hidden', { value: st === 'hidden', configurable: true });
      document.dispatchEvent(new Event('visibilitychange'));
    }, state);
    await visibility(b, 'hidden');
    await a.locator(`[data-testid="buddy-${idB}"][data-activity="idle"]`)
           .waitFor({ timeout: 5000 });
    const hollow = await tid(a, `dot-${idB}`).evaluate((e) => getComputedStyle(e).backgroundColor);
    if (hollow !== 'rgba(0, 0, 0, 0)') throw new Error(`the idle dot is ${hollow}`);
    await visibility(b, 'visible');
    await a.locator(`[data-testid="buddy-${idB}"][data-activity="active"]`)
           .waitFor({ timeout: 5000 });
    step('shown again: active at once');

    // The reopened stream resumes (last_event_id): the change made while
    // it was down comes from the stream itself, not from a new snapshot.
    step("A's stream is cut and held back while B goes offline: no change lost");
    await tid(a, 'stream-state').filter({ hasText: 'live' }).waitFor({ timeout: 5000 });
    let release, held = null;
    const heldBack = new Promise((r) => { release = r; });
    const statusReads = [];
    a.on('request', (r) => { if (/\/v1\/status\?ids=/.test(r.url())) statusReads.push(Date.now()); });
    await a.route('**/v1/events?**', async (route) => {
      if (held) return route.continue();
      held = route.request().url();
      release();
      // hold it until B's change is made, then let it through
      await tid(b, 'invisible-toggle').check();
      await a.waitForTimeout(300);
      route.continue();
    });
    await Promise.race([heldBack, a.waitForTimeout(15000)]);
    if (!held) throw new Error('A\'s stream did not reopen');
    if (!/[?&]last_event_id=[^&]+/.test(held)) throw new Error(`no last_event_id: ${held}`);
    const reopened = Date.now();
    await a.locator(`[data-testid="buddy-${idB}"][data-status="offline"]`)
           .waitFor({ timeout: 5000 });
    await a.unroute('**/v1/events?**');
    if (statusReads.some((t) => t >= reopened)) {
      throw new Error('the change came from a new snapshot, not from the resumed stream');
    }
    step(`reopened (${held.replace(/ticket=[^&]+/, 'ticket=…')}): B offline, `
         + `${statusReads.filter((t) => t >= reopened).length} snapshot(s) since`);
    await tid(b, 'invisible-toggle').uncheck();
    await a.locator(`[data-testid="buddy-${idB}"][data-status="online"]`)
           .waitFor({ timeout: 5000 });

    step('B closes its last tab: grey within the grace');
    await a.evaluate(() => { window.__shown = []; });
    t0 = Date.now();
    await b.close({ runBeforeUnload: true });
    await a.locator(`[data-testid="buddy-${idB}"][data-status="offline"]`)
           .waitFor({ timeout: 5000 });
    const gone = Date.now() - t0;
    step(`A sees B grey ${gone} ms after the tab closed (grace 1 s)`);
    if (gone > 3000) throw new Error(`offline ${gone} ms after the last tab closed`);
    if (errors.length) throw new Error('page errors: ' + errors.join('; '));
  } finally {
    await browser.close();
  }
}

main().then(() => { console.log('ok - demo page'); process.exit(0); },
            (e) => { console.log('not ok - demo page: ' + (e && e.stack || e)); process.exit(1); });
