//! Runtime configuration: flags (and their environment variables) plus an optional TOML
//! file with users, scopes, resources, pre-registered clients and resource servers.
//!
//! Resource servers (`[[resource_servers]]`, RFC 7662 introspection callers) are
//! configured in the file only, one table each:
//!
//! ```toml
//! [[resource_servers]]
//! resource = "https://mcp.example.com/mcp"   # one of the configured resources
//! client_id = "notes-rs"                     # how it authenticates at /introspect
//! client_secret_sha256 = "<64 hex digits>"   # SHA-256 of its secret (client_secret_basic), or
//! # jwks = { keys = [ ... ] }                # its public keys (private_key_jwt), or
//! # jwks_uri = "https://rs.example/jwks.json"
//! token_format = "opaque"                    # "jwt" (default) or "opaque"
//! # May exchange its callers' tokens (RFC 8693) for tokens of these resources:
//! token_exchange = { audiences = ["https://api.example.com"], scopes = ["calendar.read"] }
//! ```
//!
//! Resource-server rules:
//! 1. `resource` must be one of the configured resources (`--resource` or `resources`);
//!    one resource server introspects tokens of that resource only.
//! 2. Exactly one of `client_secret_sha256` (the lowercase or uppercase hex SHA-256 of a
//!    high-entropy secret: the plain secret is never in the file), `jwks` and `jwks_uri`.
//! 3. `client_id` is unique among resource servers and is not a `[[clients]]` id (at
//!    `/token` a resource server only exchanges tokens, rule 5, authenticated as at
//!    `/introspect`).
//! 4. `token_format` is what `/token` issues for the resource: `jwt` (RS256 JWTs) or
//!    `opaque` (`bmo_` tokens stored hashed, usable only through introspection). Two
//!    resource servers of one resource must agree on it.
//! 5. `token_exchange` (optional; only `audiences` and `scopes`, anything else is refused)
//!    lets the resource server exchange access tokens of its resource at `/token` (RFC
//!    8693, see `exchange`) for tokens of the `audiences`: each one a configured resource
//!    (`--resource` / `resources`, which every `[[resource_servers]]` resource is too), at
//!    least one. `scopes`, when given (non-empty, each one a scope the server offers when
//!    `scopes` is set), is the most an exchanged token may carry. Without
//!    `token_exchange` the resource server may not exchange.
//!
//! Errors name the file, the entry (`resource_servers[N]`, with its `client_id`) and the
//! field.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;
use url::Url;

