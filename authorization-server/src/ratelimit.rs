//! Fixed-window rate limits per client address for registration and token requests.

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

const WINDOW: Duration = Duration::from_secs(60);
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug)]
pub(crate) struct RateLimiter {
    windows: Mutex<HashMap<(IpAddr, Bucket), (Instant, u32)>>,
}

impl RateLimiter {
    pub(crate) fn new() -> Self {
        Self {
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a request; false when the address is over its limit.
    pub(crate) fn allow(&self, ip: IpAddr, bucket: Bucket) -> bool {
        let Ok(mut windows) = self.windows.lock() else {
            return true;
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
}
