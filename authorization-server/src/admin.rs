//! The admin page at `<issuer path>/admin`: registered clients, live grants with a revoke
//! button, and the audit trail, for the users marked `admin = true` in the configuration.
//!
//! Admin rules:
//! 1. Only a configured user with `admin = true` gets a session, after the same password
//!    check and throttle as the consent page's sign-in (`signin`); a user without the flag
//!    is refused (403) even with the right password. Every sign-in attempt is audited
//!    (`admin_sign_in`).
//! 2. The session is a cookie every instance can verify without shared memory: a JWT
//!    signed by the AS's current key with `aud` `<issuer>/admin`, `bmm_use`
//!    `admin_session`, the user and a CSRF token, valid for 30 minutes
//!    ([`SESSION_TTL`]); it is checked against the published keys and the configuration
//!    (a user no longer admin is signed out). The cookie is `HttpOnly`,
//!    `SameSite=Strict`, scoped to the admin path, and `Secure` when the issuer is
//!    `https`. Signing out clears it; a copied cookie stays valid until it expires.
//! 3. Every POST carries a CSRF token compared in constant time: the sign-in form a
//!    double-submit cookie, the others the token inside the session.
//! 4. Nothing secret is rendered: clients without their secret hash, grants by their
//!    family id (never a token or a hash of one), audit events (which hold no secret).
//! 5. Every answer is `Cache-Control: no-store`, cannot be framed
//!    (`frame-ancestors 'none'`, `X-Frame-Options: DENY`), runs no script, and has no CORS.
//! 6. Inputs are bounded: filter values longer than [`MAX_FILTER`] bytes are refused,
//!    lists are capped ([`PAGE`] events, 200 clients and grants per page).

use std::net::SocketAddr;

use askama::Template;
use axum::Form;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{self, KINDS, format_time};
use crate::error::OAuthError;
use crate::signin::Verdict;
use crate::store::AuditFilter;
use crate::{AppState, now, random_token, secure_eq};

/// Lifetime of an admin session, in seconds.
pub(crate) const SESSION_TTL: u64 = 1800;
/// Longest filter value accepted, in bytes.
pub(crate) const MAX_FILTER: usize = 512;
/// Audit events per page.
pub(crate) const PAGE: u32 = 100;
/// Clients and grants listed.
const LIST: u32 = 200;
/// Lifetime of the sign-in form's CSRF cookie, in seconds.
const LOGIN_TTL: u64 = 600;

const SESSION_COOKIE: &str = "bmm_admin";
const LOGIN_COOKIE: &str = "bmm_admin_login";
const SESSION_USE: &str = "admin_session";

/// The headers of every admin answer (rule 5).
fn page_headers() -> [(header::HeaderName, HeaderValue); 5] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ]
}

/// The admin page's path (`/oauth/admin`, or `/admin` for an issuer without a path).
fn admin_path(state: &AppState) -> String {
    format!(
        "{}/admin",
        crate::config::issuer_path(&state.inner.settings.issuer)
    )
}

/// The `aud` of admin sessions.
fn session_audience(state: &AppState) -> String {
    format!(
        "{}/admin",
        state.inner.settings.issuer.trim_end_matches('/')
    )
}

/// A `Set-Cookie` value for the admin path (rule 2).
fn cookie(state: &AppState, name: &str, value: &str, max_age: u64) -> Option<HeaderValue> {
    let secure = if state.inner.settings.issuer.starts_with("https:") {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={}; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
        admin_path(state)
    ))
    .ok()
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

/// A signed-in admin.
#[derive(Debug)]
struct Session {
    user: String,
    csrf: String,
}

/// Mints a session for `user` (rule 2).
fn mint_session(state: &AppState, user: &str) -> Option<(String, String)> {
    let csrf = random_token(24);
    let t = now();
    let claims = json!({
        "iss": state.inner.settings.issuer,
        "aud": session_audience(state),
        "sub": user,
        "iat": t,
        "exp": t + SESSION_TTL,
        "bmm_use": SESSION_USE,
        "csrf": csrf,
    });
    match state.inner.keys.sign(&claims) {
        Ok(token) => Some((token, csrf)),
        Err(error) => {
            tracing::error!(%error, "cannot sign an admin session");
            None
        }
    }
}

