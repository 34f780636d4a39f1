//! The signing keys of one issuer: fetched from its JWKS, cached, refreshed.
//!
//! Rules:
//! 1. Reads are lock-free: the current key set sits behind an `ArcSwap`.
//! 2. One refresh at a time per issuer (single flight); requests that wait for it re-check
//!    the new key set before fetching again.
//! 3. A token whose `kid` is unknown causes at most one refetch per cooldown; a `kid` that a
//!    fresh fetch did not contain is refused without fetching for a short while (negative
//!    cache, bounded). Random `kid`s therefore cannot make the server hammer the issuer.
//! 4. Keys expire after the JWKS response's `Cache-Control: max-age`, clamped to bounds; an
//!    expired set is still used while a background refresh replaces it.
//! 5. Every fetch has a timeout and a size limit; unusable keys (`use` other than `sig`,
//!    `key_ops` without `verify`, symmetric `oct` keys, unknown curves, RSA under 2048
//!    bits, an `alg` outside the allow-list) are skipped one by one, never failing the set.
//! 6. Each key is pinned to its own `alg` when the JWK names one, otherwise to the
//!    allow-listed algorithms of its key type.
//! 7. When the issuer is down, the last good keys keep being served. When no key was ever
//!    obtained, verification answers "unavailable" (503), not "invalid token"; a token
//!    arriving then fetches at once (concurrent ones share the fetch, and fetches are at
//!    least 100 ms apart), and the server keeps retrying in the background with a short
//!    backoff until keys arrive (a server may start before its issuer).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use url::Url;

use crate::config::KeySettings;
use crate::discovery;
use crate::fetch::Fetcher;
use crate::resource::Issuer;

/// Least time between two fetches while no key set was ever obtained.
const UNLOADED_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// One verification key, pinned to the algorithms it may verify.
pub(crate) struct VerifyKey {
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) key: DecodingKey,
}

/// The usable keys of one JWKS document.
#[derive(Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    all: Vec<Arc<VerifyKey>>,
}

enum Find {
    Found(Arc<VerifyKey>),
    AlgMismatch,
    Ambiguous,
    Missing,
}

impl Find {
    fn into_lookup(self) -> Lookup {
        match self {
            Self::Found(key) => Lookup::Found(key),
            Self::AlgMismatch => {
                Lookup::Rejected("the token's alg is not the one its key is pinned to")
            }
            Self::Ambiguous => {
                Lookup::Rejected("the token has no kid and the issuer publishes several keys")
            }
            Self::Missing => Lookup::Rejected("the token's kid is not among the issuer's keys"),
        }
    }
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(rename = "use")]
    key_use: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

impl KeySet {
    /// Builds a key set from a JWKS document, skipping unusable keys one by one.
    /// Returns the set and one line per skipped key.
    pub(crate) fn from_jwks(
        doc: &serde_json::Value,
        allowed: &[Algorithm],
        max_keys: usize,
    ) -> Result<(Self, Vec<String>), String> {
        let keys = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| "the document is not a JWKS (no `keys` array)".to_owned())?;
        let mut set = Self::default();
        let mut skipped = Vec::new();
        for (index, raw) in keys.iter().enumerate() {
            if set.all.len() >= max_keys {
                skipped.push(format!("keys after the first {max_keys} are ignored"));
                break;
            }
            let parsed = serde_json::from_value::<RawJwk>(raw.clone())
                .map_err(|e| e.to_string())
                .and_then(|jwk| usable_key(&jwk, allowed).map(|key| (jwk.kid, key)));
            match parsed {
                Ok((kid, key)) => {
                    let key = Arc::new(key);
                    if let Some(kid) = kid {
                        if set.by_kid.contains_key(&kid) {
                            skipped
                                .push(format!("key {index}: duplicate kid, the first one is kept"));
                            continue;
                        }
                        set.by_kid.insert(kid, Arc::clone(&key));
                    }
                    set.all.push(key);
                }
                Err(reason) => skipped.push(format!("key {index}: {reason}")),
            }
        }
        Ok((set, skipped))
    }

    pub(crate) fn len(&self) -> usize {
        self.all.len()
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Find {
        match kid {
            Some(kid) => match self.by_kid.get(kid) {
                Some(key) if key.algorithms.contains(&alg) => Find::Found(Arc::clone(key)),
                Some(_) => Find::AlgMismatch,
                None => Find::Missing,
            },
            None => {
                let mut matching = self.all.iter().filter(|k| k.algorithms.contains(&alg));
                match (matching.next(), matching.next()) {
                    (Some(key), None) => Find::Found(Arc::clone(key)),
                    (Some(_), Some(_)) => Find::Ambiguous,
                    (None, _) => Find::Missing,
                }
            }
        }
    }
}

