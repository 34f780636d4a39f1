//! OpenTelemetry traces of the HTTP layer: one server span per request, the W3C trace
//! context read from (and written to) headers, and [`Traces`], the tracer the whole stack
//! shares.
//!
//! Rules:
//! 1. Off unless a [`Traces`] is configured ([`ServeConfig::traces`](crate::ServeConfig::traces)):
//!    a request then costs one branch, no allocation and no header read
//!    (`requests_are_untouched_when_traces_are_off`).
//! 2. One span per HTTP request, kind server, named `{method} {route}`, where the route is
//!    one of the server's own fixed routes (the MCP path, `/healthz`, `/readyz`, the two
//!    protected resource metadata paths); any other path gives a span named `{method}`
//!    without `http.route`. The path a client sent, its query string and its header values
//!    never become a span name or attribute (`http_spans_name_fixed_routes_only`).
//! 3. Attributes: `http.request.method` (a standard method, or `_OTHER`), `http.route`,
//!    `network.protocol.version`, `http.response.status_code`; on a 5xx answer also
//!    `error.type` (the status code) and span status error.
//! 4. The parent is the request's `traceparent` / `tracestate` headers (W3C Trace Context);
//!    `baggage` is ignored; an invalid `traceparent` starts a new trace, and a
//!    `tracestate` longer than [`MAX_TRACESTATE`] is dropped.
//! 5. The span's context travels inward as the [`HttpSpan`] request extension, so the MCP
//!    span (bmm-runtime) can descend from it or link to it.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use http::{HeaderMap, Method, Request, Response, Version};
use opentelemetry::global::BoxedTracer;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// The longest `tracestate` taken from a client (W3C Trace Context asks vendors to
/// propagate at least 512 characters); a longer one is dropped, the `traceparent` kept.
pub const MAX_TRACESTATE: usize = 512;

/// Where the stack's spans go: a tracer, shared. Build it from any OpenTelemetry tracer
/// (an SDK tracer provider's, for instance); bmm-runtime builds one from the `OTEL_*`
/// environment.
#[derive(Clone)]
pub struct Traces {
    tracer: Arc<BoxedTracer>,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").finish_non_exhaustive()
    }
}

impl Traces {
    /// Spans go to `tracer`.
    pub fn new<T>(tracer: T) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        Self {
            tracer: Arc::new(BoxedTracer::new(Box::new(tracer))),
        }
    }

    /// The tracer.
    pub fn tracer(&self) -> &BoxedTracer {
        &self.tracer
    }
}

/// The context of the HTTP server span of a request (a request extension, set when
/// traces are on).
#[derive(Clone, Debug)]
pub struct HttpSpan(pub Context);

/// Reads W3C trace context from a carrier: headers, or a JSON-RPC `params._meta`.
fn extract(carrier: &dyn Extractor) -> Context {
    TraceContextPropagator::new().extract_with_context(&Context::new(), carrier)
}

/// The remote parent in `traceparent` / `tracestate` headers (an empty context when there
/// is none or it is invalid).
pub fn extract_from_headers(headers: &HeaderMap) -> Context {
    extract(&Bounded(
        |key: &str| headers.get(key).and_then(|v| v.to_str().ok()),
        std::marker::PhantomData,
    ))
}

/// The remote parent in a `traceparent` / `tracestate` pair read by `get` (for instance
/// from a JSON-RPC request's `params._meta`).
pub fn extract_with<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Context {
    extract(&Bounded(get, std::marker::PhantomData))
}

/// Writes the span context of `cx` as `traceparent` (and `tracestate` when not empty)
/// into `headers`; nothing when `cx` has no valid span. Baggage is never written.
pub fn inject_into_headers(cx: &Context, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// A carrier that only answers for the trace context keys, with `tracestate` bounded.
struct Bounded<'a, F>(F, std::marker::PhantomData<&'a str>);

impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for Bounded<'a, F> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => (self.0)(key),
            "tracestate" => (self.0)(key).filter(|v| v.len() <= MAX_TRACESTATE),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// `http.request.method`: a standard method, or `_OTHER` (never a client's own word).
pub fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => "_OTHER",
    }
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

const PRM: &str = "/.well-known/oauth-protected-resource";

/// Layer of [`HttpTrace`] (rules in the module docs).
#[derive(Clone, Debug)]
pub struct HttpTraceLayer {
    traces: Option<Traces>,
    mcp_path: Arc<str>,
}

impl HttpTraceLayer {
    /// Spans to `traces` when `Some`; `mcp_path` is the MCP endpoint's route.
    pub fn new(traces: Option<Traces>, mcp_path: &str) -> Self {
        Self {
            traces,
            mcp_path: Arc::from(mcp_path),
        }
    }
}

impl<S> Layer<S> for HttpTraceLayer {
    type Service = HttpTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpTrace {
            inner,
            layer: self.clone(),
        }
    }
}

/// A server span around every request (rules in the module docs).
#[derive(Clone, Debug)]
pub struct HttpTrace<S> {
    inner: S,
    layer: HttpTraceLayer,
}

