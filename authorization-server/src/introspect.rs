//! `POST /introspect`: OAuth 2.0 Token Introspection (RFC 7662) for the resource servers
//! of the config file (`[[resource_servers]]`, see `config`).
//!
//! Rules:
//! 1. Only a configured resource server may introspect, authenticated with
//!    `client_secret_basic` (its secret's SHA-256 compared in constant time) or
//!    `private_key_jwt` (an RFC 7523 assertion verified like at `/token`, `aud` the
//!    introspection endpoint URL, the issuer or the token endpoint URL, its `jti` single use
//!    across instances). Anything else (no credentials, `client_secret_post`, a client of
//!    `[[clients]]`, a wrong secret) is 401 `invalid_client`, like the token endpoint.
//! 2. The body is a form (or JSON object, as at `/token`) of at most
//!    [`MAX_BODY_BYTES`]; `token` is required (400 `invalid_request` without it);
//!    `token_type_hint` is ignored.
//! 3. Rate limits (429 `slow_down`): the caller is authenticated first. An authenticated
//!    resource server is not limited by the token endpoint's address bucket: its
//!    introspections count against its own `client_id`,
//!    [`crate::ratelimit::INTROSPECTIONS_PER_RESOURCE_SERVER`] a minute (it asks once per
//!    uncached token its callers present, so a flood of made-up tokens at it, or a busy
//!    server, must not look like an address flood here). Only failed authentications (and
//!    unreadable bodies) count against the caller's address, in the token endpoint's bucket;
//!    past it they answer 429 and are no longer audited. Authenticating before counting
//!    costs a SHA-256, or an assertion's checks (a signature only for a configured
//!    `private_key_jwt` resource server's id; key fetches bounded as rule 6 of
//!    `client_auth` says), no store access before a valid signature.
//! 4. The answer is `{"active": false}` and nothing else for a token that is unknown,
//!    malformed, longer than [`MAX_TOKEN_BYTES`], expired, not yet valid, revoked, a
//!    refresh token, issued by another issuer, or whose audience is not the calling
//!    resource server's resource (RFC 7662 section 4: nothing is disclosed to another
//!    resource server).
//! 5. JWT access tokens are verified with this server's published keys (RS256, `typ`
//!    `at+jwt`, a known `kid`), then `iss`, `exp`, `nbf` and `aud`; one carrying `sid` (the
//!    grant, rule 4 of `token`) is inactive once that grant is revoked (the store keeps a
//!    revoked grant a day, longer than any access token lives). `client_credentials` JWTs
//!    have no grant: they stay active until `exp`.
//! 6. Opaque tokens (`bmo_…`) are looked up by their SHA-256; they are revoked with their
//!    grant (`/revoke`, the admin page, reuse detection, a code replay) and on their own
//!    (`/revoke` of the token).
//! 7. An active answer holds `active`, `iss`, `sub`, `aud`, `exp`, `iat`, `client_id`,
//!    `scope`, `token_type` (`Bearer`, or `DPoP` for a bound token), `jti`,
//!    `cnf: {"jkt"}` for a DPoP-bound token, and `act` for an exchanged one (RFC 8693). Every answer carries `Cache-Control: no-store`.
//! 8. Audit: refusals are recorded (`introspection` events): a failed authentication
//!    (within the address's limit, rule 3), and a resource server asking about a token of
//!    another resource (a confused or compromised resource server). Successful introspections, and inactive answers for
//!    unknown or expired tokens, are not: they are the hot path of every opaque-token
//!    request, and carry nothing an operator acts on.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::config::ResourceServer;
use crate::error::OAuthError;
use crate::ratelimit::Bucket;
use crate::token::{OPAQUE_PREFIX, basic_credentials, body_params};
use crate::{AppState, client_auth, now, secure_eq, sha256_hex};

