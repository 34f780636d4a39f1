//! bmm-as: the control-plane OAuth 2.1 authorization server for bmm's MCP servers.
//!
//! It implements what an MCP client following the authorization spec needs, with no
//! special cases: RFC 8414 metadata (also at `/.well-known/openid-configuration`), RFC 7591
//! dynamic registration, Client ID Metadata Documents, the authorization code flow with
//! PKCE S256 only, RFC 8707 resource indicators (the token's `aud`), RFC 9207 `iss` on the
//! redirect, RS256 JWT access tokens (RFC 9068) with `kid` or opaque ones per resource,
//! RFC 7662 introspection for configured resource servers (see `introspect`), RFC 8693
//! token exchange for those with a policy (see `exchange`), DPoP-bound
//! tokens (RFC 9449, see `dpop`), a JWKS that keeps the previous key through a rotation,
//! refresh-token rotation with reuse detection, RFC 7009
//! revocation, a consent page, and durable state in SQLite or in a PostgreSQL database
//! several instances share (see `store`).
//!
//! Rules every endpoint follows:
//! 1. Errors never redirect to a URI that is not registered for the client.
//! 2. Token responses carry `Cache-Control: no-store`.
//! 3. Codes, tokens and secrets are never logged; refresh tokens and client secrets are
//!    stored as SHA-256 hashes and compared in constant time.
//! 4. Request bodies are bounded (64 KiB) and registration and token requests are rate
//!    limited per client address. Behind a reverse proxy named by `--trusted-proxy`, the
//!    client address is the one the proxy forwards (see `forwarded`); every per-address
//!    limit counts it, and a peer that is not trusted cannot choose it.
//! 5. Every endpoint is served under the issuer's path: issuer `http://host/oauth` serves
//!    `/oauth/register`, `/oauth/authorize`, `/oauth/token`, `/oauth/revoke`,
//!    `/oauth/introspect`, `/oauth/jwks`, and its metadata where RFC 8414 section 3.1 and
//!    OpenID Connect Discovery look for it (see `metadata`). An issuer without a path serves them at the
//!    root. `/healthz` is always at the root.
//! 6. Dev mode (`--dev-user`) approves every authorization request, so its registration,
//!    token and revocation endpoints answer CORS only for loopback origins: a web page
//!    elsewhere cannot register a client and read the dev tokens it obtains.
//! 7. Connections are bounded in time and number per address (see `connections`).

mod admin;
pub mod audit;
pub mod authorize;
mod client_auth;
mod clients;
pub mod config;
mod connections;
mod dpop;
pub mod error;
mod exchange;
mod forwarded;
mod introspect;
pub mod keys;
mod maintenance;
mod metadata;
mod ratelimit;
pub mod register;
mod signin;
pub mod store;
mod token;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

pub use config::{Args, Settings};
use keys::KeyRing;
use store::{SqliteStore, Store};

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) settings: Settings,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) keys: KeyRing,
    pub(crate) throttle: signin::Throttle,
    pub(crate) limiter: ratelimit::RateLimiter,
    pub(crate) cimd: clients::CimdCache,
    /// Key sets of `private_key_jwt` clients fetched from their `jwks_uri`.
    pub(crate) client_keys: client_auth::JwksCache,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("issuer", &self.inner.settings.issuer)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Opens the store the settings name (migrating it), loads (or creates) the keys.
    pub async fn open(settings: Settings) -> Result<Self, error::StoreError> {
        let store = open_store(&settings).await?;
        Self::with_store(settings, store).await
    }

    /// Builds the state over any store.
    pub async fn with_store(
        settings: Settings,
        store: Arc<dyn Store>,
    ) -> Result<Self, error::StoreError> {
        // Retired keys stay published until every token they signed has expired.
        let retain = settings.access_token_ttl + 300;
        let keys = KeyRing::load_or_create(
            store.as_ref(),
            now(),
            retain,
            settings.key_encryption_key.clone(),
        )
        .await?;
        if settings.rotate_keys {
            let kid = keys.rotate(store.as_ref(), now()).await?;
            audit::record_to(
                store.as_ref(),
                audit::event("key_rotation").detail(&format!("new signing key {kid}")),
            )
            .await;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                cimd: clients::CimdCache::new(settings.allow_loopback_cimd),
                client_keys: client_auth::JwksCache::new(settings.allow_loopback_cimd),
                settings,
                store,
                keys,
                throttle: signin::Throttle::new(),
                limiter: ratelimit::RateLimiter::new(),
            }),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The key ring (for rotation by an operator).
    pub fn keys(&self) -> &KeyRing {
        &self.inner.keys
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }
}

