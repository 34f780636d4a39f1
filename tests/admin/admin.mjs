// Drives bmm-as's admin page in headless Chromium (Debian's package) the way an operator
// would: a non-admin is refused; the admin signs in, sees a registered client and its grant,
// revokes the grant (its refresh token then fails at /token) and filters the audit trail.
// bmm-as runs in dev mode (carol approves every authorization), so the grant needs no
// browser; the admin page still needs a password. Saves a screenshot of the page.
//
// usage: node admin.mjs <issuer> <resource> <screenshot.png>
import { createHash, randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

const [issuer, resource, screenshot] = process.argv.slice(2);
if (!issuer || !resource || !screenshot) {
  console.error('usage: node admin.mjs <issuer> <resource> <screenshot.png>');
  process.exit(2);
}
const fail = (why) => {
  throw new Error(why);
};

// A client and a grant: register, authorize (auto-approved), exchange the code.
const redirectUri = 'http://127.0.0.1:33418/callback';
const registration = await fetch(`${issuer}/register`, {
  method: 'POST',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ client_name: 'Admin Test Client', redirect_uris: [redirectUri], token_endpoint_auth_method: 'none' }),
}).then((r) => r.json());
const clientId = registration.client_id;
const verifier = randomBytes(32).toString('base64url');
const authorize = new URL(`${issuer}/authorize`);
for (const [k, v] of Object.entries({
  response_type: 'code', client_id: clientId, redirect_uri: redirectUri,
  code_challenge: createHash('sha256').update(verifier).digest('base64url'),
  code_challenge_method: 'S256', scope: 'mcp:read', resource,
})) authorize.searchParams.set(k, v);
const redirect = await fetch(authorize, { redirect: 'manual' });
const code = new URL(redirect.headers.get('location') ?? 'about:blank').searchParams.get('code');
if (!code) fail(`no code from /authorize (${redirect.status})`);
const tokens = await fetch(`${issuer}/token`, {
  method: 'POST',
  headers: { 'content-type': 'application/x-www-form-urlencoded' },
  body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier, client_id: clientId, resource }),
}).then((r) => r.json());
if (!tokens.refresh_token) fail(`no refresh token: ${JSON.stringify(tokens)}`);
const refresh = () => fetch(`${issuer}/token`, {
  method: 'POST',
  headers: { 'content-type': 'application/x-www-form-urlencoded' },
  body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token, client_id: clientId }),
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const signIn = async (user) => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${issuer}/admin`);
  await page.fill('#username', user);
  await page.fill('#password', 'wonderland');
  await Promise.all([page.waitForNavigation(), page.click('#sign-in')]);
  return page;
};
try {
  // A user who is not an admin is refused, password right or not.
  const bob = await signIn('bob');
  const refusal = (await bob.textContent('#error')) ?? '';
  if (!refusal.includes('may not open the admin page')) fail(`bob was not refused: ${refusal}`);
  if (await bob.$('#clients')) fail('bob sees the clients table');

  // The admin sees the client (with its redirect URI) and the grant.
  const page = await signIn('alice');
  const clients = (await page.textContent('#clients')) ?? '';
  if (!clients.includes(clientId) || !clients.includes(redirectUri)) fail(`client not listed: ${clients}`);
  const grantRow = page.locator('tr.grant', { hasText: clientId });
  if ((await grantRow.count()) !== 1) fail('the grant is not listed');
  if (!(await grantRow.textContent()).includes('carol')) fail('the grant is not carol\'s');
  const html = await page.content();
  if (html.includes(tokens.refresh_token)) fail('the refresh token is on the page');

  // Revoke it: the page says so, and the refresh token no longer works.
  await Promise.all([page.waitForNavigation(), grantRow.locator('button.revoke').click()]);
  const notice = (await page.textContent('#notice')) ?? '';
  if (!notice.includes('revoked')) fail(`no revocation notice: ${notice}`);
  if ((await page.locator('tr.grant', { hasText: clientId }).count()) !== 0) fail('the grant is still listed');
  const after = await refresh();
  const body = await after.json();
  if (after.status !== 400 || body.error !== 'invalid_grant') fail(`refresh after revoke answered ${after.status} ${JSON.stringify(body)}`);

  // Filter the audit trail by client and type.
  await page.fill('#filter-client', clientId);
  await page.selectOption('#filter-type', 'admin_revoke');
  await Promise.all([page.waitForNavigation(), page.click('#filter')]);
  const types = await page.locator('tr.event td.event-type').allTextContents();
  if (types.length !== 1 || types[0] !== 'admin_revoke') fail(`filtered trail: ${types}`);
  await page.selectOption('#filter-type', 'registration');
  await Promise.all([page.waitForNavigation(), page.click('#filter')]);
  const registered = await page.locator('tr.event .event-client').allTextContents();
  if (registered.length !== 1 || registered[0] !== clientId) fail(`registrations: ${registered}`);
  await page.selectOption('#filter-type', '');
  await Promise.all([page.waitForNavigation(), page.click('#filter')]);
  await page.screenshot({ path: screenshot, fullPage: true });
} catch (e) {
  console.error(`admin page: FAILED: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
if (!process.exitCode) {
  console.log(`admin page: non-admin refused; admin saw the client and grant, revoked it (refresh then failed), filtered the audit trail; screenshot ${screenshot}`);
}
