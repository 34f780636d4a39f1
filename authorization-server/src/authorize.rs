//! `/authorize`: the authorization code flow with PKCE S256 and resource indicators, the
//! sign-in and consent page, and dev-mode auto-approval.
//!
//! Rules:
//! 1. An unknown client, or a redirect URI not registered for it, is answered with an error
//!    page (400), never a redirect.
//! 2. Every other error is redirected to the client with `error`, `error_description`,
//!    `state` and `iss` (RFC 9207).
//! 3. `response_type=code` only; PKCE is required with `code_challenge_method=S256`
//!    (`plain` is refused); a parameter given twice is refused.
//! 4. `resource` (RFC 8707) is required and must be one of the resources this server issues
//!    tokens for; it becomes the token's `aud`.
//! 5. Scopes must be among the configured ones (when any are configured).
//! 6. The consent form is bound to a pending request (single use, 10 minutes) and protected
//!    by a double-submit CSRF token (cookie + form field, compared in constant time).
//! 7. Codes are single-use and live 60 seconds (`--code-ttl`); redirects carry `code`, `state` and `iss`.
//! 8. A code is checked before it is used up (client, PKCE verifier, redirect URI,
//!    resource; see `redeem_code`): a request that does not fit leaves it redeemable.
//!
//! Abuse bounds (issue 12):
//! - Request errors go back to the client by redirect (rule 2) only for clients the
//!   operator configured, or when the redirect URI is `http` on a loopback host (the user's
//!   own machine). Dynamically registered and metadata-document clients otherwise get the
//!   error page: anyone can register an `https` redirect URI, and a redirect to it after a
//!   bad request would make this server an open redirector (RFC 9700 section 4.11.2). A
//!   denial by the user still redirects (`access_denied`): the user saw the page first.
//! - Pending sign-ins and password guesses are bounded as `signin` describes.
//! - The consent page shows the client's name cut to 100 characters (it is chosen by the
//!   client), the host a metadata-document client really is (its `client_id` URL), whether
//!   the client was registered by the operator, and the full redirect target.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use askama::Template;
use axum::Form;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use url::Url;

use crate::error::OAuthError;
use crate::signin::Verdict;
use crate::store::Client;
use crate::{AppState, clients, now, random_token, secure_eq};
use bmm_core::canonical_resource;

const PENDING_TTL: u64 = 600;
const CSRF_COOKIE: &str = "bmm_csrf";

/// An issued authorization code.
#[derive(Clone, Debug)]
pub(crate) struct CodeRecord {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    /// Whether the authorization request named `redirect_uri` (then `/token` must too).
    pub(crate) redirect_uri_given: bool,
    pub(crate) code_challenge: String,
    pub(crate) resource: String,
    pub(crate) scope: String,
    pub(crate) subject: String,
    pub(crate) expires_at: u64,
    /// Set once redeemed: the refresh family it produced, revoked if the code is replayed.
    pub(crate) redeemed_family: Option<String>,
}

/// A validated request waiting for the user's decision.
#[derive(Clone, Debug)]
pub(crate) struct PendingRequest {
    request: Validated,
    csrf: String,
    expires_at: u64,
}

#[derive(Clone, Debug)]
struct Validated {
    client: Client,
    redirect_uri: String,
    redirect_uri_given: bool,
    state: Option<String>,
    code_challenge: String,
    resource: String,
    scopes: Vec<String>,
}

#[derive(Template)]
#[template(path = "consent.html")]
struct ConsentPage<'a> {
    client_name: &'a str,
    client_host: Option<&'a str>,
    client_id: &'a str,
    preregistered: bool,
    resource: &'a str,
    scopes: &'a [String],
    redirect_host: &'a str,
    redirect_uri: &'a str,
    request_id: &'a str,
    csrf: &'a str,
    error: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    error: &'a str,
    description: &'a str,
}

fn error_page(error: &OAuthError) -> Response {
    let page = ErrorPage {
        error: error.code(),
        description: error.description(),
    };
    let body = page.render().unwrap_or_else(|_| error.to_string());
    // A busy or failing server says so (503, 500, 429); every other error is the request's.
    let status = match error.status() {
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => s,
        _ => StatusCode::BAD_REQUEST,
    };
    (status, no_store(), Html(body)).into_response()
}

fn no_store() -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ]
}

