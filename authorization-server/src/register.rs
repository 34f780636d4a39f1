//! RFC 7591 dynamic client registration, and the redirect URI rules every client follows.
//!
//! Rules:
//! 1. Redirect URIs are `https` URLs, `http` URLs on a loopback host (any port, RFC 8252
//!    section 7.3), or private-use schemes (`com.example.app:/cb`, `claude://oauth/callback`,
//!    `cursor://...`, `vscode://...`); no fragment. An `https` or `http` URI carries no user
//!    name or password (`https://claude.ai@evil.example/` reads as claude.ai to a person
//!    but goes to evil.example).
//! 2. Schemes a browser or the operating system handles itself are never redirect targets:
//!    `javascript:`, `data:`, `file:`, `vbscript:`, `about:`, `blob:`, `filesystem:`,
//!    `view-source:`, `jar:`, `intent:`, `chrome:`, `chrome-extension:`, `search-ms:`,
//!    `shell:`, browsers' own launch schemes (`googlechrome:`, `googlechromes:`, `firefox:`,
//!    `opera:`, `microsoft-edge:`, every `x-safari-*`), Apple's installers and automations
//!    (`itms-services:`, `itms-apps:` and every `itms-*`, `shortcuts:`, every `x-apple-*`),
//!    every `ms-*` scheme (`ms-msdt:`, `ms-settings:`, ...) and the other families in
//!    [`FORBIDDEN_SCHEME_PREFIXES`], network protocols other than http(s) (`ftp:`,
//!    `ws:`, `smb:`, `mailto:`, `tel:`, ...), and one-letter schemes (Windows drive letters).
//! 3. Public clients register with `token_endpoint_auth_method: none`; confidential ones
//!    (`client_secret_basic`, `client_secret_post`) get a generated secret, stored hashed;
//!    `private_key_jwt` ones (RFC 7523, see `client_auth`) register exactly one of `jwks`
//!    (a JWK Set with a usable signing key) and `jwks_uri` (https) and get no secret.
//! 4. Only the `authorization_code` and `refresh_token` grants and the `code` response type
//!    are accepted. `client_credentials` is refused: registration is open to anyone, and
//!    that grant's tokens need no user, so such clients are configured by the operator
//!    (`[[clients]]` in the config file with `grant_types = ["client_credentials"]`).
//! 5. Client ids look like `bmm_<random>`.
//! 6. Field limits: at most 10 redirect URIs of at most 1,024 bytes each, `client_name` at
//!    most 100 characters, `scope` at most 1,024 bytes, `client_uri` and `logo_uri` at most
//!    1,024 bytes, `software_id` and `software_version` at most 256 bytes.
//! 7. Quota: at most `--max-unused-clients` (default 1,000) registered clients that have not
//!    completed an authorization may exist. When it is full, a registration deletes the
//!    oldest unused client of the largest holder (the address that registered the most of
//!    them; IPv6 addresses grouped by /48) to make room, so many addresses together
//!    cannot lock registration either; only when no holder is known (clients registered
//!    before a restart) does registration answer 503 `temporarily_unavailable`. A client
//!    that has not completed an authorization within `--unused-client-ttl` seconds
//!    (default 3,600) of registering is deleted and no longer found. A client counts as used once an authorization code is issued to it.
//!    One address (IPv6: one /64) may hold at most 20 of those unused clients (429 past
//!    it), so a single caller cannot fill the quota and lock registration for everyone.
//! 8. Names shown to people ([`display_name`]) are cut to 100 characters and lose control
//!    and bidirectional-override characters.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use url::Url;

use crate::error::OAuthError;
use crate::store::Client;
use crate::{AppState, now, random_token, sha256_hex};

/// Most redirect URIs per client (rule 6).
pub const MAX_REDIRECT_URIS: usize = 10;
/// Longest redirect URI, in bytes (rule 6).
pub const MAX_REDIRECT_URI_LEN: usize = 1024;
/// Longest client name, in characters (rules 6 and 8).
pub const MAX_CLIENT_NAME_CHARS: usize = 100;

