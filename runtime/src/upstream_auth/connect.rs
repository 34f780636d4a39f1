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
//!    elicitation id). The page names the server, the upstream and the MCP caller (subject
//!    and issuer) and warns against links someone else sent; it has one button (a POST).
//!    The answer sets the CSRF cookie `bmm_connect` (32 random bytes; `HttpOnly`,
//!    `SameSite=Lax`, `Path=/connections/`, `Secure` when the origin is https), reusing a
//!    well-formed one the browser already has.
//! 2. `POST /connections/<upstream>/start` (form: `t`, `csrf`): `t` is checked again; the
//!    cookie must be present and `csrf` must be its SHA-256 (so the POST came from the page
//!    that browser was shown). The answer is a 303 to the upstream's authorization
//!    endpoint with `response_type=code`, `client_id`, `redirect_uri`
//!    (`<origin>/connections/<upstream>/callback`), `scope`, `state`, `code_challenge`
//!    (S256 of a fresh 32-byte verifier), `code_challenge_method=S256` and `resource`.
//!    `state` is sealed with the vault key for that upstream and holds the caller, the
//!    PKCE verifier, the SHA-256 of the cookie, the elicitation id, a random id and an
//!    expiry 10 minutes ahead.
//! 3. `GET /connections/<upstream>/callback?code&state`: the state must open for that
//!    upstream, be unexpired, unused in this process, and match this browser's cookie; the
//!    code is redeemed at the token endpoint (with `redirect_uri`, `code_verifier`,
//!    `resource`), the tokens are stored for the caller the state names, and the page says
//!    to return to the client. `error=` from the authorization server, a bad, expired,
//!    reused or foreign state, or a missing cookie is an HTML error page (400); a token
//!    endpoint failure is 502 naming the OAuth error code.
//! 4. Every answer: escaped HTML, `Cache-Control: no-store`, `Referrer-Policy: no-referrer`,
//!    `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff`, and the CSP
//!    `default-src 'none'; style-src 'unsafe-inline'; form-action 'self' <authorization
//!    server origin>; frame-ancestors 'none'; base-uri 'none'` (`form-action 'none'` on
//!    pages without a form). No token ever appears in a page, a header other than the
//!    redirect's own parameters, or a log line. Query strings are at most 8 KiB.
//!
//! (`start_and_callback_refuse_tampered_expired_or_foreign_state`,
//! `the_callback_needs_the_browser_that_started`, and over real sockets
//! `runtime/tests/connections.rs`.)

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

/// What the `state` parameter holds (rule 2).
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
    let Some(client) = connections.clients.get(upstream) else {
        return error_page(StatusCode::NOT_FOUND, "There is no such connection.");
    };
    let authorize = match client.authorization_endpoint().await {
        Ok(url) => url,
        Err(e) => {
            tracing::warn!(upstream, error = %e, "connect page: no authorization endpoint");
            return error_page(
                StatusCode::BAD_GATEWAY,
                &format!("The authorization server of `{upstream}` cannot be used right now."),
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
    let body = format!(
        "<h1>Connect <strong id=\"upstream\">{up}</strong> to <strong id=\"server\">{srv}</strong></h1>
<div class=\"box\">
<p>You are signed in to {srv} as <strong id=\"subject\">{sub}</strong> (issuer <code id=\"issuer\">{iss}</code>).</p>
<p>Connecting lets {srv} call <strong>{up}</strong> as your {up} account whenever <strong>{sub}</strong> uses its tools. You will sign in at {up} and approve there.</p>
<p class=\"warn\" id=\"warning\">Continue only if you asked for this yourself, as {sub}. A link someone else sent you would connect <em>your</em> {up} account to <em>their</em> identity.</p>
<form method=\"post\" action=\"/connections/{up_path}/start\">
<input type=\"hidden\" name=\"t\" value=\"{t}\">
<input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">
<button type=\"submit\" id=\"connect\">Connect {up}</button>
</form>
</div>",
        up = esc(upstream),
        up_path = esc(&percent_encoding::utf8_percent_encode(upstream, percent_encoding::NON_ALPHANUMERIC).to_string()),
        srv = esc(server),
        sub = esc(&claims.sub),
        iss = esc(&claims.iss),
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
        iss: claims.iss,
        sub: claims.sub,
        exp: now().saturating_add(CONNECT_TTL.as_secs()),
        id: claims.id,
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
    let mut response = page(
        StatusCode::SEE_OTHER,
        "Redirecting",
        "<p>Redirecting to the authorization server.</p>",
        "'none'",
    );
    match HeaderValue::from_str(authorize.as_str()) {
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
    if !connections.used.take(&state.nonce) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This connection attempt was already used: call the tool again for a new link.",
        );
    }
    let Some(client) = connections.clients.get(upstream) else {
        return error_page(StatusCode::NOT_FOUND, "There is no such connection.");
    };
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
    async fn the_start_page_names_the_caller_sets_the_cookie_and_redirects_with_pkce() {
        let dir = tempfile::tempdir().unwrap();
        let c = connections(dir.path());
        let link = start_link(&c, "github", now() + 60);
        let (status, headers, page) = send(&c, Method::GET, &link, None, "").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(
            page.contains("alice &lt;script&gt;") && !page.contains("<script>"),
            "{page}"
        );
        assert!(page.contains("https://as.example") && page.contains("Test Server"));
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
}
