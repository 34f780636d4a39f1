//! `/token` (authorization code, refresh token, client credentials and token exchange
//! grants) and `/revoke` (RFC 7009).
//!
//! Rules:
//! 1. Clients authenticate as registered: `none` (client_id only), `client_secret_basic`
//!    or `client_secret_post`, or `private_key_jwt` (an RFC 7523 client assertion whose
//!    `sub` names the client, verified by `client_auth`, its `jti` single use in the store
//!    across instances); secrets are compared as hashes in constant time; a request using
//!    two methods is refused. Neither
//!    endpoint fetches a Client ID Metadata Document: such a client is known from the
//!    document cache or as the owner of the code or refresh token presented, and is
//!    `invalid_client` otherwise (so these endpoints cannot be used to make bmm-as fetch).
//! 2. A code is redeemed once, within 60 s, by the client it was issued to, with the same
//!    `redirect_uri` (required when the authorization request carried one), a
//!    `code_verifier` whose S256 is the challenge, and (if given) the same `resource`. All
//!    of that is checked before the code is used up: a request that fails any check leaves
//!    the code redeemable. A replayed code (by a request that passes the checks) revokes
//!    the refresh tokens it produced.
//! 3. Refresh tokens rotate on every use. A used one presented again within the grace
//!    period (`--refresh-grace-secs`, default 5 s, decided by the store so every instance
//!    agrees) gets another live pair of the same family: MCP hosts refresh in parallel
//!    (tabs, agents, a retry after a timeout) and must not lose the grant for it. Presented
//!    later, it revokes the whole family (reuse detection). The trade-off against RFC 9700
//!    section 4.14: within the grace period a thief holding a used token gets a pair too,
//!    undetected, and that branch lives on like the legitimate one; detection still
//!    catches every presentation after the grace period. One used token is re-issued at
//!    most [`crate::store::GRACE_REISSUES`] (32) times within the grace period; past that
//!    it is answered `invalid_grant` and nothing is revoked (the pairs already issued
//!    live on). The new token is stored in the same transaction that uses the presented
//!    one, so a revocation of the grant (`/revoke`, the admin page, reuse detection) is
//!    never followed by a live token of it. `--refresh-grace-secs 0` is
//!    strict rotation. A refresh token presented by a client it was not issued to is
//!    answered `invalid_grant` and left alone (not used up, its family not revoked), like a
//!    code. `scope` may narrow the grant; `resource` must be the grant's.
//! 4. Access tokens take the format configured for their resource (`token_format` of its
//!    `[[resource_servers]]`, default `jwt`): RS256 JWTs with `iss`, `sub`, `aud` (the
//!    resource), `exp`, `iat`, `nbf`, `jti`, `scope`, `client_id`, plus `sid` (the grant,
//!    so introspection can tell a revoked grant; absent for `client_credentials`) and
//!    `cnf.jkt` when DPoP-bound; or opaque tokens, `bmo_` followed by 43 base64url
//!    characters (256 random bits), stored only as a SHA-256 hash with the same claims and
//!    their grant. Responses carry `Cache-Control: no-store`.
//! 5. Parameters come as `application/x-www-form-urlencoded` (the default, also when no
//!    `Content-Type` is given) or as an `application/json` object of strings with the same
//!    names. Any other media type is refused with 415 and an `invalid_request` body; a
//!    parameter given twice, a non-string JSON value or a malformed body with 400
//!    `invalid_request`.
//! 6. Revocation (RFC 7009) acts only on a token issued to the authenticated client; a
//!    token of another client is treated like an unknown one: 200, and nothing happens. A
//!    refresh token revokes its grant (every refresh token and opaque access token of it);
//!    an opaque access token revokes itself and its grant.
//! 7. `client_credentials` (the MCP client-credentials extension, SEP-1046) is for
//!    confidential clients (a secret or `private_key_jwt`) configured with that grant;
//!    others get `unauthorized_client`. `resource` is required and must be one this server
//!    issues tokens for (the token's `aud`); `scope` may only narrow the client's
//!    configured scope (default: the default scopes). The token's `sub` is the client id;
//!    no refresh token is issued (the client authenticates again instead).
//! 8. DPoP (RFC 9449, see `dpop`): a request with a valid `DPoP` proof gets an access token
//!    bound to the proof's key (`cnf.jkt`) and `token_type: DPoP`; without one, `Bearer`.
//!    A public client's refresh tokens (the whole family) are bound to the key of the
//!    proof at the code exchange; refreshing them needs a proof of that key (none:
//!    `invalid_dpop_proof`; another key: `invalid_grant`), checked before the token is
//!    used up. A confidential client's refresh tokens are not bound (RFC 9449 section 5):
//!    each refresh binds its access token to that request's proof, if any.
//! 9. Token exchange (RFC 8693, `urn:ietf:params:oauth:grant-type:token-exchange`) is for
//!    the configured resource servers with a `token_exchange` policy; `exchange` checks
//!    it. Its tokens are JWTs (whatever their resource's `token_format`) with an `act`
//!    claim, at most as long-lived as their subject token; no refresh token.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::OAuthError;
use crate::ratelimit::Bucket;
use crate::store::{Client, OpaqueToken, RefreshRecord, RefreshUse, StoredCode};
use crate::{AppState, authorize, client_auth, clients, now, random_token, secure_eq, sha256_hex};
use bmm_core::canonical_resource;

