//! Bounds on the sign-in page: pending requests and password guessing.
//!
//! Rules:
//! 1. Pending sign-ins (a consent page shown, waiting for the user) are bounded per caller
//!    address (16; IPv6 by /64) and in all (10,000). A caller over its bound loses its own
//!    oldest pending request; when the table is full, the caller holding the most pending
//!    requests loses its oldest one (among equal holders, the caller whose oldest request
//!    is the most recent). No anonymous caller can make `/authorize` refuse anyone
//!    else: a flood from one address only evicts the flooder's own requests, and one from
//!    many addresses evicts the largest holders, then the newest, first, so a sign-in under
//!    way survives. (A flood from more than 10,000 addresses can still evict a sign-in
//!    started during it: pending requests are kept server-side, not in signed form state.)
//!    They are kept in the store, under the SHA-256 of their id, so the instance that
//!    shows the page and the one that receives the form need not be the same; the store
//!    applies these evictions and the single use in one transaction.
//! 2. Failed sign-ins are counted per caller address and per user name (known or not, so
//!    the answer does not tell which names exist). After 10 failures from an address, or 5
//!    for a name, each further attempt must wait 1 s, doubling per failure up to 5 minutes;
//!    an attempt made while waiting is refused without checking the password (no Argon2
//!    run). A success clears the name's count. Counts are forgotten 15 minutes after the
//!    last failure; each map holds at most 10,000 entries (the stalest dropped first).
//!    Attempts in flight count against the allowance before their password is checked (and
//!    before they wait for an Argon2 slot): while an address or name has as many attempts
//!    in flight as it has failures left before backing off, a further attempt is refused
//!    like one made while waiting; once it is backing off, one attempt at a time. So N
//!    parallel guesses get no more password checks than N guesses one after the other.
//! 3. An unknown user name (or an unreadable configured hash) is checked against a dummy
//!    Argon2 hash with the algorithm and parameters of the first configured user's hash
//!    (the defaults without users), so a guess costs the same time whether or not the name
//!    exists.
//! 4. Argon2 runs on dedicated threads, one per CPU (up to 4), started with the server, at
//!    most one check per thread at a time; a guess that cannot start within 10 s is
//!    answered "busy". Not on tokio's blocking pool: its threads come and go by the
//!    hundred, and glibc keeps each thread's freed 19 MiB Argon2 blocks in that thread's
//!    arena, so a few hundred guesses left the process holding gigabytes.
//! 5. An attempt refused under rule 2 is audited once per back-off period and address (the
//!    first refusal), not once per request, so a flood cannot fill the audit trail; both
//!    sign-in forms and the consent page are also rate limited per address
//!    ([`crate::ratelimit::Bucket::SignIn`], [`crate::ratelimit::Bucket::Authorize`]).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use crate::config::UserConfig;
use crate::error::StoreError;
use crate::ratelimit::caller_key;
use crate::store::Store;
use crate::{now, sha256_hex};

/// Pending sign-ins per caller address (rule 1).
pub(crate) const PENDING_PER_CALLER: u32 = 16;
/// Pending sign-ins in all (rule 1).
pub(crate) const PENDING_GLOBAL: u32 = 10_000;

/// Pending sign-in requests, kept in the store (so any instance can finish a sign-in
/// another showed) as JSON documents under the SHA-256 of their id, bounded per caller and
/// in all (rule 1; the store applies the evictions in one transaction).
pub(crate) struct Pending;

impl Pending {
    /// Keeps `value` under `id` for `caller` until `expires_at`, evicting as rule 1 says.
    pub(crate) async fn insert<V: Serialize>(
        store: &dyn Store,
        id: &str,
        caller: IpAddr,
        value: &V,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let document = serde_json::to_string(value)
            .map_err(|e| StoreError(format!("pending sign-in: {e}")))?;
        store
            .put_pending(
                &sha256_hex(id),
                &caller_key(caller).to_string(),
                &document,
                expires_at,
                PENDING_PER_CALLER,
                PENDING_GLOBAL,
            )
            .await
    }

