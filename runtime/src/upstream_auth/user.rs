//! Per-user upstream connections (`user_oauth`): each MCP caller's own upstream token,
//! from the vault ([`super::vault`]), refreshed when it expires, and asked for through
//! MCP URL elicitation when the caller has none (the connect pages: [`super::connect`]).
//!
//! The interface the rest of the runtime calls (crate::handler):
//! - [`bearer_for`]`(shared, ctx, upstream)`: the caller's upstream token for an HTTP tool
//!   call to `upstream` (a `user_oauth` upstream), or the [`ToolError`] to answer with: the
//!   URL elicitation when the caller is not connected (below), a tool error naming the
//!   upstream and the OAuth error code when a refresh fails otherwise.
//! - [`refresh_after_401`]`(shared, ctx, upstream, rejected)`: the upstream answered 401 to
//!   `rejected`; a new token to retry the call with once (refreshed, or the one another
//!   call stored meanwhile), or the elicitation to connect again (the dead row deleted).
//! - [`disconnect`]`(shared, ctx, upstream)`: `Handler::Disconnect`, deletes the caller's
//!   row; the text result says whether there was one.
//! - [`Connections::install`]: at start-up (crate::run) when some upstream is `user_oauth`:
//!   the vault, the upstreams' OAuth clients (crate::upstream_auth's, one per upstream),
//!   installed into the server, and the handler of the connect pages, a public route
//!   under `/connections/` ([`super::connect`]).
//!
//! Rules:
//! 1. The caller is the verified token's `iss` + `sub`; a token without `sub` (or no
//!    authentication at all) gets a tool error: a connection is always someone's.
//! 2. A token expiring within 30 s counts as expired. An expired one with a refresh token
//!    is refreshed once per caller and upstream at a time (single flight: concurrent
//!    calls wait and use the result); `invalid_grant` deletes the row (only the row that
//!    was read) and the caller is not connected; any other failure is a tool error naming
//!    the upstream and the OAuth error code. A refreshed row is written over the row that
//!    was read only (vault rule 6), and under the current vault key.
//! 3. Not connected, the caller is asked to connect, by protocol era:
//!    - 2026-07-28 (stateless) with `elicitation.url` declared in the request's client
//!      capabilities: an input-required result whose input request (key
//!      `bmm_connect_<upstream>`) is `elicitation/create` with `mode: "url"`. The retried
//!      call proceeds when the connection now exists; an `accept` without it asks again;
//!      `decline` or `cancel` is a tool error. This era never gets `-32042`.
//!    - a legacy session whose client declared `elicitation.url`: the JSON-RPC error
//!      `-32042` (URL elicitation required) with `data.elicitations: [{mode: "url",
//!      elicitationId, url, message}]`; once the callback stores the connection,
//!      `notifications/elicitation/complete` goes to that session if it is still open
//!      (best effort; at most 10,000 waiting, each for 10 minutes).
//!    - any other client, and any call running as an MCP task: a tool error (`isError`)
//!      with the URL, saying to call again after connecting.
//! 4. The connect URL is `<origin of --resource>/connections/<upstream>/start?t=<sealed>`:
//!    `t` is sealed with the vault key (AES-256-GCM, bound to the upstream) and names the
//!    caller, the upstream and an expiry 10 minutes ahead. No token is ever in a result,
//!    error, log line or page.
//!
//! (`connect_elicitation_by_era` and the end-to-end suite `runtime/tests/connections.rs`.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rmcp::model::{
    ElicitRequest, ElicitRequestParams, ErrorCode, ErrorData, InputRequest, InputRequests,
    InputRequiredResult,
};
use rmcp::{Peer, RoleServer};
use serde::{Deserialize, Serialize};

use super::client::OAuthClient;
use super::connect::UsedStates;
use super::vault::{Found, Owner, Tokens, Vault};
use super::{Secret, UpstreamAuthError};
use crate::context::ToolContext;
use crate::def::{OAuthGrant, ServerDef, UpstreamAuthDef};
use crate::handler::{McpServer, Shared};
use crate::output::{ToolError, ToolOutput};

