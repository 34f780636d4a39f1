//! Finding an issuer's JWKS: RFC 8414 authorization server metadata first, then OpenID
//! Connect discovery, in the order the MCP authorization spec gives.
//!
//! Rules:
//! 1. For an issuer without a path the candidates are
//!    `/.well-known/oauth-authorization-server` then `/.well-known/openid-configuration`.
//! 2. For an issuer with a path (`https://as/tenant`) they are the RFC 8414 path insertion
//!    (`/.well-known/oauth-authorization-server/tenant`), the OIDC path insertion
//!    (`/.well-known/openid-configuration/tenant`) and the OIDC path appending
//!    (`/tenant/.well-known/openid-configuration`).
//! 3. A document is used only if its `issuer` equals the configured issuer exactly
//!    (RFC 8414 section 3.3); otherwise the next candidate is tried.
//! 4. `jwks_uri` must be an `https` URL (or `http` on a loopback host).
//! 5. The same documents, with the same checks, give the `introspection_endpoint` of an
//!    issuer whose tokens are introspected (see [`crate::introspect`]); it must be an
//!    `https` URL (or `http` on a loopback host) too.

use url::Url;

use crate::fetch::Fetcher;
use crate::resource::{Issuer, is_loopback_url};

/// The metadata URLs to try for an issuer, in order.
pub(crate) fn metadata_candidates(issuer: &Issuer) -> Vec<Url> {
    let url = issuer.url();
    let origin = url.origin().ascii_serialization();
    let path = url.path().trim_end_matches('/');
    let names = if path.is_empty() {
        vec![
            format!("{origin}/.well-known/oauth-authorization-server"),
            format!("{origin}/.well-known/openid-configuration"),
        ]
    } else {
        vec![
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
            format!("{origin}/.well-known/openid-configuration{path}"),
            format!("{origin}{path}/.well-known/openid-configuration"),
        ]
    };
    names.iter().filter_map(|n| Url::parse(n).ok()).collect()
}

/// Discovers the issuer's `jwks_uri`. The error lists what each candidate answered.
pub(crate) async fn discover_jwks_uri(fetcher: &Fetcher, issuer: &Issuer) -> Result<Url, String> {
    discover_endpoint(fetcher, issuer, "jwks_uri").await
}

/// Discovers the issuer's `introspection_endpoint` (RFC 8414 section 2).
pub(crate) async fn discover_introspection_endpoint(
    fetcher: &Fetcher,
    issuer: &Issuer,
) -> Result<Url, String> {
    discover_endpoint(fetcher, issuer, "introspection_endpoint").await
}

async fn discover_endpoint(fetcher: &Fetcher, issuer: &Issuer, field: &str) -> Result<Url, String> {
    let mut tried = Vec::new();
    for candidate in metadata_candidates(issuer) {
        match fetcher.get_json(&candidate).await {
            Ok(doc) => match endpoint_from_metadata(&doc.json, issuer, field) {
                Ok(uri) => return Ok(uri),
                Err(reason) => tried.push(format!("{candidate}: {reason}")),
            },
            Err(e) => tried.push(e.to_string()),
        }
    }
    Err(format!(
        "no usable metadata for issuer `{issuer}` ({})",
        tried.join("; ")
    ))
}

#[cfg(test)]
pub(crate) fn jwks_uri_from_metadata(
    doc: &serde_json::Value,
    issuer: &Issuer,
) -> Result<Url, String> {
    endpoint_from_metadata(doc, issuer, "jwks_uri")
}

fn endpoint_from_metadata(
    doc: &serde_json::Value,
    issuer: &Issuer,
    field: &str,
) -> Result<Url, String> {
    let found = doc.get("issuer").and_then(|v| v.as_str());
    if found != Some(issuer.as_str()) {
        return Err(format!(
            "metadata issuer {:?} is not the configured issuer {:?}",
            found.unwrap_or("<missing>"),
            issuer.as_str()
        ));
    }
    let uri = doc
        .get(field)
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("metadata has no {field}"))?;
    let url = Url::parse(uri).map_err(|e| format!("{field} is not a URL: {e}"))?;
    check_endpoint_url(&url, field)?;
    Ok(url)
}

pub(crate) fn check_jwks_url(url: &Url) -> Result<(), String> {
    check_endpoint_url(url, "jwks_uri")
}

/// An endpoint the middleware calls must be `https`, or `http` on a loopback host.
pub(crate) fn check_endpoint_url(url: &Url, what: &str) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_url(url) => Ok(()),
        _ => Err(format!(
            "{what} `{url}` must use https (http only on loopback)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(urls: Vec<Url>) -> Vec<String> {
        urls.into_iter().map(String::from).collect()
    }

    #[test]
    fn discovery_tries_rfc8414_then_oidc_for_an_issuer_without_path() {
        let i = Issuer::parse("https://as.example").unwrap();
        assert_eq!(
            strings(metadata_candidates(&i)),
            [
                "https://as.example/.well-known/oauth-authorization-server",
                "https://as.example/.well-known/openid-configuration"
            ]
        );
    }

    #[test]
    fn discovery_inserts_the_issuer_path_after_the_well_known_prefix() {
        let i = Issuer::parse("https://as.example/realms/dev/").unwrap();
        assert_eq!(
            strings(metadata_candidates(&i)),
            [
                "https://as.example/.well-known/oauth-authorization-server/realms/dev",
                "https://as.example/.well-known/openid-configuration/realms/dev",
                "https://as.example/realms/dev/.well-known/openid-configuration"
            ]
        );
    }

    #[test]
    fn discovery_metadata_issuer_must_equal_the_configured_issuer_exactly() {
        let i = Issuer::parse("https://as.example").unwrap();
        let doc = serde_json::json!({"issuer": "https://as.example/", "jwks_uri": "https://as.example/jwks"});
        assert!(jwks_uri_from_metadata(&doc, &i).is_err());
        let ok = serde_json::json!({"issuer": "https://as.example", "jwks_uri": "https://as.example/jwks"});
        assert_eq!(
            jwks_uri_from_metadata(&ok, &i).unwrap().as_str(),
            "https://as.example/jwks"
        );
        let http = serde_json::json!({"issuer": "https://as.example", "jwks_uri": "http://as.example/jwks"});
        assert!(jwks_uri_from_metadata(&http, &i).is_err());
    }

    #[test]
    fn discovery_gives_the_introspection_endpoint_with_the_same_checks() {
        let i = Issuer::parse("https://as.example").unwrap();
        let field = "introspection_endpoint";
        let ok = serde_json::json!({"issuer": "https://as.example", "introspection_endpoint": "https://as.example/introspect"});
        assert_eq!(
            endpoint_from_metadata(&ok, &i, field).unwrap().as_str(),
            "https://as.example/introspect"
        );
        let other = serde_json::json!({"issuer": "https://evil.example", "introspection_endpoint": "https://as.example/introspect"});
        assert!(endpoint_from_metadata(&other, &i, field).is_err());
        let http = serde_json::json!({"issuer": "https://as.example", "introspection_endpoint": "http://as.example/introspect"});
        assert!(endpoint_from_metadata(&http, &i, field).is_err());
        let none = serde_json::json!({"issuer": "https://as.example"});
        assert!(
            endpoint_from_metadata(&none, &i, field)
                .unwrap_err()
                .contains("introspection_endpoint")
        );
    }
}
