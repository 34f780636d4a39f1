//! DPoP proofs (RFC 9449): verifying a `DPoP` header, and the resource server's settings.
//!
//! [`verify_proof`] checks one proof JWT against what the request must look like
//! ([`ProofRequirements`]); it is used by the auth layer (a resource server, see
//! [`crate::auth`]) and by bmm-as at its token endpoint. Replay detection (`jti`) is the
//! caller's job: the auth layer keeps a bounded in-memory cache (see [`DpopConfig`]).
//!
//! # Rules of a proof
//! Applied in this order; the first failure is the answer.
//! 1. **proof_size_is_bounded**: a proof longer than [`MAX_PROOF_BYTES`] is refused unread.
//! 2. **proof_is_compact_jws**: three base64url parts, header and payload JSON objects;
//!    a `crit` header parameter is refused (no extension is understood).
//! 3. **proof_typ_is_dpop_jwt**: the header's `typ` is `dpop+jwt` (case-insensitive).
//! 4. **proof_alg_is_asymmetric_and_allowed**: `alg` is in the caller's allow-list and is
//!    never `none` nor an HMAC algorithm, whatever the list says.
//! 5. **proof_jwk_is_a_public_key_fitting_alg**: the header carries `jwk`, a public key
//!    (any private member such as `d` is refused) of the type and curve `alg` needs (RSA of
//!    at least 2048 bits, P-256 for ES256, P-384 for ES384, Ed25519 for EdDSA); a `jwk.alg`
//!    must equal `alg`.
//! 6. **proof_signature_verifies_with_its_jwk**.
//! 7. **proof_jti_is_bounded**: `jti` is a non-empty string of at most [`MAX_JTI_BYTES`].
//! 8. **proof_htm_equals_method**: `htm` equals the request method exactly.
//! 9. **proof_htu_equals_url**: `htu` equals the request URL, query and fragment ignored,
//!    after RFC 3986 normalisation (scheme and host case, default port, percent-encoding
//!    case and unreserved characters, dot segments); only `http` and `https` URLs.
//! 10. **proof_iat_within_window**: `iat` is a number at most `max_age_secs` in the past
//!     and, rule **future_iat_is_accepted_only_within_a_small_skew**, at most
//!     [`MAX_FUTURE_IAT_SKEW_SECS`] (60 s, or `max_age_secs` if smaller) in the future: a
//!     proof dated ahead would otherwise stay valid, and occupy a replay-cache entry, for
//!     up to twice the window.
//! 11. **proof_ath_matches_access_token**: when an access token is given, `ath` is required
//!     and equals base64url(SHA-256(token)); it is compared in constant time.
//! 12. **proof_nonce_equals_required_nonce**: when a nonce is required, the proof's `nonce`
//!     must equal it (constant time); a missing or different nonce is a nonce problem
//!     ([`ProofError::is_nonce_problem`], answered `use_dpop_nonce`).
//!
//! The key's identity is its RFC 7638 SHA-256 thumbprint ([`jwk_thumbprint`]), which a
//! bound access token names in `cnf.jkt`.
//!
//! # Per-process state of the resource server
//! The resource server's nonce key (random at start-up) and its `jti` replay cache live in
//! the memory of one process: replicas behind a load balancer do not share them (a nonce
//! of one replica is refused by another, and a proof replayed to another replica is not
//! detected). bmm-as, by contrast, keeps both in its shared store (nonces derived from its
//! stored keys, proof `jti`s recorded there). The replay cache is bounded overall and per
//! key, and expires entries by time bucket; see the rules on [`DpopConfig`].

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use url::Url;

use crate::config::ConfigError;

/// The longest proof accepted, in bytes.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;

/// The longest `jti` accepted, in bytes.
pub const MAX_JTI_BYTES: usize = 256;

/// How far in the future a proof's `iat` may be, in seconds, whatever `max_age_secs` says
/// (rule 10): clock skew between a client and the server, not a second window.
pub const MAX_FUTURE_IAT_SKEW_SECS: u64 = 60;

/// The proof algorithms accepted by default: every asymmetric algorithm this crate verifies.
pub const DEFAULT_PROOF_ALGORITHMS: &[Algorithm] = crate::jwt::DEFAULT_ALGORITHMS;

/// What a proof must match: the request it comes with.
#[derive(Clone, Copy, Debug)]
pub struct ProofRequirements<'a> {
    /// The HTTP method of the request (`htm`).
    pub method: &'a str,
    /// The URL of the request without query and fragment (`htu`).
    pub url: &'a str,
    /// The access token the proof comes with; `ath` is then required.
    pub access_token: Option<&'a str>,
    /// The nonce the proof must carry, when the server requires one.
    pub nonce: Option<&'a str>,
    /// The current time, in seconds since the Unix epoch.
    pub now: u64,
    /// How far in the past `iat` may be, in seconds; in the future it may be at most this
    /// or [`MAX_FUTURE_IAT_SKEW_SECS`], whichever is smaller.
    pub max_age_secs: u64,
    /// The accepted signature algorithms (symmetric ones and `none` are refused anyway).
    pub algorithms: &'a [Algorithm],
}

/// A proof that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedProof {
    /// The RFC 7638 SHA-256 thumbprint of the proof's key, base64url.
    pub jkt: String,
    /// The proof's `jti`, for the caller's replay cache.
    pub jti: String,
    /// The proof's `iat`.
    pub iat: u64,
    /// The proof's `nonce`, if it carries one (whether or not one was required).
    pub nonce: Option<String>,
}

/// Why a proof was refused. The `Display` text is safe to show to clients: it never
/// repeats the proof or the token.
#[derive(Clone, PartialEq, Eq)]
pub struct ProofError {
    kind: ProofErrorKind,
    reason: &'static str,
}

/// The class of a [`ProofError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofErrorKind {
    /// Larger than [`MAX_PROOF_BYTES`].
    TooLarge,
    /// Not a compact JWS with JSON header and payload, or a missing/mistyped claim.
    Malformed,
    /// `typ` is not `dpop+jwt`.
    Type,
    /// `alg` is not accepted.
    Algorithm,
    /// `jwk` is missing, private, unsupported or does not fit `alg`.
    Key,
    /// The signature does not verify.
    Signature,
    /// `jti` is missing, empty or too long.
    Jti,
    /// `htm` differs from the request method.
    Method,
    /// `htu` differs from the request URL.
    Url,
    /// `iat` is missing or outside the window.
    IssuedAt,
    /// `ath` is missing or does not match the access token.
    AccessTokenHash,
    /// The required nonce is missing, different or stale.
    Nonce,
    /// The proof (its `jti` for this key) was seen before.
    Replay,
    /// The proof's key is not the one the access token is bound to.
    KeyMismatch,
    /// The proof's key already has as many live proofs in the replay cache as one key may.
    TooManyProofs,
}

impl ProofError {
    const fn new(kind: ProofErrorKind, reason: &'static str) -> Self {
        Self { kind, reason }
    }