/// `bmm-as`: the OAuth 2.1 authorization server of bmm.
#[derive(Debug, Clone, Parser)]
#[command(name = "bmm-as", version, about)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "BMM_AS_LISTEN", default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,
    /// The exact `issuer` of the metadata (default `http://<listen>`).
    #[arg(long, env = "BMM_AS_ISSUER")]
    pub issuer: Option<String>,
    /// Where keys and durable state live (created if missing).
    #[arg(long, env = "BMM_AS_DATA_DIR", default_value = ".bmm-as")]
    pub data_dir: PathBuf,
    /// A resource (MCP server URL) tokens may be issued for; repeatable.
    #[arg(long = "resource", env = "BMM_AS_RESOURCES", value_delimiter = ',')]
    pub resources: Vec<String>,
    /// TOML file with users, scopes, resources and clients.
    #[arg(long, env = "BMM_AS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Sign this user in and approve every consent (loopback listen addresses only; then
    /// registration, token and revocation answer CORS only for loopback origins).
    #[arg(long, env = "BMM_AS_DEV_USER")]
    pub dev_user: Option<String>,
    /// Pre-register a public client: `ID=REDIRECT_URI`; repeatable.
    #[arg(long = "client", value_name = "ID=REDIRECT_URI")]
    pub clients: Vec<String>,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, env = "BMM_AS_ACCESS_TOKEN_TTL", default_value_t = 3600)]
    pub access_token_ttl: u64,
    /// Lifetime of refresh tokens, in seconds.
    #[arg(long, env = "BMM_AS_REFRESH_TOKEN_TTL", default_value_t = 30 * 24 * 3600)]
    pub refresh_token_ttl: u64,
    /// Accept `http` Client ID Metadata Document URLs on loopback hosts, and let metadata
    /// documents be fetched from loopback addresses (local development and tests only).
    /// The same holds for the `jwks_uri` of `private_key_jwt` clients.
    #[arg(long, env = "BMM_AS_ALLOW_LOOPBACK_CIMD")]
    pub allow_loopback_cimd: bool,
    /// Most dynamically registered clients that have not completed an authorization yet;
    /// past it, a registration deletes the largest holder's oldest unused client.
    #[arg(long, env = "BMM_AS_MAX_UNUSED_CLIENTS", default_value_t = 1000)]
    pub max_unused_clients: u64,
    /// Seconds a dynamically registered client has to complete an authorization before it
    /// is deleted.
    #[arg(long, env = "BMM_AS_UNUSED_CLIENT_TTL", default_value_t = 3600)]
    pub unused_client_ttl: u64,
    /// Rotate the signing key at start-up (the old key stays published).
    #[arg(long)]
    pub rotate_keys: bool,
    /// Lifetime of authorization codes, in seconds (1 to 600).
    #[arg(long, env = "BMM_AS_CODE_TTL", default_value_t = 60)]
    pub code_ttl: u64,
    /// Seconds a client has to send a request's headers (and, with `--idle-timeout`, to
    /// send its first request) before the connection is closed.
    #[arg(long, env = "BMM_AS_HEADER_READ_TIMEOUT", default_value_t = 10)]
    pub header_read_timeout: u64,
    /// Seconds a connection may stay open with no request in flight before it is closed
    /// (keep-alive idle time; HTTP/2 pings are sent at this interval too).
    #[arg(long, env = "BMM_AS_IDLE_TIMEOUT", default_value_t = 60)]
    pub idle_timeout: u64,
    /// Open connections allowed from one client address; more are closed at once.
    #[arg(long, env = "BMM_AS_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 64)]
    pub max_connections_per_address: usize,
    /// A reverse proxy (CIDR or address) whose `X-Forwarded-For` / `Forwarded` header names
    /// the caller for per-address limits; repeatable. Other peers' headers are ignored.
    #[arg(
        long = "trusted-proxy",
        value_name = "CIDR",
        env = "BMM_AS_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// The shared database: `postgres://user@host/db` (several instances may serve from
    /// it). Without it, state is one SQLite file in the data directory. Also
    /// `database_url` in the config file. A password in it is never printed (`--help`
    /// hides the variable's value; logs show the URL redacted). TLS: add
    /// `?sslmode=require` (the server's certificate and host name are always verified,
    /// stricter than libpq's `require`; `verify-full` is read the same); without it, or with
    /// `sslmode=prefer` or `disable`, the connection is plain text.
    #[arg(long, env = "BMM_AS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// CA certificates (PEM) the database server's certificate may chain to, besides the
    /// system's, for `sslmode=require`; refused with any other sslmode. Also
    /// `database_ca_file` in the config file.
    #[arg(long, value_name = "PEM", env = "BMM_AS_DATABASE_CA_FILE")]
    pub database_ca_file: Option<PathBuf>,
    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "BMM_AS_DATABASE_POOL_SIZE", default_value_t = 8)]
    pub database_pool_size: usize,
    /// Seconds a used refresh token may be presented again (parallel refreshes by one
    /// client) and get another pair of the same grant instead of revoking it; 0: strict.
    #[arg(long, env = "BMM_AS_REFRESH_GRACE_SECS", default_value_t = 5)]
    pub refresh_grace_secs: u64,
    /// Days audit events are kept.
    #[arg(long, env = "BMM_AS_AUDIT_RETENTION_DAYS", default_value_t = 90)]
    pub audit_retention_days: u64,
    /// Require a server nonce in DPoP proofs at the token endpoint (RFC 9449 section 8):
    /// a proof without the current nonce is answered `use_dpop_nonce` with a `DPoP-Nonce`.
    #[arg(long, env = "BMM_AS_DPOP_NONCE")]
    pub dpop_nonce: bool,
    /// Another command instead of the server.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `bmm-as <command>`: tools next to the server (which runs without one).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Lists the audit trail (newest first) from the store the server uses.
    Audit(Box<crate::audit::AuditArgs>),
    /// Reads a password on stdin, prints the argon2id hash for the config file's
    /// `password_hash`.
    HashPassword,
}

