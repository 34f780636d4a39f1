//! The caller's address behind a trusted reverse proxy.
//!
//! Rules:
//! 1. Off loopback the issuer must be https and bmm-as speaks only HTTP, so production runs
//!    behind a TLS proxy, whose address every request would share. `--trusted-proxy <CIDR>`
//!    (repeatable; env `BMM_AS_TRUSTED_PROXIES`, comma-separated; default none) names the
//!    proxies. When a connection's TCP peer is in a trusted CIDR, the caller address is the
//!    right-most address of `X-Forwarded-For` (all its header lines, in order) that is not
//!    itself trusted; without `X-Forwarded-For`, the same is read from the `for=` parameters
//!    of RFC 7239 `Forwarded`. If every listed address is trusted, the left-most one is the
//!    caller. A proxy that sets `Forwarded` must drop a client's `X-Forwarded-For`.
//! 2. An absent header, or an entry that is not an IP address (`unknown`, an obfuscated
//!    identifier, garbage) met before the caller is found, gives the TCP peer's address.
//! 3. The headers of a peer that is not trusted are never read: a client cannot choose its
//!    own address by sending them.
//! 4. The caller address is what every per-address limit counts (sign-in backoff, pending
//!    sign-ins, registrations, Client ID Metadata Document fetches, rate limits). The
//!    connection cap counts the TCP peer (see `connections`).

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

/// One trusted network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `2001:db8::/32`, or a single address (`/32` or `/128`).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
            None => (text, None),
        };
        let network = addr.parse::<IpAddr>().ok()?.to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return None;
        }
        Some(Self { network, prefix })
    }

    /// Whether `ip` (IPv4-mapped IPv6 counts as IPv4) is in this network.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

fn trusted(proxies: &[Cidr], ip: IpAddr) -> bool {
    proxies.iter().any(|c| c.contains(ip))
}

/// One `X-Forwarded-For` entry: an address, optionally `[v6]:port` or `v4:port`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim().trim_matches('"');
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    entry.parse::<SocketAddr>().ok().map(|s| s.ip())
}

/// The listed addresses, client first, or `None` when there is no such header.
fn forwarded_chain(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let xff: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        .collect();
    if !xff.is_empty() {
        return Some(
            xff.iter()
                .flat_map(|v| v.split(','))
                .map(parse_entry)
                .collect(),
        );
    }
    let fwd: Vec<&str> = headers
        .get_all(http::header::FORWARDED)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{0}"))
        .collect();
    if fwd.is_empty() {
        return None;
    }
    let mut chain = Vec::new();
    for element in fwd.iter().flat_map(|v| v.split(',')) {
        let value = element.split(';').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            k.trim().eq_ignore_ascii_case("for").then_some(v)
        });
        // An element without `for=` says nothing about the client: malformed for us.
        chain.push(value.and_then(parse_entry));
    }
    Some(chain)
}

/// The caller address of a request from TCP peer `peer` (rules 1 to 3).
pub(crate) fn caller(peer: IpAddr, headers: &HeaderMap, proxies: &[Cidr]) -> IpAddr {
    if !trusted(proxies, peer) {
        return peer;
    }
    let Some(chain) = forwarded_chain(headers) else {
        return peer;
    };
    let mut last_trusted = None;
    for entry in chain.iter().rev() {
        match entry {
            None => return peer,
            Some(ip) if trusted(proxies, *ip) => last_trusted = Some(*ip),
            Some(ip) => return *ip,
        }
    }
    last_trusted.unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0u8; 4]))
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, http::HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies_right_most_untrusted_first() {
        let proxies = [
            Cidr::parse("10.0.0.0/8").unwrap_or(Cidr {
                network: ip("0.0.0.0"),
                prefix: 32,
            }),
            Cidr::parse("2001:db8::1").unwrap_or(Cidr {
                network: ip("0.0.0.0"),
                prefix: 32,
            }),
        ];
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.2.3")]);
        assert_eq!(caller(ip("10.0.0.1"), &h, &proxies), ip("198.51.100.7"));
        assert_eq!(caller(ip("192.0.2.1"), &h, &proxies), ip("192.0.2.1"));
        assert_eq!(
            caller(ip("::ffff:10.0.0.1"), &h, &proxies),
            ip("198.51.100.7")
        );
        let garbage = headers(&[("x-forwarded-for", "1.2.3.4, nonsense")]);
        assert_eq!(caller(ip("10.0.0.1"), &garbage, &proxies), ip("10.0.0.1"));
        assert_eq!(
            caller(ip("10.0.0.1"), &headers(&[]), &proxies),
            ip("10.0.0.1")
        );
        let fwd = headers(&[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.9.9.9",
        )]);
        assert_eq!(
            caller(ip("2001:db8::1"), &fwd, &proxies),
            ip("2001:db8:cafe::17")
        );
        let unknown = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(caller(ip("10.0.0.1"), &unknown, &proxies), ip("10.0.0.1"));
        let all_trusted = headers(&[("x-forwarded-for", "10.0.0.9, 10.0.0.8")]);
        assert_eq!(
            caller(ip("10.0.0.1"), &all_trusted, &proxies),
            ip("10.0.0.9")
        );
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("bogus").is_none());
    }
}
