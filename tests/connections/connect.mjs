// A per-user upstream connection made in headless Chromium (Debian's package), the way a
// person would: an MCP client (this script) signs alice in to the generated `connections`
// server through bmm-as, calls `list_notes`, gets the URL elicitation (2026-07-28, input
// required, mode url), opens the link in the browser (the page does not say whose link it
// is), clicks Connect, signs in at bmm-as as the MCP server's authorization server (the
// identity check: the browser user must be the one the link was made for), then signs in
// and approves at bmm-as in its second role (the notebook's authorization server), lands on
// the "connected" page, and retries the call, which now
// succeeds. A stand-in notebook API on <notebook-port> records every request: it must have
// seen alice's notebook token (audience the notebook, subject alice, issued to the
// server's notebook client), never the MCP token. Disconnecting then asks again.
// Screenshots of the three pages go to <out-dir>. <notebook-resource> is the notebook's
// resource identifier as the spec names it (the audience of its tokens, wherever the API
// listens).
//
// usage: node connect.mjs <mcp-url> <issuer> <notebook-port> <notebook-resource> <out-dir>
import { createServer } from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [mcpUrl, issuer, notebookPort, notebookResource, outDir] = process.argv.slice(2);
if (!mcpUrl || !issuer || !notebookPort || !notebookResource || !outDir) {
  console.error('usage: node connect.mjs <mcp-url> <issuer> <notebook-port> <notebook-resource> <out-dir>');
  process.exit(2);
}
const listen = (server, port) => new Promise((ok) => server.listen(port, '127.0.0.1', ok));

// The stand-in notebook API: records the Authorization header of every request.
const seen = [];
const notebook = createServer((req, res) => {
  seen.push({ path: req.url, authorization: req.headers.authorization ?? '' });
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ notes: [{ id: 1, title: 'Written in the notebook app' }] }));
});
await listen(notebook, Number(notebookPort));

// The MCP client's own redirect target (its sign-in at bmm-as).
let received;
const callback = createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (url.pathname === '/callback') received = url;
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end('<h1>Signed in</h1>');
});
await listen(callback, 0);
const redirectUri = `http://127.0.0.1:${callback.address().port}/callback`;

const checks = [];
const check = (ok, what) => {
  if (!ok) throw new Error(what);
  checks.push(what);
};

