//! Configuration values shared by the layers, and the error every builder returns.

use std::fmt;
use std::time::Duration;

/// A configuration value was refused. The message says which value and what to do.
///
/// The message text is meant for people and is not stable.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ConfigError").field(&self.message).finish()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// How signing keys are fetched and cached.
#[derive(Clone, Debug)]
#[must_use]
pub struct KeySettings {
    pub(crate) fetch_timeout: Duration,
    pub(crate) max_document_bytes: usize,
    pub(crate) max_keys: usize,
    pub(crate) refetch_cooldown: Duration,
    pub(crate) unknown_kid_ttl: Duration,
    pub(crate) min_ttl: Duration,
    pub(crate) max_ttl: Duration,
    pub(crate) default_ttl: Duration,
    pub(crate) unknown_kid_capacity: usize,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            fetch_timeout: Duration::from_secs(5),
            max_document_bytes: 256 * 1024,
            max_keys: 64,
            refetch_cooldown: Duration::from_secs(10),
            unknown_kid_ttl: Duration::from_secs(30),
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(24 * 3600),
            default_ttl: Duration::from_secs(600),
            unknown_kid_capacity: 1024,
        }
    }
}

impl KeySettings {
    /// Timeout of each metadata or JWKS fetch (connect plus body). Default is 5 s.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// Largest metadata or JWKS document accepted. Default is 256 KiB.
    pub fn max_document_bytes(mut self, bytes: usize) -> Self {
        self.max_document_bytes = bytes;
        self
    }

    /// Most keys kept from one JWKS; the rest are ignored. Default is 64.
    pub fn max_keys(mut self, keys: usize) -> Self {
        self.max_keys = keys;
        self
    }

    /// Least time between two fetches caused by an unknown `kid` (or by a failure).
    /// Default is 10 s.
    pub fn refetch_cooldown(mut self, cooldown: Duration) -> Self {
        self.refetch_cooldown = cooldown;
        self
    }

    /// How long a `kid` that a fresh fetch did not contain is refused without another
    /// fetch. Default is 30 s.
    pub fn unknown_kid_ttl(mut self, ttl: Duration) -> Self {
        self.unknown_kid_ttl = ttl;
        self
    }

    /// Bounds applied to the JWKS response's `Cache-Control: max-age`, and the lifetime
    /// used when it has none. Defaults are 60 s, 24 h and 10 min.
    pub fn ttl_bounds(mut self, min: Duration, max: Duration, default: Duration) -> Self {
        self.min_ttl = min;
        self.max_ttl = max.max(min);
        self.default_ttl = default.clamp(min, self.max_ttl);
        self
    }
}
