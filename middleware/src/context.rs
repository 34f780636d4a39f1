//! The verified identity a request carries: [`AuthContext`].
//!
//! The authentication layer inserts one into the request extensions after a token passed
//! every check; nothing else creates one, so holding an `AuthContext` means the request was
//! authenticated. rmcp hands the request's `http::request::Parts` to tools, so tool code
//! reads it with [`AuthContext::from_parts`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::scope::ScopeSet;

/// How a request's token was shaped, and so how it was verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A JWS-shaped token (a JWT): verified with the issuer's keys, or introspected when
    /// the issuer is configured with introspection and no keys.
    Jwt,
    /// An opaque token, verified by RFC 7662 introspection at its issuer.
    Opaque,
}

/// The identity behind a request: issuer, subject, client, scopes and the raw claims.
///
/// Cheap to clone (one `Arc`). Debug output names the principal but never the claims, which
/// may carry personal data.
#[derive(Clone)]
pub struct AuthContext {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    subject: Option<String>,
    client_id: Option<String>,
    audience: Vec<String>,
    scopes: ScopeSet,
    effective_scopes: ScopeSet,
    expires_at: u64,
    token_id: Option<String>,
    confirmation_jkt: Option<String>,
    token_kind: TokenKind,
    claims: Map<String, Value>,
}

impl AuthContext {
    /// The context of a verified JWT (tests build contexts with it).
    #[cfg(test)]
    pub(crate) fn new(
        issuer: String,
        audience: Vec<String>,
        scopes: ScopeSet,
        effective_scopes: ScopeSet,
        expires_at: u64,
        claims: Map<String, Value>,
    ) -> Self {
        Self::of_kind(
            TokenKind::Jwt,
            issuer,
            audience,
            scopes,
            effective_scopes,
            expires_at,
            claims,
        )
    }

    /// The context of a verified token of `kind` (the claims of a JWT, or the body of an
    /// active introspection response).
    pub(crate) fn of_kind(
        token_kind: TokenKind,
        issuer: String,
        audience: Vec<String>,
        scopes: ScopeSet,
        effective_scopes: ScopeSet,
        expires_at: u64,
        claims: Map<String, Value>,
    ) -> Self {
        let text = |key: &str| claims.get(key).and_then(Value::as_str).map(str::to_owned);
        let subject = text("sub");
        let client_id = text("client_id").or_else(|| text("azp"));
        let token_id = text("jti");
        let confirmation_jkt = claims
            .get("cnf")
            .and_then(|cnf| cnf.get("jkt"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Self {
            inner: Arc::new(Inner {
                issuer,
                subject,
                client_id,
                audience,
                scopes,
                effective_scopes,
                expires_at,
                token_id,
                confirmation_jkt,
                token_kind,
                claims,
            }),
        }
    }

    /// Reads the context from request extensions.
    pub fn from_extensions(extensions: &http::Extensions) -> Result<&Self, MissingAuthContext> {
        extensions.get::<Self>().ok_or(MissingAuthContext(()))
    }

    /// Reads the context from request parts (what rmcp passes to tools as
    /// `Extension<http::request::Parts>`).
    pub fn from_parts(parts: &http::request::Parts) -> Result<&Self, MissingAuthContext> {
        Self::from_extensions(&parts.extensions)
    }

    /// Reads the context from a request.
    pub fn from_request<B>(request: &http::Request<B>) -> Result<&Self, MissingAuthContext> {
        Self::from_extensions(request.extensions())
    }

    /// The `iss` of the token, exactly as the trusted issuer is configured.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The `sub` claim: the user (or, for client-credentials tokens, the client).
    pub fn subject(&self) -> Option<&str> {
        self.inner.subject.as_deref()
    }

    /// The OAuth client the token was issued to (`client_id`, else `azp`).
    pub fn client_id(&self) -> Option<&str> {
        self.inner.client_id.as_deref()
    }

    /// Every audience of the token (one of them is this server's resource).
    pub fn audience(&self) -> &[String] {
        &self.inner.audience
    }

    /// The scopes the token grants, as written in it.
    pub fn scopes(&self) -> &ScopeSet {
        &self.inner.scopes
    }

    /// The granted scopes plus everything they imply under the server's scope hierarchy.
    pub fn effective_scopes(&self) -> &ScopeSet {
        &self.inner.effective_scopes
    }

    /// Whether the token grants `scope`, directly or through the scope hierarchy.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.inner.effective_scopes.contains(scope)
    }

    /// When the token expires.
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.inner.expires_at)
    }

    pub(crate) fn expires_at_secs(&self) -> u64 {
        self.inner.expires_at
    }

    /// The `jti` claim, if any.
    pub fn token_id(&self) -> Option<&str> {
        self.inner.token_id.as_deref()
    }

    /// The JWK SHA-256 thumbprint the token is bound to (`cnf.jkt`, RFC 9449): such a
    /// token is only accepted with a DPoP proof signed by that key. `None` for an unbound
    /// token.
    pub fn confirmation_jkt(&self) -> Option<&str> {
        self.inner.confirmation_jkt.as_deref()
    }

    /// Whether the token was a JWT or an opaque (introspected) token.
    pub fn token_kind(&self) -> TokenKind {
        self.inner.token_kind
    }

    /// Every claim of the verified token: a JWT's payload, or the body of the active
    /// introspection response (RFC 7662 section 2.2) for an introspected token.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.inner.claims
    }

    /// One claim of the verified token.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.inner.claims.get(name)
    }
}