/// Rule 5: the request's parameters, from a form or a JSON body.
pub(crate) fn body_params(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<HashMap<String, String>, OAuthError> {
    let body = body.map_err(|e| OAuthError::new(e.status(), "invalid_request", e.body_text()))?;
    let media = match headers.get(header::CONTENT_TYPE) {
        None => return form_params(&body),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .unwrap_or_default(),
    };
    match media.as_str() {
        "application/x-www-form-urlencoded" => form_params(&body),
        "application/json" => json_params(&body),
        _ => Err(OAuthError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "send the parameters as application/x-www-form-urlencoded (or application/json)",
        )),
    }
}

/// A JSON object of string parameters, refusing a name given twice.
struct JsonParams(HashMap<String, String>);

impl<'de> serde::Deserialize<'de> for JsonParams {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = JsonParams;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object whose values are strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonParams, A::Error> {
                let mut out = HashMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: String = map.next_value()?;
                    if out.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!(
                            "the `{key}` parameter is given more than once"
                        )));
                    }
                    out.insert(key, value);
                }
                Ok(JsonParams(out))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

fn json_params(body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let map = serde_json::from_slice::<JsonParams>(body)
        .map(|p| p.0)
        .map_err(|e| {
            OAuthError::invalid_request(format!(
                "the JSON body must be an object of string parameters: {e}"
            ))
        })?;
    refuse_nul(&map)?;
    Ok(map)
}

/// No parameter may hold a NUL byte: no legitimate value has one, and PostgreSQL text
/// cannot store it (the lookup would fail as a server error instead of a refusal).
fn refuse_nul(map: &HashMap<String, String>) -> Result<(), OAuthError> {
    match map
        .iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        Some((k, _)) => Err(OAuthError::invalid_request(format!(
            "the `{}` parameter contains a NUL byte",
            k.replace('\0', "\\0")
        ))),
        None => Ok(()),
    }
}

fn form_params(form: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut map = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(form) {
        if map.insert(k.to_string(), v.to_string()).is_some() {
            return Err(OAuthError::invalid_request(format!(
                "the `{k}` parameter is given more than once"
            )));
        }
    }
    refuse_nul(&map)?;
    Ok(map)
}

/// Rule 1: which client is calling, authenticated as it registered.
/// The client the code or refresh token a request presents was issued to, if it is live
/// (`token_param`: the parameter holding a refresh token, `refresh_token` or `token`).
async fn presented_owner(
    state: &AppState,
    params: &HashMap<String, String>,
    token_param: &str,
) -> Option<String> {
    if params.get("grant_type").map(String::as_str) == Some("authorization_code") {
        let code = params.get("code")?;
        return state
            .store()
            .code(&sha256_hex(code))
            .await
            .ok()
            .flatten()
            .map(|c| c.client_id);
    }
    let token = params.get(token_param)?;
    state
        .store()
        .peek_refresh(
            &sha256_hex(token),
            now(),
            state.inner.settings.refresh_grace_secs,
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.client_id)
}

/// The client id and secret of an `Authorization: Basic` header (RFC 6749 section 2.3.1:
/// both form-urlencoded), if there is one.
pub(crate) fn basic_credentials(
    headers: &HeaderMap,
) -> Result<Option<(String, String)>, OAuthError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .map(|b64| {
            let decoded = STANDARD
                .decode(b64.trim())
                .map_err(|_| OAuthError::invalid_client("malformed Basic credentials"))?;
            let text = String::from_utf8(decoded)
                .map_err(|_| OAuthError::invalid_client("malformed Basic credentials"))?;
            let (id, secret) = text
                .split_once(':')
                .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_default()
            };
            Ok::<_, OAuthError>((decode(id), decode(secret)))
        })
        .transpose()
}

