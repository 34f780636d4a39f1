//! OAuth 2.0 Token Introspection (RFC 7662): how opaque access tokens, and the JWTs of an
//! issuer configured with introspection and no keys, are verified.
//!
//! Configured per issuer with [`crate::TrustedIssuer::introspection`] and [`Introspection`].
//!
//! Rules:
//! 1. The token's shape decides: a token that is not JWT-shaped (neither a JWS, three
//!    base64url parts whose header decodes to a JSON object, nor a JWE, five such parts,
//!    which is refused with 401 `invalid_token` without introspection) is opaque and goes
//!    to the ONE issuer configured with introspection (two such issuers are a
//!    configuration error); with none it is refused with 401 `invalid_token`. An opaque
//!    token names no issuer: with several trusted issuers, opaque tokens of all of them
//!    reach the introspecting one. A JWT goes only to the issuer its `iss` names, and is
//!    introspected only when that issuer has introspection and no keys; it is never sent
//!    to any other issuer.
//! 2. The endpoint is the configured one, else the `introspection_endpoint` of the
//!    issuer's RFC 8414 (or OpenID Connect) metadata, found and checked like `jwks_uri`
//!    (the document's `issuer` must match; `https`, or `http` on loopback).
//! 3. The request is `POST` `token=...` (form-encoded) with client authentication and
//!    nothing else: `client_secret_basic` (RFC 6749 section 2.3.1: client id and secret
//!    form-urlencoded, then HTTP Basic) or `private_key_jwt` (an RFC 7523 assertion with
//!    `iss` = `sub` = client id, `aud` = the issuer, a random `jti`, `exp` one minute
//!    ahead). Redirects are not followed.
//! 4. `active: false` is answered 401 `invalid_token`.
//! 5. An active response is checked like a JWT's claims (see [`crate::jwt`] rules 6 to 8,
//!    10 and 11): `iss`, when present, must equal the issuer; `aud` is REQUIRED and must
//!    name this resource or an audience accepted for this issuer (an absent `aud` is
//!    refused: fail closed); `exp` is required; `nbf` and the scopes (per the issuer's
//!    [`crate::ScopeClaim`]) are read the same way; a `token_type` other than an access
//!    token type (`Bearer`, `DPoP`, `access_token`, `N_A`) is refused.
//! 6. An outage is answered 503 with `Retry-After`, never accepted and never cached: no
//!    answer within the timeout (5 s by default), a transport error, a status other than
//!    200, a body over 64 KiB, a body that is not a JSON object, or no boolean `active`.
//! 7. Answers are cached, keyed by the SHA-256 of the token (never the token): an active
//!    one until its `exp` or for the cache ceiling (60 s by default), whichever comes
//!    first, so a cached answer never outlives `exp`; a refusal for 5 s (at most the
//!    ceiling). The cache is bounded (10,000 entries by default, each from an answer of
//!    at most 8 KiB; larger answers are used once and not kept).
//! 8. Concurrent requests with the same token share one introspection call (single
//!    flight); at most 64 calls per issuer are under way at once, and at most 4,096
//!    distinct tokens wait for one (beyond that: 503).
//! 9. The token is never logged, nor put in an error: logs carry the issuer, the endpoint
//!    and the outcome.
//! 10. The verified response becomes the request's [`crate::AuthContext`]: its claims
//!     are the response's members (so `cnf.jkt` binds the token for DPoP), and its
//!     [`crate::TokenKind`] says whether the token was opaque or a JWT.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::HeaderValue;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use rand::RngCore;
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, watch};
use url::Url;

use crate::auth::AuthError;
use crate::config::ConfigError;
use crate::context::{AuthContext, TokenKind};
use crate::discovery;
use crate::fetch::{Fetcher, error_chain};
use crate::jwt::{ClaimRules, DEFAULT_ALGORITHMS, is_jws_shaped};
use crate::token_cache::now_secs;

