//! RFC 8414 authorization server metadata and the JWKS.
//!
//! Rules:
//! 1. The metadata `issuer` is the configured issuer, byte for byte; every endpoint it
//!    lists is the issuer followed by the endpoint's name (`<issuer>/token`).
//! 2. It is served at every location a client derives from the issuer: without a path, at
//!    `/.well-known/oauth-authorization-server` and `/.well-known/openid-configuration`;
//!    with a path (`/oauth`), at the RFC 8414 section 3.1 path insertion
//!    `/.well-known/oauth-authorization-server/oauth`, the OpenID path insertion
//!    `/.well-known/openid-configuration/oauth` and the OpenID Discovery path appending
//!    `/oauth/.well-known/openid-configuration` (and not at the root, where another
//!    issuer on the same host would be described).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;

/// The metadata locations for an issuer whose path is `prefix` (rule 2).
pub(crate) fn well_known_paths(prefix: &str) -> Vec<String> {
    if prefix.is_empty() {
        vec![
            "/.well-known/oauth-authorization-server".to_owned(),
            "/.well-known/openid-configuration".to_owned(),
        ]
    } else {
        vec![
            format!("/.well-known/oauth-authorization-server{prefix}"),
            format!("/.well-known/openid-configuration{prefix}"),
            format!("{prefix}/.well-known/openid-configuration"),
        ]
    }
}

pub(crate) async fn metadata(State(state): State<AppState>) -> Response {
    let issuer = &state.inner.settings.issuer;
    let base = issuer.trim_end_matches('/');
    let mut doc = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "registration_endpoint": format!("{base}/register"),
        "revocation_endpoint": format!("{base}/revoke"),
        "introspection_endpoint": format!("{base}/introspect"),
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
        "introspection_endpoint_auth_signing_alg_values_supported": crate::client_auth::SIGNING_ALGS,
        "dpop_signing_alg_values_supported": crate::dpop::algorithm_names(),
        "jwks_uri": format!("{base}/jwks"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", crate::exchange::GRANT_TYPE],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post", "private_key_jwt"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post", "private_key_jwt"],
        "client_id_metadata_document_supported": true,
        "authorization_response_iss_parameter_supported": true,
        "token_endpoint_auth_signing_alg_values_supported": crate::client_auth::SIGNING_ALGS,
        "revocation_endpoint_auth_signing_alg_values_supported": crate::client_auth::SIGNING_ALGS,
        "id_token_signing_alg_values_supported": ["RS256"],
        "subject_types_supported": ["public"],
    });
    let mut scopes = state.inner.settings.scopes.clone();
    if !scopes.is_empty() && !scopes.iter().any(|s| s == "offline_access") {
        scopes.push("offline_access".to_owned());
    }
    if !scopes.is_empty() {
        doc["scopes_supported"] = json!(scopes);
    }
    let mut response = Json(doc).into_response();
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

pub(crate) async fn jwks(State(state): State<AppState>) -> Response {
    let mut response = Json(state.inner.keys.jwks()).into_response();
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    // Short enough that a rotation is seen quickly; resource servers also refetch on an
    // unknown kid.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_locations_follow_rfc8414_and_openid_discovery_for_an_issuer_path() {
        assert_eq!(
            well_known_paths(""),
            [
                "/.well-known/oauth-authorization-server",
                "/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            well_known_paths("/oauth"),
            [
                "/.well-known/oauth-authorization-server/oauth",
                "/.well-known/openid-configuration/oauth",
                "/oauth/.well-known/openid-configuration"
            ]
        );
    }
}
