//! Checked URL types: the canonical [`Resource`] this server protects and a trusted
//! [`Issuer`]. Both are validated once, at configuration time, so the request path never
//! has to ask whether a URL is well formed.

use std::fmt;

use bmm_core::resource::canonical_text;
use url::Url;

use crate::config::ConfigError;

/// The canonical URL of the protected MCP endpoint (RFC 8707 resource indicator).
///
/// It is the `resource` of the protected resource metadata and the audience every access
/// token must carry. Scheme and host are lowercased; a fragment is refused; `http` is only
/// accepted for loopback hosts unless the caller opts in with [`Resource::parse_insecure`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Resource {
    url: Url,
    text: String,
}

impl Resource {
    /// Parses and checks a resource URL (`https`, or `http` on a loopback host).
    pub fn parse(input: &str) -> Result<Self, ConfigError> {
        let resource = Self::parse_insecure(input)?;
        if resource.url.scheme() == "http" && !is_loopback_url(&resource.url) {
            return Err(ConfigError::new(format!(
                "resource `{input}` uses http on a non-loopback host; use an https URL"
            )));
        }
        Ok(resource)
    }

    /// Like [`Resource::parse`] but accepts `http` on any host (behind a TLS-terminating
    /// proxy, for instance, where the public URL is `https` but tests use plain http).
    pub fn parse_insecure(input: &str) -> Result<Self, ConfigError> {
        let url = bmm_core::resource::parse_resource(input)
            .map_err(|e| ConfigError::new(format!("resource `{input}` {e}")))?;
        let text = canonical_text(&url);
        Ok(Self { url, text })
    }

    /// The canonical string form (no trailing slash after a non-root path).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The path of the resource (`/mcp`), or `/` when it has none.
    pub fn path(&self) -> &str {
        self.url.path()
    }

    /// Whether an audience value from a token names this resource.
    ///
    /// Comparison is on the canonical form ([`bmm_core::canonical_resource`], the one bmm-as
    /// writes into `aud`): scheme and host case-insensitively, default ports folded, one
    /// trailing slash ignored. Anything else, a different path, port, host or query, is a
    /// different resource.
    pub fn matches_audience(&self, audience: &str) -> bool {
        if audience == self.text {
            return true;
        }
        bmm_core::canonical_resource(audience).is_ok_and(|canonical| canonical == self.text)
    }

    /// The RFC 9728 metadata URL for this resource: the well-known suffix inserted between
    /// the host and the path.
    pub fn metadata_url(&self) -> String {
        let mut origin = self.url.origin().ascii_serialization();
        origin.push_str(crate::metadata::WELL_KNOWN_PRM);
        let path = self.url.path().trim_end_matches('/');
        origin.push_str(path);
        origin
    }
}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Resource").field(&self.text).finish()
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An authorization server this resource server trusts, identified by its exact `issuer`
/// string (RFC 8414 section 3.3: compared as strings, never normalised).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Issuer {
    text: String,
    url: Url,
}

impl Issuer {
    /// Parses and checks an issuer identifier: `https` (or `http` on loopback), no query,
    /// no fragment. The string is kept exactly as given.
    pub fn parse(input: &str) -> Result<Self, ConfigError> {
        let url = Url::parse(input)
            .map_err(|e| ConfigError::new(format!("issuer `{input}` is not a URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback_url(&url) => {}
            _ => {
                return Err(ConfigError::new(format!(
                    "issuer `{input}` must use https (http is accepted only on loopback hosts)"
                )));
            }
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ConfigError::new(format!(
                "issuer `{input}` must not contain a query or fragment (RFC 8414 section 2)"
            )));
        }
        Ok(Self {
            text: input.to_owned(),
            url,
        })
    }

    /// The issuer exactly as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed URL.
    pub fn url(&self) -> &Url {
        &self.url
    }
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Issuer").field(&self.text).finish()
    }
}

impl fmt::Display for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether a URL points at a loopback host (`localhost`, `127.0.0.0/8`, `[::1]`).
pub(crate) fn is_loopback_url(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_is_canonicalised_without_trailing_slash() {
        let r = Resource::parse("HTTPS://MCP.Example.com/mcp/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.as_str(), "https://mcp.example.com/mcp");
        let root = Resource::parse("https://mcp.example.com/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(root.as_str(), "https://mcp.example.com");
    }

    #[test]
    fn resource_refuses_fragment_credentials_and_plain_http_off_loopback() {
        assert!(Resource::parse("https://a.example/mcp#x").is_err());
        assert!(Resource::parse("https://u:p@a.example/mcp").is_err());
        assert!(Resource::parse("http://a.example/mcp").is_err());
        assert!(Resource::parse("http://127.0.0.1:4103/mcp").is_ok());
        assert!(Resource::parse("ftp://a.example/mcp").is_err());
    }

    #[test]
    fn audience_matching_folds_case_default_port_and_one_trailing_slash_only() {
        let r = Resource::parse("https://mcp.example.com/mcp").unwrap_or_else(|e| panic!("{e}"));
        assert!(r.matches_audience("https://mcp.example.com/mcp"));
        assert!(r.matches_audience("https://MCP.example.com:443/mcp/"));
        assert!(!r.matches_audience("https://mcp.example.com/mcp2"));
        assert!(!r.matches_audience("https://mcp.example.com/"));
        assert!(!r.matches_audience("https://mcp.example.com/mcp/x"));
        assert!(!r.matches_audience("http://mcp.example.com/mcp"));
        assert!(!r.matches_audience("https://mcp.example.com:8443/mcp"));
        assert!(!r.matches_audience("mcp.example.com/mcp"));
    }

    #[test]
    fn metadata_url_inserts_the_well_known_suffix_before_the_path() {
        let r = Resource::parse("https://h.example/tenant/mcp").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.metadata_url(),
            "https://h.example/.well-known/oauth-protected-resource/tenant/mcp"
        );
        let root = Resource::parse("https://h.example").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            root.metadata_url(),
            "https://h.example/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn issuer_is_kept_verbatim_and_must_be_https_or_loopback() {
        let i = Issuer::parse("https://as.example.com/realms/x").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(i.as_str(), "https://as.example.com/realms/x");
        assert!(Issuer::parse("http://as.example.com").is_err());
        assert!(Issuer::parse("http://127.0.0.1:4000").is_ok());
        assert!(Issuer::parse("https://as.example.com?x=1").is_err());
    }
}
