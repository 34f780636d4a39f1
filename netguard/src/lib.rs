//! bmm-netguard: the guard every outbound fetch that a remote party can aim goes through
//! (bmm-as fetching a Client ID Metadata Document, the OpenAPI importer fetching a remote
//! `$ref`). It stops server-side request forgery: a URL chosen by someone else must never
//! make bmm connect to loopback, the local network or cloud metadata endpoints.
//!
//! Rules:
//! 1. Only public unicast addresses are connected to. [`refusal`] names why an address is
//!    not public: unspecified (`0.0.0.0/8`, `::`), loopback (`127.0.0.0/8`, `::1`), private
//!    (`10/8`, `172.16/12`, `192.168/16`), shared/CGNAT (`100.64/10`), link-local
//!    (`169.254/16`, `fe80::/10`), IETF protocol assignments (`192.0.0.0/24`,
//!    `2001::/23`, which holds Teredo), documentation (`192.0.2/24`, `198.51.100/24`,
//!    `203.0.113/24`, `2001:db8::/32`, `3fff::/20`), benchmarking (`198.18/15`), the 6to4
//!    relay anycast (`192.88.99/24`), multicast (`224/4`, `ff00::/8`), reserved and broadcast
//!    (`240/4`), IPv6 unique-local (`fc00::/7`), site-local (`fec0::/10`), discard
//!    (`100::/64`), SRv6 SIDs (`5f00::/16`), and every IPv6 address outside global unicast
//!    `2000::/3`.
//! 2. An IPv4 address embedded in IPv6 is judged as that IPv4 address: IPv4-mapped
//!    (`::ffff:a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002:AABB:CCDD::/48`); the
//!    deprecated IPv4-compatible (`::/96`), IPv4-translated (`::ffff:0:0:0/96`) and local-use
//!    NAT64 (`64:ff9b:1::/48`) forms are refused outright.
//! 3. A name is resolved once, by [`GuardedResolver`]: non-public addresses are dropped
//!    and reqwest receives only the checked ones, so there is no second resolution a DNS
//!    rebinding answer could slip through. A name with no public address is refused.
//! 4. An IP-literal host (`https://127.0.0.1/`, and the forms the URL parser normalises to
//!    it such as `2130706433` or `0x7f000001`) never reaches a resolver, so [`Guard::get`]
//!    checks it before any request is built. Only `http` and `https` URLs are fetched.
//! 5. The client never follows redirects and ignores proxy environment variables (a proxy
//!    would resolve the name itself).
//! 6. Loopback addresses (and nothing else non-public) are allowed only when the caller
//!    opts in with [`Policy::allow_loopback`] — an explicit development flag.
//!
//! It also holds the one rule for the other direction, shared by bmm-as and generated
//! servers: [`caller_key`], how a caller's address is counted for per-address limits.

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// The key a caller's address is counted under for per-address limits: an IPv4 address
/// as itself (also when it arrives IPv4-mapped, `::ffff:a.b.c.d`), an IPv6 address by its
/// /64 prefix, since one host commonly holds a whole /64 and could otherwise rotate
/// addresses inside it to escape any per-address limit.
pub fn caller_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}

/// Most addresses handed to reqwest for one name.
const MAX_ADDRS: usize = 16;

/// Which addresses a fetch may connect to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    allow_loopback: bool,
}

impl Policy {
    /// Public unicast addresses only (rule 1).
    pub fn public_only() -> Self {
        Self::default()
    }

    /// Also allows loopback addresses (rule 6): for local development and tests only.
    pub fn allow_loopback(mut self, allow: bool) -> Self {
        self.allow_loopback = allow;
        self
    }

    /// Whether loopback is allowed.
    pub fn allows_loopback(&self) -> bool {
        self.allow_loopback
    }

    /// `Ok` when this policy lets a fetch connect to `ip`; otherwise why not.
    pub fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        match refusal(ip) {
            None => Ok(()),
            Some(_) if self.allow_loopback && ip.to_canonical().is_loopback() => Ok(()),
            Some(reason) => Err(reason),
        }
    }
}

/// A refused fetch: the host and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    host: String,
    reason: String,
}

