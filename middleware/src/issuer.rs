//! [`TrustedIssuer`]: one authorization server whose tokens this server accepts, with its
//! own keys, algorithms, accepted audiences, scope claim and introspection.
//!
//! Several issuers may be trusted at once (tenants, or a migration from one authorization
//! server to another); all of them are listed in the protected resource metadata.
//!
//! Rules:
//! 1. A JWT is verified only against the issuer its `iss` names: no key of issuer A ever
//!    validates a token claiming issuer B, and no JWT is sent to another issuer's
//!    introspection endpoint (see [`crate::jwt`] rule 3). Encrypted (JWE) tokens are
//!    refused without introspection. The tokens that go to the one introspecting issuer
//!    without naming it are the non-JWT-shaped (opaque) ones ([`crate::jwt`] rule 2): an
//!    opaque token names no issuer, so with several issuers every opaque token presented,
//!    whoever issued it, reaches the introspecting issuer. Operators trusting several
//!    issuers should give introspection to one they would trust with the others' opaque
//!    tokens, or have the others issue JWTs.
//! 2. Keys come from discovery (the default), a configured `jwks_uri`, or a static JWKS.
//!    An issuer configured with introspection and no keys has its JWTs introspected too;
//!    [`TrustedIssuer::discover_keys`] keeps local verification of its JWTs.
//! 3. Each issuer has its own algorithm allow-list (default: the server-wide one,
//!    [`crate::AuthConfig::algorithms`]); only asymmetric algorithms are accepted.
//! 4. Extra audiences are accepted per issuer, on top of the canonical resource URL, which
//!    always stays accepted: an `api://` application ID URI configured for issuer A is not
//!    accepted in a token of issuer B. [`crate::AuthConfig::extra_audience`] adds one to
//!    every issuer. Audience checking cannot be switched off; an audience value must be
//!    1 to 1,024 bytes without control characters, and is compared exactly.
//! 5. Each issuer names the claim its scopes are in ([`ScopeClaim`]: `scope`, `scp` or
//!    both, the default).
//! 6. An issuer configured twice, or more than one issuer with introspection (opaque tokens
//!    would have no single destination), is a configuration error.

use jsonwebtoken::Algorithm;
use url::Url;

use crate::config::ConfigError;
use crate::introspect::Introspection;
use crate::jwks::KeySet;
use crate::jwt::DEFAULT_ALGORITHMS;
use crate::resource::Issuer;
use crate::scope::ScopeClaim;

/// Longest accepted audience value, in bytes.
pub(crate) const MAX_AUDIENCE_BYTES: usize = 1024;

/// Where an issuer's keys come from, as configured.
#[derive(Clone, Debug)]
pub(crate) enum Keys {
    /// Not set: discovery, unless the issuer introspects (then none).
    Default,
    /// Discovery, asked for explicitly.
    Discover,
    /// A configured JWKS URL.
    Fixed(Url),
    /// A JWKS document given in the configuration.
    Static(serde_json::Value),
}

/// One trusted authorization server. See the [module docs](self) for the rules.
#[derive(Clone, Debug)]
#[must_use]
pub struct TrustedIssuer {
    pub(crate) issuer: Issuer,
    pub(crate) keys: Keys,
    pub(crate) algorithms: Option<Vec<Algorithm>>,
    pub(crate) audiences: Vec<String>,
    pub(crate) scope_claim: ScopeClaim,
    pub(crate) introspection: Option<Introspection>,
}

impl TrustedIssuer {
    /// Trusts `issuer`; its keys are found through discovery (RFC 8414, then OpenID
    /// Connect), unless introspection is configured without keys.
    pub fn new(issuer: Issuer) -> Self {
        Self {
            issuer,
            keys: Keys::Default,
            algorithms: None,
            audiences: Vec::new(),
            scope_claim: ScopeClaim::default(),
            introspection: None,
        }
    }

    /// The issuer identifier.
    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// Finds the keys through discovery even when introspection is configured: the
    /// issuer's JWTs are then verified locally and only opaque tokens are introspected.
    pub fn discover_keys(mut self) -> Self {
        self.keys = Keys::Discover;
        self
    }

    /// The issuer's keys are at `jwks_uri` (`https`, or `http` on loopback); no discovery.
    pub fn jwks_uri(mut self, jwks_uri: &str) -> Result<Self, ConfigError> {
        let url = Url::parse(jwks_uri).map_err(|e| {
            ConfigError::new(format!(
                "jwks uri `{jwks_uri}` of issuer `{}` is not a URL: {e}",
                self.issuer
            ))
        })?;
        crate::discovery::check_jwks_url(&url)
            .map_err(|e| ConfigError::new(format!("issuer `{}`: {e}", self.issuer)))?;
        self.keys = Keys::Fixed(url);
        Ok(self)
    }

    /// The issuer's keys are those of `jwks` (a JWKS document), never fetched or
    /// refreshed: for pinned keys, air-gapped set-ups and benchmarks.
    pub fn static_jwks(mut self, jwks: &serde_json::Value) -> Result<Self, ConfigError> {
        check_static_jwks(&self.issuer, jwks, DEFAULT_ALGORITHMS, usize::MAX)?;
        self.keys = Keys::Static(jwks.clone());
        Ok(self)
    }

