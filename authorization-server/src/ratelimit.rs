//! Fixed-window rate limits per client address for registration and token requests.
//! IPv6 callers are counted by /64 ([`caller_key`]), since one host usually holds a whole /64.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which endpoint a request counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Bucket {
    Register,
    Token,
}

impl Bucket {
    fn limit(self) -> u32 {
        match self {
            Self::Register => 60,
            Self::Token => 600,
        }
    }
}

/// The key a caller's address is counted under: the address itself for IPv4, its /64 for
/// IPv6 (one host usually holds a whole /64, so counting single addresses would not bound it).
pub(crate) fn caller_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

const WINDOW: Duration = Duration::from_secs(60);
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug)]
pub(crate) struct RateLimiter {
    windows: Mutex<HashMap<(IpAddr, Bucket), (Instant, u32)>>,
    /// Clients each address registered that may still be unused (registration rule 7).
    registered: Mutex<HashMap<IpAddr, Vec<(String, u64)>>>,
}

/// Registered clients one address may have that have not completed an authorization.
pub(crate) const UNUSED_CLIENTS_PER_ADDRESS: usize = 20;

impl RateLimiter {
    pub(crate) fn new() -> Self {
        Self {
            windows: Mutex::new(HashMap::new()),
            registered: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` may register another client: fewer than [`UNUSED_CLIENTS_PER_ADDRESS`]
    /// of its registrations since `since` are still `unused`. Fails closed.
    pub(crate) fn may_register(
        &self,
        ip: IpAddr,
        since: u64,
        unused: impl Fn(&str) -> bool,
    ) -> bool {
        let key = caller_key(ip);
        let Ok(mut registered) = self.registered.lock() else {
            return false;
        };
        let Some(list) = registered.get_mut(&key) else {
            return true;
        };
        list.retain(|(id, at)| *at >= since && unused(id));
        if list.is_empty() {
            registered.remove(&key);
            return true;
        }
        list.len() < UNUSED_CLIENTS_PER_ADDRESS
    }

    /// Records that `ip` registered `client_id` at `at`.
    pub(crate) fn registered(&self, ip: IpAddr, client_id: &str, at: u64, since: u64) {
        let key = caller_key(ip);
        let Ok(mut registered) = self.registered.lock() else {
            return;
        };
        if registered.len() >= MAX_ENTRIES && !registered.contains_key(&key) {
            registered.retain(|_, list| {
                list.retain(|(_, t)| *t >= since);
                !list.is_empty()
            });
            if registered.len() >= MAX_ENTRIES {
                // The oldest registration's address goes first.
                if let Some(oldest) = registered
                    .iter()
                    .min_by_key(|(_, list)| list.iter().map(|(_, t)| *t).max().unwrap_or(0))
                    .map(|(k, _)| *k)
                {
                    registered.remove(&oldest);
                }
            }
        }
        registered
            .entry(key)
            .or_default()
            .push((client_id.to_owned(), at));
    }

    /// Counts a request; false when the address is over its limit.
    pub(crate) fn allow(&self, ip: IpAddr, bucket: Bucket) -> bool {
        let ip = caller_key(ip);
        let Ok(mut windows) = self.windows.lock() else {
            return false;
        };
        let now = Instant::now();
        if windows.len() >= MAX_ENTRIES {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let entry = windows.entry((ip, bucket)).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= bucket.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_refuses_past_the_window_budget_per_address() {
        let limiter = RateLimiter::new();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..60 {
            assert!(limiter.allow(a, Bucket::Register));
        }
        assert!(!limiter.allow(a, Bucket::Register));
        assert!(limiter.allow(b, Bucket::Register));
        assert!(limiter.allow(a, Bucket::Token));
    }

    #[test]
    fn ipv6_callers_are_counted_by_their_64_prefix() {
        let limiter = RateLimiter::new();
        for i in 0..60u32 {
            let ip: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            assert!(limiter.allow(ip, Bucket::Register));
        }
        let same_64: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(!limiter.allow(same_64, Bucket::Register));
        assert!(limiter.allow(other_64, Bucket::Register));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(caller_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
