// Drives Debian's Chromium through the starter page for host/tests/starter_page.rs, run
// inside the node's network namespace: the login link, a wrong password (the AS's
// error on the form), the right one, the status view with the node's name and a peer
// row, screenshots (the status view; the form with the refusal), and the log-out
// button. Prints one JSON line of what it saw (`RESULT {...}`); exits non-zero, with
// the reason, on any failure.
//
// Environment: UI_URL (the one-time link), DEVICE_ID, PASSWORD, WRONG_PASSWORD,
// EXPECT_FQDN, EXPECT_ERROR (text the refusal must contain), PEER_FQDN, SCREENSHOT,
// CYPHONIC_UI_NODE_MODULES (where playwright-core is), CHROMIUM (the browser).
'use strict';

const path = require('path');

const env = (name) => {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set`);
  }
  return value;
};

const { chromium } = require(path.join(env('CYPHONIC_UI_NODE_MODULES'), 'playwright-core'));

const STEP_MS = 15000;
const NODE_UP_MS = 60000;

async function main() {
  const url = env('UI_URL');
  const origin = new URL(url).origin;
  const browser = await chromium.launch({
    executablePath: env('CHROMIUM'),
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-proxy-server',
    ],
  });
  const seen = { cspViolations: [] };
  let page = null;
  try {
    const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
    page = await context.newPage();
    page.on('console', (msg) => {
      if (/Content Security Policy/i.test(msg.text())) {
        seen.cspViolations.push(msg.text());
      }
    });
    page.on('pageerror', (e) => seen.cspViolations.push(`page error: ${e.message}`));

    // The link: token -> session cookie -> the page, with the token gone from the URL.
    await page.goto(url);
    await page.waitForURL(`${origin}/`, { timeout: STEP_MS });
    seen.landedAt = page.url();
    seen.cookieVisibleToScript = (await page.evaluate(() => document.cookie)).length > 0;
    await page.locator('#login').waitFor({ state: 'visible', timeout: STEP_MS });

    // A wrong password: the AS's refusal shows on the form.
    await page.fill('#device-id', env('DEVICE_ID'));
    await page.fill('#password', env('WRONG_PASSWORD'));
    await page.click('#login-button');
    const error = page.locator('#login-error');
    await error.waitFor({ state: 'visible', timeout: 30000 });
    seen.loginError = (await error.textContent()).trim();
    if (!seen.loginError.includes(env('EXPECT_ERROR'))) {
      throw new Error(`the form shows ${JSON.stringify(seen.loginError)}`);
    }
    if (!(await page.locator('#login').isVisible())) {
      throw new Error('the login form went away after a wrong password');
    }
    seen.loginScreenshot = env('SCREENSHOT').replace(/\.png$/, '-login-error.png');
    await page.screenshot({ path: seen.loginScreenshot, fullPage: true });

    // The right one: the status view with this node's name.
    await page.fill('#password', env('PASSWORD'));
    await page.click('#login-button');
    await page.locator('#status').waitFor({ state: 'visible', timeout: 30000 });
    const fqdn = env('EXPECT_FQDN');
    await page.waitForFunction(
      (want) => document.getElementById('fqdn').textContent === want,
      fqdn,
      { timeout: NODE_UP_MS },
    );
    seen.fqdn = await page.textContent('#fqdn');
    seen.vip4 = await page.textContent('#vip4');
    await page.waitForFunction(
      () => document.getElementById('cloud-state').textContent === 'registered',
      null,
      { timeout: NODE_UP_MS },
    );
    seen.cloud = await page.textContent('#cloud-state');
    // Tell the test to make traffic to the peer now.
    console.log('LOGGED-IN');

    // The peer appears with its path kind (the page polls every 2 s).
    const row = page.locator(`#peers tbody tr[data-peer="${env('PEER_FQDN')}"]`);
    await row.waitFor({ state: 'visible', timeout: NODE_UP_MS });
    seen.peerPath = (await row.locator('.path').textContent()).trim();
    if (!/^(direct|local|punched|relayed)/.test(seen.peerPath)) {
      throw new Error(`peer path ${JSON.stringify(seen.peerPath)}`);
    }
    // Wait for traffic to show (the test pings the peer).
    await page.waitForFunction(
      (peer) => {
        const tr = document.querySelector(`#peers tbody tr[data-peer="${peer}"]`);
        return tr && !tr.cells[5].textContent.startsWith('0 B');
      },
      env('PEER_FQDN'),
      { timeout: NODE_UP_MS },
    );
    seen.peerRow = await row.evaluate((tr) => Array.from(tr.cells, (c) => c.textContent));
    await page.screenshot({ path: env('SCREENSHOT'), fullPage: true });
    seen.screenshot = env('SCREENSHOT');

    // Log out: back to the login form.
    await page.click('#logout');
    await page.locator('#login').waitFor({ state: 'visible', timeout: 30000 });
    seen.loggedOut = true;
    if (seen.cspViolations.length) {
      throw new Error(`CSP violations: ${seen.cspViolations.join(' | ')}`);
    }
    console.log(`RESULT ${JSON.stringify(seen)}`);
  } catch (e) {
    console.log(`SEEN ${JSON.stringify(seen)}`);
    if (page) {
      // What the page showed when it went wrong, next to where the screenshot goes.
      const failed = env('SCREENSHOT').replace(/\.png$/, '-failed.png');
      await page.screenshot({ path: failed, fullPage: true }).catch(() => {});
      console.log(`failure screenshot: ${failed}`);
    }
    throw e;
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(`starter page driver failed: ${e.stack || e}`);
  process.exit(1);
});