    /// Takes the live request `id` (single use, also across instances).
    pub(crate) async fn take<V: DeserializeOwned>(
        store: &dyn Store,
        id: &str,
    ) -> Result<Option<V>, StoreError> {
        if id.is_empty() || id.len() > 256 {
            return Ok(None);
        }
        match store.take_pending(&sha256_hex(id), now()).await? {
            Some(document) => serde_json::from_str(&document)
                .map(Some)
                .map_err(|e| StoreError(format!("pending sign-in: {e}"))),
            None => Ok(None),
        }
    }
}

/// Failures allowed from one address before backing off (rule 2).
pub(crate) const FREE_FAILURES_PER_CALLER: u32 = 10;
/// Failures allowed for one user name before backing off (rule 2).
pub(crate) const FREE_FAILURES_PER_USER: u32 = 5;
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const FORGET_AFTER: Duration = Duration::from_secs(900);
const MAX_THROTTLE_ENTRIES: usize = 10_000;
const ARGON2_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Instant,
    /// Attempts admitted and not yet finished (rule 2).
    in_flight: u32,
}

fn backoff(count: u32, free: u32) -> Duration {
    let over = count.saturating_sub(free);
    if count < free {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << over.min(16)).min(MAX_BACKOFF)
}

/// How long a caller refused for attempts in flight is told to wait.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(1);

/// The entry of `key`, made room for (rule 2's bound) and created if missing, with a count
/// forgotten after [`FORGET_AFTER`].
fn entry<'m, K: Eq + Hash + Clone>(
    map: &'m mut HashMap<K, Failures>,
    key: &K,
    now: Instant,
) -> &'m mut Failures {
    if map.len() >= MAX_THROTTLE_ENTRIES && !map.contains_key(key) {
        map.retain(|_, f| {
            f.in_flight > 0 || f.blocked_until > now || now.duration_since(f.last) < FORGET_AFTER
        });
        while map.len() >= MAX_THROTTLE_ENTRIES {
            let Some(stalest) = map
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&stalest);
        }
    }
    let f = map.entry(key.clone()).or_insert(Failures {
        count: 0,
        last: now,
        blocked_until: now,
        in_flight: 0,
    });
    if f.count > 0 && now.duration_since(f.last) >= FORGET_AFTER && f.blocked_until <= now {
        f.count = 0;
    }
    f
}

/// Admits one attempt for `key` (rule 2), counting it in flight, or says how long to wait.
fn admit<K: Eq + Hash + Clone>(
    map: &Mutex<HashMap<K, Failures>>,
    key: &K,
    free: u32,
) -> Result<(), Duration> {
    let Ok(mut map) = map.lock() else {
        return Err(IN_FLIGHT_WAIT);
    };
    let now = Instant::now();
    let f = entry(&mut map, key, now);
    if f.blocked_until > now {
        return Err(f.blocked_until - now);
    }
    let within = f.count.saturating_add(f.in_flight) < free;
    if !within && f.in_flight > 0 {
        return Err(IN_FLIGHT_WAIT);
    }
    f.in_flight += 1;
    Ok(())
}

/// Ends an attempt admitted by [`admit`].
fn finish<K: Eq + Hash>(map: &Mutex<HashMap<K, Failures>>, key: &K) {
    let Ok(mut map) = map.lock() else {
        return;
    };
    if let Some(f) = map.get_mut(key) {
        f.in_flight = f.in_flight.saturating_sub(1);
        if f.count == 0 && f.in_flight == 0 {
            map.remove(key);
        }
    }
}

fn record<K: Eq + Hash + Clone>(map: &Mutex<HashMap<K, Failures>>, key: &K, free: u32) {
    let Ok(mut map) = map.lock() else {
        return;
    };
    let now = Instant::now();
    let f = entry(&mut map, key, now);
    f.count = f.count.saturating_add(1);
    f.last = now;
    f.blocked_until = now + backoff(f.count, free);
}

