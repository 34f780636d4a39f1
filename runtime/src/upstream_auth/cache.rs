//! Upstream tokens kept between calls, and one fetch at a time per token.
//!
//! - Exchanged tokens (RFC 8693): keyed by the SHA-256 of the caller's token, the upstream
//!   and the scope string (never the token itself), at most [`MAX_EXCHANGED`] entries;
//!   used until 30 s before they expire, the expiry capped by the caller's own token's.
//! - Client-credentials tokens: one per upstream and scope string (a static, small set),
//!   used until `exp - min(60 s, lifetime / 10)`.
//! - Single flight: callers wanting the same token while it is being fetched wait for that
//!   one fetch, which runs on its own task (a caller that goes away does not cancel it for
//!   the others); its token is in the cache before the waiters are woken.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::{Secret, UpstreamAuthError};

/// Most exchanged tokens kept.
pub(crate) const MAX_EXCHANGED: usize = 10_000;
/// Most token fetches under way at once per kind.
const MAX_IN_FLIGHT: usize = 1_024;
/// An exchanged token is not used in its last 30 seconds.
const EXCHANGE_MARGIN: Duration = Duration::from_secs(30);
/// The lifetime assumed for a client-credentials token whose response gave none (a 401
/// from the upstream renews it sooner).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// A token and the moment it stops being handed out.
#[derive(Clone)]
pub(crate) struct Cached {
    pub(crate) token: Secret,
    pub(crate) until: Instant,
}

type Outcome = Result<Secret, UpstreamAuthError>;

/// Fetches under way, by key.
pub(crate) struct Flights<K> {
    map: Mutex<HashMap<K, watch::Receiver<Option<Outcome>>>>,
}

impl<K> Default for Flights<K> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone + Send + Sync + 'static> Flights<K> {
    /// The token for `key`: from `cached` (asked again under the lock: a fetch that just
    /// finished left its token there before leaving), by joining the fetch under way, or
    /// by starting `fetch` on its own task. `fetch` must cache what it got before it
    /// returns.
    pub(crate) async fn get<F>(
        self: &Arc<Self>,
        key: &K,
        cached: impl Fn() -> Option<Secret>,
        fetch: impl FnOnce() -> F,
    ) -> Outcome
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        if let Some(hit) = cached() {
            return Ok(hit);
        }
        let mut waiting = {
            let Ok(mut map) = self.map.lock() else {
                return Err(UpstreamAuthError::Busy);
            };
            if let Some(hit) = cached() {
                return Ok(hit);
            }
            match map.get(key) {
                Some(waiting) => waiting.clone(),
                None => {
                    if map.len() >= MAX_IN_FLIGHT {
                        return Err(UpstreamAuthError::Busy);
                    }
                    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                        return Err(UpstreamAuthError::Busy);
                    };
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx.clone());
                    let this = Arc::clone(self);
                    let key = key.clone();
                    let work = fetch();
                    runtime.spawn(async move {
                        let outcome = work.await;
                        if let Ok(mut map) = this.map.lock() {
                            map.remove(&key);
                        }
                        let _ = tx.send(Some(outcome));
                    });
                    rx
                }
            }
        };
        match waiting.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or(Err(UpstreamAuthError::Busy)),
            Err(_) => Err(UpstreamAuthError::Busy),
        }
    }
}

/// The key of an exchanged token: SHA-256 over the SHA-256 of the caller's token, the
/// upstream and the scope string.
pub(crate) fn exchange_key(subject: &str, upstream: &str, scope: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(Sha256::digest(subject.as_bytes()));
    hash.update(upstream.as_bytes());
    hash.update([0]);
    hash.update(scope.as_bytes());
    hash.finalize().into()
}