fn usable_key(jwk: &RawJwk, allowed: &[Algorithm]) -> Result<VerifyKey, String> {
    if let Some(u) = &jwk.key_use
        && u != "sig"
    {
        return Err(format!("use is {u:?}, not \"sig\""));
    }
    if let Some(ops) = &jwk.key_ops
        && !ops.iter().any(|o| o == "verify")
    {
        return Err("key_ops does not include \"verify\"".to_owned());
    }
    let field = |v: &Option<String>, name: &str| {
        v.as_deref()
            .ok_or_else(|| format!("{} key without `{name}`", jwk.kty))
            .map(str::to_owned)
    };
    let decoded_len = |v: &str, name: &str| {
        URL_SAFE_NO_PAD
            .decode(v.trim_end_matches('='))
            .map(|b| b.len())
            .map_err(|_| format!("`{name}` is not base64url"))
    };
    let (family, key): (&[Algorithm], DecodingKey) = match jwk.kty.as_str() {
        "RSA" => {
            let n = field(&jwk.n, "n")?;
            let e = field(&jwk.e, "e")?;
            let n_bytes = URL_SAFE_NO_PAD
                .decode(n.trim_end_matches('='))
                .map_err(|_| "`n` is not base64url".to_owned())?;
            let significant = n_bytes.iter().skip_while(|b| **b == 0).count();
            if significant < 256 {
                return Err(format!(
                    "RSA modulus of {} bits is under 2048",
                    significant * 8
                ));
            }
            decoded_len(&e, "e")?;
            let key = DecodingKey::from_rsa_components(&n, &e).map_err(|e| e.to_string())?;
            (jsonwebtoken::AlgorithmFamily::Rsa.algorithms(), key)
        }
        "EC" => {
            let crv = field(&jwk.crv, "crv")?;
            let x = field(&jwk.x, "x")?;
            let y = field(&jwk.y, "y")?;
            let (alg, size): (&[Algorithm], usize) = match crv.as_str() {
                "P-256" => (&[Algorithm::ES256], 32),
                "P-384" => (&[Algorithm::ES384], 48),
                other => return Err(format!("unsupported EC curve {other:?}")),
            };
            if decoded_len(&x, "x")? != size || decoded_len(&y, "y")? != size {
                return Err(format!("EC coordinates do not fit curve {crv}"));
            }
            let key = DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?;
            (alg, key)
        }
        "OKP" => {
            let crv = field(&jwk.crv, "crv")?;
            if crv != "Ed25519" {
                return Err(format!("unsupported OKP curve {crv:?}"));
            }
            let x = field(&jwk.x, "x")?;
            if decoded_len(&x, "x")? != 32 {
                return Err("Ed25519 key of the wrong length".to_owned());
            }
            let key = DecodingKey::from_ed_components(&x).map_err(|e| e.to_string())?;
            (&[Algorithm::EdDSA], key)
        }
        "oct" => return Err("symmetric (oct) keys are never accepted".to_owned()),
        other => return Err(format!("unsupported key type {other:?}")),
    };
    let algorithms: Vec<Algorithm> = match &jwk.alg {
        Some(alg) => {
            let alg = Algorithm::from_str(alg).map_err(|_| format!("unknown alg {alg:?}"))?;
            if !family.contains(&alg) {
                return Err(format!("alg {alg:?} does not fit a {} key", jwk.kty));
            }
            if !allowed.contains(&alg) {
                return Err(format!("alg {alg:?} is not in the allow-list"));
            }
            vec![alg]
        }
        None => family
            .iter()
            .copied()
            .filter(|a| allowed.contains(a))
            .collect(),
    };
    if algorithms.is_empty() {
        return Err("no allowed algorithm fits this key".to_owned());
    }
    Ok(VerifyKey { algorithms, key })
}

