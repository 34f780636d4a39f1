//! Upstream tokens from an OAuth authorization server: an HTTP tool whose upstream is
//! `auth: { type: token_exchange | client_credentials | user_oauth }` calls it with
//! `Authorization: Bearer <token>`, a token the runtime got for the call.
//!
//! Rules:
//! 1. Start-up builds one [`OAuthClient`] per OAuth upstream and refuses to run, naming the
//!    upstream and the field, when a secret it names is not set, a private key cannot sign,
//!    a URL is not absolute, or uses plain `http` for a host that is not loopback and an
//!    upstream whose base URL is not `http` itself (the spec allows that only with
//!    `local: true`).
//! 2. Token exchange (RFC 8693): the caller's verified access token (kept by the middleware
//!    only when some upstream uses token exchange, `bmm_middleware::SubjectToken`) goes to
//!    the configured token endpoint and nowhere else; the upstream gets the exchanged
//!    token. Exchanged tokens are cached by the SHA-256 of the caller's token, the
//!    upstream and the scope string, at most 10,000, each until 30 s before the earlier of
//!    its own and the caller's token's expiry; one exchange at a time per key
//!    (`cache`).
//! 3. Client credentials: one token per upstream and scope string, reused until
//!    `exp - min(60 s, lifetime / 10)`, one request at a time (50 concurrent calls make one
//!    token request).
//! 4. An upstream answering 401 to a token: the token is dropped (only if it is still the
//!    cached one), one new token is got (exchange or client credentials again, or the
//!    user's connection refreshed by `user::refresh_after_401`) and the call is made once
//!    more.
//! 5. The scope asked for is the tool's `upstream_scopes`, else the upstream's `scopes`.
//! 6. Tokens never print (`Secret`'s `Debug` is `Secret(..)`), are never logged, and are
//!    redacted from the call's results and errors like declared secrets
//!    (`Secrets::with_values`); errors name the upstream and the OAuth error code.

mod cache;
mod client;
mod connect;
#[cfg(test)]
mod tests;
pub(crate) mod user;
mod vault;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde_json::{Map, Value};

pub(crate) use client::OAuthClient;

use crate::context::ToolContext;
use crate::def::{HttpDef, OAuthDef, OAuthGrant, ServerDef, UpstreamAuthDef, UpstreamDef};
use crate::handler::Shared;
use crate::http_tool::{self, Failure, Upstream};
use crate::output::{ToolError, ToolOutput};
use crate::secrets::Secrets;
use crate::traces::upstream::UpstreamTrace;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// A token or other credential: cheap to clone, never printed.
#[derive(Clone)]
pub(crate) struct Secret(Arc<str>);

impl Secret {
    pub(crate) fn new(value: &str) -> Self {
        Self(Arc::from(value))
    }

    /// The value, to be sent where it belongs.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Whether both are the same token.
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A successful token endpoint answer.
#[derive(Debug, Clone)]
pub(crate) struct TokenResponse {
    pub(crate) access_token: Secret,
    pub(crate) refresh_token: Option<Secret>,
    pub(crate) expires_in: Option<u64>,
    pub(crate) scope: Option<String>,
    pub(crate) issued_token_type: Option<String>,
}

/// Why no upstream token was got. Never holds a token.
#[derive(Debug, Clone)]
pub(crate) enum UpstreamAuthError {
    /// The authorization server answered with an OAuth error (RFC 6749 section 5.2).
    Refused {
        /// The `error` code.
        error: String,
        /// The `error_description`, redacted, at most 200 characters.
        description: Option<String>,
    },
    /// The authorization server could not be reached, or did not answer in time.
    Unreachable {
        /// It did not answer in time.
        timeout: bool,
    },
    /// Its answer was not usable (status, not JSON, too large, no `access_token`, another
    /// `token_type`).
    BadResponse(String),
    /// Its metadata could not be found or used.
    Discovery(String),
    /// The call cannot get a token (no caller token to exchange, a signing failure).
    Unavailable(String),
    /// Too many token requests under way at once.
    Busy,
}

impl std::fmt::Display for UpstreamAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused {
                error,
                description: Some(d),
            } => write!(f, "the authorization server refused it ({error}: {d})"),
            Self::Refused { error, .. } => {
                write!(f, "the authorization server refused it ({error})")
            }
            Self::Unreachable { timeout: true } => {
                f.write_str("the authorization server did not answer in time")
            }
            Self::Unreachable { timeout: false } => {
                f.write_str("the authorization server could not be reached")
            }
            Self::BadResponse(why) => {
                write!(f, "the authorization server's answer is not usable: {why}")
            }
            Self::Discovery(why) => write!(
                f,
                "the authorization server's metadata is not usable: {why}"
            ),
            Self::Unavailable(why) => f.write_str(why),
            Self::Busy => f.write_str("too many upstream token requests at once; try again"),
        }
    }
}