/// The optional TOML configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Scopes clients may request. Empty: any well-formed scope is granted as asked.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Scopes granted when a request names none.
    #[serde(default)]
    pub default_scopes: Vec<String>,
    /// Resources tokens may be issued for (added to `--resource`).
    #[serde(default)]
    pub resources: Vec<String>,
    /// Accounts that can sign in.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Pre-registered clients.
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// The shared database (`--database-url` wins).
    #[serde(default)]
    pub database_url: Option<String>,
    /// CA certificates (PEM) for the database's TLS (`--database-ca-file` wins).
    #[serde(default)]
    pub database_ca_file: Option<PathBuf>,
    /// Resource servers that may introspect tokens (RFC 7662), see the module docs.
    #[serde(default)]
    pub resource_servers: Vec<ResourceServerConfig>,
}

/// What access tokens for a resource look like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenFormat {
    /// RS256 JWTs (RFC 9068), verifiable with the published keys.
    #[default]
    Jwt,
    /// `bmo_` + 43 base64url characters, stored hashed; verified by introspection only.
    Opaque,
}

impl TokenFormat {
    /// Its name in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::Opaque => "opaque",
        }
    }
}

/// A `[[resource_servers]]` entry of the config file (see the module docs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceServerConfig {
    /// The resource (MCP server URL) it serves: a configured resource.
    pub resource: String,
    /// The client id it authenticates with at `/introspect`.
    pub client_id: String,
    /// Hex SHA-256 of its secret (`client_secret_basic`).
    #[serde(default)]
    pub client_secret_sha256: Option<String>,
    /// Its JWK Set for `private_key_jwt`: a table, or JSON text.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// Where it publishes its JWK Set for `private_key_jwt`.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// What `/token` issues for its resource (default `jwt`).
    #[serde(default)]
    pub token_format: TokenFormat,
    /// Whether (and for what) it may exchange its callers' tokens (rule 5).
    #[serde(default)]
    pub token_exchange: Option<TokenExchangeConfig>,
}

/// A `token_exchange` table of a `[[resource_servers]]` entry (resource-server rule 5).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenExchangeConfig {
    /// The resources exchanged tokens may be for.
    pub audiences: Vec<String>,
    /// The most scopes an exchanged token may carry (default: the subject token's).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

/// A checked token-exchange policy (resource-server rule 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenExchangePolicy {
    /// Canonical resources exchanged tokens may be for.
    pub audiences: Vec<String>,
    /// The most scopes an exchanged token may carry; `None`: the subject token's.
    pub scopes: Option<Vec<String>>,
}

/// A checked resource server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceServer {
    /// The canonical resource it may introspect tokens of.
    pub resource: String,
    /// Its client id.
    pub client_id: String,
    /// Lowercase hex SHA-256 of its secret.
    pub secret_sha256: Option<String>,
    /// Its JWK Set (JSON text), for `private_key_jwt`.
    pub jwks: Option<String>,
    /// Its `jwks_uri`, for `private_key_jwt`.
    pub jwks_uri: Option<String>,
    /// What `/token` issues for its resource.
    pub token_format: TokenFormat,
    /// What it may exchange its callers' tokens for (`None`: it may not).
    pub token_exchange: Option<TokenExchangePolicy>,
}

impl ResourceServer {
    /// The resource server as a client, for `client_auth::verify`.
    pub(crate) fn as_client(&self) -> crate::store::Client {
        crate::store::Client {
            client_id: self.client_id.clone(),
            secret_sha256: self.secret_sha256.clone(),
            redirect_uris: Vec::new(),
            client_name: None,
            token_endpoint_auth_method: if self.secret_sha256.is_some() {
                "client_secret_basic"
            } else {
                "private_key_jwt"
            }
            .to_owned(),
            created_at: 0,
            grant_types: Vec::new(),
            jwks: self.jwks.clone(),
            jwks_uri: self.jwks_uri.clone(),
            scope: None,
        }
    }
}

