//! Access-token verification (RFC 9068 JWTs, RFC 8725 practices, RFC 8707 audiences), and
//! the claim checks introspected tokens share (see [`crate::introspect`]).
//!
//! Rules, in the order they are applied:
//! 1. Tokens longer than the configured maximum (8 KiB by default) are refused unread.
//! 2. The token's shape decides how it is verified: a JWS compact serialisation (three
//!    base64url parts whose header decodes to a JSON object) is a JWT. A JWE compact
//!    serialisation (five base64url parts whose header decodes to a JSON object: an
//!    encrypted token) is refused with `invalid_token` at once, never introspected
//!    (rule **encrypted_tokens_are_refused_without_introspection**): it names its issuer
//!    only inside the encryption, so it could belong to any issuer. Anything else is
//!    opaque (not JWT-shaped) and goes to the one issuer configured with introspection
//!    ([`crate::introspect`]), or is refused with `invalid_token` when no issuer
//!    introspects. An opaque token names no issuer: with several trusted issuers, every
//!    opaque token presented to this server, whoever issued it, is sent to the
//!    introspecting issuer, so configure introspection only for an issuer you would
//!    trust with the other issuers' opaque tokens (or have the others issue JWTs).
//! 3. The unverified `iss` of a JWT only selects which trusted issuer verifies it; a token
//!    naming an issuer that is not configured is refused without any fetch. A JWT is
//!    never tried with another issuer's keys, nor sent to another issuer's introspection
//!    endpoint: no key of issuer A ever validates a token claiming issuer B. Only
//!    non-JWT-shaped (opaque) tokens go to the introspecting issuer without naming it
//!    (rule 2).
//! 4. For an issuer with keys, the header's `alg` must be in that issuer's allow-list of
//!    asymmetric algorithms; `none` and every HMAC algorithm are refused before any key is
//!    looked at. A `crit` header is refused (no extension is understood). `jku`, `x5u`,
//!    `jwk` and `x5c` are never used. A JWT of an issuer configured with introspection and
//!    no keys is judged by that issuer: it is introspected, its header is not checked here.
//! 5. The key is found by `kid` in that issuer's JWKS and must be pinned to the header's
//!    `alg` (see [`crate::jwks`]); the signature must verify.
//! 6. `iss` must equal the issuer exactly.
//! 7. `exp` is required and must be in the future (minus leeway); `nbf`, when present, must
//!    be in the past (plus leeway); malformed dates fail closed.
//! 8. `aud` is required and must contain this server's resource or an audience accepted
//!    for that issuer (its own [`crate::TrustedIssuer::audience`] values and the
//!    server-wide [`crate::AuthConfig::extra_audience`] ones), compared exactly: a token
//!    issued for another server is refused. Audience checking cannot be switched off.
//! 9. When configured ([`crate::AuthConfig::require_at_jwt_typ`]), the header's `typ` must
//!    be `at+jwt` or `application/at+jwt` (RFC 9068 section 4, case-insensitive), so an ID
//!    token or another JWT of the same issuer is never taken for an access token. Off by
//!    default: some authorization servers issue access tokens with `typ: JWT`.
//! 10. A `cnf` claim, when present, must carry a DPoP key thumbprint `jkt` (RFC 9449); a
//!     token bound by any other confirmation method (mTLS `x5t#S256`, ...) is refused,
//!     since this server cannot check the binding.
//! 11. The granted scopes are read from the claim the issuer's [`crate::ScopeClaim`] names
//!     (see [`crate::scope`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::auth::AuthError;
use crate::context::{AuthContext, TokenKind};
use crate::introspect::Introspector;
use crate::jwks::{KeyStore, Lookup};
use crate::refusal::Refusal;
use crate::resource::{Issuer, Resource};
use crate::scope::{ScopeClaim, ScopeHierarchy, scopes_from_claims};
use crate::token_cache::{TokenCache, now_secs};

