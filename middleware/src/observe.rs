//! Metrics and audit lines for what the stack decides: refused requests and MCP requests
//! by method and outcome.
//!
//! Rules:
//! 1. Off by default ([`Observer::default`]): the layers then pass requests straight on.
//! 2. A response carrying a [`Refusal`] counts in `bmm_requests_total{outcome="refused"}`,
//!    in `bmm_auth_refusals_total{reason}` unless it is a rate-limit refusal (those are
//!    counted by the rate limiter), and writes a `refusal` audit line with the reason, the
//!    HTTP status, the method and the client's IP address, never the token; when the
//!    refusing layer had already verified the token (a scope or rate-limit refusal), it
//!    puts the caller's [`AuthContext`](crate::AuthContext) on the response and the line
//!    names its `iss`, `sub` and `client_id` too.
//! 3. Every other POST to the MCP endpoint counts in `bmm_requests_total{method, outcome}`,
//!    the method read from the `Mcp-Method` header (which rmcp checks against the body),
//!    else from the JSON-RPC body (a known MCP method, else `other`); the outcome is `ok`
//!    for a 2xx answer, else `error`. A JSON-RPC error inside a 200 answer is `ok` here;
//!    tool outcomes are in `bmm_tool_call_duration_seconds{outcome}`.
//! 4. Labels come from fixed lists only, never from request input.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use pin_project_lite::pin_project;
use serde::Deserialize;
use tower_layer::Layer;
use tower_service::Service;

use crate::audit::{AuditEntry, AuditLog};
use crate::refusal::Refusal;

/// MCP methods that may label a metric; anything else is `other`.
pub const MCP_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "subscriptions/listen",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
    "tasks/update",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "notifications/tasks/status",
];

/// `method` if it is a known MCP method, else `other` (rule 4).
pub fn method_label(method: &str) -> &'static str {
    MCP_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// The client's address, a request extension set by [`crate::serve`] on every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// What the stack records: request metrics and an audit log. Default is neither.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct Observer {
    metrics: bool,
    audit: Option<AuditLog>,
}

impl Observer {
    /// Nothing recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts requests and refusals through the `metrics` facade (install a recorder to
    /// see them). Default is off.
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// Writes a line per refused request to `audit`. Default is none.
    pub fn audit(mut self, audit: AuditLog) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Whether anything reads the client's address ([`PeerAddr`]): the audit log only.
    pub(crate) fn needs_peer(&self) -> bool {
        self.audit.is_some()
    }

    fn is_on(&self) -> bool {
        self.metrics || self.audit.is_some()
    }
}

/// Layer of [`ObserveRefusals`]: it goes outside every layer that may refuse.
#[derive(Clone, Debug)]
pub(crate) struct ObserveRefusalsLayer {
    observer: Observer,
}

impl ObserveRefusalsLayer {
    pub(crate) fn new(observer: Observer) -> Self {
        Self { observer }
    }
}

impl<S> Layer<S> for ObserveRefusalsLayer {
    type Service = ObserveRefusals<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ObserveRefusals {
            inner,
            observer: self.observer.clone(),
        }
    }
}

/// Counts and audits refused requests (rules 2 and 4).
#[derive(Clone, Debug)]
pub(crate) struct ObserveRefusals<S> {
    inner: S,
    observer: Observer,
}

/// What a request's answer is recorded with.
#[derive(Debug)]
struct Pending {
    observer: Observer,
    method: &'static str,
    source: Option<SocketAddr>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ObserveRefusals<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RefusalFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let pending = self.observer.is_on().then(|| Pending {
            observer: self.observer.clone(),
            method: request
                .headers()
                .get("mcp-method")
                .and_then(|v| v.to_str().ok())
                .map_or("other", method_label),
            source: request.extensions().get::<PeerAddr>().map(|p| p.0),
        });
        RefusalFuture {
            inner: self.inner.call(request),
            pending,
        }
    }
}

pin_project! {
    /// Response future of [`ObserveRefusals`].
    pub(crate) struct RefusalFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F, B, E> Future for RefusalFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Some(pending), Ok(response)) = (this.pending.take(), &result)
            && let Some(refusal) = Refusal::from_response(response)
        {
            record_refusal(
                &pending,
                refusal,
                response.status().as_u16(),
                response.extensions().get::<crate::AuthContext>(),
            );
        }
        Poll::Ready(result)
    }
}