    /// A replayed proof (for callers keeping a `jti` cache).
    pub const fn replayed() -> Self {
        Self::new(
            ProofErrorKind::Replay,
            "the DPoP proof was already used (jti replay)",
        )
    }

    /// A proof whose key is not the one the token is bound to (`cnf.jkt`).
    pub const fn key_mismatch() -> Self {
        Self::new(
            ProofErrorKind::KeyMismatch,
            "the DPoP proof key does not match the key the token is bound to",
        )
    }

    /// A proof whose key already holds its share of the replay cache.
    pub const fn too_many_proofs() -> Self {
        Self::new(
            ProofErrorKind::TooManyProofs,
            "too many proofs for this key: this server remembers a limited number of recent proofs per key; retry later",
        )
    }

    /// A missing or stale server nonce (for callers issuing their own nonces).
    pub const fn nonce_required() -> Self {
        Self::new(
            ProofErrorKind::Nonce,
            "the resource requires a fresh server nonce in the DPoP proof",
        )
    }

    /// The class of the failure.
    pub fn kind(&self) -> ProofErrorKind {
        self.kind
    }

    /// Whether the answer is `use_dpop_nonce` (RFC 9449 section 8/9) rather than
    /// `invalid_dpop_proof`.
    pub fn is_nonce_problem(&self) -> bool {
        self.kind == ProofErrorKind::Nonce
    }

    /// The reason, safe to show to clients.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Debug for ProofError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProofError")
            .field("kind", &self.kind)
            .field("reason", &self.reason)
            .finish()
    }
}

impl fmt::Display for ProofError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)
    }
}

impl std::error::Error for ProofError {}

use ProofErrorKind as K;

fn malformed(reason: &'static str) -> ProofError {
    ProofError::new(K::Malformed, reason)
}

/// Verifies a DPoP proof against the request it came with. See the module docs for the
/// rules, applied in order.
pub fn verify_proof(proof: &str, req: &ProofRequirements<'_>) -> Result<VerifiedProof, ProofError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(ProofError::new(
            K::TooLarge,
            "the DPoP proof is larger than this server accepts",
        ));
    }
    let mut parts = proof.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(
            "the DPoP proof is not a signed JWT (JWS compact form)",
        ));
    };
    let header: Map<String, Value> = decode_json(header_b64)
        .ok_or_else(|| malformed("the DPoP proof header is not base64url JSON"))?;
    if header.contains_key("crit") {
        return Err(malformed(
            "the DPoP proof has critical header parameters this server does not understand",
        ));
    }
    let typ_ok = header
        .get("typ")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"));
    if !typ_ok {
        return Err(ProofError::new(
            K::Type,
            "the DPoP proof's typ is not dpop+jwt",
        ));
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(|a| a.parse::<Algorithm>().ok())
        .filter(|a| is_asymmetric(*a) && req.algorithms.contains(a))
        .ok_or_else(|| {
            ProofError::new(
                K::Algorithm,
                "the DPoP proof's signing algorithm is not accepted",
            )
        })?;
    let Some(Value::Object(jwk)) = header.get("jwk") else {
        return Err(ProofError::new(
            K::Key,
            "the DPoP proof header carries no jwk public key",
        ));
    };
    let key = public_key(jwk, alg)?;
    let signing_input = &proof[..header_b64.len() + 1 + payload_b64.len()];
    let valid = jsonwebtoken::crypto::verify(signature, signing_input.as_bytes(), &key, alg)
        .unwrap_or(false);
    if !valid {
        return Err(ProofError::new(
            K::Signature,
            "the DPoP proof signature does not verify with its jwk",
        ));
    }
    let claims: Map<String, Value> = decode_json(payload_b64)
        .ok_or_else(|| malformed("the DPoP proof payload is not a JSON object"))?;
    let text = |name: &str| claims.get(name).and_then(Value::as_str);

    let jti = text("jti")
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_BYTES)
        .ok_or_else(|| {
            ProofError::new(K::Jti, "the DPoP proof's jti is missing, empty or too long")
        })?;
    if text("htm") != Some(req.method) {
        return Err(ProofError::new(
            K::Method,
            "the DPoP proof's htm does not match the request method",
        ));
    }
    let htu_ok = match (text("htu").and_then(normalize_url), normalize_url(req.url)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    };
    if !htu_ok {
        return Err(ProofError::new(
            K::Url,
            "the DPoP proof's htu does not match the request URL",
        ));
    }
    let iat = claims
        .get("iat")
        .and_then(numeric_date)
        .ok_or_else(|| ProofError::new(K::IssuedAt, "the DPoP proof has no numeric iat"))?;
    if iat < req.now.saturating_sub(req.max_age_secs) {
        return Err(ProofError::new(
            K::IssuedAt,
            "the DPoP proof is too old (iat outside the accepted window)",
        ));
    }
    let skew = req.max_age_secs.min(MAX_FUTURE_IAT_SKEW_SECS);
    if iat > req.now.saturating_add(skew) {
        return Err(ProofError::new(
            K::IssuedAt,
            "the DPoP proof is issued in the future (iat outside the accepted window)",
        ));
    }
    if let Some(token) = req.access_token {
        let Some(ath) = text("ath") else {
            return Err(ProofError::new(
                K::AccessTokenHash,
                "the DPoP proof has no ath (hash of the access token)",
            ));
        };
        if !constant_time_eq(ath.as_bytes(), access_token_hash(token).as_bytes()) {
            return Err(ProofError::new(
                K::AccessTokenHash,
                "the DPoP proof's ath does not match the access token",
            ));
        }
    }
    let nonce = text("nonce");
    if let Some(required) = req.nonce {
        match nonce {
            None => return Err(ProofError::nonce_required()),
            Some(n) if !constant_time_eq(n.as_bytes(), required.as_bytes()) => {
                return Err(ProofError::new(
                    K::Nonce,
                    "the DPoP proof's nonce is not the one the server issued",
                ));
            }
            Some(_) => {}
        }
    }
    let jkt = thumbprint_of(jwk)?;
    Ok(VerifiedProof {
        jkt,
        jti: jti.to_owned(),
        iat,
        nonce: nonce.map(str::to_owned),
    })
}

/// `ath`: base64url(SHA-256(access token)) (RFC 9449 section 4.2).
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// The RFC 7638 JWK SHA-256 thumbprint, base64url, of an RSA, EC or OKP public key.
/// Symmetric (`oct`) and unknown key types are refused.
pub fn jwk_thumbprint(jwk: &Value) -> Result<String, ProofError> {
    match jwk {
        Value::Object(map) => thumbprint_of(map),
        _ => Err(ProofError::new(K::Key, "the jwk is not a JSON object")),
    }
}

