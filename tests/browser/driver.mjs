// Drives a real Chromium through `licensegate dev` in front of a Vite dev
// server (tests/dev_browser.rs runs it; see README, "Using it as a local
// proxy in front of a dev server").
//
//   node driver.mjs PROXY_URL APP_DIR
//
// PROXY_URL is the proxy's origin (http://127.0.0.1:PORT); APP_DIR is a
// copy of tests/browser/app that Vite serves: this script rewrites its
// src/message.js, so never point it at the repository's copy. Chromium is
// $CHROMIUM, else /usr/bin/chromium (no browser download).
//
// Output: one JSON line per step, {"step": NAME, "ok": BOOL, ...what was
// seen}. Two changes are made by whoever runs the script, between steps:
// it prints {"await": "plan_free"} (switch the proxy to plan `free`) and
// {"await": "upstream_stopped"} (stop Vite), then reads the same word back
// on stdin once that is done. The last line is {"done": true, "failed": N};
// the exit status is 1 when a step failed, 2 when the whole run overran.
//
// Every wait is bounded; the whole run is bounded by RUN_LIMIT_MS.

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const RUN_LIMIT_MS = 50_000;
const LAUNCH_MS = 15_000;
const STEP_MS = 8_000;
// A hot update waits for the file watcher, a rebuild and the round trip.
const HOT_UPDATE_MS = 10_000;
const HAND_OVER_MS = 15_000;
// Page conditions are checked on a timer rather than on animation frames
// (Playwright's default), so no check depends on the page rendering frames.
const POLL_MS = 50;

const [proxyArg, appDir] = process.argv.slice(2);
if (!proxyArg || !appDir) {
  console.error('usage: node driver.mjs PROXY_URL APP_DIR');
  process.exit(64);
}
const proxy = new URL(proxyArg);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

let failed = 0;
const emit = (line) => console.log(JSON.stringify(line));

const watchdog = setTimeout(() => {
  emit({ step: 'run', ok: false, error: `the run took over ${RUN_LIMIT_MS / 1000} s` });
  // Playwright kills the browsers it launched when the process exits.
  process.exit(2);
}, RUN_LIMIT_MS);

function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** Run one step; report what it saw, or why it failed. */
async function step(name, body) {
  try {
    const seen = (await body()) ?? {};
    emit({ step: name, ok: true, ...seen });
  } catch (error) {
    failed += 1;
    const message = String(error?.message ?? error).split('\n').slice(0, 6).join('\n');
    emit({ step: name, ok: false, error: message });
  }
}

