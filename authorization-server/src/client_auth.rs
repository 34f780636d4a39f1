//! RFC 7523 client assertions: `private_key_jwt` client authentication at `/token` and
//! `/revoke` (`client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`).
//!
//! Rules, in the order they are applied:
//! 1. An assertion is at most [`MAX_ASSERTION_BYTES`] and a JWS in compact form (three
//!    base64url parts); anything else (JWE, JSON serialisation) is refused unread.
//! 2. The header's `alg` is one of [`SIGNING_ALGS`] (RS256, PS256, ES256): `none`, every
//!    HMAC algorithm (a client's secret is never a key here) and the rest are refused
//!    before a key is looked at. A `crit` header is refused; `jku`, `x5u`, `jwk` and `x5c`
//!    are never used: keys come only from what the client registered.
//! 3. The unverified `sub` names the client (RFC 7523 section 3; `client_id`, when the
//!    request also sends one, must be the same). Only a client registered with
//!    `token_endpoint_auth_method: private_key_jwt` authenticates this way.
//! 4. Claims are checked before any key is fetched: `iss` and `sub` are both the client id;
//!    `aud` (a string, or an array holding one) is the token endpoint URL or the issuer;
//!    `exp` is required, in the future and at most [`MAX_LIFETIME_SECS`] ahead; `iat` and
//!    `nbf`, when present, are numbers not in the future; `jti` is required, at most 256
//!    bytes. Clocks may differ by [`LEEWAY_SECS`].
//! 5. Keys come from the client's registered `jwks` or from its `jwks_uri` (never both).
//!    A key is RSA (2048 to 8192 bits) or EC P-256; `oct` keys and other curves are
//!    ignored; a key's `alg`, `use` and `key_ops`, when present, must allow verifying with
//!    the header's `alg`. The header's `kid` selects the key (keys without a `kid` are
//!    tried when none has it); without a `kid` every key of the right type is tried (at
//!    most [`MAX_KEYS`] in a set). A key set holding a private member (`d`, `p`, `q`,
//!    `dp`, `dq`, `qi`, `k`, `oth`) is refused, registered, configured or fetched; a
//!    registered one is stored with only its keys' public members, at most 8 KiB.
//! 6. `jwks_uri` documents are fetched through `bmm-netguard` like client metadata
//!    documents (public addresses only; loopback only with `--allow-loopback-cimd`; no
//!    redirect, no proxy), at most 64 KiB in 5 s, 16 fetches at a time in all. A fetched
//!    set is cached for 5 minutes per instance (up to 1,000 URLs); an unknown `kid` refetches
//!    it once, at most every 2 s per URL (so forged `kid`s cannot turn `/token` into a
//!    fetch loop); a failed fetch is remembered for 60 s. The 16 fetches are for
//!    registered clients, at most 2 at a time per caller address (IPv6 by /64), like
//!    metadata documents; configured clients fetch in a pool of their own (4), so slow
//!    `jwks_uri`s of registered clients cannot starve them.
//! 7. The `jti` is single use: the caller records it with `Store::use_assertion_jti` until
//!    `exp` plus the leeway, which every instance on the database sees, and refuses a
//!    replay. Every refusal is `invalid_client`; the assertion is never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
    RsaPublicKeyComponents, UnparsedPublicKey,
};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bmm_netguard::{Guard, Policy};
use serde_json::Value;
use tokio::sync::Semaphore;
use url::Url;

use crate::error::OAuthError;
use crate::store::Client;

/// The `client_assertion_type` of RFC 7523 section 2.2.
pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Signature algorithms accepted on an assertion (rule 2), as advertised in the metadata.
pub(crate) const SIGNING_ALGS: &[&str] = &["RS256", "PS256", "ES256"];
/// Longest assertion accepted, in bytes (rule 1).
pub(crate) const MAX_ASSERTION_BYTES: usize = 8 * 1024;
/// Furthest ahead an assertion's `exp` may be, in seconds (rule 4).
pub(crate) const MAX_LIFETIME_SECS: u64 = 300;
/// Clock difference tolerated between a client and this server, in seconds (rule 4).
pub(crate) const LEEWAY_SECS: u64 = 30;
/// Most keys in a client's key set (rule 5).
pub(crate) const MAX_KEYS: usize = 20;
/// Longest `jti`, in bytes (rule 4).
const MAX_JTI_BYTES: usize = 256;
/// Longest registered `jwks_uri` or `jwks` text, in bytes.
pub(crate) const MAX_JWKS_URI_BYTES: usize = 1024;
/// Largest JWK Set document, registered inline or fetched (rule 6).
pub(crate) const MAX_JWKS_BYTES: usize = 64 * 1024;
const JWKS_TTL: Duration = Duration::from_secs(300);
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
const JWKS_REFETCH_AFTER: Duration = Duration::from_secs(2);
const JWKS_FAILURE_TTL: Duration = Duration::from_secs(60);
const JWKS_CACHE_ENTRIES: usize = 1000;
const JWKS_FETCHES: usize = 16;
/// Fetches at a time for configured clients' `jwks_uri`s, apart from the others (rule 6).
const CONFIGURED_JWKS_FETCHES: usize = 4;
/// Fetches at a time per caller address for registered clients' `jwks_uri`s (rule 6).
pub(crate) const JWKS_FETCHES_PER_CALLER: usize = 2;