/// Until when an exchanged token is handed out: 30 s before the earlier of its own expiry
/// (`expires_in`, when given) and the caller's token's; `None` when that is already past
/// (used for the one call, not kept).
pub(crate) fn exchanged_until(
    now: Instant,
    expires_in: Option<u64>,
    subject_left: Option<Duration>,
) -> Option<Instant> {
    let lifetime = match (expires_in.map(Duration::from_secs), subject_left) {
        (Some(own), Some(subject)) => own.min(subject),
        (Some(own), None) => own,
        (None, Some(subject)) => subject,
        (None, None) => return None,
    };
    lifetime
        .checked_sub(EXCHANGE_MARGIN)
        .filter(|left| !left.is_zero())
        .map(|left| now + left)
}

/// Until when a client-credentials token is reused: `exp - min(60 s, lifetime / 10)`.
pub(crate) fn machine_until(now: Instant, expires_in: Option<u64>) -> Instant {
    let lifetime = expires_in.map_or(DEFAULT_LIFETIME, Duration::from_secs);
    let margin = Duration::from_secs(60).min(lifetime / 10);
    now + lifetime.saturating_sub(margin)
}

/// Exchanged tokens.
pub(crate) struct Exchanged {
    pub(crate) cache: Arc<quick_cache::sync::Cache<[u8; 32], Cached>>,
    pub(crate) flights: Arc<Flights<[u8; 32]>>,
}

impl Exchanged {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            cache: Arc::new(quick_cache::sync::Cache::new(capacity.max(1))),
            flights: Arc::new(Flights::default()),
        }
    }

    /// The cached token for `key`, if it is still to be handed out.
    pub(crate) fn cached(&self, key: &[u8; 32]) -> Option<Secret> {
        let entry = self.cache.get(key)?;
        if entry.until > Instant::now() {
            Some(entry.token)
        } else {
            self.cache.remove(key);
            None
        }
    }

    /// Forgets `rejected` (the upstream answered 401 to it), unless another token has
    /// replaced it meanwhile.
    pub(crate) fn forget(&self, key: &[u8; 32], rejected: &Secret) {
        self.cache
            .remove_if(key, |entry| entry.token.same_as(rejected));
    }
}