fn thumbprint_of(jwk: &Map<String, Value>) -> Result<String, ProofError> {
    let members: &[&str] = match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA") => &["e", "kty", "n"],
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("OKP") => &["crv", "kty", "x"],
        _ => {
            return Err(ProofError::new(
                K::Key,
                "the jwk's key type is not RSA, EC or OKP",
            ));
        }
    };
    // Required members only, in lexicographic order, no whitespace (RFC 7638 section 3).
    let mut canonical = String::from("{");
    for (i, name) in members.iter().enumerate() {
        let value = jwk.get(*name).and_then(Value::as_str).ok_or_else(|| {
            ProofError::new(K::Key, "the jwk lacks a member its key type requires")
        })?;
        if i > 0 {
            canonical.push(',');
        }
        canonical.push('"');
        canonical.push_str(name);
        canonical.push_str("\":");
        canonical.push_str(&Value::String(value.to_owned()).to_string());
    }
    canonical.push('}');
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

fn is_asymmetric(alg: Algorithm) -> bool {
    DEFAULT_PROOF_ALGORITHMS.contains(&alg)
}

/// Members that only a private (or symmetric) JWK has.
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fn public_key(jwk: &Map<String, Value>, alg: Algorithm) -> Result<DecodingKey, ProofError> {
    let bad = |reason| ProofError::new(K::Key, reason);
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(bad("the DPoP proof's jwk contains private key material"));
    }
    if let Some(declared) = jwk.get("alg") {
        let same = declared
            .as_str()
            .and_then(|a| a.parse::<Algorithm>().ok())
            .is_some_and(|a| a == alg);
        if !same {
            return Err(bad("the DPoP proof's jwk alg differs from the header alg"));
        }
    }
    let field = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| bad("the DPoP proof's jwk lacks a member its key type requires"))
    };
    let decoded_len = |v: &str| {
        URL_SAFE_NO_PAD
            .decode(v)
            .map(|b| b.len())
            .map_err(|_| bad("the DPoP proof's jwk holds a value that is not base64url"))
    };
    let kty = field("kty")?;
    match (kty, alg) {
        (
            "RSA",
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => {
            let (n, e) = (field("n")?, field("e")?);
            let n_bytes = URL_SAFE_NO_PAD
                .decode(n)
                .map_err(|_| bad("the DPoP proof's jwk holds a value that is not base64url"))?;
            let significant = n_bytes.iter().skip_while(|b| **b == 0).count();
            if significant < 256 {
                return Err(bad("the DPoP proof's RSA key is shorter than 2048 bits"));
            }
            if !(1..=8).contains(&decoded_len(e)?) {
                return Err(bad("the DPoP proof's RSA exponent is not valid"));
            }
            DecodingKey::from_rsa_components(n, e)
                .map_err(|_| bad("the DPoP proof's jwk is not a valid RSA key"))
        }
        ("EC", Algorithm::ES256 | Algorithm::ES384) => {
            let (want_crv, size) = if alg == Algorithm::ES256 {
                ("P-256", 32)
            } else {
                ("P-384", 48)
            };
            if field("crv")? != want_crv {
                return Err(bad("the DPoP proof's EC key curve does not fit alg"));
            }
            let (x, y) = (field("x")?, field("y")?);
            if decoded_len(x)? != size || decoded_len(y)? != size {
                return Err(bad("the DPoP proof's EC coordinates do not fit the curve"));
            }
            DecodingKey::from_ec_components(x, y)
                .map_err(|_| bad("the DPoP proof's jwk is not a valid EC key"))
        }
        ("OKP", Algorithm::EdDSA) => {
            if field("crv")? != "Ed25519" {
                return Err(bad("the DPoP proof's OKP key is not Ed25519"));
            }
            let x = field("x")?;
            if decoded_len(x)? != 32 {
                return Err(bad("the DPoP proof's Ed25519 key has the wrong length"));
            }
            DecodingKey::from_ed_components(x)
                .map_err(|_| bad("the DPoP proof's jwk is not a valid Ed25519 key"))
        }
        _ => Err(bad(
            "the DPoP proof's jwk is not a key type that fits its alg",
        )),
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A JSON number as whole seconds; negative and non-finite values fail.
fn numeric_date(v: &Value) -> Option<u64> {
    if let Some(u) = v.as_u64() {
        return Some(u);
    }
    let f = v.as_f64()?;
    (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then_some(f as u64)
}

/// The RFC 3986 section 6.2.2/6.2.3 normal form of an `http(s)` URL without query and
/// fragment: `scheme://host:port/path`. `None` for anything else (userinfo included).
pub(crate) fn normalize_url(input: &str) -> Option<String> {
    // The url crate lowercases scheme and host, removes dot segments and gives an empty
    // path as `/`; the default port and percent-encoding are handled here.
    let url = Url::parse(input).ok()?;
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return None;
    }
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    Some(format!(
        "{}://{}:{}{}",
        url.scheme(),
        host,
        port,
        normalize_percent_encoding(url.path())
    ))
}

/// Uppercases percent-encoding hex digits and decodes percent-encoded unreserved
/// characters (RFC 3986 section 6.2.2.1 and 6.2.2.2).
fn normalize_percent_encoding(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            let byte = h * 16 + l;
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(byte));
            } else {
                out.push('%');
                out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
            }
            i += 3;
        } else {
            out.push(char::from(bytes[i]));
            i += 1;
        }
    }
    Cow::Owned(out)
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Compares two byte strings without an early exit on the first difference.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------------------------------
// Resource-server settings and state
// ---------------------------------------------------------------------------------------

/// Whether the resource server accepts DPoP (RFC 9449) and Bearer tokens.
///
/// In every mode a DPoP-bound token (one with `cnf.jkt`) is refused when presented with the
/// `Bearer` scheme: its binding cannot be checked without a proof.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DpopMode {
    /// The `DPoP` scheme is not recognised (treated like any unknown scheme: 401 without
    /// `error`); only unbound Bearer tokens work.
    Off,
    /// Both: unbound tokens as `Bearer`, bound tokens as `DPoP` with a proof. The default.
    #[default]
    Allowed,
    /// Only bound tokens as `DPoP` with a proof; `Bearer` is refused.
    Required,
}

impl DpopMode {
    /// Whether the `DPoP` scheme is accepted.
    pub fn accepts_dpop(self) -> bool {
        self != Self::Off
    }

    /// Whether the `Bearer` scheme is accepted (for unbound tokens).
    pub fn accepts_bearer(self) -> bool {
        self != Self::Required
    }
}