/// Who a key set fetch is for (rule 6): the caller's address, and whether the client is
/// configured (its fetches have their own pool and no per-caller bound).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fetcher {
    /// The address the token or revocation request came from.
    pub(crate) caller: std::net::IpAddr,
    /// Whether the client is configured (not registered at `/register`).
    pub(crate) configured: bool,
}

/// A registered client's fetch counted against its caller (rule 6); uncounted on drop.
struct CallerSlot<'c> {
    counts: &'c Mutex<HashMap<std::net::IpAddr, usize>>,
    key: std::net::IpAddr,
}

impl Drop for CallerSlot<'_> {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counts.lock()
            && let Some(n) = counts.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// An algorithm of rule 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alg {
    Rs256,
    Ps256,
    Es256,
}

impl Alg {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(Self::Rs256),
            "PS256" => Some(Self::Ps256),
            "ES256" => Some(Self::Es256),
            _ => None,
        }
    }
}

/// A public key of a client's key set.
#[derive(Clone, Debug)]
enum Material {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// An uncompressed P-256 point (`04 || x || y`).
    P256(Vec<u8>),
}

#[derive(Clone, Debug)]
struct PublicJwk {
    kid: Option<String>,
    /// The only algorithm the key may verify, when it says so.
    alg: Option<Alg>,
    material: Material,
}

impl PublicJwk {
    fn fits(&self, alg: Alg) -> bool {
        let family = match self.material {
            Material::Rsa { .. } => matches!(alg, Alg::Rs256 | Alg::Ps256),
            Material::P256(_) => alg == Alg::Es256,
        };
        family && self.alg.is_none_or(|a| a == alg)
    }

    fn verifies(&self, alg: Alg, message: &[u8], sig: &[u8]) -> bool {
        match (&self.material, alg) {
            (Material::Rsa { n, e }, Alg::Rs256) => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
            (Material::Rsa { n, e }, Alg::Ps256) => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PSS_2048_8192_SHA256, message, sig)
                .is_ok(),
            (Material::P256(point), Alg::Es256) => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            _ => false,
        }
    }
}

fn b64(value: &Value, name: &str) -> Result<Vec<u8>, String> {
    let text = value
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("a key has no `{name}`"))?;
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| format!("a key's `{name}` is not base64url"))
}

/// Members of a JWK that carry private or symmetric key material (RFC 7518 6.2.2, 6.3.2,
/// 6.4.1): a key set holding one is refused (rule 5), so no private key is stored or echoed.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "k", "oth"];
/// The members a registered key keeps (rule 5); the rest are dropped before it is stored.
const PUBLIC_MEMBERS: [&str; 10] = [
    "kty", "kid", "use", "key_ops", "alg", "n", "e", "crv", "x", "y",
];
/// Largest registered `jwks` text, after only the public members are kept, in bytes.
pub(crate) const MAX_REGISTERED_JWKS_BYTES: usize = 8 * 1024;

/// The key set `doc` (already accepted by [`KeySet::parse`]) with only the public members
/// of each key, as JSON text to store; refused when that is larger than
/// [`MAX_REGISTERED_JWKS_BYTES`].
pub(crate) fn public_jwks_text(doc: &Value) -> Result<String, String> {
    let keys: Vec<Value> = doc
        .get("keys")
        .and_then(Value::as_array)
        .map(|keys| {
            keys.iter()
                .filter_map(Value::as_object)
                .map(|key| {
                    let kept = key
                        .iter()
                        .filter(|(name, _)| PUBLIC_MEMBERS.contains(&name.as_str()))
                        .map(|(name, value)| (name.clone(), value.clone()));
                    Value::Object(kept.collect())
                })
                .collect()
        })
        .unwrap_or_default();
    let text = serde_json::json!({ "keys": keys }).to_string();
    if text.len() > MAX_REGISTERED_JWKS_BYTES {
        return Err(format!(
            "the key set is larger than {MAX_REGISTERED_JWKS_BYTES} bytes"
        ));
    }
    Ok(text)
}