impl Refused {
    fn new(host: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            reason: reason.into(),
        }
    }

    /// The refused host (as written in the URL).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Why it was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refused to connect to `{}`: {}",
            clip(&self.host),
            self.reason
        )
    }
}

impl StdError for Refused {}

fn clip(text: &str) -> String {
    let clipped: String = text.chars().take(100).collect();
    clipped.escape_default().to_string()
}

/// Finds a [`Refused`] in an error's source chain (reqwest wraps the resolver's error).
pub fn refused_in<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a Refused> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r);
        }
        current = e.source();
    }
    None
}

/// Why `ip` is not a public unicast address (rules 1 and 2), or `None` when it is.
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_refusal(v4),
        IpAddr::V6(v6) => v6_refusal(v6),
    }
}

/// Whether `ip` is a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    refusal(ip).is_none()
}

const V4_RANGES: &[([u8; 4], u32, &str)] = &[
    (
        [0, 0, 0, 0],
        8,
        "unspecified / \"this network\" (0.0.0.0/8)",
    ),
    ([10, 0, 0, 0], 8, "private (10.0.0.0/8)"),
    (
        [100, 64, 0, 0],
        10,
        "shared address space / CGNAT (100.64.0.0/10)",
    ),
    ([127, 0, 0, 0], 8, "loopback (127.0.0.0/8)"),
    ([169, 254, 0, 0], 16, "link-local (169.254.0.0/16)"),
    ([172, 16, 0, 0], 12, "private (172.16.0.0/12)"),
    (
        [192, 0, 0, 0],
        24,
        "IETF protocol assignments (192.0.0.0/24)",
    ),
    ([192, 0, 2, 0], 24, "documentation (192.0.2.0/24)"),
    ([192, 88, 99, 0], 24, "6to4 relay anycast (192.88.99.0/24)"),
    ([192, 168, 0, 0], 16, "private (192.168.0.0/16)"),
    ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15)"),
    ([198, 51, 100, 0], 24, "documentation (198.51.100.0/24)"),
    ([203, 0, 113, 0], 24, "documentation (203.0.113.0/24)"),
    ([224, 0, 0, 0], 4, "multicast (224.0.0.0/4)"),
    (
        [240, 0, 0, 0],
        4,
        "reserved or broadcast (240.0.0.0/4, 255.255.255.255)",
    ),
];

fn v4_refusal(ip: Ipv4Addr) -> Option<&'static str> {
    let n = u32::from(ip);
    V4_RANGES.iter().find_map(|(base, len, reason)| {
        let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
        (n & mask == u32::from_be_bytes(*base) & mask).then_some(*reason)
    })
}

fn in_v6(n: u128, base: u128, len: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    n & mask == base & mask
}

const V6_RANGES: &[(u128, u32, &str)] = &[
    (
        0x0100_0000_0000_0000_0000_0000_0000_0000,
        64,
        "discard-only (100::/64)",
    ),
    (
        0x2001_0db8_0000_0000_0000_0000_0000_0000,
        32,
        "documentation (2001:db8::/32)",
    ),
    (
        0x2001_0000_0000_0000_0000_0000_0000_0000,
        23,
        "IETF protocol assignments, Teredo included (2001::/23)",
    ),
    (
        0x3fff_0000_0000_0000_0000_0000_0000_0000,
        20,
        "documentation (3fff::/20)",
    ),
    (
        0x5f00_0000_0000_0000_0000_0000_0000_0000,
        16,
        "SRv6 SIDs (5f00::/16)",
    ),
    (
        0xfc00_0000_0000_0000_0000_0000_0000_0000,
        7,
        "unique-local (fc00::/7)",
    ),
    (
        0xfe80_0000_0000_0000_0000_0000_0000_0000,
        10,
        "link-local (fe80::/10)",
    ),
    (
        0xfec0_0000_0000_0000_0000_0000_0000_0000,
        10,
        "site-local (fec0::/10)",
    ),
    (
        0xff00_0000_0000_0000_0000_0000_0000_0000,
        8,
        "multicast (ff00::/8)",
    ),
];