/// The asymmetric algorithms accepted by default.
pub const DEFAULT_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A boxed verification future (only used when keys must be fetched or a token must be
/// introspected).
pub(crate) type VerifyFuture = Pin<Box<dyn Future<Output = Result<AuthContext, AuthError>> + Send>>;

/// The outcome of verifying without waiting.
pub(crate) enum Verdict {
    Done(Result<AuthContext, AuthError>),
    /// Keys must be fetched, or the token introspected: call [`TokenVerifier::verify`].
    NeedsKeys,
}

/// The checks every verified token's claims go through: a JWT's payload, or the body of
/// an active introspection response.
#[derive(Debug)]
pub(crate) struct ClaimRules {
    pub(crate) issuer: Issuer,
    pub(crate) resource: Resource,
    /// Accepted besides the resource: the issuer's own and the server-wide extra ones.
    pub(crate) audiences: Vec<String>,
    pub(crate) leeway_secs: u64,
    pub(crate) hierarchy: ScopeHierarchy,
    pub(crate) scope_claim: ScopeClaim,
}

/// One trusted issuer, as the verifier uses it.
pub(crate) struct IssuerEntry {
    pub(crate) rules: Arc<ClaimRules>,
    /// `None`: the issuer's tokens, JWTs included, are introspected.
    pub(crate) keys: Option<KeyStore>,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) introspector: Option<Introspector>,
}

impl IssuerEntry {
    pub(crate) fn issuer(&self) -> &Issuer {
        &self.rules.issuer
    }
}

impl std::fmt::Debug for IssuerEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.rules.issuer)
            .field("keys", &self.keys)
            .field("introspection", &self.introspector.is_some())
            .finish_non_exhaustive()
    }
}

pub(crate) struct VerifierConfig {
    pub(crate) issuers: Vec<IssuerEntry>,
    pub(crate) max_token_bytes: usize,
    pub(crate) cache_capacity: usize,
    pub(crate) require_at_jwt_typ: bool,
}

/// Verifies access tokens for one resource.
#[derive(Clone)]
pub(crate) struct TokenVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    config: VerifierConfig,
    cache: TokenCache,
    /// The issuer opaque tokens go to (the one with introspection), if any.
    opaque_issuer: Option<usize>,
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
    enc: Option<Value>,
    typ: Option<String>,
}

/// A token taken apart, before its signature is checked.
struct Parsed<'a> {
    alg: Algorithm,
    kid: Option<String>,
    signing_input: &'a str,
    signature: &'a str,
    claims: Map<String, Value>,
    issuer: usize,
}

/// How a token is verified.
enum Route<'a> {
    /// With the keys of the issuer at this index.
    Local(Parsed<'a>),
    /// By introspection at this issuer.
    Introspect(Introspector),
}

impl TokenVerifier {
    pub(crate) fn new(config: VerifierConfig) -> Self {
        let cache = TokenCache::new(config.cache_capacity);
        let opaque_issuer = config.issuers.iter().position(|i| i.introspector.is_some());
        Self {
            inner: Arc::new(Inner {
                config,
                cache,
                opaque_issuer,
            }),
        }
    }

    /// Every trusted issuer, in configuration order.
    pub(crate) fn issuers(&self) -> &[IssuerEntry] {
        &self.inner.config.issuers
    }

    /// The key stores of the issuers that verify JWTs with keys.
    pub(crate) fn stores(&self) -> impl Iterator<Item = &KeyStore> {
        self.inner
            .config
            .issuers
            .iter()
            .filter_map(|i| i.keys.as_ref())
    }

    /// The introspectors of the issuers configured with introspection.
    pub(crate) fn introspectors(&self) -> impl Iterator<Item = &Introspector> {
        self.inner
            .config
            .issuers
            .iter()
            .filter_map(|i| i.introspector.as_ref())
    }

    /// Verifies with what is at hand; asks for [`TokenVerifier::verify`] when keys must be
    /// fetched or the token introspected first.
    pub(crate) fn verify_now(&self, token: &str) -> Verdict {
        let key = TokenCache::key(token);
        if let Some(ctx) = self.inner.cache.get(&key) {
            return Verdict::Done(Ok(ctx));
        }
        let parsed = match self.route(token) {
            Ok(Route::Local(p)) => p,
            Ok(Route::Introspect(introspector)) => {
                return match introspector.cached(&key) {
                    Some(result) => Verdict::Done(result),
                    None => Verdict::NeedsKeys,
                };
            }
            Err(e) => return Verdict::Done(Err(e)),
        };
        let Some(store) = &self.inner.config.issuers[parsed.issuer].keys else {
            return Verdict::Done(Err(AuthError::keys_unavailable()));
        };
        match store.lookup_now(parsed.kid.as_deref(), parsed.alg) {
            Lookup::NeedsFetch => Verdict::NeedsKeys,
            other => Verdict::Done(self.finish(parsed, other, key)),
        }
    }