/// One stateless 2026-07-28 tools/call; the JSON-RPC answer (JSON or SSE).
async function call(token, name, capabilities, inputResponses) {
  const _meta = {
    'io.modelcontextprotocol/protocolVersion': '2026-07-28',
    'io.modelcontextprotocol/clientCapabilities': capabilities,
    'io.modelcontextprotocol/clientInfo': { name: 'connect.mjs', version: '1' },
  };
  const params = { name, arguments: {}, _meta };
  if (inputResponses) params.inputResponses = inputResponses;
  const r = await fetch(mcpUrl, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${token}`,
      accept: 'application/json, text/event-stream',
      'content-type': 'application/json',
      'mcp-protocol-version': '2026-07-28',
      'mcp-method': 'tools/call',
      'mcp-name': name,
    },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params }),
  });
  const text = await r.text();
  const data = text.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).filter(Boolean);
  for (const d of data.length ? data : [text]) {
    try {
      const message = JSON.parse(d);
      if (message.id !== undefined) return message;
    } catch {}
  }
  throw new Error(`${name}: no JSON-RPC answer (${r.status}): ${text.slice(0, 300)}`);
}

const claims = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let failure;
try {
  const page = await browser.newPage();

  // 1. The MCP client signs alice in to the MCP server (authorization code + PKCE at bmm-as).
  const registration = await fetch(`${issuer}/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_name: 'Connections Test Client', redirect_uris: [redirectUri], token_endpoint_auth_method: 'none' }),
  }).then((r) => r.json());
  const verifier = randomBytes(32).toString('base64url');
  const authorize = new URL(`${issuer}/authorize`);
  for (const [k, v] of Object.entries({
    response_type: 'code', client_id: registration.client_id, redirect_uri: redirectUri,
    state: randomBytes(8).toString('hex'), resource: mcpUrl,
    code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256',
  })) authorize.searchParams.set(k, v);
  await page.goto(authorize.toString());
  await page.fill('#username', 'alice');
  await page.fill('#password', 'wonderland');
  await Promise.all([page.waitForURL(`${redirectUri}**`), page.click('#approve')]);
  const token = await fetch(`${issuer}/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code: received.searchParams.get('code'), redirect_uri: redirectUri, code_verifier: verifier, client_id: registration.client_id, resource: mcpUrl }),
  }).then((r) => r.json());
  const mcpToken = token.access_token;
  check(typeof mcpToken === 'string' && claims(mcpToken).aud === mcpUrl, 'alice signed in to the MCP server (a token for its URL)');

  // 2. The first call: URL elicitation (input required, mode url), nothing sent upstream.
  const caps = { elicitation: { url: {} } };
  const first = await call(mcpToken, 'list_notes', caps);
  const ask = first.result?.inputRequests?.bmm_connect_notebook;
  check(first.result?.resultType === 'input_required' && ask?.method === 'elicitation/create' && ask.params.mode === 'url',
    'list_notes answers input_required with an elicitation/create in url mode');
  const link = ask.params.url;
  check(link.startsWith(new URL(mcpUrl).origin + '/connections/notebook/start?t='), `the link is the server's connect page (${new URL(link).pathname})`);
  check(seen.length === 0, 'the notebook API was not called before connecting');

  // 3. The browser opens the link: the page names the upstream, not whose link it is.
  await page.goto(link);
  const upstream = await page.textContent('#upstream');
  check(upstream === 'notebook', `the connect page names the upstream (${upstream})`);
  check(!(await page.content()).includes('alice'), 'the connect page does not say who generated the link');
  check((await page.textContent('#warning')).includes('someone else'), 'the connect page warns against links from others');
  await page.screenshot({ path: join(outDir, 'start.png'), fullPage: true });
  await Promise.all([page.waitForURL(`${issuer}/authorize**`), page.click('#connect')]);
  // 4. bmm-as as the MCP server's authorization server: alice proves she is the link's user.
  check((await page.textContent('#resource')) === mcpUrl, 'the connect page first signs the browser user in to the MCP server');
  check(new URL(page.url()).searchParams.get('client_id') === 'connections-connect', "as the server's connect client");
  await page.fill('#username', 'alice');
  await page.fill('#password', 'wonderland');
  await page.screenshot({ path: join(outDir, 'verify.png'), fullPage: true });
  await Promise.all([
    page.waitForURL((u) => u.pathname === '/authorize' && u.searchParams.get('client_id') === 'connections-notebook'),
    page.click('#approve'),
  ]);
  checks.push('signed in as alice at the MCP server\'s authorization server; the connect page let her through to the notebook');
  // 5. bmm-as (the notebook's authorization server): sign in and approve.
  check((await page.textContent('#resource')) === notebookResource, 'bmm-as asks consent for the notebook API');
  await page.fill('#username', 'alice');
  await page.fill('#password', 'wonderland');
  await page.screenshot({ path: join(outDir, 'consent.png'), fullPage: true });
  await Promise.all([page.waitForURL('**/connections/notebook/callback**'), page.click('#approve')]);
  await page.waitForSelector('#connected');
  await page.screenshot({ path: join(outDir, 'connected.png'), fullPage: true });
  check(!(await page.content()).includes('eyJ'), 'no token on the connected page');
  checks.push('signed in and approved at bmm-as; the callback stored the connection');

  // 6. The retried call succeeds with alice's notebook token.
  const retried = await call(mcpToken, 'list_notes', caps, { bmm_connect_notebook: { action: 'accept' } });
  check(retried.result?.structuredContent?.notes?.[0]?.title === 'Written in the notebook app',
    `the retried list_notes returns alice's notes: ${JSON.stringify(retried).slice(0, 200)}`);
  check(seen.length === 1, `the notebook API saw one request (${seen.length})`);
  const bearer = seen[0].authorization.replace(/^Bearer /, '');
  check(bearer !== seen[0].authorization && bearer !== mcpToken, 'the notebook API got a bearer token, not the MCP token');
  const c = claims(bearer);
  check(c.aud === notebookResource && c.sub === 'alice' && c.iss === issuer && c.client_id === 'connections-notebook',
    `the notebook token is alice's, for the notebook, issued to the server's notebook client (aud ${c.aud}, sub ${c.sub}, client ${c.client_id})`);

  // 7. Disconnecting forgets it: the next call asks again.
  const gone = await call(mcpToken, 'disconnect_notebook', {});
  check(gone.result?.content?.[0]?.text?.includes('Disconnected'), 'disconnect_notebook deletes the connection');
  const again = await call(mcpToken, 'list_notes', caps);
  check(again.result?.resultType === 'input_required', 'after disconnecting, list_notes asks to connect again');
  check(seen.every((s) => !s.authorization.includes(mcpToken)), 'the MCP token never reached the notebook API');
} catch (e) {
  failure = e.message;
} finally {
  await browser.close();
  callback.close();
  notebook.close();
}
for (const c of checks) console.log(`connections: ok: ${c}`);
if (failure) {
  console.error(`connections: FAILED: ${failure}`);
  process.exit(1);
}
console.log(`connections: a per-user connection made in headless Chromium; screenshots in ${outDir}`);
