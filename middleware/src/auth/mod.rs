//! Bearer authentication: the layer that makes a service an OAuth 2.1 resource server.
//!
//! [`AuthLayer`] checks every request before the wrapped service sees it, following the MCP
//! authorization spec, RFC 6750, RFC 8707 and RFC 9728. On success it inserts the verified
//! [`AuthContext`] into the request extensions; the client's token is
//! never forwarded anywhere.
//!
//! # Rules
//! 1. Credentials are read only from the `Authorization` header, with the scheme `Bearer`
//!    matched case-insensitively. A token in the query string or the body is ignored.
//! 2. No credentials (no header, or another scheme): **401** with
//!    `WWW-Authenticate: Bearer resource_metadata="…"` plus `scope="…"` when challenge
//!    scopes are configured, and no `error` parameter.
//! 3. A malformed header, an empty token or several `Authorization` headers: **400** with
//!    `error="invalid_request"`.
//! 4. A token that fails verification (see [`crate::jwt`] for JWTs, [`crate::introspect`]
//!    for opaque tokens, [`crate::issuer`] for several issuers): **401** with
//!    `error="invalid_token"`, `error_description`, `resource_metadata` and `scope`.
//! 5. A valid token lacking scopes the route needs: **403** with
//!    `error="insufficient_scope"` and `scope` naming every scope the operation needs.
//! 6. No signing key of the issuer could ever be obtained, or its introspection endpoint
//!    gave no usable answer: **503** with `Retry-After`, so clients do not throw away a
//!    good token because the issuer is briefly unreachable (and a token is never accepted
//!    unchecked).
//! 7. Every rejection carries `Cache-Control: no-store`, a JSON body
//!    `{"error", "error_description"}` and, in the response extensions, the [`AuthError`].
//! 8. Tokens are never logged: traces carry the decision and the reason, not the token.
//! 9. An admitted request reaches the inner service without its `Authorization` header
//!    (nor its `DPoP` proof): code behind the layer cannot forward a token it never sees.
//!    Tokens are never passed through.
//! 10. DPoP (RFC 9449, [`crate::dpop`], on by default in [`DpopMode::Allowed`]): the
//!     scheme `DPoP` is read like `Bearer`; a token bound with `cnf.jkt` needs it and a
//!     valid proof of the same key, a bound token sent as `Bearer` is refused (401
//!     `invalid_token`), proof problems answer 401 `invalid_dpop_proof` or
//!     `use_dpop_nonce`, and 401s carry a `DPoP algs="…"` challenge. The rules are listed
//!     on [`DpopConfig`].
//! 11. Outside the layer, [`Authenticator::verify_token`] takes a token alone, so it
//!     refuses every bound token (`cnf`) with 401 `invalid_token`, like rule 10's bound
//!     token sent as `Bearer`; [`Authenticator::verify_request`] takes the method, path and
//!     headers and applies rule 10 exactly as the layer does (without the scope checks).
//! 12. Only with [`AuthConfig::keep_subject_token`] on (off by default) does an admitted
//!     request also carry its token, as a [`SubjectToken`] in the request extensions, for
//!     one use: the `subject_token` of an RFC 8693 token exchange, so the server gets a
//!     token of its own, naming the caller, for an upstream API. The `Authorization`
//!     header is still removed (rule 9), and `SubjectToken` never prints its value
//!     (`Debug` shows `SubjectToken(..)`, no `Display`)
//!     (`the_subject_token_is_kept_only_when_asked_for_and_never_printed`).
//!
//! # Deployment caveat
//! The `resource` is configuration, never derived from the `Host` header: behind a proxy it
//! must be the public URL clients use, or every token's audience check fails.

mod bearer;
mod binding;
mod challenge;
mod future;
mod layer;
mod service;
mod subject;

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::dpop::{DpopConfig, DpopMode, DpopState};

pub use challenge::AuthError;
pub(crate) use challenge::Challenge;
pub use future::ResponseFuture;
pub use layer::AuthLayer;
pub use service::Auth;
pub use subject::SubjectToken;

pub(crate) use bearer::credentials;

use crate::config::{ConfigError, KeySettings};
use crate::context::AuthContext;
use crate::fetch::Fetcher;
use crate::issuer::{Keys, TrustedIssuer, check_algorithms, check_audience, check_static_jwks};
use crate::jwks::{KeySource, KeyStore};
use crate::jwt::{
    ClaimRules, DEFAULT_ALGORITHMS, IssuerEntry, TokenVerifier, Verdict, VerifierConfig,
    VerifyFuture,
};
use crate::resource::{Issuer, Resource};
use crate::scope::{ScopePolicy, ScopeSet, validate_scope_token};