/// The store `settings` name: PostgreSQL for a `--database-url`, else the SQLite file in
/// the data directory.
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn Store>, error::StoreError> {
    match &settings.database_url {
        Some(url) if store::is_postgres_url(url) => store::connect_postgres(
            url,
            settings.database_pool_size,
            settings.database_ca_file.as_deref(),
        )
        .await
        .map_err(|e| error::StoreError(format!("database {}: {}", store::redacted_url(url), e.0))),
        Some(url) => Err(error::StoreError(format!(
            "--database-url {} is not a postgres:// URL",
            store::redacted_url(url)
        ))),
        None => {
            let dir = settings.data_dir.clone();
            let sqlite = tokio::task::spawn_blocking(move || SqliteStore::open(&dir))
                .await
                .map_err(|e| error::StoreError(format!("store task failed: {e}")))??;
            Ok(Arc::new(sqlite))
        }
    }
}

/// The HTTP routes.
///
/// Every endpoint lives under the issuer's path (rule 5). The metadata, the JWKS and (out
/// of dev mode) registration, token and revocation answer CORS for any origin, since
/// browser-based MCP clients call them with `fetch` and they use no cookies; in dev mode,
/// registration, token and revocation answer CORS only for loopback origins (rule 6).
/// `/authorize` is a page for people and gets no CORS.
pub fn router(state: AppState) -> Router {
    let settings = &state.inner.settings;
    let prefix = config::issuer_path(&settings.issuer);
    let cors = |origins: tower_http::cors::AllowOrigin| {
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([http::Method::GET, http::Method::POST, http::Method::OPTIONS])
            .allow_headers([
                http::header::CONTENT_TYPE,
                http::header::AUTHORIZATION,
                http::HeaderName::from_static("mcp-protocol-version"),
                http::HeaderName::from_static("dpop"),
            ])
            .expose_headers([http::HeaderName::from_static("dpop-nonce")])
            .max_age(std::time::Duration::from_secs(600))
    };
    let any_origin = cors(tower_http::cors::AllowOrigin::any());
    let client_cors = if settings.dev_user.is_some() {
        cors(tower_http::cors::AllowOrigin::predicate(|origin, _| {
            is_loopback_origin(origin)
        }))
    } else {
        any_origin.clone()
    };
    // axum answers an OPTIONS on a route without one with 405 before a route layer sees
    // it, so each route names OPTIONS; the CORS layer answers the preflight itself.
    let preflight = || async { http::StatusCode::NO_CONTENT };
    let public = Router::new()
        .route("/jwks", get(metadata::jwks).options(preflight))
        .layer(any_origin.clone());
    let client_api = Router::new()
        .route("/register", post(register::register).options(preflight))
        .route("/token", post(token::token).options(preflight))
        .route("/revoke", post(token::revoke).options(preflight))
        .layer(client_cors);
    // The admin page is for people signed in with a cookie: no CORS (see `admin`).
    let endpoints = Router::new()
        .merge(public)
        .merge(client_api)
        .route(
            "/authorize",
            get(authorize::authorize_get).post(authorize::authorize_post),
        )
        .route("/admin", get(admin::page).post(admin::action))
        // Resource servers call it server to server: no CORS, a smaller body bound.
        .route(
            "/introspect",
            post(introspect::introspect).layer(DefaultBodyLimit::max(introspect::MAX_BODY_BYTES)),
        );
    let mut discovery = Router::new();
    for path in metadata::well_known_paths(&prefix) {
        discovery = discovery.route(&path, get(metadata::metadata).options(preflight));
    }
    let app = if prefix.is_empty() {
        Router::new().merge(endpoints)
    } else {
        Router::new().nest(&prefix, endpoints)
    };
    app.merge(discovery.layer(any_origin))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            http::StatusCode::REQUEST_TIMEOUT,
            connections::REQUEST_TIMEOUT,
        ))
        .with_state(state)
}

/// Whether a CORS `Origin` is a loopback one (`http://localhost:6274`, `http://127.0.0.1`,
/// `http://[::1]:3000`): the only browser origins dev mode answers CORS for.
fn is_loopback_origin(origin: &http::HeaderValue) -> bool {
    origin
        .to_str()
        .ok()
        .and_then(|o| url::Url::parse(o).ok())
        .is_some_and(|u| {
            matches!(u.scheme(), "http" | "https")
                && match u.host() {
                    Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    None => false,
                }
        })
}

/// Serves on `listener` until `shutdown` completes, with the connection limits of the
/// settings (see the `connections` rules).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = connections::Limits::from_settings(state.settings());
    // Key reloading and cleanup run while this serves (see `maintenance`).
    let _tasks = maintenance::start(&state);
    connections::run(listener, router(state), limits, shutdown).await
}

/// Seconds since the epoch.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `bytes` random bytes, base64url.
pub(crate) fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // aws-lc's RNG only fails if the OS has no entropy source, which is fatal anyway.
    if aws_lc_rs::rand::fill(&mut buf).is_err() {
        tracing::error!("the system random number generator failed");
        std::process::abort();
    }
    URL_SAFE_NO_PAD.encode(buf)
}

pub(crate) fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time equality of two secrets (or their hashes).
pub(crate) fn secure_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}