/// DPoP settings of the auth layer ([`crate::AuthConfig::dpop`]).
///
/// Rules of the resource server (see also [`crate::auth`]):
/// 1. **bound_token_requires_dpop_scheme_and_matching_proof**: a token with `cnf.jkt` is
///    accepted only with `Authorization: DPoP`, exactly one `DPoP` header and a proof
///    ([module rules](self)) whose key thumbprint equals `cnf.jkt`; as `Bearer` it is
///    refused with 401 `invalid_token`.
/// 2. **dpop_scheme_with_unbound_token_is_refused**: 401 `invalid_token`.
/// 3. **htu_is_the_configured_resource_origin_plus_request_path**: never the `Host` header.
/// 4. **proof_replay_is_refused**: a `jti` seen before for the same key (within the `iat`
///    window) is refused with `invalid_dpop_proof`. The replay cache is in memory and
///    bounded ([`DpopConfig::replay_cache_capacity`]); entries expire once their proof
///    could no longer pass the `iat` check (at most `max_age` + 60 s + 1 s after they
///    enter, see the module's rule 10). When it is full of unexpired entries, new proofs
///    are refused (503, fail closed) rather than forgetting a `jti` early. A proof enters
///    the cache once it verified and matched the token's key, before the scope checks and
///    any rate limit: a refused-for-scope request still used its proof.
/// 5. **one_key_cannot_fill_the_replay_cache_for_others**: one key (`jkt`) may hold at
///    most [`DpopConfig::replay_cache_per_key`] live entries (default: a sixteenth of the
///    capacity, at least 1,024, at most the capacity; with the defaults 6,250, about
///    20 requests per second sustained for one key). Beyond that, only that key's new
///    proofs are refused, 401 `invalid_dpop_proof` ("too many proofs for this key"), until
///    its entries expire; other keys are unaffected (fail closed for that key only). It
///    takes many distinct bound keys to fill the whole cache.
/// 6. **replay_cache_expiry_is_bucketed**: entries are kept in buckets by expiry second
///    and dropped bucket by bucket, so a request never scans the cache, even when it is
///    full (a full cache is answered at once).
/// 7. **nonce_key_and_replay_cache_are_per_process**: the nonce key is random per
///    process and the replay cache lives in memory: replicas behind a load balancer do
///    not share them (a nonce from one replica fails on another, and a proof replayed to
///    another replica is not detected there). bmm-as's are shared through its store (see
///    the [module docs](self)).
/// 8. **nonce_required_answers_use_dpop_nonce**: with [`DpopConfig::nonce`], a proof
///    without a valid server nonce gets 401 `error="use_dpop_nonce"` and a `DPoP-Nonce`
///    header. Nonces are stateless (HMAC-SHA-256 over their issue time with a random
///    per-process key), valid for [`DpopConfig::nonce_lifetime`]; every 401 carries a
///    fresh one and an admitted request whose nonce is past half its lifetime gets a new
///    one in its response.
/// 9. **required_mode_refuses_bearer**: [`DpopMode::Required`] answers `Bearer` with 401
///    `invalid_token`; [`DpopMode::Off`] treats the `DPoP` scheme as unknown.
/// 10. **challenges_carry_dpop_algs**: with DPoP on, every 401 carries
///     `WWW-Authenticate: DPoP algs="…"` (with `error` for DPoP errors) besides the Bearer
///     challenge when Bearer is accepted.
#[derive(Clone, Debug)]
#[must_use]
pub struct DpopConfig {
    pub(crate) mode: DpopMode,
    pub(crate) nonce: bool,
    pub(crate) max_age: Duration,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) replay_capacity: usize,
    pub(crate) replay_per_key: Option<usize>,
    pub(crate) nonce_lifetime: Duration,
}

impl Default for DpopConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl DpopConfig {
    /// DPoP allowed, no nonce, a 300 s `iat` window (SEP-1932), every asymmetric algorithm.
    pub fn new() -> Self {
        Self {
            mode: DpopMode::Allowed,
            nonce: false,
            max_age: Duration::from_secs(300),
            algorithms: DEFAULT_PROOF_ALGORITHMS.to_vec(),
            replay_capacity: 100_000,
            replay_per_key: None,
            nonce_lifetime: Duration::from_secs(300),
        }
    }

    /// Off, allowed (default) or required.
    pub fn mode(mut self, mode: DpopMode) -> Self {
        self.mode = mode;
        self
    }

    /// Requires a server nonce in every proof (RFC 9449 section 9). Default off.
    pub fn nonce(mut self, required: bool) -> Self {
        self.nonce = required;
        self
    }

    /// How far in the past a proof's `iat` may be. Default 300 s; 1 s to 10 minutes
    /// (checked when the authenticator is built). In the future it may be at most
    /// [`MAX_FUTURE_IAT_SKEW_SECS`] (or this, if smaller).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// The accepted proof algorithms (advertised in challenges and metadata). Only
    /// asymmetric ones; checked when the authenticator is built.
    pub fn algorithms(mut self, algorithms: &[Algorithm]) -> Self {
        self.algorithms = algorithms.to_vec();
        self
    }

    /// Entries of the `jti` replay cache. Default 100,000; at least 1.
    pub fn replay_cache_capacity(mut self, entries: usize) -> Self {
        self.replay_capacity = entries;
        self
    }

    /// Live replay-cache entries one key (`jkt`) may hold (rule 5). Default: a sixteenth
    /// of [`Self::replay_cache_capacity`], at least 1,024; never more than the capacity;
    /// at least 1.
    pub fn replay_cache_per_key(mut self, entries: usize) -> Self {
        self.replay_per_key = Some(entries);
        self
    }

    /// The effective per-key share of the replay cache (rule 5).
    pub(crate) fn per_key_entries(&self) -> usize {
        self.replay_per_key
            .unwrap_or((self.replay_capacity / 16).max(1024))
            .min(self.replay_capacity)
    }

    /// How long a server nonce stays valid. Default 5 minutes; 10 s to 1 hour.
    pub fn nonce_lifetime(mut self, lifetime: Duration) -> Self {
        self.nonce_lifetime = lifetime;
        self
    }

    /// The configured mode.
    pub fn get_mode(&self) -> DpopMode {
        self.mode
    }

    /// The accepted proof algorithms.
    pub fn get_algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.mode == DpopMode::Off {
            return Ok(());
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::new(
                "the DPoP proof algorithm list is empty: give at least one (for example ES256)",
            ));
        }
        if let Some(bad) = self.algorithms.iter().find(|a| !is_asymmetric(**a)) {
            return Err(ConfigError::new(format!(
                "{bad:?} is not an accepted DPoP proof algorithm (only asymmetric ones are)"
            )));
        }
        if self.max_age < Duration::from_secs(1) || self.max_age > Duration::from_secs(600) {
            return Err(ConfigError::new(
                "the DPoP proof iat window (max_age) must be between 1 second and 10 minutes",
            ));
        }
        if self.replay_capacity == 0 {
            return Err(ConfigError::new(
                "the DPoP replay cache capacity is zero: replayed proofs could not be detected",
            ));
        }
        if self.replay_per_key == Some(0) {
            return Err(ConfigError::new(
                "the DPoP replay cache share per key is zero: no DPoP proof could be accepted",
            ));
        }
        if self.nonce
            && (self.nonce_lifetime < Duration::from_secs(10)
                || self.nonce_lifetime > Duration::from_secs(3600))
        {
            return Err(ConfigError::new(
                "the DPoP nonce lifetime must be between 10 seconds and 1 hour",
            ));
        }
        Ok(())
    }
}

/// What checking a request's proof gave, besides success.
pub(crate) enum DpopRefusal {
    Proof(ProofError),
    /// The replay cache is full of live entries (fail closed).
    Busy,
}

/// The resource server's DPoP state: settings, replay cache, nonce key.
pub(crate) struct DpopState {
    mode: DpopMode,
    algorithms: Vec<Algorithm>,
    max_age_secs: u64,
    origin: String,
    replay: ReplayCache,
    nonces: Option<std::sync::Arc<NonceIssuer>>,
}