/// Client-credentials tokens, by upstream and scope string.
#[derive(Default)]
pub(crate) struct Machine {
    pub(crate) cache: Arc<Mutex<HashMap<(&'static str, String), Cached>>>,
    pub(crate) flights: Arc<Flights<(&'static str, String)>>,
}

impl Machine {
    pub(crate) fn cached(&self, key: &(&'static str, String)) -> Option<Secret> {
        let map = self.cache.lock().ok()?;
        map.get(key)
            .filter(|entry| entry.until > Instant::now())
            .map(|entry| entry.token.clone())
    }

    pub(crate) fn store(
        cache: &Mutex<HashMap<(&'static str, String), Cached>>,
        key: (&'static str, String),
        entry: Cached,
    ) {
        if let Ok(mut map) = cache.lock() {
            map.insert(key, entry);
        }
    }

    /// Forgets `rejected` (the upstream answered 401 to it), only if it is still the
    /// cached one: of many calls refused with the same token, the first renews it and the
    /// others take the new one.
    pub(crate) fn forget(&self, key: &(&'static str, String), rejected: &Secret) {
        if let Ok(mut map) = self.cache.lock()
            && map.get(key).is_some_and(|e| e.token.same_as(rejected))
        {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn exchange_keys_tell_callers_upstreams_and_scopes_apart() {
        let a = exchange_key("token-a", "cal", "read");
        assert_eq!(a, exchange_key("token-a", "cal", "read"));
        assert_ne!(a, exchange_key("token-b", "cal", "read"));
        assert_ne!(a, exchange_key("token-a", "mail", "read"));
        assert_ne!(a, exchange_key("token-a", "cal", "read write"));
        // The upstream and scope cannot run into each other.
        assert_ne!(exchange_key("t", "ab", "c"), exchange_key("t", "a", "bc"));
    }

    #[test]
    fn exchanged_tokens_end_30_s_early_and_never_after_the_callers_token() {
        let now = Instant::now();
        assert_eq!(
            exchanged_until(now, Some(3600), Some(Duration::from_secs(600))),
            Some(now + Duration::from_secs(570)),
            "capped by the caller's token"
        );
        assert_eq!(
            exchanged_until(now, Some(300), Some(Duration::from_secs(600))),
            Some(now + Duration::from_secs(270))
        );
        assert_eq!(
            exchanged_until(now, None, Some(Duration::from_secs(100))),
            Some(now + Duration::from_secs(70))
        );
        assert_eq!(
            exchanged_until(now, Some(30), None),
            None,
            "too short to keep"
        );
        assert_eq!(exchanged_until(now, None, None), None);
    }

    #[test]
    fn machine_tokens_are_renewed_a_tenth_of_their_life_early_at_most_a_minute() {
        let now = Instant::now();
        assert_eq!(
            machine_until(now, Some(3600)),
            now + Duration::from_secs(3540)
        );
        assert_eq!(machine_until(now, Some(60)), now + Duration::from_secs(54));
        assert_eq!(machine_until(now, Some(0)), now);
        assert_eq!(machine_until(now, None), now + Duration::from_secs(270));
    }

    /// 50 concurrent callers, one fetch; the waiters get its token.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_fetch_serves_every_concurrent_caller() {
        let machine = Arc::new(Machine::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let key = ("api", "read".to_owned());
        let mut calls = Vec::new();
        for _ in 0..50 {
            let machine = Arc::clone(&machine);
            let fetches = Arc::clone(&fetches);
            let key = key.clone();
            calls.push(tokio::spawn(async move {
                let cache = Arc::clone(&machine.cache);
                let stored = key.clone();
                machine
                    .flights
                    .get(
                        &key,
                        || machine.cached(&key),
                        move || async move {
                            let n = fetches.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            let token = Secret::new(&format!("token-{n}"));
                            Machine::store(
                                &cache,
                                stored,
                                Cached {
                                    token: token.clone(),
                                    until: Instant::now() + Duration::from_secs(60),
                                },
                            );
                            Ok(token)
                        },
                    )
                    .await
            }));
        }
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap().expose(), "token-0");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        // A 401 to the old token drops it once; a second report of the same token (the
        // new one is cached now) drops nothing.
        let old = machine.cached(&key).unwrap();
        machine.forget(&key, &old);
        assert!(machine.cached(&key).is_none());
        Machine::store(
            &machine.cache,
            key.clone(),
            Cached {
                token: Secret::new("token-1"),
                until: Instant::now() + Duration::from_secs(60),
            },
        );
        machine.forget(&key, &old);
        assert_eq!(machine.cached(&key).unwrap().expose(), "token-1");
    }

    #[tokio::test]
    async fn a_failed_fetch_is_shared_and_not_cached() {
        let flights: Arc<Flights<u8>> = Arc::new(Flights::default());
        let err = flights
            .get(
                &1,
                || None,
                || async {
                    Err(UpstreamAuthError::Refused {
                        error: "invalid_client".to_owned(),
                        description: None,
                    })
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamAuthError::Refused { .. }));
        let ok = flights
            .get(&1, || None, || async { Ok(Secret::new("fresh")) })
            .await
            .unwrap();
        assert_eq!(ok.expose(), "fresh");
    }

    #[test]
    fn exchanged_entries_expire_and_are_bounded() {
        let exchanged = Exchanged::new(4);
        let key = exchange_key("t", "u", "s");
        exchanged.cache.insert(
            key,
            Cached {
                token: Secret::new("old"),
                until: Instant::now() - Duration::from_secs(1),
            },
        );
        assert!(exchanged.cached(&key).is_none(), "past its time");
        for i in 0..100 {
            exchanged.cache.insert(
                exchange_key(&format!("t{i}"), "u", "s"),
                Cached {
                    token: Secret::new("x"),
                    until: Instant::now() + Duration::from_secs(60),
                },
            );
        }
        assert!(exchanged.cache.len() <= 4, "{}", exchanged.cache.len());
    }
}
