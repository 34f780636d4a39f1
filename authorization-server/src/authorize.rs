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
//!    They are kept in the store under their SHA-256, so any instance redeems them, and
//!    the store decides which of concurrent redemptions wins (see `redeem_code`).
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
use serde::{Deserialize, Serialize};
use url::Url;

use crate::audit;
use crate::error::OAuthError;
use crate::signin::{Pending, Verdict};
use crate::store::{Client, StoredCode};
use crate::{AppState, clients, now, random_token, secure_eq, sha256_hex};
use bmm_core::canonical_resource;

const PENDING_TTL: u64 = 600;
const CSRF_COOKIE: &str = "bmm_csrf";

/// A validated request waiting for the user's decision (kept in the store as JSON, see
/// `signin::Pending`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PendingRequest {
    request: Validated,
    csrf: String,
    expires_at: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Validated {
    /// The client as registered, less its key set (see [`Validated::pending`]).
    client: Client,
    redirect_uri: String,
    redirect_uri_given: bool,
    state: Option<String>,
    code_challenge: String,
    resource: String,
    scopes: Vec<String>,
}

impl Validated {
    /// What a pending sign-in keeps: the client's key set is not needed to finish it, and
    /// leaving it out keeps each pending row small (sign-in rule 1 bounds rows, not bytes).
    fn pending(&self) -> Self {
        let mut v = self.clone();
        v.client.jwks = None;
        v
    }
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

/// The answer to an address over its rate limit (sign-in rule 5).
fn too_many_requests() -> Response {
    error_page(&OAuthError::rate_limited())
}

/// Parses the query, refusing repeated parameters.
fn single_params(query: Option<&str>) -> Result<HashMap<String, String>, OAuthError> {
    let mut map = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        // No legitimate value holds NUL, and PostgreSQL text cannot store it.
        if k.contains('\0') || v.contains('\0') {
            return Err(OAuthError::invalid_request(
                "a parameter contains a NUL byte",
            ));
        }
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

async fn issue_code(state: &AppState, v: &Validated, subject: &str, caller: IpAddr) -> Response {
    let code = random_token(32);
    let record = StoredCode {
        code_sha256: sha256_hex(&code),
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
    // Redeemed codes are kept 10 minutes past expiry (until the cleanup task purges them)
    // so a replay can be detected.
    if let Err(error) = state.inner.store.put_code(&record).await {
        return error_page(&OAuthError::from(error));
    }
    if let Err(error) = state
        .inner
        .store
        .mark_client_used(&v.client.client_id, now())
        .await
    {
        tracing::error!(%error, "cannot record that the client completed an authorization");
    }
    let issued = audit::event("code_issued")
        .client(&v.client.client_id)
        .subject(subject)
        .resource(&v.resource)
        .scope(&record.scope)
        .address(caller);
    audit::record(state, issued).await;
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
    if !state
        .inner
        .limiter
        .allow(peer.ip(), crate::ratelimit::Bucket::Authorize)
    {
        return too_many_requests();
    }
    let params = match single_params(query.as_deref()) {
        Ok(p) => p,
        Err(e) => return error_page(&e),
    };
    let v = match validate(&state, &params, peer.ip()).await {
        Ok(v) => v,
        Err(response) => return response,
    };
    if let Some(user) = &state.inner.settings.dev_user {
        let consent = audit::event("consent")
            .client(&v.client.client_id)
            .subject(user)
            .resource(&v.resource)
            .scope(&v.scopes.join(" "))
            .address(peer.ip())
            .detail("dev mode: approved without sign-in");
        audit::record(&state, consent).await;
        return issue_code(&state, &v, user, peer.ip()).await;
    }
    let request_id = random_token(24);
    let csrf = random_token(24);
    let expires_at = now() + PENDING_TTL;
    let pending = PendingRequest {
        request: v.pending(),
        csrf: csrf.clone(),
        expires_at,
    };
    if let Err(error) =
        Pending::insert(state.store(), &request_id, peer.ip(), &pending, expires_at).await
    {
        return error_page(&OAuthError::from(error));
    }
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
    if !state
        .inner
        .limiter
        .allow(peer.ip(), crate::ratelimit::Bucket::SignIn)
    {
        return too_many_requests();
    }
    let fields = [&form.username, &form.password, &form.decision];
    if form.request_id.contains('\0')
        || form.csrf.contains('\0')
        || fields
            .iter()
            .any(|f| f.as_deref().is_some_and(|v| v.contains('\0')))
    {
        return error_page(&OAuthError::invalid_request(
            "a form field contains a NUL byte",
        ));
    }
    let pending = match Pending::take::<PendingRequest>(state.store(), &form.request_id).await {
        Ok(p) => p.filter(|p| p.expires_at > now()),
        Err(error) => return error_page(&OAuthError::from(error)),
    };
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
        let denied = audit::event("consent")
            .client(&v.client.client_id)
            .resource(&v.resource)
            .scope(&v.scopes.join(" "))
            .address(peer.ip())
            .outcome("access_denied");
        audit::record(&state, denied).await;
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
    let mut signed_in = audit::event("sign_in")
        .client(&v.client.client_id)
        .address(peer.ip());
    match audit::attempted_user(&state.inner.settings.users, &username) {
        Some(user) => signed_in = signed_in.subject(user),
        None => signed_in = signed_in.detail("unknown user"),
    }
    let outcome = match verdict {
        Verdict::Valid => "ok",
        Verdict::Invalid => "invalid_credentials",
        Verdict::Wait(_) => "throttled",
        Verdict::Busy => "busy",
    };
    // A refused attempt is audited once per back-off period (sign-in rule 5).
    let audited = match verdict {
        Verdict::Wait(wait) => state.inner.throttle.audit_refusal(peer.ip(), wait),
        _ => true,
    };
    if audited {
        audit::record(&state, signed_in.outcome(outcome)).await;
    }
    let message = match verdict {
        Verdict::Valid => {
            let consent = audit::event("consent")
                .client(&v.client.client_id)
                .subject(&username)
                .resource(&v.resource)
                .scope(&v.scopes.join(" "))
                .address(peer.ip());
            audit::record(&state, consent).await;
            return issue_code(&state, v, &username, peer.ip()).await;
        }
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
    let again = PendingRequest {
        request: v.pending(),
        csrf: csrf.clone(),
        expires_at: pending.expires_at,
    };
    if let Err(error) = Pending::insert(
        state.store(),
        &request_id,
        peer.ip(),
        &again,
        pending.expires_at,
    )
    .await
    {
        return error_page(&OAuthError::from(error));
    }
    consent_page(&state, v, &request_id, &csrf, Some((message.0, &message.1)))
}

/// Why a code was not redeemed.
#[derive(Debug)]
pub(crate) enum CodeRefusal {
    /// Unknown or expired.
    Unknown,
    /// The request does not fit the code (another client, wrong verifier, redirect URI or
    /// resource), or the store failed: nothing happened to the code, which stays
    /// redeemable.
    Refused(OAuthError),
    /// A request that fits the code presented it again, or lost the race to redeem it: the
    /// family it produced, whose tokens are to be revoked.
    Replayed(String),
}

/// Finds a code and checks a request against it (rule 8): `check` (client, PKCE verifier,
/// redirect URI, resource) runs on the stored record, and nothing happens to the code when
/// it fails, so a request that does not fit the code (an attacker holding an intercepted
/// code without the verifier) can neither burn it nor revoke what it produced. A redeemed
/// code presented by a request that fits is a replay.
pub(crate) async fn check_code(
    state: &AppState,
    code: &str,
    check: impl FnOnce(&StoredCode) -> Result<(), OAuthError>,
) -> Result<StoredCode, CodeRefusal> {
    let hash = sha256_hex(code);
    let record = state
        .store()
        .code(&hash)
        .await
        .map_err(|e| CodeRefusal::Refused(e.into()))?
        .ok_or(CodeRefusal::Unknown)?;
    if record.redeemed_family.is_none() && record.expires_at <= now() {
        return Err(CodeRefusal::Unknown);
    }
    check(&record).map_err(CodeRefusal::Refused)?;
    if let Some(family) = &record.redeemed_family {
        return Err(CodeRefusal::Replayed(family.clone()));
    }
    Ok(record)
}

/// Redeems a checked code for `family`: the store decides in one statement, so of
/// concurrent redemptions (on any instance) exactly one wins; a loser learns the winner's
/// family as a replay. The caller stores the family's first refresh token BEFORE
/// redeeming, so a replay's revocation always finds it.
pub(crate) async fn redeem_code(
    state: &AppState,
    code: &StoredCode,
    family: &str,
) -> Result<(), CodeRefusal> {
    let store = state.store();
    let won = store
        .redeem_code(&code.code_sha256, family, now())
        .await
        .map_err(|e| CodeRefusal::Refused(e.into()))?;
    if won {
        return Ok(());
    }
    match store.code(&code.code_sha256).await {
        Ok(Some(StoredCode {
            redeemed_family: Some(winner),
            ..
        })) => Err(CodeRefusal::Replayed(winner)),
        Ok(_) => Err(CodeRefusal::Unknown),
        Err(e) => Err(CodeRefusal::Refused(e.into())),
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
