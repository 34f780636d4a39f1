//! The connect pages: where a caller's browser, sent by a URL elicitation
//! ([`super::user`]), runs the upstream's authorization code flow with PKCE, and the
//! resulting tokens go into the vault. Served by the MCP server on its own origin (that of
//! `--resource`), under `/connections/`, as a public route: outside MCP authentication and
//! the Origin check (a browser has no MCP token), so every page authenticates what it
//! does itself.
//!
//! Rules:
//! 1. `GET /connections/<upstream>/start?t=<sealed>`: `t` is sealed with the vault key for
//!    that upstream (it names the MCP caller, an expiry 10 minutes ahead and the
//!    elicitation id). The page names the server and the upstream, never the caller (who
//!    opened it has not shown who they are; the page would tell them who generated it),
//!    and warns against links someone else sent; it has one button (a POST). The answer
//!    sets the CSRF cookie `bmm_connect` (32 random bytes; `HttpOnly`, `SameSite=Lax`,
//!    `Path=/connections/`, `Secure` when the origin is https), reusing a well-formed one
//!    the browser already has. `POST /connections/<upstream>/start` (form: `t`, `csrf`):
//!    `t` is checked again; the cookie must be present and `csrf` must be its SHA-256 (so
//!    the POST came from the page that browser was shown).
//! 2. The identity check (MCP 2025-11-25, URL elicitation, "Phishing": the server MUST
//!    verify that the user who opens the URL is the user the elicitation was generated
//!    for). With `--connect-client-id`, the POST answers a 303 to the authorization
//!    endpoint of the link's issuer (the MCP server's own authorization server, RFC 8414
//!    discovery) as this server's client there: authorization code + PKCE S256,
//!    `resource` = the server's resource URL, `redirect_uri` `<origin>/connections/verify`,
//!    `state` sealed (upstream, link caller, elicitation id, PKCE verifier, cookie hash,
//!    random id, expiry 10 minutes). `GET /connections/verify?code&state[&iss]`: the state
//!    must open, be unexpired, unused, and match this browser's cookie; `iss` (RFC 9207)
//!    must be that issuer's; the code is redeemed (`client_secret_basic` with
//!    `BMM_CONNECT_CLIENT_SECRET`, else a public client) and the access token verified by
//!    the server's own authenticator, as an MCP request's (signature or introspection,
//!    `iss`, `aud`, `exp`). A signed-in `iss` + `sub` other than the link's is a 403 page
//!    ("made for another user"), logged as a warning (no token), nothing stored; the same
//!    user continues with rule 3. Without the check (`--connect-without-identity-check`,
//!    single-user deployments), the POST goes straight to rule 3.
//! 3. The redirect to the upstream's authorization endpoint: `response_type=code`,
//!    `client_id`, `redirect_uri` (`<origin>/connections/<upstream>/callback`), `scope`,
//!    `state`, `code_challenge` (S256 of a fresh 32-byte verifier),
//!    `code_challenge_method=S256` and `resource`. `state` is sealed with the vault key for
//!    that upstream and holds the caller, the PKCE verifier, the SHA-256 of the cookie, the
//!    elicitation id, a random id and an expiry 10 minutes ahead.
//!    `GET /connections/<upstream>/callback?code&state`: the state must open for that
//!    upstream, be unexpired, unused in this process, and match this browser's cookie;
//!    `iss`, when the authorization server sends it (or promises it in its metadata), must
//!    be the upstream client's issuer (RFC 9207); the code is redeemed at the token
//!    endpoint (with `redirect_uri`, `code_verifier`, `resource`), the tokens are stored
//!    for the caller the state names, and the page says to return to the client. `error=`
//!    from the authorization server, a bad, expired, reused or foreign state, or a missing
//!    cookie is an HTML error page (400); a token endpoint failure is 502 naming the OAuth
//!    error code.
//! 4. Every answer: escaped HTML, `Cache-Control: no-store`, `Referrer-Policy: no-referrer`,
//!    `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff`, and the CSP
//!    `default-src 'none'; style-src 'unsafe-inline'; form-action 'self' <authorization
//!    server origin>; frame-ancestors 'none'; base-uri 'none'` (`form-action 'none'` on
//!    pages without a form). No token ever appears in a page, a header other than the
//!    redirect's own parameters, or a log line. Query strings are at most 8 KiB.
//!
//! (`start_and_callback_refuse_tampered_expired_or_foreign_state`,
//! `the_callback_needs_the_browser_that_started`,
//! `with_the_identity_check_the_start_post_signs_in_at_the_links_issuer_first`,
//! `the_verify_state_is_sealed_bound_to_the_browser_and_used_once`,
//! `only_the_links_user_passes`, and over real sockets `runtime/tests/connections.rs`.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use serde::{Deserialize, Serialize};

use super::user::{CONNECT_TTL, Connections, StartClaims, now, start_purpose_of};
use super::vault::{Owner, Tokens};

/// The CSRF cookie's name (rule 1).
pub(crate) const COOKIE: &str = "bmm_connect";
/// Longest query string read (rule 4).
const MAX_QUERY_BYTES: usize = 8 * 1024;
/// States redeemed in this process, remembered until they expire (rule 3).
const MAX_USED_STATES: usize = 10_000;

/// What the `state` parameter holds (rule 3).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateClaims {
    iss: String,
    sub: String,
    exp: u64,
    /// The elicitation id (legacy completion notification).
    id: String,
    /// A random id: the state is redeemed once.
    nonce: String,
    /// The PKCE verifier.
    v: String,
    /// SHA-256 (hex) of the browser's `bmm_connect` cookie.
    c: String,
}

/// What the `state` of the sign-in at the MCP server's authorization server holds (rule 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VerifyClaims {
    /// The upstream to connect next.
    up: String,
    /// The link's caller: who must sign in.
    iss: String,
    sub: String,
    /// The elicitation id.
    id: String,
    exp: u64,
    /// A random id: the state is redeemed once.
    nonce: String,
    /// The PKCE verifier.
    v: String,
    /// SHA-256 (hex) of the browser's `bmm_connect` cookie.
    c: String,
}