/// What checking a password found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The name and password match a configured user.
    Valid,
    /// They do not.
    Invalid,
    /// Too many failures: try again after this long (no password was checked).
    Wait(Duration),
    /// No Argon2 slot became free in time.
    Busy,
}

/// An attempt in flight (rule 2); ends when dropped, after its failure is recorded.
struct Attempt<'t> {
    throttle: &'t Throttle,
    caller: IpAddr,
    user_key: String,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        finish(&self.throttle.by_caller, &self.caller);
        finish(&self.throttle.by_user, &self.user_key);
    }
}

/// Sign-in throttling and equal-time password checks (rules 2 to 4).
pub(crate) struct Throttle {
    by_caller: Mutex<HashMap<IpAddr, Failures>>,
    by_user: Mutex<HashMap<String, Failures>>,
    argon2: Arc<Semaphore>,
    /// The queue of the Argon2 threads (rule 4); `None` when they could not be started.
    argon2_threads: Option<std::sync::mpsc::SyncSender<Job>>,
    dummy_hash: Arc<OnceLock<Option<String>>>,
    /// Until when each address's refusals are already audited (rule 5).
    audited_until: Mutex<HashMap<IpAddr, Instant>>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle").finish_non_exhaustive()
    }
}

/// An Argon2 hash of a random password (rule 3), with the algorithm and parameters of
/// `template` (a configured user's hash) so that checking it costs what checking that user
/// costs; the defaults without one.
fn dummy_hash(template: Option<&str>) -> Option<String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    let salt = SaltString::encode_b64(&bytes[..16]).ok()?;
    let like = template.and_then(|t| {
        let parsed = PasswordHash::new(t).ok()?;
        let algorithm = argon2::Algorithm::try_from(parsed.algorithm).ok()?;
        let version = parsed
            .version
            .and_then(|v| argon2::Version::try_from(v).ok())
            .unwrap_or_default();
        let params = argon2::Params::try_from(&parsed).ok()?;
        Some(Argon2::new(algorithm, version, params))
    });
    like.unwrap_or_default()
        .hash_password(&bytes[16..], &salt)
        .ok()
        .map(|h| h.to_string())
}

/// A password check run on an Argon2 thread (rule 4).
type Job = Box<dyn FnOnce() + Send + 'static>;

/// Starts `n` Argon2 threads (rule 4) and returns their queue (room for `n` jobs: the
/// semaphore admits no more). They end when the queue is dropped with the [`Throttle`].
fn argon2_threads(n: usize) -> Option<std::sync::mpsc::SyncSender<Job>> {
    let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(n);
    let queue = Arc::new(Mutex::new(queue));
    for i in 0..n {
        let queue = Arc::clone(&queue);
        let worker = move || {
            loop {
                let next = match queue.lock() {
                    Ok(queue) => queue.recv(),
                    Err(_) => return,
                };
                match next {
                    Ok(job) => job(),
                    Err(_) => return,
                }
            }
        };
        if let Err(error) = std::thread::Builder::new()
            .name(format!("bmm-as-argon2-{i}"))
            .spawn(worker)
        {
            tracing::error!(%error, "cannot start the Argon2 threads");
            return None;
        }
    }
    Some(jobs)
}

