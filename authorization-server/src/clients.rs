//! Finding a client: registered ones (store), pre-registered ones (configuration), and
//! Client ID Metadata Documents (an `https` URL as `client_id`, fetched and cached).
//!
//! CIMD rules:
//! 1. The document is fetched with a 5 s timeout and a 64 KiB limit, must be a JSON object
//!    whose `client_id` equals the URL, lists `redirect_uris` that pass the registration
//!    rules (and its limits), and is cached for 5 minutes. Such clients are public
//!    (`token_endpoint_auth_method: none`).
//! 2. No server-side request forgery: the fetch goes through `bmm-netguard`, which refuses
//!    URLs whose IP-literal host is not a public address (`127.0.0.1`, `2130706433`,
//!    `0x7f000001`, `[::ffff:10.0.0.1]`, ...) before connecting, resolves names once and
//!    connects only to the public addresses it checked (so `localhost`, private, link-local,
//!    CGNAT, ULA and IPv4-mapped answers are refused), follows no redirect and uses no proxy.
//! 3. Loopback is reachable only with `--allow-loopback-cimd` (local development and tests),
//!    which also admits `http` document URLs on loopback hosts; nothing else non-public is
//!    reachable even then.
//! 4. Fetches are bounded: at most 2 at a time per caller address (IPv6 callers by /64) and
//!    16 in all; a caller over either bound is answered `temporarily_unavailable` at once,
//!    without a fetch.
//! 5. The `client_id` must be a URL in its normalised form (what the URL parser prints for
//!    it: so `https://2130706433/` or `https://a.example/x/../y` are refused without a
//!    fetch), with a path other than `/`, no user name or password, no fragment, no `.` or
//!    `..` segment; the document must then name exactly that URL.
//! 6. A failed fetch is remembered for 60 seconds (up to 1,000 URLs, oldest dropped first):
//!    asking again for that URL in that time fails without a fetch. That memory is per
//!    instance (in memory): another instance may try the URL once itself. Successful
//!    documents are cached in the store, shared by every instance, and fetched again after
//!    5 minutes; the cleanup task deletes documents not fetched for a day.
//! 7. Only `/authorize` fetches documents (with the caller's bound of rule 4). `/token` and
//!    `/revoke` never fetch: a document URL as `client_id` is known there only from the
//!    cache (at any age) or as the client the presented code or refresh token was issued
//!    to; a document URL never seen at `/authorize` is answered `invalid_client`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use bmm_netguard::{Guard, Policy};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::Url;

use crate::error::OAuthError;
use crate::ratelimit::caller_key;
use crate::store::{Client, Store};
use crate::{AppState, sha256_hex};

const CIMD_TTL: Duration = Duration::from_secs(300);
const CIMD_TIMEOUT: Duration = Duration::from_secs(5);
const CIMD_MAX_BYTES: usize = 64 * 1024;
/// Concurrent fetches per caller address (rule 4).
pub(crate) const CIMD_FETCHES_PER_CALLER: usize = 2;
/// Concurrent fetches in all (rule 4).
pub(crate) const CIMD_FETCHES_GLOBAL: usize = 16;
/// How long a failure is remembered (rule 5).
pub(crate) const CIMD_FAILURE_TTL: Duration = Duration::from_secs(60);
/// Most documents (and most failures) remembered.
const CIMD_CACHE_ENTRIES: usize = 1000;

pub(crate) struct CimdCache {
    allow_loopback_http: bool,
    guard: Option<Guard>,
    failures: Mutex<HashMap<String, (Instant, OAuthError)>>,
    global: Arc<Semaphore>,
    per_caller: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl std::fmt::Debug for CimdCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CimdCache").finish_non_exhaustive()
    }
}

