//! Enforcing the DPoP binding of a verified token (RFC 9449 section 7). The rules are
//! listed on [`crate::DpopConfig`].

use http::{HeaderMap, HeaderValue, Method};
use jsonwebtoken::Algorithm;

use super::bearer::{Credentials, credentials, dpop_proof};
use super::{AuthError, Authenticator};
use crate::context::AuthContext;
use crate::dpop::{DpopMode, DpopRefusal};
use crate::refusal::Refusal;
use crate::token_cache::now_secs;

/// A request that passed authentication: its identity and, when its DPoP nonce is
/// ageing, a fresh one for the response.
pub(crate) struct Admitted {
    pub(crate) ctx: AuthContext,
    pub(crate) nonce: Option<HeaderValue>,
}

impl Authenticator {
    /// Whether DPoP is off, allowed or required.
    pub fn dpop_mode(&self) -> DpopMode {
        self.inner.dpop.as_ref().map_or(DpopMode::Off, |d| d.mode())
    }

    /// The accepted DPoP proof algorithms (empty when DPoP is off).
    pub fn dpop_algorithms(&self) -> &[Algorithm] {
        self.inner.dpop.as_ref().map_or(&[], |d| d.algorithms())
    }

    /// The token of the request's credentials, if the scheme is accepted in this mode.
    pub(crate) fn token_of<'a>(&self, credentials: Credentials<'a>) -> Result<&'a str, AuthError> {
        match (credentials, self.dpop_mode()) {
            (Credentials::Absent, _) => Err(AuthError::missing_token()),
            (Credentials::Malformed(reason), _) => Err(AuthError::invalid_request(reason)),
            (Credentials::Bearer(_), DpopMode::Required) => Err(AuthError::rejected_token(
                "this resource accepts only DPoP-bound tokens, with the DPoP scheme and a DPoP proof",
                Refusal::DPOP,
            )),
            // With DPoP off the scheme is as unknown as `Basic`.
            (Credentials::Dpop(_), DpopMode::Off) => Err(AuthError::missing_token()),
            (Credentials::Bearer(token) | Credentials::Dpop(token), _) => Ok(token),
        }
    }

    /// Checks that the scheme fits the token's binding and, for a bound token, its proof.
    pub(crate) fn bind(
        &self,
        ctx: AuthContext,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Admitted, AuthError> {
        let jkt = ctx.confirmation_jkt();
        if jkt.is_none() && ctx.claim("cnf").is_some() {
            // Bound to something this server cannot check (mTLS, or a malformed jkt):
            // never accept it as a bearer token.
            return Err(AuthError::rejected_token(
                "the token is bound (cnf) to a key this server cannot check",
                Refusal::DPOP,
            ));
        }
        match (credentials(headers), jkt) {
            (Credentials::Bearer(_), None) => Ok(Admitted { ctx, nonce: None }),
            (Credentials::Bearer(_), Some(_)) => Err(AuthError::rejected_token(
                "the token is DPoP-bound: present it with the DPoP scheme and a DPoP proof",
                Refusal::DPOP,
            )),
            (Credentials::Dpop(_), None) => Err(AuthError::rejected_token(
                "the DPoP scheme needs a DPoP-bound token (cnf.jkt); this one is a bearer token",
                Refusal::DPOP,
            )),
            (Credentials::Dpop(token), Some(jkt)) => {
                let Some(state) = &self.inner.dpop else {
                    return Err(AuthError::missing_token());
                };
                let proof = dpop_proof(headers).map_err(AuthError::invalid_dpop_proof)?;
                match state.check(proof, method.as_str(), path, token, jkt, now_secs()) {
                    Ok(nonce) => Ok(Admitted {
                        ctx,
                        nonce: nonce.and_then(|n| HeaderValue::from_str(&n).ok()),
                    }),
                    Err(DpopRefusal::Proof(error)) => Err(AuthError::dpop_proof(&error)),
                    Err(DpopRefusal::Busy) => Err(AuthError::dpop_busy()),
                }
            }
            // The token came from these very headers: there are credentials.
            (Credentials::Absent | Credentials::Malformed(_), _) => Err(AuthError::missing_token()),
        }
    }
}