/// Schemes that are never redirect targets (rule 2).
pub const FORBIDDEN_SCHEMES: &[&str] = &[
    // Script and content schemes of browsers.
    "javascript",
    "vbscript",
    "livescript",
    "jscript",
    "data",
    "blob",
    "filesystem",
    "about",
    "view-source",
    "jar",
    "mhtml",
    "wyciwyg",
    "cid",
    "mid",
    "resource",
    "res",
    "intent",
    "android-app",
    "content",
    "devtools",
    "chrome",
    "edge",
    "opera",
    "brave",
    "vivaldi",
    "isolated-app",
    "googlechrome",
    "googlechromes",
    "firefox",
    "x-safari",
    // Operating-system handlers.
    "file",
    "shell",
    "search",
    "search-ms",
    "hcp",
    "help",
    "its",
    "mk",
    "microsoft-edge",
    "read",
    "x-apple",
    "x-apple-helpbook",
    "prefs",
    "app-settings",
    "itms",
    "itms-services",
    "itms-apps",
    "shortcuts",
    // Network protocols other than http(s).
    "ftp",
    "ftps",
    "sftp",
    "tftp",
    "ws",
    "wss",
    "gopher",
    "smb",
    "nfs",
    "afp",
    "dav",
    "webdav",
    "ldap",
    "ldaps",
    "telnet",
    "ssh",
    "rlogin",
    "mailto",
    "news",
    "nntp",
    "snews",
    "tel",
    "sms",
    "callto",
    "urn",
    "tag",
];

/// Scheme families that are never redirect targets (rule 2): a scheme equal to one of these
/// without its trailing `-`, or starting with one, is refused.
pub const FORBIDDEN_SCHEME_PREFIXES: &[&str] = &[
    "ms-",
    "microsoft-",
    "chrome-",
    "moz-",
    "webkit-",
    "safari-",
    "edge-",
    "opera-",
    "x-apple-",
    "x-safari-",
    "itms-",
    "web+",
];

/// Whether a (lower-case) scheme is one rule 2 refuses.
fn forbidden_scheme(scheme: &str) -> bool {
    scheme.len() < 2
        || FORBIDDEN_SCHEMES.contains(&scheme)
        || FORBIDDEN_SCHEME_PREFIXES
            .iter()
            .any(|p| scheme.starts_with(p) || scheme == p.trim_end_matches(['-', '+']))
}

/// A client-chosen name as shown to people (rule 8): at most 100 characters, without
/// control or bidirectional-override characters, marked with `…` when cut.
pub fn display_name(name: &str) -> String {
    let clean = name.chars().filter(|c| {
        !c.is_control() && !matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
    });
    let mut out: String = clean.clone().take(MAX_CLIENT_NAME_CHARS).collect();
    if clean.count() > MAX_CLIENT_NAME_CHARS {
        out.push('…');
    }
    out
}

/// Checks a client's redirect URI list: not empty, at most [`MAX_REDIRECT_URIS`], each at
/// most [`MAX_REDIRECT_URI_LEN`] bytes and passing [`check_redirect_uri`].
pub fn check_redirect_uris(uris: &[String]) -> Result<(), OAuthError> {
    if uris.is_empty() {
        return Err(OAuthError::invalid_redirect_uri(
            "redirect_uris is required and must not be empty",
        ));
    }
    if uris.len() > MAX_REDIRECT_URIS {
        return Err(OAuthError::invalid_redirect_uri(format!(
            "at most {MAX_REDIRECT_URIS} redirect_uris"
        )));
    }
    for uri in uris {
        if uri.len() > MAX_REDIRECT_URI_LEN {
            return Err(OAuthError::invalid_redirect_uri(format!(
                "a redirect URI is longer than {MAX_REDIRECT_URI_LEN} bytes"
            )));
        }
        check_redirect_uri(uri)?;
    }
    Ok(())
}