/// The configuration of an [`Authenticator`].
#[derive(Debug)]
#[must_use]
pub struct AuthConfig {
    resource: Resource,
    issuers: Vec<TrustedIssuer>,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    extra_audiences: Vec<String>,
    policy: ScopePolicy,
    challenge_scopes: Option<Vec<String>>,
    keys: KeySettings,
    max_token_bytes: usize,
    token_cache_capacity: usize,
    require_at_jwt_typ: bool,
    dpop: DpopConfig,
    keep_subject_token: bool,
}

impl AuthConfig {
    /// Protects `resource` (the canonical URL of the MCP endpoint).
    pub fn new(resource: Resource) -> Self {
        Self {
            resource,
            issuers: Vec::new(),
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            leeway: Duration::from_secs(30),
            extra_audiences: Vec::new(),
            policy: ScopePolicy::new(),
            challenge_scopes: None,
            keys: KeySettings::default(),
            max_token_bytes: 8 * 1024,
            token_cache_capacity: 10_000,
            require_at_jwt_typ: false,
            dpop: DpopConfig::new(),
            keep_subject_token: false,
        }
    }

    /// Trusts tokens from `issuer`, with its own keys, algorithms, audiences, scope claim
    /// and introspection (see [`crate::issuer`]). Call once per trusted issuer.
    pub fn trust(mut self, issuer: TrustedIssuer) -> Self {
        self.issuers.push(issuer);
        self
    }

    /// Trusts tokens from `issuer`; its JWKS is found through discovery. Shorthand for
    /// `trust(TrustedIssuer::new(issuer))`.
    pub fn issuer(self, issuer: Issuer) -> Self {
        self.trust(TrustedIssuer::new(issuer))
    }

    /// Trusts tokens from `issuer`, whose keys are at `jwks_uri` (no discovery).
    pub fn issuer_with_jwks_uri(self, issuer: Issuer, jwks_uri: &str) -> Result<Self, ConfigError> {
        Ok(self.trust(TrustedIssuer::new(issuer).jwks_uri(jwks_uri)?))
    }

    /// Trusts tokens from `issuer` signed by the keys of `jwks` (a JWKS document), which
    /// are never fetched or refreshed: for pinned keys, air-gapped set-ups and benchmarks.
    pub fn issuer_with_static_jwks(
        self,
        issuer: Issuer,
        jwks: &serde_json::Value,
    ) -> Result<Self, ConfigError> {
        check_static_jwks(&issuer, jwks, &self.algorithms, self.keys.max_keys)?;
        Ok(self.trust(TrustedIssuer::new(issuer).static_jwks(jwks)?))
    }

    /// The accepted signature algorithms of every issuer without a list of its own
    /// ([`TrustedIssuer::algorithms`]). HMAC and `none` are refused. Default is every
    /// RSA, RSA-PSS, ECDSA (P-256, P-384) and Ed25519 algorithm.
    pub fn algorithms(mut self, algorithms: &[Algorithm]) -> Result<Self, ConfigError> {
        check_algorithms(algorithms)?;
        self.algorithms = algorithms.to_vec();
        Ok(self)
    }

    /// Clock skew tolerated on `exp` and `nbf`. Default is 30 s; at most 5 minutes.
    pub fn leeway(mut self, leeway: Duration) -> Result<Self, ConfigError> {
        if leeway > Duration::from_secs(300) {
            return Err(ConfigError::new("leeway above 5 minutes is refused"));
        }
        self.leeway = leeway;
        Ok(self)
    }

    /// Accepts tokens of every issuer whose `aud` holds this exact string, besides the
    /// resource (some providers put the client id there). Off by default: opt in
    /// knowingly; [`TrustedIssuer::audience`] accepts one for a single issuer. Checked when
    /// the configuration is built (1 to 1,024 bytes).
    pub fn extra_audience(mut self, audience: impl Into<String>) -> Self {
        let audience = audience.into();
        if !self.extra_audiences.contains(&audience) {
            self.extra_audiences.push(audience);
        }
        self
    }

