//! Fixed-window rate limits per client address for registration, token, sign-in and
//! consent-page requests, and per resource server for introspection.
//! IPv6 callers are counted by /64 ([`caller_key`]), since one host usually holds a whole /64.
//! An authenticated resource server's introspections count against its `client_id`
//! ([`INTROSPECTIONS_PER_RESOURCE_SERVER`] a minute), not against its address: they follow
//! its own callers' traffic, one per uncached token (rule 3 of `introspect`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which endpoint a request counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Bucket {
    Register,
    Token,
    /// Password sign-ins: the admin page's and the consent page's.
    SignIn,
    /// The consent page itself (`GET /authorize`).
    Authorize,
}

impl Bucket {
    /// Requests per address per minute; far above what a person (or several behind one
    /// address) makes, so only a flood is refused.
    fn limit(self) -> u32 {
        match self {
            Self::Register => 60,
            Self::Token => 600,
            Self::SignIn => 60,
            Self::Authorize => 300,
        }
    }
}

/// The key a caller's address is counted under: the address itself for IPv4, its /64 for
/// IPv6 (one host usually holds a whole /64, so counting single addresses would not bound
/// it). One rule for bmm-as and generated servers, in bmm-netguard.
pub(crate) use bmm_netguard::caller_key;

/// The group an address counts in when the registration quota picks the largest holder to
/// evict from: the address for IPv4, its /48 for IPv6 (a site's usual allocation, so one
/// holder of many /64s is still one holder).
pub(crate) fn holder_group(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 80) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Introspections per authenticated resource server (`client_id`) per minute: a thousand a
/// second, far above one server's distinct uncached tokens, so only a runaway or stolen
/// credential is refused.
pub(crate) const INTROSPECTIONS_PER_RESOURCE_SERVER: u32 = 60_000;

const WINDOW: Duration = Duration::from_secs(60);
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug)]
pub(crate) struct RateLimiter {
    windows: Mutex<HashMap<(IpAddr, Bucket), (Instant, u32)>>,
    /// Introspection windows by resource server `client_id`. Only authenticated (so
    /// configured) resource servers are counted, and it is bounded like `windows` anyway.
    resource_servers: Mutex<HashMap<String, (Instant, u32)>>,
    /// Clients each address registered that may still be unused (registration rule 7).
    registered: Mutex<HashMap<IpAddr, Vec<(String, u64)>>>,
}

/// Registered clients one address may have that have not completed an authorization.
pub(crate) const UNUSED_CLIENTS_PER_ADDRESS: usize = 20;

impl RateLimiter {
    pub(crate) fn new() -> Self {
        Self {
            windows: Mutex::new(HashMap::new()),
            resource_servers: Mutex::new(HashMap::new()),
            registered: Mutex::new(HashMap::new()),
        }
    }

