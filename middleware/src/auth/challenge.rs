//! Authentication failures and the responses they become (RFC 6750 section 3, RFC 9728
//! section 5.1, RFC 9449 section 7.1 and 9, MCP authorization).
//!
//! With DPoP on, a 401 carries two challenges, `Bearer` (when Bearer is accepted) and
//! `DPoP algs="…"`. Both carry `resource_metadata` and `scope`; the `error` of a token
//! problem is on both; the DPoP-only errors (`invalid_dpop_proof`, `use_dpop_nonce`) only on
//! the `DPoP` one.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::header::{CACHE_CONTROL, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode};

use crate::body::{LocalResponse, json_response};
use crate::dpop::{NonceIssuer, ProofError};
use crate::refusal::Refusal;
use crate::scope::ScopeSet;

/// Why a request was not let through. Opaque: ask with the `is_*` predicates.
///
/// The `Display` text is for logs and people and is not stable. A copy of the error is
/// attached to the rejection response's extensions, so outer layers can inspect it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthError {
    kind: Kind,
}

#[derive(Clone, PartialEq, Eq)]
enum Kind {
    MissingToken,
    InvalidRequest(&'static str),
    InvalidToken(Cow<'static, str>, Refusal),
    InsufficientScope(ScopeSet),
    /// 503: the reason names what could not be reached (keys, introspection).
    KeysUnavailable(&'static str),
    InvalidDpopProof(&'static str),
    UseDpopNonce(&'static str),
    DpopBusy,
}

impl AuthError {
    pub(crate) fn missing_token() -> Self {
        Self {
            kind: Kind::MissingToken,
        }
    }

    pub(crate) fn invalid_request(reason: &'static str) -> Self {
        Self {
            kind: Kind::InvalidRequest(reason),
        }
    }

    pub(crate) fn invalid_token(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::rejected_token(reason, Refusal::INVALID)
    }

    /// A token refused for a reason that has its own [`Refusal`] (expired, audience,
    /// issuer).
    pub(crate) fn rejected_token(reason: impl Into<Cow<'static, str>>, refusal: Refusal) -> Self {
        Self {
            kind: Kind::InvalidToken(reason.into(), refusal),
        }
    }

    pub(crate) fn insufficient_scope(needed: ScopeSet) -> Self {
        Self {
            kind: Kind::InsufficientScope(needed),
        }
    }

    pub(crate) fn keys_unavailable() -> Self {
        Self {
            kind: Kind::KeysUnavailable(
                "the authorization server's signing keys could not be obtained; try again later",
            ),
        }
    }

    /// A DPoP proof problem: `use_dpop_nonce` for a nonce problem, else
    /// `invalid_dpop_proof`.
    pub(crate) fn dpop_proof(error: &ProofError) -> Self {
        let kind = if error.is_nonce_problem() {
            Kind::UseDpopNonce(error.reason())
        } else {
            Kind::InvalidDpopProof(error.reason())
        };
        Self { kind }
    }

    /// A missing or malformed `DPoP` header (`invalid_dpop_proof`).
    pub(crate) fn invalid_dpop_proof(reason: &'static str) -> Self {
        Self {
            kind: Kind::InvalidDpopProof(reason),
        }
    }

    /// The DPoP replay cache is full of live entries (503, fail closed).
    pub(crate) fn dpop_busy() -> Self {
        Self {
            kind: Kind::DpopBusy,
        }
    }

    /// The issuer's introspection endpoint could not give an answer (503, never "accept").
    pub(crate) fn introspection_unavailable() -> Self {
        Self {
            kind: Kind::KeysUnavailable(
                "the authorization server's introspection endpoint could not be reached; try again later",
            ),
        }
    }

    /// The request carried no bearer token (401, challenge without `error`).
    pub fn is_missing_token(&self) -> bool {
        matches!(self.kind, Kind::MissingToken)
    }

    /// The `Authorization` header was malformed or repeated (400 `invalid_request`).
    pub fn is_invalid_request(&self) -> bool {
        matches!(self.kind, Kind::InvalidRequest(_))
    }

    /// The token failed verification: signature, issuer, audience, lifetime (401
    /// `invalid_token`).
    pub fn is_invalid_token(&self) -> bool {
        matches!(self.kind, Kind::InvalidToken(..))
    }

    /// The token is valid but lacks scopes the operation needs (403 `insufficient_scope`).
    pub fn is_insufficient_scope(&self) -> bool {
        matches!(self.kind, Kind::InsufficientScope(_))
    }

    /// No signing key of the issuer could ever be obtained, or its introspection endpoint
    /// gave no usable answer (503).
    /// Also: the DPoP replay cache is full (fail closed).
    pub fn is_unavailable(&self) -> bool {
        matches!(self.kind, Kind::KeysUnavailable(_) | Kind::DpopBusy)
    }

    /// The DPoP proof is missing, invalid, replayed or made with another key than the
    /// token's (401 `invalid_dpop_proof`).
    pub fn is_invalid_dpop_proof(&self) -> bool {
        matches!(self.kind, Kind::InvalidDpopProof(_))
    }

    /// The DPoP proof lacks a fresh server nonce (401 `use_dpop_nonce`).
    pub fn is_dpop_nonce_required(&self) -> bool {
        matches!(self.kind, Kind::UseDpopNonce(_))
    }

    fn is_dpop_only(&self) -> bool {
        matches!(self.kind, Kind::InvalidDpopProof(_) | Kind::UseDpopNonce(_))
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::MissingToken
            | Kind::InvalidToken(..)
            | Kind::InvalidDpopProof(_)
            | Kind::UseDpopNonce(_) => StatusCode::UNAUTHORIZED,
            Kind::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Kind::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Kind::KeysUnavailable(_) | Kind::DpopBusy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Why the request was refused, as a fixed [`Refusal`] reason (for metrics and audit).
    pub fn refusal(&self) -> Refusal {
        match self.kind {
            Kind::MissingToken => Refusal::MISSING,
            Kind::InvalidRequest(_) => Refusal::MALFORMED,
            Kind::InvalidToken(_, refusal) => refusal,
            Kind::InsufficientScope(_) => Refusal::SCOPE,
            Kind::KeysUnavailable(_) => Refusal::UNAVAILABLE,
            Kind::InvalidDpopProof(_) | Kind::DpopBusy => Refusal::DPOP,
            Kind::UseDpopNonce(_) => Refusal::DPOP_NONCE,
        }
    }

    fn code(&self) -> &'static str {
        match self.kind {
            Kind::MissingToken => "unauthorized",
            Kind::InvalidRequest(_) => "invalid_request",
            Kind::InvalidToken(..) => "invalid_token",
            Kind::InsufficientScope(_) => "insufficient_scope",
            Kind::KeysUnavailable(_) | Kind::DpopBusy => "temporarily_unavailable",
            Kind::InvalidDpopProof(_) => "invalid_dpop_proof",
            Kind::UseDpopNonce(_) => "use_dpop_nonce",
        }
    }

    fn description(&self) -> Cow<'_, str> {
        match &self.kind {
            Kind::MissingToken => "this MCP endpoint requires an OAuth 2.1 bearer token".into(),
            Kind::InvalidRequest(reason) => (*reason).into(),
            Kind::InvalidToken(reason, _) => reason.as_ref().into(),
            Kind::InsufficientScope(needed) => format!(
                "the token lacks scopes this operation needs; it needs: {}",
                join(needed)
            )
            .into(),
            Kind::KeysUnavailable(reason)
            | Kind::InvalidDpopProof(reason)
            | Kind::UseDpopNonce(reason) => (*reason).into(),
            Kind::DpopBusy => {
                "this server cannot record more DPoP proofs right now; try again later".into()
            }
        }
    }
}

impl fmt::Debug for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthError")
            .field("code", &self.code())
            .field("description", &self.description())
            .finish()
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.description())
    }
}

impl std::error::Error for AuthError {}

/// What every challenge of this server says: where the metadata is and which scopes to ask
/// for. Built once from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct Challenge {
    resource_metadata: String,
    scope: Option<String>,
    dpop: Option<DpopChallenge>,
}