impl std::error::Error for UpstreamAuthError {}

impl UpstreamAuthError {
    /// The tool error the MCP client sees: the upstream, what was attempted, the OAuth
    /// error code.
    pub(crate) fn into_tool_error(self, upstream: &str, attempt: &str) -> ToolError {
        tracing::warn!(upstream, attempt, error = %self, "no upstream token");
        ToolError::new(format!("upstream `{upstream}`: {attempt} failed: {self}"))
    }
}

/// Everything the runtime keeps for its OAuth upstreams: their clients and tokens.
pub(crate) struct UpstreamTokens {
    clients: HashMap<&'static str, Arc<OAuthClient>>,
    exchanged: cache::Exchanged,
    machine: cache::Machine,
}

impl std::fmt::Debug for UpstreamTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTokens")
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

/// Whether some upstream exchanges the caller's token (the middleware must then keep it,
/// `AuthConfig::keep_subject_token`).
pub(crate) fn uses_token_exchange(def: &ServerDef) -> bool {
    def.upstreams.iter().any(|u| {
        matches!(u.auth, Some(UpstreamAuthDef::OAuth(o)) if o.grant == OAuthGrant::TokenExchange)
    })
}

impl UpstreamTokens {
    /// One client per OAuth upstream (rule 1). `http` is the server's client (no
    /// redirects).
    pub(crate) fn new(
        upstreams: &[UpstreamDef],
        secrets: &Secrets,
        env: &impl Fn(&str) -> Option<String>,
        http: &reqwest::Client,
    ) -> Result<Self, String> {
        let mut clients = HashMap::new();
        for u in upstreams {
            if let Some(UpstreamAuthDef::OAuth(def)) = u.auth {
                // The spec allows a plain-http base URL only on a `local: true` upstream:
                // its authorization server may then be plain http too.
                let allow_http = u
                    .base_url
                    .get(..7)
                    .is_some_and(|s| s.eq_ignore_ascii_case("http://"));
                let client = OAuthClient::new(u.id, def, secrets, env, http.clone(), allow_http)?;
                clients.insert(u.id, Arc::new(client));
            }
        }
        Ok(Self {
            clients,
            exchanged: cache::Exchanged::new(cache::MAX_EXCHANGED),
            machine: cache::Machine::default(),
        })
    }

    /// The OAuth client of `upstream`, if it is an OAuth upstream.
    pub(crate) fn client(&self, upstream: &str) -> Option<&Arc<OAuthClient>> {
        self.clients.get(upstream)
    }