impl Throttle {
    pub(crate) fn new() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        Self {
            by_caller: Mutex::new(HashMap::new()),
            by_user: Mutex::new(HashMap::new()),
            argon2: Arc::new(Semaphore::new(cpus)),
            argon2_threads: argon2_threads(cpus),
            dummy_hash: Arc::new(OnceLock::new()),
            audited_until: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a refusal of `caller` told to wait `wait` should be audited (rule 5): the
    /// first one of each back-off period is, the rest are not.
    pub(crate) fn audit_refusal(&self, caller: IpAddr, wait: Duration) -> bool {
        let caller = caller_key(caller);
        let Ok(mut map) = self.audited_until.lock() else {
            return false;
        };
        let now = Instant::now();
        if map.len() >= MAX_THROTTLE_ENTRIES && !map.contains_key(&caller) {
            map.retain(|_, until| *until > now);
            if map.len() >= MAX_THROTTLE_ENTRIES {
                return false;
            }
        }
        match map.get(&caller) {
            Some(until) if *until > now => false,
            _ => {
                map.insert(caller, now + wait.max(IN_FLIGHT_WAIT));
                true
            }
        }
    }

    /// Admits an attempt for both the address and the name (rule 2).
    fn admit(&self, caller: IpAddr, user_key: &str) -> Result<Attempt<'_>, Duration> {
        admit(&self.by_caller, &caller, FREE_FAILURES_PER_CALLER)?;
        let user_key = user_key.to_owned();
        if let Err(wait) = admit(&self.by_user, &user_key, FREE_FAILURES_PER_USER) {
            finish(&self.by_caller, &caller);
            return Err(wait);
        }
        Ok(Attempt {
            throttle: self,
            caller,
            user_key,
        })
    }