impl HttpTraceLayer {
    /// The fixed route `path` belongs to, if any.
    fn route(&self, path: &str) -> Option<Cow<'static, str>> {
        let mcp = &*self.mcp_path;
        if path == mcp || path.strip_suffix('/') == Some(mcp) {
            return Some(Cow::Owned(mcp.to_owned()));
        }
        match path {
            "/healthz" => Some(Cow::Borrowed("/healthz")),
            "/readyz" => Some(Cow::Borrowed("/readyz")),
            PRM => Some(Cow::Borrowed(PRM)),
            _ => path
                .strip_prefix(PRM)
                .filter(|rest| *rest == mcp)
                .map(|_| Cow::Owned(path.to_owned())),
        }
    }

    /// Starts the span of `request` and hands its context inward.
    fn start<B>(&self, traces: &Traces, request: &mut Request<B>) -> Context {
        let parent = extract_from_headers(request.headers());
        let method = method_name(request.method());
        let route = self.route(request.uri().path());
        let name: Cow<'static, str> = match (&route, method) {
            (_, "_OTHER") => Cow::Borrowed("HTTP"),
            (Some(route), _) => Cow::Owned(format!("{method} {route}")),
            (None, _) => Cow::Borrowed(method),
        };
        let mut attributes = Vec::with_capacity(4);
        attributes.push(KeyValue::new("http.request.method", method));
        attributes.push(KeyValue::new(
            "network.protocol.version",
            protocol_version(request.version()),
        ));
        if let Some(route) = route {
            attributes.push(KeyValue::new("http.route", route));
        }
        let span = traces
            .tracer()
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(traces.tracer(), &parent);
        let cx = parent.with_span(span);
        request.extensions_mut().insert(HttpSpan(cx.clone()));
        cx
    }
}

/// Records the answer on the span of `cx` and ends it.
fn finish(cx: &Context, status: Option<u16>) {
    let span = cx.span();
    match status {
        Some(code) => {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(code)));
            if code >= 500 {
                span.set_attribute(KeyValue::new("error.type", code.to_string()));
                span.set_status(Status::error(""));
            }
        }
        None => {
            span.set_attribute(KeyValue::new("error.type", "_OTHER"));
            span.set_status(Status::error(""));
        }
    }
    span.end();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpTrace<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let span = match &self.layer.traces {
            None => None,
            Some(traces) => Some(self.layer.start(traces, &mut request)),
        };
        ResponseFuture {
            inner: self.inner.call(request),
            span,
        }
    }
}

pin_project! {
    /// Response future of [`HttpTrace`]: ends the span when the response head is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Option<Context>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(span) = this.span.take() {
            finish(&span, result.as_ref().ok().map(|r| r.status().as_u16()));
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_spans_name_fixed_routes_only() {
        let layer = HttpTraceLayer::new(None, "/mcp");
        assert_eq!(layer.route("/mcp").as_deref(), Some("/mcp"));
        assert_eq!(layer.route("/mcp/").as_deref(), Some("/mcp"));
        assert_eq!(layer.route("/healthz").as_deref(), Some("/healthz"));
        assert_eq!(
            layer
                .route("/.well-known/oauth-protected-resource/mcp")
                .as_deref(),
            Some("/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(layer.route("/mcp/secret-token-in-path"), None);
        assert_eq!(
            layer.route("/.well-known/oauth-protected-resource/other"),
            None
        );
        assert_eq!(
            method_name(&Method::from_bytes(b"SECRET").unwrap_or_default()),
            "_OTHER"
        );
    }

    /// Rule 1 and 5: no extension (and no span) when off; the span, child of the
    /// header's trace, when on.
    #[tokio::test(flavor = "current_thread")]
    async fn requests_are_untouched_when_traces_are_off() {
        use tower::ServiceExt;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let inner = tower::service_fn(move |request: Request<()>| {
            let span = request
                .extensions()
                .get::<HttpSpan>()
                .map(|s| s.0.span().span_context().trace_id().to_string());
            if let Ok(mut seen) = record.lock() {
                seen.push(span);
            }
            async { Ok::<_, std::convert::Infallible>(Response::new(())) }
        });
        let request = || {
            Request::post("/mcp")
                .header(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )
                .body(())
                .unwrap_or_default()
        };
        let off = HttpTraceLayer::new(None, "/mcp").layer(inner.clone());
        let _ = off.oneshot(request()).await;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let traces = Traces::new(opentelemetry::trace::TracerProvider::tracer(
            &provider, "test",
        ));
        let on = HttpTraceLayer::new(Some(traces), "/mcp").layer(inner);
        let _ = on.oneshot(request()).await;
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(
            seen,
            vec![None, Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned())]
        );
    }

    #[test]
    fn trace_context_is_read_from_headers_and_bounded() {
        use opentelemetry::trace::TraceContextExt as _;
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let long = format!("a={}", "x".repeat(MAX_TRACESTATE));
        headers.insert(
            "tracestate",
            http::HeaderValue::from_str(&long).unwrap_or(http::HeaderValue::from_static("")),
        );
        let cx = extract_from_headers(&headers);
        let span = cx.span();
        let sc = span.span_context();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_remote());
        assert_eq!(
            sc.trace_state().header(),
            "",
            "an overlong tracestate is dropped"
        );
        let mut out = HeaderMap::new();
        inject_into_headers(&cx, &mut out);
        assert_eq!(
            out.get("traceparent").and_then(|v| v.to_str().ok()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert!(out.get("tracestate").is_none());
        let none = extract_from_headers(&HeaderMap::new());
        assert!(!none.span().span_context().is_valid());
    }
}