/// Redirect back to the client with `params`, plus `state` and `iss`.
fn redirect_to(
    state: &AppState,
    redirect_uri: &str,
    client_state: Option<&str>,
    params: &[(&str, &str)],
) -> Response {
    let Ok(mut url) = Url::parse(redirect_uri) else {
        return error_page(&OAuthError::invalid_request(
            "the redirect URI cannot be parsed",
        ));
    };
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in params {
            query.append_pair(k, v);
        }
        if let Some(s) = client_state {
            query.append_pair("state", s);
        }
        query.append_pair("iss", &state.inner.settings.issuer);
    }
    let mut response = Redirect::to(url.as_str()).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn redirect_error(state: &AppState, v: &Validated, error: &OAuthError) -> Response {
    redirect_to(
        state,
        &v.redirect_uri,
        v.state.as_deref(),
        &[
            ("error", error.code()),
            ("error_description", error.description()),
        ],
    )
}

/// Parses the query, refusing repeated parameters.
fn single_params(query: Option<&str>) -> Result<HashMap<String, String>, OAuthError> {
    let mut map = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if map.insert(k.to_string(), v.to_string()).is_some() {
            return Err(OAuthError::invalid_request(format!(
                "the `{k}` parameter is given more than once"
            )));
        }
    }
    Ok(map)
}