function within(ms, promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const input = createInterface({ input: process.stdin });
// Whoever runs the script went away: nobody will make the changes it awaits.
input.on('close', () => {
  emit({ step: 'run', ok: false, error: 'stdin closed before the run ended' });
  process.exit(2);
});
const stdin = input[Symbol.asyncIterator]();

/** Ask for `action` and wait until it is reported done on stdin. */
async function handOver(action) {
  emit({ await: action });
  try {
    const next = await within(HAND_OVER_MS, stdin.next(), `waiting for "${action}" on stdin`);
    check(!next.done && next.value.trim() === action,
      `expected "${action}" on stdin, got ${JSON.stringify(next.value)}`);
  } catch (error) {
    // The steps after it would check the wrong state.
    emit({ step: `hand_over_${action}`, ok: false, error: error.message });
    emit({ done: true, failed: failed + 1 });
    process.exit(1);
  }
}

let browser;
let context;
try {
  browser = await chromium.launch({
    executablePath,
    timeout: LAUNCH_MS,
    // Playwright gives each launch a fresh temporary profile.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--no-proxy-server',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  context = await browser.newContext();
} catch (error) {
  emit({ step: 'launch', ok: false, error: `${executablePath}: ${error.message.split('\n')[0]}` });
  emit({ done: true, failed: 1 });
  process.exit(1);
}
context.setDefaultTimeout(STEP_MS);
context.setDefaultNavigationTimeout(STEP_MS);

const requests = [];
// How each request ended, for failure messages: finished, failed, or pending.
const ended = new Map();
context.on('request', (request) => requests.push(request));
context.on('requestfinished', (request) => ended.set(request, 'finished'));
context.on('requestfailed', (request) => ended.set(request, `failed: ${request.failure()?.errorText}`));

// Every WebSocket the page opens, and the messages it received.
const sockets = [];
let hmrConnected;
const hmrReady = new Promise((resolve) => (hmrConnected = resolve));
const page = await context.newPage();
page.on('websocket', (ws) => {
  const socket = { url: ws.url(), received: [] };
  sockets.push(socket);
  ws.on('framereceived', ({ payload }) => {
    const text = String(payload);
    socket.received.push(text);
    // Vite greets a client it accepted with {"type":"connected"}.
    if (text.includes('"type":"connected"')) hmrConnected(socket);
  });
});
let reloads = 0;
page.on('load', () => (reloads += 1));
// What the page said (Vite's client logs each hot update), for failures.
const consoleLines = [];
page.on('console', (message) => consoleLines.push(`${message.type()}: ${message.text()}`));
page.on('pageerror', (error) => consoleLines.push(`pageerror: ${error.message}`));

const viaProxy = (url) => new URL(url).host === proxy.host;
const reportUrl = new URL('/api/reports/q3.json', proxy).href;

// (1) The page and everything it loads come through the proxy, and no
// request carries Authorization: the license is the proxy's own.
await step('page_loads', async () => {
  const response = await page.goto(proxy.href);
  check(response.status() === 200, `GET / answered ${response.status()}`);
  await page.waitForFunction(() => document.getElementById('message').textContent === 'version 1',
    null, { polling: POLL_MS });
  await page.waitForFunction(() => document.getElementById('report').textContent !== 'pending',
    null, { polling: POLL_MS });
  const headers = await within(STEP_MS, Promise.all(requests.map((r) => r.allHeaders())), 'request headers');
  const authorized = requests.filter((_, i) => 'authorization' in headers[i]).map((r) => r.url());
  check(authorized.length === 0, `requests with Authorization: ${authorized.join(', ')}`);
  const elsewhere = requests.filter((r) => !viaProxy(r.url())).map((r) => r.url());
  check(elsewhere.length === 0, `requests around the proxy: ${elsewhere.join(', ')}`);
  return { status: response.status(), requests: requests.length, authorization_headers: authorized.length };
});

// (2) Vite's hot-reload socket connects through the proxy (when it cannot,
// Vite's client falls back to the dev server's own port, and hot updates
// would still work: the URL is the point), and an edit arrives as a hot
// update applied in place.
await step('hmr_through_proxy', async () => {
  const socket = await within(STEP_MS, hmrReady, 'the Vite HMR socket greeting');
  const direct = sockets.filter((s) => !viaProxy(s.url)).map((s) => s.url);
  check(viaProxy(socket.url), `the HMR socket connected to ${socket.url}, not through ${proxy.host}`);
  check(direct.length === 0, `WebSockets around the proxy: ${direct.join(', ')}`);
  return { url: socket.url, sockets: sockets.map((s) => s.url) };
});

await step('hot_update', async () => {
  await page.evaluate(() => (window.notReloaded = true));
  const loadsBefore = reloads;
  const diagnose = async () => {
    const shown = await page.textContent('#message').catch((e) => `unreadable: ${e.message}`);
    const frames = sockets.flatMap((s) => s.received.map((m) => m.slice(0, 200)));
    const fetched = requests.filter((r) => r.url().includes('message.js'))
      .map((r) => `${r.url()} ${ended.get(r) ?? 'pending'}`);
    return `The page shows ${JSON.stringify(shown)}; ` +
      `frames received: ${JSON.stringify(frames)}; message.js requests: ${JSON.stringify(fetched)}; ` +
      `console: ${JSON.stringify(consoleLines.slice(-8))}`;
  };
  // One edit, then (only if its update never shows) a second one: the dev
  // server's file watcher can miss an edit on a loaded machine, which says
  // nothing about the proxy. The second update must arrive, through the
  // proxy, or the step fails with everything the page saw.
  let missed = null;
  for (const version of ['version 2', 'version 3']) {
    await writeFile(join(appDir, 'src/message.js'), `export const message = '${version}';\n`);
    try {
      await page.waitForFunction(
        (expected) => document.getElementById('message').textContent === expected,
        version,
        { timeout: HOT_UPDATE_MS, polling: POLL_MS },
      );
      break;
    } catch (error) {
      const report = `${error.message.split('\n')[0]} ${await diagnose()}`;
      if (missed !== null) throw new Error(`two edits, no hot update. First: ${missed} Second: ${report}`);
      missed = report;
      console.error(`hot_update: the first edit did not show; editing again. ${report}`);
    }
  }
  check(await page.evaluate(() => window.notReloaded === true), 'the page reloaded instead of updating');
  check(reloads === loadsBefore, 'the page loaded again');
  const carried = sockets.filter((s) => s.received.some((m) => m.includes('"type":"update"')));
  check(carried.length > 0 && carried.every((s) => viaProxy(s.url)),
    `the update came over ${carried.map((s) => s.url).join(', ') || 'no socket'}`);
  return { text: await page.textContent('#message'), update_over: carried[0].url, first_edit_missed: missed !== null };
});

/** The page's own fetch of the report route, and the Accept it sent. */
async function pageFetch() {
  const [request, result] = await Promise.all([
    page.waitForRequest(reportUrl),
    page.evaluate(() => window.loadReport()),
  ]);
  const accept = (await request.allHeaders()).accept;
  return { ...result, accept };
}

// (3) Under plan `pro` the app's API call passes; after the switch to `free`
// the same call from the same page is a 403 problem+json, and a navigation
// to it is the HTML page.
await step('fetch_allowed_on_pro', async () => {
  const seen = await pageFetch();
  check(seen.status === 200, `the fetch answered ${seen.status}: ${seen.body.slice(0, 200)}`);
  check(JSON.parse(seen.body).quarter === 'q3', `unexpected body ${seen.body.slice(0, 200)}`);
  return { status: seen.status, accept: seen.accept };
});

await handOver('plan_free');

await step('fetch_denied_on_free', async () => {
  const seen = await pageFetch();
  check(seen.status === 403, `the fetch answered ${seen.status}: ${seen.body.slice(0, 200)}`);
  check(seen.contentType?.startsWith('application/problem+json'), `content-type ${seen.contentType}`);
  const problem = JSON.parse(seen.body);
  check(problem.reason === 'feature_not_licensed', `reason ${problem.reason}`);
  check(await page.evaluate(() => window.notReloaded === true), 'the page reloaded');
  return { status: seen.status, content_type: seen.contentType, reason: problem.reason, accept: seen.accept };
});

await step('denied_page', async () => {
  const denied = await context.newPage();
  const response = await denied.goto(reportUrl);
  const contentType = response.headers()['content-type'];
  check(response.status() === 403, `the navigation answered ${response.status()}`);
  check(contentType?.startsWith('text/html'), `content-type ${contentType}`);
  await denied.getByRole('heading', { name: 'Feature not licensed' }).waitFor({ state: 'visible' });
  await denied.getByText('feature_not_licensed', { exact: true }).first().waitFor({ state: 'visible' });
  const title = await denied.title();
  await denied.close();
  return { status: response.status(), content_type: contentType, title };
});

await handOver('upstream_stopped');

// (4) With the dev server stopped, a navigation shows the 502 page.
await step('upstream_down_page', async () => {
  const down = await context.newPage();
  const response = await down.goto(proxy.href);
  const contentType = response.headers()['content-type'];
  check(response.status() === 502, `the navigation answered ${response.status()}`);
  check(contentType?.startsWith('text/html'), `content-type ${contentType}`);
  const text = down.getByText('refused the connection').first();
  await text.waitFor({ state: 'visible' });
  const sentence = await text.textContent();
  await down.close();
  return { status: response.status(), content_type: contentType, text: sentence };
});

await within(STEP_MS, browser.close(), 'closing the browser').catch(() => {});
clearTimeout(watchdog);
emit({ done: true, failed });
process.exit(failed === 0 ? 0 : 1);