/// Checks one redirect URI against rule 1.
pub fn check_redirect_uri(uri: &str) -> Result<(), OAuthError> {
    let url = Url::parse(uri)
        .map_err(|_| OAuthError::invalid_redirect_uri(format!("`{uri}` is not an absolute URI")))?;
    if url.fragment().is_some() {
        return Err(OAuthError::invalid_redirect_uri(format!(
            "`{uri}` must not contain a fragment"
        )));
    }
    if matches!(url.scheme(), "https" | "http")
        && (!url.username().is_empty() || url.password().is_some())
    {
        return Err(OAuthError::invalid_redirect_uri(format!(
            "`{uri}` must not carry a user name or password"
        )));
    }
    match url.scheme() {
        "https" => {
            if url.host().is_none() {
                return Err(OAuthError::invalid_redirect_uri(format!(
                    "`{uri}` has no host"
                )));
            }
            Ok(())
        }
        "http" => {
            if is_loopback(&url) {
                Ok(())
            } else {
                Err(OAuthError::invalid_redirect_uri(format!(
                    "`{uri}`: http redirect URIs are only allowed on loopback hosts; use https"
                )))
            }
        }
        scheme if forbidden_scheme(scheme) => Err(OAuthError::invalid_redirect_uri(format!(
            "`{uri}`: the `{scheme}:` scheme is handled by the browser or the operating system and is never a redirect target"
        ))),
        _ => Ok(()),
    }
}

pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Whether `presented` matches one of the registered redirect URIs: exactly, or for
/// loopback `http` URIs, with any port (RFC 8252 section 7.3).
pub fn redirect_uri_matches(registered: &[String], presented: &str) -> bool {
    if registered.iter().any(|r| r == presented) {
        return true;
    }
    let Ok(p) = Url::parse(presented) else {
        return false;
    };
    if p.scheme() != "http" || !is_loopback(&p) {
        return false;
    }
    registered
        .iter()
        .filter_map(|r| Url::parse(r).ok())
        .any(|r| {
            r.scheme() == "http"
                && r.host() == p.host()
                && r.path() == p.path()
                && r.query() == p.query()
                && r.username() == p.username()
        })
}

#[derive(Debug, Deserialize)]
pub(crate) struct RegistrationRequest {
    redirect_uris: Option<Vec<String>>,
    client_name: Option<String>,
    token_endpoint_auth_method: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
    scope: Option<String>,
    client_uri: Option<String>,
    logo_uri: Option<String>,
    software_id: Option<String>,
    software_version: Option<String>,
    jwks: Option<serde_json::Value>,
    jwks_uri: Option<String>,
}

pub(crate) async fn register(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    body: Result<Json<RegistrationRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !state
        .inner
        .limiter
        .allow(peer.ip(), crate::ratelimit::Bucket::Register)
    {
        return OAuthError::rate_limited().into_response();
    }
    let since = now().saturating_sub(state.inner.settings.unused_client_ttl);
    let tracked = state.inner.limiter.tracked(Some(peer.ip()), since);
    let used = used_among(state.store(), tracked).await;
    let unused = |id: &str| !used.get(id).copied().flatten().unwrap_or(false);
    if !state.inner.limiter.may_register(peer.ip(), since, unused) {
        return OAuthError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "slow_down",
            "this address registered too many clients that have not completed an authorization; complete one or retry later",
        )
        .into_response();
    }
    match register_client(&state, peer.ip(), body).await {
        Ok(response) => response,
        Err(error) => {
            let refused = crate::audit::event("registration")
                .address(peer.ip())
                .outcome(error.code())
                .detail(error.description());
            crate::audit::record(&state, refused).await;
            error.into_response()
        }
    }
}

/// Rule 6, besides the redirect URIs.
fn check_field_limits(req: &RegistrationRequest) -> Result<(), OAuthError> {
    if req
        .client_name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_CLIENT_NAME_CHARS)
    {
        return Err(OAuthError::invalid_client_metadata(format!(
            "client_name is longer than {MAX_CLIENT_NAME_CHARS} characters"
        )));
    }
    for (field, value, max) in [
        ("scope", &req.scope, 1024),
        ("client_uri", &req.client_uri, 1024),
        ("logo_uri", &req.logo_uri, 1024),
        ("software_id", &req.software_id, 256),
        ("software_version", &req.software_version, 256),
    ] {
        if value.as_ref().is_some_and(|v| v.len() > max) {
            return Err(OAuthError::invalid_client_metadata(format!(
                "{field} is longer than {max} bytes"
            )));
        }
    }
    for (field, list) in [
        ("grant_types", &req.grant_types),
        ("response_types", &req.response_types),
    ] {
        if list.as_ref().is_some_and(|l| l.len() > 4) {
            return Err(OAuthError::invalid_client_metadata(format!(
                "{field} lists more than 4 values"
            )));
        }
    }
    Ok(())
}