/// The answer of a key lookup.
pub(crate) enum Lookup {
    Found(Arc<VerifyKey>),
    /// The token cannot be verified with what the issuer publishes; the text says why.
    Rejected(&'static str),
    /// No key of this issuer was ever obtained.
    Unavailable,
    /// A fetch may find the key; call [`KeyStore::lookup`].
    NeedsFetch,
}

struct Snapshot {
    keys: Arc<KeySet>,
    loaded: bool,
    fresh_until: Instant,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Discover => f.write_str("Discover"),
            Self::Fixed(url) => f.debug_tuple("Fixed").field(&url.as_str()).finish(),
            Self::Static(set) => write!(f, "Static({} keys)", set.len()),
        }
    }
}

/// Where an issuer's keys come from.
pub(crate) enum KeySource {
    /// Found through RFC 8414 / OIDC discovery.
    Discover,
    /// Fetched from a configured JWKS URL.
    Fixed(Url),
    /// Given in the configuration; never fetched.
    Static(KeySet),
}

/// The cached signing keys of one issuer. Cheap to clone.
#[derive(Clone)]
pub(crate) struct KeyStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    issuer: Issuer,
    /// `None` for static keys.
    source: Option<KeySource>,
    discovered: ArcSwapOption<Url>,
    snapshot: ArcSwap<Snapshot>,
    refresh: tokio::sync::Mutex<()>,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last fetch attempt, plus one; zero means never.
    last_attempt: AtomicU64,
    background: AtomicBool,
    unknown_kids: Mutex<HashMap<String, Instant>>,
    fetches: AtomicU64,
    fetcher: Fetcher,
    settings: KeySettings,
    allowed: Vec<Algorithm>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("issuer", &self.inner.issuer)
            .field("keys", &self.inner.snapshot.load().keys.len())
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    pub(crate) fn new(
        issuer: Issuer,
        source: KeySource,
        fetcher: Fetcher,
        settings: KeySettings,
        allowed: Vec<Algorithm>,
    ) -> Self {
        let now = Instant::now();
        let (source, snapshot) = match source {
            KeySource::Static(keys) => (
                KeySource::Discover,
                Snapshot {
                    keys: Arc::new(keys),
                    loaded: true,
                    // Static keys never expire and are never refreshed.
                    fresh_until: now + Duration::from_secs(100 * 365 * 24 * 3600),
                },
            ),
            other => (
                other,
                Snapshot {
                    keys: Arc::new(KeySet::default()),
                    loaded: false,
                    fresh_until: now,
                },
            ),
        };
        let is_static = snapshot.loaded;
        Self {
            inner: Arc::new(StoreInner {
                issuer,
                source: if is_static { None } else { Some(source) },
                discovered: ArcSwapOption::empty(),
                snapshot: ArcSwap::from_pointee(snapshot),
                refresh: tokio::sync::Mutex::new(()),
                epoch: now,
                last_attempt: AtomicU64::new(0),
                background: AtomicBool::new(false),
                unknown_kids: Mutex::new(HashMap::new()),
                fetches: AtomicU64::new(0),
                fetcher,
                settings,
                allowed,
            }),
        }
    }

    pub(crate) fn issuer(&self) -> &Issuer {
        &self.inner.issuer
    }

    /// Whether a key set was ever obtained.
    pub(crate) fn is_loaded(&self) -> bool {
        self.inner.snapshot.load().loaded
    }

    /// How many JWKS fetches were attempted (for tests and metrics).
    pub(crate) fn fetch_count(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    fn in_cooldown(&self) -> bool {
        self.within(self.inner.settings.refetch_cooldown)
    }

    /// Whether the last fetch attempt was less than `window` ago.
    fn within(&self, window: std::time::Duration) -> bool {
        let last = self.inner.last_attempt.load(Ordering::Acquire);
        if last == 0 {
            return false;
        }
        let elapsed = self.inner.epoch.elapsed().as_millis() as u64 + 1 - last;
        elapsed < window.as_millis() as u64
    }

    fn kid_known_absent(&self, kid: &str) -> bool {
        let Ok(map) = self.inner.unknown_kids.lock() else {
            return false;
        };
        map.get(kid).is_some_and(|until| *until > Instant::now())
    }

    /// Forgets every `kid` remembered as unknown (a reload).
    pub(crate) fn forget_unknown_kids(&self) {
        if let Ok(mut map) = self.inner.unknown_kids.lock() {
            map.clear();
        }
    }

    fn remember_absent(&self, kid: &str) {
        let Ok(mut map) = self.inner.unknown_kids.lock() else {
            return;
        };
        let now = Instant::now();
        if map.len() >= self.inner.settings.unknown_kid_capacity {
            map.retain(|_, until| *until > now);
            if map.len() >= self.inner.settings.unknown_kid_capacity {
                map.clear();
            }
        }
        map.insert(kid.to_owned(), now + self.inner.settings.unknown_kid_ttl);
    }

    /// Looks a key up without waiting: never fetches on the caller's path, but may start a
    /// background refresh of an expired key set.
    pub(crate) fn lookup_now(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        // A refresh under way (the start-up prefetch, say) is worth waiting for.
        let refreshing = self.inner.refresh.try_lock().is_err();
        self.decide(kid, alg, refreshing)
    }

    fn decide(&self, kid: Option<&str>, alg: Algorithm, refreshing: bool) -> Lookup {
        let snapshot = self.inner.snapshot.load();
        if !snapshot.loaded {
            // Until a first key set arrives (the server may start before its issuer), a
            // token fetches at once, at most every 100 ms, rather than waiting out the
            // cooldown: the first request after the issuer comes up must not get a 503.
            let retry = self.inner.settings.refetch_cooldown.min(UNLOADED_RETRY);
            return if refreshing || !self.within(retry) {
                Lookup::NeedsFetch
            } else {
                Lookup::Unavailable
            };
        }
        if snapshot.fresh_until <= Instant::now() {
            self.refresh_in_background();
        }
        match snapshot.keys.find(kid, alg) {
            Find::Missing => match kid {
                None => Lookup::Rejected("no key of the issuer fits the token's alg"),
                Some(kid) if self.kid_known_absent(kid) || (!refreshing && self.in_cooldown()) => {
                    Lookup::Rejected("the token's kid is not among the issuer's keys")
                }
                Some(_) => Lookup::NeedsFetch,
            },
            found => found.into_lookup(),
        }
    }

    /// Looks a key up, fetching the JWKS once if the rules allow it.
    pub(crate) async fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        let first = self.lookup_now(kid, alg);
        if !matches!(first, Lookup::NeedsFetch) {
            return first;
        }
        let _guard = self.inner.refresh.lock().await;
        // Re-decide under the lock: a refresh that finished meanwhile counts for the
        // cooldown, so a burst of unknown kids causes one fetch, not one each.
        let second = self.decide(kid, alg, false);
        if !matches!(second, Lookup::NeedsFetch) {
            if let (Lookup::Rejected(_), Some(kid)) = (&second, kid) {
                let snapshot = self.inner.snapshot.load();
                if snapshot.loaded && !snapshot.keys.by_kid.contains_key(kid) {
                    self.remember_absent(kid);
                }
            }
            return second;
        }
        if let Err(reason) = self.refresh_locked().await {
            tracing::warn!(issuer = %self.inner.issuer, %reason, "signing keys could not be fetched");
        }
        let snapshot = self.inner.snapshot.load();
        if !snapshot.loaded {
            return Lookup::Unavailable;
        }
        match snapshot.keys.find(kid, alg) {
            Find::Found(key) => Lookup::Found(key),
            Find::AlgMismatch => {
                Lookup::Rejected("the token's alg is not the one its key is pinned to")
            }
            Find::Ambiguous => {
                Lookup::Rejected("the token has no kid and the issuer publishes several keys")
            }
            Find::Missing => {
                if let Some(kid) = kid {
                    self.remember_absent(kid);
                }
                Lookup::Rejected("the token's kid is not among the issuer's keys")
            }
        }
    }

    /// Fetches the keys now (start-up warm-up). Errors are returned, not fatal.
    pub(crate) async fn refresh(&self) -> Result<usize, String> {
        let _guard = self.inner.refresh.lock().await;
        self.refresh_locked().await
    }

    fn refresh_in_background(&self) {
        if self.in_cooldown() || self.inner.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.inner.background.store(false, Ordering::Release);
            return;
        };
        let store = self.clone();
        handle.spawn(async move {
            if let Ok(_guard) = store.inner.refresh.try_lock()
                && store.inner.snapshot.load().fresh_until <= Instant::now()
                    && let Err(reason) = store.refresh_locked().await {
                        tracing::warn!(issuer = %store.inner.issuer, %reason, "background key refresh failed; keeping the last good keys");
                    }
            store.inner.background.store(false, Ordering::Release);
        });
    }

    async fn refresh_locked(&self) -> Result<usize, String> {
        let result = self.fetch_locked().await;
        // Pinned keys are never fetched, so they are not counted.
        if matches!(
            self.inner.source,
            Some(KeySource::Fixed(_) | KeySource::Discover)
        ) {
            let outcome = if result.is_ok() { "ok" } else { "error" };
            metrics::counter!("bmm_jwks_fetches_total", "outcome" => outcome).increment(1);
        }
        result
    }

    async fn fetch_locked(&self) -> Result<usize, String> {
        let inner = &self.inner;
        let Some(source) = &inner.source else {
            return Ok(inner.snapshot.load().keys.len());
        };
        let stamp = inner.epoch.elapsed().as_millis() as u64 + 1;
        inner.last_attempt.store(stamp, Ordering::Release);
        inner.fetches.fetch_add(1, Ordering::Relaxed);
        let url = match source {
            KeySource::Static(set) => return Ok(set.len()),
            KeySource::Fixed(url) => url.clone(),
            KeySource::Discover => match inner.discovered.load_full() {
                Some(url) => (*url).clone(),
                None => {
                    let url = discovery::discover_jwks_uri(&inner.fetcher, &inner.issuer).await?;
                    inner.discovered.store(Some(Arc::new(url.clone())));
                    url
                }
            },
        };
        let fetched = match inner.fetcher.get_json(&url).await {
            Ok(f) => f,
            Err(e) => {
                // A moved JWKS is found again through discovery next time.
                inner.discovered.store(None);
                return Err(e.to_string());
            }
        };
        let (keys, skipped) =
            KeySet::from_jwks(&fetched.json, &inner.allowed, inner.settings.max_keys)?;
        for reason in &skipped {
            tracing::debug!(issuer = %inner.issuer, %reason, "JWKS key skipped");
        }
        if keys.len() == 0 {
            return Err(format!(
                "{url} holds no usable signing key ({})",
                skipped.join("; ")
            ));
        }
        let ttl = fetched
            .max_age
            .unwrap_or(inner.settings.default_ttl)
            .clamp(inner.settings.min_ttl, inner.settings.max_ttl);
        let count = keys.len();
        inner.snapshot.store(Arc::new(Snapshot {
            keys: Arc::new(keys),
            loaded: true,
            fresh_until: Instant::now() + ttl,
        }));
        tracing::debug!(issuer = %inner.issuer, keys = count, ttl_secs = ttl.as_secs(), "signing keys refreshed");
        Ok(count)
    }
}