/// Largest introspection response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Largest introspection response whose answer is cached.
const MAX_CACHED_RESPONSE_BYTES: usize = 8 * 1024;
const DEFAULT_CEILING: Duration = Duration::from_secs(60);
const MAX_CEILING: Duration = Duration::from_secs(3600);
const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CACHE_CAPACITY: usize = 10_000;
const MAX_CONCURRENT_CALLS: usize = 64;
const MAX_IN_FLIGHT: usize = 4096;
const MAX_CLIENT_ID_BYTES: usize = 255;
const MAX_SECRET_BYTES: usize = 4096;
const ASSERTION_LIFETIME_SECS: u64 = 60;
/// Least time between two metadata lookups of the endpoint after a failed one.
const DISCOVERY_RETRY: Duration = Duration::from_secs(1);
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How this server authenticates to the introspection endpoint.
#[derive(Clone)]
pub enum IntrospectionAuth {
    /// `client_secret_basic` (RFC 6749 section 2.3.1): HTTP Basic with the client id and
    /// this secret, each form-urlencoded first.
    ClientSecretBasic(String),
    /// `private_key_jwt` (RFC 7523 section 2.2): a one-minute client assertion signed with
    /// this PEM private key (PKCS#8, or PKCS#1 for RSA) and asymmetric algorithm.
    PrivateKeyJwt {
        /// The private key, PEM.
        pem: String,
        /// The signing algorithm (RS*, PS*, ES256, ES384 or EdDSA).
        alg: Algorithm,
    },
}

impl IntrospectionAuth {
    /// The RFC 8414 name of the method: `client_secret_basic` or `private_key_jwt`.
    pub fn method(&self) -> &'static str {
        match self {
            Self::ClientSecretBasic(_) => "client_secret_basic",
            Self::PrivateKeyJwt { .. } => "private_key_jwt",
        }
    }
}

impl fmt::Debug for IntrospectionAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientSecretBasic(_) => f.write_str("ClientSecretBasic(<redacted>)"),
            Self::PrivateKeyJwt { alg, .. } => f
                .debug_struct("PrivateKeyJwt")
                .field("alg", alg)
                .finish_non_exhaustive(),
        }
    }
}

/// The introspection settings of one issuer. See the [module docs](self) for the rules.
#[derive(Clone)]
#[must_use]
pub struct Introspection {
    client_id: String,
    auth: IntrospectionAuth,
    endpoint: Option<Url>,
    cache_ceiling: Duration,
    negative_ttl: Duration,
    timeout: Duration,
    cache_capacity: usize,
}

impl fmt::Debug for Introspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Introspection")
            .field("client_id", &self.client_id)
            .field("auth", &self.auth)
            .field("endpoint", &self.endpoint.as_ref().map(Url::as_str))
            .field("cache_ceiling", &self.cache_ceiling)
            .finish_non_exhaustive()
    }
}

impl Introspection {
    /// Introspects as client `client_id`, authenticating with `auth`. The endpoint comes
    /// from the issuer's metadata unless [`Introspection::endpoint`] sets it.
    pub fn new(client_id: impl Into<String>, auth: IntrospectionAuth) -> Self {
        Self {
            client_id: client_id.into(),
            auth,
            endpoint: None,
            cache_ceiling: DEFAULT_CEILING,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            timeout: DEFAULT_TIMEOUT,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
        }
    }

