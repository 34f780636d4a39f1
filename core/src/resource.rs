//! Canonical resource URLs (RFC 8707 resource indicators, RFC 9728 `resource`).
//!
//! bmm-as writes the canonical form into every access token's `aud`; the middleware
//! compares a token's `aud` with the canonical form of the URL it protects. Both call
//! [`canonical_resource`], so the two can never disagree about which URL a token is for.
//!
//! The canonical form is the WHATWG-parsed URL (scheme and host lowercased, default port
//! dropped, an empty path written `/`) without the trailing `/` when there is no query:
//! `HTTPS://MCP.Example.com:443/mcp/` and `https://mcp.example.com/mcp` are one resource.

use std::fmt;

pub use url::Url;

/// Why a URL cannot name a protected resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceUrlError {
    /// It does not parse as an absolute URL.
    NotAUrl(url::ParseError),
    /// Its scheme is not `http` or `https`.
    NotHttp,
    /// It has no host.
    NoHost,
    /// It has a fragment (RFC 8707 section 2 forbids one).
    Fragment,
    /// It carries a user name or password.
    Credentials,
    /// Its path ends in `//` without a query: dropping one `/` would give a URL whose own
    /// canonical form differs again, so the canonical form would not be stable.
    DoubleSlashAtEnd,
}

impl fmt::Display for ResourceUrlError {
    /// The reason, written to follow "resource `<url>` ".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAUrl(e) => write!(f, "is not a URL: {e}"),
            Self::NotHttp => f.write_str("must be an http(s) URL"),
            Self::NoHost => f.write_str("has no host"),
            Self::Fragment => f.write_str("must not contain a fragment (RFC 8707 section 2)"),
            Self::Credentials => f.write_str("must not contain credentials"),
            Self::DoubleSlashAtEnd => {
                f.write_str("must not end in `//` (write it without the trailing slashes)")
            }
        }
    }
}

impl std::error::Error for ResourceUrlError {}

/// Parses a resource URL and checks it can name a resource: `http` or `https`, a host, no
/// fragment, no credentials. Whether plain `http` is acceptable is the caller's policy.
pub fn parse_resource(input: &str) -> Result<Url, ResourceUrlError> {
    let url = Url::parse(input).map_err(ResourceUrlError::NotAUrl)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ResourceUrlError::NotHttp);
    }
    if url.host().is_none() {
        return Err(ResourceUrlError::NoHost);
    }
    if url.fragment().is_some() {
        return Err(ResourceUrlError::Fragment);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ResourceUrlError::Credentials);
    }
    if url.query().is_none() && url.path().ends_with("//") {
        return Err(ResourceUrlError::DoubleSlashAtEnd);
    }
    Ok(url)
}

/// The canonical text of an already parsed URL: its serialisation without the trailing
/// `/` when there is no query (the MCP specification prefers no trailing slash).
pub fn canonical_text(url: &Url) -> String {
    let mut text = url.as_str().to_owned();
    if url.query().is_none() && text.ends_with('/') {
        text.pop();
    }
    text
}

/// The canonical form of a resource URL ([`parse_resource`], then [`canonical_text`]).
pub fn canonical_resource(input: &str) -> Result<String, ResourceUrlError> {
    parse_resource(input).map(|url| canonical_text(&url))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(input: &str) -> String {
        canonical_resource(input).unwrap_or_else(|e| panic!("{input}: {e}"))
    }

    #[test]
    fn scheme_host_and_default_port_are_folded_and_one_trailing_slash_dropped() {
        // The cases the middleware relied on (resource configuration, audience matching).
        assert_eq!(
            canonical("HTTPS://MCP.Example.com/mcp/"),
            "https://mcp.example.com/mcp"
        );
        assert_eq!(
            canonical("https://mcp.example.com/"),
            "https://mcp.example.com"
        );
        assert_eq!(
            canonical("https://mcp.example.com"),
            "https://mcp.example.com"
        );
        assert_eq!(
            canonical("https://MCP.example.com:443/mcp/"),
            "https://mcp.example.com/mcp"
        );
        assert_eq!(canonical("http://127.0.0.1:80/mcp"), "http://127.0.0.1/mcp");
        // The cases bmm-as relied on (configured resources, `resource` parameters).
        assert_eq!(
            canonical("http://127.0.0.1:4103/mcp"),
            "http://127.0.0.1:4103/mcp"
        );
        assert_eq!(
            canonical("http://localhost:4103/mcp/"),
            "http://localhost:4103/mcp"
        );
    }

    /// The canonical form of a canonical form is itself: bmm-as writes `aud` canonical and
    /// the middleware canonicalises `aud` again before comparing, so a form that moved on
    /// a second pass would let a token for `/mcp//` pass as one for `/mcp`.
    #[test]
    fn the_canonical_form_is_stable() {
        for input in [
            "HTTPS://MCP.Example.com/mcp/",
            "https://h.example/",
            "https://h.example/mcp/?t=1",
            "https://h.example/mcp//?t=1",
            "https://h.example/a/b/",
        ] {
            let once = canonical(input);
            assert_eq!(canonical(&once), once, "{input}");
        }
        for input in [
            "https://h.example/mcp//",
            "https://h.example//",
            "https://h.example/mcp///",
        ] {
            assert_eq!(
                canonical_resource(input),
                Err(ResourceUrlError::DoubleSlashAtEnd),
                "{input}"
            );
        }
    }

    #[test]
    fn everything_else_stays_significant() {
        let base = canonical("https://mcp.example.com/mcp");
        for other in [
            "https://mcp.example.com/mcp2",
            "https://mcp.example.com/",
            "https://mcp.example.com/mcp/x",
            "https://mcp.example.com/MCP",
            "http://mcp.example.com/mcp",
            "https://mcp.example.com:8443/mcp",
            "https://mcp.example.com/mcp?x=1",
        ] {
            assert_ne!(canonical(other), base, "{other}");
        }
        // With a query, a trailing slash of the path is part of the resource.
        assert_eq!(
            canonical("https://h.example/mcp/?t=1"),
            "https://h.example/mcp/?t=1"
        );
    }

    #[test]
    fn urls_that_cannot_name_a_resource_are_refused_with_the_reason() {
        assert!(matches!(
            canonical_resource("mcp.example.com/mcp"),
            Err(ResourceUrlError::NotAUrl(_))
        ));
        assert_eq!(
            canonical_resource("ftp://a.example/mcp"),
            Err(ResourceUrlError::NotHttp)
        );
        assert_eq!(
            canonical_resource("https://a.example/mcp#x"),
            Err(ResourceUrlError::Fragment)
        );
        assert_eq!(
            canonical_resource("https://u:p@a.example/mcp"),
            Err(ResourceUrlError::Credentials)
        );
        assert_eq!(
            canonical_resource("https://u@a.example/mcp"),
            Err(ResourceUrlError::Credentials)
        );
        assert_eq!(
            ResourceUrlError::Fragment.to_string(),
            "must not contain a fragment (RFC 8707 section 2)"
        );
    }
}
