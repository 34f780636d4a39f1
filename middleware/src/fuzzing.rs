//! Entry points for the fuzz targets in `fuzz/` (not a stable API).

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};

use crate::auth::{Attempt, Authenticator};
use crate::{AuthConfig, Issuer, Resource};

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let build = || {
            AuthConfig::new(Resource::parse("http://127.0.0.1:4103/mcp")?)
                .issuer(Issuer::parse("http://127.0.0.1:9")?)
                .build()
        };
        // The configuration is a constant; failing here is a bug in this file.
        #[allow(clippy::panic)]
        match build() {
            Ok(auth) => auth,
            Err(e) => panic!("fuzz authenticator: {e}"),
        }
    })
}

/// Runs raw bytes through the request path as an `Authorization` header value: header
/// parsing, bearer syntax, JWT header/claims parsing, issuer selection and key lookup.
/// Never fetches anything (no runtime is running).
pub fn authorization_header(bytes: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(bytes) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    let Attempt::Done(result) = authenticator().attempt(&http::Method::POST, "/mcp", &headers)
    else {
        return;
    };
    if let Err(error) = result {
        let _ = authenticator().challenge().www_authenticate_values(&error);
    }
}

/// Runs raw bytes through DPoP proof verification (RFC 9449) as a `DPoP` header value.
pub fn dpop_proof(bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = crate::dpop::verify_proof(
            text,
            &crate::dpop::ProofRequirements {
                method: "POST",
                url: "http://127.0.0.1:4103/mcp",
                access_token: Some("token"),
                nonce: None,
                now: 1_800_000_000,
                max_age_secs: 60,
                algorithms: crate::dpop::DEFAULT_PROOF_ALGORITHMS,
            },
        );
    }
}

/// Parses raw bytes as a JWT (`header.payload.signature`).
pub fn jwt(bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = crate::jwt::parse_untrusted(text);
    }
}

/// Parses raw bytes as a JWKS document.
pub fn jwks(bytes: &[u8]) {
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(bytes) {
        let _ = crate::jwks::usable_key_count(&doc);
    }
}

/// Runs raw bytes through the per-tool scope layer's body reader; returns how many
/// `tools/call` names it found, or `None` when it refuses the body (fail closed).
pub fn tool_call_names(bytes: &[u8]) -> Option<usize> {
    crate::tool_scope::called_tools(bytes)
        .ok()
        .map(|tools| tools.len())
}