    /// The introspection endpoint (`https`, or `http` on loopback), instead of the one
    /// the issuer's metadata names.
    pub fn endpoint(mut self, endpoint: Url) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Longest an active answer is reused (never beyond the token's `exp`). Default is
    /// 60 s; zero disables the reuse of active answers; at most one hour.
    pub fn cache_ceiling(mut self, ceiling: Duration) -> Self {
        self.cache_ceiling = ceiling;
        self
    }

    /// How long a refusal (`active: false`, or a response failing the checks) is reused.
    /// Default is 5 s; never longer than the cache ceiling.
    pub fn negative_cache(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// Timeout of one introspection (connect, request and response). Default is 5 s; at
    /// most 60 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Entries of the answer cache; zero disables it. Default is 10,000.
    pub fn cache_capacity(mut self, entries: usize) -> Self {
        self.cache_capacity = entries;
        self
    }

    /// The client id this server introspects as.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Checks the settings and builds the introspector of the issuer `rules` speaks for.
    pub(crate) fn build(
        self,
        rules: Arc<ClaimRules>,
        fetcher: Fetcher,
    ) -> Result<Introspector, ConfigError> {
        let issuer = rules.issuer.clone();
        let error =
            |what: String| ConfigError::new(format!("introspection for issuer `{issuer}`: {what}"));
        if self.client_id.is_empty()
            || self.client_id.len() > MAX_CLIENT_ID_BYTES
            || self.client_id.chars().any(char::is_control)
        {
            return Err(error(format!(
                "the client id must be 1 to {MAX_CLIENT_ID_BYTES} bytes without control characters: give the client id the authorization server registered for this resource server"
            )));
        }
        if let Some(endpoint) = &self.endpoint {
            discovery::check_endpoint_url(endpoint, "the introspection endpoint").map_err(error)?;
        }
        if self.cache_ceiling > MAX_CEILING {
            return Err(error(format!(
                "a cache ceiling of {} s is above the limit of {} s: introspection answers must stay short-lived so revocation takes effect",
                self.cache_ceiling.as_secs(),
                MAX_CEILING.as_secs()
            )));
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(error(format!(
                "the timeout must be between 1 ms and {} s",
                MAX_TIMEOUT.as_secs()
            )));
        }
        let auth = match &self.auth {
            IntrospectionAuth::ClientSecretBasic(secret) => {
                if secret.is_empty() || secret.len() > MAX_SECRET_BYTES {
                    return Err(error(format!(
                        "the client secret must be 1 to {MAX_SECRET_BYTES} bytes (is the secret's environment variable set?)"
                    )));
                }
                ClientAuth::Basic(basic_authorization(&self.client_id, secret))
            }
            IntrospectionAuth::PrivateKeyJwt { pem, alg } => {
                let key = signing_key(pem, *alg).map_err(error)?;
                ClientAuth::Jwt { key, alg: *alg }
            }
        };
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bmm-middleware/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| error(format!("cannot build the HTTP client: {e}")))?;
        let introspector = Introspector {
            inner: Arc::new(Shared {
                client_id: self.client_id,
                method: self.auth.method(),
                auth,
                configured: self.endpoint,
                discovered: ArcSwapOption::empty(),
                last_discovery_failure: tokio::sync::Mutex::new(None),
                fetcher,
                client,
                timeout: self.timeout,
                ceiling: self.cache_ceiling,
                negative_ttl: self.negative_ttl.min(self.cache_ceiling),
                cache: (self.cache_capacity > 0)
                    .then(|| quick_cache::sync::Cache::new(self.cache_capacity)),
                in_flight: Mutex::new(HashMap::new()),
                calls: Semaphore::new(MAX_CONCURRENT_CALLS),
                count: AtomicU64::new(0),
                rules,
            }),
        };
        if let ClientAuth::Jwt { key, alg } = &introspector.inner.auth {
            introspector.assertion(key, *alg).map_err(|e| {
                error(format!(
                    "the private key cannot sign a {alg:?} client assertion: {e}"
                ))
            })?;
        }
        Ok(introspector)
    }
}

/// `Authorization: Basic` for RFC 6749 section 2.3.1: id and secret form-urlencoded.
fn basic_authorization(client_id: &str, secret: &str) -> HeaderValue {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let credentials = format!("{}:{}", encode(client_id), encode(secret));
    let mut value = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(credentials)))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

fn signing_key(pem: &str, alg: Algorithm) -> Result<EncodingKey, String> {
    if !DEFAULT_ALGORITHMS.contains(&alg) {
        return Err(format!(
            "{alg:?} is not an accepted client assertion algorithm (use RS256, PS256, ES256, ES384 or EdDSA)"
        ));
    }
    let key = match alg.family() {
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem.as_bytes()),
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem.as_bytes()),
        AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem.as_bytes()),
        AlgorithmFamily::Hmac => {
            return Err("HMAC client assertions are not supported".to_owned());
        }
    };
    // The error names the problem, never the key material.
    key.map_err(|e| format!("the private key is not a PEM key fitting {alg:?}: {e}"))
}