/// Rule 7: unused clients past their time are deleted; a full quota evicts the oldest unused
/// client of the largest holder, and refuses only when no holder is known (clients
/// registered before a restart).
async fn check_quota(state: &AppState) -> Result<(), OAuthError> {
    let settings = &state.inner.settings;
    let store = state.store();
    let since = now().saturating_sub(settings.unused_client_ttl);
    store.prune_unused_clients(since).await?;
    let mut used = None;
    while settings.max_unused_clients > 0
        && store.unused_clients().await? >= settings.max_unused_clients
    {
        // Which tracked clients are used is looked up once per registration (a full quota
        // is rare: only then are they all looked up).
        if used.is_none() {
            used = Some(used_among(store, state.inner.limiter.tracked(None, since)).await);
        }
        let known = used.as_ref();
        let unused = |id: &str| {
            !known
                .and_then(|u| u.get(id).copied().flatten())
                .unwrap_or(true)
        };
        let Some(victim) = state.inner.limiter.evict_candidate(since, unused) else {
            break;
        };
        if store.delete_unused_client(&victim).await? {
            tracing::info!(client_id = %victim, "registration quota full: the largest holder's oldest unused client was deleted");
        }
    }
    if store.unused_clients().await? >= settings.max_unused_clients {
        tracing::warn!(
            max = settings.max_unused_clients,
            "registration refused: the quota of clients that have not completed an authorization is full"
        );
        return Err(OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "too many registered clients have not completed an authorization yet; try again later",
        ));
    }
    Ok(())
}

/// Whether a stored client is past rule 7's time without having completed an
/// authorization (it is then deleted and treated as unknown).
pub(crate) async fn expired_unused(
    state: &AppState,
    client: &crate::store::Client,
) -> Result<bool, OAuthError> {
    let ttl = state.inner.settings.unused_client_ttl;
    if client.created_at.saturating_add(ttl) > now()
        || state.store().client_used(&client.client_id).await?
    {
        return Ok(false);
    }
    state
        .store()
        .prune_unused_clients(now().saturating_sub(ttl))
        .await?;
    Ok(true)
}

/// Whether each of `ids` completed an authorization (`None`: the store failed).
async fn used_among(
    store: &dyn crate::store::Store,
    ids: Vec<String>,
) -> std::collections::HashMap<String, Option<bool>> {
    let used: Option<std::collections::HashSet<String>> = match store.used_clients_among(&ids).await
    {
        Ok(used) => Some(used.into_iter().collect()),
        Err(error) => {
            tracing::error!(%error, "cannot look up which registered clients were used");
            None
        }
    };
    ids.into_iter()
        .map(|id| {
            let u = used.as_ref().map(|set| set.contains(&id));
            (id, u)
        })
        .collect()
}

/// Rule 3: the keys of a `private_key_jwt` client, `jwks` (as JSON text) xor `jwks_uri`;
/// other clients register neither.
fn client_keys(
    state: &AppState,
    method: &str,
    req: &RegistrationRequest,
) -> Result<(Option<String>, Option<String>), OAuthError> {
    let bad = OAuthError::invalid_client_metadata;
    match (method, &req.jwks, &req.jwks_uri) {
        ("private_key_jwt", Some(jwks), None) => {
            crate::client_auth::KeySet::parse(jwks).map_err(|e| bad(format!("jwks: {e}")))?;
            // Only the public members are stored (and echoed), in a bounded text.
            let text = crate::client_auth::public_jwks_text(jwks)
                .map_err(|e| bad(format!("jwks: {e}")))?;
            Ok((Some(text), None))
        }
        ("private_key_jwt", None, Some(uri)) => {
            crate::client_auth::check_jwks_uri(uri, state.inner.settings.allow_loopback_cimd)
                .map_err(bad)?;
            Ok((None, Some(uri.clone())))
        }
        ("private_key_jwt", _, _) => Err(bad(
            "private_key_jwt needs exactly one of jwks and jwks_uri".to_owned(),
        )),
        (_, None, None) => Ok((None, None)),
        _ => Err(bad(
            "jwks and jwks_uri are for token_endpoint_auth_method private_key_jwt".to_owned(),
        )),
    }
}

