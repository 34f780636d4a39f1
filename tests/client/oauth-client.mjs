// A real MCP client against bmm: the official TypeScript SDK (pinned in tests/package.json)
// runs its own OAuth flow against bmm-as and a generated server, with nothing in bmm
// special-cased for it. The SDK's `auth()` does the discovery (401 -> protected resource
// metadata -> authorization server metadata), dynamic client registration, PKCE and the
// RFC 8707 `resource` parameter; this script only plays the browser (bmm-as runs in dev
// mode, so /authorize redirects straight back with a code) and checks the outcome.
//
// usage: node oauth-client.mjs <mcp url> <other mcp url>
// Exit code 0 only if every check holds; each step is printed.

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";

const [url, otherUrl] = process.argv.slice(2);
if (!url || !otherUrl) {
  console.error("usage: node oauth-client.mjs <mcp url> <other mcp url>");
  process.exit(2);
}

function check(condition, what) {
  if (!condition) {
    console.error(`FAIL: ${what}`);
    process.exit(1);
  }
  console.log(`ok: ${what}`);
}

/** An in-memory OAuthClientProvider whose "browser" follows the authorization redirect. */
class LoopbackProvider {
  constructor() {
    this.redirect = "http://127.0.0.1:8976/callback";
    this.saved = {};
    this.authorizationUrl = undefined;
    this.code = undefined;
  }
  get redirectUrl() {
    return this.redirect;
  }
  get clientMetadata() {
    return {
      client_name: "bmm TypeScript SDK check",
      redirect_uris: [this.redirect],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  }
  clientInformation() {
    return this.saved.client;
  }
  saveClientInformation(info) {
    this.saved.client = info;
  }
  tokens() {
    return this.saved.tokens;
  }
  saveTokens(tokens) {
    this.saved.tokens = tokens;
  }
  saveCodeVerifier(verifier) {
    this.saved.verifier = verifier;
  }
  codeVerifier() {
    return this.saved.verifier;
  }
  async redirectToAuthorization(authorizationUrl) {
    this.authorizationUrl = authorizationUrl;
    const response = await fetch(authorizationUrl, { redirect: "manual" });
    const location = response.headers.get("location");
    if (![302, 303].includes(response.status) || !location) {
      throw new Error(`authorize answered ${response.status}: ${await response.text()}`);
    }
    const callback = new URL(location);
    this.code = callback.searchParams.get("code");
    this.issuerParam = callback.searchParams.get("iss");
  }
}

function claims(jwt) {
  return JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());
}

const provider = new LoopbackProvider();

// 1. The first connection is refused; the SDK discovers, registers and sends the user to
//    the authorization endpoint.
const client = new Client({ name: "bmm-sdk-check", version: "1.0.0" });
let transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
let refused = false;
try {
  await client.connect(transport);
} catch (e) {
  refused = e instanceof UnauthorizedError;
  if (!refused) {
    console.error(e);
  }
}
check(refused, "unauthenticated connect is refused and starts the OAuth flow");
check(provider.saved.client?.client_id, "the SDK registered itself (RFC 7591)");
const authUrl = provider.authorizationUrl;
check(authUrl?.searchParams.get("code_challenge_method") === "S256", "PKCE S256");
check(authUrl?.searchParams.get("resource") === url, `resource=${url} on /authorize (RFC 8707)`);
check(provider.code, "bmm-as redirected back with a code");
check(provider.issuerParam, "the redirect carries iss (RFC 9207)");

// 2. The code becomes a token bound to this server.
await transport.finishAuth(provider.code);
const token = provider.saved.tokens?.access_token;
check(token, "token exchange");
const payload = claims(token);
const aud = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
check(aud.includes(url), `the access token's aud is ${url}`);
check(provider.saved.tokens.refresh_token, "a refresh token was issued");

// 3. Connected: initialize (2025-11-25, the newest era this SDK speaks), tools/list, tools/call.
transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider });
await client.connect(transport);
check(client.getServerVersion()?.name, `initialized (protocol ${transport.protocolVersion ?? "negotiated"})`);
const { tools } = await client.listTools();
check(tools.some((t) => t.name === "add_note"), `tools/list: ${tools.map((t) => t.name).join(", ")}`);
const added = await client.callTool({
  name: "add_note",
  arguments: { title: "from the SDK", text: "written through OAuth", tags: ["sdk"] },
});
check(!added.isError && added.structuredContent?.id >= 1, `tools/call add_note -> ${JSON.stringify(added.structuredContent)}`);
const listed = await client.callTool({ name: "list_notes", arguments: { tag: "sdk" } });
check(
  listed.structuredContent?.notes?.some((n) => n.title === "from the SDK"),
  "tools/call list_notes finds it",
);
await client.close();

// 4. The same token is worthless at another server (audience binding).
const response = await fetch(otherUrl, {
  method: "POST",
  headers: {
    authorization: `Bearer ${token}`,
    "content-type": "application/json",
    accept: "application/json, text/event-stream",
  },
  body: JSON.stringify({
    jsonrpc: "2.0",
    id: 1,
    method: "initialize",
    params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "x", version: "1" } },
  }),
});
const challenge = response.headers.get("www-authenticate") ?? "";
check(
  response.status === 401 && challenge.includes('error="invalid_token"'),
  `the token is refused by ${otherUrl}: ${response.status} ${challenge}`,
);
console.log("TypeScript SDK OAuth client: all checks passed");
process.exit(0);