    /// Verifies, fetching the issuer's keys if the rules allow it, or introspecting.
    pub(crate) fn verify(&self, token: String) -> VerifyFuture {
        let this = self.clone();
        Box::pin(async move {
            let key = TokenCache::key(&token);
            if let Some(ctx) = this.inner.cache.get(&key) {
                return Ok(ctx);
            }
            let parsed = match this.route(&token)? {
                Route::Local(parsed) => parsed,
                Route::Introspect(introspector) => {
                    return introspector.introspect(&token, key).await;
                }
            };
            let Some(store) = this.inner.config.issuers[parsed.issuer].keys.clone() else {
                return Err(AuthError::keys_unavailable());
            };
            let lookup = store.lookup(parsed.kid.as_deref(), parsed.alg).await;
            this.finish(parsed, lookup, key)
        })
    }

    fn route<'a>(&self, token: &'a str) -> Result<Route<'a>, AuthError> {
        let config = &self.inner.config;
        if token.len() > config.max_token_bytes {
            return Err(AuthError::invalid_token(
                "the token is longer than this server accepts",
            ));
        }
        if is_jwe_shaped(token) {
            // Rule 2: an encrypted token names no issuer we can read; never disclose it.
            return Err(AuthError::invalid_token(
                "encrypted tokens (JWE) are not accepted",
            ));
        }
        let Some(jws) = jws_shape(token) else {
            return match self.inner.opaque_issuer {
                Some(i) => match &config.issuers[i].introspector {
                    Some(introspector) => Ok(Route::Introspect(introspector.clone())),
                    None => Err(no_introspection()),
                },
                None => Err(no_introspection()),
            };
        };
        let claims: Map<String, Value> = decode_json(jws.payload)
            .ok_or_else(|| AuthError::invalid_token("the token payload is not a JSON object"))?;
        let iss = claims.get("iss").and_then(Value::as_str).ok_or_else(|| {
            AuthError::rejected_token("the token has no iss claim", Refusal::ISSUER)
        })?;
        let index = config
            .issuers
            .iter()
            .position(|i| i.issuer().as_str() == iss)
            .ok_or_else(|| {
                AuthError::rejected_token(
                    "the token's issuer is not trusted by this server",
                    Refusal::ISSUER,
                )
            })?;
        let entry = &config.issuers[index];
        if entry.keys.is_none() {
            return match &entry.introspector {
                Some(introspector) => Ok(Route::Introspect(introspector.clone())),
                None => Err(AuthError::keys_unavailable()),
            };
        }
        let header: JoseHeader = serde_json::from_value(Value::Object(jws.header))
            .map_err(|_| AuthError::invalid_token("the token header is not a JOSE header"))?;
        if header.enc.is_some() {
            return Err(AuthError::invalid_token(
                "encrypted tokens are not accepted",
            ));
        }
        if header.crit.is_some() {
            return Err(AuthError::invalid_token(
                "the token has critical header parameters this server does not understand",
            ));
        }
        if config.require_at_jwt_typ && !is_access_token_typ(header.typ.as_deref()) {
            return Err(AuthError::invalid_token(
                "the token's typ is not at+jwt (RFC 9068): it is not an access token",
            ));
        }
        let alg = header
            .alg
            .parse::<Algorithm>()
            .ok()
            .filter(|a| entry.algorithms.contains(a))
            .ok_or_else(|| {
                AuthError::invalid_token("the token's signing algorithm is not accepted")
            })?;
        Ok(Route::Local(Parsed {
            alg,
            kid: header.kid,
            signing_input: jws.signing_input,
            signature: jws.signature,
            claims,
            issuer: index,
        }))
    }

    fn finish(
        &self,
        parsed: Parsed<'_>,
        lookup: Lookup,
        cache_key: [u8; 32],
    ) -> Result<AuthContext, AuthError> {
        let key = match lookup {
            Lookup::Found(key) => key,
            Lookup::Rejected(reason) => return Err(AuthError::invalid_token(reason)),
            Lookup::Unavailable => return Err(AuthError::keys_unavailable()),
            Lookup::NeedsFetch => return Err(AuthError::keys_unavailable()),
        };
        let valid = jsonwebtoken::crypto::verify(
            parsed.signature,
            parsed.signing_input.as_bytes(),
            &key.key,
            parsed.alg,
        )
        .unwrap_or(false);
        if !valid {
            return Err(AuthError::invalid_token(
                "the token signature does not verify",
            ));
        }
        let rules = &self.inner.config.issuers[parsed.issuer].rules;
        let ctx = rules.check(parsed.claims, TokenKind::Jwt, true)?;
        self.inner.cache.insert(cache_key, &ctx);
        Ok(ctx)
    }
}