/// Whether `signature` over `message` verifies with the published RSA key `kid`.
fn verify_rs256(jwks: &Value, kid: &str, message: &[u8], signature: &[u8]) -> bool {
    use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
    let Some(keys) = jwks.get("keys").and_then(Value::as_array) else {
        return false;
    };
    keys.iter()
        .filter(|k| k.get("kid").and_then(Value::as_str) == Some(kid))
        .any(|k| {
            let part = |name: &str| {
                k.get(name)
                    .and_then(Value::as_str)
                    .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
            };
            match (part("n"), part("e")) {
                (Some(n), Some(e)) => RsaPublicKeyComponents { n, e }
                    .verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
                    .is_ok(),
                _ => false,
            }
        })
}

/// The session the request's cookie carries, if it is valid (rule 2).
fn session(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let token = cookie_value(headers, SESSION_COOKIE)?;
    if token.len() > 8192 {
        return None;
    }
    let mut parts = token.split('.');
    let (head, body, sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(head).ok()?).ok()?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return None;
    }
    let kid = header.get("kid").and_then(Value::as_str)?;
    let signature = URL_SAFE_NO_PAD.decode(sig).ok()?;
    let signed = &token[..head.len() + 1 + body.len()];
    if !verify_rs256(&state.inner.keys.jwks(), kid, signed.as_bytes(), &signature) {
        return None;
    }
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let exp = claims.get("exp").and_then(Value::as_u64)?;
    if text("bmm_use") != Some(SESSION_USE)
        || text("aud") != Some(session_audience(state).as_str())
        || text("iss") != Some(state.inner.settings.issuer.as_str())
        || exp <= now()
    {
        return None;
    }
    let user = text("sub")?;
    let csrf = text("csrf")?;
    is_admin(state, user).then(|| Session {
        user: user.to_owned(),
        csrf: csrf.to_owned(),
    })
}

fn is_admin(state: &AppState, user: &str) -> bool {
    state
        .inner
        .settings
        .users
        .iter()
        .any(|u| u.admin && u.name == user)
}

/// The filters of the page (its query string), checked (rule 6).
#[derive(Debug, Default, Clone)]
struct Filters {
    client: String,
    subject: String,
    kind: String,
    since: String,
    until: String,
    before: Option<i64>,
}

impl Filters {
    fn parse(query: &str) -> Result<Self, String> {
        let mut f = Self::default();
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if v.contains('\0') {
                return Err(format!("the `{k}` filter contains a NUL byte"));
            }
            if v.len() > MAX_FILTER {
                return Err(format!(
                    "the `{k}` filter is longer than {MAX_FILTER} bytes"
                ));
            }
            let v = v.trim().to_owned();
            match k.as_ref() {
                "client" => f.client = v,
                "subject" => f.subject = v,
                "type" => f.kind = v,
                "since" => f.since = v,
                "until" => f.until = v,
                "before" if !v.is_empty() => {
                    f.before = Some(v.parse().map_err(|_| "`before` is not a number")?);
                }
                _ => {}
            }
        }
        if !f.kind.is_empty() && !KINDS.contains(&f.kind.as_str()) {
            return Err(format!("unknown event type `{}`", f.kind));
        }
        Ok(f)
    }

    /// The query string for these filters (without `before`).
    fn query(&self) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("client", &self.client),
            ("subject", &self.subject),
            ("type", &self.kind),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.finish()
    }

    fn audit_filter(&self, now: u64) -> Result<AuditFilter, String> {
        let opt = |v: &String| (!v.is_empty()).then(|| v.clone());
        let time = |v: &String| {
            if v.is_empty() {
                Ok(None)
            } else {
                audit::parse_time(v, now).map(Some)
            }
        };
        Ok(AuditFilter {
            client_id: opt(&self.client),
            subject: opt(&self.subject),
            kind: opt(&self.kind),
            since: time(&self.since)?,
            until: time(&self.until)?,
            before_id: self.before,
            limit: PAGE,
        })
    }
}

#[derive(Template)]
#[template(path = "admin_login.html")]
struct LoginPage<'a> {
    csrf: &'a str,
    error: Option<&'a str>,
}

/// One row of the clients table.
struct ClientRow {
    client_id: String,
    name: String,
    auth_method: String,
    redirect_uris: Vec<String>,
    created: String,
    last_used: String,
}

