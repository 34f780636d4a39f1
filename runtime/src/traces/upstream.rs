//! The client span of an HTTP tool's upstream request, one per attempt.
//!
//! Rules (with those of [`crate::traces`]):
//! 1. Name `{method} {url.template}`, the template being the tool's path template from the
//!    spec (`/items/{id}`: placeholders, never their values); kind client; a child of the
//!    MCP server span.
//! 2. Attributes: `http.request.method`, `url.template`, `server.address`, `server.port`
//!    (the configured upstream), `bmm.upstream` (its id in the spec),
//!    `http.request.resend_count` on a retry, `http.response.status_code`; on a status of
//!    400 or more `error.type` is the status, on a failed request `timeout` or `_OTHER`.
//!    Never `url.full` or `url.query`: a query can carry an argument or the upstream's
//!    secret.
//! 3. The request carries this span's `traceparent` (and `tracestate`): to the upstream
//!    only, never the MCP caller's token (which the runtime never sees) nor baggage.

use bmm_middleware::Traces;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

/// Where an HTTP tool's upstream spans go: the tracer and the MCP span to descend from.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamTrace {
    pub(crate) traces: Traces,
    pub(crate) parent: Context,
}

/// One attempt's span.
#[derive(Debug)]
pub(crate) struct Attempt(Context);

impl UpstreamTrace {
    /// Starts the span of one attempt at `url` (`template` is the spec's path template).
    pub(crate) fn attempt(
        &self,
        method: &'static str,
        url: &reqwest::Url,
        template: &'static str,
        upstream: &'static str,
        resend: u32,
    ) -> Attempt {
        let mut attributes = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("url.template", template),
            KeyValue::new("bmm.upstream", upstream),
        ];
        if let Some(host) = url.host_str() {
            attributes.push(KeyValue::new("server.address", host.to_owned()));
        }
        if let Some(port) = url.port_or_known_default() {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        if resend > 0 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(resend),
            ));
        }
        let tracer = self.traces.tracer();
        let span = tracer
            .span_builder(format!("{method} {template}"))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &self.parent);
        Attempt(self.parent.with_span(span))
    }
}

impl Attempt {
    /// The headers that carry this span to the upstream.
    pub(crate) fn headers(&self) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        bmm_middleware::otel::inject_into_headers(&self.0, &mut headers);
        headers
    }

    /// Ends the span with the upstream's status.
    pub(crate) fn answered(self, status: u16) {
        let span = self.0.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 400 {
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
            span.set_status(Status::error(""));
        }
        span.end();
    }

    /// Ends the span of a request that got no answer.
    pub(crate) fn failed(self, timed_out: bool) {
        let span = self.0.span();
        span.set_attribute(KeyValue::new(
            "error.type",
            if timed_out { "timeout" } else { "_OTHER" },
        ));
        span.set_status(Status::error(""));
        span.end();
    }
}