enum ClientAuth {
    Basic(HeaderValue),
    Jwt { key: EncodingKey, alg: Algorithm },
}

/// What one call to the endpoint gave.
enum Outcome {
    /// The issuer's answer, checked: cacheable.
    Answer(Result<AuthContext, AuthError>),
    /// The issuer's answer, checked, too large to keep in the cache.
    Uncached(Result<AuthContext, AuthError>),
    /// No usable answer; the text (no token in it) is for the log.
    Unavailable(String),
}

#[derive(Clone)]
struct Entry {
    result: Result<AuthContext, AuthError>,
    until: Instant,
}

type Waiting = watch::Receiver<Option<Result<AuthContext, AuthError>>>;

/// Introspects tokens at one issuer. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Introspector {
    inner: Arc<Shared>,
}

struct Shared {
    rules: Arc<ClaimRules>,
    client_id: String,
    method: &'static str,
    auth: ClientAuth,
    configured: Option<Url>,
    discovered: ArcSwapOption<Url>,
    last_discovery_failure: tokio::sync::Mutex<Option<Instant>>,
    fetcher: Fetcher,
    client: reqwest::Client,
    timeout: Duration,
    ceiling: Duration,
    negative_ttl: Duration,
    cache: Option<quick_cache::sync::Cache<[u8; 32], Entry>>,
    in_flight: Mutex<HashMap<[u8; 32], Waiting>>,
    calls: Semaphore,
    count: AtomicU64,
}

impl fmt::Debug for Introspector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Introspector")
            .field("issuer", &self.inner.rules.issuer)
            .field("client_id", &self.inner.client_id)
            .field("method", &self.inner.method)
            .field("endpoint", &self.inner.configured.as_ref().map(Url::as_str))
            .finish_non_exhaustive()
    }
}

impl Introspector {
    /// How many introspection calls were made (for tests and metrics).
    pub(crate) fn call_count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// The cached answer for a token hash, if one is still good.
    pub(crate) fn cached(&self, key: &[u8; 32]) -> Option<Result<AuthContext, AuthError>> {
        let cache = self.inner.cache.as_ref()?;
        let entry = cache.get(key)?;
        let fresh = entry.until > Instant::now()
            && match &entry.result {
                Ok(ctx) => ctx.expires_at_secs() > now_secs(),
                Err(_) => true,
            };
        if fresh {
            Some(entry.result)
        } else {
            cache.remove(key);
            None
        }
    }