/// Exposed for the fuzz target and benches: parse a JWKS document with the default
/// allow-list and report how many keys are usable.
pub fn usable_key_count(doc: &serde_json::Value) -> usize {
    KeySet::from_jwks(doc, crate::jwt::DEFAULT_ALGORITHMS, 64).map_or(0, |(set, _)| set.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RSA_N: &str = "51qwMAlL4GUZks3Go1FLiQQg3M0EOHzJWZlCChECyDYobiAMIf60tSsM7hVvvLgSpdcxSDGz73Yyj2wKv_stp-Y8d65ptCjn5MOTsQ4suD74PyT6HMP17v7opHGoHu9GDQbt7w70rQIYZ_2M8Irxp0S-P_2UxR162MyaLA7qL5glsAJOCdtIUqOjlEHMI26UdkLNGnXnXTakRtPSJMnfn1zCnEuXOBXXYy60GWIS2JJbQ7ht5autEATM5BxPfekAzxhy-S-lyqSwTnqJnRRDZNmBBSO-3B2k-lTpKzigpM6d9sz91lxDcNgOX3c0DSOhneiFuihaTBZJPGIYHZWrGQ";

    fn rsa(kid: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut k = json!({"kty": "RSA", "kid": kid, "n": RSA_N, "e": "AQAB"});
        if let (Some(map), Some(extra)) = (k.as_object_mut(), extra.as_object()) {
            map.extend(extra.clone());
        }
        k
    }

    fn parse(doc: serde_json::Value) -> (KeySet, Vec<String>) {
        KeySet::from_jwks(&doc, crate::jwt::DEFAULT_ALGORITHMS, 64).unwrap()
    }

    #[test]
    fn jwks_bad_keys_are_skipped_one_by_one() {
        let (set, skipped) = parse(json!({"keys": [
            rsa("good", json!({})),
            {"kty": "RSA", "kid": "no-n", "e": "AQAB"},
            {"kty": "EC", "kid": "bad-curve", "crv": "P-521", "x": "AA", "y": "AA"},
            "not an object",
            {"kty": "RSA", "kid": "short", "n": "AQAB", "e": "AQAB"},
        ]}));
        assert_eq!(set.len(), 1);
        assert_eq!(skipped.len(), 4, "{skipped:?}");
    }

    #[test]
    fn jwks_use_enc_and_symmetric_keys_are_ignored() {
        let (set, skipped) = parse(json!({"keys": [
            rsa("enc", json!({"use": "enc"})),
            rsa("ops", json!({"key_ops": ["encrypt"]})),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        ]}));
        assert_eq!(set.len(), 0);
        assert_eq!(skipped.len(), 3);
    }

    #[test]
    fn jwks_key_is_pinned_to_its_alg() {
        let (set, _) = parse(json!({"keys": [rsa("k", json!({"alg": "RS256"}))]}));
        assert!(matches!(
            set.find(Some("k"), Algorithm::RS256),
            Find::Found(_)
        ));
        assert!(matches!(
            set.find(Some("k"), Algorithm::PS256),
            Find::AlgMismatch
        ));
        assert!(matches!(
            set.find(Some("k"), Algorithm::ES256),
            Find::AlgMismatch
        ));
    }

    #[test]
    fn jwks_key_without_alg_is_pinned_to_its_key_type_family() {
        let (set, _) = parse(json!({"keys": [rsa("k", json!({}))]}));
        assert!(matches!(
            set.find(Some("k"), Algorithm::PS384),
            Find::Found(_)
        ));
        assert!(matches!(
            set.find(Some("k"), Algorithm::ES256),
            Find::AlgMismatch
        ));
        assert!(matches!(
            set.find(Some("k"), Algorithm::HS256),
            Find::AlgMismatch
        ));
    }

    #[test]
    fn jwks_alg_outside_the_allow_list_or_family_is_refused() {
        let (set, skipped) = parse(json!({"keys": [
            rsa("hs", json!({"alg": "HS256"})),
            rsa("es", json!({"alg": "ES256"})),
            rsa("none", json!({"alg": "none"})),
        ]}));
        assert_eq!(set.len(), 0, "{skipped:?}");
    }

    #[test]
    fn jwks_token_without_kid_uses_the_only_fitting_key_or_is_ambiguous() {
        let (one, _) = parse(json!({"keys": [rsa("a", json!({}))]}));
        assert!(matches!(one.find(None, Algorithm::RS256), Find::Found(_)));
        let (two, _) = parse(json!({"keys": [rsa("a", json!({})), rsa("b", json!({}))]}));
        assert!(matches!(two.find(None, Algorithm::RS256), Find::Ambiguous));
    }

    #[test]
    fn jwks_size_limit_on_key_count_is_applied() {
        let keys: Vec<_> = (0..10).map(|i| rsa(&format!("k{i}"), json!({}))).collect();
        let (set, skipped) =
            KeySet::from_jwks(&json!({"keys": keys}), crate::jwt::DEFAULT_ALGORITHMS, 3).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(skipped.len(), 1);
        assert!(
            KeySet::from_jwks(&json!({"nokeys": []}), crate::jwt::DEFAULT_ALGORITHMS, 3).is_err()
        );
    }
}
