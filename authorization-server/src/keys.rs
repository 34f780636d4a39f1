//! Signing keys: RS256 key pairs kept in the store, shared by every instance, rotated with
//! the previous public key still published until the tokens it signed have expired.
//!
//! Key rules:
//! 1. Instances starting together on an empty store create one first key, not one each
//!    (`Store::create_first_key` decides).
//! 2. Every instance reloads the keys from the store every [`RELOAD_INTERVAL`] (a task
//!    `serve` runs), so a key one instance rotated in is published by all of them within
//!    that time.
//! 3. No instance signs with a key the others may not publish yet: tokens are signed with
//!    the newest published key at least [`PUBLISH_DELAY`] old (longer than a reload
//!    interval), and with a younger one only when no older key is published (the first
//!    key). So a rotation takes effect for signing 15 s after it, everywhere; the key it
//!    replaced stays published until the access-token lifetime (plus 5 minutes) has
//!    passed after its retirement.
//! 4. With a key-encryption key (`BMM_AS_KEY_ENCRYPTION_KEY`: base64 of 32 random bytes,
//!    the same on every instance), private keys are stored encrypted with AES-256-GCM:
//!    `bmmk1` || 12-byte random nonce || ciphertext and tag, with the `kid` as associated
//!    data (a ciphertext cannot be moved to another key). Keys stored in clear are
//!    encrypted in place at the first start with a key-encryption key. A stored encrypted
//!    key without the key-encryption key, or with another one, refuses the start with a
//!    clear error; a reload that meets one keeps the keys it had and logs the error.
//!    Without a key-encryption key, private keys are stored as PKCS#8 DER in clear (the
//!    SQLite file is `0600`; a PostgreSQL database must be protected by its own access
//!    control). Losing the key-encryption key loses the signing keys: rotate them then.
//!    Encrypting in place logs a warning to rotate the keys (a backup or an old copy of
//!    the database still holds them in clear); SQLite runs with `secure_delete` and the
//!    file is vacuumed and its WAL truncated after the in-place encryption, while
//!    PostgreSQL keeps the old row versions until `VACUUM FULL signing_keys`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{
    KeyPair as _, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::store::{Store, StoredKey};

/// The length of a compact JWS's signature part plus its `.` separator.
fn signature_len(token: &str) -> usize {
    token.rfind('.').map_or(0, |dot| token.len() - dot)
}

/// How often every instance reloads the keys (rule 2).
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// How old a key must be before it signs, when an older one is published (rule 3).
pub const PUBLISH_DELAY: Duration = Duration::from_secs(15);
/// The environment variable holding the key-encryption key (rule 4).
pub const KEK_ENV: &str = "BMM_AS_KEY_ENCRYPTION_KEY";

const ENCRYPTED_PREFIX: &[u8] = b"bmmk1";

/// The key-encryption key (rule 4). Its `Debug` never shows it.
#[derive(Clone)]
pub struct KeyEncryptionKey([u8; 32]);

impl std::fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyEncryptionKey(..)")
    }
}