fn v6_refusal(ip: Ipv6Addr) -> Option<&'static str> {
    let n = u128::from(ip);
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    // Rule 2: IPv4 inside IPv6.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_refusal(v4).map(|_| "an IPv4-mapped (::ffff:0:0/96) non-public IPv4 address");
    }
    if in_v6(n, 0, 96) {
        return Some("IPv4-compatible (::/96, deprecated)");
    }
    if in_v6(n, 0xffff << 64, 96) {
        return Some("IPv4-translated (::ffff:0:0:0/96)");
    }
    if in_v6(n, 0x0064_ff9b_0001 << 80, 48) {
        return Some("local-use NAT64 (64:ff9b:1::/48)");
    }
    if in_v6(n, 0x0064_ff9b << 96, 96) {
        let v4 = Ipv4Addr::from((n & 0xffff_ffff) as u32);
        return v4_refusal(v4).map(|_| "a NAT64 (64:ff9b::/96) non-public IPv4 address");
    }
    if in_v6(n, 0x2002 << 112, 16) {
        let v4 = Ipv4Addr::from(((n >> 80) & 0xffff_ffff) as u32);
        return v4_refusal(v4).map(|_| "a 6to4 (2002::/16) non-public IPv4 address");
    }
    if let Some((_, _, reason)) = V6_RANGES
        .iter()
        .find(|(base, len, _)| in_v6(n, *base, *len))
    {
        return Some(reason);
    }
    if !in_v6(n, 0x2000 << 112, 3) {
        return Some("not global unicast (outside 2000::/3)");
    }
    None
}

/// Resolves names with the system resolver (tokio), keeps only the addresses `policy`
/// allows and hands reqwest those (rule 3).
#[derive(Clone, Copy, Debug, Default)]
pub struct GuardedResolver {
    policy: Policy,
}

impl GuardedResolver {
    /// A resolver for `policy`.
    pub fn new(policy: Policy) -> Self {
        Self { policy }
    }

    /// Resolves `host`, keeping only allowed addresses (port 0: reqwest sets the URL's).
    pub async fn resolve_checked(&self, host: &str) -> Result<Vec<SocketAddr>, Refused> {
        let found = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| Refused::new(host, format!("it does not resolve: {e}")))?;
        let mut allowed = Vec::new();
        let mut last_refusal = None;
        for addr in found {
            match self.policy.check(addr.ip()) {
                Ok(()) if allowed.len() < MAX_ADDRS && !allowed.contains(&addr) => {
                    allowed.push(addr);
                }
                Ok(()) => {}
                Err(reason) => last_refusal = Some((addr.ip(), reason)),
            }
        }
        if allowed.is_empty() {
            let reason = match last_refusal {
                Some((ip, reason)) => format!("it resolves to {ip}, which is {reason}"),
                None => "it resolves to no address".to_owned(),
            };
            return Err(Refused::new(host, reason));
        }
        Ok(allowed)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = *self;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = this.resolve_checked(&host).await?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Checks a URL before anything connects (rule 4): `http`/`https` only, and an IP-literal
/// host must be allowed by `policy`. Names are checked when they are resolved.
pub fn check_url(url: &Url, policy: Policy) -> Result<(), Refused> {
    let host_text = url.host_str().unwrap_or_default();
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refused::new(
            host_text,
            format!("the `{}` scheme is not fetched", url.scheme()),
        ));
    }
    let ip = match url.host() {
        None => return Err(Refused::new(host_text, "the URL has no host")),
        Some(Host::Domain(_)) => return Ok(()),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
    };
    policy
        .check(ip)
        .map_err(|reason| Refused::new(host_text, format!("{ip} is {reason}")))
}

/// A reqwest client that can only reach what its [`Policy`] allows (rules 3 to 5).
#[derive(Clone, Debug)]
pub struct Guard {
    client: reqwest::Client,
    policy: Policy,
}