fn no_introspection() -> AuthError {
    AuthError::invalid_token(
        "the token is not a signed JWT (JWS compact form), and no issuer is configured to introspect opaque tokens",
    )
}

impl ClaimRules {
    /// Checks verified claims (rules 6 to 8, 10 and 11) and builds the context. `iss` may
    /// be absent only when `iss_required` is false (an introspection response, RFC 7662
    /// section 2.2, where the endpoint speaks for its issuer).
    pub(crate) fn check(
        &self,
        claims: Map<String, Value>,
        kind: TokenKind,
        iss_required: bool,
    ) -> Result<AuthContext, AuthError> {
        let issuer = self.issuer.as_str();
        match claims.get("iss") {
            None if !iss_required => {}
            Some(Value::String(iss)) if iss == issuer => {}
            _ => {
                return Err(AuthError::rejected_token(
                    "the token's issuer is not trusted by this server",
                    Refusal::ISSUER,
                ));
            }
        }
        let now = now_secs();
        let leeway = self.leeway_secs;
        let exp = match claims.get("exp") {
            None => return Err(AuthError::invalid_token("the token has no exp claim")),
            Some(v) => numeric_date(v)
                .ok_or_else(|| AuthError::invalid_token("the token's exp is not a number"))?,
        };
        if now >= exp.saturating_add(leeway) {
            return Err(AuthError::rejected_token(
                "the token has expired",
                Refusal::EXPIRED,
            ));
        }
        if let Some(v) = claims.get("nbf") {
            let nbf = numeric_date(v)
                .ok_or_else(|| AuthError::invalid_token("the token's nbf is not a number"))?;
            if nbf > now.saturating_add(leeway) {
                return Err(AuthError::rejected_token(
                    "the token is not valid yet (nbf)",
                    Refusal::EXPIRED,
                ));
            }
        }
        if let Some(v) = claims.get("iat") {
            numeric_date(v)
                .ok_or_else(|| AuthError::invalid_token("the token's iat is not a number"))?;
        }
        if claims.get("sub").is_some_and(|s| !s.is_string()) {
            return Err(AuthError::invalid_token("the token's sub is not a string"));
        }
        let audience: Vec<String> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        if audience.is_empty() {
            return Err(AuthError::rejected_token(
                "the token has no aud claim; it must name this resource (RFC 8707)",
                Refusal::AUDIENCE,
            ));
        }
        let for_us = audience
            .iter()
            .any(|a| self.resource.matches_audience(a) || self.audiences.iter().any(|x| x == a));
        if !for_us {
            return Err(AuthError::rejected_token(
                "the token was issued for another resource (aud does not name this server)",
                Refusal::AUDIENCE,
            ));
        }
        if let Some(cnf) = claims.get("cnf") {
            let jkt = cnf.get("jkt").and_then(Value::as_str);
            if !jkt.is_some_and(|j| !j.is_empty() && j.len() <= 128) {
                return Err(AuthError::invalid_token(
                    "the token is bound by a confirmation method this server cannot check (only DPoP cnf.jkt is supported)",
                ));
            }
        }
        let scopes = scopes_from_claims(&claims, self.scope_claim);
        let effective = self.hierarchy.expand(&scopes);
        // The cache must never outlive exp; leeway only widens acceptance at check time.
        Ok(AuthContext::of_kind(
            kind,
            issuer.to_owned(),
            audience,
            scopes,
            effective,
            exp,
            claims,
        ))
    }
}