/// One JWK of rule 5; `Ok(None)` for a key of a type this server does not use.
fn parse_jwk(jwk: &Value) -> Result<Option<PublicJwk>, String> {
    if !jwk.is_object() {
        return Err("a key is not a JSON object".to_owned());
    }
    if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| jwk.get(**m).is_some()) {
        return Err(format!(
            "a key holds the private member `{member}`: give only public keys"
        ));
    }
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    if text("use").is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    if let Some(ops) = jwk.get("key_ops")
        && !ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o == "verify"))
    {
        return Ok(None);
    }
    let alg = match text("alg") {
        None => None,
        Some(name) => match Alg::parse(name) {
            Some(alg) => Some(alg),
            None => return Ok(None),
        },
    };
    let material = match text("kty") {
        Some("RSA") => {
            let n = b64(jwk, "n")?;
            let e = b64(jwk, "e")?;
            let n: Vec<u8> = n.into_iter().skip_while(|b| *b == 0).collect();
            let e: Vec<u8> = e.into_iter().skip_while(|b| *b == 0).collect();
            if !(256..=1024).contains(&n.len()) {
                return Err(format!(
                    "an RSA key of {} bits: 2048 to 8192 are accepted",
                    n.len() * 8
                ));
            }
            if e.is_empty() || e.len() > 8 {
                return Err("an RSA key's exponent is malformed".to_owned());
            }
            Material::Rsa { n, e }
        }
        Some("EC") => {
            if text("crv") != Some("P-256") {
                return Ok(None);
            }
            let x = b64(jwk, "x")?;
            let y = b64(jwk, "y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err("a P-256 key's coordinates are not 32 bytes".to_owned());
            }
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Material::P256(point)
        }
        _ => return Ok(None),
    };
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(k)) if k.len() <= 256 => Some(k.clone()),
        Some(_) => return Err("a key's `kid` is not a string of at most 256 bytes".to_owned()),
    };
    let key = PublicJwk { kid, alg, material };
    if matches!(key.alg, Some(a) if !key.fits(a)) {
        return Err("a key's `alg` does not fit its type".to_owned());
    }
    Ok(Some(key))
}

/// A client's public keys (rule 5).
#[derive(Clone, Debug)]
pub(crate) struct KeySet {
    keys: Vec<PublicJwk>,
}

/// Why no key verified an assertion.
#[derive(Debug, PartialEq, Eq)]
enum Miss {
    /// No key has the header's `kid` (or, without one, the right type).
    NoKey,
    /// A key was found and the signature does not verify.
    BadSignature,
}

impl KeySet {
    /// Parses an RFC 7517 JWK Set; refused when it is malformed, holds more than
    /// [`MAX_KEYS`] keys, or no key this server can verify with.
    pub(crate) fn parse(doc: &Value) -> Result<Self, String> {
        let list = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| "a JWK Set is an object with a `keys` array".to_owned())?;
        if list.len() > MAX_KEYS {
            return Err(format!("a JWK Set of more than {MAX_KEYS} keys"));
        }
        let mut keys = Vec::new();
        for jwk in list {
            if let Some(key) = parse_jwk(jwk)? {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(
                "the JWK Set has no signing key this server accepts (RSA of 2048 bits or more, or EC P-256)"
                    .to_owned(),
            );
        }
        Ok(Self { keys })
    }

    /// [`KeySet::parse`] of JSON text of at most [`MAX_JWKS_BYTES`].
    pub(crate) fn parse_text(text: &str) -> Result<Self, String> {
        if text.len() > MAX_JWKS_BYTES {
            return Err(format!("a JWK Set larger than {MAX_JWKS_BYTES} bytes"));
        }
        let doc: Value =
            serde_json::from_str(text).map_err(|e| format!("the JWK Set is not JSON: {e}"))?;
        Self::parse(&doc)
    }

    fn verify(&self, assertion: &Assertion) -> Result<(), Miss> {
        // A `kid` selects its key; a set whose keys carry no `kid` is tried whole (the
        // header's `kid` is then only a hint it cannot match).
        let named = assertion
            .kid
            .as_ref()
            .filter(|wanted| self.keys.iter().any(|k| k.kid.as_ref() == Some(*wanted)));
        let candidates = self.keys.iter().filter(|k| {
            k.fits(assertion.alg)
                && match (named, &assertion.kid) {
                    (Some(wanted), _) => k.kid.as_ref() == Some(wanted),
                    (None, Some(_)) => k.kid.is_none(),
                    (None, None) => true,
                }
        });
        let mut found = false;
        for key in candidates {
            found = true;
            if key.verifies(
                assertion.alg,
                assertion.signing_input.as_bytes(),
                &assertion.signature,
            ) {
                return Ok(());
            }
        }
        if found {
            Err(Miss::BadSignature)
        } else {
            Err(Miss::NoKey)
        }
    }
}

