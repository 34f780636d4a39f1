//! Origin and Host validation (DNS-rebinding protection) and CORS for browser clients.
//!
//! Rules:
//! 1. The `Host` (or, on HTTP/2, the `:authority`) must be an allowed host; otherwise 403.
//!    A host rule without a port allows every port.
//! 2. A request with an `Origin` header must come from an allowed origin; otherwise 403,
//!    before authentication and before the MCP service sees it. `Origin: null` is refused.
//!    A request without `Origin` (not from a browser) passes this check.
//! 3. The defaults allow loopback only (`localhost`, `127.0.0.1`, `[::1]`, any port), plus
//!    the host and origin of the configured resource.
//! 4. For an allowed origin, a CORS preflight (`OPTIONS` with
//!    `Access-Control-Request-Method`) is answered here with 204, without authentication
//!    (browsers never send credentials on a preflight), and other responses get
//!    `Access-Control-Allow-Origin` with the origin, `Vary: Origin` and the MCP headers
//!    exposed (`WWW-Authenticate`, `Mcp-Session-Id`, `Mcp-Protocol-Version`, `DPoP-Nonce`).
//!
//! # Deployment caveat
//! Behind a reverse proxy the `Host` is the one the proxy forwards: allow the public host
//! name (`--allowed-host`), or the proxy's requests are refused.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, HOST, ORIGIN, VARY,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use url::Url;

use crate::body::{LocalResponse, ResponseBody, from_local, json_response};
use crate::config::ConfigError;
use crate::resource::Resource;

#[derive(Clone, Debug, PartialEq, Eq)]
struct HostRule {
    host: String,
    port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct OriginRule {
    scheme: String,
    host: String,
    port: Option<u16>,
}

/// Which hosts and origins may reach the server.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct OriginPolicy {
    hosts: Vec<HostRule>,
    origins: Vec<OriginRule>,
    any_host: bool,
}

const LOOPBACK: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

impl OriginPolicy {
    /// Loopback hosts and origins only, any port.
    pub fn loopback() -> Self {
        let mut policy = Self::default();
        for host in LOOPBACK {
            policy.hosts.push(HostRule {
                host: host.to_owned(),
                port: None,
            });
            for scheme in ["http", "https"] {
                policy.origins.push(OriginRule {
                    scheme: scheme.to_owned(),
                    host: host.to_owned(),
                    port: None,
                });
            }
        }
        policy
    }

    /// Loopback plus the host and origin of `resource`.
    pub fn for_resource(resource: &Resource) -> Self {
        let mut policy = Self::loopback();
        let url = resource.url();
        if let Some(host) = url.host_str() {
            let host = host.to_ascii_lowercase();
            let rule = HostRule {
                host: host.clone(),
                port: None,
            };
            if !policy.hosts.contains(&rule) {
                policy.hosts.push(rule);
            }
            let origin = OriginRule {
                scheme: url.scheme().to_owned(),
                host,
                port: url.port_or_known_default(),
            };
            if !policy.origins.contains(&origin) {
                policy.origins.push(origin);
            }
        }
        policy
    }

    /// Allows a host, `name` or `name:port`. `*` allows every host (only sensible behind a
    /// proxy that checks it).
    pub fn allow_host(mut self, host: &str) -> Result<Self, ConfigError> {
        if host == "*" {
            self.any_host = true;
            return Ok(self);
        }
        let rule = parse_host(host).ok_or_else(|| {
            ConfigError::new(format!(
                "allowed host `{host}` is not `name` or `name:port`"
            ))
        })?;
        if !self.hosts.contains(&rule) {
            self.hosts.push(rule);
        }
        Ok(self)
    }

    /// Allows a browser origin such as `https://app.example` (scheme, host, optional port).
    pub fn allow_origin(mut self, origin: &str) -> Result<Self, ConfigError> {
        let rule = parse_origin(origin).ok_or_else(|| {
            ConfigError::new(format!(
                "allowed origin `{origin}` is not `scheme://host[:port]` (no path, no wildcard)"
            ))
        })?;
        if !self.origins.contains(&rule) {
            self.origins.push(rule);
        }
        Ok(self)
    }