    /// Verifies `token` (whose SHA-256 is `key`) by introspection: from the cache, by
    /// joining a call under way for the same token, or by making one.
    pub(crate) async fn introspect(
        &self,
        token: &str,
        key: [u8; 32],
    ) -> Result<AuthContext, AuthError> {
        if let Some(hit) = self.cached(&key) {
            return hit;
        }
        let mut waiting = {
            let Ok(mut map) = self.inner.in_flight.lock() else {
                return Err(AuthError::introspection_unavailable());
            };
            // A call that finished meanwhile left its answer in the cache before leaving
            // the map.
            if let Some(hit) = self.cached(&key) {
                return hit;
            }
            match map.get(&key) {
                Some(waiting) => waiting.clone(),
                None => {
                    if map.len() >= MAX_IN_FLIGHT {
                        tracing::warn!(issuer = %self.inner.rules.issuer, "too many tokens waiting for introspection; answering 503");
                        return Err(AuthError::introspection_unavailable());
                    }
                    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                        return Err(AuthError::introspection_unavailable());
                    };
                    let (tx, rx) = watch::channel(None);
                    map.insert(key, rx.clone());
                    let this = self.clone();
                    let token = token.to_owned();
                    // The call runs on its own: a client that goes away does not cancel
                    // it for the others waiting.
                    runtime.spawn(async move {
                        let outcome = this.call(&token).await;
                        drop(token);
                        let result = this.remember(key, outcome);
                        if let Ok(mut map) = this.inner.in_flight.lock() {
                            map.remove(&key);
                        }
                        let _ = tx.send(Some(result));
                    });
                    rx
                }
            }
        };
        let answer = match waiting.wait_for(Option::is_some).await {
            Ok(answer) => answer.clone(),
            Err(_) => None,
        };
        answer.unwrap_or_else(|| Err(AuthError::introspection_unavailable()))
    }

    /// Caches an outcome as the rules say and turns it into the request's answer.
    fn remember(&self, key: [u8; 32], outcome: Outcome) -> Result<AuthContext, AuthError> {
        let issuer = &self.inner.rules.issuer;
        let (result, life, label) = match outcome {
            Outcome::Unavailable(reason) => {
                tracing::warn!(%issuer, %reason, "token introspection failed; answering 503");
                metrics::counter!("bmm_introspections_total", "outcome" => "unavailable")
                    .increment(1);
                return Err(AuthError::introspection_unavailable());
            }
            Outcome::Answer(Ok(ctx)) => {
                let remaining = ctx.expires_at_secs().saturating_sub(now_secs());
                let life = self.inner.ceiling.min(Duration::from_secs(remaining));
                (Ok(ctx), life, "active")
            }
            Outcome::Answer(Err(error)) => (Err(error), self.inner.negative_ttl, "refused"),
            Outcome::Uncached(result) => {
                let label = if result.is_ok() { "active" } else { "refused" };
                (result, Duration::ZERO, label)
            }
        };
        tracing::debug!(%issuer, outcome = label, "token introspected");
        metrics::counter!("bmm_introspections_total", "outcome" => label).increment(1);
        if let Some(cache) = &self.inner.cache
            && !life.is_zero()
        {
            cache.insert(
                key,
                Entry {
                    result: result.clone(),
                    until: Instant::now() + life,
                },
            );
        }
        result
    }

    async fn call(&self, token: &str) -> Outcome {
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        let work = async {
            let _permit = self
                .inner
                .calls
                .acquire()
                .await
                .map_err(|_| "the introspection limiter is closed".to_owned())?;
            let endpoint = self.endpoint().await?;
            self.post(&endpoint, token).await
        };
        let response = match tokio::time::timeout(self.inner.timeout, work).await {
            Err(_) => {
                return Outcome::Unavailable(format!(
                    "no answer within {} ms",
                    self.inner.timeout.as_millis()
                ));
            }
            Ok(Err(reason)) => return Outcome::Unavailable(reason),
            Ok(Ok(response)) => response,
        };
        let (response, size) = response;
        let kind = if is_jws_shaped(token) {
            TokenKind::Jwt
        } else {
            TokenKind::Opaque
        };
        match judge(&self.inner.rules, response, kind) {
            // The cache holds at most its capacity of small answers: memory stays bounded.
            Outcome::Answer(result) if size > MAX_CACHED_RESPONSE_BYTES => {
                Outcome::Uncached(result)
            }
            outcome => outcome,
        }
    }

    /// The endpoint: configured, or found in the issuer's metadata (remembered).
    pub(crate) async fn endpoint(&self) -> Result<Url, String> {
        if let Some(url) = &self.inner.configured {
            return Ok(url.clone());
        }
        if let Some(url) = self.inner.discovered.load_full() {
            return Ok((*url).clone());
        }
        let mut failed = self.inner.last_discovery_failure.lock().await;
        if let Some(url) = self.inner.discovered.load_full() {
            return Ok((*url).clone());
        }
        if failed.is_some_and(|at| at.elapsed() < DISCOVERY_RETRY) {
            return Err(format!(
                "the introspection endpoint of `{}` could not be found a moment ago",
                self.inner.rules.issuer
            ));
        }
        match discovery::discover_introspection_endpoint(
            &self.inner.fetcher,
            &self.inner.rules.issuer,
        )
        .await
        {
            Ok(url) => {
                *failed = None;
                self.inner.discovered.store(Some(Arc::new(url.clone())));
                Ok(url)
            }
            Err(reason) => {
                *failed = Some(Instant::now());
                Err(reason)
            }
        }
    }

    /// Forgets a discovered endpoint (a reload): the metadata is read again on next use.
    pub(crate) fn forget_endpoint(&self) {
        self.inner.discovered.store(None);
    }

    /// POSTs the token; gives the JSON object answered and its size in bytes.
    async fn post(
        &self,
        endpoint: &Url,
        token: &str,
    ) -> Result<(Map<String, Value>, usize), String> {
        let mut request = self
            .inner
            .client
            .post(endpoint.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json");
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", token);
            match &self.inner.auth {
                ClientAuth::Basic(value) => request = request.header(AUTHORIZATION, value.clone()),
                ClientAuth::Jwt { key, alg } => {
                    let assertion = self.assertion(key, *alg)?;
                    form.append_pair("client_assertion_type", ASSERTION_TYPE);
                    form.append_pair("client_assertion", &assertion);
                }
            }
            form.finish()
        };
        // Errors name the endpoint and the cause; the body (with the token) is never in them.
        let transport = |e: reqwest::Error| format!("POST {endpoint} failed: {}", error_chain(&e));
        let mut response = request.body(body).send().await.map_err(transport)?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err(format!("POST {endpoint} answered {}", status.as_u16()));
        }
        let too_large =
            || format!("POST {endpoint}: the answer is larger than {MAX_RESPONSE_BYTES} bytes");
        if response
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice::<Map<String, Value>>(&body)
            .map(|json| (json, body.len()))
            .map_err(|_| format!("POST {endpoint}: the answer is not a JSON object"))
    }

    /// An RFC 7523 client assertion for one call.
    fn assertion(&self, key: &EncodingKey, alg: Algorithm) -> Result<String, String> {
        let now = now_secs();
        let mut jti = [0u8; 24];
        rand::rng().fill_bytes(&mut jti);
        let claims = serde_json::json!({
            "iss": self.inner.client_id,
            "sub": self.inner.client_id,
            "aud": self.inner.rules.issuer.as_str(),
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        jsonwebtoken::encode(&Header::new(alg), &claims, key).map_err(|e| e.to_string())
    }
}

/// Judges a 200 response (rules 4 to 6).
fn judge(rules: &ClaimRules, response: Map<String, Value>, kind: TokenKind) -> Outcome {
    match response.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            return Outcome::Answer(Err(AuthError::invalid_token(
                "the token is not active (introspection)",
            )));
        }
        _ => {
            return Outcome::Unavailable(
                "the introspection answer has no boolean `active` member".to_owned(),
            );
        }
    }
    if let Some(token_type) = response.get("token_type")
        && !token_type.as_str().is_some_and(is_access_token_type)
    {
        return Outcome::Answer(Err(AuthError::invalid_token(
            "the introspected token is not an access token (token_type)",
        )));
    }
    Outcome::Answer(rules.check(response, kind, false))
}