    /// An exchanged token for the caller's `subject` token (rule 2); `subject_left` is how
    /// long the caller's token is still valid.
    async fn exchanged(
        &self,
        client: &Arc<OAuthClient>,
        subject: &str,
        subject_left: Option<std::time::Duration>,
        scope: &str,
    ) -> Result<(Secret, [u8; 32]), UpstreamAuthError> {
        let key = cache::exchange_key(subject, client.upstream(), scope);
        let cache = Arc::clone(&self.exchanged.cache);
        let token = self
            .exchanged
            .flights
            .get(
                &key,
                || self.exchanged.cached(&key),
                || {
                    let client = Arc::clone(client);
                    let subject = subject.to_owned();
                    let scope = scope.to_owned();
                    async move {
                        let def = client.def();
                        let mut form = vec![
                            ("grant_type", TOKEN_EXCHANGE),
                            ("subject_token", subject.as_str()),
                            ("subject_token_type", ACCESS_TOKEN_TYPE),
                            ("requested_token_type", ACCESS_TOKEN_TYPE),
                        ];
                        target(&mut form, def, &scope);
                        let response = client.token_request(&form).await?;
                        drop(form);
                        drop(subject);
                        if let Some(kind) = &response.issued_token_type
                            && kind != ACCESS_TOKEN_TYPE
                            && kind != JWT_TOKEN_TYPE
                        {
                            return Err(UpstreamAuthError::BadResponse(format!(
                                "the issued_token_type is `{}`, not an access token",
                                kind.chars().take(100).collect::<String>().escape_default()
                            )));
                        }
                        let token = response.access_token;
                        if let Some(until) = cache::exchanged_until(
                            Instant::now(),
                            response.expires_in,
                            subject_left,
                        ) {
                            cache.insert(
                                key,
                                cache::Cached {
                                    token: token.clone(),
                                    until,
                                },
                            );
                        }
                        Ok(token)
                    }
                },
            )
            .await?;
        Ok((token, key))
    }

    /// The server's own token for `client`'s upstream and `scope` (rule 3).
    async fn machine_token(
        &self,
        client: &Arc<OAuthClient>,
        scope: &str,
    ) -> Result<Secret, UpstreamAuthError> {
        let key = (client.upstream(), scope.to_owned());
        let cache = Arc::clone(&self.machine.cache);
        self.machine
            .flights
            .get(
                &key,
                || self.machine.cached(&key),
                || {
                    let client = Arc::clone(client);
                    let key = key.clone();
                    async move {
                        let mut form = vec![("grant_type", "client_credentials")];
                        target(&mut form, client.def(), &key.1);
                        let response = client.token_request(&form).await?;
                        let token = response.access_token;
                        cache::Machine::store(
                            &cache,
                            key,
                            cache::Cached {
                                token: token.clone(),
                                until: cache::machine_until(Instant::now(), response.expires_in),
                            },
                        );
                        Ok(token)
                    }
                },
            )
            .await
    }
}

/// Adds `audience`, `resource` and `scope` to a token request.
fn target<'a>(form: &mut Vec<(&'a str, &'a str)>, def: &'static OAuthDef, scope: &'a str) {
    if let Some(audience) = def.audience {
        form.push(("audience", audience));
    }
    if let Some(resource) = def.resource {
        form.push(("resource", resource));
    }
    if !scope.is_empty() {
        form.push(("scope", scope));
    }
}

/// The scope string a tool asks for (rule 5).
fn scope_of(def: &HttpDef, oauth: &OAuthDef) -> String {
    if def.upstream_scopes.is_empty() {
        oauth.scopes.join(" ")
    } else {
        def.upstream_scopes.join(" ")
    }
}

/// The caller's verified token and how long it is still valid, for token exchange.
fn subject_of(
    ctx: &ToolContext,
) -> Option<(bmm_middleware::SubjectToken, Option<std::time::Duration>)> {
    let parts = ctx.request().extensions.get::<http::request::Parts>()?;
    let subject = parts
        .extensions
        .get::<bmm_middleware::SubjectToken>()?
        .clone();
    let left = ctx.auth().map(|a| {
        a.expires_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    });
    Some((subject, left))
}

/// Where one call's token comes from.
enum Source {
    Exchange {
        client: Arc<OAuthClient>,
        subject: bmm_middleware::SubjectToken,
        left: Option<std::time::Duration>,
    },
    Machine {
        client: Arc<OAuthClient>,
    },
    User,
}