/// The sign-in's redirect path at the MCP server's origin (rule 2).
pub(crate) const VERIFY_PATH: &str = "/connections/verify";
/// What the sign-in's state is sealed for.
const VERIFY_PURPOSE: &str = "bmm-connect/verify";

/// The identity check of the connect pages (rule 2): this server's OAuth client at each
/// authorization server it trusts, and its own token verification.
pub(crate) struct Identity {
    /// The server's authenticator: the same checks as an MCP request's token.
    pub(crate) authenticator: bmm_middleware::Authenticator,
    /// The server's client at each trusted issuer, by issuer identifier.
    pub(crate) clients: HashMap<String, Arc<super::OAuthClient>>,
    /// The server's resource URL: the sign-in's `resource`, its token's audience.
    pub(crate) resource: String,
}

impl Identity {
    /// This server's client at `issuer`, if it trusts that issuer.
    fn client(&self, issuer: &str) -> Option<&Arc<super::OAuthClient>> {
        self.clients.get(issuer)
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("clients", &self.clients)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

/// States already redeemed (rule 3), by their random id.
#[derive(Debug, Default)]
pub(crate) struct UsedStates(Mutex<HashMap<String, Instant>>);

impl UsedStates {
    /// Marks `nonce` used; false when it already was.
    fn take(&self, nonce: &str) -> bool {
        let Ok(mut used) = self.0.lock() else {
            return false;
        };
        if used.len() >= MAX_USED_STATES {
            used.retain(|_, at| at.elapsed() < CONNECT_TTL);
            if used.len() >= MAX_USED_STATES {
                // Full of live entries: refuse rather than forget one.
                return false;
            }
        }
        used.insert(nonce.to_owned(), Instant::now()).is_none()
    }
}

fn state_purpose(upstream: &str) -> String {
    format!("bmm-connect/state/{upstream}")
}

fn random_b64(n: usize) -> Option<String> {
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn sha256_hex(text: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// Constant-time equality of two strings.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// HTML-escapes `text`.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// An OAuth error code from the authorization server, safe to show: RFC 6749's
/// characters, at most 64.
fn shown_code(code: &str) -> String {
    let ok = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        code.to_owned()
    } else {
        "(unreadable)".to_owned()
    }
}

/// The value of cookie `name` in the request, if well-formed (43 base64url characters).
fn cookie(request: &Request<Bytes>, name: &str) -> Option<String> {
    request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| {
            v.len() == 43
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The parameters of a query or form body; `None` when one appears twice or it is too long.
fn params(text: &[u8]) -> Option<HashMap<String, String>> {
    if text.len() > MAX_QUERY_BYTES {
        return None;
    }
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(text) {
        if out.insert(k.into_owned(), v.into_owned()).is_some() {
            return None;
        }
    }
    Some(out)
}

/// A page with the rule 4 headers; `form_action` is the CSP `form-action` value.
fn page(status: StatusCode, title: &str, body: &str, form_action: &str) -> Response<Full<Bytes>> {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{title}</title>\n<style>body{{font-family:system-ui,sans-serif;max-width:36em;margin:3em auto;padding:0 1em;line-height:1.5}}.box{{border:1px solid #ccc;border-radius:8px;padding:1em 1.5em}}.warn{{color:#8a4b00}}.error{{color:#b00020}}button{{font-size:1em;padding:.5em 1.2em}}code{{word-break:break-all}}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n",
        title = esc(title)
    );
    let mut response = Response::new(Full::new(Bytes::from(html)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    );
    if let Ok(value) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

fn error_page(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    page(
        status,
        "Connection failed",
        &format!(
            "<h1>Connection failed</h1>\n<div class=\"box\"><p class=\"error\" id=\"error\">{}</p><p>Go back to your MCP client and call the tool again for a new link.</p></div>",
            esc(message)
        ),
        "'none'",
    )
}

/// `scheme://host[:port]` of `url`, for the CSP.
fn origin_of(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}

/// Serves one request under `/connections/` (module rules).
pub(crate) async fn handle(
    connections: Arc<Connections>,
    request: Request<Bytes>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let Some(rest) = path.strip_prefix("/connections/") else {
        return error_page(StatusCode::NOT_FOUND, "There is no such page.");
    };
    if rest == "verify" {
        if request.method() != Method::GET {
            let mut response = error_page(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            return response;
        }
        return verify(&connections, &request).await;
    }
    let Some((upstream, action)) = rest.split_once('/') else {
        return error_page(StatusCode::NOT_FOUND, "There is no such page.");
    };
    let upstream = percent_encoding::percent_decode_str(upstream).decode_utf8_lossy();
    let Some((&upstream, _)) = connections.clients.get_key_value(upstream.as_ref()) else {
        return error_page(
            StatusCode::NOT_FOUND,
            "This server has no per-user connection of that name.",
        );
    };
    match (action, request.method()) {
        ("start", &Method::GET) => start_page(&connections, upstream, &request).await,
        ("start", &Method::POST) => start_post(&connections, upstream, &request).await,
        ("callback", &Method::GET) => callback(&connections, upstream, &request).await,
        ("start" | "callback", _) => {
            let mut response = error_page(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.");
            let allow = if action == "start" {
                "GET, POST"
            } else {
                "GET"
            };
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            response
        }
        _ => error_page(StatusCode::NOT_FOUND, "There is no such page."),
    }
}

/// The start link's claims, checked (rule 1).
fn open_start(
    connections: &Connections,
    upstream: &str,
    t: Option<&String>,
) -> Result<StartClaims, &'static str> {
    let t = t.ok_or("The link is incomplete.")?;
    let plain = connections
        .vault
        .keys()
        .open(&start_purpose_of(upstream), t)
        .ok_or("This link is not valid here (altered, or for another connection).")?;
    let claims: StartClaims =
        serde_json::from_slice(&plain).map_err(|_| "This link is not valid here.")?;
    if claims.exp <= now() {
        return Err("This link has expired.");
    }
    Ok(claims)
}

fn query(request: &Request<Bytes>) -> Option<HashMap<String, String>> {
    params(request.uri().query().unwrap_or("").as_bytes())
}

async fn start_page(
    connections: &Connections,
    upstream: &'static str,
    request: &Request<Bytes>,
) -> Response<Full<Bytes>> {
    let Some(query) = query(request) else {
        return error_page(StatusCode::BAD_REQUEST, "The link is malformed.");
    };
    let claims = match open_start(connections, upstream, query.get("t")) {
        Ok(c) => c,
        Err(message) => return error_page(StatusCode::BAD_REQUEST, message),
    };
    // The form's POST redirects to the MCP server's authorization server (sign-in first)
    // or, without the identity check, to the upstream's: the CSP allows that one.
    let authorize = match &connections.identity {
        Some(identity) => match identity.client(&claims.iss) {
            Some(client) => client.authorization_endpoint().await,
            None => return error_page(StatusCode::BAD_REQUEST, "This link is not valid here."),
        },
        None => match connections.clients.get(upstream) {
            Some(client) => client.authorization_endpoint().await,
            None => return error_page(StatusCode::NOT_FOUND, "There is no such connection."),
        },
    };
    let authorize = match authorize {
        Ok(url) => url,
        Err(e) => {
            tracing::warn!(upstream, error = %e, "connect page: no authorization endpoint");
            return error_page(
                StatusCode::BAD_GATEWAY,
                "The authorization server cannot be used right now.",
            );
        }
    };
    let (value, fresh) = match cookie(request, COOKIE) {
        Some(v) => (v, false),
        None => match random_b64(32) {
            Some(v) => (v, true),
            None => return error_page(StatusCode::INTERNAL_SERVER_ERROR, "No randomness."),
        },
    };
    let t = query.get("t").map(String::as_str).unwrap_or_default();
    let server = connections.server_name;
    // Who the link was made for is not shown: whoever opened it has not signed in yet, and
    // the page would tell them who generated it.
    let steps = if connections.identity.is_some() {
        "You will first sign in to {srv}, as the account that asked for this link (only that account can use it), then sign in at {up} and approve there."
    } else {
        "You will sign in at {up} and approve there."
    };
    let body = format!(
        "<h1>Connect <strong id=\"upstream\">{up}</strong> to <strong id=\"server\">{srv}</strong></h1>
<div class=\"box\">
<p>Connecting lets {srv} call <strong>{up}</strong> as your {up} account whenever you use its tools. {steps}</p>
<p class=\"warn\" id=\"warning\">Continue only if you asked for this yourself. A link someone else sent you would connect <em>your</em> {up} account to <em>their</em> identity.</p>
<form method=\"post\" action=\"/connections/{up_path}/start\">
<input type=\"hidden\" name=\"t\" value=\"{t}\">
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">
<button type=\"submit\" id=\"connect\">Connect {up}</button>
</form>
</div>",
        steps = steps
            .replace("{srv}", &esc(server))
            .replace("{up}", &esc(upstream)),
        up = esc(upstream),
        up_path = esc(&percent_encoding::utf8_percent_encode(upstream, percent_encoding::NON_ALPHANUMERIC).to_string()),
        srv = esc(server),
        t = esc(t),
        csrf = sha256_hex(&value),
    );
    let mut response = page(
        StatusCode::OK,
        &format!("Connect {upstream}"),
        &body,
        &format!("'self' {}", origin_of(&authorize)),
    );
    if fresh {
        let secure = if connections.origin.starts_with("https://") {
            "; Secure"
        } else {
            ""
        };
        let set = format!(
            "{COOKIE}={value}; Path=/connections/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            CONNECT_TTL.as_secs()
        );
        if let Ok(v) = HeaderValue::from_str(&set) {
            response.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    response
}

fn redirect_uri(connections: &Connections, upstream: &str) -> String {
    format!(
        "{}/connections/{}/callback",
        connections.origin,
        percent_encoding::utf8_percent_encode(upstream, percent_encoding::NON_ALPHANUMERIC)
    )
}

async fn start_post(
    connections: &Connections,
    upstream: &'static str,
    request: &Request<Bytes>,
) -> Response<Full<Bytes>> {
    let Some(form) = params(request.body()) else {
        return error_page(StatusCode::BAD_REQUEST, "The form is malformed.");
    };
    let claims = match open_start(connections, upstream, form.get("t")) {
        Ok(c) => c,
        Err(message) => return error_page(StatusCode::BAD_REQUEST, message),
    };
    let Some(value) = cookie(request, COOKIE) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This browser did not open the connect page first (its cookie is missing): open the link again.",
        );
    };
    let cookie_hash = sha256_hex(&value);
    if !form.get("csrf").is_some_and(|c| same(c, &cookie_hash)) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The form does not belong to this browser: open the link again.",
        );
    }
    match &connections.identity {
        Some(identity) => {
            sign_in_redirect(connections, identity, upstream, claims, cookie_hash).await
        }
        None => {
            upstream_redirect(
                connections,
                upstream,
                Caller {
                    iss: claims.iss,
                    sub: claims.sub,
                    id: claims.id,
                },
                cookie_hash,
            )
            .await
        }
    }
}

/// The MCP caller a connection is for, and the elicitation that asked.
struct Caller {
    iss: String,
    sub: String,
    id: String,
}

/// A 303 to `location`.
fn redirect(location: &url::Url) -> Response<Full<Bytes>> {
    let mut response = page(
        StatusCode::SEE_OTHER,
        "Redirecting",
        "<p>Redirecting to the authorization server.</p>",
        "'none'",
    );
    match HeaderValue::from_str(location.as_str()) {
        Ok(location) => {
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        Err(_) => error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The authorization endpoint is not a usable URL.",
        ),
    }
}

/// Rule 3: the redirect to the upstream's authorization endpoint, with a sealed state for
/// `caller` and this browser's cookie.
async fn upstream_redirect(
    connections: &Connections,
    upstream: &'static str,
    caller: Caller,
    cookie_hash: String,
) -> Response<Full<Bytes>> {
    let Some(client) = connections.clients.get(upstream) else {
        return error_page(StatusCode::NOT_FOUND, "There is no such connection.");
    };
    let mut authorize = match client.authorization_endpoint().await {
        Ok(url) => url,
        Err(e) => {
            tracing::warn!(upstream, error = %e, "connect page: no authorization endpoint");
            return error_page(
                StatusCode::BAD_GATEWAY,
                &format!("The authorization server of `{upstream}` cannot be used right now."),
            );
        }
    };
    let (Some(verifier), Some(nonce)) = (random_b64(32), random_b64(16)) else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, "No randomness.");
    };
    let state = StateClaims {
        iss: caller.iss,
        sub: caller.sub,
        exp: now().saturating_add(CONNECT_TTL.as_secs()),
        id: caller.id,
        nonce,
        v: verifier,
        c: cookie_hash,
    };
    let sealed = serde_json::to_vec(&state).ok().and_then(|json| {
        connections
            .vault
            .keys()
            .seal(&state_purpose(upstream), &json)
            .ok()
    });
    let Some(sealed) = sealed else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, "Cannot seal the state.");
    };
    let def = client.def();
    {
        let mut pairs = authorize.query_pairs_mut();
        pairs
            .append_pair("response_type", "code")
            .append_pair("client_id", client.client_id())
            .append_pair("redirect_uri", &redirect_uri(connections, upstream))
            .append_pair("state", &sealed)
            .append_pair("code_challenge", &pkce_challenge(&state.v))
            .append_pair("code_challenge_method", "S256");
        if !def.scopes.is_empty() {
            pairs.append_pair("scope", &def.scopes.join(" "));
        }
        if let Some(resource) = def.resource {
            pairs.append_pair("resource", resource);
        }
    }
    redirect(&authorize)
}

/// Rule 2: the redirect to the sign-in at the link's issuer (the MCP server's
/// authorization server), with a sealed verify state.
async fn sign_in_redirect(
    connections: &Connections,
    identity: &Identity,
    upstream: &'static str,
    claims: StartClaims,
    cookie_hash: String,
) -> Response<Full<Bytes>> {
    let Some(client) = identity.client(&claims.iss) else {
        return error_page(StatusCode::BAD_REQUEST, "This link is not valid here.");
    };
    let mut authorize = match client.authorization_endpoint().await {
        Ok(url) => url,
        Err(e) => {
            tracing::warn!(upstream, error = %e, "connect page: the MCP authorization server has no usable authorization endpoint");
            return error_page(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "The sign-in of {} cannot be used right now.",
                    connections.server_name
                ),
            );
        }
    };
    let (Some(verifier), Some(nonce)) = (random_b64(32), random_b64(16)) else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, "No randomness.");
    };
    let state = VerifyClaims {
        up: upstream.to_owned(),
        iss: claims.iss,
        sub: claims.sub,
        id: claims.id,
        exp: now().saturating_add(CONNECT_TTL.as_secs()),
        nonce,
        v: verifier,
        c: cookie_hash,
    };
    let sealed = serde_json::to_vec(&state)
        .ok()
        .and_then(|json| connections.vault.keys().seal(VERIFY_PURPOSE, &json).ok());
    let Some(sealed) = sealed else {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, "Cannot seal the state.");
    };
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client.client_id())
        .append_pair("redirect_uri", &verify_uri(connections))
        .append_pair("state", &sealed)
        .append_pair("code_challenge", &pkce_challenge(&state.v))
        .append_pair("code_challenge_method", "S256")
        .append_pair("resource", &identity.resource);
    redirect(&authorize)
}