/// The parts of a JWS-shaped token.
struct Jws<'a> {
    header: Map<String, Value>,
    payload: &'a str,
    signing_input: &'a str,
    signature: &'a str,
}

/// Whether `token` has the shape of a JWS compact serialisation: three base64url parts
/// whose header decodes to a JSON object. Anything else is an opaque token.
fn jws_shape(token: &str) -> Option<Jws<'_>> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let b64url = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if header.is_empty() || !b64url(header) || !b64url(payload) || !b64url(signature) {
        return None;
    }
    let header_json: Map<String, Value> = decode_json(header)?;
    Some(Jws {
        header: header_json,
        payload,
        signing_input: &token[..header.len() + 1 + payload.len()],
        signature,
    })
}

/// Whether `token` is a JWE compact serialisation (rule 2): five parts of base64url
/// characters (the encrypted key and the IV may be empty), the first of which decodes to a
/// JSON object. Such a token is refused without introspection.
pub(crate) fn is_jwe_shaped(token: &str) -> bool {
    let b64url = |p: &str| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let header = token.split('.').next().unwrap_or_default();
    token.split('.').count() == 5
        && !header.is_empty()
        && token.split('.').all(b64url)
        && decode_json::<Map<String, Value>>(header).is_some()
}

/// Whether `token` is JWS-shaped (a JWT) rather than opaque (see rule 2).
pub(crate) fn is_jws_shaped(token: &str) -> bool {
    jws_shape(token).is_some()
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A JSON number as whole seconds; negative dates clamp to zero, other types fail.
fn numeric_date(v: &Value) -> Option<u64> {
    if let Some(u) = v.as_u64() {
        return Some(u);
    }
    if let Some(i) = v.as_i64() {
        return Some(i.max(0) as u64);
    }
    let f = v.as_f64()?;
    if !f.is_finite() {
        return None;
    }
    Some(if f <= 0.0 {
        0
    } else if f >= u64::MAX as f64 {
        u64::MAX
    } else {
        f as u64
    })
}

/// Whether a JOSE `typ` names an RFC 9068 access token.
fn is_access_token_typ(typ: Option<&str>) -> bool {
    typ.is_some_and(|t| {
        let t = t.strip_prefix("application/").unwrap_or(t);
        t.eq_ignore_ascii_case("at+jwt")
    })
}

/// Parses the token-facing part of verification without any key: header, algorithm and
/// claims JSON. Exposed for the fuzz target; returns whether the token would reach the
/// signature check.
pub fn parse_untrusted(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some(header) = decode_json::<JoseHeader>(header) else {
        return false;
    };
    let alg_ok = header
        .alg
        .parse::<Algorithm>()
        .is_ok_and(|a| DEFAULT_ALGORITHMS.contains(&a));
    let claims = decode_json::<Map<String, Value>>(payload);
    if let Some(claims) = &claims {
        let _ = scopes_from_claims(claims, ScopeClaim::Both);
        for k in ["exp", "nbf", "iat"] {
            let _ = claims.get(k).map(numeric_date);
        }
    }
    alg_ok && claims.is_some() && header.crit.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_numeric_dates_fail_closed() {
        assert_eq!(numeric_date(&serde_json::json!(10)), Some(10));
        assert_eq!(numeric_date(&serde_json::json!(10.9)), Some(10));
        assert_eq!(numeric_date(&serde_json::json!(-5)), Some(0));
        assert_eq!(numeric_date(&serde_json::json!("10")), None);
        assert_eq!(numeric_date(&serde_json::json!(null)), None);
        assert_eq!(numeric_date(&serde_json::json!(1e300)), Some(u64::MAX));
    }

    fn rules() -> ClaimRules {
        ClaimRules {
            issuer: Issuer::parse("https://as.example").unwrap(),
            resource: Resource::parse("https://rs.example/mcp").unwrap(),
            audiences: vec!["api://notes".to_owned()],
            leeway_secs: 0,
            hierarchy: ScopeHierarchy::new(),
            scope_claim: ScopeClaim::Both,
        }
    }

    fn claims(extra: serde_json::Value) -> Map<String, Value> {
        let mut c = serde_json::json!({
            "iss": "https://as.example",
            "aud": "https://rs.example/mcp",
            "exp": now_secs() + 60,
        });
        if let (Some(map), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            map.extend(extra.clone());
        }
        c.as_object().cloned().unwrap()
    }

    #[test]
    fn token_shape_decides_jwt_or_opaque() {
        let enc = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let header = enc(serde_json::json!({"alg": "RS256"}));
        assert!(is_jws_shaped(&format!("{header}.e30.c2ln")));
        assert!(is_jws_shaped(&format!("{header}.e30.")));
        for opaque in [
            "bmo_4a9Xk2",
            "a.b.c",
            "a.b.c.d.e",
            &format!("{header}.e30"),
            &format!("{header}.e30.sig.x.y"),
            &format!("{}.e30.sig", enc(serde_json::json!([1]))),
            &format!("{header}=.e30.sig"),
            &format!("{header}.e3+0.sig"),
            "",
        ] {
            assert!(!is_jws_shaped(opaque), "{opaque}");
        }
        // Encrypted (JWE) tokens are recognised, and refused before introspection.
        assert!(is_jwe_shaped(&format!("{header}.a2V5.aXY.Y2lwaGVy.dGFn")));
        assert!(is_jwe_shaped(&format!("{header}..aXY.Y2lwaGVy.")));
        for not_jwe in [
            "a.b.c.d.e",
            &format!("{header}.e30.sig"),
            &format!("{header}.a.b.c.d.e"),
            &format!("{header}.a+b.c.d.e"),
            ".a.b.c.d",
        ] {
            assert!(!is_jwe_shaped(not_jwe), "{not_jwe}");
        }
    }

    #[test]
    fn cnf_other_than_a_dpop_jkt_is_refused() {
        let r = rules();
        let bound = r
            .check(
                claims(serde_json::json!({"cnf": {"jkt": "abc"}})),
                TokenKind::Jwt,
                true,
            )
            .unwrap();
        assert_eq!(bound.confirmation_jkt(), Some("abc"));
        for cnf in [
            serde_json::json!({"x5t#S256": "abc"}),
            serde_json::json!({"jkt": 7}),
            serde_json::json!({"jkt": ""}),
            serde_json::json!("abc"),
        ] {
            let e = r
                .check(
                    claims(serde_json::json!({"cnf": cnf})),
                    TokenKind::Jwt,
                    true,
                )
                .unwrap_err();
            assert!(e.is_invalid_token(), "{cnf}");
        }
    }

    #[test]
    fn accepted_audiences_are_the_resource_and_the_issuers_own_compared_exactly() {
        let r = rules();
        for aud in ["https://rs.example/mcp", "api://notes"] {
            assert!(
                r.check(
                    claims(serde_json::json!({"aud": aud})),
                    TokenKind::Jwt,
                    true
                )
                .is_ok()
            );
        }
        for aud in ["api://notes/", "API://NOTES", "api://other", "*"] {
            assert!(
                r.check(
                    claims(serde_json::json!({"aud": aud})),
                    TokenKind::Jwt,
                    true
                )
                .is_err(),
                "{aud}"
            );
        }
        // iss is required for a JWT.
        let mut no_iss = claims(serde_json::json!({}));
        no_iss.remove("iss");
        assert!(r.check(no_iss, TokenKind::Jwt, true).is_err());
    }

    #[test]
    fn untrusted_parse_refuses_none_hmac_crit_and_jwe() {
        let enc = |v: serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let claims = enc(serde_json::json!({"iss": "x"}));
        let ok = format!("{}.{claims}.sig", enc(serde_json::json!({"alg": "RS256"})));
        assert!(parse_untrusted(&ok));
        for header in [
            serde_json::json!({"alg": "none"}),
            serde_json::json!({"alg": "HS256"}),
            serde_json::json!({"alg": "RS256", "crit": ["exp"]}),
        ] {
            assert!(!parse_untrusted(&format!("{}.{claims}.sig", enc(header))));
        }
        assert!(!parse_untrusted("a.b.c.d.e"));
    }
}
