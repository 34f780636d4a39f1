//! Authentication failures and the responses they become (RFC 6750 section 3, RFC 9728
//! section 5.1, MCP authorization).

use std::borrow::Cow;
use std::fmt;

use http::header::{CACHE_CONTROL, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode};

use crate::body::{LocalResponse, json_response};
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
    KeysUnavailable,
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
            kind: Kind::KeysUnavailable,
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

    /// No signing key of the issuer could ever be obtained (503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self.kind, Kind::KeysUnavailable)
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::MissingToken | Kind::InvalidToken(..) => StatusCode::UNAUTHORIZED,
            Kind::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Kind::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Kind::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Why the request was refused, as a fixed [`Refusal`] reason (for metrics and audit).
    pub fn refusal(&self) -> Refusal {
        match self.kind {
            Kind::MissingToken => Refusal::MISSING,
            Kind::InvalidRequest(_) => Refusal::MALFORMED,
            Kind::InvalidToken(_, refusal) => refusal,
            Kind::InsufficientScope(_) => Refusal::SCOPE,
            Kind::KeysUnavailable => Refusal::UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self.kind {
            Kind::MissingToken => "unauthorized",
            Kind::InvalidRequest(_) => "invalid_request",
            Kind::InvalidToken(..) => "invalid_token",
            Kind::InsufficientScope(_) => "insufficient_scope",
            Kind::KeysUnavailable => "temporarily_unavailable",
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
            Kind::KeysUnavailable => {
                "the authorization server's signing keys could not be obtained; try again later"
                    .into()
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
}

impl Challenge {
    pub(crate) fn new(resource_metadata: String, scopes: &[String]) -> Self {
        let scope = (!scopes.is_empty()).then(|| scopes.join(" "));
        Self {
            resource_metadata,
            scope,
        }
    }

    /// The `WWW-Authenticate` value for an error (`None` for a 503).
    pub(crate) fn www_authenticate(&self, error: &AuthError) -> Option<String> {
        let mut out = String::from("Bearer ");
        let mut params: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(4);
        match &error.kind {
            Kind::MissingToken => {}
            Kind::KeysUnavailable => return None,
            Kind::InvalidRequest(_) | Kind::InvalidToken(..) | Kind::InsufficientScope(_) => {
                params.push(("error", error.code().into()));
                params.push((
                    "error_description",
                    sanitize_description(&error.description()).into(),
                ));
            }
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
        for (i, (name, value)) in params.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(name);
            out.push_str("=\"");
            push_quoted(&mut out, value);
            out.push('"');
        }
        Some(out)
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
        if let Some(value) = self.www_authenticate(&error)
            && let Ok(value) = HeaderValue::from_str(&value)
        {
            headers.insert(WWW_AUTHENTICATE, value);
        }
        if error.is_unavailable() {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        }
        response.extensions_mut().insert(error.refusal());
        response.extensions_mut().insert(error);
        response
    }
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
    fn unavailable_keys_answer_503_without_a_challenge() {
        let r = challenge().response(AuthError::keys_unavailable());
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().get(WWW_AUTHENTICATE).is_none());
        assert_eq!(r.headers()[RETRY_AFTER], "2");
    }
}
