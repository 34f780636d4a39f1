//! Signing keys: RS256 key pairs generated on first start, kept in the store, rotated with
//! the previous public key still published until the tokens it signed have expired.

use std::sync::{Arc, RwLock};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::store::{Store, StoredKey};

struct SigningKey {
    kid: String,
    pair: KeyPair,
}

struct Ring {
    current: SigningKey,
    jwks: Value,
}

/// The current signing key and the published JWKS.
pub struct KeyRing {
    ring: RwLock<Arc<Ring>>,
    retain_secs: u64,
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

fn generate(now: u64) -> Result<StoredKey, StoreError> {
    let pair = KeyPair::generate(KeySize::Rsa2048)
        .map_err(|_| StoreError("RSA key generation failed".to_owned()))?;
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'static>>::as_der(&pair)
        .map_err(|_| StoreError("RSA key encoding failed".to_owned()))?;
    Ok(StoredKey {
        kid: thumbprint(&pair),
        pkcs8: der.as_ref().to_vec(),
        created_at: now,
        retired_at: None,
    })
}

impl KeyRing {
    /// Loads the keys from `store`, creating the first one if there is none. Retired keys
    /// stay published for `retain_secs` (at least the access-token lifetime).
    pub async fn load_or_create(
        store: &dyn Store,
        now: u64,
        retain_secs: u64,
    ) -> Result<Self, StoreError> {
        if !store.keys().await?.iter().any(|k| k.retired_at.is_none())
            && store.create_first_key(&generate(now)?).await?
        {
            tracing::info!("generated the first signing key");
        }
        let ring = Self::build(store, now, retain_secs).await?;
        Ok(Self {
            ring: RwLock::new(Arc::new(ring)),
            retain_secs,
            rng: SystemRandom::new(),
        })
    }

    async fn build(store: &dyn Store, now: u64, retain_secs: u64) -> Result<Ring, StoreError> {
        store.prune_keys(now.saturating_sub(retain_secs)).await?;
        let keys = store.keys().await?;
        let mut current = None;
        let mut published = Vec::new();
        for key in keys {
            let pair = KeyPair::from_pkcs8(&key.pkcs8)
                .map_err(|_| StoreError(format!("stored key {} is unreadable", key.kid)))?;
            published.push(public_jwk(&key.kid, &pair));
            if key.retired_at.is_none() && current.is_none() {
                current = Some(SigningKey { kid: key.kid, pair });
            }
        }
        let current = current.ok_or_else(|| StoreError("no current signing key".to_owned()))?;
        Ok(Ring {
            current,
            jwks: json!({"keys": published}),
        })
    }

    /// Replaces the current key; the old one stays in the JWKS for the retention period.
    pub async fn rotate(&self, store: &dyn Store, now: u64) -> Result<String, StoreError> {
        let key = generate(now)?;
        store.rotate_in(&key, now).await?;
        let ring = Self::build(store, now, self.retain_secs).await?;
        let kid = ring.current.kid.clone();
        if let Ok(mut slot) = self.ring.write() {
            *slot = Arc::new(ring);
        }
        tracing::info!(kid = %kid, "signing key rotated");
        Ok(kid)
    }

    fn ring(&self) -> Arc<Ring> {
        match self.ring.read() {
            Ok(r) => Arc::clone(&r),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The `kid` of the key that signs new tokens.
    pub fn current_kid(&self) -> String {
        self.ring().current.kid.clone()
    }

    /// The published JWKS document.
    pub fn jwks(&self) -> Value {
        self.ring().jwks.clone()
    }

    /// Signs `claims` as an RFC 9068 access token (`typ: at+jwt`, RS256, `kid`).
    pub fn sign(&self, claims: &Value) -> Result<String, StoreError> {
        let ring = self.ring();
        let header = json!({"alg": "RS256", "typ": "at+jwt", "kid": ring.current.kid});
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0; ring.current.pair.public_modulus_len()];
        ring.current
            .pair
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