fn is_pkce_value(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Rules 1–5. `Err` holds the finished response: an error page, or a redirect carrying the
/// error to the client.
#[allow(clippy::result_large_err)]
async fn validate(
    state: &AppState,
    params: &HashMap<String, String>,
    caller: IpAddr,
) -> Result<Validated, Response> {
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let client_id = get("client_id")
        .ok_or_else(|| error_page(&OAuthError::invalid_request("client_id is required")))?;
    let client = match clients::find_for(state, client_id, Some(caller)).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(error_page(&OAuthError::invalid_request(
                "unknown client_id",
            )));
        }
        Err(e) => return Err(error_page(&e)),
    };
    let redirect_uri = match get("redirect_uri") {
        Some(uri) if crate::register::redirect_uri_matches(&client.redirect_uris, uri) => {
            uri.to_owned()
        }
        Some(_) => {
            return Err(error_page(&OAuthError::invalid_request(
                "redirect_uri is not registered for this client",
            )));
        }
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => {
            return Err(error_page(&OAuthError::invalid_request(
                "redirect_uri is required",
            )));
        }
    };
    let mut v = Validated {
        client,
        redirect_uri,
        redirect_uri_given: get("redirect_uri").is_some(),
        state: get("state").map(str::to_owned),
        code_challenge: String::new(),
        resource: String::new(),
        scopes: Vec::new(),
    };
    // Errors are redirected only to trusted targets (see "Abuse bounds").
    let redirect_errors = clients::is_preregistered(state, &v.client.client_id)
        || Url::parse(&v.redirect_uri)
            .is_ok_and(|u| u.scheme() == "http" && crate::register::is_loopback(&u));
    let fail = |v: &Validated, e: OAuthError| {
        if redirect_errors {
            Err(redirect_error(state, v, &e))
        } else {
            Err(error_page(&e))
        }
    };
    match get("response_type") {
        Some("code") => {}
        Some(_) => {
            return fail(
                &v,
                OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "unsupported_response_type",
                    "only response_type=code is supported",
                ),
            );
        }
        None => return fail(&v, OAuthError::invalid_request("response_type is required")),
    }
    match (get("code_challenge"), get("code_challenge_method")) {
        (Some(challenge), Some("S256")) if is_pkce_value(challenge) => {
            v.code_challenge = challenge.to_owned();
        }
        (Some(_), Some("S256")) => {
            return fail(
                &v,
                OAuthError::invalid_request("code_challenge is not a valid S256 challenge"),
            );
        }
        (None, _) => {
            return fail(
                &v,
                OAuthError::invalid_request(
                    "PKCE is required: send code_challenge with code_challenge_method=S256",
                ),
            );
        }
        (Some(_), _) => {
            return fail(
                &v,
                OAuthError::invalid_request(
                    "code_challenge_method must be S256 (plain is not accepted)",
                ),
            );
        }
    }
    let Some(resource) = get("resource") else {
        return fail(
            &v,
            OAuthError::invalid_target(
                "resource is required (RFC 8707): the URL of the MCP server",
            ),
        );
    };
    match canonical_resource(resource) {
        Ok(r) if state.inner.settings.resources.contains(&r) => v.resource = r,
        _ => {
            return fail(
                &v,
                OAuthError::invalid_target(
                    "this authorization server does not issue tokens for that resource",
                ),
            );
        }
    }
    let requested: Vec<String> = get("scope")
        .map(|s| {
            s.split(' ')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let scopes = if requested.is_empty() {
        state.inner.settings.default_scopes.clone()
    } else {
        requested
    };
    if !state.inner.settings.scopes.is_empty()
        && let Some(bad) = scopes
            .iter()
            .find(|s| !state.inner.settings.scopes.contains(s) && *s != "offline_access")
    {
        return fail(
            &v,
            OAuthError::invalid_scope(format!("scope `{bad}` is not offered by this server")),
        );
    }
    if scopes.iter().any(|s| !bmm_core::is_scope_token(s)) {
        return fail(
            &v,
            OAuthError::invalid_scope("a scope contains characters RFC 6749 does not allow"),
        );
    }
    v.scopes = scopes;
    Ok(v)
}

fn issue_code(state: &AppState, v: &Validated, subject: &str) -> Response {
    let code = random_token(32);
    let record = CodeRecord {
        client_id: v.client.client_id.clone(),
        redirect_uri: v.redirect_uri.clone(),
        redirect_uri_given: v.redirect_uri_given,
        code_challenge: v.code_challenge.clone(),
        resource: v.resource.clone(),
        scope: v.scopes.join(" "),
        subject: subject.to_owned(),
        expires_at: now() + state.inner.settings.code_ttl,
        redeemed_family: None,
    };
    if let Ok(mut codes) = state.inner.codes.lock() {
        let t = now();
        // Redeemed codes are kept a while longer so a replay can be detected.
        codes.retain(|_, c| c.expires_at + 600 > t);
        codes.insert(code.clone(), record);
    }
    if let Err(error) = state.inner.store.mark_client_used(&v.client.client_id) {
        tracing::error!(%error, "cannot record that the client completed an authorization");
    }
    tracing::info!(client_id = %v.client.client_id, subject, "authorization code issued");
    redirect_to(
        state,
        &v.redirect_uri,
        v.state.as_deref(),
        &[("code", &code)],
    )
}

fn consent_page(
    state: &AppState,
    v: &Validated,
    request_id: &str,
    csrf: &str,
    error: Option<(StatusCode, &str)>,
) -> Response {
    let redirect_host = Url::parse(&v.redirect_uri)
        .ok()
        .map(|u| {
            u.host_str()
                .map_or_else(|| format!("{}:", u.scheme()), str::to_owned)
        })
        .unwrap_or_default();
    let client_host = clients::is_metadata_document(state, &v.client.client_id)
        .then(|| Url::parse(&v.client.client_id).ok())
        .flatten()
        .and_then(|u| u.host_str().map(str::to_owned));
    let client_name = crate::register::display_name(
        v.client
            .client_name
            .as_deref()
            .unwrap_or(&v.client.client_id),
    );
    let page = ConsentPage {
        client_name: &client_name,
        client_host: client_host.as_deref(),
        client_id: &v.client.client_id,
        preregistered: clients::is_preregistered(state, &v.client.client_id),
        resource: &v.resource,
        scopes: &v.scopes,
        redirect_host: &redirect_host,
        redirect_uri: &v.redirect_uri,
        request_id,
        csrf,
        error: error.map(|(_, e)| e),
    };
    let status = error.map_or(StatusCode::OK, |(s, _)| s);
    match page.render() {
        Ok(body) => {
            let cookie = format!(
                "{CSRF_COOKIE}={csrf}; Path=/; HttpOnly; SameSite=Strict; Max-Age={PENDING_TTL}"
            );
            let mut response = (status, no_store(), Html(body)).into_response();
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Err(_) => OAuthError::server_error().into_response(),
    }
}

pub(crate) async fn authorize_get(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
) -> Response {
    let params = match single_params(query.as_deref()) {
        Ok(p) => p,
        Err(e) => return error_page(&e),
    };
    let v = match validate(&state, &params, peer.ip()).await {
        Ok(v) => v,
        Err(response) => return response,
    };
    if let Some(user) = &state.inner.settings.dev_user {
        return issue_code(&state, &v, user);
    }
    let request_id = random_token(24);
    let csrf = random_token(24);
    let expires_at = now() + PENDING_TTL;
    state.inner.pending.insert(
        request_id.clone(),
        peer.ip(),
        PendingRequest {
            request: v.clone(),
            csrf: csrf.clone(),
            expires_at,
        },
        expires_at,
    );
    consent_page(&state, &v, &request_id, &csrf, None)
}

#[derive(Debug, Deserialize)]
pub(crate) struct ConsentForm {
    request_id: String,
    csrf: String,
    username: Option<String>,
    password: Option<String>,
    decision: Option<String>,
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub(crate) async fn authorize_post(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<ConsentForm>,
) -> Response {
    let pending = state
        .inner
        .pending
        .take(&form.request_id)
        .filter(|p| p.expires_at > now());
    let Some(pending) = pending else {
        return error_page(&OAuthError::invalid_request(
            "this sign-in request expired or was already used; start again from the application",
        ));
    };
    let cookie_ok =
        cookie_value(&headers, CSRF_COOKIE).is_some_and(|c| secure_eq(c, &pending.csrf));
    if !cookie_ok || !secure_eq(&form.csrf, &pending.csrf) {
        return error_page(&OAuthError::invalid_request(
            "the form's CSRF check failed; start again from the application",
        ));
    }
    let v = &pending.request;
    if form.decision.as_deref() != Some("approve") {
        return redirect_error(
            &state,
            v,
            &OAuthError::new(
                StatusCode::BAD_REQUEST,
                "access_denied",
                "the user denied the request",
            ),
        );
    }
    let username = form.username.unwrap_or_default();
    let password = form.password.unwrap_or_default();
    let verdict = state
        .inner
        .throttle
        .check(&state.inner.settings.users, peer.ip(), &username, &password)
        .await;
    let message = match verdict {
        Verdict::Valid => return issue_code(&state, v, &username),
        Verdict::Invalid => {
            tracing::info!("sign-in failed");
            (StatusCode::OK, "Wrong user name or password.".to_owned())
        }
        Verdict::Wait(wait) => {
            tracing::info!("sign-in refused: too many failures");
            (
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Too many failed sign-ins. Wait {} seconds, then try again.",
                    wait.as_secs().max(1)
                ),
            )
        }
        Verdict::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The server is busy. Try again in a moment.".to_owned(),
        ),
    };
    // Keep the request alive for another try, with a fresh CSRF token.
    let request_id = random_token(24);
    let csrf = random_token(24);
    state.inner.pending.insert(
        request_id.clone(),
        peer.ip(),
        PendingRequest {
            request: v.clone(),
            csrf: csrf.clone(),
            expires_at: pending.expires_at,
        },
        pending.expires_at,
    );
    consent_page(&state, v, &request_id, &csrf, Some((message.0, &message.1)))
}

/// Why a code was not redeemed.
#[derive(Debug)]
pub(crate) enum CodeRefusal {
    /// Unknown or expired.
    Unknown,
    /// The request does not fit the code (another client, wrong verifier, redirect URI or
    /// resource): nothing happened to the code, which stays redeemable.
    Refused(OAuthError),
    /// A request that fits the code presented it again: the family it produced, whose
    /// tokens are to be revoked.
    Replayed(String),
}

/// Redeems a code: `check` (client, PKCE verifier, redirect URI, resource) runs first, while
/// the code is held, and the code is used up only when it passes. The check and the use are
/// one step under the lock, so of two concurrent redemptions exactly one wins, and a
/// request that does not fit the code (an attacker holding an intercepted code without the
/// verifier) can neither burn it nor revoke what it produced.
pub(crate) fn redeem_code(
    state: &AppState,
    code: &str,
    check: impl FnOnce(&CodeRecord) -> Result<(), OAuthError>,
) -> Result<CodeRecord, CodeRefusal> {
    let Ok(mut codes) = state.inner.codes.lock() else {
        return Err(CodeRefusal::Unknown);
    };
    let Some(record) = codes.get_mut(code) else {
        return Err(CodeRefusal::Unknown);
    };
    if record.redeemed_family.is_none() && record.expires_at <= now() {
        return Err(CodeRefusal::Unknown);
    }
    check(record).map_err(CodeRefusal::Refused)?;
    if let Some(family) = &record.redeemed_family {
        return Err(CodeRefusal::Replayed(family.clone()));
    }
    let out = record.clone();
    // Marked as redeemed (with a placeholder family) before any token is minted.
    record.redeemed_family = Some(String::new());
    Ok(out)
}

/// Records which refresh family a redeemed code produced.
pub(crate) fn record_family(state: &AppState, code: &str, family: &str) {
    if let Ok(mut codes) = state.inner.codes.lock()
        && let Some(record) = codes.get_mut(code)
    {
        record.redeemed_family = Some(family.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_values_must_be_43_to_128_unreserved_characters() {
        assert!(is_pkce_value(&"a".repeat(43)));
        assert!(!is_pkce_value(&"a".repeat(42)));
        assert!(!is_pkce_value(&"a".repeat(129)));
        assert!(!is_pkce_value(&format!("{}+", "a".repeat(43))));
    }

    #[test]
    fn repeated_authorize_parameters_are_refused() {
        assert!(single_params(Some("a=1&b=2")).is_ok());
        assert!(single_params(Some("resource=x&resource=y")).is_err());
    }
}