    /// The scope policy (server-wide, per-route and per-tool requirements, hierarchy).
    pub fn scope_policy(mut self, policy: ScopePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The scopes named in `401` challenges. Default is the server-wide required scopes.
    pub fn challenge_scopes<I, S>(mut self, scopes: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let list: Vec<String> = scopes.into_iter().map(Into::into).collect();
        for s in &list {
            validate_scope_token(s)?;
        }
        self.challenge_scopes = Some(list);
        Ok(self)
    }

    /// Requires the JOSE header `typ` to be `at+jwt` (RFC 9068): tokens without it, such
    /// as ID tokens, are refused. Default is off (many issuers send `typ: JWT`).
    pub fn require_at_jwt_typ(mut self, required: bool) -> Self {
        self.require_at_jwt_typ = required;
        self
    }

    /// Keeps each admitted request's token as a [`SubjectToken`] in its extensions (rule
    /// 12), for RFC 8693 token exchange only. Default is off: the token is removed and
    /// nothing behind the layer can reach it.
    pub fn keep_subject_token(mut self, keep: bool) -> Self {
        self.keep_subject_token = keep;
        self
    }

    /// Key fetching and caching settings.
    pub fn key_settings(mut self, settings: KeySettings) -> Self {
        self.keys = settings;
        self
    }

    /// Longest token accepted. Default is 8 KiB.
    pub fn max_token_bytes(mut self, bytes: usize) -> Self {
        self.max_token_bytes = bytes;
        self
    }

    /// Entries of the verified-token cache; zero disables it. Default is 10,000.
    pub fn token_cache_capacity(mut self, entries: usize) -> Self {
        self.token_cache_capacity = entries;
        self
    }

    /// DPoP (RFC 9449) settings: mode, nonces, `iat` window, proof algorithms. Default is
    /// [`DpopMode::Allowed`] without nonces.
    pub fn dpop(mut self, config: DpopConfig) -> Self {
        self.dpop = config;
        self
    }

    /// The protected resource.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// Checks the configuration and builds the authenticator.
    pub fn build(self) -> Result<Authenticator, ConfigError> {
        if self.issuers.is_empty() {
            return Err(ConfigError::new(
                "no issuer configured: pass the authorization server's issuer URL (--issuer / BMM_ISSUER)",
            ));
        }
        for (i, trusted) in self.issuers.iter().enumerate() {
            if self.issuers[..i]
                .iter()
                .any(|other| other.issuer == trusted.issuer)
            {
                return Err(ConfigError::new(format!(
                    "issuer `{}` is configured twice",
                    trusted.issuer
                )));
            }
        }
        let introspecting: Vec<&Issuer> = self
            .issuers
            .iter()
            .filter(|t| t.introspection.is_some())
            .map(|t| &t.issuer)
            .collect();
        if introspecting.len() > 1 {
            return Err(ConfigError::new(format!(
                "introspection is configured for several issuers ({}): opaque tokens name no issuer, so only one issuer may introspect",
                introspecting
                    .iter()
                    .map(|i| format!("`{i}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for audience in &self.extra_audiences {
            check_audience(None, audience)?;
        }
        let fetcher = Fetcher::new(&self.keys)?;
        let mut entries = Vec::with_capacity(self.issuers.len());
        for trusted in self.issuers {
            for audience in &trusted.audiences {
                check_audience(Some(&trusted.issuer), audience)?;
            }
            let algorithms = trusted
                .algorithms
                .unwrap_or_else(|| self.algorithms.clone());
            let mut audiences = trusted.audiences;
            for extra in &self.extra_audiences {
                if !audiences.contains(extra) {
                    audiences.push(extra.clone());
                }
            }
            let source = match trusted.keys {
                Keys::Default if trusted.introspection.is_some() => None,
                Keys::Default | Keys::Discover => Some(KeySource::Discover),
                Keys::Fixed(url) => Some(KeySource::Fixed(url)),
                Keys::Static(jwks) => Some(KeySource::Static(check_static_jwks(
                    &trusted.issuer,
                    &jwks,
                    &algorithms,
                    self.keys.max_keys,
                )?)),
            };
            let rules = Arc::new(ClaimRules {
                issuer: trusted.issuer.clone(),
                resource: self.resource.clone(),
                audiences,
                leeway_secs: self.leeway.as_secs(),
                hierarchy: self.policy.hierarchy().clone(),
                scope_claim: trusted.scope_claim,
            });
            let keys = source.map(|source| {
                KeyStore::new(
                    trusted.issuer.clone(),
                    source,
                    fetcher.clone(),
                    self.keys.clone(),
                    algorithms.clone(),
                )
            });
            let introspector = trusted
                .introspection
                .map(|i| i.build(Arc::clone(&rules), fetcher.clone()))
                .transpose()?;
            entries.push(IssuerEntry {
                rules,
                keys,
                algorithms,
                introspector,
            });
        }
        let challenge_scopes = self
            .challenge_scopes
            .unwrap_or_else(|| self.policy.required().to_vec());
        let challenge = Challenge::new(self.resource.metadata_url(), &challenge_scopes);
        self.dpop.check()?;
        let dpop =
            (self.dpop.mode != DpopMode::Off).then(|| DpopState::new(&self.dpop, &self.resource));
        let challenge = match &dpop {
            Some(d) => challenge.with_dpop(
                d.algorithms(),
                d.mode().accepts_bearer(),
                d.nonces().cloned(),
            ),
            None => challenge,
        };
        let verifier = TokenVerifier::new(VerifierConfig {
            issuers: entries,
            max_token_bytes: self.max_token_bytes,
            cache_capacity: self.token_cache_capacity,
            require_at_jwt_typ: self.require_at_jwt_typ,
        });
        Ok(Authenticator {
            inner: Arc::new(Inner {
                resource: self.resource,
                verifier,
                challenge,
                policy: self.policy,
                dpop,
                keep_subject_token: self.keep_subject_token,
            }),
        })
    }
}

/// Verifies requests for one protected resource. Cheap to clone; shared by every
/// connection and by the per-tool scope layer.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    resource: Resource,
    verifier: TokenVerifier,
    challenge: Challenge,
    policy: ScopePolicy,
    dpop: Option<DpopState>,
    keep_subject_token: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("resource", &self.inner.resource)
            .field("issuers", &self.inner.verifier.issuers())
            .finish_non_exhaustive()
    }
}

/// What authenticating a request without waiting gave.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Attempt {
    Done(Result<binding::Admitted, AuthError>),
    Later(VerifyFuture),
}

impl Authenticator {
    /// The protected resource.
    pub fn resource(&self) -> &Resource {
        &self.inner.resource
    }

    /// The scope policy.
    pub fn policy(&self) -> &ScopePolicy {
        &self.inner.policy
    }

    /// Whether admitted requests keep their token as a [`SubjectToken`] (rule 12).
    pub fn keeps_subject_token(&self) -> bool {
        self.inner.keep_subject_token
    }

    /// The issuers this server trusts, as configured.
    pub fn issuers(&self) -> impl Iterator<Item = &Issuer> {
        self.inner
            .verifier
            .issuers()
            .iter()
            .map(IssuerEntry::issuer)
    }

    /// Fetches every issuer's keys (and finds the introspection endpoint) now, so the
    /// first request does not wait. Failures are returned (one line per issuer) but are
    /// not fatal: keys are fetched again on demand.
    pub async fn prefetch_keys(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        for store in self.inner.verifier.stores() {
            if let Err(e) = store.refresh().await {
                errors.push(format!("{}: {e}", store.issuer()));
            }
        }
        for introspector in self.inner.verifier.introspectors() {
            if let Err(e) = introspector.endpoint().await {
                errors.push(format!("introspection: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Fetches every issuer's keys, retrying with a short backoff (250 ms doubling to 5 s)
    /// until each has a key set: the server may start before its authorization server.
    /// Completes once all are loaded.
    pub async fn load_keys_until_ready(&self) {
        let mut delay = Duration::from_millis(250);
        loop {
            let mut waiting = Vec::new();
            for store in self.inner.verifier.stores() {
                if store.is_loaded() {
                    continue;
                }
                if let Err(e) = store.refresh().await {
                    waiting.push(format!("{}: {e}", store.issuer()));
                }
            }
            if waiting.is_empty() {
                return;
            }
            tracing::warn!(issuers = %waiting.join("; "), retry_in_ms = delay.as_millis() as u64, "signing keys not available yet");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Fetches every issuer's keys now and forgets the `kid`s remembered as unknown (a
    /// reload, on SIGHUP: a key added to the JWKS is accepted at once). Logs, per issuer,
    /// how many keys it now has or why the fetch failed (the last good keys stay).
    pub async fn reload_keys(&self) {
        for introspector in self.inner.verifier.introspectors() {
            introspector.forget_endpoint();
        }
        for store in self.inner.verifier.stores() {
            store.forget_unknown_kids();
            match store.refresh().await {
                Ok(keys) => tracing::info!(issuer = %store.issuer(), keys, "reloaded signing keys"),
                Err(error) => {
                    tracing::warn!(issuer = %store.issuer(), %error, "signing keys not reloaded; keeping the last good ones");
                }
            }
        }
    }

    /// The trusted issuers whose signing keys were never obtained (empty: ready).
    pub fn issuers_without_keys(&self) -> impl Iterator<Item = &Issuer> {
        self.inner
            .verifier
            .stores()
            .filter(|s| !s.is_loaded())
            .map(KeyStore::issuer)
    }

    /// How many JWKS fetches were attempted, over all issuers.
    pub fn jwks_fetch_count(&self) -> u64 {
        self.inner
            .verifier
            .stores()
            .map(KeyStore::fetch_count)
            .sum()
    }

    /// How many introspection calls were made, over all issuers.
    pub fn introspection_count(&self) -> u64 {
        self.inner
            .verifier
            .introspectors()
            .map(crate::introspect::Introspector::call_count)
            .sum()
    }

    /// Verifies a bearer token, fetching keys or introspecting if needed. For callers
    /// outside the layer.
    ///
    /// Rule **verify_token_refuses_bound_tokens**: a token bound to a key (any `cnf`
    /// claim or introspection member, such as a DPoP-bound token's `cnf.jkt`) is refused
    /// with 401 `invalid_token`, exactly as the layer refuses a bound token presented with
    /// the `Bearer` scheme: a token alone cannot show possession of its key. To accept
    /// DPoP-bound tokens outside the layer, use [`Self::verify_request`] with the whole
    /// request. Scopes are not checked here.
    pub async fn verify_token(&self, token: &str) -> Result<AuthContext, AuthError> {
        let ctx = self.verify_unbound(token).await?;
        if ctx.claim("cnf").is_some() {
            return Err(AuthError::rejected_token(
                "the token is bound (cnf) to a key: it is accepted only with a proof of possession of that key (DPoP)",
                crate::refusal::Refusal::DPOP,
            ));
        }
        Ok(ctx)
    }

    /// Authenticates a request as the layer does, scopes aside, for callers outside the
    /// layer: reads the `Authorization` header (`Bearer` or `DPoP`, as the
    /// [`DpopMode`] allows), verifies the token and checks its binding with the same rules
    /// as the layer ([`DpopConfig`]): a bound token needs the `DPoP` scheme and a valid,
    /// unreplayed proof of its key in the `DPoP` header, whose `htu` is the configured
    /// resource origin plus `path` (the request path, without query). The proof's `jti`
    /// enters the same replay cache as the layer's. Server nonces
    /// ([`DpopConfig::nonce`]) are checked but not handed out: this gives no `DPoP-Nonce`
    /// to send, so with nonces on, prefer the layer.
    pub async fn verify_request(
        &self,
        method: &http::Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<AuthContext, AuthError> {
        let token = self.token_of(credentials(headers))?;
        let ctx = self.verify_unbound(token).await?;
        self.bind(ctx, method, path, headers)
            .map(|admitted| admitted.ctx)
    }

    /// Verifies a token's signature and claims (or introspects it), without looking at
    /// its binding.
    async fn verify_unbound(&self, token: &str) -> Result<AuthContext, AuthError> {
        match self.inner.verifier.verify_now(token) {
            Verdict::Done(result) => result,
            Verdict::NeedsKeys => self.inner.verifier.verify(token.to_owned()).await,
        }
    }

    pub(crate) fn attempt(
        &self,
        method: &http::Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Attempt {
        let token = match self.token_of(credentials(headers)) {
            Ok(token) => token,
            Err(error) => return Attempt::Done(Err(error)),
        };
        match self.inner.verifier.verify_now(token) {
            Verdict::Done(result) => {
                Attempt::Done(result.and_then(|ctx| self.bind(ctx, method, path, headers)))
            }
            Verdict::NeedsKeys => Attempt::Later(self.inner.verifier.verify(token.to_owned())),
        }
    }

    /// Applies the server-wide and per-route scope requirements.
    pub(crate) fn authorize(&self, ctx: &AuthContext, path: &str) -> Result<(), AuthError> {
        let needed = self.inner.policy.needed_for_path(path);
        ScopePolicy::check(&needed, ctx.effective_scopes()).map_err(AuthError::insufficient_scope)
    }

    /// Everything a call of `tool` on `path` needs.
    pub(crate) fn needed_for_tool(&self, path: &str, tool: &str) -> ScopeSet {
        let mut needed = self.inner.policy.needed_for_path(path);
        needed.extend(self.inner.policy.tool_scopes(tool).iter().cloned());
        needed
    }

    pub(crate) fn challenge(&self) -> &Challenge {
        &self.inner.challenge
    }
}