/// Whether an introspection `token_type` names an access token.
fn is_access_token_type(token_type: &str) -> bool {
    [
        "bearer",
        "dpop",
        "access_token",
        "n_a",
        "urn:ietf:params:oauth:token-type:access_token",
    ]
    .iter()
    .any(|t| token_type.eq_ignore_ascii_case(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Issuer, Resource};
    use crate::scope::{ScopeClaim, ScopeHierarchy};
    use serde_json::json;

    fn rules() -> ClaimRules {
        ClaimRules {
            issuer: Issuer::parse("https://as.example").unwrap(),
            resource: Resource::parse("https://rs.example/mcp").unwrap(),
            audiences: vec!["api://notes".to_owned()],
            leeway_secs: 0,
            hierarchy: ScopeHierarchy::new(),
            scope_claim: ScopeClaim::Scope,
        }
    }

    fn answer(outcome: Outcome) -> Result<AuthContext, AuthError> {
        match outcome {
            Outcome::Answer(result) | Outcome::Uncached(result) => result,
            Outcome::Unavailable(reason) => panic!("unavailable: {reason}"),
        }
    }

    fn response(extra: Value) -> Map<String, Value> {
        let mut base = json!({
            "active": true,
            "iss": "https://as.example",
            "sub": "alice",
            "aud": "https://rs.example/mcp",
            "exp": now_secs() + 600,
            "scope": "notes:read",
        });
        if let (Some(map), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                if v.is_null() {
                    map.remove(k);
                } else {
                    map.insert(k.clone(), v.clone());
                }
            }
        }
        base.as_object().cloned().unwrap()
    }

    #[test]
    fn introspection_response_claims_are_checked_like_a_jwt() {
        let r = rules();
        let ok = answer(judge(&r, response(json!({})), TokenKind::Opaque)).unwrap();
        assert_eq!(ok.subject(), Some("alice"));
        assert!(ok.has_scope("notes:read"));
        assert_eq!(ok.token_kind(), TokenKind::Opaque);
        assert_eq!(ok.claim("active"), Some(&json!(true)));
        // iss may be absent (the endpoint speaks for its issuer), but never another one.
        assert!(answer(judge(&r, response(json!({"iss": null})), TokenKind::Opaque)).is_ok());
        let other = answer(judge(
            &r,
            response(json!({"iss": "https://evil.example"})),
            TokenKind::Opaque,
        ));
        assert!(other.unwrap_err().is_invalid_token());
        // aud is required (fail closed) and must name us or an accepted audience.
        for aud in [json!(null), json!([]), json!("https://other.example/mcp")] {
            let r2 = answer(judge(&r, response(json!({"aud": aud})), TokenKind::Opaque));
            assert!(r2.unwrap_err().is_invalid_token(), "{aud}");
        }
        assert!(
            answer(judge(
                &r,
                response(json!({"aud": ["x", "api://notes"]})),
                TokenKind::Opaque
            ))
            .is_ok()
        );
        // exp is required and checked; nbf too.
        assert!(answer(judge(&r, response(json!({"exp": null})), TokenKind::Opaque)).is_err());
        assert!(
            answer(judge(
                &r,
                response(json!({"exp": now_secs() - 5})),
                TokenKind::Opaque
            ))
            .is_err()
        );
        assert!(
            answer(judge(
                &r,
                response(json!({"nbf": now_secs() + 500})),
                TokenKind::Opaque
            ))
            .is_err()
        );
        // Scopes follow the issuer's scope claim: scp is ignored with ScopeClaim::Scope.
        let scp = answer(judge(
            &r,
            response(json!({"scope": null, "scp": ["notes:write"]})),
            TokenKind::Opaque,
        ))
        .unwrap();
        assert!(scp.scopes().is_empty());
        // token_type must name an access token.
        for ok_type in ["Bearer", "DPoP", "access_token"] {
            assert!(
                answer(judge(
                    &r,
                    response(json!({"token_type": ok_type})),
                    TokenKind::Opaque
                ))
                .is_ok()
            );
        }
        for bad in [json!("refresh_token"), json!(7)] {
            assert!(
                answer(judge(
                    &r,
                    response(json!({"token_type": bad})),
                    TokenKind::Opaque
                ))
                .is_err()
            );
        }
        // cnf must carry a jkt.
        let bound = answer(judge(
            &r,
            response(json!({"cnf": {"jkt": "abc"}})),
            TokenKind::Opaque,
        ))
        .unwrap();
        assert_eq!(bound.confirmation_jkt(), Some("abc"));
        assert!(
            answer(judge(
                &r,
                response(json!({"cnf": {"x5t#S256": "abc"}})),
                TokenKind::Opaque
            ))
            .is_err()
        );
    }

    #[test]
    fn inactive_token_is_refused_with_401() {
        let r = rules();
        let e = answer(judge(
            &r,
            response(json!({"active": false})),
            TokenKind::Opaque,
        ))
        .unwrap_err();
        assert!(e.is_invalid_token());
        assert_eq!(e.status(), http::StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn introspection_outage_answers_503_never_200() {
        let r = rules();
        for active in [json!(null), json!("true"), json!(1)] {
            assert!(matches!(
                judge(&r, response(json!({"active": active})), TokenKind::Opaque),
                Outcome::Unavailable(_)
            ));
        }
        assert_eq!(
            AuthError::introspection_unavailable().status(),
            http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(AuthError::introspection_unavailable().is_unavailable());
    }

    #[test]
    fn introspection_client_secret_basic_form_urlencodes_id_and_secret() {
        let v = basic_authorization("rs one", "p@ss:w/rd+é");
        assert!(v.is_sensitive());
        let b64 = v.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap();
        assert_eq!(decoded, "rs+one:p%40ss%3Aw%2Frd%2B%C3%A9");
    }

    #[test]
    fn introspection_settings_are_checked_at_configuration() {
        let fetcher = Fetcher::new(&crate::KeySettings::default()).unwrap();
        let build = |i: Introspection| i.build(Arc::new(rules()), fetcher.clone());
        let basic = || IntrospectionAuth::ClientSecretBasic("s".into());
        assert!(build(Introspection::new("rs", basic())).is_ok());
        assert!(build(Introspection::new("", basic())).is_err());
        assert!(
            build(Introspection::new(
                "rs",
                IntrospectionAuth::ClientSecretBasic(String::new())
            ))
            .is_err()
        );
        let plain = Url::parse("http://as.example/introspect").unwrap();
        let e = build(Introspection::new("rs", basic()).endpoint(plain)).unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
        assert!(
            build(Introspection::new("rs", basic()).cache_ceiling(Duration::from_secs(7200)))
                .is_err()
        );
        let bad_pem = IntrospectionAuth::PrivateKeyJwt {
            pem: "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n".into(),
            alg: Algorithm::RS256,
        };
        let e = build(Introspection::new("rs", bad_pem)).unwrap_err();
        assert!(!e.to_string().contains("nope"), "{e}");
        let hmac = IntrospectionAuth::PrivateKeyJwt {
            pem: String::new(),
            alg: Algorithm::HS256,
        };
        assert!(build(Introspection::new("rs", hmac)).is_err());
        let debug = format!(
            "{:?}",
            Introspection::new("rs", IntrospectionAuth::ClientSecretBasic("hunter2".into()))
        );
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn introspection_results_are_cached_never_beyond_exp() {
        let fetcher = Fetcher::new(&crate::KeySettings::default()).unwrap();
        let intro = Introspection::new("rs", IntrospectionAuth::ClientSecretBasic("s".into()))
            .build(Arc::new(rules()), fetcher)
            .unwrap();
        let soon = answer(judge(
            &rules(),
            response(json!({"exp": now_secs() + 1})),
            TokenKind::Opaque,
        ))
        .unwrap();
        let key = [1u8; 32];
        assert!(intro.remember(key, Outcome::Answer(Ok(soon))).is_ok());
        // Kept at most until exp (one second at most here), not for the 60 s ceiling.
        let entry = intro.inner.cache.as_ref().unwrap().get(&key).unwrap();
        assert!(entry.until <= Instant::now() + Duration::from_secs(1));
        // An answer already at exp is not cached.
        let expired = answer(judge(
            &Arc::new(ClaimRules {
                leeway_secs: 30,
                ..rules()
            }),
            response(json!({"exp": now_secs()})),
            TokenKind::Opaque,
        ))
        .unwrap();
        let key2 = [2u8; 32];
        assert!(intro.remember(key2, Outcome::Answer(Ok(expired))).is_ok());
        assert!(intro.cached(&key2).is_none());
        // Refusals are kept briefly; outages never.
        let key3 = [3u8; 32];
        let _ = intro.remember(key3, Outcome::Answer(Err(AuthError::invalid_token("x"))));
        let entry = intro.inner.cache.as_ref().unwrap().get(&key3).unwrap();
        assert!(entry.until <= Instant::now() + DEFAULT_NEGATIVE_TTL);
        // Answers too large to keep are used once.
        let big = answer(judge(&rules(), response(json!({})), TokenKind::Opaque)).unwrap();
        let key5 = [5u8; 32];
        assert!(intro.remember(key5, Outcome::Uncached(Ok(big))).is_ok());
        assert!(intro.cached(&key5).is_none());
        let key4 = [4u8; 32];
        assert!(
            intro
                .remember(key4, Outcome::Unavailable("down".into()))
                .unwrap_err()
                .is_unavailable()
        );
        assert!(intro.cached(&key4).is_none());
    }
}