impl DpopState {
    pub(crate) fn new(config: &DpopConfig, resource: &crate::Resource) -> Self {
        let nonces = config.nonce.then(|| {
            std::sync::Arc::new(NonceIssuer::new(
                rand::random::<[u8; 32]>(),
                config.nonce_lifetime.as_secs(),
            ))
        });
        Self {
            mode: config.mode,
            algorithms: config.algorithms.clone(),
            max_age_secs: config.max_age.as_secs(),
            origin: resource.url().origin().ascii_serialization(),
            replay: ReplayCache::new(config.replay_capacity, config.per_key_entries()),
            nonces,
        }
    }

    pub(crate) fn mode(&self) -> DpopMode {
        self.mode
    }

    pub(crate) fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    pub(crate) fn nonces(&self) -> Option<&std::sync::Arc<NonceIssuer>> {
        self.nonces.as_ref()
    }

    /// Checks the proof of a request carrying a token bound to `jkt`. On success, returns
    /// a fresh nonce to send when the proof's one is ageing.
    pub(crate) fn check(
        &self,
        proof: &str,
        method: &str,
        path: &str,
        token: &str,
        jkt: &str,
        now: u64,
    ) -> Result<Option<String>, DpopRefusal> {
        let url = format!("{}{}", self.origin, path);
        let verified = verify_proof(
            proof,
            &ProofRequirements {
                method,
                url: &url,
                access_token: Some(token),
                nonce: None,
                now,
                max_age_secs: self.max_age_secs,
                algorithms: &self.algorithms,
            },
        )
        .map_err(DpopRefusal::Proof)?;
        if !constant_time_eq(verified.jkt.as_bytes(), jkt.as_bytes()) {
            return Err(DpopRefusal::Proof(ProofError::key_mismatch()));
        }
        let mut fresh = None;
        if let Some(nonces) = &self.nonces {
            match verified.nonce.as_deref().map(|n| nonces.check(n, now)) {
                Some(NonceAge::Fresh) => {}
                Some(NonceAge::Ageing) => fresh = Some(nonces.issue(now)),
                Some(NonceAge::Invalid) | None => {
                    return Err(DpopRefusal::Proof(ProofError::nonce_required()));
                }
            }
        }
        // Remembered until no proof with this iat could pass the window check any more.
        let until = verified
            .iat
            .max(now)
            .saturating_add(self.max_age_secs)
            .saturating_add(1);
        match self
            .replay
            .remember(&verified.jkt, &verified.jti, now, until)
        {
            Remember::New => Ok(fresh),
            Remember::Replayed => Err(DpopRefusal::Proof(ProofError::replayed())),
            Remember::KeyOverQuota => Err(DpopRefusal::Proof(ProofError::too_many_proofs())),
            Remember::Full => Err(DpopRefusal::Busy),
        }
    }
}

/// The answer of [`ReplayCache::remember`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Remember {
    New,
    Replayed,
    /// This key already holds its share of live entries (rule 5).
    KeyOverQuota,
    /// The cache is full of live entries.
    Full,
}

type Digest32 = [u8; 32];

/// Seen `(jkt, jti)` pairs, keyed by SHA-256, each until its expiry; bounded overall and
/// per key, fail closed.
pub(crate) struct ReplayCache {
    capacity: usize,
    per_key: usize,
    inner: Mutex<ReplayInner>,
}

#[derive(Default)]
struct ReplayInner {
    seen: HashSet<Digest32>,
    /// Entries by expiry second (with their key's digest): expired buckets are dropped
    /// from the front, without scanning live entries (rule 6).
    by_expiry: BTreeMap<u64, Vec<(Digest32, Digest32)>>,
    /// Live entries per key digest (rule 5); keys with none are removed.
    per_key: HashMap<Digest32, usize>,
}

impl ReplayCache {
    pub(crate) fn new(capacity: usize, per_key: usize) -> Self {
        Self {
            capacity,
            per_key: per_key.clamp(1, capacity.max(1)),
            inner: Mutex::new(ReplayInner::default()),
        }
    }

    pub(crate) fn remember(&self, jkt: &str, jti: &str, now: u64, until: u64) -> Remember {
        let key_digest: Digest32 = Sha256::digest(jkt.as_bytes()).into();
        let entry: Digest32 = Sha256::new()
            .chain_update(jkt.as_bytes())
            .chain_update([0u8])
            .chain_update(jti.as_bytes())
            .finalize()
            .into();
        let mut guard = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ReplayInner {
            seen,
            by_expiry,
            per_key,
        } = &mut *guard;
        // Each entry is dropped once: amortised O(1) per call.
        while let Some(bucket) = by_expiry.first_entry() {
            if *bucket.key() > now {
                break;
            }
            for (old, owner) in bucket.remove() {
                seen.remove(&old);
                if let Some(count) = per_key.get_mut(&owner) {
                    *count -= 1;
                    if *count == 0 {
                        per_key.remove(&owner);
                    }
                }
            }
        }
        if seen.contains(&entry) {
            return Remember::Replayed;
        }
        if per_key.get(&key_digest).copied().unwrap_or(0) >= self.per_key {
            return Remember::KeyOverQuota;
        }
        if seen.len() >= self.capacity {
            return Remember::Full;
        }
        seen.insert(entry);
        by_expiry
            .entry(until.max(now.saturating_add(1)))
            .or_default()
            .push((entry, key_digest));
        *per_key.entry(key_digest).or_insert(0) += 1;
        Remember::New
    }
}

/// How a presented nonce stands.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NonceAge {
    Fresh,
    /// Valid but past half its lifetime: send a new one.
    Ageing,
    Invalid,
}

/// Stateless server nonces: base64url(issued-at ‖ HMAC-SHA-256(key, label ‖ issued-at)[..16]).
pub(crate) struct NonceIssuer {
    key: [u8; 32],
    lifetime_secs: u64,
}

const NONCE_LABEL: &[u8] = b"bmm-dpop-nonce-v1";

impl NonceIssuer {
    pub(crate) fn new(key: [u8; 32], lifetime_secs: u64) -> Self {
        Self { key, lifetime_secs }
    }

    fn mac(&self, issued: u64) -> [u8; 32] {
        let mut message = Vec::with_capacity(NONCE_LABEL.len() + 8);
        message.extend_from_slice(NONCE_LABEL);
        message.extend_from_slice(&issued.to_be_bytes());
        hmac_sha256(&self.key, &message)
    }

