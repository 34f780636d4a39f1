//! Verified-token cache: steady traffic with the same token pays for one signature check.
//!
//! Rules:
//! 1. Keys are the SHA-256 of the token, never the token itself.
//! 2. Only tokens that passed every check are cached; failures are never cached.
//! 3. An entry is never used at or after the token's `exp` (no leeway on reuse).
//! 4. The cache is bounded; the least useful entries are evicted first.

use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::context::AuthContext;

/// A bounded map from token hash to the context it verified to.
pub(crate) struct TokenCache {
    cache: Option<quick_cache::sync::Cache<[u8; 32], AuthContext>>,
}

impl TokenCache {
    /// A cache of `capacity` entries; zero disables caching.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            cache: (capacity > 0).then(|| quick_cache::sync::Cache::new(capacity)),
        }
    }

    pub(crate) fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    pub(crate) fn get(&self, key: &[u8; 32]) -> Option<AuthContext> {
        let cache = self.cache.as_ref()?;
        let ctx = cache.get(key)?;
        if ctx.expires_at_secs() > now_secs() {
            Some(ctx)
        } else {
            cache.remove(key);
            None
        }
    }

    pub(crate) fn insert(&self, key: [u8; 32], ctx: &AuthContext) {
        if let Some(cache) = &self.cache {
            cache.insert(key, ctx.clone());
        }
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::ScopeSet;

    fn ctx(exp: u64) -> AuthContext {
        AuthContext::new(
            "i".into(),
            vec![],
            ScopeSet::new(),
            ScopeSet::new(),
            exp,
            serde_json::Map::new(),
        )
    }

    #[test]
    fn token_cache_entries_never_outlive_exp() {
        let cache = TokenCache::new(8);
        let key = TokenCache::key("t");
        cache.insert(key, &ctx(now_secs() - 1));
        assert!(cache.get(&key).is_none());
        cache.insert(key, &ctx(now_secs() + 60));
        assert!(cache.get(&key).is_some());
    }

    #[test]
    fn token_cache_is_bounded() {
        let cache = TokenCache::new(4);
        for i in 0..100 {
            cache.insert(TokenCache::key(&i.to_string()), &ctx(now_secs() + 60));
        }
        let hits = (0..100)
            .filter(|i| cache.get(&TokenCache::key(&i.to_string())).is_some())
            .count();
        assert!(hits <= 8, "{hits}");
    }

    #[test]
    fn token_cache_keys_are_hashes_not_tokens() {
        assert_ne!(&TokenCache::key("abc")[..3], b"abc");
        assert_eq!(TokenCache::key("abc"), TokenCache::key("abc"));
    }
}