/// Checks a `jwks_uri` a client registers: `https` (or `http` on a loopback host when
/// `allow_loopback`), no user name, password or fragment, at most
/// [`MAX_JWKS_URI_BYTES`].
pub(crate) fn check_jwks_uri(uri: &str, allow_loopback: bool) -> Result<Url, String> {
    if uri.len() > MAX_JWKS_URI_BYTES {
        return Err(format!(
            "jwks_uri is longer than {MAX_JWKS_URI_BYTES} bytes"
        ));
    }
    let url = Url::parse(uri).map_err(|_| format!("jwks_uri `{uri}` is not an absolute URL"))?;
    let scheme_ok = match url.scheme() {
        "https" => url.host().is_some(),
        "http" => allow_loopback && crate::register::is_loopback(&url),
        _ => false,
    };
    if !scheme_ok {
        return Err(format!("jwks_uri `{uri}` must be an https URL"));
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(format!(
            "jwks_uri `{uri}` must not carry a user name, password or fragment"
        ));
    }
    Ok(url)
}

/// A parsed, not yet verified assertion (rules 1 and 2).
#[derive(Debug)]
pub(crate) struct Assertion {
    alg: Alg,
    kid: Option<String>,
    claims: serde_json::Map<String, Value>,
    signing_input: String,
    signature: Vec<u8>,
}

fn refused(why: impl Into<String>) -> OAuthError {
    OAuthError::invalid_client(format!("client assertion refused: {}", why.into()))
}

impl Assertion {
    /// Rules 1 and 2.
    pub(crate) fn parse(text: &str) -> Result<Self, OAuthError> {
        if text.len() > MAX_ASSERTION_BYTES {
            return Err(refused(format!(
                "it is longer than {MAX_ASSERTION_BYTES} bytes"
            )));
        }
        let mut parts = text.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refused("it is not a signed JWT (three base64url parts)"));
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).ok();
        let header: serde_json::Map<String, Value> = decode(header)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| refused("its header is not a base64url JSON object"))?;
        let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
        let alg = Alg::parse(alg_name).ok_or_else(|| {
            refused(format!(
                "alg `{alg_name}` is not accepted (use one of {})",
                SIGNING_ALGS.join(", ")
            ))
        })?;
        if header.contains_key("crit") {
            return Err(refused("a `crit` header is not understood"));
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(refused("its `kid` is not a string")),
        };
        let claims: serde_json::Map<String, Value> = decode(payload)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| refused("its payload is not a base64url JSON object"))?;
        let signature =
            decode(signature).ok_or_else(|| refused("its signature is not base64url"))?;
        let signing_input = text
            .rsplit_once('.')
            .map(|(input, _)| input.to_owned())
            .unwrap_or_default();
        Ok(Self {
            alg,
            kid,
            claims,
            signing_input,
            signature,
        })
    }

    /// The client the assertion names (its `sub`), unverified (rule 3).
    pub(crate) fn subject(&self) -> Option<&str> {
        self.claims.get("sub").and_then(Value::as_str)
    }
}

/// What a verified assertion leaves to check: its `jti` is single use until `expires_at`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Verified {
    /// The assertion's `jti`.
    pub(crate) jti: String,
    /// Until when the `jti` must be remembered (`exp` plus the leeway).
    pub(crate) expires_at: u64,
}

/// A NumericDate claim: a non-negative number (fractions allowed, truncated).
fn numeric_date(
    claims: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<u64>, OAuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e15)
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or_else(|| refused(format!("`{name}` is not a date (seconds since the epoch)"))),
    }
}

/// Rule 4: the claims, for `client_id`, at a server whose accepted audiences are
/// `audiences` (the token endpoint URL and the issuer), at `now`.
fn check_claims(
    assertion: &Assertion,
    client_id: &str,
    audiences: &[&str],
    now: u64,
) -> Result<Verified, OAuthError> {
    let claims = &assertion.claims;
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    if text("iss") != Some(client_id) {
        return Err(refused("`iss` must be the client id"));
    }
    if text("sub") != Some(client_id) {
        return Err(refused("`sub` must be the client id"));
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => audiences.contains(&a.as_str()),
        Some(Value::Array(list)) => {
            list.len() == 1 && list[0].as_str().is_some_and(|a| audiences.contains(&a))
        }
        _ => false,
    };
    if !aud_ok {
        return Err(refused(format!(
            "`aud` must be this server's token endpoint or issuer ({})",
            audiences.join(" or ")
        )));
    }
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| refused("`exp` is required"))?;
    if exp.saturating_add(LEEWAY_SECS) <= now {
        return Err(refused("it has expired"));
    }
    if exp > now.saturating_add(MAX_LIFETIME_SECS + LEEWAY_SECS) {
        return Err(refused(format!(
            "`exp` is more than {MAX_LIFETIME_SECS} seconds ahead"
        )));
    }
    for name in ["iat", "nbf"] {
        if let Some(t) = numeric_date(claims, name)?
            && t > now.saturating_add(LEEWAY_SECS)
        {
            return Err(refused(format!("`{name}` is in the future")));
        }
    }
    let jti = match claims.get("jti") {
        Some(Value::String(j)) if !j.is_empty() && j.len() <= MAX_JTI_BYTES => j.clone(),
        _ => {
            return Err(refused(format!(
                "`jti` is required (a unique string of at most {MAX_JTI_BYTES} bytes)"
            )));
        }
    };
    Ok(Verified {
        jti,
        expires_at: exp.saturating_add(LEEWAY_SECS),
    })
}

