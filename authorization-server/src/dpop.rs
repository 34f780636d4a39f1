//! DPoP (RFC 9449) at the token endpoint: checking a request's `DPoP` proof, its `jti`
//! single use, and the optional server nonce (`--dpop-nonce`).
//!
//! DPoP rules:
//! 1. A token request may carry one `DPoP` header: a proof verified by
//!    `bmm_middleware::dpop::verify_proof` with `htm` `POST`, `htu` the token endpoint URL
//!    exactly as the metadata publishes it, an `iat` within [`PROOF_MAX_AGE_SECS`] of now
//!    (both directions) and one of [`ALGORITHMS`]. Two `DPoP` headers, a header that is not
//!    text, or a proof failing a check is answered 400 `invalid_dpop_proof` (nothing of the
//!    grant is used up).
//! 2. A proof's `jti` is single use per key across instances: it is recorded in the store's
//!    client-assertion `jti` table under the key `dpop:<jkt>` until its `iat` window has
//!    passed (then the proof is refused as stale anyway), and a replay is
//!    `invalid_dpop_proof`.
//! 3. With `--dpop-nonce`, a proof must carry a nonce this server issued in the current or
//!    the previous [`NONCE_WINDOW_SECS`] window: a missing or stale one is answered 400
//!    `use_dpop_nonce`. Every token response (success or error) then carries a fresh
//!    `DPoP-Nonce` header. Nonces are an HMAC of the window under a key derived from the
//!    newest published signing key, so every instance on one store accepts the others'.

use axum::http::{HeaderMap, StatusCode};
use bmm_middleware::Algorithm;
use bmm_middleware::dpop::{ProofRequirements, verify_proof};

use crate::error::OAuthError;
use crate::{AppState, now};

/// How far a proof's `iat` may be from now, in seconds, in both directions (rule 1).
pub(crate) const PROOF_MAX_AGE_SECS: u64 = 60;
/// The length of a nonce's validity window, in seconds (rule 3).
pub(crate) const NONCE_WINDOW_SECS: u64 = 120;
/// Proof algorithms accepted (rule 1), as advertised in `dpop_signing_alg_values_supported`.
pub(crate) const ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::EdDSA,
];

/// The names of [`ALGORITHMS`], for the metadata.
pub(crate) fn algorithm_names() -> Vec<String> {
    ALGORITHMS.iter().map(|a| format!("{a:?}")).collect()
}

/// `invalid_dpop_proof` (400).
pub(crate) fn invalid_proof(description: impl Into<String>) -> OAuthError {
    OAuthError::new(StatusCode::BAD_REQUEST, "invalid_dpop_proof", description)
}

/// The key thumbprint (`jkt`) of the request's valid proof, `None` without a `DPoP`
/// header (rules 1 to 3).
pub(crate) async fn check_token_request(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<String>, OAuthError> {
    let mut values = headers.get_all("dpop").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid_proof("send one DPoP header, not several"));
    }
    let proof = value
        .to_str()
        .map_err(|_| invalid_proof("the DPoP header is not a JWT"))?;
    let url = format!(
        "{}/token",
        state.inner.settings.issuer.trim_end_matches('/')
    );
    let t = now();
    let requirements = ProofRequirements {
        method: "POST",
        url: &url,
        access_token: None,
        nonce: None,
        now: t,
        max_age_secs: PROOF_MAX_AGE_SECS,
        algorithms: ALGORITHMS,
    };
    let verified =
        verify_proof(proof.trim(), &requirements).map_err(|e| invalid_proof(e.reason()))?;
    if state.inner.settings.dpop_nonce
        && !verified
            .nonce
            .as_deref()
            .is_some_and(|n| nonce_is_valid(state, n, t))
    {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "use_dpop_nonce",
            "the DPoP proof must carry the nonce of the DPoP-Nonce header",
        ));
    }
    // Rule 2: kept until the proof would be refused as stale anyway.
    let until = verified.iat.saturating_add(PROOF_MAX_AGE_SECS + 1);
    if !state
        .store()
        .use_assertion_jti(&format!("dpop:{}", verified.jkt), &verified.jti, until)
        .await?
    {
        tracing::warn!("DPoP proof replayed at the token endpoint");
        return Err(invalid_proof(
            "the DPoP proof was already used (jti replay); make a new proof for each request",
        ));
    }
    Ok(Some(verified.jkt))
}

/// A fresh nonce for `DPoP-Nonce` (rule 3).
pub(crate) fn nonce(state: &AppState) -> Option<String> {
    let window = now() / NONCE_WINDOW_SECS;
    let key = state.inner.keys.nonce_keys().into_iter().next()?;
    Some(nonce_for(&key, window))
}

fn nonce_for(key: &[u8; 32], window: u64) -> String {
    use base64::Engine;
    let tag = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key),
        &window.to_be_bytes(),
    );
    let mut bytes = window.to_be_bytes().to_vec();
    bytes.extend_from_slice(tag.as_ref().get(..16).unwrap_or_default());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn nonce_is_valid(state: &AppState, nonce: &str, now: u64) -> bool {
    let current = now / NONCE_WINDOW_SECS;
    state.inner.keys.nonce_keys().iter().any(|key| {
        [current, current.saturating_sub(1)]
            .iter()
            .any(|w| crate::secure_eq(&nonce_for(key, *w), nonce))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_differ_by_window_and_key() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_ne!(nonce_for(&a, 5), nonce_for(&a, 6));
        assert_ne!(nonce_for(&a, 5), nonce_for(&b, 5));
        assert_eq!(nonce_for(&a, 5), nonce_for(&a, 5));
        assert_eq!(
            algorithm_names(),
            ["ES256", "ES384", "RS256", "PS256", "EdDSA"]
        );
    }
}