    /// Checks `username`/`password` for `caller` under rules 2 to 4.
    pub(crate) async fn check(
        &self,
        users: &[UserConfig],
        caller: IpAddr,
        username: &str,
        password: &str,
    ) -> Verdict {
        let caller = caller_key(caller);
        let user_key = sha256_hex(username);
        // Rule 2: the attempt counts in flight from here (also if it is cancelled), before
        // it waits for an Argon2 slot.
        let _attempt = match self.admit(caller, &user_key) {
            Ok(attempt) => attempt,
            Err(wait) => return Verdict::Wait(wait),
        };
        let Ok(Ok(_permit)) =
            tokio::time::timeout(ARGON2_WAIT, Arc::clone(&self.argon2).acquire_owned()).await
        else {
            return Verdict::Busy;
        };
        let readable = |u: &&UserConfig| PasswordHash::new(&u.password_hash).is_ok();
        let known = users
            .iter()
            .filter(readable)
            .find(|u| u.name == username)
            .map(|u| u.password_hash.clone());
        let real = known.is_some();
        let template = users.iter().find(readable).map(|u| u.password_hash.clone());
        let dummy = Arc::clone(&self.dummy_hash);
        let password = password.to_owned();
        let check = move || {
            let hash = match known {
                Some(h) => h,
                None => match dummy.get_or_init(|| dummy_hash(template.as_deref())) {
                    Some(d) => d.clone(),
                    None => return false,
                },
            };
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        };
        let (done, matched) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(check());
        });
        // Rule 4: on the Argon2 threads; the permit held guarantees the queue has room.
        let Some(Ok(())) = self.argon2_threads.as_ref().map(|jobs| jobs.try_send(job)) else {
            return Verdict::Busy;
        };
        let matched = matched.await.unwrap_or(false);
        if matched && real {
            if let Ok(mut map) = self.by_user.lock()
                && let Some(f) = map.get_mut(&user_key)
            {
                f.count = 0;
                f.blocked_until = Instant::now();
            }
            Verdict::Valid
        } else {
            record(&self.by_caller, &caller, FREE_FAILURES_PER_CALLER);
            record(&self.by_user, &user_key, FREE_FAILURES_PER_USER);
            Verdict::Invalid
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    struct Table(crate::store::SqliteStore);

    impl Table {
        fn new() -> Self {
            Self(crate::store::SqliteStore::in_memory().unwrap())
        }

        async fn insert(&self, id: &str, caller: IpAddr, value: u32, expires_at: u64) {
            Pending::insert(&self.0, id, caller, &value, expires_at)
                .await
                .unwrap();
        }

        async fn take(&self, id: &str) -> Option<u32> {
            Pending::take(&self.0, id).await.unwrap()
        }

        async fn len(&self) -> usize {
            self.0.pending_len().await.unwrap()
        }
    }

    #[tokio::test]
    async fn pending_requests_per_caller_are_bounded_and_the_callers_oldest_is_evicted() {
        let pending = Table::new();
        let flooder: IpAddr = "192.0.2.1".parse().unwrap();
        let user: IpAddr = "192.0.2.2".parse().unwrap();
        pending.insert("user", user, 0, now() + 600).await;
        for i in 0..200u32 {
            pending
                .insert(&format!("f{i}"), flooder, i, now() + 600)
                .await;
        }
        assert_eq!(pending.len().await, PENDING_PER_CALLER as usize + 1);
        assert_eq!(
            pending.take("f0").await,
            None,
            "the flooder's oldest went first"
        );
        assert_eq!(pending.take("f199").await, Some(199));
        assert_eq!(
            pending.take("user").await,
            Some(0),
            "another caller's request survives"
        );
        assert_eq!(pending.take("user").await, None, "single use");
    }

    #[tokio::test]
    async fn pending_ipv6_callers_are_bounded_by_their_64() {
        let pending = Table::new();
        for i in 0..100u32 {
            let ip: IpAddr = format!("2001:db8::{i:x}").parse().unwrap();
            pending.insert(&format!("f{i}"), ip, i, now() + 600).await;
        }
        assert_eq!(pending.len().await, PENDING_PER_CALLER as usize);
    }

    #[tokio::test]
    async fn full_pending_table_evicts_from_the_largest_holder_not_a_lone_user() {
        let pending = Table::new();
        let t = now() + 600;
        pending
            .insert("user", "198.51.100.1".parse().unwrap(), 0, t)
            .await;
        let mut n = 0u32;
        'fill: for a in 0..=255u8 {
            for b in 0..=255u8 {
                let ip = IpAddr::from([10, 1, a, b]);
                let holders = if a == 0 && b == 0 {
                    PENDING_PER_CALLER
                } else {
                    1
                };
                for _ in 0..holders {
                    pending.insert(&format!("f{n}"), ip, n, t).await;
                    n += 1;
                }
                if n >= PENDING_GLOBAL + 100 {
                    break 'fill;
                }
            }
        }
        assert_eq!(pending.len().await, PENDING_GLOBAL as usize);
        assert_eq!(
            pending.take("f0").await,
            None,
            "the largest holder lost its oldest"
        );
        assert_eq!(
            pending.take("user").await,
            Some(0),
            "a lone pending sign-in survives"
        );
    }

    #[tokio::test]
    async fn expired_pending_requests_are_not_returned() {
        let pending = Table::new();
        pending
            .insert("old", "192.0.2.1".parse().unwrap(), 1, now())
            .await;
        assert_eq!(pending.take("old").await, None);
    }

    #[test]
    fn dummy_hash_takes_the_configured_users_argon2_parameters() {
        let params = argon2::Params::new(8192, 3, 1, None).unwrap();
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let user = Argon2::new(argon2::Algorithm::Argon2i, argon2::Version::V0x13, params)
            .hash_password(b"pw", &salt)
            .unwrap()
            .to_string();
        let dummy = dummy_hash(Some(&user)).unwrap();
        assert!(
            dummy.starts_with("$argon2i$v=19$m=8192,t=3,p=1$"),
            "{dummy}"
        );
        let default = dummy_hash(None).unwrap();
        assert!(default.starts_with("$argon2id$"), "{default}");
    }

    #[test]
    fn backoff_starts_after_the_free_failures_and_is_capped() {
        assert_eq!(backoff(4, 5), Duration::ZERO);
        assert_eq!(backoff(5, 5), Duration::from_secs(1));
        assert_eq!(backoff(6, 5), Duration::from_secs(2));
        assert_eq!(backoff(100, 5), MAX_BACKOFF);
    }
}