/// Checks the `[[resource_servers]]` of `file` (resource-server rules 1 to 5) against the
/// canonical `resources`, the configured `clients` and the offered `scopes`.
fn check_resource_servers(
    file: &str,
    entries: &[ResourceServerConfig],
    resources: &[String],
    clients: &[ClientConfig],
    scopes: &[String],
    allow_loopback: bool,
) -> Result<Vec<ResourceServer>, ConfigError> {
    let mut out: Vec<ResourceServer> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let fail = |field: &str, why: String| {
            ConfigError(format!(
                "config {file}: resource_servers[{i}] (client_id `{}`): {field}: {why}",
                entry.client_id
            ))
        };
        if entry.client_id.is_empty()
            || entry.client_id.len() > 256
            || entry.client_id.chars().any(|c| c.is_control() || c == ':')
        {
            return Err(fail(
                "client_id",
                "give a non-empty id of at most 256 characters, without `:` or control characters"
                    .to_owned(),
            ));
        }
        if out.iter().any(|rs| rs.client_id == entry.client_id) {
            return Err(fail(
                "client_id",
                "another resource server has this client_id; give each its own".to_owned(),
            ));
        }
        if clients.iter().any(|c| c.client_id == entry.client_id) {
            return Err(fail(
                "client_id",
                "a [[clients]] entry has this client_id; a resource server needs an id of its own"
                    .to_owned(),
            ));
        }
        let resource = bmm_core::canonical_resource(&entry.resource)
            .ok()
            .filter(|r| resources.contains(r))
            .ok_or_else(|| {
                fail(
                    "resource",
                    format!(
                        "`{}` is not one of the configured resources ({}); add it to --resource or `resources`",
                        entry.resource,
                        resources.join(", ")
                    ),
                )
            })?;
        let given = [
            entry.client_secret_sha256.is_some(),
            entry.jwks.is_some(),
            entry.jwks_uri.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(fail(
                "client_secret_sha256 / jwks / jwks_uri",
                "give exactly one (client_secret_basic with the secret's SHA-256, or private_key_jwt keys)".to_owned(),
            ));
        }
        let secret_sha256 = match &entry.client_secret_sha256 {
            Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(hex.to_ascii_lowercase())
            }
            Some(_) => {
                return Err(fail(
                    "client_secret_sha256",
                    "not 64 hex digits; put the SHA-256 of the secret (`printf %s SECRET | sha256sum`), never the secret".to_owned(),
                ));
            }
            None => None,
        };
        let jwks = entry.jwks.as_ref().map(|v| match v {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        });
        if let Some(text) = &jwks {
            let doc = crate::client_auth::KeySet::parse_text(text)
                .and_then(|_| serde_json::from_str(text).map_err(|e| e.to_string()))
                .map_err(|e| fail("jwks", e))?;
            crate::client_auth::public_jwks_text(&doc).map_err(|e| fail("jwks", e))?;
        }
        if let Some(uri) = &entry.jwks_uri {
            crate::client_auth::check_jwks_uri(uri, allow_loopback)
                .map_err(|e| fail("jwks_uri", e))?;
        }
        if let Some(other) = out
            .iter()
            .find(|rs| rs.resource == resource && rs.token_format != entry.token_format)
        {
            return Err(fail(
                "token_format",
                format!(
                    "resource server `{}` of the same resource says `{}`; both must say the same",
                    other.client_id,
                    other.token_format.name()
                ),
            ));
        }
        let token_exchange = entry
            .token_exchange
            .as_ref()
            .map(|policy| check_exchange_policy(policy, &resource, resources, scopes))
            .transpose()
            .map_err(|(field, why)| fail(&field, why))?;
        out.push(ResourceServer {
            resource,
            client_id: entry.client_id.clone(),
            secret_sha256,
            jwks,
            jwks_uri: entry.jwks_uri.clone(),
            token_format: entry.token_format,
            token_exchange,
        });
    }
    Ok(out)
}