fn record_refusal(
    pending: &Pending,
    refusal: Refusal,
    status: u16,
    caller: Option<&crate::AuthContext>,
) {
    if pending.observer.metrics {
        metrics::counter!("bmm_requests_total", "method" => pending.method, "outcome" => "refused")
            .increment(1);
        if refusal != Refusal::RATE_LIMITED {
            metrics::counter!("bmm_auth_refusals_total", "reason" => refusal.reason).increment(1);
        }
    }
    if let Some(audit) = &pending.observer.audit {
        let mut entry = AuditEntry {
            reason: Some(refusal.reason),
            status: Some(status),
            method: Some(pending.method),
            source: pending.source.map(|s| s.ip().to_string()),
            ..AuditEntry::now("refusal")
        };
        match caller {
            Some(ctx) => {
                entry = entry.caller(ctx.issuer(), ctx.subject(), ctx.client_id());
                audit.record(&entry);
            }
            // Anyone can cause these: throttled (crate::audit rule 5).
            None => audit.record_unverified(&entry),
        }
    }
}

/// Layer of [`CountRequests`]: it goes right around the MCP service, where the body is
/// buffered.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CountRequestsLayer {
    on: bool,
}

impl CountRequestsLayer {
    pub(crate) fn new(observer: &Observer) -> Self {
        Self {
            on: observer.metrics,
        }
    }
}

impl<S> Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountRequests { inner, on: self.on }
    }
}

/// Counts MCP requests by method and outcome (rules 3 and 4).
#[derive(Clone, Debug)]
pub(crate) struct CountRequests<S> {
    inner: S,
    on: bool,
}

/// Only the `method` member is read; the rest of the body is skipped.
#[derive(Deserialize)]
struct MethodOnly<'a> {
    #[serde(borrow)]
    method: Option<std::borrow::Cow<'a, str>>,
}

fn method_of(body: &[u8]) -> &'static str {
    match serde_json::from_slice::<MethodOnly<'_>>(body) {
        Ok(MethodOnly {
            method: Some(method),
        }) => method_label(&method),
        _ => "other",
    }
}

impl<S, ResBody> Service<Request<Full<Bytes>>> for CountRequests<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = CountFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let method = (self.on && request.method() == http::Method::POST).then(|| {
            use http_body::Body;
            // 2026-07-28 clients name the method in a header that rmcp checks against the
            // body (a mismatch is answered 400): no second parse of the body for them.
            if let Some(method) = request
                .headers()
                .get("mcp-method")
                .and_then(|v| v.to_str().ok())
            {
                return method_label(method);
            }
            // The body is buffered by now (per-tool scopes read it whole).
            let body = request.body().clone();
            match body.size_hint().exact() {
                Some(_) => {
                    let mut bytes = Bytes::new();
                    let mut body = std::pin::pin!(body);
                    let waker = std::task::Waker::noop();
                    let mut cx = Context::from_waker(waker);
                    if let Poll::Ready(Some(Ok(frame))) = body.as_mut().poll_frame(&mut cx)
                        && let Ok(data) = frame.into_data()
                    {
                        bytes = data;
                    }
                    method_of(&bytes)
                }
                None => "other",
            }
        });
        CountFuture {
            inner: self.inner.call(request),
            method,
        }
    }
}

pin_project! {
    /// Response future of [`CountRequests`].
    pub(crate) struct CountFuture<F> {
        #[pin]
        inner: F,
        method: Option<&'static str>,
    }
}

impl<F, B, E> Future for CountFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Some(method), Ok(response)) = (this.method.take(), &result) {
            let outcome = if response.status().is_success() {
                "ok"
            } else {
                "error"
            };
            metrics::counter!("bmm_requests_total", "method" => method, "outcome" => outcome)
                .increment(1);
        }
        Poll::Ready(result)
    }
}

/// Puts the client's address into every request's extensions (as [`PeerAddr`]) when
/// something reads it (`None`: nothing does, and a request pays nothing).
#[derive(Clone, Debug)]
pub(crate) struct WithPeer<S> {
    inner: S,
    peer: Option<SocketAddr>,
}

impl<S> WithPeer<S> {
    pub(crate) fn new(inner: S, peer: Option<SocketAddr>) -> Self {
        Self { inner, peer }
    }
}

impl<S, B> Service<Request<B>> for WithPeer<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(PeerAddr(peer));
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_the_fixed_method_list_only() {
        assert_eq!(
            method_of(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#),
            "tools/call"
        );
        assert_eq!(method_of(br#"{"method":"evil/\u0041","id":1}"#), "other");
        assert_eq!(method_of(br#"[{"method":"tools/call"}]"#), "other");
        assert_eq!(method_of(b"not json"), "other");
        assert_eq!(method_label("tools/list"), "tools/list");
    }
}
