//! Finding a client: registered ones (store), pre-registered ones (configuration), and
//! Client ID Metadata Documents (an `https` URL as `client_id`, fetched and cached).
//!
//! CIMD rules: the document is fetched with a 5 s timeout and a 64 KiB limit, must be a
//! JSON object whose `client_id` equals the URL, lists `redirect_uris` that pass the
//! registration rules, and is cached for 5 minutes. Such clients are public
//! (`token_endpoint_auth_method: none`). `http` URLs are accepted only on loopback hosts and
//! only when the operator allowed it (local tests).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use url::Url;

use crate::error::OAuthError;
use crate::store::Client;
use crate::{AppState, sha256_hex};

const CIMD_TTL: Duration = Duration::from_secs(300);
const CIMD_MAX_BYTES: usize = 64 * 1024;

pub(crate) struct CimdCache {
    allow_loopback_http: bool,
    http: Option<reqwest::Client>,
    entries: Mutex<HashMap<String, (Instant, Client)>>,
}

impl std::fmt::Debug for CimdCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CimdCache").finish_non_exhaustive()
    }
}

impl CimdCache {
    pub(crate) fn new(allow_loopback_http: bool) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .ok();
        Self {
            allow_loopback_http,
            http,
            entries: Mutex::new(HashMap::new()),
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

    async fn fetch(&self, url: &Url) -> Result<Client, OAuthError> {
        let bad = |why: String| {
            OAuthError::invalid_request(format!("client metadata document {url}: {why}"))
        };
        if let Ok(entries) = self.entries.lock()
            && let Some((at, client)) = entries.get(url.as_str())
            && at.elapsed() < CIMD_TTL
        {
            return Ok(client.clone());
        }
        let http = self.http.as_ref().ok_or_else(OAuthError::server_error)?;
        let mut response = http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| bad(format!("fetch failed: {e}")))?;
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
        if redirect_uris.is_empty() {
            return Err(bad("it lists no redirect_uris".to_owned()));
        }
        for uri in &redirect_uris {
            crate::register::check_redirect_uri(uri)?;
        }
        let client = Client {
            client_id: url.to_string(),
            secret_sha256: None,
            redirect_uris,
            client_name: doc
                .get("client_name")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            token_endpoint_auth_method: "none".to_owned(),
            created_at: crate::now(),
        };
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() > 1000 {
                entries.clear();
            }
            entries.insert(url.to_string(), (Instant::now(), client.clone()));
        }
        Ok(client)
    }
}

/// Finds a client by id. `Ok(None)` when no such client exists.
pub(crate) async fn find(state: &AppState, client_id: &str) -> Result<Option<Client>, OAuthError> {
    if client_id.is_empty() || client_id.len() > 2048 {
        return Ok(None);
    }
    if let Some(client) = state.inner.store.client(client_id)? {
        return Ok(Some(client));
    }
    if let Some(c) = state
        .inner
        .settings
        .clients
        .iter()
        .find(|c| c.client_id == client_id)
    {
        let secret = c.client_secret.as_deref().map(sha256_hex);
        return Ok(Some(Client {
            client_id: c.client_id.clone(),
            token_endpoint_auth_method: if secret.is_some() {
                "client_secret_basic"
            } else {
                "none"
            }
            .to_owned(),
            secret_sha256: secret,
            redirect_uris: c.redirect_uris.clone(),
            client_name: c.client_name.clone(),
            created_at: 0,
        }));
    }
    if let Some(url) = state.inner.cimd.is_cimd_id(client_id) {
        return state.inner.cimd.fetch(&url).await.map(Some);
    }
    Ok(None)
}