/// Resource-server rule 5: a `token_exchange` table, or the field at fault and what to do.
fn check_exchange_policy(
    policy: &TokenExchangeConfig,
    own: &str,
    resources: &[String],
    scopes: &[String],
) -> Result<TokenExchangePolicy, (String, String)> {
    if policy.audiences.is_empty() {
        return Err((
            "token_exchange.audiences".to_owned(),
            "give at least one resource exchanged tokens may be for (or leave token_exchange out)"
                .to_owned(),
        ));
    }
    let mut audiences: Vec<String> = Vec::new();
    for (j, audience) in policy.audiences.iter().enumerate() {
        let canonical = bmm_core::canonical_resource(audience)
            .ok()
            .filter(|r| resources.contains(r))
            .ok_or_else(|| {
                (
                    format!("token_exchange.audiences[{j}]"),
                    format!(
                        "`{audience}` is not one of the configured resources ({}); add it to --resource or `resources`",
                        resources.join(", ")
                    ),
                )
            })?;
        // Exchanging into its own resource would re-mint its callers' tokens: an opaque,
        // revocable or DPoP-bound token would come back as an unbound JWT for the same
        // audience.
        if canonical == own {
            return Err((
                format!("token_exchange.audiences[{j}]"),
                format!(
                    "`{audience}` is this resource server's own resource; a server exchanges its callers' tokens for other resources only"
                ),
            ));
        }
        if !audiences.contains(&canonical) {
            audiences.push(canonical);
        }
    }
    let scopes = match &policy.scopes {
        None => None,
        Some(list) if list.is_empty() => {
            return Err((
                "token_exchange.scopes".to_owned(),
                "give at least one scope, or leave scopes out to keep the subject token's"
                    .to_owned(),
            ));
        }
        Some(list) => {
            let mut out: Vec<String> = Vec::new();
            for (j, scope) in list.iter().enumerate() {
                if !bmm_core::is_scope_token(scope)
                    || (!scopes.is_empty() && !scopes.contains(scope))
                {
                    return Err((
                        format!("token_exchange.scopes[{j}]"),
                        format!("scope `{scope}` is not offered by this server (`scopes`)"),
                    ));
                }
                if !out.contains(scope) {
                    out.push(scope.clone());
                }
            }
            Some(out)
        }
    };
    Ok(TokenExchangePolicy { audiences, scopes })
}

/// A user account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Sign-in name, also the token's `sub`.
    pub name: String,
    /// An argon2 PHC string (`$argon2id$...`).
    pub password_hash: String,
    /// May sign in to the admin page (`<issuer>/admin`).
    #[serde(default)]
    pub admin: bool,
}

/// A pre-registered client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The client id.
    pub client_id: String,
    /// Its redirect URIs (none for a `client_credentials`-only client).
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Its display name.
    pub client_name: Option<String>,
    /// A secret makes it confidential (`client_secret_basic`/`client_secret_post`).
    pub client_secret: Option<String>,
    /// Grant types it may use; empty: `authorization_code` and `refresh_token`.
    /// `client_credentials` (a machine client, tokens with `sub` = the client id) needs a
    /// `client_secret`, `jwks` or `jwks_uri`.
    #[serde(default)]
    pub grant_types: Vec<String>,
    /// Its JWK Set for `private_key_jwt` (RFC 7523): a table, or JSON text.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// Where it publishes its JWK Set for `private_key_jwt` (https; loopback http only
    /// with `--allow-loopback-cimd`).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Scopes a `client_credentials` token may carry (space-separated); none: the
    /// default scopes.
    #[serde(default)]
    pub scope: Option<String>,
}

impl ClientConfig {
    /// The JWK Set as JSON text.
    pub(crate) fn jwks_text(&self) -> Option<String> {
        self.jwks.as_ref().map(|v| match v {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        })
    }