/// JSON-RPC error code of a URL elicitation a legacy client must complete first.
pub(crate) const URL_ELICITATION_REQUIRED: ErrorCode = ErrorCode(-32042);
/// How long a start link and a connect state can be used.
pub(crate) const CONNECT_TTL: Duration = Duration::from_secs(600);
/// A token expiring sooner than this counts as expired (rule 2).
const EXPIRY_SKEW_SECS: u64 = 30;
/// Legacy elicitations waiting for their completion notification (rule 3).
const MAX_WAITING: usize = 10_000;

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the start link's `t` holds (rule 4).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StartClaims {
    /// The caller's issuer.
    pub(crate) iss: String,
    /// The caller's subject.
    pub(crate) sub: String,
    /// Expiry, seconds since the epoch.
    pub(crate) exp: u64,
    /// The elicitation's id (legacy completion notification).
    pub(crate) id: String,
}

/// Everything per-user connections need, built once (crate::run).
pub(crate) struct Connections {
    pub(crate) vault: Vault,
    /// The OAuth client of each `user_oauth` upstream.
    pub(crate) clients: HashMap<&'static str, Arc<OAuthClient>>,
    /// `scheme://host[:port]` of `--resource`: where the connect pages are.
    pub(crate) origin: String,
    /// The server's title (or name), shown on the pages.
    pub(crate) server_name: &'static str,
    /// Connect states already redeemed (crate::upstream_auth::connect, rules 2 and 3).
    pub(crate) used: UsedStates,
    /// The identity check of the connect pages (crate::upstream_auth::connect, rule 2);
    /// `None` only with `--connect-without-identity-check`.
    pub(crate) identity: Option<super::connect::Identity>,
    flights: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    waiting: Mutex<HashMap<String, (Peer<RoleServer>, Instant)>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("vault", &self.vault)
            .field("upstreams", &self.clients.keys().collect::<Vec<_>>())
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Whether the definition has a `user_oauth` upstream (the vault is opened only then).
pub(crate) fn needs_vault(def: &ServerDef) -> bool {
    def.upstreams.iter().any(|u| {
        matches!(u.auth, Some(UpstreamAuthDef::OAuth(o)) if o.grant == OAuthGrant::UserAuthorization)
    })
}

/// The handler of the connect pages, for `ServeConfig::public_routes`.
pub(crate) type ConnectPages = Arc<
    dyn Fn(
            http::Request<bytes::Bytes>,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = http::Response<http_body_util::Full<bytes::Bytes>>> + Send>,
        > + Send
        + Sync,
>;

/// How the connect pages check who opens a link (crate::run's `--connect-*` flags).
#[derive(Debug, Default)]
pub(crate) struct IdentitySetup {
    /// The server's authenticator (`None` with `--no-auth`).
    pub(crate) authenticator: Option<bmm_middleware::Authenticator>,
    /// `--connect-client-id`: this server's client id at its own authorization server(s).
    pub(crate) client_id: Option<String>,
    /// `--connect-without-identity-check`.
    pub(crate) without_check: bool,
}

/// The environment variable holding the connect client's secret (never a flag).
pub(crate) const CONNECT_SECRET_ENV: &str = "BMM_CONNECT_CLIENT_SECRET";

/// The connect pages' identity check (connect, rule 2) from `setup`: one sign-in client
/// per trusted issuer. Refuses (fail closed) when there is neither a client id nor the
/// explicit opt-out.
fn identity(
    server: &McpServer,
    setup: IdentitySetup,
    origin: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<super::connect::Identity>, String> {
    let upstreams: Vec<&str> = server
        .shared()
        .def
        .upstreams
        .iter()
        .filter(|u| matches!(u.auth, Some(UpstreamAuthDef::OAuth(o)) if o.grant == OAuthGrant::UserAuthorization))
        .map(|u| u.id)
        .collect();
    let redirect = format!(
        "{}{}",
        origin.trim_end_matches('/'),
        super::connect::VERIFY_PATH
    );
    let Some(client_id) = setup.client_id.filter(|c| !c.trim().is_empty()) else {
        if setup.without_check {
            tracing::warn!(
                upstreams = ?upstreams,
                "per-user connections WITHOUT the identity check (--connect-without-identity-check): whoever opens a user's connect link and approves binds THEIR upstream account to that user's MCP identity; use this only when a single person uses this server"
            );
            return Ok(None);
        }
        return Err(format!(
            "upstream `{}` is user_oauth: its connect pages must check that whoever opens a connect link is the MCP user it was made for (MCP: URL elicitation, phishing). Register this server as an OAuth client at its authorization server with the redirect URI {redirect} and give its client id with --connect-client-id / BMM_CONNECT_CLIENT_ID (and {CONNECT_SECRET_ENV} for a confidential client), or, for a single-user deployment only, --connect-without-identity-check / BMM_CONNECT_WITHOUT_IDENTITY_CHECK",
            upstreams.join("`, `")
        ));
    };
    if setup.without_check {
        return Err(
            "--connect-client-id and --connect-without-identity-check exclude each other"
                .to_owned(),
        );
    }
    let Some(authenticator) = setup.authenticator else {
        return Err(
            "--connect-client-id needs authentication (the identity check signs the user in at the server's own authorization server); it cannot be used with --no-auth"
                .to_owned(),
        );
    };
    let secret = env(CONNECT_SECRET_ENV).filter(|s| !s.is_empty());
    let http = server.shared().http.clone();
    let mut clients = HashMap::new();
    for issuer in authenticator.issuers() {
        let issuer = issuer.as_str();
        let allow_http = issuer
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("http://"));
        let client = OAuthClient::sign_in(
            "--connect-client-id",
            issuer,
            client_id.trim(),
            secret.as_deref(),
            http.clone(),
            allow_http,
        )?;
        clients.insert(issuer.to_owned(), Arc::new(client));
    }
    tracing::info!(
        client_id = client_id.trim(),
        client_auth = if secret.is_some() { "client_secret_basic" } else { "none" },
        redirect_uri = %redirect,
        "per-user connections: a connect link is used only by the user who signs in as its owner"
    );
    Ok(Some(super::connect::Identity {
        resource: authenticator.resource().as_str().to_owned(),
        authenticator,
        clients,
    }))
}

/// Start-up (crate::run): when `server` has a `user_oauth` upstream, reads the vault keys
/// from `env` (`BMM_VAULT_KEY` required), checks the identity check's configuration
/// (`identity`: a client id, or the explicit opt-out), opens the vault at `location` (a
/// SQLite path or a `postgres://` URL, TLS verified with `ca_file` too), installs per-user
/// connections into the server, and returns the connect pages' handler (served under
/// `/connections/` on `origin`). `None` when no upstream is `user_oauth`: nothing is
/// opened. Errors name the variable or flag, never a secret.
pub(crate) fn set_up(
    server: &McpServer,
    location: &str,
    ca_file: Option<&std::path::Path>,
    origin: &str,
    setup: IdentitySetup,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<ConnectPages>, String> {
    if !needs_vault(&server.shared().def) {
        return Ok(None);
    }
    let keys = super::vault::Keys::from_env(env)?;
    let identity = identity(server, setup, origin, env)?;
    let vault = Vault::open(location, ca_file, keys).map_err(|e| format!("--vault: {e}"))?;
    let connections = Connections::install(server, vault, origin, identity)?;
    tracing::info!(
        vault = if super::vault::is_postgres_url(location) { "postgres" } else { location },
        key_id = connections.vault.keys().current_id(),
        upstreams = ?connections.clients.keys().collect::<Vec<_>>(),
        "per-user connections: token vault open"
    );
    Ok(Some(Arc::new(move |request| {
        Box::pin(super::connect::handle(Arc::clone(&connections), request))
    })))
}

/// Connects to the vault's database and makes sure its table exists (PostgreSQL; a no-op
/// otherwise): start-up fails here rather than at the first call.
pub(crate) async fn ready(server: &McpServer) -> Result<(), String> {
    match server.shared().connections.get() {
        Some(c) => c.vault.ready().await.map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

impl Connections {
    /// Per-user connections for `server` (its `user_oauth` upstreams, with the OAuth
    /// clients it built), served at `origin` (the `--resource` origin), installed into
    /// the server. Returns them for the connect pages' route.
    pub(crate) fn install(
        server: &McpServer,
        vault: Vault,
        origin: &str,
        identity: Option<super::connect::Identity>,
    ) -> Result<Arc<Self>, String> {
        let shared = server.shared();
        let mut clients = HashMap::new();
        for u in shared.def.upstreams {
            if let Some(UpstreamAuthDef::OAuth(o)) = u.auth
                && o.grant == OAuthGrant::UserAuthorization
            {
                let client = shared.upstream_tokens.client(u.id).ok_or_else(|| {
                    format!("upstream `{}`: its OAuth client is not configured", u.id)
                })?;
                clients.insert(u.id, Arc::clone(client));
            }
        }
        let connections = Arc::new(Self {
            vault,
            clients,
            origin: origin.trim_end_matches('/').to_owned(),
            server_name: shared.def.title.unwrap_or(shared.def.name),
            used: UsedStates::default(),
            identity,
            flights: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
        });
        shared
            .connections
            .set(Arc::clone(&connections))
            .map_err(|_| "per-user connections are already set up".to_owned())?;
        Ok(connections)
    }

    /// Connections over `vault` and `clients`, without a server (unit tests).
    #[cfg(test)]
    pub(crate) fn for_tests(
        vault: Vault,
        clients: HashMap<&'static str, Arc<OAuthClient>>,
        origin: &str,
        identity: Option<super::connect::Identity>,
    ) -> Self {
        Self {
            vault,
            clients,
            origin: origin.to_owned(),
            server_name: "Test Server",
            used: UsedStates::default(),
            identity,
            flights: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// The start link for `claims` at `upstream` (rule 4).
    pub(crate) fn start_url(
        &self,
        upstream: &str,
        claims: &StartClaims,
    ) -> Result<String, ToolError> {
        let json = serde_json::to_vec(claims)
            .map_err(|_| ToolError::new("cannot build the connect link"))?;
        let t = self
            .vault
            .keys()
            .seal(&start_purpose(upstream), &json)
            .map_err(|e| ToolError::new(e.to_string()))?;
        Ok(format!(
            "{}/connections/{}/start?t={t}",
            self.origin,
            percent_encoding::utf8_percent_encode(upstream, percent_encoding::NON_ALPHANUMERIC)
        ))
    }

    /// The single-flight lock of one caller and upstream (rule 2).
    fn flight(&self, owner: Owner<'_>) -> Arc<tokio::sync::Mutex<()>> {
        let key = serde_json::json!([owner.issuer, owner.subject, owner.upstream]).to_string();
        let Ok(mut map) = self.flights.lock() else {
            return Arc::new(tokio::sync::Mutex::new(()));
        };
        if map.len() >= 4096 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        if let Some(lock) = map.get(&key).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(key, Arc::downgrade(&lock));
        lock
    }

    /// Remembers a legacy session waiting for elicitation `id` to complete (rule 3).
    fn wait(&self, id: String, peer: Peer<RoleServer>) {
        let Ok(mut waiting) = self.waiting.lock() else {
            return;
        };
        if waiting.len() >= MAX_WAITING {
            waiting.retain(|_, (_, at)| at.elapsed() < CONNECT_TTL);
        }
        if waiting.len() >= MAX_WAITING {
            // Full of live entries: the oldest goes.
            if let Some(oldest) = waiting
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
            {
                waiting.remove(&oldest);
            }
        }
        waiting.insert(id, (peer, Instant::now()));
    }

    /// Tells the legacy session waiting for elicitation `id`, if any, that it completed.
    pub(crate) async fn completed(&self, id: &str) {
        let peer = self
            .waiting
            .lock()
            .ok()
            .and_then(|mut w| w.remove(id))
            .filter(|(_, at)| at.elapsed() < CONNECT_TTL)
            .map(|(peer, _)| peer);
        if let Some(peer) = peer {
            let notification = rmcp::model::ServerNotification::CustomNotification(
                rmcp::model::CustomNotification::new(
                    "notifications/elicitation/complete",
                    Some(serde_json::json!({"elicitationId": id})),
                ),
            );
            if let Err(e) = peer.send_notification(notification).await {
                tracing::debug!(error = %e, "elicitation completion not delivered");
            }
        }
    }

    /// Refreshes the caller's token (rule 2); `Ok(None)`: not connected (any more). The
    /// row as it is when it has no refresh token, or another call replaced it meanwhile.
    async fn refresh(&self, owner: Owner<'_>, seen: &Found) -> Result<Option<Found>, ToolError> {
        let lock = self.flight(owner);
        let _flight = lock.lock().await;
        let Some(found) = self.vault.get(owner).await.map_err(vault_error)? else {
            return Ok(None);
        };
        if found.version != seen.version {
            // Another call refreshed (or the caller reconnected) meanwhile.
            return Ok(Some(found));
        }
        let Some(refresh_token) = found.tokens.refresh_token.clone() else {
            // Nothing to refresh with: the token is what it is.
            return Ok(Some(found));
        };
        let Some(client) = self.clients.get(owner.upstream) else {
            return Err(not_user_oauth(owner.upstream));
        };
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh_token),
        ];
        if let Some(resource) = client.def().resource {
            form.push(("resource", resource));
        }
        match client.token_request(&form).await {
            Ok(response) => {
                let tokens = Tokens {
                    access_token: response.access_token.expose().to_owned(),
                    refresh_token: response
                        .refresh_token
                        .as_ref()
                        .map(|r| r.expose().to_owned())
                        .or(Some(refresh_token)),
                    expires_at: response.expires_in.map(|s| now().saturating_add(s)),
                    scope: response.scope.clone().or(found.tokens.scope.clone()),
                };
                match self
                    .vault
                    .replace(owner, &tokens, &found.version)
                    .await
                    .map_err(vault_error)?
                {
                    Some(version) => Ok(Some(Found { tokens, version })),
                    // Written over meanwhile (a reconnection): that one wins.
                    None => self.vault.get(owner).await.map_err(vault_error),
                }
            }
            Err(UpstreamAuthError::Refused { error, .. }) if error == "invalid_grant" => {
                tracing::info!(
                    upstream = owner.upstream,
                    "the upstream refused the refresh token (invalid_grant): the connection is removed"
                );
                self.vault
                    .delete(owner, Some(&found.version))
                    .await
                    .map_err(vault_error)?;
                Ok(None)
            }
            Err(e) => Err(ToolError::new(format!(
                "upstream `{}`: refreshing your connection failed: {e}",
                owner.upstream
            ))),
        }
    }
}

fn start_purpose(upstream: &str) -> String {
    format!("bmm-connect/start/{upstream}")
}

/// What sealed the start link of `upstream` is opened for.
pub(crate) fn start_purpose_of(upstream: &str) -> String {
    start_purpose(upstream)
}

fn vault_error(e: super::vault::VaultError) -> ToolError {
    tracing::warn!(error = %e, "token vault");
    ToolError::new("the server's token vault is unavailable; try again later")
}

fn not_user_oauth(upstream: &str) -> ToolError {
    ToolError::new(format!(
        "upstream `{upstream}` is not a per-user connection (user_oauth)"
    ))
}

/// The connections, or the tool error saying there are none for `upstream`.
fn connections<'a>(shared: &'a Shared, upstream: &str) -> Result<&'a Connections, ToolError> {
    let connections = shared
        .connections
        .get()
        .ok_or_else(|| ToolError::new("this server has no token vault for per-user connections"))?;
    if !connections.clients.contains_key(upstream) {
        return Err(not_user_oauth(upstream));
    }
    Ok(connections)
}

/// The verified caller's issuer and subject (rule 1).
fn caller(ctx: &ToolContext, upstream: &str) -> Result<(String, String), ToolError> {
    match ctx
        .auth()
        .and_then(|a| Some((a.issuer().to_owned(), a.subject()?.to_owned())))
    {
        Some(caller) => Ok(caller),
        None => Err(ToolError::new(format!(
            "upstream `{upstream}` is reached with each user's own connection, and this call has no signed-in user (its access token names no `sub`)"
        ))),
    }
}

/// Not about to expire: used without a refresh (rule 2).
fn fresh(tokens: &Tokens) -> bool {
    tokens
        .expires_at
        .is_none_or(|exp| exp > now().saturating_add(EXPIRY_SKEW_SECS))
}

/// Not expired: what a refresh gave (an authorization server may issue tokens living less
/// than the skew) or a token that cannot be refreshed is still used until then.
fn usable(tokens: &Tokens) -> bool {
    tokens.expires_at.is_none_or(|exp| exp > now())
}

/// The caller's upstream token for a call to `upstream` (module docs).
pub(crate) async fn bearer_for(
    shared: &Shared,
    ctx: &ToolContext,
    upstream: &'static str,
) -> Result<Secret, ToolError> {
    let connections = connections(shared, upstream)?;
    let (issuer, subject) = caller(ctx, upstream)?;
    let owner = Owner {
        issuer: &issuer,
        subject: &subject,
        upstream,
    };
    if let Some(found) = connections.vault.get(owner).await.map_err(vault_error)? {
        if fresh(&found.tokens) {
            return Ok(Secret::new(&found.tokens.access_token));
        }
        if let Some(found) = connections.refresh(owner, &found).await?
            && usable(&found.tokens)
        {
            return Ok(Secret::new(&found.tokens.access_token));
        }
    }
    Err(ask_to_connect(connections, ctx, owner))
}

/// The upstream answered 401 to `rejected`: a token to retry once with (module docs).
pub(crate) async fn refresh_after_401(
    shared: &Shared,
    ctx: &ToolContext,
    upstream: &'static str,
    rejected: &Secret,
) -> Result<Secret, ToolError> {
    let connections = connections(shared, upstream)?;
    let (issuer, subject) = caller(ctx, upstream)?;
    let owner = Owner {
        issuer: &issuer,
        subject: &subject,
        upstream,
    };
    if let Some(found) = connections.vault.get(owner).await.map_err(vault_error)? {
        if found.tokens.access_token != rejected.expose() {
            // Already replaced by another call.
            return Ok(Secret::new(&found.tokens.access_token));
        }
        if let Some(found) = connections.refresh(owner, &found).await? {
            if found.tokens.access_token != rejected.expose() {
                return Ok(Secret::new(&found.tokens.access_token));
            }
            // No refresh token, or the same token again: the connection is dead.
            connections
                .vault
                .delete(owner, Some(&found.version))
                .await
                .map_err(vault_error)?;
        }
    }
    Err(ask_to_connect(connections, ctx, owner))
}

/// `Handler::Disconnect`: deletes the caller's connection to `upstream`.
pub(crate) async fn disconnect(
    shared: &Shared,
    ctx: &ToolContext,
    upstream: &'static str,
) -> Result<ToolOutput, ToolError> {
    let connections = connections(shared, upstream)?;
    let (issuer, subject) = caller(ctx, upstream)?;
    let owner = Owner {
        issuer: &issuer,
        subject: &subject,
        upstream,
    };
    let deleted = connections
        .vault
        .delete(owner, None)
        .await
        .map_err(vault_error)?;
    Ok(ToolOutput::text(if deleted {
        format!("Disconnected: your connection to `{upstream}` is deleted from this server.")
    } else {
        format!("There was no connection to `{upstream}` to delete.")
    }))
}

/// The input-required key of the connect question for `upstream`.
fn question_key(upstream: &str) -> String {
    format!("bmm_connect_{upstream}")
}

/// How the client is asked (rule 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// 2026-07-28 with `elicitation.url`: input required.
    InputRequired,
    /// A legacy session with `elicitation.url`: `-32042`.
    UrlRequiredError,
    /// Anything else: a tool error with the link.
    ToolError,
}

fn how_to_ask(stateless: bool, url_capable: bool, task: bool) -> Ask {
    match (stateless, url_capable, task) {
        (_, _, true) | (_, false, _) => Ask::ToolError,
        (true, true, false) => Ask::InputRequired,
        (false, true, false) => Ask::UrlRequiredError,
    }
}

/// The answer to an earlier connect question (2026-07-28 retry).
#[derive(Debug, Deserialize)]
struct Answer {
    action: rmcp::model::ElicitationAction,
}

/// The outcome for a caller who is not connected (rule 3).
fn ask_to_connect(connections: &Connections, ctx: &ToolContext, owner: Owner<'_>) -> ToolError {
    let upstream = owner.upstream;
    let url_capable = ctx
        .client_capabilities()
        .elicitation
        .is_some_and(|e| e.url.is_some());
    let ask = how_to_ask(ctx.is_stateless(), url_capable, ctx.is_task());
    if ask == Ask::InputRequired
        && let Some(answer) = ctx
            .input_response(&question_key(upstream))
            .and_then(|v| serde_json::from_value::<Answer>(v.clone()).ok())
        && answer.action != rmcp::model::ElicitationAction::Accept
    {
        return ToolError::new(format!(
            "connecting to `{upstream}` was declined; the tool needs your `{upstream}` connection"
        ));
    }
    let mut id_bytes = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut id_bytes).is_err() {
        return ToolError::new("no randomness for the connect link");
    }
    let id: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let claims = StartClaims {
        iss: owner.issuer.to_owned(),
        sub: owner.subject.to_owned(),
        exp: now().saturating_add(CONNECT_TTL.as_secs()),
        id: id.clone(),
    };
    let url = match connections.start_url(upstream, &claims) {
        Ok(url) => url,
        Err(e) => return e,
    };
    let message = format!(
        "{} needs your `{upstream}` account: open the link to connect it (sign in at `{upstream}` and approve), then try again. The page shows which account here it connects; do not open a connect link someone else sent you.",
        connections.server_name
    );
    match ask {
        Ask::InputRequired => {
            let mut requests = InputRequests::new();
            requests.insert(
                question_key(upstream),
                InputRequest::Elicitation(ElicitRequest::new(
                    ElicitRequestParams::UrlElicitationParams {
                        meta: None,
                        message,
                        url,
                        elicitation_id: String::new(),
                    },
                )),
            );
            ToolError::input_required(InputRequiredResult::new(Some(requests), None))
        }
        Ask::UrlRequiredError => {
            connections.wait(id.clone(), ctx.request().peer.clone());
            ToolError::protocol(ErrorData::new(
                URL_ELICITATION_REQUIRED,
                format!("URL elicitation required: connect your `{upstream}` account"),
                Some(serde_json::json!({
                    "elicitations": [{
                        "mode": "url",
                        "elicitationId": id,
                        "url": url,
                        "message": message,
                    }]
                })),
            ))
        }
        Ask::ToolError => ToolError::new(format!(
            "Not connected to `{upstream}`. {message}\n\nConnect here (the link works for 10 minutes): {url}\n\nThen call this tool again."
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_elicitation_by_era() {
        // 2026-07-28 never gets -32042: with URL elicitation, input required; without,
        // the tool error. A task always gets the tool error.
        assert_eq!(how_to_ask(true, true, false), Ask::InputRequired);
        assert_eq!(how_to_ask(true, false, false), Ask::ToolError);
        assert_eq!(how_to_ask(false, true, false), Ask::UrlRequiredError);
        assert_eq!(how_to_ask(false, false, false), Ask::ToolError);
        for stateless in [true, false] {
            for url in [true, false] {
                assert_eq!(how_to_ask(stateless, url, true), Ask::ToolError);
            }
        }
    }

    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::def::{ClientAuthDef, OAuthDef};

    static DEF: OAuthDef = OAuthDef {
        grant: OAuthGrant::UserAuthorization,
        issuer: None,
        issuer_env: None,
        token_url: Some("http://127.0.0.1:9/token"),
        token_url_env: Some("TEST_TOKEN_URL"),
        authorization_url: Some("http://127.0.0.1:9/authorize"),
        authorization_url_env: None,
        client_id: "bmm-test-client",
        client_id_env: None,
        client_auth: ClientAuthDef::None,
        audience: None,
        resource: None,
        scopes: &[],
    };

    /// A token endpoint that answers every request with `answer` after 100 ms (so
    /// concurrent refreshes overlap), counting them.
    async fn token_endpoint(answer: (u16, serde_json::Value), count: Arc<AtomicUsize>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (answer, count) = (answer.clone(), Arc::clone(&count));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        let (answer, count) = (answer.clone(), Arc::clone(&count));
                        async move {
                            let n = count.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let mut body = answer.1;
                            if let Some(t) = body.get_mut("access_token") {
                                *t = serde_json::json!(format!("refreshed-{n}"));
                            }
                            let mut r = http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(body.to_string()),
                            ));
                            *r.status_mut() = http::StatusCode::from_u16(answer.0).unwrap();
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        format!("http://{addr}/token")
    }

    async fn connections(
        dir: &std::path::Path,
        answer: (u16, serde_json::Value),
    ) -> (Arc<Connections>, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let url = token_endpoint(answer, Arc::clone(&count)).await;
        let client = OAuthClient::new(
            "api",
            &DEF,
            &crate::secrets::Secrets::default(),
            &|name| (name == "TEST_TOKEN_URL").then(|| url.clone()),
            reqwest::Client::new(),
            false,
        )
        .unwrap();
        let vault = Vault::open(
            dir.join("v.sqlite").to_str().unwrap(),
            None,
            super::super::vault::Keys::from_raw([3; 32], &[]),
        )
        .unwrap();
        let clients = HashMap::from([("api", Arc::new(client))]);
        (
            Arc::new(Connections::for_tests(
                vault,
                clients,
                "http://127.0.0.1:1",
                None,
            )),
            count,
        )
    }

    const ALICE: Owner<'static> = Owner {
        issuer: "https://as.example",
        subject: "alice",
        upstream: "api",
    };

    fn expired() -> Tokens {
        Tokens {
            access_token: "old-access".to_owned(),
            refresh_token: Some("old-refresh".to_owned()),
            expires_at: Some(now() + 10),
            scope: Some("read".to_owned()),
        }
    }

    #[tokio::test]
    async fn an_expiring_token_is_refreshed_once_for_concurrent_calls() {
        let dir = tempfile::tempdir().unwrap();
        let answer =
            serde_json::json!({"access_token": "", "token_type": "Bearer", "expires_in": 3600});
        let (c, count) = connections(dir.path(), (200, answer)).await;
        c.vault.put(ALICE, &expired()).await.unwrap();
        let seen = c.vault.get(ALICE).await.unwrap().unwrap();
        assert!(!fresh(&seen.tokens), "within the 30 s skew");
        let calls: Vec<_> = (0..10)
            .map(|_| {
                let (c, seen) = (Arc::clone(&c), seen.clone());
                tokio::spawn(async move { c.refresh(ALICE, &seen).await.unwrap().unwrap() })
            })
            .collect();
        for call in calls {
            let found = call.await.unwrap();
            assert_eq!(found.tokens.access_token, "refreshed-0");
            assert!(fresh(&found.tokens));
            // No new refresh token given: the old one is kept; so is the scope.
            assert_eq!(found.tokens.refresh_token.as_deref(), Some("old-refresh"));
            assert_eq!(found.tokens.scope.as_deref(), Some("read"));
        }
        assert_eq!(count.load(Ordering::SeqCst), 1, "one refresh for ten calls");
        assert_eq!(
            c.vault
                .get(ALICE)
                .await
                .unwrap()
                .unwrap()
                .tokens
                .access_token,
            "refreshed-0"
        );
    }

    #[tokio::test]
    async fn a_refused_refresh_token_removes_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let answer = serde_json::json!({"error": "invalid_grant", "error_description": "revoked old-refresh"});
        let (c, count) = connections(dir.path(), (400, answer)).await;
        c.vault.put(ALICE, &expired()).await.unwrap();
        let seen = c.vault.get(ALICE).await.unwrap().unwrap();
        assert!(c.refresh(ALICE, &seen).await.unwrap().is_none());
        assert!(
            c.vault.get(ALICE).await.unwrap().is_none(),
            "the row is deleted"
        );
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // Another failure is a tool error naming the upstream and the code, not a deletion.
        let dir = tempfile::tempdir().unwrap();
        let answer = serde_json::json!({"error": "temporarily_unavailable"});
        let (c, _) = connections(dir.path(), (503, answer)).await;
        c.vault.put(ALICE, &expired()).await.unwrap();
        let seen = c.vault.get(ALICE).await.unwrap().unwrap();
        let err = c.refresh(ALICE, &seen).await.unwrap_err();
        assert!(
            err.message().contains("`api`") && err.message().contains("temporarily_unavailable"),
            "{err}"
        );
        assert!(!err.message().contains("old-refresh"), "{err}");
        assert!(c.vault.get(ALICE).await.unwrap().is_some());
    }
}