    /// The allowed hosts, as `host` or `host:port` strings (for configuring rmcp too).
    pub fn allowed_hosts(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|r| match r.port {
                Some(p) => format!("{}:{p}", r.host),
                None => r.host.clone(),
            })
            .collect()
    }

    fn host_allowed(&self, authority: &str) -> bool {
        if self.any_host {
            return true;
        }
        self.plain_host_allowed(authority) || self.parsed_host_allowed(authority)
    }

    /// The full check: the Host parsed as a URL's host (IDNA, IPv4 forms, IPv6).
    fn parsed_host_allowed(&self, authority: &str) -> bool {
        let Some(found) = parse_host(authority) else {
            return false;
        };
        self.hosts
            .iter()
            .any(|r| r.host == found.host && (r.port.is_none() || r.port == found.port))
    }

    /// The common case without a URL parse (a few microseconds per request): a Host that
    /// is already an allowed host's canonical text (ASCII letters, digits, `.` and `-`,
    /// any case, an optional trailing dot, an optional decimal port). Only ever accepts
    /// what the full parse would accept; anything else goes to it.
    fn plain_host_allowed(&self, authority: &str) -> bool {
        let authority = authority.trim();
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                match port.parse::<u16>() {
                    Ok(port) => (host, Some(port)),
                    Err(_) => return false,
                }
            }
            Some(_) => return false,
            None => (authority, None),
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return false;
        }
        self.hosts
            .iter()
            .any(|r| r.host.eq_ignore_ascii_case(host) && (r.port.is_none() || r.port == port))
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let Some(found) = parse_origin(origin) else {
            return false;
        };
        self.origins.iter().any(|r| {
            r.scheme == found.scheme
                && r.host == found.host
                && (r.port.is_none() || r.port == found.port)
        })
    }
}

fn parse_host(input: &str) -> Option<HostRule> {
    let input = input.trim();
    if input.is_empty() || input.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    let url = Url::parse(&format!("http://{input}")).ok()?;
    let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
    let port = if input.ends_with(']')
        || !input
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
    {
        None
    } else {
        url.port_or_known_default()
    };
    Some(HostRule { host, port })
}

fn parse_origin(input: &str) -> Option<OriginRule> {
    if input == "null" || input.contains('*') {
        return None;
    }
    let url = Url::parse(input).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.path() != "/" || url.query().is_some() {
        return None;
    }
    Some(OriginRule {
        scheme: url.scheme().to_owned(),
        host: url.host_str()?.trim_end_matches('.').to_ascii_lowercase(),
        port: url.port_or_known_default(),
    })
}

/// Layer that applies [`OriginCheck`].
#[derive(Clone, Debug)]
pub struct OriginLayer {
    policy: Arc<OriginPolicy>,
}

impl OriginLayer {
    /// Enforces `policy`.
    pub fn new(policy: OriginPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl<S> Layer<S> for OriginLayer {
    type Service = OriginCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OriginCheck {
            inner,
            policy: Arc::clone(&self.policy),
        }
    }
}

/// Middleware enforcing [`OriginPolicy`]. See the [module docs](crate::origin).
#[derive(Clone, Debug)]
pub struct OriginCheck<S> {
    inner: S,
    policy: Arc<OriginPolicy>,
}

impl<S> OriginCheck<S> {
    crate::macros::define_inner_service_accessors!();
}

fn forbidden(description: &str) -> LocalResponse {
    json_response(
        StatusCode::FORBIDDEN,
        &serde_json::json!({"error": "forbidden", "error_description": description}),
    )
}

const EXPOSED: &str = "WWW-Authenticate, Mcp-Session-Id, Mcp-Protocol-Version, DPoP-Nonce";
const DEFAULT_ALLOWED_HEADERS: &str = "Authorization, DPoP, Content-Type, Accept, Mcp-Session-Id, Mcp-Protocol-Version, Mcp-Method, Mcp-Name, Last-Event-ID";

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for OriginCheck<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let authority = request
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()));
        let host_ok = authority.is_some_and(|a| self.policy.host_allowed(a));
        if !host_ok {
            tracing::debug!("request refused: Host is not allowed");
            return ResponseFuture::local(forbidden("the Host header is not allowed"));
        }
        let origin = match request.headers().get(ORIGIN) {
            None => None,
            Some(value) => match value.to_str() {
                Ok(text) if self.policy.origin_allowed(text) => Some(value.clone()),
                _ => {
                    tracing::debug!("request refused: Origin is not allowed");
                    return ResponseFuture::local(forbidden("the Origin header is not allowed"));
                }
            },
        };
        if let Some(origin) = &origin
            && request.method() == Method::OPTIONS
            && request
                .headers()
                .contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        {
            let mut response = LocalResponse::default();
            *response.status_mut() = StatusCode::NO_CONTENT;
            let h = response.headers_mut();
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
            );
            let requested = request
                .headers()
                .get(ACCESS_CONTROL_REQUEST_HEADERS)
                .filter(|v| {
                    v.as_bytes().iter().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'-' | b',' | b' ' | b'_')
                    })
                })
                .cloned()
                .unwrap_or(HeaderValue::from_static(DEFAULT_ALLOWED_HEADERS));
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, requested);
            h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
            h.insert(VARY, HeaderValue::from_static("Origin"));
            return ResponseFuture::local(response);
        }
        ResponseFuture {
            state: State::Inner {
                future: self.inner.call(request),
                origin,
            },
        }
    }
}