/// Fetched key sets by `jwks_uri` (rule 6), per instance.
pub(crate) struct JwksCache {
    guard: Option<Guard>,
    allow_loopback: bool,
    entries: Mutex<HashMap<String, Entry>>,
    /// One fetch at a time per URL: concurrent misses wait for it and share its result.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    fetches: Semaphore,
    /// Configured clients' fetches (rule 6).
    configured_fetches: Semaphore,
    /// Registered clients' fetches under way, per caller address (rule 6).
    per_caller: Mutex<HashMap<std::net::IpAddr, usize>>,
}

#[derive(Clone)]
struct Entry {
    at: Instant,
    keys: Result<Arc<KeySet>, String>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache").finish_non_exhaustive()
    }
}

impl JwksCache {
    /// A cache fetching from public addresses only, and loopback when `allow_loopback`.
    pub(crate) fn new(allow_loopback: bool) -> Self {
        Self {
            guard: Guard::new(
                Policy::public_only().allow_loopback(allow_loopback),
                JWKS_TIMEOUT,
            )
            .ok(),
            allow_loopback,
            entries: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
            fetches: Semaphore::new(JWKS_FETCHES),
            configured_fetches: Semaphore::new(CONFIGURED_JWKS_FETCHES),
            per_caller: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, url: &str) -> Option<Entry> {
        self.entries.lock().ok()?.get(url).cloned()
    }

    /// The key set at `uri`: cached, or fetched when there is none fresh; with
    /// `refetch` (an unknown `kid`), fetched again unless the cached one is under 2 s old.
    async fn keys(
        &self,
        uri: &str,
        refetch: bool,
        fetcher: Fetcher,
    ) -> Result<Arc<KeySet>, OAuthError> {
        let usable = |entry: &Entry| match &entry.keys {
            Ok(_) if refetch => entry.at.elapsed() < JWKS_REFETCH_AFTER,
            Ok(_) => entry.at.elapsed() < JWKS_TTL,
            Err(_) => entry.at.elapsed() < JWKS_FAILURE_TTL,
        };
        if let Some(entry) = self.cached(uri)
            && usable(&entry)
        {
            return entry.keys.map_err(refused);
        }
        let lock = {
            let mut fetching = self
                .fetching
                .lock()
                .map_err(|_| OAuthError::server_error())?;
            Arc::clone(fetching.entry(uri.to_owned()).or_default())
        };
        let result = {
            let _one = lock.lock().await;
            // Another request may have fetched it while this one waited.
            match self.cached(uri) {
                Some(entry) if entry.at.elapsed() < JWKS_REFETCH_AFTER => entry.keys,
                _ => {
                    let fetched = self.fetch(uri, fetcher).await;
                    let fetched = match fetched {
                        Ok(keys) => Ok(Arc::new(keys)),
                        Err(FetchError::Busy) => {
                            return Err(OAuthError::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "temporarily_unavailable",
                                "too many client key sets are being fetched; try again shortly",
                            ));
                        }
                        Err(FetchError::Failed(why)) => Err(why),
                    };
                    self.insert(uri, fetched.clone());
                    fetched
                }
            }
        };
        if let Ok(mut fetching) = self.fetching.lock()
            && fetching.get(uri).is_some_and(|l| Arc::strong_count(l) <= 2)
        {
            fetching.remove(uri);
        }
        result.map_err(refused)
    }

