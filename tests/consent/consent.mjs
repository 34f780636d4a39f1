// Drives bmm-as's sign-in and consent page in headless Chromium (Debian's package) the way a
// person would: open the authorization URL, read what is asked, type the password, approve,
// and land on the client's redirect URI with a code. Saves a screenshot of the page.
//
// usage: node consent.mjs <issuer> <resource> <screenshot.png>
import { createServer } from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

const [issuer, resource, screenshot] = process.argv.slice(2);
if (!issuer || !resource || !screenshot) {
  console.error('usage: node consent.mjs <issuer> <resource> <screenshot.png>');
  process.exit(2);
}

// The client's redirect target: a real loopback server that records the callback.
let received;
const callback = createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  // Only the redirect counts: the browser also asks for /favicon.ico.
  if (url.pathname === '/callback') received = url;
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end('<h1>Signed in</h1>');
});
await new Promise((ok) => callback.listen(0, '127.0.0.1', ok));
const redirectUri = `http://127.0.0.1:${callback.address().port}/callback`;

const registration = await fetch(`${issuer}/register`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ client_name: 'Consent Test Client', redirect_uris: [redirectUri], token_endpoint_auth_method: 'none' }),
}).then((r) => r.json());

const verifier = randomBytes(32).toString('base64url');
const challenge = createHash('sha256').update(verifier).digest('base64url');
const state = randomBytes(8).toString('hex');
const authorize = new URL(`${issuer}/authorize`);
for (const [k, v] of Object.entries({
  response_type: 'code', client_id: registration.client_id, redirect_uri: redirectUri, state,
  code_challenge: challenge, code_challenge_method: 'S256', scope: 'mcp:read', resource,
})) authorize.searchParams.set(k, v);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let failure;
try {
  const page = await browser.newPage();
  await page.goto(authorize.toString());
  const clientName = await page.textContent('#client-name');
  const shownResource = await page.textContent('#resource');
  const scopes = await page.textContent('#scopes');
  if (clientName !== 'Consent Test Client') failure = `client name shown: ${clientName}`;
  if (shownResource !== resource) failure = `resource shown: ${shownResource}`;
  if (!scopes.includes('mcp:read')) failure = `scopes shown: ${scopes}`;
  await page.fill('#username', 'alice');
  await page.fill('#password', 'wonderland');
  await page.screenshot({ path: screenshot, fullPage: true });
  await Promise.all([page.waitForURL(`${redirectUri}**`), page.click('#approve')]);
} finally {
  await browser.close();
  callback.close();
}
if (!failure && !received) failure = 'the redirect never reached the client';
if (!failure && received.searchParams.get('state') !== state) failure = 'state was not echoed';
if (!failure && received.searchParams.get('iss') !== issuer) failure = 'iss missing from the redirect';
const code = received?.searchParams.get('code');
if (!failure && !code) failure = `no code in the redirect: ${received}`;
if (!failure) {
  const token = await fetch(`${issuer}/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier, client_id: registration.client_id, resource }),
  });
  if (token.status !== 200) failure = `token exchange answered ${token.status}: ${await token.text()}`;
}
if (failure) {
  console.error(`consent: FAILED: ${failure}`);
  process.exit(1);
}
console.log(`consent: signed in through Chromium, approved, redirected with a code and exchanged it; screenshot ${screenshot}`);