/// Largest request body accepted, in bytes (rule 2).
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest token looked at, in bytes (rule 4).
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Rule 1: the resource server the request authenticates as (also at `/token` for token
/// exchange, see `exchange`); on failure, the error and the client id the request named.
pub(crate) async fn authenticate(
    state: &AppState,
    caller: std::net::IpAddr,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<ResourceServer, (OAuthError, Option<String>)> {
    let servers = &state.inner.settings.resource_servers;
    let basic = basic_credentials(headers).map_err(|e| (e, None))?;
    let assertion =
        params.contains_key("client_assertion") || params.contains_key("client_assertion_type");
    if params.contains_key("client_secret") {
        return Err((
            OAuthError::invalid_client(
                "introspection accepts client_secret_basic or private_key_jwt, not client_secret_post",
            ),
            params.get("client_id").cloned(),
        ));
    }
    match (basic, assertion) {
        (Some(_), true) => Err((
            OAuthError::invalid_request("use one client authentication method, not two"),
            None,
        )),
        (Some((id, secret)), false) => {
            let refused = || {
                (
                    OAuthError::invalid_client("client authentication failed"),
                    Some(id.clone()),
                )
            };
            let rs = servers
                .iter()
                .find(|rs| rs.client_id == id)
                .ok_or_else(refused)?;
            match &rs.secret_sha256 {
                Some(expected) if secure_eq(expected, &sha256_hex(&secret)) => Ok(rs.clone()),
                _ => Err(refused()),
            }
        }
        (None, true) => authenticate_assertion(state, caller, params).await,
        (None, false) => Err((
            OAuthError::invalid_client(
                "client authentication is required (client_secret_basic or private_key_jwt)",
            ),
            params.get("client_id").cloned(),
        )),
    }
}

/// Rule 1, `private_key_jwt`.
async fn authenticate_assertion(
    state: &AppState,
    caller: std::net::IpAddr,
    params: &HashMap<String, String>,
) -> Result<ResourceServer, (OAuthError, Option<String>)> {
    if params.get("client_assertion_type").map(String::as_str) != Some(client_auth::ASSERTION_TYPE)
    {
        return Err((
            OAuthError::invalid_client(format!(
                "client_assertion_type must be {}",
                client_auth::ASSERTION_TYPE
            )),
            None,
        ));
    }
    let text = params.get("client_assertion").ok_or((
        OAuthError::invalid_client("client_assertion is required"),
        None,
    ))?;
    let assertion = client_auth::Assertion::parse(text).map_err(|e| (e, None))?;
    let id = assertion.subject().map(str::to_owned);
    let fail = |e: OAuthError| (e, id.clone());
    let rs = state
        .inner
        .settings
        .resource_servers
        .iter()
        .find(|rs| Some(&rs.client_id) == id.as_ref() && rs.secret_sha256.is_none())
        .ok_or_else(|| fail(OAuthError::invalid_client("client authentication failed")))?;
    if params.get("client_id").is_some_and(|c| *c != rs.client_id) {
        return Err(fail(OAuthError::invalid_client(
            "client_id differs from the client assertion's `sub`",
        )));
    }
    let issuer = state.inner.settings.issuer.as_str();
    let base = issuer.trim_end_matches('/');
    let introspection_endpoint = format!("{base}/introspect");
    let token_endpoint = format!("{base}/token");
    let audiences = [
        introspection_endpoint.as_str(),
        issuer,
        token_endpoint.as_str(),
    ];
    let fetcher = client_auth::Fetcher {
        caller,
        configured: true,
    };
    let verified = client_auth::verify(
        &state.inner.client_keys,
        &rs.as_client(),
        &assertion,
        &audiences,
        now(),
        fetcher,
    )
    .await
    .map_err(fail)?;
    // Resource servers' jtis have a key space of their own (`:` is refused in their ids).
    let used = state
        .store()
        .use_assertion_jti(
            &format!("rs:{}", rs.client_id),
            &verified.jti,
            verified.expires_at,
        )
        .await
        .map_err(|e| fail(e.into()))?;
    if !used {
        return Err(fail(OAuthError::invalid_client(
            "client assertion refused: its jti was already used",
        )));
    }
    Ok(rs.clone())
}

/// What a token is, as far as the introspecting resource server may know.
enum Found {
    /// Active for this resource server.
    Active(Value),
    /// Active, but for another resource (rule 4; audited).
    OtherResource,
    /// Anything else.
    Inactive,
}

/// Whether `aud` (a string or an array of strings) holds `resource`.
pub(crate) fn audience_has(aud: Option<&Value>, resource: &str) -> bool {
    match aud {
        Some(Value::String(a)) => a == resource,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(resource)),
        _ => false,
    }
}

/// Rules 4 to 7.
async fn look_up(state: &AppState, rs: &ResourceServer, token: &str) -> Result<Found, OAuthError> {
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Ok(Found::Inactive);
    }
    let t = now();
    let issuer = &state.inner.settings.issuer;
    if token.starts_with(OPAQUE_PREFIX) {
        let Some(record) = state.store().opaque(&sha256_hex(token), t).await? else {
            return Ok(Found::Inactive);
        };
        if record.resource != rs.resource {
            return Ok(Found::OtherResource);
        }
        let mut answer = json!({
            "active": true,
            "iss": issuer,
            "sub": record.subject,
            "aud": record.resource,
            "exp": record.expires_at,
            "iat": record.issued_at,
            "client_id": record.client_id,
            "scope": record.scope,
            "token_type": if record.jkt.is_some() { "DPoP" } else { "Bearer" },
            "jti": record.jti,
        });
        if let Some(jkt) = record.jkt {
            answer["cnf"] = json!({ "jkt": jkt });
        }
        return Ok(Found::Active(answer));
    }
    let Some(claims) = state.inner.keys.verify_access_token(token) else {
        return Ok(Found::Inactive);
    };
    let number = |name: &str| claims.get(name).and_then(Value::as_u64);
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let (Some(exp), Some(sub), Some(client_id)) = (number("exp"), text("sub"), text("client_id"))
    else {
        return Ok(Found::Inactive);
    };
    if text("iss") != Some(issuer.as_str()) || exp <= t || number("nbf").is_some_and(|n| n > t) {
        return Ok(Found::Inactive);
    }
    if !audience_has(claims.get("aud"), &rs.resource) {
        return Ok(Found::OtherResource);
    }
    if let Some(family) = text("sid")
        && state.store().family_revoked(family).await?
    {
        return Ok(Found::Inactive);
    }
    let jkt = claims
        .get("cnf")
        .and_then(|c| c.get("jkt"))
        .and_then(Value::as_str);
    let mut answer = json!({
        "active": true,
        "iss": issuer,
        "sub": sub,
        "aud": claims.get("aud"),
        "exp": exp,
        "iat": number("iat"),
        "client_id": client_id,
        "scope": text("scope").unwrap_or_default(),
        "token_type": if jkt.is_some() { "DPoP" } else { "Bearer" },
        "jti": text("jti"),
    });
    if let Some(jkt) = jkt {
        answer["cnf"] = json!({ "jkt": jkt });
    }
    if let Some(act) = claims.get("act").filter(|a| a.is_object()) {
        answer["act"] = act.clone();
    }
    Ok(Found::Active(answer))
}

fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// `POST <issuer>/introspect`.
pub(crate) async fn introspect(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Rule 3: only failures count against the address (the token endpoint's bucket).
    let failed = || !state.inner.limiter.allow(peer.ip(), Bucket::Token);
    let params = match body_params(&headers, body) {
        Ok(params) => params,
        Err(_) if failed() => return OAuthError::rate_limited().into_response(),
        Err(error) => return error.into_response(),
    };
    let rs = match authenticate(&state, peer.ip(), &headers, &params).await {
        Ok(rs) => rs,
        Err(_) if failed() => {
            tracing::info!("introspection refused: too many failed authentications");
            return OAuthError::rate_limited().into_response();
        }
        Err((error, named)) => {
            tracing::info!(error = error.code(), "introspection refused");
            let mut event = crate::audit::event("introspection")
                .address(peer.ip())
                .outcome(error.code())
                .detail(error.description());
            if let Some(id) = named {
                event = event.client(&id);
            }
            crate::audit::record(&state, event).await;
            return error.into_response();
        }
    };
    if !state.inner.limiter.allow_resource_server(&rs.client_id) {
        tracing::warn!(client_id = %rs.client_id, "a resource server is over its introspection rate limit");
        return OAuthError::rate_limited().into_response();
    }
    let Some(token) = params.get("token") else {
        return OAuthError::invalid_request("token is required").into_response();
    };
    let inactive = || no_store(Json(json!({"active": false})).into_response());
    match look_up(&state, &rs, token).await {
        Ok(Found::Active(answer)) => no_store(Json(answer).into_response()),
        Ok(Found::Inactive) => inactive(),
        Ok(Found::OtherResource) => {
            tracing::warn!(client_id = %rs.client_id, "a resource server introspected a token of another resource");
            let event = crate::audit::event("introspection")
                .client(&rs.client_id)
                .resource(&rs.resource)
                .address(peer.ip())
                .outcome("other_resource")
                .detail("a token of another resource: answered inactive");
            crate::audit::record(&state, event).await;
            inactive()
        }
        Err(error) => error.into_response(),
    }
}
