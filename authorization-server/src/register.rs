//! RFC 7591 dynamic client registration, and the redirect URI rules every client follows.
//!
//! Rules:
//! 1. Redirect URIs are `https` URLs, `http` URLs on a loopback host (any port, RFC 8252
//!    section 7.3), or private-use schemes (`com.example.app:/cb`, `claude://cb`); no
//!    fragment; never `javascript:`, `data:`, `file:` or the like.
//! 2. Public clients register with `token_endpoint_auth_method: none`; confidential ones
//!    (`client_secret_basic`, `client_secret_post`) get a generated secret, stored hashed.
//! 3. Only the `authorization_code` and `refresh_token` grants and the `code` response type
//!    are accepted.
//! 4. Client ids look like `bmm_<random>`.

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

const FORBIDDEN_SCHEMES: &[&str] = &[
    "javascript",
    "data",
    "file",
    "vbscript",
    "about",
    "blob",
    "ftp",
    "ws",
    "wss",
];

/// Checks one redirect URI against rule 1.
pub fn check_redirect_uri(uri: &str) -> Result<(), OAuthError> {
    let url = Url::parse(uri)
        .map_err(|_| OAuthError::invalid_redirect_uri(format!("`{uri}` is not an absolute URI")))?;
    if url.fragment().is_some() {
        return Err(OAuthError::invalid_redirect_uri(format!(
            "`{uri}` must not contain a fragment"
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
        scheme if FORBIDDEN_SCHEMES.contains(&scheme) => Err(OAuthError::invalid_redirect_uri(
            format!("`{uri}`: the `{scheme}:` scheme is never a redirect target"),
        )),
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
    match register_client(&state, body) {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn register_client(
    state: &AppState,
    body: Result<Json<RegistrationRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, OAuthError> {
    let Json(req) = body.map_err(|e| {
        OAuthError::invalid_client_metadata(format!(
            "the registration body is not valid JSON metadata: {}",
            e.body_text()
        ))
    })?;
    let redirect_uris = req.redirect_uris.clone().unwrap_or_default();
    if redirect_uris.is_empty() {
        return Err(OAuthError::invalid_redirect_uri(
            "redirect_uris is required and must not be empty",
        ));
    }
    if redirect_uris.len() > 20 {
        return Err(OAuthError::invalid_client_metadata(
            "at most 20 redirect_uris",
        ));
    }
    for uri in &redirect_uris {
        if uri.len() > 2048 {
            return Err(OAuthError::invalid_redirect_uri(
                "a redirect URI is longer than 2048 characters",
            ));
        }
        check_redirect_uri(uri)?;
    }
    let method = req
        .token_endpoint_auth_method
        .clone()
        .unwrap_or_else(|| "client_secret_basic".to_owned());
    if !matches!(
        method.as_str(),
        "none" | "client_secret_basic" | "client_secret_post"
    ) {
        return Err(OAuthError::invalid_client_metadata(format!(
            "token_endpoint_auth_method `{method}` is not supported (none, client_secret_basic, client_secret_post)"
        )));
    }
    let grant_types = req
        .grant_types
        .clone()
        .unwrap_or_else(|| vec!["authorization_code".to_owned()]);
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
    if req
        .client_name
        .as_ref()
        .is_some_and(|n| n.chars().count() > 200)
    {
        return Err(OAuthError::invalid_client_metadata(
            "client_name is longer than 200 characters",
        ));
    }
    let secret = (method != "none").then(|| random_token(32));
    let client = Client {
        client_id: format!("bmm_{}", random_token(16)),
        secret_sha256: secret.as_deref().map(sha256_hex),
        redirect_uris,
        client_name: req.client_name.clone(),
        token_endpoint_auth_method: method,
        created_at: now(),
    };
    state.inner.store.put_client(&client)?;
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