async fn authenticate(
    state: &AppState,
    caller: std::net::IpAddr,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    owner: Option<&str>,
) -> Result<Client, OAuthError> {
    let basic = basic_credentials(headers)?;
    if params.contains_key("client_assertion") || params.contains_key("client_assertion_type") {
        if basic.is_some() || params.contains_key("client_secret") {
            return Err(OAuthError::invalid_request(
                "use one client authentication method, not two",
            ));
        }
        return authenticate_assertion(state, caller, params).await;
    }
    let (client_id, secret, method) =
        match (&basic, params.get("client_id"), params.get("client_secret")) {
            (Some((id, secret)), form_id, None) => {
                if form_id.is_some_and(|f| f != id) {
                    return Err(OAuthError::invalid_client(
                        "client_id differs between the Authorization header and the body",
                    ));
                }
                (id.clone(), Some(secret.clone()), "client_secret_basic")
            }
            (Some(_), _, Some(_)) => {
                return Err(OAuthError::invalid_request(
                    "use one client authentication method, not two",
                ));
            }
            (None, Some(id), Some(secret)) => {
                (id.clone(), Some(secret.clone()), "client_secret_post")
            }
            (None, Some(id), None) => (id.clone(), None, "none"),
            (None, None, _) => {
                return Err(OAuthError::invalid_client(
                    "client authentication is required (client_id)",
                ));
            }
        };
    let client = clients::find_known(state, &client_id, owner)
        .await?
        .ok_or_else(|| OAuthError::invalid_client("unknown client"))?;
    if client.token_endpoint_auth_method == "private_key_jwt" {
        return Err(OAuthError::invalid_client(
            "this client must authenticate with a client assertion (private_key_jwt)",
        ));
    }
    match (&client.secret_sha256, secret) {
        (None, None) => Ok(client),
        (None, Some(_)) => Err(OAuthError::invalid_client(
            "this public client has no secret",
        )),
        (Some(_), None) => Err(OAuthError::invalid_client(
            "this client must authenticate with its secret",
        )),
        (Some(expected), Some(given)) => {
            let registered = client.token_endpoint_auth_method.as_str();
            let method_ok = registered == method
                || (registered.starts_with("client_secret_")
                    && method.starts_with("client_secret_"));
            if method_ok && secure_eq(expected, &sha256_hex(&given)) {
                Ok(client)
            } else {
                Err(OAuthError::invalid_client("client authentication failed"))
            }
        }
    }
}

/// Rule 1, `private_key_jwt`: the client the assertion's `sub` names, if the assertion
/// verifies with its keys and its `jti` was not used before (on any instance).
async fn authenticate_assertion(
    state: &AppState,
    caller: std::net::IpAddr,
    params: &HashMap<String, String>,
) -> Result<Client, OAuthError> {
    if params.get("client_assertion_type").map(String::as_str) != Some(client_auth::ASSERTION_TYPE)
    {
        return Err(OAuthError::invalid_client(format!(
            "client_assertion_type must be {}",
            client_auth::ASSERTION_TYPE
        )));
    }
    let text = params
        .get("client_assertion")
        .ok_or_else(|| OAuthError::invalid_client("client_assertion is required"))?;
    let assertion = client_auth::Assertion::parse(text)?;
    let client_id = assertion
        .subject()
        .ok_or_else(|| {
            OAuthError::invalid_client("client assertion refused: `sub` must be the client id")
        })?
        .to_owned();
    if params.get("client_id").is_some_and(|id| *id != client_id) {
        return Err(OAuthError::invalid_client(
            "client_id differs from the client assertion's `sub`",
        ));
    }
    let client = clients::find_known(state, &client_id, None)
        .await?
        .ok_or_else(|| OAuthError::invalid_client("unknown client"))?;
    let issuer = state.inner.settings.issuer.as_str();
    let base = issuer.trim_end_matches('/');
    let token_endpoint = format!("{base}/token");
    let revocation_endpoint = format!("{base}/revoke");
    let audiences = [
        token_endpoint.as_str(),
        issuer,
        revocation_endpoint.as_str(),
    ];
    let fetcher = client_auth::Fetcher {
        caller,
        configured: clients::is_preregistered(state, &client.client_id),
    };
    let verified = client_auth::verify(
        &state.inner.client_keys,
        &client,
        &assertion,
        &audiences,
        now(),
        fetcher,
    )
    .await?;
    if !state
        .store()
        .use_assertion_jti(&client.client_id, &verified.jti, verified.expires_at)
        .await?
    {
        tracing::warn!(client_id = %client.client_id, "client assertion replayed (its jti was used before)");
        let error =
            OAuthError::invalid_client("client assertion refused: its jti was already used");
        // A replay is audited under the client it names, whatever the request (the
        // client_credentials grant audits its own refusals).
        let kind = match params.get("grant_type").map(String::as_str) {
            Some("client_credentials") => None,
            Some("authorization_code") => Some("code_redeemed"),
            Some("refresh_token") => Some("refresh"),
            Some(_) => Some("token_issued"),
            None => Some("revocation"),
        };
        if let Some(kind) = kind {
            let replayed = crate::audit::event(kind)
                .client(&client.client_id)
                .outcome(error.code())
                .detail(error.description());
            crate::audit::record(state, replayed).await;
        }
        return Err(error);
    }
    Ok(client)
}