    /// Checks what a machine client adds: known grant types, one authentication method,
    /// usable keys, a scope the server offers, and no `client_credentials` for a public
    /// client or under a user's name (its tokens' `sub` is the client id).
    fn check_machine(
        &self,
        allow_loopback: bool,
        scopes: &[String],
        user_names: &[&str],
    ) -> Result<(), String> {
        if let Some(bad) = self.grant_types.iter().find(|g| {
            !matches!(
                g.as_str(),
                "authorization_code" | "refresh_token" | "client_credentials"
            )
        }) {
            return Err(format!("grant type `{bad}` is not supported"));
        }
        let methods = [
            self.client_secret.is_some(),
            self.jwks.is_some(),
            self.jwks_uri.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(
                "give one of client_secret, jwks and jwks_uri (one authentication method)"
                    .to_owned(),
            );
        }
        if let Some(text) = self.jwks_text() {
            crate::client_auth::KeySet::parse_text(&text).map_err(|e| format!("jwks: {e}"))?;
        }
        if let Some(uri) = &self.jwks_uri {
            crate::client_auth::check_jwks_uri(uri, allow_loopback)?;
        }
        let machine = self.grant_types.iter().any(|g| g == "client_credentials");
        if machine && !methods.iter().any(|m| *m) {
            return Err(
                "client_credentials is for confidential clients: give it a client_secret, jwks or jwks_uri"
                    .to_owned(),
            );
        }
        if machine && user_names.contains(&self.client_id.as_str()) {
            return Err(
                "a client_credentials client's tokens carry its id as `sub`; it must not be a user's name"
                    .to_owned(),
            );
        }
        if self.redirect_uris.is_empty()
            && (self.grant_types.is_empty()
                || self.grant_types.iter().any(|g| g == "authorization_code"))
        {
            return Err("redirect_uris is required for the authorization_code grant".to_owned());
        }
        for scope in self.scope.iter().flat_map(|s| s.split(' ')) {
            if scope.is_empty() {
                continue;
            }
            if !bmm_core::is_scope_token(scope)
                || (!scopes.is_empty() && !scopes.iter().any(|s| s == scope))
            {
                return Err(format!("scope `{scope}` is not offered by this server"));
            }
        }
        Ok(())
    }
}

/// Everything the server needs, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// The issuer identifier, exactly as published.
    pub issuer: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Canonical resources (no trailing slash).
    pub resources: Vec<String>,
    /// Scopes supported (empty: any).
    pub scopes: Vec<String>,
    /// Default scopes.
    pub default_scopes: Vec<String>,
    /// Users.
    pub users: Vec<UserConfig>,
    /// Pre-registered clients.
    pub clients: Vec<ClientConfig>,
    /// Dev auto-approve user.
    pub dev_user: Option<String>,
    /// Access-token lifetime (s).
    pub access_token_ttl: u64,
    /// Refresh-token lifetime (s).
    pub refresh_token_ttl: u64,
    /// Loopback http CIMD allowed.
    pub allow_loopback_cimd: bool,
    /// Quota of registered clients that have not completed an authorization.
    pub max_unused_clients: u64,
    /// Lifetime (s) of a registered client that has not completed an authorization.
    pub unused_client_ttl: u64,
    /// Rotate keys at start.
    pub rotate_keys: bool,
    /// Authorization-code lifetime (s).
    pub code_ttl: u64,
    /// Time to send a request's headers (at least 1 s).
    pub header_read_timeout: std::time::Duration,
    /// Time a connection may stay open with no request in flight (at least 1 s).
    pub idle_timeout: std::time::Duration,
    /// Open connections per client address (at least 1).
    pub max_connections_per_address: usize,
    /// Trusted reverse proxies (see `--trusted-proxy`).
    pub(crate) trusted_proxies: Vec<crate::forwarded::Cidr>,
    /// The shared database URL (`None`: SQLite in the data directory). Holds a password:
    /// log it only through `store::redacted_url`.
    pub database_url: Option<String>,
    /// PostgreSQL pool size (at least 1).
    pub database_pool_size: usize,
    /// Extra CA certificates (PEM file) for the database's TLS (`sslmode=require`).
    pub database_ca_file: Option<PathBuf>,
    /// Refresh-token grace period (s); 0 is strict rotation.
    pub refresh_grace_secs: u64,
    /// Audit retention (days, at least 1).
    pub audit_retention_days: u64,
    /// Encrypts the stored signing keys (`BMM_AS_KEY_ENCRYPTION_KEY`; see `keys`).
    pub key_encryption_key: Option<crate::keys::KeyEncryptionKey>,
    /// Resource servers allowed at `/introspect`, and with a policy to exchange tokens at
    /// `/token` (see the module docs).
    pub resource_servers: Vec<ResourceServer>,
    /// Whether DPoP proofs at the token endpoint must carry the server's nonce.
    pub dpop_nonce: bool,
}