impl Guard {
    /// A guarded client with an overall request `timeout`.
    pub fn new(policy: Policy, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(GuardedResolver::new(policy))
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()?;
        Ok(Self { client, policy })
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// A GET request for `url`, refused before anything connects when the URL's scheme or
    /// IP-literal host is not allowed.
    pub fn get(&self, url: Url) -> Result<reqwest::RequestBuilder, Refused> {
        check_url(&url, self.policy)?;
        Ok(self.client.get(url))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn callers_are_counted_by_ipv4_address_and_ipv6_64_prefix() {
        assert_eq!(caller_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(caller_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            caller_key(ip("2001:db8:1:2:aaaa::1")),
            caller_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            caller_key(ip("2001:db8:1:2::1")),
            caller_key(ip("2001:db8:1:3::1"))
        );
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn non_public_ipv4_ranges_are_refused() {
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(refusal(ip(bad)).is_some(), "{bad} must be refused");
        }
    }

    #[test]
    fn public_ipv4_and_ipv6_addresses_are_allowed() {
        for good in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.169.0.1",
            "198.20.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(refusal(ip(good)), None, "{good} is public");
        }
    }

    #[test]
    fn non_public_ipv6_ranges_are_refused() {
        for bad in [
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            "2001:db8::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "3fff::1",
            "5f00::1",
            "100::1",
            "4000::1",
            "1234::1",
        ] {
            assert!(refusal(ip(bad)).is_some(), "{bad} must be refused");
        }
    }

    #[test]
    fn ipv4_embedded_in_ipv6_is_judged_as_the_ipv4_address() {
        for bad in [
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::8.8.8.8",
            "::ffff:0:127.0.0.1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::8.8.8.8",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2002:c0a8:101::1",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(refusal(ip(bad)).is_some(), "{bad} must be refused");
        }
    }

    #[test]
    fn loopback_is_allowed_only_by_the_explicit_policy_and_nothing_else_is() {
        let dev = Policy::public_only().allow_loopback(true);
        assert!(dev.check(ip("127.0.0.1")).is_ok());
        assert!(dev.check(ip("::1")).is_ok());
        assert!(dev.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(dev.check(ip("10.0.0.1")).is_err());
        assert!(dev.check(ip("169.254.169.254")).is_err());
        assert!(dev.check(ip("0.0.0.0")).is_err());
        assert!(Policy::public_only().check(ip("127.0.0.1")).is_err());
    }

    #[test]
    fn url_ip_literals_in_every_normalised_form_are_refused_before_connecting() {
        for text in [
            "https://127.0.0.1/x",
            "https://2130706433/x",
            "https://0x7f000001/x",
            "https://0177.0.0.1/x",
            "https://127.1/x",
            "https://0.0.0.0/x",
            "https://0/x",
            "https://[::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://[::ffff:7f00:1]/x",
            "https://[fd00::1]/x",
            "https://[fe80::1]/x",
            "https://10.1.2.3/x",
            "https://169.254.169.254/latest/meta-data",
            "https://[64:ff9b::a9fe:a9fe]/x",
            "https://[2002:a9fe:a9fe::]/x",
        ] {
            let url = Url::parse(text).unwrap();
            assert!(
                check_url(&url, Policy::public_only()).is_err(),
                "{text} ({url}) must be refused"
            );
        }
        assert!(
            check_url(
                &Url::parse("https://8.8.8.8/x").unwrap(),
                Policy::public_only()
            )
            .is_ok()
        );
        assert!(
            check_url(
                &Url::parse("https://example.com/x").unwrap(),
                Policy::public_only()
            )
            .is_ok()
        );
    }

    #[test]
    fn only_http_and_https_urls_are_fetched() {
        for text in [
            "file:///etc/passwd",
            "ftp://example.com/x",
            "gopher://example.com/",
        ] {
            assert!(check_url(&Url::parse(text).unwrap(), Policy::public_only()).is_err());
        }
    }

    #[tokio::test]
    async fn names_resolving_only_to_loopback_are_refused() {
        let resolver = GuardedResolver::new(Policy::public_only());
        let refused = resolver.resolve_checked("localhost").await.unwrap_err();
        assert!(refused.reason().contains("loopback"), "{refused}");
        let dev = GuardedResolver::new(Policy::public_only().allow_loopback(true));
        let addrs = dev.resolve_checked("localhost").await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
