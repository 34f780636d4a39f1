// panva's oidc-provider (pinned in ../package.json) as a third-party authorization server
// that issues OPAQUE access tokens and answers RFC 7662 introspection: what `cargo xtask
// oidc-provider` runs a generated server against.
//
// usage: node provider.mjs [PORT]            (0 or absent: a free port)
// Configuration, as JSON in the environment variable OIDC_PROVIDER_CONFIG (secrets stay off
// the command line):
//   {
//     "resources": { "<resource URL>": "<space-separated scopes>", ... },
//     "default_resource": "<resource URL>",          (optional: when a request names none)
//     "client": { "client_id": "...", "client_secret": "..." },           (client_credentials)
//     "resource_server": { "client_id": "...", "client_secret": "..." }   (introspection only)
//   }
// Every resource gets opaque access tokens whose `aud` is the resource URL itself (RFC 8707),
// valid for 300 s. Only the resource-server client may introspect (client_secret_basic); it
// is told about every token, including tokens for other resources, so the resource server's
// own audience check is what refuses those. Signing keys are generated at start and held in
// memory, like every token and grant (the provider's in-memory adapter).
//
// Prints `issuer http://127.0.0.1:<port>` on stdout once it listens; stops on SIGTERM/SIGINT.
import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

const port = Number(process.argv[2] ?? 0);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error('usage: node provider.mjs [PORT]  (configuration in OIDC_PROVIDER_CONFIG)');
  process.exit(2);
}
let config;
try {
  config = JSON.parse(process.env.OIDC_PROVIDER_CONFIG ?? '');
} catch (e) {
  console.error(`OIDC_PROVIDER_CONFIG must be JSON: ${e.message}`);
  process.exit(2);
}
const { resources, client, resource_server: rs } = config;
for (const [what, value] of [['resources', resources], ['client', client], ['resource_server', rs]]) {
  if (!value || typeof value !== 'object') {
    console.error(`OIDC_PROVIDER_CONFIG: "${what}" is missing`);
    process.exit(2);
  }
}

const server = createServer();
await new Promise((ok, fail) => {
  server.once('error', fail);
  server.listen(port, '127.0.0.1', ok);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

// RS256: the provider's default for ID tokens (none are issued here, but clients are checked
// against the key set).
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), alg: 'RS256', use: 'sig', kid: randomBytes(8).toString('hex') };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: client.client_id,
      client_secret: client.client_secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: rs.client_id,
      client_secret: rs.client_secret,
      grant_types: [],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // RFC 7662 section 2.1: only the resource server's own credentials may ask.
      allowedPolicy: async (_ctx, caller) => caller.clientId === rs.client_id,
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf ?? config.default_resource,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resource) => {
        if (!Object.hasOwn(resources, resource)) {
          throw new errors.InvalidTarget(`unknown resource ${resource}`);
        }
        return {
          scope: resources[resource],
          audience: resource,
          accessTokenFormat: 'opaque',
          accessTokenTTL: 300,
        };
      },
    },
  },
});
// Plain http on loopback is what this test wants; say nothing about it on every request.
provider.on('server_error', (_ctx, err) => console.error(`oidc-provider: server_error: ${err.message}`));
server.on('request', provider.callback());

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
console.log(`issuer ${issuer}`);
