//! Access-token verification (RFC 9068 JWTs, RFC 8725 practices, RFC 8707 audiences).
//!
//! Rules, in the order they are applied:
//! 1. Tokens longer than the configured maximum (8 KiB by default) are refused unread.
//! 2. Only JWS compact serialisation: three base64url parts. Encrypted (JWE) tokens and
//!    anything else are refused.
//! 3. The header's `alg` must be in the allow-list of asymmetric algorithms; `none` and
//!    every HMAC algorithm are refused before any key is looked at. A `crit` header is
//!    refused (no extension is understood). `jku`, `x5u`, `jwk` and `x5c` are never used.
//! 4. The unverified `iss` only selects which trusted issuer's keys to try; a token naming
//!    an issuer that is not configured is refused without any fetch.
//! 5. The key is found by `kid` in that issuer's JWKS and must be pinned to the header's
//!    `alg` (see [`crate::jwks`]); the signature must verify.
//! 6. `iss` must equal the issuer exactly.
//! 7. `exp` is required and must be in the future (minus leeway); `nbf`, when present, must
//!    be in the past (plus leeway); malformed dates fail closed.
//! 8. `aud` is required and must contain this server's resource (or an explicitly
//!    configured extra audience): a token issued for another server is refused.
//! 9. When configured ([`crate::AuthConfig::require_at_jwt_typ`]), the header's `typ` must
//!    be `at+jwt` or `application/at+jwt` (RFC 9068 section 4, case-insensitive), so an ID
//!    token or another JWT of the same issuer is never taken for an access token. Off by
//!    default: some authorization servers issue access tokens with `typ: JWT`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::auth::AuthError;
use crate::context::AuthContext;
use crate::jwks::{KeyStore, Lookup};
use crate::refusal::Refusal;
use crate::resource::Resource;
use crate::scope::{ScopeHierarchy, scopes_from_claims};
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

/// A boxed verification future (only used when keys must be fetched).
pub(crate) type VerifyFuture = Pin<Box<dyn Future<Output = Result<AuthContext, AuthError>> + Send>>;

/// The outcome of verifying without waiting.
pub(crate) enum Verdict {
    Done(Result<AuthContext, AuthError>),
    NeedsKeys,
}

pub(crate) struct VerifierConfig {
    pub(crate) stores: Vec<KeyStore>,
    pub(crate) resource: Resource,
    pub(crate) extra_audiences: Vec<String>,
    pub(crate) leeway_secs: u64,
    pub(crate) max_token_bytes: usize,
    pub(crate) hierarchy: ScopeHierarchy,
    pub(crate) cache_capacity: usize,
    pub(crate) allowed: Vec<Algorithm>,
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
    store: usize,
}

impl TokenVerifier {
    pub(crate) fn new(config: VerifierConfig) -> Self {
        let cache = TokenCache::new(config.cache_capacity);
        Self {
            inner: Arc::new(Inner { config, cache }),
        }
    }

    pub(crate) fn stores(&self) -> &[KeyStore] {
        &self.inner.config.stores
    }

    /// Verifies with what is at hand; asks for [`TokenVerifier::verify`] when keys must be
    /// fetched first.
    pub(crate) fn verify_now(&self, token: &str) -> Verdict {
        let key = TokenCache::key(token);
        if let Some(ctx) = self.inner.cache.get(&key) {
            return Verdict::Done(Ok(ctx));
        }
        let parsed = match self.parse(token) {
            Ok(p) => p,
            Err(e) => return Verdict::Done(Err(e)),
        };
        let lookup =
            self.inner.config.stores[parsed.store].lookup_now(parsed.kid.as_deref(), parsed.alg);
        match lookup {
            Lookup::NeedsFetch => Verdict::NeedsKeys,
            other => Verdict::Done(self.finish(parsed, other, key)),
        }
    }

    /// Verifies, fetching the issuer's keys if the rules allow it.
    pub(crate) fn verify(&self, token: String) -> VerifyFuture {
        let this = self.clone();
        Box::pin(async move {
            let key = TokenCache::key(&token);
            let parsed = this.parse(&token)?;
            let store = this.inner.config.stores[parsed.store].clone();
            let lookup = store.lookup(parsed.kid.as_deref(), parsed.alg).await;
            this.finish(parsed, lookup, key)
        })
    }

    fn parse<'a>(&self, token: &'a str) -> Result<Parsed<'a>, AuthError> {
        let config = &self.inner.config;
        if token.len() > config.max_token_bytes {
            return Err(AuthError::invalid_token(
                "the token is longer than this server accepts",
            ));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::invalid_token(
                "the token is not a signed JWT (JWS compact form)",
            ));
        };
        let signing_input = &token[..header.len() + 1 + payload.len()];
        let header: JoseHeader = decode_json(header).ok_or_else(|| {
            AuthError::invalid_token("the token header is not valid base64url JSON")
        })?;
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
            .filter(|a| config.allowed.contains(a))
            .ok_or_else(|| {
                AuthError::invalid_token("the token's signing algorithm is not accepted")
            })?;
        let claims: Map<String, Value> = decode_json(payload)
            .ok_or_else(|| AuthError::invalid_token("the token payload is not a JSON object"))?;
        let iss = claims.get("iss").and_then(Value::as_str).ok_or_else(|| {
            AuthError::rejected_token("the token has no iss claim", Refusal::ISSUER)
        })?;
        let store = config
            .stores
            .iter()
            .position(|s| s.issuer().as_str() == iss)
            .ok_or_else(|| {
                AuthError::rejected_token(
                    "the token's issuer is not trusted by this server",
                    Refusal::ISSUER,
                )
            })?;
        Ok(Parsed {
            alg,
            kid: header.kid,
            signing_input,
            signature,
            claims,
            store,
        })
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
        let ctx = self.check_claims(parsed.store, parsed.claims)?;
        self.inner.cache.insert(cache_key, &ctx);
        Ok(ctx)
    }

    fn check_claims(
        &self,
        store: usize,
        claims: Map<String, Value>,
    ) -> Result<AuthContext, AuthError> {
        let config = &self.inner.config;
        let issuer = config.stores[store].issuer().as_str();
        if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
            return Err(AuthError::rejected_token(
                "the token's issuer is not trusted by this server",
                Refusal::ISSUER,
            ));
        }
        let now = now_secs();
        let leeway = config.leeway_secs;
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
        let for_us = audience.iter().any(|a| {
            config.resource.matches_audience(a) || config.extra_audiences.iter().any(|x| x == a)
        });
        if !for_us {
            return Err(AuthError::rejected_token(
                "the token was issued for another resource (aud does not name this server)",
                Refusal::AUDIENCE,
            ));
        }
        let scopes = scopes_from_claims(&claims);
        let effective = config.hierarchy.expand(&scopes);
        // The cache must never outlive exp; leeway only widens acceptance at check time.
        Ok(AuthContext::new(
            issuer.to_owned(),
            audience,
            scopes,
            effective,
            exp,
            claims,
        ))
    }
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
        let _ = scopes_from_claims(claims);
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