fn verify_uri(connections: &Connections) -> String {
    format!("{}{VERIFY_PATH}", connections.origin)
}

/// Whether the user who signed in (`iss`, `sub` of the verified token) is the one the link
/// was made for (rule 2).
fn same_user(state: &VerifyClaims, iss: &str, sub: Option<&str>) -> bool {
    iss == state.iss && sub.is_some_and(|sub| same(sub, &state.sub))
}

/// `GET /connections/verify` (rule 2): the sign-in at the MCP server's authorization server
/// came back; the signed-in user must be the link's.
async fn verify(connections: &Connections, request: &Request<Bytes>) -> Response<Full<Bytes>> {
    let Some(identity) = &connections.identity else {
        return error_page(StatusCode::NOT_FOUND, "There is no such page.");
    };
    let Some(query) = query(request) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The answer of the authorization server is malformed.",
        );
    };
    if let Some(error) = query.get("error") {
        return error_page(
            StatusCode::BAD_REQUEST,
            &format!(
                "You were not signed in to {} ({}).",
                connections.server_name,
                shown_code(error)
            ),
        );
    }
    let (Some(code), Some(sealed)) = (query.get("code"), query.get("state")) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The answer of the authorization server has no code or state.",
        );
    };
    let Some(state) = connections
        .vault
        .keys()
        .open(VERIFY_PURPOSE, sealed)
        .and_then(|plain| serde_json::from_slice::<VerifyClaims>(&plain).ok())
    else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The state is not valid here (altered, or for another connection).",
        );
    };
    if state.exp <= now() {
        return error_page(StatusCode::BAD_REQUEST, "This sign-in has expired.");
    }
    let Some(value) = cookie(request, COOKIE) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This browser did not start this connection (its cookie is missing).",
        );
    };
    if !same(&sha256_hex(&value), &state.c) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This browser did not start this connection.",
        );
    }
    let Some((&upstream, _)) = connections.clients.get_key_value(state.up.as_str()) else {
        return error_page(StatusCode::BAD_REQUEST, "The state is not valid here.");
    };
    let Some(client) = identity.client(&state.iss) else {
        return error_page(StatusCode::BAD_REQUEST, "The state is not valid here.");
    };
    if let Err(why) = client
        .check_response_iss(query.get("iss").map(String::as_str))
        .await
    {
        tracing::warn!(upstream, "connect sign-in: {why} (RFC 9207)");
        return error_page(StatusCode::BAD_REQUEST, why);
    }
    if !connections.used.take(&state.nonce) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in was already used: open the link again.",
        );
    }
    let redirect = verify_uri(connections);
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect.as_str()),
        ("code_verifier", state.v.as_str()),
        ("resource", identity.resource.as_str()),
    ];
    let token = match client.token_request(&form).await {
        Ok(r) => r.access_token,
        Err(e) => {
            tracing::warn!(upstream, error = %e, "connect sign-in: the code was not redeemed");
            let why = match &e {
                super::UpstreamAuthError::Refused { error, .. } => shown_code(error),
                _ => "unreachable or unusable".to_owned(),
            };
            return error_page(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "The authorization server of {} did not sign you in ({why}).",
                    connections.server_name
                ),
            );
        }
    };
    // The same checks as an MCP request's token: signature or introspection, issuer,
    // audience (this server), expiry.
    let signed_in = identity.authenticator.verify_token(token.expose()).await;
    drop(token);
    let ctx = match signed_in {
        Ok(ctx) => ctx,
        Err(e) => {
            tracing::warn!(upstream, error = %e, "connect sign-in: the token is not one this server accepts");
            return error_page(
                StatusCode::FORBIDDEN,
                &format!(
                    "Your sign-in is not accepted by {}.",
                    connections.server_name
                ),
            );
        }
    };
    if !same_user(&state, ctx.issuer(), ctx.subject()) {
        tracing::warn!(
            upstream,
            link_issuer = %state.iss,
            link_subject = %state.sub,
            signed_in_issuer = %ctx.issuer(),
            signed_in_subject = ctx.subject().unwrap_or("(none)"),
            "connect link opened by another user: refused, nothing stored"
        );
        return page(
            StatusCode::FORBIDDEN,
            "Not your link",
            &format!(
                "<h1>Not your link</h1>\n<div class=\"box\"><p class=\"error\" id=\"error\">This link was made for another user of {srv}. Nothing was connected.</p><p>If you want to connect your own {up} account, call the tool from your own MCP client: it gives you a link of your own. If someone sent you this link, do not use it.</p></div>",
                srv = esc(connections.server_name),
                up = esc(upstream),
            ),
            "'none'",
        );
    }
    tracing::info!(upstream, "connect sign-in: the link's user signed in");
    upstream_redirect(
        connections,
        upstream,
        Caller {
            iss: state.iss,
            sub: state.sub,
            id: state.id,
        },
        state.c,
    )
    .await
}