/// The DPoP part of the challenges.
#[derive(Clone)]
struct DpopChallenge {
    /// `ES256 RS256 …`
    algs: String,
    bearer: bool,
    nonces: Option<Arc<NonceIssuer>>,
}

impl fmt::Debug for DpopChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopChallenge")
            .field("algs", &self.algs)
            .field("bearer", &self.bearer)
            .field("nonces", &self.nonces.is_some())
            .finish()
    }
}

/// The `DPoP-Nonce` header name (RFC 9449 section 8.1).
pub(crate) const DPOP_NONCE: http::HeaderName = http::HeaderName::from_static("dpop-nonce");

impl Challenge {
    pub(crate) fn new(resource_metadata: String, scopes: &[String]) -> Self {
        let scope = (!scopes.is_empty()).then(|| scopes.join(" "));
        Self {
            resource_metadata,
            scope,
            dpop: None,
        }
    }

    /// Adds the `DPoP` challenge (`algs`), drops the `Bearer` one unless `bearer`, and
    /// puts a fresh `DPoP-Nonce` on every 401 when `nonces` is given.
    pub(crate) fn with_dpop(
        mut self,
        algorithms: &[jsonwebtoken::Algorithm],
        bearer: bool,
        nonces: Option<Arc<NonceIssuer>>,
    ) -> Self {
        let algs = algorithms
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(" ");
        self.dpop = Some(DpopChallenge {
            algs,
            bearer,
            nonces,
        });
        self
    }