impl fmt::Debug for AuthContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthContext")
            .field("issuer", &self.inner.issuer)
            .field("subject", &self.inner.subject)
            .field("client_id", &self.inner.client_id)
            .field("scopes", &self.inner.scopes)
            .field("token_kind", &self.inner.token_kind)
            .finish_non_exhaustive()
    }
}

/// The request carries no [`AuthContext`].
#[derive(Clone, PartialEq, Eq)]
pub struct MissingAuthContext(());

impl fmt::Debug for MissingAuthContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MissingAuthContext")
    }
}

impl fmt::Display for MissingAuthContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "no `bmm_middleware::AuthContext` in the request extensions: the request did not \
             pass through `bmm_middleware::AuthLayer` (is the server running with --no-auth, \
             or is the layer missing from the stack?)",
        )
    }
}

impl std::error::Error for MissingAuthContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_auth_context_message_names_the_type_and_the_likely_fix() {
        let req = http::Request::new(());
        let err = AuthContext::from_request(&req).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("bmm_middleware::AuthContext"), "{msg}");
        assert!(msg.contains("AuthLayer"), "{msg}");
        assert!(msg.contains("--no-auth"), "{msg}");
    }

    #[test]
    fn auth_context_reads_principal_from_claims_and_hides_claims_in_debug() {
        let claims =
            serde_json::json!({"sub": "alice", "azp": "client-1", "jti": "j1", "email": "a@x"});
        let ctx = AuthContext::new(
            "https://as".into(),
            vec!["https://rs/mcp".into()],
            ScopeSet::from(["mcp:read".to_owned()]),
            ScopeSet::from(["mcp:read".to_owned()]),
            4_000_000_000,
            claims.as_object().cloned().unwrap_or_default(),
        );
        assert_eq!(ctx.subject(), Some("alice"));
        assert_eq!(ctx.client_id(), Some("client-1"));
        assert_eq!(ctx.token_id(), Some("j1"));
        assert!(ctx.has_scope("mcp:read"));
        assert!(!ctx.has_scope("mcp:write"));
        assert_eq!(ctx.confirmation_jkt(), None);
        assert_eq!(ctx.token_kind(), TokenKind::Jwt);
        let mut req = http::Request::new(());
        req.extensions_mut().insert(ctx);
        let got = AuthContext::from_request(&req).unwrap();
        assert!(!format!("{got:?}").contains("a@x"));
    }

    #[test]
    fn auth_context_reads_the_confirmation_thumbprint_and_the_token_kind() {
        let claims = serde_json::json!({"sub": "bob", "cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}});
        let ctx = AuthContext::of_kind(
            TokenKind::Opaque,
            "https://as".into(),
            vec![],
            ScopeSet::new(),
            ScopeSet::new(),
            4_000_000_000,
            claims.as_object().cloned().unwrap_or_default(),
        );
        assert_eq!(
            ctx.confirmation_jkt(),
            Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I")
        );
        assert_eq!(ctx.token_kind(), TokenKind::Opaque);
    }
}