async fn callback(
    connections: &Connections,
    upstream: &'static str,
    request: &Request<Bytes>,
) -> Response<Full<Bytes>> {
    let Some(query) = query(request) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The answer of the authorization server is malformed.",
        );
    };
    if let Some(error) = query.get("error") {
        return error_page(
            StatusCode::BAD_REQUEST,
            &format!(
                "The authorization server of `{upstream}` did not connect your account ({}).",
                shown_code(error)
            ),
        );
    }
    let (Some(code), Some(sealed)) = (query.get("code"), query.get("state")) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The answer of the authorization server has no code or state.",
        );
    };
    let Some(state) = connections
        .vault
        .keys()
        .open(&state_purpose(upstream), sealed)
        .and_then(|plain| serde_json::from_slice::<StateClaims>(&plain).ok())
    else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The state is not valid here (altered, or for another connection).",
        );
    };
    if state.exp <= now() {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This connection attempt has expired.",
        );
    }
    let Some(value) = cookie(request, COOKIE) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This browser did not start this connection (its cookie is missing).",
        );
    };
    if !same(&sha256_hex(&value), &state.c) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This browser did not start this connection.",
        );
    }
    let Some(client) = connections.clients.get(upstream) else {
        return error_page(StatusCode::NOT_FOUND, "There is no such connection.");
    };
    if let Err(why) = client
        .check_response_iss(query.get("iss").map(String::as_str))
        .await
    {
        tracing::warn!(upstream, "connect callback: {why} (RFC 9207)");
        return error_page(StatusCode::BAD_REQUEST, why);
    }
    if !connections.used.take(&state.nonce) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This connection attempt was already used: call the tool again for a new link.",
        );
    }
    let redirect = redirect_uri(connections, upstream);
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", &redirect),
        ("code_verifier", &state.v),
    ];
    if let Some(resource) = client.def().resource {
        form.push(("resource", resource));
    }
    let response = match client.token_request(&form).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(upstream, error = %e, "connect callback: the code was not redeemed");
            let why = match &e {
                super::UpstreamAuthError::Refused { error, .. } => shown_code(error),
                _ => "unreachable or unusable".to_owned(),
            };
            return error_page(
                StatusCode::BAD_GATEWAY,
                &format!("The authorization server of `{upstream}` did not give a token ({why})."),
            );
        }
    };
    let tokens = Tokens {
        access_token: response.access_token.expose().to_owned(),
        refresh_token: response
            .refresh_token
            .as_ref()
            .map(|r| r.expose().to_owned()),
        expires_at: response.expires_in.map(|s| now().saturating_add(s)),
        scope: response.scope.clone(),
    };
    let owner = Owner {
        issuer: &state.iss,
        subject: &state.sub,
        upstream,
    };
    if let Err(e) = connections.vault.put(owner, &tokens).await {
        tracing::warn!(upstream, error = %e, "connect callback: the tokens were not stored");
        return error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The connection could not be stored; try again later.",
        );
    }
    tracing::info!(upstream, "per-user connection stored");
    connections.completed(&state.id).await;
    page(
        StatusCode::OK,
        &format!("{upstream} connected"),
        &format!(
            "<h1 id=\"connected\">Connected</h1>\n<div class=\"box\"><p>{srv} can now use your <strong>{up}</strong> account for <strong>{sub}</strong>.</p><p>Return to your MCP client and try again. You can close this page.</p></div>",
            srv = esc(connections.server_name),
            up = esc(upstream),
            sub = esc(&state.sub),
        ),
        "'none'",
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn html_is_escaped_and_codes_are_shown_only_when_plain() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(shown_code("access_denied"), "access_denied");
        assert_eq!(shown_code("<script>"), "(unreadable)");
        assert_eq!(shown_code(&"x".repeat(65)), "(unreadable)");
    }

    #[test]
    fn duplicate_or_oversized_parameters_are_refused() {
        assert!(params(b"code=a&state=b").is_some());
        assert!(params(b"code=a&code=b").is_none());
        assert!(params(&vec![b'a'; MAX_QUERY_BYTES + 1]).is_none());
    }

    #[test]
    fn pkce_is_s256_of_the_verifier() {
        // BASE64URL(SHA-256(verifier)), as computed by another implementation.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mJ92K1qXQK5mIlswYO0D5h3tJW_lKjO"),
            "_4_4VjIHyjsv3JeDR6wW4KXgKDNfFBIlrZigEC-qkGU"
        );
    }

    #[test]
    fn used_states_are_refused() {
        let used = UsedStates::default();
        assert!(used.take("a"));
        assert!(!used.take("a"));
        assert!(used.take("b"));
    }

    use crate::def::{ClientAuthDef, OAuthDef, OAuthGrant};
    use crate::upstream_auth::OAuthClient;
    use crate::upstream_auth::vault::{Keys, Vault};

    static DEF: OAuthDef = OAuthDef {
        grant: OAuthGrant::UserAuthorization,
        issuer: None,
        issuer_env: None,
        // Nothing listens there: a redemption fails, after every check passed.
        token_url: Some("http://127.0.0.1:9/token"),
        token_url_env: None,
        authorization_url: Some("http://127.0.0.1:9/authorize?tenant=a"),
        authorization_url_env: None,
        client_id: "bmm-test-client",
        client_id_env: None,
        client_auth: ClientAuthDef::None,
        audience: None,
        resource: Some("https://api.example/"),
        scopes: &["repo", "user"],
    };

    fn connections(dir: &std::path::Path) -> Arc<Connections> {
        let vault = Vault::open(
            dir.join("v.sqlite").to_str().unwrap(),
            None,
            Keys::from_raw([7; 32], &[]),
        )
        .unwrap();
        let mut clients = HashMap::new();
        for id in ["github", "gitlab"] {
            let client = OAuthClient::new(
                id,
                &DEF,
                &crate::secrets::Secrets::default(),
                &|_| None,
                reqwest::Client::new(),
                false,
            )
            .unwrap();
            clients.insert(id, Arc::new(client));
        }
        Arc::new(Connections::for_tests(
            vault,
            clients,
            "https://mcp.example",
            None,
        ))
    }

    fn start_link(c: &Connections, upstream: &str, exp: u64) -> String {
        let claims = StartClaims {
            iss: "https://as.example".to_owned(),
            sub: "alice <script>".to_owned(),
            exp,
            id: "e1".to_owned(),
        };
        let url = c.start_url(upstream, &claims).unwrap();
        url.strip_prefix("https://mcp.example").unwrap().to_owned()
    }

    async fn send(
        c: &Arc<Connections>,
        method: Method,
        uri: &str,
        cookie: Option<&str>,
        body: &str,
    ) -> (StatusCode, http::HeaderMap, String) {
        use http_body_util::BodyExt;
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(value) = cookie {
            request = request.header(header::COOKIE, format!("other=1; {COOKIE}={value}"));
        }
        let request = request.body(Bytes::from(body.to_owned())).unwrap();
        let response = handle(Arc::clone(c), request).await;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    fn form_value(page: &str, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = page.find(&marker).unwrap() + marker.len();
        let end = start + page[start..].find('"').unwrap();
        page[start..end].replace("&amp;", "&")
    }

    /// Walks the start page and its POST with `cookie`; returns the 303's Location.
    async fn authorize_location(c: &Arc<Connections>, cookie: &str) -> url::Url {
        let link = start_link(c, "github", now() + 60);
        let (status, _, page) = send(c, Method::GET, &link, Some(cookie), "").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let body = format!(
            "t={}&csrf={}",
            form_value(&page, "t"),
            form_value(&page, "csrf")
        );
        let (status, headers, page) = send(
            c,
            Method::POST,
            "/connections/github/start",
            Some(cookie),
            &body,
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
        url::Url::parse(headers[header::LOCATION].to_str().unwrap()).unwrap()
    }

    const COOKIE_A: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const COOKIE_B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

    #[tokio::test]
    async fn the_start_page_hides_the_caller_sets_the_cookie_and_redirects_with_pkce() {
        let dir = tempfile::tempdir().unwrap();
        let c = connections(dir.path());
        let link = start_link(&c, "github", now() + 60);
        let (status, headers, page) = send(&c, Method::GET, &link, None, "").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        // Who generated the link is not shown to whoever opened it.
        assert!(
            !page.contains("alice") && !page.contains("https://as.example"),
            "{page}"
        );
        assert!(page.contains("Test Server") && page.contains("github"));
        let set = headers[header::SET_COOKIE].to_str().unwrap();
        for flag in [
            "bmm_connect=",
            "Path=/connections/",
            "HttpOnly",
            "SameSite=Lax",
            "Secure",
        ] {
            assert!(set.contains(flag), "{set}");
        }
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.contains("form-action 'self' http://127.0.0.1:9;"),
            "{csp}"
        );
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        // A browser that has a cookie keeps it.
        let (_, headers, _) = send(&c, Method::GET, &link, Some(COOKIE_A), "").await;
        assert!(headers.get(header::SET_COOKIE).is_none());

        let location = authorize_location(&c, COOKIE_A).await;
        assert_eq!(location.path(), "/authorize");
        let q: HashMap<String, String> = location.query_pairs().into_owned().collect();
        assert_eq!(q["tenant"], "a", "the endpoint's own query is kept");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "bmm-test-client");
        assert_eq!(
            q["redirect_uri"],
            "https://mcp.example/connections/github/callback"
        );
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["code_challenge"].len(), 43);
        assert_eq!(q["scope"], "repo user");
        assert_eq!(q["resource"], "https://api.example/");
        // The verifier never leaves in the redirect: the state is sealed.
        let state = connections_state(&c, "github", &q["state"]);
        assert_eq!(pkce_challenge(&state.v), q["code_challenge"]);
        assert!(!location.as_str().contains(&state.v));
        assert_eq!(state.sub, "alice <script>");
        assert_eq!(state.c, sha256_hex(COOKIE_A));
    }

    fn connections_state(c: &Connections, upstream: &str, sealed: &str) -> StateClaims {
        let plain = c
            .vault
            .keys()
            .open(&state_purpose(upstream), sealed)
            .unwrap();
        serde_json::from_slice(&plain).unwrap()
    }

    #[tokio::test]
    async fn start_and_callback_refuse_tampered_expired_or_foreign_state() {
        let dir = tempfile::tempdir().unwrap();
        let c = connections(dir.path());
        // Start links: altered, expired, or sealed for another upstream.
        let good = start_link(&c, "github", now() + 60);
        let mut altered = good.clone().into_bytes();
        let last = altered.len() - 3;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        let expired = start_link(&c, "github", now() - 1);
        let foreign = start_link(&c, "gitlab", now() + 60).replace("/gitlab/", "/github/");
        for (link, why) in [
            (altered.as_str(), "not valid"),
            (expired.as_str(), "expired"),
            (foreign.as_str(), "not valid"),
            ("/connections/github/start", "incomplete"),
            ("/connections/github/start?t=a&t=b", "malformed"),
        ] {
            let (status, headers, page) = send(&c, Method::GET, link, Some(COOKIE_A), "").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{link}");
            assert!(page.contains(why), "{link}: {page}");
            assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        }
        let (status, _, _) = send(&c, Method::GET, "/connections/nope/start?t=x", None, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, headers, _) =
            send(&c, Method::PUT, "/connections/github/start", None, "").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[header::ALLOW], "GET, POST");

        // Callback states: altered, expired, of another upstream, or not sealed at all.
        let location = authorize_location(&c, COOKIE_A).await;
        let q: HashMap<String, String> = location.query_pairs().into_owned().collect();
        let mut state = connections_state(&c, "github", &q["state"]);
        state.exp = now() - 1;
        let expired = c
            .vault
            .keys()
            .seal(
                &state_purpose("github"),
                &serde_json::to_vec(&state).unwrap(),
            )
            .unwrap();
        state.exp = now() + 60;
        let foreign = c
            .vault
            .keys()
            .seal(
                &state_purpose("gitlab"),
                &serde_json::to_vec(&state).unwrap(),
            )
            .unwrap();
        let mut altered = q["state"].clone().into_bytes();
        altered[20] = if altered[20] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        for (sealed, why) in [
            (altered.as_str(), "not valid"),
            (expired.as_str(), "expired"),
            (foreign.as_str(), "not valid"),
            ("plain", "not valid"),
        ] {
            let uri = format!("/connections/github/callback?code=c&state={sealed}");
            let (status, _, page) = send(&c, Method::GET, &uri, Some(COOKIE_A), "").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{why}");
            assert!(page.contains(why), "{page}");
        }
        let uri = "/connections/github/callback?error=access_denied&state=x";
        let (status, _, page) = send(&c, Method::GET, uri, Some(COOKIE_A), "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(page.contains("access_denied"), "{page}");
        let uri = "/connections/github/callback?error=%3Cb%3Ex&state=x";
        let (_, _, page) = send(&c, Method::GET, uri, Some(COOKIE_A), "").await;
        assert!(
            !page.contains("<b>") && page.contains("unreadable"),
            "{page}"
        );
        assert_eq!(c.vault.keys().current_id().len(), 16);
    }

    #[tokio::test]
    async fn the_callback_needs_the_browser_that_started() {
        let dir = tempfile::tempdir().unwrap();
        let c = connections(dir.path());
        // The POST: no cookie, or a form from another browser's page.
        let link = start_link(&c, "github", now() + 60);
        let (_, _, page) = send(&c, Method::GET, &link, Some(COOKIE_A), "").await;
        let body = format!(
            "t={}&csrf={}",
            form_value(&page, "t"),
            form_value(&page, "csrf")
        );
        let (status, _, page) =
            send(&c, Method::POST, "/connections/github/start", None, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(page.contains("cookie is missing"), "{page}");
        let (status, _, page) = send(
            &c,
            Method::POST,
            "/connections/github/start",
            Some(COOKIE_B),
            &body,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(page.contains("does not belong to this browser"), "{page}");

        // The callback: another browser's cookie, or none.
        let location = authorize_location(&c, COOKIE_A).await;
        let q: HashMap<String, String> = location.query_pairs().into_owned().collect();
        let uri = format!(
            "/connections/github/callback?code=c&state={}",
            url::form_urlencoded::byte_serialize(q["state"].as_bytes()).collect::<String>()
        );
        for cookie in [Some(COOKIE_B), None] {
            let (status, _, page) = send(&c, Method::GET, &uri, cookie, "").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{cookie:?}");
            assert!(page.contains("did not start this connection"), "{page}");
        }
        // The right browser gets through every check (the token endpoint is down here),
        // and the state cannot be used twice.
        let (status, _, page) = send(&c, Method::GET, &uri, Some(COOKIE_A), "").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{page}");
        let (status, _, page) = send(&c, Method::GET, &uri, Some(COOKIE_A), "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(page.contains("already used"), "{page}");
        let owner = Owner {
            issuer: "https://as.example",
            subject: "alice <script>",
            upstream: "github",
        };
        assert!(c.vault.get(owner).await.unwrap().is_none());
    }

    /// The sign-in client at the link's issuer: endpoints given (nothing listens there).
    static SIGN_IN: OAuthDef = OAuthDef {
        grant: OAuthGrant::UserAuthorization,
        issuer: Some("https://as.example"),
        issuer_env: None,
        token_url: Some("http://127.0.0.1:9/mcp-token"),
        token_url_env: None,
        authorization_url: Some("http://127.0.0.1:9/mcp-authorize"),
        authorization_url_env: None,
        client_id: "bmm-connect",
        client_id_env: None,
        client_auth: ClientAuthDef::None,
        audience: None,
        resource: None,
        scopes: &[],
    };

    fn checked_connections(dir: &std::path::Path) -> Arc<Connections> {
        let plain = connections(dir);
        let plain = Arc::try_unwrap(plain).unwrap();
        let authenticator = bmm_middleware::AuthConfig::new(
            bmm_middleware::Resource::parse("https://mcp.example/mcp").unwrap(),
        )
        .issuer_with_jwks_uri(
            bmm_middleware::Issuer::parse("https://as.example").unwrap(),
            "https://as.example/jwks",
        )
        .unwrap()
        .build()
        .unwrap();
        let client = OAuthClient::new(
            "--connect-client-id",
            &SIGN_IN,
            &crate::secrets::Secrets::default(),
            &|_| None,
            reqwest::Client::new(),
            false,
        )
        .unwrap();
        let identity = Identity {
            authenticator,
            clients: HashMap::from([("https://as.example".to_owned(), Arc::new(client))]),
            resource: "https://mcp.example/mcp".to_owned(),
        };
        Arc::new(Connections::for_tests(
            plain.vault,
            plain.clients,
            "https://mcp.example",
            Some(identity),
        ))
    }

    fn verify_state(c: &Connections, sealed: &str) -> VerifyClaims {
        let plain = c.vault.keys().open(VERIFY_PURPOSE, sealed).unwrap();
        serde_json::from_slice(&plain).unwrap()
    }

    fn seal_verify(c: &Connections, state: &VerifyClaims) -> String {
        c.vault
            .keys()
            .seal(VERIFY_PURPOSE, &serde_json::to_vec(state).unwrap())
            .unwrap()
    }

    fn enc(text: &str) -> String {
        url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
    }

    #[tokio::test]
    async fn with_the_identity_check_the_start_post_signs_in_at_the_links_issuer_first() {
        let dir = tempfile::tempdir().unwrap();
        let c = checked_connections(dir.path());
        let link = start_link(&c, "github", now() + 60);
        let (status, headers, page) = send(&c, Method::GET, &link, Some(COOKIE_A), "").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(!page.contains("alice"), "{page}");
        assert!(page.contains("sign in to Test Server"), "{page}");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.contains("form-action 'self' http://127.0.0.1:9;"),
            "{csp}"
        );
        let location = authorize_location(&c, COOKIE_A).await;
        assert_eq!(
            location.path(),
            "/mcp-authorize",
            "the MCP AS, not the upstream's"
        );
        let q: HashMap<String, String> = location.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "bmm-connect");
        assert_eq!(q["redirect_uri"], "https://mcp.example/connections/verify");
        assert_eq!(q["resource"], "https://mcp.example/mcp");
        assert_eq!(q["code_challenge_method"], "S256");
        assert!(!q.contains_key("scope"));
        let state = verify_state(&c, &q["state"]);
        assert_eq!(pkce_challenge(&state.v), q["code_challenge"]);
        assert!(!location.as_str().contains(&state.v));
        assert_eq!(
            (state.up.as_str(), state.iss.as_str(), state.sub.as_str()),
            ("github", "https://as.example", "alice <script>")
        );
        assert_eq!(state.c, sha256_hex(COOKIE_A));
        // The verify state does not open as an upstream state, nor the other way round.
        assert!(
            c.vault
                .keys()
                .open(&state_purpose("github"), &q["state"])
                .is_none()
        );
    }

    #[tokio::test]
    async fn the_verify_state_is_sealed_bound_to_the_browser_and_used_once() {
        let dir = tempfile::tempdir().unwrap();
        let c = checked_connections(dir.path());
        let location = authorize_location(&c, COOKIE_A).await;
        let q: HashMap<String, String> = location.query_pairs().into_owned().collect();
        let good = q["state"].clone();
        let mut state = verify_state(&c, &good);
        state.exp = now() - 1;
        let expired = seal_verify(&c, &state);
        state.exp = now() + 60;
        state.up = "nope".to_owned();
        let unknown_upstream = seal_verify(&c, &state);
        let upstream_state = c
            .vault
            .keys()
            .seal(&state_purpose("github"), b"{}")
            .unwrap();
        let mut altered = good.clone().into_bytes();
        altered[20] = if altered[20] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        let iss = enc("https://as.example");
        for (sealed, cookie, extra, why) in [
            (altered.as_str(), Some(COOKIE_A), "", "not valid"),
            (upstream_state.as_str(), Some(COOKIE_A), "", "not valid"),
            (expired.as_str(), Some(COOKIE_A), "", "expired"),
            (unknown_upstream.as_str(), Some(COOKIE_A), "", "not valid"),
            (good.as_str(), Some(COOKIE_B), "", "did not start"),
            (good.as_str(), None, "", "cookie is missing"),
            (
                good.as_str(),
                Some(COOKIE_A),
                "&iss=https%3A%2F%2Fevil.example",
                "another authorization server",
            ),
        ] {
            let uri = format!("/connections/verify?code=c&state={}{extra}", enc(sealed));
            let (status, headers, page) = send(&c, Method::GET, &uri, cookie, "").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{why}: {page}");
            assert!(page.contains(why), "{why}: {page}");
            assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        }
        let (status, _, page) = send(
            &c,
            Method::GET,
            "/connections/verify?error=access_denied&state=x",
            Some(COOKIE_A),
            "",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(page.contains("access_denied"), "{page}");
        let (status, headers, _) =
            send(&c, Method::POST, "/connections/verify", Some(COOKIE_A), "").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[header::ALLOW], "GET");
        // Every check passes (the token endpoint is down here); then it is used up.
        let uri = format!("/connections/verify?code=c&state={}&iss={iss}", enc(&good));
        let (status, _, page) = send(&c, Method::GET, &uri, Some(COOKIE_A), "").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{page}");
        let (status, _, page) = send(&c, Method::GET, &uri, Some(COOKIE_A), "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(page.contains("already used"), "{page}");
        let owner = Owner {
            issuer: "https://as.example",
            subject: "alice <script>",
            upstream: "github",
        };
        assert!(c.vault.get(owner).await.unwrap().is_none());
        // Without the identity check there is no verify page.
        let plain = connections(tempfile::tempdir().unwrap().path());
        let (status, _, _) = send(&plain, Method::GET, &uri, Some(COOKIE_A), "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn only_the_links_user_passes() {
        let state = VerifyClaims {
            up: "github".to_owned(),
            iss: "https://as.example".to_owned(),
            sub: "alice".to_owned(),
            id: "e1".to_owned(),
            exp: now() + 60,
            nonce: "n".to_owned(),
            v: "v".to_owned(),
            c: "c".to_owned(),
        };
        assert!(same_user(&state, "https://as.example", Some("alice")));
        assert!(!same_user(&state, "https://as.example", Some("bob")));
        assert!(!same_user(&state, "https://as.example", Some("alice ")));
        assert!(!same_user(&state, "https://other.example", Some("alice")));
        assert!(!same_user(&state, "https://as.example", None));
    }
}