    /// The `WWW-Authenticate` values for an error (none for a 503).
    pub(crate) fn www_authenticate_values(&self, error: &AuthError) -> Vec<String> {
        let mut values = Vec::with_capacity(2);
        if self.dpop.as_ref().is_none_or(|d| d.bearer)
            && let Some(v) = self.www_authenticate(error)
        {
            values.push(v);
        }
        if let Some(dpop) = &self.dpop
            && let Some(params) = self.params(error, true, Some(&dpop.algs))
        {
            values.push(render("DPoP ", &params));
        }
        values
    }

    /// The `Bearer` `WWW-Authenticate` value for an error (`None` for a 503).
    pub(crate) fn www_authenticate(&self, error: &AuthError) -> Option<String> {
        let params = self.params(error, false, None)?;
        Some(render("Bearer ", &params))
    }

    fn params<'a>(
        &'a self,
        error: &'a AuthError,
        dpop: bool,
        algs: Option<&'a str>,
    ) -> Option<Vec<(&'static str, Cow<'a, str>)>> {
        let mut params: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(5);
        match &error.kind {
            Kind::MissingToken => {}
            Kind::KeysUnavailable(_) | Kind::DpopBusy => return None,
            _ if error.is_dpop_only() && !dpop => {}
            Kind::InvalidRequest(_)
            | Kind::InvalidToken(..)
            | Kind::InsufficientScope(_)
            | Kind::InvalidDpopProof(_)
            | Kind::UseDpopNonce(_) => {
                params.push(("error", error.code().into()));
                params.push((
                    "error_description",
                    sanitize_description(&error.description()).into(),
                ));
            }
        }
        if let Some(algs) = algs {
            params.push(("algs", algs.into()));
        }
        params.push(("resource_metadata", self.resource_metadata.as_str().into()));
        match &error.kind {
            Kind::InsufficientScope(needed) => params.push(("scope", join(needed).into())),
            _ => {
                if let Some(scope) = &self.scope {
                    params.push(("scope", scope.as_str().into()));
                }
            }
        }
        Some(params)
    }

    /// The full rejection response for an error.
    pub(crate) fn response(&self, error: AuthError) -> LocalResponse {
        let body = serde_json::json!({
            "error": error.code(),
            "error_description": error.description(),
        });
        let mut response = json_response(error.status(), &body);
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for value in self.www_authenticate_values(&error) {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.append(WWW_AUTHENTICATE, value);
            }
        }
        if error.status() == StatusCode::UNAUTHORIZED
            && let Some(nonces) = self.dpop.as_ref().and_then(|d| d.nonces.as_ref())
            && let Ok(nonce) = HeaderValue::from_str(&nonces.issue(crate::token_cache::now_secs()))
        {
            headers.insert(DPOP_NONCE, nonce);
        }
        if error.is_unavailable() {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        }
        response.extensions_mut().insert(error.refusal());
        response.extensions_mut().insert(error);
        response
    }
}

fn render(scheme: &str, params: &[(&str, Cow<'_, str>)]) -> String {
    let mut out = String::from(scheme);
    for (i, (name, value)) in params.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
        out.push_str("=\"");
        push_quoted(&mut out, value);
        out.push('"');
    }
    out
}

fn join(scopes: &ScopeSet) -> String {
    let mut out = String::new();
    for (i, s) in scopes.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(s);
    }
    out
}

/// RFC 6750 allows only `%x20-21 / %x23-5B / %x5D-7E` in `error_description`.
fn sanitize_description(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ' ' | '!' | '#'..='[' | ']'..='~' => c,
            _ => '?',
        })
        .take(200)
        .collect()
}