    /// The signature algorithms accepted from this issuer (default: the server-wide list).
    /// HMAC and `none` are refused.
    pub fn algorithms(mut self, algorithms: &[Algorithm]) -> Result<Self, ConfigError> {
        check_algorithms(algorithms)
            .map_err(|e| ConfigError::new(format!("issuer `{}`: {e}", self.issuer)))?;
        self.algorithms = Some(algorithms.to_vec());
        Ok(self)
    }

    /// Also accepts tokens of this issuer whose `aud` holds exactly `audience` (an Entra
    /// ID `api://` application ID URI, a client id): the canonical resource URL stays
    /// accepted. Checked when the configuration is built (1 to 1,024 bytes).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        let audience = audience.into();
        if !self.audiences.contains(&audience) {
            self.audiences.push(audience);
        }
        self
    }

    /// The claim this issuer's scopes are in. Default is [`ScopeClaim::Both`].
    pub fn scope_claim(mut self, claim: ScopeClaim) -> Self {
        self.scope_claim = claim;
        self
    }

    /// Verifies this issuer's opaque tokens (and, without configured keys, its JWTs) by
    /// RFC 7662 introspection.
    pub fn introspection(mut self, introspection: Introspection) -> Self {
        self.introspection = Some(introspection);
        self
    }
}

/// Checks an algorithm allow-list: non-empty, asymmetric only.
pub(crate) fn check_algorithms(algorithms: &[Algorithm]) -> Result<(), ConfigError> {
    if algorithms.is_empty() {
        return Err(ConfigError::new("the algorithm allow-list is empty"));
    }
    if let Some(bad) = algorithms.iter().find(|a| !DEFAULT_ALGORITHMS.contains(a)) {
        return Err(ConfigError::new(format!(
            "{bad:?} is not an accepted access-token algorithm (only asymmetric ones are)"
        )));
    }
    Ok(())
}

/// Parses a static JWKS with `algorithms`; it must hold a usable key.
pub(crate) fn check_static_jwks(
    issuer: &Issuer,
    jwks: &serde_json::Value,
    algorithms: &[Algorithm],
    max_keys: usize,
) -> Result<KeySet, ConfigError> {
    let (keys, skipped) = KeySet::from_jwks(jwks, algorithms, max_keys)
        .map_err(|e| ConfigError::new(format!("the JWKS given for `{issuer}`: {e}")))?;
    if keys.len() == 0 {
        return Err(ConfigError::new(format!(
            "the JWKS given for `{issuer}` holds no usable signing key ({})",
            skipped.join("; ")
        )));
    }
    Ok(keys)
}

/// Checks an accepted audience value (rule 4).
pub(crate) fn check_audience(issuer: Option<&Issuer>, audience: &str) -> Result<(), ConfigError> {
    let whose = match issuer {
        Some(issuer) => format!("of issuer `{issuer}`"),
        None => "(extra audience of every issuer)".to_owned(),
    };
    if audience.trim().is_empty() {
        return Err(ConfigError::new(format!(
            "an empty audience {whose} is refused: give the exact `aud` value the authorization server puts in its tokens"
        )));
    }
    if audience.len() > MAX_AUDIENCE_BYTES {
        return Err(ConfigError::new(format!(
            "the audience {whose} is longer than {MAX_AUDIENCE_BYTES} bytes"
        )));
    }
    if audience.chars().any(char::is_control) {
        return Err(ConfigError::new(format!(
            "the audience `{}` {whose} holds control characters",
            audience.escape_default()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> Issuer {
        Issuer::parse("https://login.example/tenant").unwrap()
    }

    #[test]
    fn audience_values_must_be_nonempty_and_bounded() {
        assert!(check_audience(Some(&issuer()), "api://notes").is_ok());
        for bad in ["", "  ", "a\nb"] {
            let e = check_audience(Some(&issuer()), bad).unwrap_err();
            assert!(e.to_string().contains("login.example/tenant"), "{e}");
        }
        assert!(check_audience(None, &"a".repeat(MAX_AUDIENCE_BYTES + 1)).is_err());
        assert!(check_audience(None, &"a".repeat(MAX_AUDIENCE_BYTES)).is_ok());
    }

    #[test]
    fn algorithms_are_chosen_per_issuer_and_only_asymmetric() {
        let t = TrustedIssuer::new(issuer());
        assert!(t.clone().algorithms(&[Algorithm::ES256]).is_ok());
        assert!(t.clone().algorithms(&[]).is_err());
        let e = t.algorithms(&[Algorithm::HS256]).unwrap_err();
        assert!(e.to_string().contains("login.example"), "{e}");
    }

    #[test]
    fn issuer_keys_come_from_discovery_jwks_uri_or_static_jwks() {
        let t = TrustedIssuer::new(issuer());
        assert!(matches!(t.keys, Keys::Default));
        assert!(matches!(t.clone().discover_keys().keys, Keys::Discover));
        assert!(matches!(
            t.clone()
                .jwks_uri("https://login.example/keys")
                .unwrap()
                .keys,
            Keys::Fixed(_)
        ));
        assert!(t.clone().jwks_uri("http://login.example/keys").is_err());
        assert!(t.clone().jwks_uri("not a url").is_err());
        assert!(t.static_jwks(&serde_json::json!({"keys": []})).is_err());
    }
}