/// Runs an HTTP tool of an OAuth upstream: a token for the call (rules 2, 3, and the
/// user's connection), the call, and on a 401 one new token and one more call (rule 4).
pub(crate) async fn execute(
    shared: &Shared,
    def: &HttpDef,
    upstream: &Upstream,
    oauth: &'static OAuthDef,
    args: &Map<String, Value>,
    trace: Option<&UpstreamTrace>,
    ctx: &ToolContext,
) -> Result<ToolOutput, ToolError> {
    let id = upstream.def.id;
    let tokens = &shared.upstream_tokens;
    let scope = scope_of(def, oauth);
    let client = || {
        tokens.client(id).cloned().ok_or_else(|| {
            ToolError::new(format!(
                "upstream `{id}`: its OAuth client is not configured"
            ))
        })
    };
    let source = match oauth.grant {
        OAuthGrant::TokenExchange => {
            let Some((subject, left)) = subject_of(ctx) else {
                return Err(ToolError::new(format!(
                    "upstream `{id}` is called with the caller's identity (token exchange), which needs an authenticated caller"
                )));
            };
            let client = client()?;
            // The caller's token goes only to the authorization server that issued it.
            let caller_issuer = ctx.auth().map(|a| a.issuer().to_owned());
            if !caller_issuer
                .as_deref()
                .is_some_and(|iss| client.may_receive_token_of(iss))
            {
                tracing::warn!(
                    upstream = id,
                    "token exchange refused: the caller's token is of another issuer than the upstream's authorization server"
                );
                return Err(ToolError::new(format!(
                    "upstream `{id}` exchanges tokens of its own authorization server only; the caller's token is of another issuer"
                )));
            }
            Source::Exchange {
                client,
                subject,
                left,
            }
        }
        OAuthGrant::ClientCredentials => Source::Machine { client: client()? },
        OAuthGrant::UserAuthorization => Source::User,
    };
    let first = token(shared, &source, &scope, ctx, id, None).await?;
    match call(shared, def, upstream, args, trace, &first).await {
        Err(Failure::Unauthorized(_)) => {
            tracing::info!(
                upstream = id,
                "the upstream refused its token (401): renewing it once"
            );
            let fresh = token(shared, &source, &scope, ctx, id, Some(&first)).await?;
            call(shared, def, upstream, args, trace, &fresh)
                .await
                .map_err(Failure::into_error)
        }
        other => other.map_err(Failure::into_error),
    }
}

/// The token for one call from `source`; with `rejected`, the one the upstream refused is
/// dropped first and a new one got (rule 4).
async fn token(
    shared: &Shared,
    source: &Source,
    scope: &str,
    ctx: &ToolContext,
    upstream: &'static str,
    rejected: Option<&Secret>,
) -> Result<Secret, ToolError> {
    let tokens = &shared.upstream_tokens;
    match source {
        Source::Exchange {
            client,
            subject,
            left,
        } => {
            if let Some(rejected) = rejected {
                let key = cache::exchange_key(subject.expose(), upstream, scope);
                tokens.exchanged.forget(&key, rejected);
            }
            tokens
                .exchanged(client, subject.expose(), *left, scope)
                .await
                .map(|(token, _)| token)
                .map_err(|e| e.into_tool_error(upstream, "token exchange"))
        }
        Source::Machine { client } => {
            if let Some(rejected) = rejected {
                tokens
                    .machine
                    .forget(&(upstream, scope.to_owned()), rejected);
            }
            tokens
                .machine_token(client, scope)
                .await
                .map_err(|e| e.into_tool_error(upstream, "the client credentials grant"))
        }
        // Per-user connections (user.rs): from the vault, refreshed, or asked for.
        Source::User => match rejected {
            None => user::bearer_for(shared, ctx, upstream).await,
            Some(rejected) => user::refresh_after_401(shared, ctx, upstream, rejected).await,
        },
    }
}

/// One call with `token`, redacted of it (rule 6).
async fn call(
    shared: &Shared,
    def: &HttpDef,
    upstream: &Upstream,
    args: &Map<String, Value>,
    trace: Option<&UpstreamTrace>,
    token: &Secret,
) -> Result<ToolOutput, Failure> {
    let secrets = shared.secrets.with_values(&[token.expose()]);
    let output = http_tool::send(
        def,
        upstream,
        &secrets,
        &shared.http,
        args,
        trace,
        Some(token),
    )
    .await?;
    Ok(match output {
        ToolOutput::Structured(mut value) => {
            secrets.redact_value(&mut value);
            ToolOutput::Structured(value)
        }
        other => other,
    })
}