    /// The clients registered since `since` that this limiter tracks: of `ip`'s address,
    /// or of every address (`None`). The caller looks up which are still unused (in the
    /// store, asynchronously) before [`Self::may_register`] / [`Self::evict_candidate`].
    pub(crate) fn tracked(&self, ip: Option<IpAddr>, since: u64) -> Vec<String> {
        let Ok(registered) = self.registered.lock() else {
            return Vec::new();
        };
        let fresh = |list: &Vec<(String, u64)>| {
            list.iter()
                .filter(|(_, at)| *at >= since)
                .map(|(id, _)| id.clone())
                .collect::<Vec<_>>()
        };
        match ip {
            Some(ip) => registered
                .get(&caller_key(ip))
                .map(fresh)
                .unwrap_or_default(),
            None => registered.values().flat_map(fresh).collect(),
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

    /// Takes the oldest registration since `since` that is still `unused` of the largest
    /// holder (registration rule 7): addresses are grouped as [`holder_group`] says; among
    /// equal holders, the one that registered most recently. `None` when no address holds
    /// one.
    pub(crate) fn evict_candidate(
        &self,
        since: u64,
        unused: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let mut registered = self.registered.lock().ok()?;
        registered.retain(|_, list| {
            list.retain(|(id, at)| *at >= since && unused(id));
            !list.is_empty()
        });
        let mut groups: HashMap<IpAddr, (usize, u64)> = HashMap::new();
        for (key, list) in registered.iter() {
            let g = groups.entry(holder_group(*key)).or_insert((0, 0));
            g.0 += list.len();
            g.1 = g.1.max(list.iter().map(|(_, t)| *t).max().unwrap_or(0));
        }
        let largest = groups
            .iter()
            .max_by_key(|(_, (n, newest))| (*n, *newest))
            .map(|(g, _)| *g)?;
        let (key, index) = registered
            .iter()
            .filter(|(k, _)| holder_group(**k) == largest)
            .flat_map(|(k, list)| list.iter().enumerate().map(move |(i, (_, t))| (*t, *k, i)))
            .min()
            .map(|(_, k, i)| (k, i))?;
        let list = registered.get_mut(&key)?;
        let (id, _) = list.remove(index);
        if list.is_empty() {
            registered.remove(&key);
        }
        Some(id)
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
        count(entry, now, bucket.limit())
    }

    /// Counts an introspection by the authenticated resource server `client_id`; false when
    /// it is over [`INTROSPECTIONS_PER_RESOURCE_SERVER`].
    pub(crate) fn allow_resource_server(&self, client_id: &str) -> bool {
        let Ok(mut windows) = self.resource_servers.lock() else {
            return false;
        };
        let now = Instant::now();
        if let Some(entry) = windows.get_mut(client_id) {
            return count(entry, now, INTROSPECTIONS_PER_RESOURCE_SERVER);
        }
        if windows.len() >= MAX_ENTRIES {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let entry = windows.entry(client_id.to_owned()).or_insert((now, 0));
        count(entry, now, INTROSPECTIONS_PER_RESOURCE_SERVER)
    }
}

/// Counts one request in a window (restarted once [`WINDOW`] has passed); false past `limit`.
fn count(entry: &mut (Instant, u32), now: Instant, limit: u32) -> bool {
    if now.duration_since(entry.0) >= WINDOW {
        *entry = (now, 0);
    }
    entry.1 = entry.1.saturating_add(1);
    entry.1 <= limit
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
    fn resource_servers_are_counted_by_client_id_apart_from_addresses() {
        let limiter = RateLimiter::new();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..600 {
            assert!(limiter.allow(a, Bucket::Token));
        }
        assert!(!limiter.allow(a, Bucket::Token));
        for _ in 0..INTROSPECTIONS_PER_RESOURCE_SERVER {
            assert!(limiter.allow_resource_server("rs-a"));
        }
        assert!(!limiter.allow_resource_server("rs-a"));
        assert!(limiter.allow_resource_server("rs-b"));
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

    #[test]
    fn a_full_registration_quota_evicts_the_largest_holders_oldest_unused_client() {
        let limiter = RateLimiter::new();
        // Three /64s of one /48 are one holder of 3; an IPv4 address holds 2.
        for (i, ip) in ["2001:db8:1:1::1", "2001:db8:1:2::1", "2001:db8:1:3::1"]
            .iter()
            .enumerate()
        {
            let at = 100 + u64::try_from(i).unwrap_or(0);
            limiter.registered(ip.parse().unwrap(), &format!("v6-{i}"), at, 0);
        }
        limiter.registered("192.0.2.1".parse().unwrap(), "v4-0", 50, 0);
        limiter.registered("192.0.2.1".parse().unwrap(), "v4-1", 51, 0);
        let all = |_: &str| true;
        assert_eq!(limiter.evict_candidate(0, all).as_deref(), Some("v6-0"));
        // 2 and 2: the holder that registered most recently.
        assert_eq!(limiter.evict_candidate(0, all).as_deref(), Some("v6-1"));
        // Used clients are neither candidates nor counted.
        let unused = |id: &str| id != "v6-2";
        assert_eq!(limiter.evict_candidate(0, unused).as_deref(), Some("v4-0"));
        assert_eq!(
            holder_group("2001:db8:1:ffff::1".parse().unwrap()),
            "2001:db8:1::".parse::<IpAddr>().unwrap()
        );
    }
}