fn push_quoted(out: &mut String, value: &str) {
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge() -> Challenge {
        Challenge::new(
            "https://rs.example/.well-known/oauth-protected-resource/mcp".into(),
            &["mcp:read".to_owned(), "mcp:write".to_owned()],
        )
    }

    #[test]
    fn missing_token_challenge_has_no_error_param() {
        let v = challenge()
            .www_authenticate(&AuthError::missing_token())
            .unwrap();
        assert_eq!(
            v,
            "Bearer resource_metadata=\"https://rs.example/.well-known/oauth-protected-resource/mcp\", scope=\"mcp:read mcp:write\""
        );
    }

    #[test]
    fn invalid_token_challenge_names_the_error_and_keeps_metadata_and_scope() {
        let v = challenge()
            .www_authenticate(&AuthError::invalid_token("the token has expired"))
            .unwrap();
        assert!(
            v.starts_with(
                "Bearer error=\"invalid_token\", error_description=\"the token has expired\""
            ),
            "{v}"
        );
        assert!(v.contains("resource_metadata=\"https://rs.example/"), "{v}");
        assert!(v.contains("scope=\"mcp:read mcp:write\""), "{v}");
    }

    #[test]
    fn insufficient_scope_challenge_lists_every_needed_scope() {
        let needed: ScopeSet = ["a".to_owned(), "b".to_owned()].into();
        let v = challenge()
            .www_authenticate(&AuthError::insufficient_scope(needed))
            .unwrap();
        assert!(v.contains("error=\"insufficient_scope\""), "{v}");
        assert!(v.contains("scope=\"a b\""), "{v}");
        assert!(!v.contains("mcp:write"), "{v}");
    }

    #[test]
    fn challenge_quoting_escapes_quotes_and_backslashes_and_sanitizes_descriptions() {
        let c = Challenge::new("https://x/a\"b\\c".into(), &[]);
        let v = c
            .www_authenticate(&AuthError::invalid_token("bad \"thing\" \u{7f}\\ é\r\n"))
            .unwrap();
        assert!(
            v.contains("resource_metadata=\"https://x/a\\\"b\\\\c\""),
            "{v}"
        );
        assert!(
            v.contains("error_description=\"bad ?thing? ?? ???\""),
            "{v}"
        );
        assert!(HeaderValue::from_str(&v).is_ok());
    }

    #[test]
    fn every_rejection_carries_its_refusal_reason() {
        let cases = [
            (AuthError::missing_token(), "missing"),
            (AuthError::invalid_request("bad header"), "malformed"),
            (AuthError::invalid_token("bad signature"), "invalid"),
            (
                AuthError::rejected_token("the token has expired", Refusal::EXPIRED),
                "expired",
            ),
            (
                AuthError::insufficient_scope(["a".to_owned()].into()),
                "scope",
            ),
            (AuthError::keys_unavailable(), "unavailable"),
        ];
        for (error, reason) in cases {
            let r = challenge().response(error);
            assert_eq!(Refusal::from_response(&r).map(|r| r.reason), Some(reason));
        }
    }

    #[test]
    fn challenges_carry_dpop_algs_and_dpop_errors_only_on_the_dpop_challenge() {
        let c = challenge().with_dpop(
            &[
                jsonwebtoken::Algorithm::ES256,
                jsonwebtoken::Algorithm::RS256,
            ],
            true,
            None,
        );
        let missing = c.www_authenticate_values(&AuthError::missing_token());
        assert_eq!(missing.len(), 2);
        assert!(
            missing[0].starts_with("Bearer resource_metadata="),
            "{missing:?}"
        );
        assert!(
            missing[1].starts_with("DPoP algs=\"ES256 RS256\", resource_metadata="),
            "{missing:?}"
        );
        let proof = AuthError::invalid_dpop_proof("bad proof");
        let v = c.www_authenticate_values(&proof);
        assert!(!v[0].contains("error="), "{v:?}");
        assert!(
            v[1].starts_with("DPoP error=\"invalid_dpop_proof\", error_description=\"bad proof\", algs=\"ES256 RS256\""),
            "{v:?}"
        );
        let token = c.www_authenticate_values(&AuthError::invalid_token("expired"));
        assert!(
            token.iter().all(|v| v.contains("error=\"invalid_token\"")),
            "{token:?}"
        );
        let r = c.response(proof);
        assert_eq!(r.headers().get_all(WWW_AUTHENTICATE).iter().count(), 2);
        assert_eq!(Refusal::from_response(&r), Some(Refusal::DPOP));
    }

    #[test]
    fn required_dpop_drops_the_bearer_challenge_and_nonce_flow_sends_a_nonce() {
        let nonces = Arc::new(NonceIssuer::new([1; 32], 300));
        let c = challenge().with_dpop(&[jsonwebtoken::Algorithm::ES256], false, Some(nonces));
        let r = c.response(AuthError::dpop_proof(&ProofError::nonce_required()));
        let values: Vec<_> = r.headers().get_all(WWW_AUTHENTICATE).iter().collect();
        assert_eq!(values.len(), 1);
        assert!(
            values[0]
                .to_str()
                .unwrap()
                .starts_with("DPoP error=\"use_dpop_nonce\"")
        );
        assert!(r.headers().contains_key(DPOP_NONCE));
        assert_eq!(Refusal::from_response(&r), Some(Refusal::DPOP_NONCE));
        let busy = c.response(AuthError::dpop_busy());
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(busy.headers().get(WWW_AUTHENTICATE).is_none());
        assert!(!busy.headers().contains_key(DPOP_NONCE));
    }

    #[test]
    fn unavailable_keys_answer_503_without_a_challenge() {
        let r = challenge().response(AuthError::keys_unavailable());
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().get(WWW_AUTHENTICATE).is_none());
        assert_eq!(r.headers()[RETRY_AFTER], "2");
    }
}