/// One row of the grants table.
struct GrantRow {
    family: String,
    client_id: String,
    subject: String,
    scope: String,
    resource: String,
    created: String,
    last_used: String,
    expires: String,
}

/// One row of the audit table.
struct EventRow {
    at: String,
    kind: String,
    client_id: String,
    subject: String,
    resource: String,
    scope: String,
    address: String,
    outcome: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage<'a> {
    user: &'a str,
    csrf: &'a str,
    error: Option<&'a str>,
    notice: Option<&'a str>,
    filter_client: &'a str,
    filter_subject: &'a str,
    filter_since: &'a str,
    filter_until: &'a str,
    kinds: Vec<(&'static str, bool)>,
    back: &'a str,
    clients: Vec<ClientRow>,
    grants: Vec<GrantRow>,
    events: Vec<EventRow>,
    older: Option<String>,
}

fn render(status: StatusCode, page: askama::Result<String>) -> Response {
    match page {
        Ok(body) => (status, page_headers(), Html(body)).into_response(),
        Err(_) => OAuthError::server_error().into_response(),
    }
}

/// The sign-in form, with a fresh double-submit CSRF token (rule 3).
fn login_page(state: &AppState, status: StatusCode, error: Option<&str>) -> Response {
    let csrf = random_token(24);
    let mut response = render(status, LoginPage { csrf: &csrf, error }.render());
    if let Some(value) = cookie(state, LOGIN_COOKIE, &csrf, LOGIN_TTL) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

fn see_other(location: &str) -> Response {
    let mut response = (StatusCode::SEE_OTHER, page_headers()).into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn text(value: Option<&str>) -> String {
    value.unwrap_or("").to_owned()
}

/// `GET <issuer path>/admin`: the sign-in form, or the page for a signed-in admin.
pub(crate) async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(session) = session(&state, &headers) else {
        return login_page(&state, StatusCode::OK, None);
    };
    let query = query.unwrap_or_default();
    let notice = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "revoked")
        .map(|(_, v)| {
            if v == "1" {
                "The grant was revoked."
            } else {
                "That grant was no longer live."
            }
        });
    let (filters, error) = match Filters::parse(&query) {
        Ok(f) => (f, None),
        Err(e) => (Filters::default(), Some(e)),
    };
    dashboard(&state, &session, &filters, error, notice).await
}

async fn dashboard(
    state: &AppState,
    session: &Session,
    filters: &Filters,
    mut error: Option<String>,
    notice: Option<&str>,
) -> Response {
    let t = now();
    let store = &state.inner.store;
    let audit_filter = match filters.audit_filter(t) {
        Ok(f) => f,
        Err(e) => {
            error.get_or_insert(e);
            AuditFilter {
                limit: PAGE,
                ..AuditFilter::default()
            }
        }
    };
    let opt = |v: &str| (!v.is_empty()).then(|| v.to_owned());
    let (client_filter, subject_filter) = (opt(&filters.client), opt(&filters.subject));
    let listed = async {
        let clients = store.clients(LIST, 0).await?;
        let grants = store
            .grants(subject_filter.as_deref(), client_filter.as_deref(), t, LIST)
            .await?;
        let events = store.events(&audit_filter).await?;
        Ok::<_, crate::error::StoreError>((clients, grants, events))
    };
    let (clients, grants, events) = match listed.await {
        Ok(lists) => lists,
        Err(e) => {
            tracing::error!(error = %e, "the admin page cannot read the store");
            return OAuthError::server_error().into_response();
        }
    };
    let older = (events.len() == PAGE as usize)
        .then(|| events.last().map(|e| e.id))
        .flatten()
        .map(|id| {
            let q = filters.query();
            if q.is_empty() {
                format!("?before={id}")
            } else {
                format!("?{q}&before={id}")
            }
        });
    let clients = clients
        .into_iter()
        .map(|c| ClientRow {
            name: crate::register::display_name(c.client.client_name.as_deref().unwrap_or("")),
            client_id: c.client.client_id,
            auth_method: c.client.token_endpoint_auth_method,
            redirect_uris: c.client.redirect_uris,
            created: format_time(c.client.created_at),
            last_used: c.last_used.map_or_else(|| "never".to_owned(), format_time),
        })
        .collect();
    let grants = grants
        .into_iter()
        .map(|g| GrantRow {
            family: g.family,
            client_id: g.client_id,
            subject: g.subject,
            scope: g.scope,
            resource: g.resource,
            created: format_time(g.created_at),
            last_used: format_time(g.last_used),
            expires: format_time(g.expires_at),
        })
        .collect();
    let events = events
        .into_iter()
        .map(|e| EventRow {
            at: format_time(e.at),
            kind: e.kind,
            client_id: text(e.client_id.as_deref()),
            subject: text(e.subject.as_deref()),
            resource: text(e.resource.as_deref()),
            scope: text(e.scope.as_deref()),
            address: text(e.address.as_deref()),
            outcome: e.outcome,
            detail: text(e.detail.as_deref()),
        })
        .collect();
    let back = filters.query();
    let page = AdminPage {
        user: &session.user,
        csrf: &session.csrf,
        error: error.as_deref(),
        notice,
        filter_client: &filters.client,
        filter_subject: &filters.subject,
        filter_since: &filters.since,
        filter_until: &filters.until,
        kinds: KINDS.iter().map(|k| (*k, *k == filters.kind)).collect(),
        back: &back,
        clients,
        grants,
        events,
        older,
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    render(status, page.render())
}

/// The fields of every admin form; `action` says which.
#[derive(Debug, Deserialize)]
pub(crate) struct AdminForm {
    action: String,
    csrf: String,
    username: Option<String>,
    password: Option<String>,
    family: Option<String>,
    back: Option<String>,
}

/// `POST <issuer path>/admin`: sign in, sign out, or revoke a grant.
pub(crate) async fn action(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<AdminForm>,
) -> Response {
    // No legitimate field holds NUL, and PostgreSQL text cannot store it.
    let optional = [&form.username, &form.password, &form.family, &form.back];
    if form.action.contains('\0')
        || form.csrf.contains('\0')
        || optional
            .iter()
            .any(|f| f.as_deref().is_some_and(|v| v.contains('\0')))
    {
        return render(
            StatusCode::BAD_REQUEST,
            Ok("a form field contains a NUL byte".to_owned()),
        );
    }
    match form.action.as_str() {
        "login" => login(&state, peer, &headers, form).await,
        "logout" | "revoke" => {
            let Some(session) = session(&state, &headers) else {
                return login_page(
                    &state,
                    StatusCode::UNAUTHORIZED,
                    Some("Your admin session expired; sign in again."),
                );
            };
            if !secure_eq(&form.csrf, &session.csrf) {
                return csrf_refused();
            }
            if form.action == "logout" {
                let mut response = see_other(&admin_path(&state));
                if let Some(value) = cookie(&state, SESSION_COOKIE, "", 0) {
                    response.headers_mut().append(header::SET_COOKIE, value);
                }
                return response;
            }
            revoke(&state, peer, &session, form).await
        }
        _ => render(
            StatusCode::BAD_REQUEST,
            Ok("unknown admin action".to_owned()),
        ),
    }
}

fn csrf_refused() -> Response {
    render(
        StatusCode::FORBIDDEN,
        Ok("The form's CSRF check failed; reload the admin page.".to_owned()),
    )
}

async fn login(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    form: AdminForm,
) -> Response {
    if !state
        .inner
        .limiter
        .allow(peer.ip(), crate::ratelimit::Bucket::SignIn)
    {
        return login_page(
            state,
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many sign-in requests from this address. Wait a minute, then try again."),
        );
    }
    let cookie_ok = cookie_value(headers, LOGIN_COOKIE).is_some_and(|c| secure_eq(c, &form.csrf));
    if !cookie_ok {
        return login_page(
            state,
            StatusCode::FORBIDDEN,
            Some("The form's CSRF check failed; try again."),
        );
    }
    let username = form.username.unwrap_or_default();
    let password = form.password.unwrap_or_default();
    if username.len() > MAX_FILTER || password.len() > 1024 {
        return login_page(
            state,
            StatusCode::BAD_REQUEST,
            Some("Wrong user name or password."),
        );
    }
    let verdict = state
        .inner
        .throttle
        .check(&state.inner.settings.users, peer.ip(), &username, &password)
        .await;
    let mut ev = audit::event("admin_sign_in").address(peer.ip());
    match audit::attempted_user(&state.inner.settings.users, &username) {
        Some(user) => ev = ev.subject(user),
        None => ev = ev.detail("unknown user"),
    }
    let (status, message) = match verdict {
        Verdict::Valid if is_admin(state, &username) => {
            let Some((token, _csrf)) = mint_session(state, &username) else {
                return OAuthError::server_error().into_response();
            };
            audit::record(state, ev).await;
            tracing::info!(user = %username, "admin signed in");
            let mut response = see_other(&admin_path(state));
            for value in [
                cookie(state, SESSION_COOKIE, &token, SESSION_TTL),
                cookie(state, LOGIN_COOKIE, "", 0),
            ]
            .into_iter()
            .flatten()
            {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            return response;
        }
        Verdict::Valid => {
            audit::record(state, ev.outcome("not_admin")).await;
            (
                StatusCode::FORBIDDEN,
                "This account may not open the admin page.".to_owned(),
            )
        }
        Verdict::Invalid => {
            audit::record(state, ev.outcome("invalid_credentials")).await;
            (StatusCode::OK, "Wrong user name or password.".to_owned())
        }
        Verdict::Wait(wait) => {
            if state.inner.throttle.audit_refusal(peer.ip(), wait) {
                audit::record(state, ev.outcome("throttled")).await;
            }
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
    login_page(state, status, Some(&message))
}

async fn revoke(
    state: &AppState,
    peer: SocketAddr,
    session: &Session,
    form: AdminForm,
) -> Response {
    let back = Filters::parse(form.back.as_deref().unwrap_or("")).unwrap_or_default();
    let family = form.family.unwrap_or_default();
    if family.is_empty() || family.len() > 256 {
        return render(StatusCode::BAD_REQUEST, Ok("no grant named".to_owned()));
    }
    let store = &state.inner.store;
    // The grant's client and user, for the audit trail (bounded lookup).
    let grant = match store.grants(None, None, now(), 1000).await {
        Ok(grants) => grants.into_iter().find(|g| g.family == family),
        Err(_) => None,
    };
    let live = match store.revoke_family(&family).await {
        Ok(live) => live,
        Err(e) => {
            tracing::error!(error = %e, "the admin page cannot revoke a grant");
            return OAuthError::server_error().into_response();
        }
    };
    let mut ev = audit::event("admin_revoke")
        .address(peer.ip())
        .detail(&format!(
            "family {family} revoked by admin {}",
            session.user
        ));
    if let Some(g) = &grant {
        ev = ev
            .client(&g.client_id)
            .subject(&g.subject)
            .resource(&g.resource)
            .scope(&g.scope);
    }
    if !live {
        ev = ev.outcome("not_live");
    }
    audit::record(state, ev).await;
    tracing::info!(user = %session.user, live, "admin revoked a grant");
    let revoked = if live { "1" } else { "0" };
    let filters = back.query();
    let location = if filters.is_empty() {
        format!("{}?revoked={revoked}", admin_path(state))
    } else {
        format!("{}?{filters}&revoked={revoked}", admin_path(state))
    };
    see_other(&location)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_bounded_and_types_checked() {
        let f = Filters::parse("client=c1&subject=alice&type=refresh&since=1h&before=42")
            .unwrap_or_default();
        assert_eq!(f.client, "c1");
        assert_eq!(f.before, Some(42));
        assert_eq!(f.query(), "client=c1&subject=alice&type=refresh&since=1h");
        assert!(Filters::parse("type=nonsense").is_err());
        assert!(Filters::parse(&format!("client={}", "x".repeat(MAX_FILTER + 1))).is_err());
        assert!(Filters::parse("before=abc").is_err());
        let af = Filters::parse("since=1h")
            .and_then(|f| f.audit_filter(10_000))
            .unwrap_or_default();
        assert_eq!(af.since, Some(10_000 - 3600));
        assert!(
            Filters::parse("until=tomorrow")
                .and_then(|f| f.audit_filter(10_000))
                .is_err()
        );
    }

    #[test]
    fn session_cookies_are_read_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; bmm_admin=tok.en.sig; bmm_admin_login=x"),
        );
        assert_eq!(cookie_value(&headers, SESSION_COOKIE), Some("tok.en.sig"));
        assert_eq!(cookie_value(&headers, LOGIN_COOKIE), Some("x"));
        assert_eq!(cookie_value(&headers, "b"), None);
    }
}
