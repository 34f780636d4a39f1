//! A bound on legacy (initialize-based) sessions. rmcp keeps every session in memory until
//! it is closed or idle for its keep-alive (5 minutes), so a flood of `initialize`
//! requests would otherwise grow memory without bound (about 34 KiB per session measured
//! with 10,000 of them). When `max` sessions are open, a request that would open another
//! is answered **503** with `Retry-After`; requests of open sessions and stateless
//! 2026-07-28 requests (which open none) pass untouched.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use tower_service::Service;

type BoxResponse = Response<BoxBody<Bytes, Infallible>>;

/// The capped service.
#[derive(Clone)]
pub(crate) struct SessionCap<S> {
    inner: S,
    manager: Arc<LocalSessionManager>,
    max: usize,
}

impl<S> SessionCap<S> {
    pub(crate) fn new(inner: S, manager: Arc<LocalSessionManager>, max: usize) -> Self {
        Self {
            inner,
            manager,
            max,
        }
    }
}

/// Whether a request may open a legacy session: a POST without a session id, from a
/// client not speaking 2026-07-28 (which always sends `MCP-Protocol-Version`).
fn may_open_session<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::POST
        && !req.headers().contains_key("mcp-session-id")
        && req
            .headers()
            .get("mcp-protocol-version")
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v < "2026-07-28")
}

fn full() -> BoxResponse {
    let body = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"too many open sessions; retry later or use stateless 2026-07-28 requests"}}"#;
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("5"),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

impl<S, B> Service<Request<B>> for SessionCap<S>
where
    S: Service<Request<B>, Response = BoxResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = BoxResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<BoxResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !may_open_session(&req) {
            return Box::pin(self.inner.call(req));
        }
        // The readied inner service answers this request; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let manager = Arc::clone(&self.manager);
        let max = self.max;
        Box::pin(async move {
            if manager.sessions.read().await.len() >= max {
                tracing::warn!(max, "legacy session limit reached; refusing a new session");
                return Ok(full());
            }
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::post("/mcp");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap_or_default()
    }

    #[test]
    fn only_requests_that_can_open_a_session_are_counted() {
        assert!(may_open_session(&req(&[])));
        assert!(may_open_session(&req(&[(
            "mcp-protocol-version",
            "2025-11-25"
        )])));
        assert!(!may_open_session(&req(&[("mcp-session-id", "abc")])));
        assert!(!may_open_session(&req(&[(
            "mcp-protocol-version",
            "2026-07-28"
        )])));
        let get = Request::get("/mcp").body(()).unwrap_or_default();
        assert!(!may_open_session(&get));
    }
}