impl KeyEncryptionKey {
    /// Parses the base64 (standard or URL-safe, padded or not) of exactly 32 bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bytes = STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
            .map_err(|_| format!("{KEK_ENV} is not base64"))?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "{KEK_ENV} must be 32 bytes (base64 of `openssl rand 32`), not {}",
                b.len()
            )
        })?;
        Ok(Self(key))
    }

    /// From the environment (`None` when unset or empty).
    pub fn from_env() -> Result<Option<Self>, String> {
        match std::env::var(KEK_ENV) {
            Ok(v) if !v.trim().is_empty() => Self::parse(&v).map(Some),
            _ => Ok(None),
        }
    }

    fn aead(&self) -> Result<LessSafeKey, StoreError> {
        UnboundKey::new(&AES_256_GCM, &self.0)
            .map(LessSafeKey::new)
            .map_err(|_| StoreError("key-encryption key unusable".to_owned()))
    }

    fn encrypt(&self, kid: &str, pkcs8: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| StoreError("no randomness for key encryption".to_owned()))?;
        let mut data = pkcs8.to_vec();
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut data,
            )
            .map_err(|_| StoreError("key encryption failed".to_owned()))?;
        let mut out = Vec::with_capacity(ENCRYPTED_PREFIX.len() + NONCE_LEN + data.len());
        out.extend_from_slice(ENCRYPTED_PREFIX);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    fn decrypt(&self, kid: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        let wrong = || {
            StoreError(format!(
                "cannot decrypt stored signing key {kid}: {KEK_ENV} is not the key it was encrypted with"
            ))
        };
        let rest = stored.strip_prefix(ENCRYPTED_PREFIX).ok_or_else(wrong)?;
        if rest.len() < NONCE_LEN {
            return Err(wrong());
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut data = sealed.to_vec();
        let plain = self
            .aead()?
            .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut data)
            .map_err(|_| wrong())?;
        Ok(plain.to_vec())
    }
}

fn is_encrypted(stored: &[u8]) -> bool {
    stored.starts_with(ENCRYPTED_PREFIX)
}

/// The PKCS#8 DER of a stored key (rule 4).
fn private_der(key: &StoredKey, kek: Option<&KeyEncryptionKey>) -> Result<Vec<u8>, StoreError> {
    match (is_encrypted(&key.pkcs8), kek) {
        (false, _) => Ok(key.pkcs8.clone()),
        (true, Some(kek)) => kek.decrypt(&key.kid, &key.pkcs8),
        (true, None) => Err(StoreError(format!(
            "stored signing key {} is encrypted: set {KEK_ENV} to the key-encryption key it was stored with",
            key.kid
        ))),
    }
}

struct LoadedKey {
    kid: String,
    pair: KeyPair,
    created_at: u64,
    /// A secret derived from the private key: every instance with the key derives the
    /// same (DPoP nonces, see `dpop`).
    nonce_key: [u8; 32],
}

struct Ring {
    /// Published keys, newest first.
    keys: Vec<LoadedKey>,
    /// What the ring was built from: (kid, retired_at) of each stored key.
    built_from: Vec<(String, Option<u64>)>,
    jwks: Value,
}

impl Ring {
    /// The key that signs at `now` (rule 3).
    fn signing(&self, now: u64) -> Option<&LoadedKey> {
        let delay = PUBLISH_DELAY.as_secs();
        self.keys
            .iter()
            .find(|k| k.created_at.saturating_add(delay) <= now)
            .or_else(|| self.keys.last())
    }
}

/// The published keys and the one that signs new tokens.
pub struct KeyRing {
    ring: RwLock<Arc<Ring>>,
    retain_secs: u64,
    kek: Option<KeyEncryptionKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("kid", &self.current_kid())
            .finish_non_exhaustive()
    }
}

fn public_jwk(kid: &str, pair: &KeyPair) -> Value {
    let public = pair.public_key();
    let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
    let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
    json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e})
}