/// Whether any string of the request holds a NUL byte: none legitimately does, and
/// PostgreSQL text cannot store it.
fn has_nul(req: &RegistrationRequest) -> bool {
    let single = [
        &req.client_name,
        &req.token_endpoint_auth_method,
        &req.scope,
        &req.client_uri,
        &req.logo_uri,
        &req.software_id,
        &req.software_version,
        &req.jwks_uri,
    ];
    let lists = [&req.redirect_uris, &req.grant_types, &req.response_types];
    single
        .iter()
        .any(|s| s.as_deref().is_some_and(|v| v.contains('\0')))
        || lists
            .iter()
            .flat_map(|l| l.iter().flatten())
            .any(|v| v.contains('\0'))
        || req
            .jwks
            .as_ref()
            .is_some_and(|j| j.to_string().contains("\\u0000"))
}

async fn register_client(
    state: &AppState,
    caller: std::net::IpAddr,
    body: Result<Json<RegistrationRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, OAuthError> {
    let Json(req) = body.map_err(|e| {
        OAuthError::invalid_client_metadata(format!(
            "the registration body is not valid JSON metadata: {}",
            e.body_text()
        ))
    })?;
    if has_nul(&req) {
        return Err(OAuthError::invalid_client_metadata(
            "a metadata string contains a NUL byte",
        ));
    }
    let redirect_uris = req.redirect_uris.clone().unwrap_or_default();
    check_redirect_uris(&redirect_uris)?;
    check_field_limits(&req)?;
    let method = req
        .token_endpoint_auth_method
        .clone()
        .unwrap_or_else(|| "client_secret_basic".to_owned());
    if !matches!(
        method.as_str(),
        "none" | "client_secret_basic" | "client_secret_post" | "private_key_jwt"
    ) {
        return Err(OAuthError::invalid_client_metadata(format!(
            "token_endpoint_auth_method `{method}` is not supported (none, client_secret_basic, client_secret_post, private_key_jwt)"
        )));
    }
    let (jwks, jwks_uri) = client_keys(state, &method, &req)?;
    let grant_types = req
        .grant_types
        .clone()
        .unwrap_or_else(|| vec!["authorization_code".to_owned()]);
    if grant_types.iter().any(|g| g == "client_credentials") {
        return Err(OAuthError::invalid_client_metadata(
            "the client_credentials grant is for clients the operator configures (registration is open, and its tokens need no user)",
        ));
    }
    if let Some(bad) = grant_types
        .iter()
        .find(|g| !matches!(g.as_str(), "authorization_code" | "refresh_token"))
    {
        return Err(OAuthError::invalid_client_metadata(format!(
            "grant type `{bad}` is not supported"
        )));
    }
    let response_types = req
        .response_types
        .clone()
        .unwrap_or_else(|| vec!["code".to_owned()]);
    if response_types.iter().any(|r| r != "code") {
        return Err(OAuthError::invalid_client_metadata(
            "only the `code` response type is supported",
        ));
    }
    check_quota(state).await?;
    let secret = method
        .starts_with("client_secret_")
        .then(|| random_token(32));
    let client = Client {
        client_id: format!("bmm_{}", random_token(16)),
        secret_sha256: secret.as_deref().map(sha256_hex),
        redirect_uris,
        client_name: req.client_name.clone(),
        token_endpoint_auth_method: method,
        created_at: now(),
        grant_types: grant_types.clone(),
        jwks,
        jwks_uri,
        scope: None,
    };
    state.store().put_client(&client).await?;
    let registered = crate::audit::event("registration")
        .client(&client.client_id)
        .address(caller)
        .detail(&format!(
            "token_endpoint_auth_method {}",
            client.token_endpoint_auth_method
        ));
    crate::audit::record(state, registered).await;
    state.inner.limiter.registered(
        caller,
        &client.client_id,
        client.created_at,
        now().saturating_sub(state.inner.settings.unused_client_ttl),
    );
    tracing::info!(client_id = %client.client_id, "client registered");
    let mut body = json!({
        "client_id": client.client_id,
        "client_id_issued_at": client.created_at,
        "redirect_uris": client.redirect_uris,
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "grant_types": grant_types,
        "response_types": response_types,
    });
    if let Some(name) = &client.client_name {
        body["client_name"] = json!(name);
    }
    for (key, value) in [
        ("scope", &req.scope),
        ("client_uri", &req.client_uri),
        ("logo_uri", &req.logo_uri),
        ("software_id", &req.software_id),
        ("software_version", &req.software_version),
    ] {
        if let Some(v) = value {
            body[key] = json!(v);
        }
    }
    if let Some(uri) = &client.jwks_uri {
        body["jwks_uri"] = json!(uri);
    }
    if let Some(jwks) = client
        .jwks
        .as_deref()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
    {
        body["jwks"] = jwks;
    }
    if let Some(secret) = secret {
        body["client_secret"] = json!(secret);
        body["client_secret_expires_at"] = json!(0);
    }
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_https_loopback_http_and_private_schemes_are_accepted() {
        for ok in [
            "https://app.example/cb",
            "http://127.0.0.1:8765/callback",
            "http://localhost/cb",
            "http://[::1]:3000/x",
            "claude://oauth/callback",
            "com.example.app:/oauth",
        ] {
            assert!(check_redirect_uri(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn redirect_uris_plain_http_dangerous_schemes_and_fragments_are_refused() {
        for bad in [
            "http://app.example/cb",
            "javascript:alert(1)",
            "data:text/html,x",
            "file:///etc/passwd",
            "https://app.example/cb#frag",
            "not a uri",
            "/relative",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redirect_uris_with_browser_or_os_internal_schemes_are_refused() {
        for bad in [
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,x",
            "file:///etc/passwd",
            "vbscript:msgbox",
            "about:blank",
            "blob:https://a.example/uuid",
            "filesystem:https://a.example/temporary/x",
            "view-source:https://a.example/",
            "jar:https://a.example/x.jar!/",
            "intent://scan/#Intent;scheme=zxing;end",
            "chrome://settings",
            "chrome-extension://abcdef/page.html",
            "ms-msdt:/id PCWDiagnostic",
            "ms-settings:privacy",
            "ms-officecmd:x",
            "search-ms:query=x",
            "shell:startup",
            "moz-extension://uuid/page",
            "microsoft-edge:https://a.example",
            "ftp://a.example/x",
            "ws://a.example/x",
            "smb://host/share",
            "mailto:a@example.com",
            "tel:+15555555",
            "c:/windows/system32",
            "web+app:x",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redirect_uris_with_private_use_schemes_of_real_clients_are_accepted() {
        for ok in [
            "claude://oauth/callback",
            "cursor://anysphere.cursor-retrieval/oauth/user-callback",
            "vscode://vscode.github-authentication/did-authenticate",
            "vscode-insiders://x/cb",
            "com.example.app:/oauth2redirect",
            "com.googleusercontent.apps.123:/oauth",
            "msal-app://auth",
            "myapp://cb",
        ] {
            assert!(check_redirect_uri(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn display_names_are_capped_at_100_characters_without_control_or_bidi_characters() {
        assert_eq!(display_name("Claude"), "Claude");
        let long = "x".repeat(5000);
        let shown = display_name(&long);
        assert_eq!(shown.chars().count(), 101);
        assert!(shown.ends_with('…'));
        assert_eq!(display_name("Good\u{202e}lapyap\n"), "Goodlapyap");
    }

    #[test]
    fn loopback_redirect_uris_match_on_any_port_others_exactly() {
        let registered = vec![
            "http://127.0.0.1:1234/cb".to_owned(),
            "https://app.example/cb".to_owned(),
        ];
        assert!(redirect_uri_matches(
            &registered,
            "http://127.0.0.1:9999/cb"
        ));
        assert!(!redirect_uri_matches(
            &registered,
            "http://127.0.0.1:9999/other"
        ));
        assert!(!redirect_uri_matches(
            &registered,
            "http://localhost:1234/cb"
        ));
        assert!(redirect_uri_matches(&registered, "https://app.example/cb"));
        assert!(!redirect_uri_matches(
            &registered,
            "https://app.example/cb/"
        ));
        assert!(!redirect_uri_matches(
            &registered,
            "https://app.example:8443/cb"
        ));
    }
}