    pub(crate) fn issue(&self, now: u64) -> String {
        let mut raw = [0u8; 24];
        raw[..8].copy_from_slice(&now.to_be_bytes());
        raw[8..].copy_from_slice(&self.mac(now)[..16]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub(crate) fn check(&self, nonce: &str, now: u64) -> NonceAge {
        if nonce.len() != 32 {
            return NonceAge::Invalid;
        }
        let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
            return NonceAge::Invalid;
        };
        let Some((issued, tag)) = raw.split_first_chunk::<8>() else {
            return NonceAge::Invalid;
        };
        let issued = u64::from_be_bytes(*issued);
        if !constant_time_eq(tag, &self.mac(issued)[..16]) {
            return NonceAge::Invalid;
        }
        // One second of slack for a nonce issued in this very second on another thread.
        if issued > now.saturating_add(1) || now.saturating_sub(issued) >= self.lifetime_secs {
            return NonceAge::Invalid;
        }
        if now.saturating_sub(issued) >= self.lifetime_secs / 2 {
            NonceAge::Ageing
        } else {
            NonceAge::Fresh
        }
    }
}

/// HMAC-SHA-256 (RFC 2104) with a 32-byte key.
fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;
    use serde_json::json;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    const URL: &str = "https://rs.example/mcp";
    const NOW: u64 = 1_800_000_000;

    struct Key {
        alg: Algorithm,
        private: EncodingKey,
        jwk: Value,
    }

    fn key(name: &str, alg: Algorithm) -> Key {
        let pem = std::fs::read(format!("{FIXTURES}/{name}.pem")).unwrap();
        let private = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        let jwk =
            serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/{name}.jwk.json")).unwrap())
                .unwrap();
        Key { alg, private, jwk }
    }

    fn ec() -> Key {
        key("ec-p256", Algorithm::ES256)
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn sign_raw(key: &Key, alg: Algorithm, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key.private, alg).unwrap();
        format!("{input}.{sig}")
    }

    fn header(key: &Key) -> Value {
        json!({"typ": "dpop+jwt", "alg": format!("{:?}", key.alg), "jwk": key.jwk})
    }

    fn claims() -> Value {
        json!({"jti": "j-1", "htm": "POST", "htu": URL, "iat": NOW, "ath": access_token_hash("tok")})
    }

    fn proof_with(
        key: &Key,
        edit_header: impl FnOnce(&mut Value),
        edit: impl FnOnce(&mut Value),
    ) -> String {
        let mut h = header(key);
        edit_header(&mut h);
        let mut c = claims();
        edit(&mut c);
        sign_raw(key, key.alg, &h, &c)
    }

    fn proof(key: &Key, edit: impl FnOnce(&mut Value)) -> String {
        proof_with(key, |_| {}, edit)
    }