/// Stores a new refresh token of `family` and returns it.
async fn new_refresh(
    state: &AppState,
    client_id: &str,
    subject: &str,
    scope: &str,
    resource: &str,
    family: &str,
    jkt: Option<&str>,
) -> Result<String, OAuthError> {
    let t = now();
    let refresh_token = random_token(32);
    state
        .store()
        .put_refresh(&RefreshRecord {
            token_sha256: sha256_hex(&refresh_token),
            family: family.to_owned(),
            client_id: client_id.to_owned(),
            subject: subject.to_owned(),
            scope: scope.to_owned(),
            resource: resource.to_owned(),
            issued_at: t,
            expires_at: t + state.inner.settings.refresh_token_ttl,
            jkt: jkt.map(str::to_owned),
        })
        .await?;
    Ok(refresh_token)
}

/// What a token response issues.
pub(crate) struct Issue<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) subject: &'a str,
    pub(crate) scope: &'a str,
    pub(crate) resource: &'a str,
    /// The refresh token (already stored), if any.
    pub(crate) refresh_token: Option<&'a str>,
    /// The grant (refresh family) the access token belongs to; `None` for
    /// `client_credentials`.
    pub(crate) family: Option<&'a str>,
    /// The DPoP key thumbprint the access token is bound to (rule 8).
    pub(crate) jkt: Option<&'a str>,
    /// Rule 9: what an exchanged token (RFC 8693) adds; `None` for the other grants.
    pub(crate) exchanged: Option<Exchanged<'a>>,
}

/// Rule 9: an exchanged token is a JWT whatever its resource's format (its `act` must
/// travel with it), lives at most until `not_after` (its subject token's `exp`), and its
/// response names the issued token type.
pub(crate) struct Exchanged<'a> {
    /// The `act` claim.
    pub(crate) act: &'a serde_json::Value,
    /// The latest `exp` allowed.
    pub(crate) not_after: u64,
}

/// Prefix of opaque access tokens (rule 4): never JWS-shaped.
pub(crate) const OPAQUE_PREFIX: &str = "bmo_";