/// RFC 7638 thumbprint of an RSA public key: the `kid`.
fn thumbprint(pair: &KeyPair) -> String {
    let public = pair.public_key();
    let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
    let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// A new key as stored: encrypted when there is a key-encryption key.
fn generate(now: u64, kek: Option<&KeyEncryptionKey>) -> Result<StoredKey, StoreError> {
    let pair = KeyPair::generate(KeySize::Rsa2048)
        .map_err(|_| StoreError("RSA key generation failed".to_owned()))?;
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'static>>::as_der(&pair)
        .map_err(|_| StoreError("RSA key encoding failed".to_owned()))?;
    let kid = thumbprint(&pair);
    let pkcs8 = match kek {
        Some(kek) => kek.encrypt(&kid, der.as_ref())?,
        None => der.as_ref().to_vec(),
    };
    Ok(StoredKey {
        kid,
        pkcs8,
        created_at: now,
        retired_at: None,
    })
}

impl KeyRing {
    /// Loads the keys from `store`, creating the first one if there is none (rule 1) and
    /// encrypting keys stored in clear when `kek` is given (rule 4). Retired keys stay
    /// published for `retain_secs` (at least the access-token lifetime).
    pub async fn load_or_create(
        store: &dyn Store,
        now: u64,
        retain_secs: u64,
        kek: Option<KeyEncryptionKey>,
    ) -> Result<Self, StoreError> {
        if !store.keys().await?.iter().any(|k| k.retired_at.is_none())
            && store
                .create_first_key(&generate(now, kek.as_ref())?)
                .await?
        {
            tracing::info!("generated the first signing key");
        }
        if let Some(kek) = &kek {
            let mut encrypted = 0u32;
            for key in store.keys().await? {
                if is_encrypted(&key.pkcs8) {
                    continue;
                }
                let sealed = kek.encrypt(&key.kid, &key.pkcs8)?;
                if store.replace_key(&key.kid, &key.pkcs8, &sealed).await? {
                    tracing::info!(kid = %key.kid, "stored signing key encrypted with the key-encryption key");
                    encrypted += 1;
                }
            }
            if encrypted > 0 {
                tracing::warn!(
                    "{encrypted} signing key(s) were stored in clear until now: rotate them (`bmm-as --rotate-keys`) so that no key a copy of the old database holds signs tokens"
                );
                if store.backend() == "postgres" {
                    tracing::warn!(
                        "PostgreSQL keeps the old row versions holding the clear key until the signing_keys table is vacuumed: run `VACUUM FULL signing_keys` (and rotate the keys: its write-ahead log and backups keep them too)"
                    );
                }
            }
        }
        let ring = Self::build(store, now, retain_secs, kek.as_ref()).await?;
        Ok(Self {
            ring: RwLock::new(Arc::new(ring)),
            retain_secs,
            kek,
            rng: SystemRandom::new(),
        })
    }

    async fn build(
        store: &dyn Store,
        now: u64,
        retain_secs: u64,
        kek: Option<&KeyEncryptionKey>,
    ) -> Result<Ring, StoreError> {
        let stored = store.keys().await?;
        Self::assemble(&stored, now, retain_secs, kek)
    }

    fn assemble(
        stored: &[StoredKey],
        now: u64,
        retain_secs: u64,
        kek: Option<&KeyEncryptionKey>,
    ) -> Result<Ring, StoreError> {
        let cutoff = now.saturating_sub(retain_secs);
        let mut keys = Vec::new();
        let mut published = Vec::new();
        let mut built_from = Vec::new();
        for key in stored {
            built_from.push((key.kid.clone(), key.retired_at));
            if key.retired_at.is_some_and(|at| at < cutoff) {
                continue;
            }
            let der = private_der(key, kek)?;
            let pair = KeyPair::from_pkcs8(&der)
                .map_err(|_| StoreError(format!("stored key {} is unreadable", key.kid)))?;
            published.push(public_jwk(&key.kid, &pair));
            let mut derive = Sha256::new();
            derive.update(b"bmm-as dpop nonce key\0");
            derive.update(&der);
            keys.push(LoadedKey {
                kid: key.kid.clone(),
                pair,
                created_at: key.created_at,
                nonce_key: derive.finalize().into(),
            });
        }
        if !stored.iter().any(|k| k.retired_at.is_none()) || keys.is_empty() {
            return Err(StoreError("no current signing key".to_owned()));
        }
        Ok(Ring {
            keys,
            built_from,
            jwks: json!({"keys": published}),
        })
    }

    /// Reloads the keys from the store (rule 2); keeps the ring it has when nothing
    /// changed. On an error the old ring stays.
    pub async fn reload(&self, store: &dyn Store, now: u64) -> Result<(), StoreError> {
        let stored = store.keys().await?;
        let same = {
            let ring = self.ring();
            let cutoff = now.saturating_sub(self.retain_secs);
            ring.built_from.len() == stored.len()
                && ring
                    .built_from
                    .iter()
                    .zip(&stored)
                    .all(|((kid, retired), k)| *kid == k.kid && *retired == k.retired_at)
                && !stored
                    .iter()
                    .any(|k| k.retired_at.is_some_and(|at| at < cutoff))
        };
        if same {
            return Ok(());
        }
        let ring = Self::assemble(&stored, now, self.retain_secs, self.kek.as_ref())?;
        self.install(ring);
        Ok(())
    }

    fn install(&self, ring: Ring) {
        if let Ok(mut slot) = self.ring.write() {
            *slot = Arc::new(ring);
        }
    }

    /// Rotates in a new key; the old one stays in the JWKS for the retention period and
    /// keeps signing until the new one is [`PUBLISH_DELAY`] old (rule 3). Returns the new
    /// `kid`.
    pub async fn rotate(&self, store: &dyn Store, now: u64) -> Result<String, StoreError> {
        let key = generate(now, self.kek.as_ref())?;
        store.rotate_in(&key, now).await?;
        let ring = Self::build(store, now, self.retain_secs, self.kek.as_ref()).await?;
        self.install(ring);
        tracing::info!(kid = %key.kid, "signing key rotated; it signs from 15 s on, once every instance publishes it");
        Ok(key.kid)
    }

    fn ring(&self) -> Arc<Ring> {
        match self.ring.read() {
            Ok(r) => Arc::clone(&r),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The `kid` of the key that signs new tokens now.
    pub fn current_kid(&self) -> String {
        self.ring()
            .signing(crate::now())
            .map(|k| k.kid.clone())
            .unwrap_or_default()
    }

    /// The DPoP nonce keys of the published keys, newest first (see `dpop`).
    pub(crate) fn nonce_keys(&self) -> Vec<[u8; 32]> {
        self.ring().keys.iter().map(|k| k.nonce_key).collect()
    }

    /// The published JWKS document.
    pub fn jwks(&self) -> Value {
        self.ring().jwks.clone()
    }

    /// The claims of `token` if it is a JWT this server signed as an access token: header
    /// `alg` RS256, `typ` `at+jwt`, a `kid` of a published key, and a signature that
    /// verifies with that key. Nothing else (times, audience) is checked here.
    pub(crate) fn verify_access_token(
        &self,
        token: &str,
    ) -> Option<serde_json::Map<String, Value>> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).ok();
        let header: serde_json::Map<String, Value> =
            serde_json::from_slice(&decode(header)?).ok()?;
        if header.get("alg").and_then(Value::as_str) != Some("RS256")
            || header.get("typ").and_then(Value::as_str) != Some("at+jwt")
            || header.contains_key("crit")
        {
            return None;
        }
        let kid = header.get("kid").and_then(Value::as_str)?;
        let signature = decode(signature)?;
        let ring = self.ring();
        let key = ring.keys.iter().find(|k| k.kid == kid)?;
        let public = key.pair.public_key();
        let components = RsaPublicKeyComponents {
            n: public.modulus().big_endian_without_leading_zero(),
            e: public.exponent().big_endian_without_leading_zero(),
        };
        let signed = token.len() - signature_len(token);
        components
            .verify(
                &RSA_PKCS1_2048_8192_SHA256,
                token.as_bytes().get(..signed)?,
                &signature,
            )
            .ok()?;
        serde_json::from_slice(&decode(payload)?).ok()
    }

    /// Signs `claims` as an RFC 9068 access token (`typ: at+jwt`, RS256, `kid`).
    pub fn sign(&self, claims: &Value) -> Result<String, StoreError> {
        self.sign_jwt("at+jwt", claims)
    }

    /// Signs `claims` as a JWT with header `typ` (RS256, `kid`; rule 3 picks the key).
    pub fn sign_jwt(&self, typ: &str, claims: &Value) -> Result<String, StoreError> {
        let ring = self.ring();
        let key = ring
            .signing(crate::now())
            .ok_or_else(|| StoreError("no signing key".to_owned()))?;
        let header = json!({"alg": "RS256", "typ": typ, "kid": key.kid});
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0; key.pair.public_modulus_len()];
        key.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                token.as_bytes(),
                &mut signature,
            )
            .map_err(|_| StoreError("signing failed".to_owned()))?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::SqliteStore;

    fn kek(byte: u8) -> KeyEncryptionKey {
        KeyEncryptionKey([byte; 32])
    }

    #[test]
    fn the_key_encryption_key_must_be_base64_of_32_bytes() {
        assert!(KeyEncryptionKey::parse(&STANDARD.encode([7u8; 32])).is_ok());
        assert!(KeyEncryptionKey::parse(&URL_SAFE_NO_PAD.encode([7u8; 32])).is_ok());
        assert!(KeyEncryptionKey::parse(&STANDARD.encode([7u8; 16])).is_err());
        assert!(KeyEncryptionKey::parse("not base64!").is_err());
        assert_eq!(format!("{:?}", kek(1)), "KeyEncryptionKey(..)");
    }

    #[test]
    fn an_encrypted_key_opens_only_with_its_key_and_kid() {
        let sealed = kek(1).encrypt("kid-a", b"secret der").unwrap();
        assert!(sealed.starts_with(b"bmmk1"));
        assert!(!sealed.windows(10).any(|w| w == b"secret der"));
        assert_eq!(kek(1).decrypt("kid-a", &sealed).unwrap(), b"secret der");
        assert!(kek(2).decrypt("kid-a", &sealed).is_err(), "wrong key");
        assert!(
            kek(1).decrypt("kid-b", &sealed).is_err(),
            "moved to another kid"
        );
    }

    #[tokio::test]
    async fn plain_keys_are_encrypted_in_place_and_then_need_the_key() {
        let store = SqliteStore::in_memory().unwrap();
        let t = crate::now();
        let plain = KeyRing::load_or_create(&store, t, 3600, None)
            .await
            .unwrap();
        let kid = plain.current_kid();
        assert!(!is_encrypted(&store.keys().await.unwrap()[0].pkcs8));

        let sealed = KeyRing::load_or_create(&store, t, 3600, Some(kek(3)))
            .await
            .unwrap();
        assert_eq!(sealed.current_kid(), kid, "the same key, now encrypted");
        assert!(is_encrypted(&store.keys().await.unwrap()[0].pkcs8));

        let error = KeyRing::load_or_create(&store, t, 3600, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(KEK_ENV), "{error}");
        let error = KeyRing::load_or_create(&store, t, 3600, Some(kek(4)))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("not the key it was encrypted with"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_rotated_key_signs_only_once_it_is_old_enough_and_reloads_publish_it() {
        let store = SqliteStore::in_memory().unwrap();
        let t = 1_000_000;
        let a = KeyRing::load_or_create(&store, t, 3600, None)
            .await
            .unwrap();
        let b = KeyRing::load_or_create(&store, t, 3600, None)
            .await
            .unwrap();
        assert_eq!(store.keys().await.unwrap().len(), 1, "one first key");
        let first = a.ring().signing(t).unwrap().kid.clone();
        assert_eq!(
            a.ring().signing(t).unwrap().kid,
            first,
            "the first key signs at once"
        );

        let second = a.rotate(&store, t + 100).await.unwrap();
        assert_eq!(
            a.ring().signing(t + 100).unwrap().kid,
            first,
            "the old key signs while the new one may be unpublished elsewhere"
        );
        assert_eq!(a.ring().signing(t + 115).unwrap().kid, second);
        assert_eq!(b.jwks()["keys"].as_array().unwrap().len(), 1);
        b.reload(&store, t + 105).await.unwrap();
        assert_eq!(b.jwks()["keys"].as_array().unwrap().len(), 2);
        assert_eq!(b.ring().signing(t + 115).unwrap().kid, second);
        // Past the retention, the retired key is no longer published.
        b.reload(&store, t + 100 + 3601).await.unwrap();
        assert_eq!(b.jwks()["keys"].as_array().unwrap().len(), 1);
    }
}