/// One caller's slot among its concurrent fetches; freed on drop.
struct CallerSlot {
    key: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counts.lock()
            && let Some(n) = counts.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Inserts into a cache bounded to `cap` entries: expired ones (older than `ttl`) go first,
/// then the oldest.
fn insert_bounded<V>(
    map: &mut HashMap<String, (Instant, V)>,
    key: String,
    value: V,
    ttl: Duration,
) {
    if map.len() >= CIMD_CACHE_ENTRIES && !map.contains_key(&key) {
        map.retain(|_, (at, _)| at.elapsed() < ttl);
        while map.len() >= CIMD_CACHE_ENTRIES {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
    }
    map.insert(key, (Instant::now(), value));
}

fn busy() -> OAuthError {
    OAuthError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "too many client metadata documents are being fetched; try again shortly",
    )
}

impl CimdCache {
    pub(crate) fn new(allow_loopback_http: bool) -> Self {
        let policy = Policy::public_only().allow_loopback(allow_loopback_http);
        Self {
            allow_loopback_http,
            guard: Guard::new(policy, CIMD_TIMEOUT).ok(),
            failures: Mutex::new(HashMap::new()),
            global: Arc::new(Semaphore::new(CIMD_FETCHES_GLOBAL)),
            per_caller: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn is_cimd_id(&self, client_id: &str) -> Option<Url> {
        let url = Url::parse(client_id).ok()?;
        match url.scheme() {
            "https" => Some(url),
            "http" if self.allow_loopback_http && crate::register::is_loopback(&url) => Some(url),
            _ => None,
        }
    }

    /// Rule 5: why `client_id` (parsed as `url`) is not an acceptable document URL.
    fn malformed(client_id: &str, url: &Url) -> Option<&'static str> {
        if url.as_str() != client_id {
            return Some("it is not in normalised form (write the URL exactly as it is served)");
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Some("it carries a user name or password");
        }
        if url.fragment().is_some() {
            return Some("it has a fragment");
        }
        if url.path() == "/" {
            return Some("it has no path");
        }
        if url.path_segments().is_some_and(|mut s| {
            s.any(|seg| {
                seg == "."
                    || seg == ".."
                    || seg.eq_ignore_ascii_case("%2e")
                    || seg.eq_ignore_ascii_case("%2e%2e")
            })
        }) {
            return Some("it has a dot segment");
        }
        None
    }

    /// Takes a fetch slot for `caller` and one of the global ones (rule 4).
    fn slots(
        &self,
        caller: Option<IpAddr>,
    ) -> Result<(Option<CallerSlot>, OwnedSemaphorePermit), OAuthError> {
        let slot = match caller {
            Some(ip) => {
                let key = caller_key(ip);
                let mut counts = self.per_caller.lock().map_err(|_| busy())?;
                let n = counts.entry(key).or_insert(0);
                if *n >= CIMD_FETCHES_PER_CALLER {
                    return Err(busy());
                }
                *n += 1;
                Some(CallerSlot {
                    key,
                    counts: Arc::clone(&self.per_caller),
                })
            }
            None => None,
        };
        let permit = Arc::clone(&self.global)
            .try_acquire_owned()
            .map_err(|_| busy())?;
        Ok((slot, permit))
    }

    async fn fetch(
        &self,
        store: &dyn Store,
        url: &Url,
        caller: Option<IpAddr>,
    ) -> Result<Client, OAuthError> {
        if let Some((client, fetched_at)) = store.cimd_document(url.as_str()).await?
            && fetched_at.saturating_add(CIMD_TTL.as_secs()) > crate::now()
        {
            return Ok(client);
        }
        if let Ok(failures) = self.failures.lock()
            && let Some((at, error)) = failures.get(url.as_str())
            && at.elapsed() < CIMD_FAILURE_TTL
        {
            return Err(error.clone());
        }
        let (_slot, _permit) = self.slots(caller)?;
        match self.fetch_document(url).await {
            Ok(client) => {
                store
                    .put_cimd_document(url.as_str(), &client, crate::now())
                    .await?;
                Ok(client)
            }
            Err(error) => {
                let mut refused = crate::audit::event("cimd_refused")
                    .client(url.as_str())
                    .outcome(error.code())
                    .detail(error.description());
                if let Some(caller) = caller {
                    refused = refused.address(caller);
                }
                crate::audit::record_to(store, refused).await;
                if let Ok(mut failures) = self.failures.lock() {
                    insert_bounded(
                        &mut failures,
                        url.to_string(),
                        error.clone(),
                        CIMD_FAILURE_TTL,
                    );
                }
                Err(error)
            }
        }
    }

    async fn fetch_document(&self, url: &Url) -> Result<Client, OAuthError> {
        let bad = |why: String| {
            OAuthError::invalid_request(format!("client metadata document {url}: {why}"))
        };
        let guard = self.guard.as_ref().ok_or_else(OAuthError::server_error)?;
        let request = guard.get(url.clone()).map_err(|r| bad(r.to_string()))?;
        let mut response =
            request
                .send()
                .await
                .map_err(|e| match bmm_netguard::refused_in(&e) {
                    Some(refused) => bad(refused.to_string()),
                    None => bad(format!("fetch failed: {e}")),
                })?;
        if !response.status().is_success() {
            return Err(bad(format!("answered {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| bad(format!("read failed: {e}")))?
        {
            if body.len() + chunk.len() > CIMD_MAX_BYTES {
                return Err(bad(format!("larger than {CIMD_MAX_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| bad(format!("not JSON: {e}")))?;
        if doc.get("client_id").and_then(|v| v.as_str()) != Some(url.as_str()) {
            return Err(bad("its client_id is not the document's URL".to_owned()));
        }
        let redirect_uris: Vec<String> = doc
            .get("redirect_uris")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        crate::register::check_redirect_uris(&redirect_uris)
            .map_err(|e| bad(e.description().to_owned()))?;
        let client = Client {
            client_id: url.to_string(),
            secret_sha256: None,
            redirect_uris,
            client_name: doc
                .get("client_name")
                .and_then(|v| v.as_str())
                .map(crate::register::display_name),
            token_endpoint_auth_method: "none".to_owned(),
            created_at: crate::now(),
            grant_types: Vec::new(),
            jwks: None,
            jwks_uri: None,
            scope: None,
        };
        Ok(client)
    }
}

/// Finds a client by id without ever fetching a metadata document (rule 7): a document URL
/// is found in the cache, or is `owner` (the client a presented code or refresh token was
/// issued to), a public client. `Ok(None)` when no such client is known.
pub(crate) async fn find_known(
    state: &AppState,
    client_id: &str,
    owner: Option<&str>,
) -> Result<Option<Client>, OAuthError> {
    if client_id.is_empty() || client_id.len() > 2048 {
        return Ok(None);
    }
    if let Some(client) = state.store().client(client_id).await? {
        if crate::register::expired_unused(state, &client).await? {
            return Ok(None);
        }
        return Ok(Some(client));
    }
    if let Some(c) = preregistered(state, client_id) {
        return Ok(Some(c));
    }
    let Some(url) = state.inner.cimd.is_cimd_id(client_id) else {
        return Ok(None);
    };
    if CimdCache::malformed(client_id, &url).is_some() {
        return Ok(None);
    }
    if let Some((client, _)) = state.store().cimd_document(url.as_str()).await? {
        return Ok(Some(client));
    }
    if owner == Some(client_id) {
        return Ok(Some(Client {
            client_id: client_id.to_owned(),
            secret_sha256: None,
            redirect_uris: Vec::new(),
            client_name: None,
            token_endpoint_auth_method: "none".to_owned(),
            created_at: 0,
            grant_types: Vec::new(),
            jwks: None,
            jwks_uri: None,
            scope: None,
        }));
    }
    Ok(None)
}

/// Finds a client by id on behalf of `caller`, fetching a metadata document if need be
/// (its concurrent fetches bounded, rule 4). `Ok(None)` when no such client exists.
pub(crate) async fn find_for(
    state: &AppState,
    client_id: &str,
    caller: Option<IpAddr>,
) -> Result<Option<Client>, OAuthError> {
    if client_id.is_empty() || client_id.len() > 2048 {
        return Ok(None);
    }
    if let Some(client) = state.store().client(client_id).await? {
        if crate::register::expired_unused(state, &client).await? {
            return Ok(None);
        }
        return Ok(Some(client));
    }
    if let Some(c) = preregistered(state, client_id) {
        return Ok(Some(c));
    }
    if let Some(url) = state.inner.cimd.is_cimd_id(client_id) {
        if let Some(why) = CimdCache::malformed(client_id, &url) {
            return Err(OAuthError::invalid_request(format!(
                "client_id is not a usable Client ID Metadata Document URL: {why}"
            )));
        }
        return state
            .inner
            .cimd
            .fetch(state.store(), &url, caller)
            .await
            .map(Some);
    }
    Ok(None)
}

/// A client from the configuration.
fn preregistered(state: &AppState, client_id: &str) -> Option<Client> {
    let c = state
        .inner
        .settings
        .clients
        .iter()
        .find(|c| c.client_id == client_id)?;
    let secret = c.client_secret.as_deref().map(sha256_hex);
    let jwks = c.jwks_text();
    Some(Client {
        client_id: c.client_id.clone(),
        token_endpoint_auth_method: if jwks.is_some() || c.jwks_uri.is_some() {
            "private_key_jwt"
        } else if secret.is_some() {
            "client_secret_basic"
        } else {
            "none"
        }
        .to_owned(),
        secret_sha256: secret,
        redirect_uris: c.redirect_uris.clone(),
        client_name: c.client_name.clone(),
        created_at: 0,
        grant_types: c.grant_types.clone(),
        jwks,
        jwks_uri: c.jwks_uri.clone(),
        scope: c.scope.clone(),
    })
}

/// Whether `client_id` names a client the operator configured (trusted to receive error
/// redirects), as opposed to a dynamically registered or metadata-document one.
pub(crate) fn is_preregistered(state: &AppState, client_id: &str) -> bool {
    state
        .inner
        .settings
        .clients
        .iter()
        .any(|c| c.client_id == client_id)
}

/// Whether `client_id` is a Client ID Metadata Document URL (this server would fetch it).
pub(crate) fn is_metadata_document(state: &AppState, client_id: &str) -> bool {
    state.inner.cimd.is_cimd_id(client_id).is_some()
}