/// The token response: a new access token in the resource's format (rule 4), and
/// `refresh_token` if any.
pub(crate) async fn token_response(
    state: &AppState,
    issue: Issue<'_>,
) -> Result<Response, OAuthError> {
    let t = now();
    let settings = &state.inner.settings;
    let mut exp = t + settings.access_token_ttl;
    let mut format = settings.token_format(issue.resource);
    if let Some(exchanged) = &issue.exchanged {
        exp = exp.min(exchanged.not_after);
        format = crate::config::TokenFormat::Jwt;
    }
    if exp <= t {
        return Err(OAuthError::invalid_grant("the subject token has expired"));
    }
    let ttl = exp - t;
    let jti = random_token(16);
    let access_token = match format {
        crate::config::TokenFormat::Jwt => {
            let mut claims = json!({
                "iss": settings.issuer,
                "sub": issue.subject,
                "aud": issue.resource,
                "exp": exp,
                "iat": t,
                "nbf": t,
                "jti": jti,
                "scope": issue.scope,
                "client_id": issue.client_id,
            });
            if let Some(family) = issue.family {
                claims["sid"] = json!(family);
            }
            if let Some(jkt) = issue.jkt {
                claims["cnf"] = json!({ "jkt": jkt });
            }
            if let Some(exchanged) = &issue.exchanged {
                claims["act"] = exchanged.act.clone();
            }
            state.inner.keys.sign(&claims)?
        }
        crate::config::TokenFormat::Opaque => {
            let token = format!("{OPAQUE_PREFIX}{}", random_token(32));
            state
                .store()
                .put_opaque(&OpaqueToken {
                    token_sha256: sha256_hex(&token),
                    family: issue.family.map(str::to_owned),
                    client_id: issue.client_id.to_owned(),
                    subject: issue.subject.to_owned(),
                    scope: issue.scope.to_owned(),
                    resource: issue.resource.to_owned(),
                    jti,
                    jkt: issue.jkt.map(str::to_owned),
                    issued_at: t,
                    expires_at: exp,
                })
                .await?;
            token
        }
    };
    let mut body = json!({
        "access_token": access_token,
        "token_type": if issue.jkt.is_some() { "DPoP" } else { "Bearer" },
        "expires_in": ttl,
        "scope": issue.scope,
    });
    if let Some(refresh_token) = issue.refresh_token {
        body["refresh_token"] = json!(refresh_token);
    }
    if issue.exchanged.is_some() {
        body["issued_token_type"] = json!(crate::exchange::ACCESS_TOKEN_TYPE);
    }
    let mut response = (StatusCode::OK, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

pub(crate) async fn token(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let params = body_params(&headers, body);
    // Rule 9: a token exchange is counted like an introspection (after authentication, per
    // resource server; only failures per address), every other request per address first.
    let exchange = params.as_ref().is_ok_and(|p| {
        p.get("grant_type").map(String::as_str) == Some(crate::exchange::GRANT_TYPE)
    });
    if !exchange && !state.inner.limiter.allow(peer.ip(), Bucket::Token) {
        return OAuthError::rate_limited().into_response();
    }
    let mut response = match grant(&state, peer.ip(), &headers, params).await {
        Ok(response) => response,
        Err(error) => {
            tracing::info!(error = error.code(), "token request refused");
            error.into_response()
        }
    };
    // Rule 8: with `--dpop-nonce`, every answer carries the nonce to use next.
    if state.inner.settings.dpop_nonce
        && let Some(value) = crate::dpop::nonce(&state).and_then(|n| HeaderValue::from_str(&n).ok())
    {
        response.headers_mut().insert("dpop-nonce", value);
    }
    response
}

async fn grant(
    state: &AppState,
    caller: std::net::IpAddr,
    headers: &HeaderMap,
    params: Result<HashMap<String, String>, OAuthError>,
) -> Result<Response, OAuthError> {
    let params = params?;
    // Rule 9: the caller is a resource server, authenticated as at `/introspect` before
    // anything else (its DPoP proof included) is looked at.
    if params.get("grant_type").map(String::as_str) == Some(crate::exchange::GRANT_TYPE) {
        return crate::exchange::exchange(state, caller, headers, &params).await;
    }
    // Rule 8: the proof is checked (and its jti used up) before anything of the grant is.
    let jkt = crate::dpop::check_token_request(state, headers).await?;
    let owner = presented_owner(state, &params, "refresh_token").await;
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let client = match authenticate(state, caller, headers, &params, owner.as_deref()).await {
        Ok(client) => client,
        Err(error) => {
            // A machine client has no user to notice a refusal: the trail keeps it (a
            // replayed assertion, a wrong key, an unknown client id).
            if get("grant_type") == Some("client_credentials") {
                let mut refused = crate::audit::event("client_credentials")
                    .address(caller)
                    .outcome(error.code())
                    .detail(error.description());
                // The client the request names, or else the one its assertion names.
                let named = get("client_id").map(str::to_owned).or_else(|| {
                    let text = get("client_assertion")?;
                    let assertion = client_auth::Assertion::parse(text).ok()?;
                    assertion.subject().map(str::to_owned)
                });
                if let Some(id) = named {
                    refused = refused.client(&id);
                }
                crate::audit::record(state, refused).await;
            }
            return Err(error);
        }
    };
    match get("grant_type") {
        Some("authorization_code") => {
            let code =
                get("code").ok_or_else(|| OAuthError::invalid_request("code is required"))?;
            let redirect_uri = get("redirect_uri");
            let verifier = get("code_verifier");
            let resource = get("resource");
            // Rule 2: every check runs before the code is used up.
            let check = |record: &StoredCode| {
                if record.client_id != client.client_id {
                    return Err(OAuthError::invalid_grant(
                        "the authorization code was issued to another client",
                    ));
                }
                match redirect_uri {
                    Some(r) if r != record.redirect_uri => {
                        return Err(OAuthError::invalid_grant(
                            "redirect_uri does not match the authorization request",
                        ));
                    }
                    None if record.redirect_uri_given => {
                        return Err(OAuthError::invalid_request(
                            "redirect_uri is required: the authorization request carried one",
                        ));
                    }
                    _ => {}
                }
                let verifier = verifier
                    .ok_or_else(|| OAuthError::invalid_grant("code_verifier is required (PKCE)"))?;
                let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
                if !(43..=128).contains(&verifier.len())
                    || !secure_eq(&computed, &record.code_challenge)
                {
                    return Err(OAuthError::invalid_grant(
                        "code_verifier does not match the code_challenge",
                    ));
                }
                same_resource(
                    resource,
                    &record.resource,
                    "resource does not match the authorization request",
                )
            };
            let client_id = client.client_id.as_str();
            let refused = |refusal: authorize::CodeRefusal| async move {
                match refusal {
                    authorize::CodeRefusal::Refused(error) => error,
                    authorize::CodeRefusal::Replayed(family) => {
                        if let Err(error) = state.store().revoke_family(&family).await {
                            return OAuthError::from(error);
                        }
                        tracing::warn!(client_id = %client_id, "authorization code replayed; its tokens are revoked");
                        let replayed = crate::audit::event("code_redeemed")
                            .client(client_id)
                            .address(caller)
                            .outcome("invalid_grant")
                            .detail("code replayed: the tokens it produced are revoked");
                        crate::audit::record(state, replayed).await;
                        OAuthError::invalid_grant(
                            "the authorization code was already used; the tokens it produced are revoked",
                        )
                    }
                    authorize::CodeRefusal::Unknown => {
                        OAuthError::invalid_grant("the authorization code is unknown or expired")
                    }
                }
            };
            let record = match authorize::check_code(state, code, check).await {
                Ok(r) => r,
                Err(refusal) => return Err(refused(refusal).await),
            };
            // The family's first refresh token is stored before the code is redeemed, so a
            // replay (on any instance) that revokes the family always finds it; a lost race
            // revokes it like any replay.
            let family = random_token(16);
            // Rule 8: a public client's refresh tokens are bound to its DPoP key.
            let refresh = new_refresh(
                state,
                &client.client_id,
                &record.subject,
                &record.scope,
                &record.resource,
                &family,
                jkt.as_deref().filter(|_| is_public(&client)),
            )
            .await?;
            if let Err(refusal) = authorize::redeem_code(state, &record, &family).await {
                if let Err(error) = state.store().revoke_family(&family).await {
                    tracing::error!(%error, "cannot revoke the refresh token of a lost redemption");
                }
                return Err(refused(refusal).await);
            }
            let response = token_response(
                state,
                Issue {
                    client_id: &client.client_id,
                    subject: &record.subject,
                    scope: &record.scope,
                    resource: &record.resource,
                    refresh_token: Some(&refresh),
                    family: Some(&family),
                    jkt: jkt.as_deref(),
                    exchanged: None,
                },
            )
            .await?;
            for kind in ["code_redeemed", "token_issued"] {
                let event = crate::audit::event(kind)
                    .client(&client.client_id)
                    .subject(&record.subject)
                    .resource(&record.resource)
                    .scope(&record.scope)
                    .address(caller)
                    .detail("authorization_code");
                crate::audit::record(state, event).await;
            }
            Ok(response)
        }
        Some("refresh_token") => {
            let token = get("refresh_token")
                .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
            let hash = sha256_hex(token);
            // Check the request against the grant before using the token up: a request with
            // a bad scope or resource must not burn the token (and trip reuse detection).
            let grace = state.inner.settings.refresh_grace_secs;
            let scope = match state.store().peek_refresh(&hash, now(), grace).await? {
                Some(record) => {
                    if record.client_id != client.client_id {
                        // Rule 3: another client's token is refused and left alone.
                        return Err(OAuthError::invalid_grant(
                            "the refresh token was issued to another client",
                        ));
                    }
                    same_resource(
                        get("resource"),
                        &record.resource,
                        "resource must be the one of the original grant",
                    )?;
                    bound_refresh(record.jkt.as_deref(), jkt.as_deref())?;
                    narrowed_scope(&record.scope, get("scope"))?
                }
                None => String::new(),
            };
            // The successor is stored by the same transaction that uses the presented
            // token (the store fills in its family, client, subject and resource): a
            // revocation of the grant running at the same time comes before it (no
            // successor) or after it (the successor is revoked too).
            let refresh = random_token(32);
            let issued_at = now();
            let successor = RefreshRecord {
                token_sha256: sha256_hex(&refresh),
                family: String::new(),
                client_id: client.client_id.clone(),
                subject: String::new(),
                scope: scope.clone(),
                resource: String::new(),
                issued_at,
                expires_at: issued_at + state.inner.settings.refresh_token_ttl,
                jkt: None,
            };
            let (record, how) = match state
                .store()
                .use_refresh(&hash, &client.client_id, issued_at, grace, &successor)
                .await?
            {
                // Within the grace period a used token gets another pair of the same
                // family (parallel refreshes by one client); see rule 3.
                RefreshUse::Fresh(r) => (r, "rotated"),
                RefreshUse::Grace(r) => (
                    r,
                    "presented again within the grace period: another pair of the same grant",
                ),
                RefreshUse::Reused(r) => {
                    tracing::warn!(client_id = %client.client_id, "refresh token reused; its family is revoked");
                    let reuse = crate::audit::event("refresh_reuse")
                        .client(&client.client_id)
                        .subject(&r.subject)
                        .resource(&r.resource)
                        .scope(&r.scope)
                        .address(caller)
                        .outcome("invalid_grant")
                        .detail("a used refresh token presented after the grace period: its grant is revoked");
                    crate::audit::record(state, reuse).await;
                    return Err(OAuthError::invalid_grant(
                        "the refresh token was already used; every token of this grant is revoked",
                    ));
                }
                RefreshUse::GraceSpent => {
                    return Err(OAuthError::invalid_grant(
                        "the refresh token was already re-issued too often within the grace period",
                    ));
                }
                RefreshUse::Invalid => {
                    return Err(OAuthError::invalid_grant(
                        "the refresh token is unknown, expired or revoked",
                    ));
                }
            };
            if record.client_id != client.client_id {
                return Err(OAuthError::invalid_grant(
                    "the refresh token was issued to another client",
                ));
            }
            // Checked before the use too; again for a token that became usable between.
            bound_refresh(record.jkt.as_deref(), jkt.as_deref())?;
            if let Err(error) = state
                .store()
                .mark_client_used(&client.client_id, now())
                .await
            {
                tracing::error!(%error, "cannot record that the client used a token");
            }
            let response = token_response(
                state,
                Issue {
                    client_id: &client.client_id,
                    subject: &record.subject,
                    scope: &scope,
                    resource: &record.resource,
                    refresh_token: Some(&refresh),
                    family: Some(&record.family),
                    jkt: jkt.as_deref(),
                    exchanged: None,
                },
            )
            .await?;
            let refreshed = crate::audit::event("refresh")
                .client(&client.client_id)
                .subject(&record.subject)
                .resource(&record.resource)
                .scope(&scope)
                .address(caller)
                .detail(how);
            crate::audit::record(state, refreshed).await;
            Ok(response)
        }
        Some("client_credentials") => {
            let (resource, scope) = machine_grant(state, &client, get("resource"), get("scope"))?;
            if let Err(error) = state
                .store()
                .mark_client_used(&client.client_id, now())
                .await
            {
                tracing::error!(%error, "cannot record that the client used a token");
            }
            tracing::info!(client_id = %client.client_id, resource = %resource, "client_credentials token issued");
            // Rule 7: the client acts for itself; no refresh token.
            let response = token_response(
                state,
                Issue {
                    client_id: &client.client_id,
                    subject: &client.client_id,
                    scope: &scope,
                    resource: &resource,
                    refresh_token: None,
                    family: None,
                    jkt: jkt.as_deref(),
                    exchanged: None,
                },
            )
            .await?;
            let issued = crate::audit::event("client_credentials")
                .client(&client.client_id)
                .subject(&client.client_id)
                .resource(&resource)
                .scope(&scope)
                .address(caller)
                .detail(&format!(
                    "token_endpoint_auth_method {}",
                    client.token_endpoint_auth_method
                ));
            crate::audit::record(state, issued).await;
            Ok(response)
        }
        Some(other) => Err(OAuthError::unsupported_grant_type(format!(
            "grant_type `{other}` is not supported"
        ))),
        None => Err(OAuthError::invalid_request("grant_type is required")),
    }
}

/// Whether `client` is public (no secret, no `private_key_jwt`): its refresh tokens are
/// bound to its DPoP key (rule 8, RFC 9449 section 5).
fn is_public(client: &Client) -> bool {
    client.secret_sha256.is_none() && client.token_endpoint_auth_method != "private_key_jwt"
}

/// Rule 8: a refresh token bound to `bound` needs a proof of that key (`proof`).
fn bound_refresh(bound: Option<&str>, proof: Option<&str>) -> Result<(), OAuthError> {
    match (bound, proof) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(crate::dpop::invalid_proof(
            "this refresh token is bound to a DPoP key: send a DPoP proof signed with it",
        )),
        (Some(bound), Some(proof)) if secure_eq(bound, proof) => Ok(()),
        (Some(_), Some(_)) => Err(OAuthError::invalid_grant(
            "the refresh token is bound to another DPoP key than the proof's",
        )),
    }
}

/// Rule 7: whether `client` may use `client_credentials`, and the token's resource and
/// scope.
fn machine_grant(
    state: &AppState,
    client: &Client,
    resource: Option<&str>,
    scope: Option<&str>,
) -> Result<(String, String), OAuthError> {
    let unauthorized =
        |why: &str| OAuthError::new(StatusCode::BAD_REQUEST, "unauthorized_client", why);
    if client.secret_sha256.is_none() && client.token_endpoint_auth_method != "private_key_jwt" {
        return Err(unauthorized(
            "client_credentials is only for confidential clients (a secret or private_key_jwt)",
        ));
    }
    if !client.grant_types.iter().any(|g| g == "client_credentials") {
        return Err(unauthorized(
            "this client is not configured for the client_credentials grant",
        ));
    }
    let settings = &state.inner.settings;
    let resource = resource.ok_or_else(|| {
        OAuthError::invalid_target("resource is required (RFC 8707): the URL of the MCP server")
    })?;
    let resource = match canonical_resource(resource) {
        Ok(r) if settings.resources.contains(&r) => r,
        _ => {
            return Err(OAuthError::invalid_target(
                "this authorization server does not issue tokens for that resource",
            ));
        }
    };
    let allowed = match &client.scope {
        Some(scope) => scope.clone(),
        None => settings.default_scopes.join(" "),
    };
    let scope = narrowed_scope(&allowed, scope).map_err(|_| {
        OAuthError::invalid_scope(format!(
            "this client may ask for these scopes only: `{allowed}`"
        ))
    })?;
    Ok((resource, scope))
}

/// The scope of a refreshed token: the grant's, or a subset the request asks for.
/// `Err(invalid_target)` when the request names a resource other than the grant's.
fn same_resource(
    asked: Option<&str>,
    granted: &str,
    message: &'static str,
) -> Result<(), OAuthError> {
    match asked {
        Some(resource) if canonical_resource(resource).ok().as_deref() != Some(granted) => {
            Err(OAuthError::invalid_target(message))
        }
        _ => Ok(()),
    }
}

fn narrowed_scope(granted: &str, asked: Option<&str>) -> Result<String, OAuthError> {
    let granted: Vec<&str> = granted.split(' ').filter(|s| !s.is_empty()).collect();
    match asked {
        None => Ok(granted.join(" ")),
        Some(asked) => {
            let asked: Vec<&str> = asked.split(' ').filter(|s| !s.is_empty()).collect();
            if let Some(extra) = asked.iter().find(|s| !granted.contains(s)) {
                return Err(OAuthError::invalid_scope(format!(
                    "scope `{extra}` was not granted; a refresh may only narrow"
                )));
            }
            Ok(asked.join(" "))
        }
    }
}

pub(crate) async fn revoke(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !state.inner.limiter.allow(peer.ip(), Bucket::Token) {
        return OAuthError::rate_limited().into_response();
    }
    let result = async {
        let params = body_params(&headers, body)?;
        let owner = presented_owner(&state, &params, "token").await;
        let client = authenticate(&state, peer.ip(), &headers, &params, owner.as_deref()).await?;
        let token = params
            .get("token")
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        // JWT access tokens are self-contained and expire on their own (introspection
        // reports those of a revoked grant inactive); refresh tokens and opaque access
        // tokens are revoked with their family. Unknown tokens, and tokens of another client
        // (rule 6, RFC 7009 2.1), are not an error (RFC 7009 2.2): nothing happens.
        let hash = sha256_hex(token);
        let mut revoked = state
            .store()
            .revoke_refresh(&hash, &client.client_id)
            .await?;
        // An opaque access token is revoked, with its grant (rule 6).
        if revoked.is_none() && token.starts_with(OPAQUE_PREFIX) {
            match state.store().revoke_opaque(&hash, &client.client_id).await? {
                Some(Some(family)) => {
                    state.store().revoke_family(&family).await?;
                    revoked = Some(family);
                }
                Some(None) => revoked = Some(String::new()),
                None => {}
            }
        }
        let mut event = crate::audit::event("revocation")
            .client(&client.client_id)
            .address(peer.ip());
        if revoked.is_none() {
            tracing::info!(client_id = %client.client_id, "revocation of an unknown token or one of another client ignored");
            event = event
                .outcome("ignored")
                .detail("an unknown token, a JWT access token or another client's: nothing revoked");
        }
        crate::audit::record(&state, event).await;
        Ok::<_, OAuthError>(())
    }
    .await;
    match result {
        Ok(()) => {
            let mut response = StatusCode::OK.into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => error.into_response(),
    }
}