impl Settings {
    /// What `/token` issues for `resource` (a canonical resource).
    pub fn token_format(&self, resource: &str) -> TokenFormat {
        self.resource_servers
            .iter()
            .find(|rs| rs.resource == resource)
            .map_or(TokenFormat::Jwt, |rs| rs.token_format)
    }
}

/// A refused configuration, with what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The issuer's path is where every endpoint is served (`/oauth` -> `/oauth/token`), so it
/// must be plain segments a router can take literally: unreserved characters only, no
/// empty, `.` or `..` segment.
fn check_issuer_path(issuer: &str, path: &str) -> Result<(), ConfigError> {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(());
    }
    let ok = trimmed.split('/').skip(1).all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    });
    if ok && !trimmed.ends_with("/.well-known") && !trimmed.contains("/.well-known/") {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "issuer `{issuer}`: its path must be segments of letters, digits, `-`, `.`, `_` or `~` (like `/oauth`)"
        )))
    }
}

/// The path every endpoint is served under: the issuer's path without a trailing `/`
/// (`""` for an issuer without a path).
pub fn issuer_path(issuer: &str) -> String {
    Url::parse(issuer)
        .map(|u| u.path().trim_end_matches('/').to_owned())
        .unwrap_or_default()
}

impl Settings {
    /// Checks the flags and reads the TOML file.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("cannot read config {}: {e}", path.display()))
                })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError(format!("config {}: {e}", path.display())))?
            }
            None => FileConfig::default(),
        };
        let issuer = args
            .issuer
            .clone()
            .unwrap_or_else(|| format!("http://{}", args.listen));
        let issuer_url = Url::parse(&issuer)
            .map_err(|e| ConfigError(format!("issuer `{issuer}` is not a URL: {e}")))?;
        if issuer_url.query().is_some() || issuer_url.fragment().is_some() {
            return Err(ConfigError(format!(
                "issuer `{issuer}` must not have a query or fragment"
            )));
        }
        check_issuer_path(&issuer, issuer_url.path())?;
        // Endpoints are the issuer string plus a name and are served at the parsed path, so
        // the two must agree: no dot segments, default port or upper-case host to normalise.
        if issuer.trim_end_matches('/') != issuer_url.as_str().trim_end_matches('/') {
            return Err(ConfigError(format!(
                "issuer `{issuer}` is not in canonical form; write it as `{}`",
                issuer_url.as_str().trim_end_matches('/')
            )));
        }
        let loopback = args.listen.ip().is_loopback();
        if issuer_url.scheme() != "https" && !loopback {
            return Err(ConfigError(format!(
                "issuer `{issuer}` must be https when listening on a non-loopback address"
            )));
        }
        if args.dev_user.is_some() && !loopback {
            return Err(ConfigError(
                "--dev-user approves every request without a password; it is refused on a non-loopback listen address".to_owned(),
            ));
        }
        let mut resources = Vec::new();
        for r in args.resources.iter().chain(file.resources.iter()) {
            // The form every token's `aud` carries; the middleware compares with the same.
            let c = bmm_core::canonical_resource(r)
                .map_err(|e| ConfigError(format!("resource `{r}` {e}")))?;
            if !resources.contains(&c) {
                resources.push(c);
            }
        }
        if resources.is_empty() {
            return Err(ConfigError(
                "no resource configured: pass the MCP server URL(s) tokens are for (--resource / BMM_AS_RESOURCES)".to_owned(),
            ));
        }
        let mut clients = file.clients;
        for spec in &args.clients {
            let (id, redirect) = spec
                .split_once('=')
                .ok_or_else(|| ConfigError(format!("--client `{spec}` is not ID=REDIRECT_URI")))?;
            clients.push(ClientConfig {
                client_id: id.to_owned(),
                redirect_uris: vec![redirect.to_owned()],
                client_name: None,
                client_secret: None,
                grant_types: Vec::new(),
                jwks: None,
                jwks_uri: None,
                scope: None,
            });
        }
        let file_name = args
            .config
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string());
        let resource_servers = check_resource_servers(
            &file_name,
            &file.resource_servers,
            &resources,
            &clients,
            &file.scopes,
            args.allow_loopback_cimd,
        )?;
        let mut user_names: Vec<&str> = file.users.iter().map(|u| u.name.as_str()).collect();
        user_names.extend(args.dev_user.as_deref());
        for client in &clients {
            client
                .check_machine(args.allow_loopback_cimd, &file.scopes, &user_names)
                .map_err(|e| ConfigError(format!("client `{}`: {e}", client.client_id)))?;
            for uri in &client.redirect_uris {
                crate::register::check_redirect_uri(uri).map_err(|e| {
                    ConfigError(format!(
                        "client `{}`: {}",
                        client.client_id,
                        e.description()
                    ))
                })?;
            }
        }
        if let Some(dev) = &args.dev_user
            && dev.is_empty()
        {
            return Err(ConfigError("--dev-user must name a user".to_owned()));
        }
        let trusted_proxies = args
            .trusted_proxies
            .iter()
            .filter(|t| !t.trim().is_empty())
            .map(|t| {
                crate::forwarded::Cidr::parse(t).ok_or_else(|| {
                    ConfigError(format!(
                        "--trusted-proxy `{t}` is not an address or CIDR (like 10.0.0.0/8)"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Only from the environment: a flag would show in the process list.
        let key_encryption_key = crate::keys::KeyEncryptionKey::from_env().map_err(ConfigError)?;
        let database_url = args
            .database_url
            .clone()
            .or_else(|| file.database_url.clone())
            .filter(|u| !u.trim().is_empty());
        if let Some(url) = &database_url
            && !crate::store::is_postgres_url(url)
        {
            return Err(ConfigError(format!(
                "--database-url `{}` is not a postgres:// or postgresql:// URL (leave it out for SQLite in the data directory)",
                crate::store::redacted_url(url)
            )));
        }
        let database_ca_file = args
            .database_ca_file
            .clone()
            .or_else(|| file.database_ca_file.clone())
            .filter(|p| !p.as_os_str().is_empty());
        if database_ca_file.is_some() && database_url.is_none() {
            return Err(ConfigError(
                "--database-ca-file is for a PostgreSQL --database-url with sslmode=require; there is none".to_owned(),
            ));
        }
        Ok(Self {
            database_url,
            database_ca_file,
            database_pool_size: args.database_pool_size.clamp(1, 1024),
            refresh_grace_secs: args.refresh_grace_secs.min(300),
            audit_retention_days: args.audit_retention_days.clamp(1, 36_500),
            key_encryption_key,
            resource_servers,
            dpop_nonce: args.dpop_nonce,
            trusted_proxies,
            listen: args.listen,
            issuer,
            data_dir: args.data_dir,
            resources,
            scopes: file.scopes,
            default_scopes: file.default_scopes,
            users: file.users,
            clients,
            dev_user: args.dev_user,
            access_token_ttl: args.access_token_ttl.clamp(60, 24 * 3600),
            refresh_token_ttl: args.refresh_token_ttl.max(60),
            allow_loopback_cimd: args.allow_loopback_cimd,
            max_unused_clients: args.max_unused_clients,
            unused_client_ttl: args.unused_client_ttl.max(1),
            rotate_keys: args.rotate_keys,
            code_ttl: args.code_ttl.clamp(1, 600),
            header_read_timeout: std::time::Duration::from_secs(
                args.header_read_timeout.clamp(1, 3600),
            ),
            idle_timeout: std::time::Duration::from_secs(args.idle_timeout.clamp(1, 24 * 3600)),
            max_connections_per_address: args.max_connections_per_address.max(1),
        })
    }
}