    fn req() -> ProofRequirements<'static> {
        ProofRequirements {
            method: "POST",
            url: URL,
            access_token: Some("tok"),
            nonce: None,
            now: NOW,
            max_age_secs: 60,
            algorithms: DEFAULT_PROOF_ALGORITHMS,
        }
    }

    fn refused(proof: &str, req: &ProofRequirements<'_>) -> ProofErrorKind {
        verify_proof(proof, req).unwrap_err().kind()
    }

    #[test]
    fn valid_es256_and_rs256_proofs_verify_and_name_their_key() {
        for k in [
            ec(),
            key("rsa-a", Algorithm::RS256),
            key("rsa-a", Algorithm::PS256),
        ] {
            let v = verify_proof(&proof(&k, |_| {}), &req()).unwrap();
            assert_eq!(v.jkt, jwk_thumbprint(&k.jwk).unwrap());
            assert_eq!(v.jti, "j-1");
            assert_eq!(v.iat, NOW);
            assert_eq!(v.nonce, None);
        }
    }

    #[test]
    fn proof_size_is_bounded() {
        let k = ec();
        let p = proof(&k, |c| c["pad"] = json!("x".repeat(MAX_PROOF_BYTES)));
        assert_eq!(refused(&p, &req()), K::TooLarge);
    }

    #[test]
    fn proof_is_compact_jws() {
        let k = ec();
        let p = proof(&k, |_| {});
        let two: Vec<&str> = p.split('.').take(2).collect();
        assert_eq!(refused(&two.join("."), &req()), K::Malformed);
        assert_eq!(refused(&format!("{p}.x"), &req()), K::Malformed);
        assert_eq!(refused("a.b.c", &req()), K::Malformed);
        let crit = proof_with(&k, |h| h["crit"] = json!(["exp"]), |_| {});
        assert_eq!(refused(&crit, &req()), K::Malformed);
        let not_object = sign_raw(&k, k.alg, &header(&k), &json!([1]));
        assert_eq!(refused(&not_object, &req()), K::Malformed);
    }

    #[test]
    fn proof_typ_is_dpop_jwt() {
        let k = ec();
        for typ in [json!("JWT"), json!(null), json!("at+jwt")] {
            let p = proof_with(&k, |h| h["typ"] = typ, |_| {});
            assert_eq!(refused(&p, &req()), K::Type);
        }
        let upper = proof_with(&k, |h| h["typ"] = json!("DPoP+JWT"), |_| {});
        assert!(verify_proof(&upper, &req()).is_ok());
    }

    #[test]
    fn proof_alg_is_asymmetric_and_allowed() {
        let k = ec();
        let hs = Key {
            alg: Algorithm::HS256,
            private: EncodingKey::from_secret(b"secret"),
            jwk: json!({"kty": "oct", "k": "c2VjcmV0"}),
        };
        let p = proof(&hs, |_| {});
        let mut r = req();
        let with_hs = [Algorithm::HS256, Algorithm::ES256];
        r.algorithms = &with_hs;
        assert_eq!(refused(&p, &r), K::Algorithm, "HS256 even when listed");
        let none = format!(
            "{}.{}.",
            b64(&json!({"typ": "dpop+jwt", "alg": "none", "jwk": k.jwk})),
            b64(&claims())
        );
        assert_eq!(refused(&none, &req()), K::Algorithm);
        let only_rs = [Algorithm::RS256];
        r.algorithms = &only_rs;
        assert_eq!(refused(&proof(&k, |_| {}), &r), K::Algorithm);
    }

    #[test]
    fn proof_jwk_is_a_public_key_fitting_alg() {
        let k = ec();
        let missing = proof_with(
            &k,
            |h| {
                h.as_object_mut().unwrap().remove("jwk");
            },
            |_| {},
        );
        assert_eq!(refused(&missing, &req()), K::Key);
        let private = proof_with(&k, |h| h["jwk"]["d"] = json!("AAAA"), |_| {});
        assert_eq!(refused(&private, &req()), K::Key);
        let wrong_crv = proof_with(&k, |h| h["jwk"]["crv"] = json!("P-384"), |_| {});
        assert_eq!(refused(&wrong_crv, &req()), K::Key);
        let wrong_alg = proof_with(&k, |h| h["jwk"]["alg"] = json!("ES384"), |_| {});
        assert_eq!(refused(&wrong_alg, &req()), K::Key);
        let rsa = key("rsa-a", Algorithm::RS256);
        let ec_alg_rsa_key = proof_with(&k, |h| h["jwk"] = rsa.jwk.clone(), |_| {});
        assert_eq!(refused(&ec_alg_rsa_key, &req()), K::Key);
        let oct = proof_with(
            &k,
            |h| h["jwk"] = json!({"kty": "oct", "k": "c2VjcmV0"}),
            |_| {},
        );
        assert_eq!(refused(&oct, &req()), K::Key);
        let rsa_private = proof_with(&rsa, |h| h["jwk"]["p"] = json!("AAAA"), |_| {});
        assert_eq!(refused(&rsa_private, &req()), K::Key);
    }

    #[test]
    fn proof_signature_verifies_with_its_jwk() {
        let a = key("rsa-a", Algorithm::RS256);
        let b = key("rsa-b", Algorithm::RS256);
        let p = proof_with(&a, |h| h["jwk"] = b.jwk.clone(), |_| {});
        assert_eq!(refused(&p, &req()), K::Signature);
        let good = proof(&a, |_| {});
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = b64(&json!({"jti": "other", "htm": "POST", "htu": URL, "iat": NOW}));
        assert_eq!(refused(&parts.join("."), &req()), K::Signature);
    }

    #[test]
    fn proof_jti_is_bounded() {
        let k = ec();
        for jti in [
            json!(null),
            json!(""),
            json!(7),
            json!("j".repeat(MAX_JTI_BYTES + 1)),
        ] {
            let p = proof(&k, |c| c["jti"] = jti);
            assert_eq!(refused(&p, &req()), K::Jti);
        }
    }

    #[test]
    fn proof_htm_equals_method() {
        let k = ec();
        for htm in [json!("GET"), json!("post"), json!(null)] {
            let p = proof(&k, |c| c["htm"] = htm);
            assert_eq!(refused(&p, &req()), K::Method);
        }
    }

    #[test]
    fn proof_htu_equals_url() {
        let k = ec();
        for htu in [
            "https://rs.example/other",
            "https://evil.example/mcp",
            "http://rs.example/mcp",
            "https://rs.example:8443/mcp",
            "https://user@rs.example/mcp",
            "ftp://rs.example/mcp",
            "/mcp",
        ] {
            let p = proof(&k, |c| c["htu"] = json!(htu));
            assert_eq!(refused(&p, &req()), K::Url, "{htu}");
        }
        for htu in [
            "HTTPS://RS.Example/mcp",
            "https://rs.example:443/mcp",
            "https://rs.example/mcp?x=1#frag",
            "https://rs.example/%6dcp",
            "https://rs.example/a/../mcp",
        ] {
            let p = proof(&k, |c| c["htu"] = json!(htu));
            assert!(verify_proof(&p, &req()).is_ok(), "{htu}");
        }
        assert_eq!(
            normalize_url("http://h/a%2fb%7e").as_deref(),
            Some("http://h:80/a%2Fb~")
        );
    }

    #[test]
    fn proof_iat_within_window() {
        let k = ec();
        for iat in [
            json!(NOW - 61),
            json!(NOW + 61),
            json!(null),
            json!("1"),
            json!(-1),
        ] {
            let p = proof(&k, |c| c["iat"] = iat);
            assert_eq!(refused(&p, &req()), K::IssuedAt);
        }
        for iat in [NOW - 60, NOW + 60] {
            assert!(verify_proof(&proof(&k, |c| c["iat"] = json!(iat)), &req()).is_ok());
        }
    }

    #[test]
    fn future_iat_is_accepted_only_within_a_small_skew() {
        let k = ec();
        // The resource server's default window: 300 s back, 60 s ahead.
        let wide = ProofRequirements {
            max_age_secs: 300,
            ..req()
        };
        let at = |iat: u64| proof(&k, |c| c["iat"] = json!(iat));
        for iat in [
            NOW - 300,
            NOW,
            NOW + 1,
            NOW + 30,
            NOW + MAX_FUTURE_IAT_SKEW_SECS,
        ] {
            assert!(verify_proof(&at(iat), &wide).is_ok(), "{iat}");
        }
        // The conformance probes (+/-303 s) and anything past the skew are refused.
        for iat in [
            NOW - 303,
            NOW - 301,
            NOW + MAX_FUTURE_IAT_SKEW_SECS + 1,
            NOW + 300,
            NOW + 303,
        ] {
            assert_eq!(refused(&at(iat), &wide), K::IssuedAt, "{iat}");
        }
        // A window narrower than the skew bounds the future too.
        let narrow = ProofRequirements {
            max_age_secs: 10,
            ..req()
        };
        assert!(verify_proof(&at(NOW + 10), &narrow).is_ok());
        assert_eq!(refused(&at(NOW + 11), &narrow), K::IssuedAt);
    }

    #[test]
    fn proof_ath_matches_access_token() {
        let k = ec();
        let missing = proof(&k, |c| {
            c.as_object_mut().unwrap().remove("ath");
        });
        assert_eq!(refused(&missing, &req()), K::AccessTokenHash);
        let wrong = proof(&k, |c| c["ath"] = json!(access_token_hash("other")));
        assert_eq!(refused(&wrong, &req()), K::AccessTokenHash);
        let mut token_endpoint = req();
        token_endpoint.access_token = None;
        assert!(verify_proof(&missing, &token_endpoint).is_ok());
    }

    #[test]
    fn proof_nonce_equals_required_nonce() {
        let k = ec();
        let mut r = req();
        r.nonce = Some("n-1");
        let without = proof(&k, |_| {});
        let e = verify_proof(&without, &r).unwrap_err();
        assert!(e.is_nonce_problem());
        let other = proof(&k, |c| c["nonce"] = json!("n-2"));
        assert!(verify_proof(&other, &r).unwrap_err().is_nonce_problem());
        let good = proof(&k, |c| c["nonce"] = json!("n-1"));
        assert_eq!(
            verify_proof(&good, &r).unwrap().nonce.as_deref(),
            Some("n-1")
        );
        assert!(!ProofError::replayed().is_nonce_problem());
    }

    #[test]
    fn jwk_thumbprint_follows_rfc_7638() {
        // RFC 7638 section 3.1.
        let rsa = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(&rsa).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        for jwk in [
            ec().jwk,
            json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
        ] {
            let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
            assert_eq!(
                jwk_thumbprint(&jwk).unwrap(),
                parsed
                    .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
                    .unwrap()
            );
        }
        assert!(jwk_thumbprint(&json!({"kty": "oct", "k": "AA"})).is_err());
        assert!(jwk_thumbprint(&json!({"kty": "EC", "crv": "P-256", "x": "AA"})).is_err());
        assert!(jwk_thumbprint(&json!("x")).is_err());
    }

    #[test]
    fn replay_cache_refuses_repeats_expires_entries_and_fails_closed_when_full() {
        let cache = ReplayCache::new(2, 2);
        assert_eq!(cache.remember("k", "a", 100, 110), Remember::New);
        assert_eq!(cache.remember("k", "a", 101, 111), Remember::Replayed);
        assert_eq!(cache.remember("other", "a", 101, 111), Remember::New);
        assert_eq!(cache.remember("k", "b", 102, 112), Remember::Full);
        assert_eq!(cache.remember("k", "b", 110, 120), Remember::New);
        assert_eq!(cache.remember("k", "a", 111, 121), Remember::New);
    }

    #[test]
    fn one_key_cannot_fill_the_replay_cache_for_others() {
        let cache = ReplayCache::new(10, 3);
        for j in ["a", "b", "c"] {
            assert_eq!(cache.remember("greedy", j, 100, 400), Remember::New);
        }
        // Over its share: only that key is refused, and a replay is still a replay.
        assert_eq!(
            cache.remember("greedy", "d", 101, 401),
            Remember::KeyOverQuota
        );
        assert_eq!(cache.remember("greedy", "a", 101, 401), Remember::Replayed);
        for j in ["a", "b", "c"] {
            assert_eq!(cache.remember("other", j, 101, 401), Remember::New);
        }
        // Once its entries expire the key gets its share back.
        assert_eq!(cache.remember("greedy", "d", 400, 700), Remember::New);

        // Through the layer's state: defaults give a key a sixteenth of the cache, at
        // least 1,024, never more than the capacity.
        assert_eq!(DpopConfig::new().per_key_entries(), 6_250);
        let small = DpopConfig::new().replay_cache_capacity(5_000);
        assert_eq!(small.per_key_entries(), 1_024);
        assert_eq!(
            small.clone().replay_cache_capacity(10).per_key_entries(),
            10
        );
        assert_eq!(small.replay_cache_per_key(7).per_key_entries(), 7);

        let resource = crate::Resource::parse("https://rs.example/mcp").unwrap();
        let config = DpopConfig::new()
            .replay_cache_capacity(4)
            .replay_cache_per_key(2);
        let state = DpopState::new(&config, &resource);
        let (a, b) = (ec(), key("rsa-a", Algorithm::PS256));
        let (jkt_a, jkt_b) = (
            jwk_thumbprint(&a.jwk).unwrap(),
            jwk_thumbprint(&b.jwk).unwrap(),
        );
        let with_jti = |k: &Key, jti: &str| proof(k, |c| c["jti"] = json!(jti));
        let check = |p: &str, jkt: &str| state.check(p, "POST", "/mcp", "tok", jkt, NOW);
        assert!(check(&with_jti(&a, "1"), &jkt_a).is_ok());
        assert!(check(&with_jti(&a, "2"), &jkt_a).is_ok());
        match check(&with_jti(&a, "3"), &jkt_a) {
            Err(DpopRefusal::Proof(e)) => {
                assert_eq!(e.kind(), K::TooManyProofs);
                assert!(e.reason().contains("too many proofs for this key"));
            }
            _ => panic!("key a over its share must be refused as a proof problem"),
        }
        assert!(check(&with_jti(&b, "1"), &jkt_b).is_ok());
        assert!(check(&with_jti(&b, "2"), &jkt_b).is_ok());
    }

    #[test]
    fn replay_cache_expiry_is_bucketed() {
        let cache = ReplayCache::new(3, 3);
        // A long-lived entry in front no longer holds back shorter ones behind it.
        assert_eq!(cache.remember("k", "late", 100, 500), Remember::New);
        assert_eq!(cache.remember("k", "a", 100, 200), Remember::New);
        assert_eq!(cache.remember("k", "b", 100, 200), Remember::New);
        // Full of live entries: answered at once, for any key.
        assert_eq!(cache.remember("k2", "c", 150, 250), Remember::Full);
        assert_eq!(cache.remember("k2", "c", 200, 300), Remember::New);
        assert_eq!(cache.remember("k", "late", 200, 300), Remember::Replayed);
        let inner = cache.inner.lock().unwrap();
        assert_eq!(inner.seen.len(), 2);
        assert_eq!(inner.by_expiry.len(), 2);
        assert_eq!(inner.per_key.values().sum::<usize>(), 2);
        assert_eq!(inner.per_key.len(), 2);
    }

    #[test]
    fn nonces_are_stateless_bounded_in_time_and_unforgeable() {
        let issuer = NonceIssuer::new([7; 32], 300);
        let n = issuer.issue(NOW);
        assert_eq!(issuer.check(&n, NOW + 10), NonceAge::Fresh);
        assert_eq!(issuer.check(&n, NOW + 200), NonceAge::Ageing);
        assert_eq!(issuer.check(&n, NOW + 300), NonceAge::Invalid);
        assert_eq!(issuer.check(&n, NOW - 5), NonceAge::Invalid);
        assert_eq!(
            NonceIssuer::new([8; 32], 300).check(&n, NOW),
            NonceAge::Invalid
        );
        assert_eq!(issuer.check("short", NOW), NonceAge::Invalid);
        let mut forged = URL_SAFE_NO_PAD.decode(&n).unwrap();
        forged[7] ^= 1;
        assert_eq!(
            issuer.check(&URL_SAFE_NO_PAD.encode(forged), NOW),
            NonceAge::Invalid
        );
    }

    #[test]
    fn resource_server_state_checks_key_nonce_and_replay_in_that_order() {
        let k = ec();
        let resource = crate::Resource::parse("https://rs.example/mcp").unwrap();
        let state = DpopState::new(&DpopConfig::new().nonce(true), &resource);
        let nonces = state.nonces().unwrap();
        let jkt = jwk_thumbprint(&k.jwk).unwrap();
        let check = |p: &str, jkt: &str, now: u64| state.check(p, "POST", "/mcp", "tok", jkt, now);
        let refusal = |r: Result<Option<String>, DpopRefusal>| match r {
            Err(DpopRefusal::Proof(e)) => e.kind(),
            Err(DpopRefusal::Busy) => panic!("busy"),
            Ok(_) => panic!("accepted"),
        };
        let fresh = nonces.issue(NOW);
        let p = proof(&k, |c| c["nonce"] = json!(fresh));
        assert_eq!(refusal(check(&p, "other-jkt", NOW)), K::KeyMismatch);
        let without = proof(&k, |_| {});
        assert_eq!(refusal(check(&without, &jkt, NOW)), K::Nonce);
        assert_eq!(check(&p, &jkt, NOW).ok(), Some(None));
        assert_eq!(refusal(check(&p, &jkt, NOW)), K::Replay);
        // A nonce past half its lifetime still works and a fresh one is handed out.
        let old = nonces.issue(NOW - 200);
        let p = proof(&k, |c| {
            c["nonce"] = json!(old);
            c["jti"] = json!("j-2");
        });
        assert!(matches!(check(&p, &jkt, NOW), Ok(Some(_))));
    }

    #[test]
    fn dpop_config_is_checked() {
        assert!(DpopConfig::new().check().is_ok());
        assert!(DpopConfig::new().algorithms(&[]).check().is_err());
        assert!(
            DpopConfig::new()
                .algorithms(&[Algorithm::HS256])
                .check()
                .is_err()
        );
        assert!(
            DpopConfig::new()
                .max_age(Duration::from_secs(3600))
                .check()
                .is_err()
        );
        assert!(DpopConfig::new().replay_cache_capacity(0).check().is_err());
        assert!(DpopConfig::new().replay_cache_per_key(0).check().is_err());
        assert!(
            DpopConfig::new()
                .mode(DpopMode::Off)
                .algorithms(&[])
                .check()
                .is_ok()
        );
    }
}