    fn insert(&self, uri: &str, keys: Result<Arc<KeySet>, String>) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= JWKS_CACHE_ENTRIES && !entries.contains_key(uri) {
            entries.retain(|_, e| e.at.elapsed() < JWKS_TTL);
            while entries.len() >= JWKS_CACHE_ENTRIES {
                let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.at)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                entries.remove(&oldest);
            }
        }
        entries.insert(
            uri.to_owned(),
            Entry {
                at: Instant::now(),
                keys,
            },
        );
    }

    /// Counts a registered client's fetch against its caller, or refuses it (rule 6).
    fn caller_slot(&self, caller: std::net::IpAddr) -> Result<CallerSlot<'_>, FetchError> {
        let key = crate::ratelimit::caller_key(caller);
        let mut counts = self.per_caller.lock().map_err(|_| FetchError::Busy)?;
        let n = counts.entry(key).or_insert(0);
        if *n >= JWKS_FETCHES_PER_CALLER {
            return Err(FetchError::Busy);
        }
        *n += 1;
        Ok(CallerSlot {
            counts: &self.per_caller,
            key,
        })
    }

    async fn fetch(&self, uri: &str, fetcher: Fetcher) -> Result<KeySet, FetchError> {
        let failed =
            |why: String| FetchError::Failed(format!("the client's jwks_uri {uri}: {why}"));
        let url = check_jwks_uri(uri, self.allow_loopback).map_err(FetchError::Failed)?;
        let guard = self
            .guard
            .as_ref()
            .ok_or_else(|| failed("no HTTP client".to_owned()))?;
        let (_slot, pool) = match fetcher.configured {
            true => (None, &self.configured_fetches),
            false => (Some(self.caller_slot(fetcher.caller)?), &self.fetches),
        };
        let _permit = tokio::time::timeout(JWKS_TIMEOUT, pool.acquire())
            .await
            .map_err(|_| FetchError::Busy)?
            .map_err(|_| FetchError::Busy)?;
        let request = guard.get(url).map_err(|r| failed(r.to_string()))?;
        let mut response =
            request
                .send()
                .await
                .map_err(|e| match bmm_netguard::refused_in(&e) {
                    Some(refused) => failed(refused.to_string()),
                    None => failed(format!("fetch failed: {e}")),
                })?;
        if !response.status().is_success() {
            return Err(failed(format!("answered {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failed(format!("read failed: {e}")))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(failed(format!("larger than {MAX_JWKS_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        let doc: Value =
            serde_json::from_slice(&body).map_err(|e| failed(format!("not JSON: {e}")))?;
        let keys = KeySet::parse(&doc).map_err(failed)?;
        tracing::info!(jwks_uri = %uri, keys = keys.keys.len(), "client key set fetched");
        Ok(keys)
    }
}

enum FetchError {
    Busy,
    Failed(String),
}

/// Verifies `assertion` for `client` (rules 3 to 6): claims first, then the signature
/// with the client's registered keys. The caller then makes the returned `jti` single use
/// (rule 7). `audiences`: the token endpoint URL and the issuer.
pub(crate) async fn verify(
    cache: &JwksCache,
    client: &Client,
    assertion: &Assertion,
    audiences: &[&str],
    now: u64,
    fetcher: Fetcher,
) -> Result<Verified, OAuthError> {
    if client.token_endpoint_auth_method != "private_key_jwt" {
        return Err(OAuthError::invalid_client(
            "this client did not register private_key_jwt; authenticate as it registered",
        ));
    }
    let verified = check_claims(assertion, &client.client_id, audiences, now)?;
    let outcome = match (&client.jwks, &client.jwks_uri) {
        (Some(jwks), None) => KeySet::parse_text(jwks).map_err(refused)?.verify(assertion),
        (None, Some(uri)) => match cache.keys(uri, false, fetcher).await?.verify(assertion) {
            Err(Miss::NoKey) => cache.keys(uri, true, fetcher).await?.verify(assertion),
            other => other,
        },
        _ => {
            tracing::error!(client_id = %client.client_id, "a private_key_jwt client without exactly one of jwks and jwks_uri");
            return Err(OAuthError::server_error());
        }
    };
    match outcome {
        Ok(()) => Ok(verified),
        Err(Miss::NoKey) => Err(refused(match &assertion.kid {
            Some(_) => "no registered key has its `kid` (and a key of its alg)",
            None => "no registered key fits its alg",
        })),
        Err(Miss::BadSignature) => Err(refused("the signature does not verify")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256,
        RSA_PSS_SHA256,
    };
    use serde_json::json;

    const TOKEN: &str = "https://as.example/token";
    const ISSUER: &str = "https://as.example";
    const NOW: u64 = 1_800_000_000;

    enum Signer {
        Rsa(KeyPair),
        Ec(EcdsaKeyPair),
    }

    fn rsa() -> Signer {
        Signer::Rsa(KeyPair::generate(KeySize::Rsa2048).unwrap())
    }

    fn ec() -> Signer {
        Signer::Ec(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }

    impl Signer {
        fn jwk(&self, kid: &str) -> Value {
            match self {
                Signer::Rsa(pair) => {
                    let p = pair.public_key();
                    json!({"kty": "RSA", "kid": kid, "use": "sig",
                        "n": URL_SAFE_NO_PAD.encode(p.modulus().big_endian_without_leading_zero()),
                        "e": URL_SAFE_NO_PAD.encode(p.exponent().big_endian_without_leading_zero())})
                }
                Signer::Ec(pair) => {
                    let point = pair.public_key().as_ref();
                    json!({"kty": "EC", "crv": "P-256", "kid": kid,
                        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                        "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
                }
            }
        }

        fn sign(&self, header: &Value, claims: &Value) -> String {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            let rng = SystemRandom::new();
            let sig = match self {
                Signer::Rsa(pair) => {
                    let padding: &'static dyn aws_lc_rs::signature::RsaEncoding =
                        if header["alg"] == "PS256" {
                            &RSA_PSS_SHA256
                        } else {
                            &RSA_PKCS1_SHA256
                        };
                    let mut sig = vec![0; pair.public_modulus_len()];
                    pair.sign(padding, &rng, input.as_bytes(), &mut sig)
                        .unwrap();
                    sig
                }
                Signer::Ec(pair) => pair.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            };
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
        }
    }

    fn claims(client: &str) -> Value {
        json!({"iss": client, "sub": client, "aud": TOKEN, "exp": NOW + 60, "iat": NOW, "jti": "j-1"})
    }

    fn client(jwks: Value) -> Client {
        Client {
            client_id: "bmm_machine".to_owned(),
            secret_sha256: None,
            redirect_uris: Vec::new(),
            client_name: None,
            token_endpoint_auth_method: "private_key_jwt".to_owned(),
            created_at: 0,
            grant_types: vec!["client_credentials".to_owned()],
            jwks: Some(jwks.to_string()),
            jwks_uri: None,
            scope: None,
        }
    }

    async fn check(client: &Client, assertion: &str) -> Result<Verified, OAuthError> {
        let a = Assertion::parse(assertion)?;
        let fetcher = Fetcher {
            caller: std::net::Ipv4Addr::LOCALHOST.into(),
            configured: false,
        };
        verify(
            &JwksCache::new(false),
            client,
            &a,
            &[TOKEN, ISSUER],
            NOW,
            fetcher,
        )
        .await
    }

    fn refusal(result: Result<Verified, OAuthError>) -> String {
        let e = result.unwrap_err();
        assert_eq!(e.code(), "invalid_client", "{e}");
        e.description().to_owned()
    }

    #[tokio::test]
    async fn rs256_ps256_and_es256_assertions_verify_with_the_registered_keys() {
        let (r, e) = (rsa(), ec());
        let c = client(json!({"keys": [r.jwk("r"), e.jwk("e")]}));
        for (signer, alg, kid) in [(&r, "RS256", "r"), (&r, "PS256", "r"), (&e, "ES256", "e")] {
            let a = signer.sign(&json!({"alg": alg, "kid": kid}), &claims("bmm_machine"));
            let v = check(&c, &a).await.unwrap();
            assert_eq!(v.jti, "j-1");
            assert_eq!(v.expires_at, NOW + 60 + LEEWAY_SECS);
        }
        // Without a kid every key of the right type is tried; aud may be the issuer.
        let mut issuer_aud = claims("bmm_machine");
        issuer_aud["aud"] = json!([ISSUER]);
        let a = e.sign(&json!({"alg": "ES256"}), &issuer_aud);
        check(&c, &a).await.unwrap();
    }

    #[tokio::test]
    async fn none_hmac_and_unknown_algorithms_are_refused_before_any_key() {
        let r = rsa();
        let c = client(json!({"keys": [r.jwk("r")]}));
        let body = URL_SAFE_NO_PAD.encode(claims("bmm_machine").to_string());
        for alg in ["none", "HS256", "RS512", "EdDSA", ""] {
            let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg}).to_string());
            let text = format!("{header}.{body}.c2ln");
            assert!(refusal(check(&c, &text).await).contains("alg"), "{alg}");
        }
        let unsigned = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
        assert!(refusal(check(&c, &unsigned).await).contains("alg"));
    }

    #[tokio::test]
    async fn malformed_oversized_and_crit_assertions_are_refused() {
        let r = rsa();
        let c = client(json!({"keys": [r.jwk("r")]}));
        for text in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"a".repeat(MAX_ASSERTION_BYTES + 1),
        ] {
            refusal(check(&c, text).await);
        }
        let a = r.sign(
            &json!({"alg": "RS256", "crit": ["exp"]}),
            &claims("bmm_machine"),
        );
        assert!(refusal(check(&c, &a).await).contains("crit"));
    }

    #[tokio::test]
    async fn wrong_iss_sub_aud_and_times_are_refused() {
        let r = rsa();
        let c = client(json!({"keys": [r.jwk("r")]}));
        let cases: Vec<(&str, Value, &str)> = vec![
            ("iss", json!("bmm_other"), "iss"),
            ("sub", json!("bmm_other"), "sub"),
            ("aud", json!("https://elsewhere.example/token"), "aud"),
            (
                "aud",
                json!([TOKEN, "https://elsewhere.example/token"]),
                "aud",
            ),
            ("exp", json!(NOW - LEEWAY_SECS - 1), "expired"),
            (
                "exp",
                json!(NOW + MAX_LIFETIME_SECS + LEEWAY_SECS + 1),
                "ahead",
            ),
            ("exp", json!("soon"), "exp"),
            ("iat", json!(NOW + LEEWAY_SECS + 10), "iat"),
            ("nbf", json!(NOW + LEEWAY_SECS + 10), "nbf"),
            ("jti", json!(""), "jti"),
            ("jti", json!(7), "jti"),
            ("jti", json!("x".repeat(300)), "jti"),
        ];
        for (name, value, expect) in cases {
            let mut body = claims("bmm_machine");
            body[name] = value;
            let a = r.sign(&json!({"alg": "RS256", "kid": "r"}), &body);
            let why = refusal(check(&c, &a).await);
            assert!(why.contains(expect), "{name}: {why}");
        }
        for name in ["exp", "jti", "aud"] {
            let mut body = claims("bmm_machine");
            body.as_object_mut().unwrap().remove(name);
            let a = r.sign(&json!({"alg": "RS256", "kid": "r"}), &body);
            refusal(check(&c, &a).await);
        }
    }

    #[tokio::test]
    async fn another_key_an_unknown_kid_or_a_mismatched_alg_does_not_verify() {
        let (r, other, e) = (rsa(), rsa(), ec());
        let c = client(json!({"keys": [r.jwk("r"), e.jwk("e")]}));
        let forged = other.sign(&json!({"alg": "RS256", "kid": "r"}), &claims("bmm_machine"));
        assert!(refusal(check(&c, &forged).await).contains("signature"));
        let unknown = r.sign(
            &json!({"alg": "RS256", "kid": "nope"}),
            &claims("bmm_machine"),
        );
        assert!(refusal(check(&c, &unknown).await).contains("kid"));
        // An EC key never verifies RS256, whatever the kid says.
        let wrong = r.sign(&json!({"alg": "RS256", "kid": "e"}), &claims("bmm_machine"));
        refusal(check(&c, &wrong).await);
        // Keys without a kid are tried when the header names a kid no key has.
        let mut bare = r.jwk("x");
        bare.as_object_mut().unwrap().remove("kid");
        let c = client(json!({"keys": [bare]}));
        let named = r.sign(
            &json!({"alg": "RS256", "kid": "any"}),
            &claims("bmm_machine"),
        );
        check(&c, &named).await.unwrap();
        let forged = other.sign(
            &json!({"alg": "RS256", "kid": "any"}),
            &claims("bmm_machine"),
        );
        assert!(refusal(check(&c, &forged).await).contains("signature"));
        // A key pinned to RS256 does not verify PS256.
        let mut pinned = r.jwk("r");
        pinned["alg"] = json!("RS256");
        let c = client(json!({"keys": [pinned]}));
        let pss = r.sign(&json!({"alg": "PS256", "kid": "r"}), &claims("bmm_machine"));
        refusal(check(&c, &pss).await);
    }

    #[tokio::test]
    async fn only_private_key_jwt_clients_authenticate_with_an_assertion() {
        let r = rsa();
        let mut c = client(json!({"keys": [r.jwk("r")]}));
        c.token_endpoint_auth_method = "client_secret_basic".to_owned();
        let a = r.sign(&json!({"alg": "RS256"}), &claims("bmm_machine"));
        assert!(refusal(check(&c, &a).await).contains("private_key_jwt"));
    }

    #[test]
    fn key_sets_refuse_weak_symmetric_and_oversized_contents() {
        let r = rsa();
        assert!(KeySet::parse(&json!({"keys": [r.jwk("r")]})).is_ok());
        let mut short = r.jwk("w");
        short["n"] = json!(URL_SAFE_NO_PAD.encode([0xffu8; 128]));
        assert!(
            KeySet::parse(&json!({"keys": [short]}))
                .unwrap_err()
                .contains("1024 bits")
        );
        let oct = json!({"kty": "oct", "k": "c2VjcmV0"});
        assert!(KeySet::parse(&json!({"keys": [oct]})).is_err());
        let enc = {
            let mut k = r.jwk("r");
            k["use"] = json!("enc");
            k
        };
        assert!(KeySet::parse(&json!({"keys": [enc]})).is_err());
        let many: Vec<Value> = (0..=MAX_KEYS).map(|i| r.jwk(&format!("k{i}"))).collect();
        assert!(KeySet::parse(&json!({"keys": many})).is_err());
        assert!(KeySet::parse(&json!({"nokeys": []})).is_err());
        assert!(KeySet::parse_text("not json").is_err());
        let mut mismatch = r.jwk("r");
        mismatch["alg"] = json!("ES256");
        assert!(KeySet::parse(&json!({"keys": [mismatch]})).is_err());
    }

    #[test]
    fn jwks_uris_are_https_or_loopback_http_when_allowed() {
        assert!(check_jwks_uri("https://machine.example/jwks.json", false).is_ok());
        assert!(check_jwks_uri("http://127.0.0.1:9/jwks", false).is_err());
        assert!(check_jwks_uri("http://127.0.0.1:9/jwks", true).is_ok());
        assert!(check_jwks_uri("http://machine.example/jwks", true).is_err());
        assert!(check_jwks_uri("https://u:p@machine.example/jwks", false).is_err());
        assert!(check_jwks_uri("https://machine.example/jwks#x", false).is_err());
        assert!(check_jwks_uri("file:///etc/passwd", true).is_err());
        let long = format!("https://machine.example/{}", "a".repeat(MAX_JWKS_URI_BYTES));
        assert!(check_jwks_uri(&long, false).is_err());
    }
}