pin_project! {
    /// Response future of [`OriginCheck`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Inner {
            #[pin]
            future: F,
            origin: Option<HeaderValue>,
        },
        Local {
            response: Option<LocalResponse>,
        },
    }
}

impl<F> ResponseFuture<F> {
    fn local(response: LocalResponse) -> Self {
        Self {
            state: State::Local {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future, origin } => {
                let mut response = ready!(future.poll(cx))?;
                if let Some(origin) = origin.take() {
                    let h = response.headers_mut();
                    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                    h.insert(
                        ACCESS_CONTROL_EXPOSE_HEADERS,
                        HeaderValue::from_static(EXPOSED),
                    );
                    h.append(VARY, HeaderValue::from_static("Origin"));
                }
                Poll::Ready(Ok(response.map(ResponseBody::inner)))
            }
            StateProj::Local { response } => {
                #[allow(clippy::expect_used)]
                let response = response.take().expect("future polled after completion");
                Poll::Ready(Ok(from_local(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_host_fast_path_never_accepts_what_the_full_parse_refuses() {
        let policies = [
            OriginPolicy::loopback(),
            OriginPolicy::for_resource(
                &crate::Resource::parse("https://mcp.example.com:8443/mcp").unwrap(),
            ),
        ];
        let hosts = [
            "127.0.0.1",
            "localhost",
            "LOCALHOST",
            "localhost.",
            "mcp.example.com",
            "MCP.Example.COM.",
            "evil.example",
            "127.0.0.1.nip.io",
            "0x7f.0.0.1",
            "127.1",
            "",
            ".",
            "-",
            "a..b",
            "mcp.example.com..",
            "[::1]",
            "mcp.example.com\t",
        ];
        let ports = [
            "", ":4103", ":8443", ":", ":+80", ":99999", ":08443", ":80", "::80",
        ];
        let mut fast = 0;
        for policy in &policies {
            for host in hosts {
                for port in ports {
                    let authority = format!("{host}{port}");
                    if policy.plain_host_allowed(&authority) {
                        fast += 1;
                        assert!(
                            policy.parsed_host_allowed(&authority),
                            "{authority:?} taken by the fast path only"
                        );
                    }
                }
            }
        }
        assert!(fast >= 10, "the fast path took only {fast} hosts");
    }

    #[test]
    fn origin_loopback_defaults_allow_any_port_and_refuse_others() {
        let p = OriginPolicy::loopback();
        assert!(p.host_allowed("127.0.0.1:4103"));
        assert!(p.host_allowed("localhost"));
        assert!(p.host_allowed("[::1]:80"));
        assert!(!p.host_allowed("evil.example"));
        assert!(!p.host_allowed("127.0.0.1.nip.io"));
        assert!(p.origin_allowed("http://localhost:6274"));
        assert!(!p.origin_allowed("https://evil.example"));
        assert!(!p.origin_allowed("null"));
    }

    #[test]
    fn origin_rules_with_a_port_match_that_port_only() {
        let p = OriginPolicy::default()
            .allow_host("mcp.example.com:8443")
            .and_then(|p| p.allow_origin("https://app.example.com"))
            .unwrap();
        assert!(p.host_allowed("MCP.example.com:8443"));
        assert!(!p.host_allowed("mcp.example.com:9000"));
        assert!(!p.host_allowed("mcp.example.com"));
        assert!(p.origin_allowed("https://app.example.com"));
        assert!(p.origin_allowed("https://app.example.com:443"));
        assert!(!p.origin_allowed("http://app.example.com"));
        assert!(!p.origin_allowed("https://app.example.com:444"));
    }

    #[test]
    fn origin_configuration_refuses_wildcards_and_paths() {
        assert!(OriginPolicy::default().allow_origin("*").is_err());
        assert!(
            OriginPolicy::default()
                .allow_origin("https://a.example/path")
                .is_err()
        );
        assert!(OriginPolicy::default().allow_host("a/b").is_err());
    }

    #[test]
    fn origin_policy_for_resource_adds_the_resource_host() {
        let r = Resource::parse("https://mcp.example.com/mcp").unwrap();
        let p = OriginPolicy::for_resource(&r);
        assert!(p.host_allowed("mcp.example.com"));
        assert!(p.origin_allowed("https://mcp.example.com"));
        assert!(!p.origin_allowed("https://other.example.com"));
    }
}
