//! The MCP server span: one per JSON-RPC request or notification POSTed to the endpoint,
//! following the OpenTelemetry MCP semantic conventions.
//!
//! Rules (with those of [`crate::traces`]):
//! 1. Name `{mcp.method.name} {target}`, the target being the tool (`tools/call`) or prompt
//!    (`prompts/get`) when the spec declares it, else `{mcp.method.name}`; kind server.
//! 2. Parent: the W3C trace context in `params._meta` (`traceparent`, `tracestate`), with a
//!    link to the HTTP server span; without one, the HTTP server span (itself a child of
//!    the `traceparent` header).
//! 3. Attributes: `mcp.method.name` (a known MCP method, else `_OTHER`), `jsonrpc.request.id`,
//!    `mcp.session.id`, `mcp.protocol.version`, `gen_ai.tool.name` and
//!    `gen_ai.operation.name = execute_tool` (tools/call), `gen_ai.prompt.name`,
//!    `mcp.resource.uri` (declared static resources only), `network.transport = tcp`,
//!    `network.protocol.name = http`, `network.protocol.version`.
//! 4. Outcome, read from the JSON-RPC answer (JSON or SSE): an error sets `error.type` and
//!    `rpc.response.status_code` to its code; a tool result with `isError` sets
//!    `error.type = tool_error`; an HTTP error status without a JSON-RPC answer sets
//!    `error.type` to the status. Each sets span status error, without a description.
//! 5. Batches, GETs (streams) and DELETEs get no MCP span (the HTTP span still covers
//!    them); nor does a body this layer cannot read.
//! 6. The span's context reaches tools as the [`McpSpan`] extension of the request's
//!    `http::request::Parts`, so HTTP tools can open client spans under it.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use bmm_middleware::{HttpSpan, Traces};
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use opentelemetry::trace::{Link, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use serde::Deserialize;
use serde::de::IgnoredAny;
use tower_service::Service;

use crate::def::ServerDef;

/// The context of the MCP server span of a request (an extension of its
/// `http::request::Parts`, set when traces are on).
#[derive(Clone, Debug)]
pub struct McpSpan(pub Context);

/// The longest JSON-RPC id or session id recorded.
const MAX_ID: usize = 128;

/// MCP methods a span may be named after ([`bmm_middleware::observe::MCP_METHODS`], the
/// list metrics use too); anything else is `_OTHER`.
const METHODS: &[&str] = bmm_middleware::observe::MCP_METHODS;

/// What the layer needs: the tracer and the names the spec declares.
#[derive(Debug)]
struct Declared {
    traces: Traces,
    tools: Vec<&'static str>,
    prompts: Vec<&'static str>,
    resources: Vec<&'static str>,
}

/// MCP server spans around the MCP service (rules in the module docs); a pass-through
/// when `traces` is `None`.
#[derive(Clone, Debug)]
pub struct McpTrace<S> {
    inner: S,
    declared: Option<Arc<Declared>>,
}

impl<S> McpTrace<S> {
    /// Wraps `inner`; spans go to `traces` when `Some`, with the names `def` declares.
    pub fn new(inner: S, def: &ServerDef, traces: Option<Traces>) -> Self {
        let declared = traces.map(|traces| {
            Arc::new(Declared {
                traces,
                tools: def.tools.iter().map(|t| t.name).collect(),
                prompts: def.prompts.iter().map(|p| p.name).collect(),
                resources: def.resources.iter().map(|r| r.uri).collect(),
            })
        });
        Self { inner, declared }
    }
}

type BoxResponse = Response<BoxBody<Bytes, Infallible>>;

impl<S> Service<Request<Full<Bytes>>> for McpTrace<S>
where
    S: Service<Request<Full<Bytes>>, Response = BoxResponse, Error = Infallible>,
{
    type Response = BoxResponse;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let (request, span) = match &self.declared {
            Some(declared) if request.method() == http::Method::POST => start(declared, request),
            _ => (request, None),
        };
        ResponseFuture {
            inner: self.inner.call(request),
            span,
        }
    }
}

/// The body of a `Full` (always ready, so polled once without a runtime).
fn full_bytes(body: Full<Bytes>) -> Bytes {
    let mut body = std::pin::pin!(body);
    let mut cx = TaskContext::from_waker(std::task::Waker::noop());
    match body.as_mut().poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// Starts the span of a POSTed message; `None` when there is none to start (rule 5).
fn start(
    declared: &Declared,
    request: Request<Full<Bytes>>,
) -> (Request<Full<Bytes>>, Option<Started>) {
    let (mut parts, body) = request.into_parts();
    let bytes = full_bytes(body);
    let span = serde_json::from_slice::<Message<'_>>(&bytes)
        .ok()
        .map(|message| open(declared, &parts, &message));
    if let Some(started) = &span {
        parts.extensions.insert(McpSpan(started.cx.clone()));
    }
    (Request::from_parts(parts, Full::new(bytes)), span)
}

fn open(declared: &Declared, parts: &http::request::Parts, message: &Message<'_>) -> Started {
    let method = message
        .method
        .0
        .as_deref()
        .and_then(|m| METHODS.iter().find(|known| **known == m))
        .copied()
        .unwrap_or("_OTHER");
    let params = message.params.as_ref();
    let named = |list: &[&'static str]| -> Option<&'static str> {
        let name = params?.name.0.as_deref()?;
        list.iter().find(|n| **n == name).copied()
    };
    let tool = (method == "tools/call")
        .then(|| named(&declared.tools))
        .flatten();
    let prompt = (method == "prompts/get")
        .then(|| named(&declared.prompts))
        .flatten();
    let resource = matches!(
        method,
        "resources/read" | "resources/subscribe" | "resources/unsubscribe"
    )
    .then(|| {
        let uri = params?.uri.0.as_deref()?;
        declared.resources.iter().find(|r| **r == uri).copied()
    })
    .flatten();
    let name: Cow<'static, str> = match tool.or(prompt) {
        Some(target) => Cow::Owned(format!("{method} {target}")),
        None => Cow::Borrowed(method),
    };
    let mut attributes = vec![
        KeyValue::new("mcp.method.name", method),
        KeyValue::new("network.transport", "tcp"),
        KeyValue::new("network.protocol.name", "http"),
        KeyValue::new(
            "network.protocol.version",
            match parts.version {
                http::Version::HTTP_2 => "2",
                http::Version::HTTP_10 => "1.0",
                _ => "1.1",
            },
        ),
    ];
    if let Some(id) = &message.id.0 {
        attributes.push(KeyValue::new("jsonrpc.request.id", id.clone()));
    }
    if let Some(tool) = tool {
        attributes.push(KeyValue::new("gen_ai.tool.name", tool));
        attributes.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
    }
    if let Some(prompt) = prompt {
        attributes.push(KeyValue::new("gen_ai.prompt.name", prompt));
    }
    if let Some(uri) = resource {
        attributes.push(KeyValue::new("mcp.resource.uri", uri));
    }
    let meta = params.and_then(|p| p.meta.as_ref());
    let version = parts
        .headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .or_else(|| meta.and_then(|m| m.protocol_version.0.as_deref()))
        .or_else(|| params.and_then(|p| p.protocol_version.0.as_deref()))
        .and_then(|v| {
            rmcp::model::ProtocolVersion::KNOWN_VERSIONS
                .iter()
                .find(|known| known.as_str() == v)
        });
    if let Some(version) = version {
        attributes.push(KeyValue::new(
            "mcp.protocol.version",
            version.as_str().to_owned(),
        ));
    }
    // 2026-07-28 has no sessions; an older era's id is only a candidate until the server
    // accepts it (rule 3 of crate::traces: never a value the client made up).
    let stateless = version.is_some_and(|v| v.as_str() >= "2026-07-28");
    let session = parts
        .headers
        .get("mcp-session-id")
        .and_then(session_id)
        .filter(|_| !stateless)
        .map(str::to_owned);
    let http = parts.extensions.get::<HttpSpan>().map(|s| s.0.clone());
    let from_meta = meta
        .and_then(|m| {
            m.traceparent
                .0
                .as_deref()
                .map(|tp| (tp, m.tracestate.0.as_deref()))
        })
        .map(|(traceparent, tracestate)| {
            bmm_middleware::otel::extract_with(|key| match key {
                "traceparent" => Some(traceparent),
                "tracestate" => tracestate,
                _ => None,
            })
        })
        .filter(|cx| cx.span().span_context().is_valid());
    let (parent, links) = match (from_meta, http) {
        (Some(meta), Some(http)) => {
            let link = Link::with_context(http.span().span_context().clone());
            (meta, vec![link])
        }
        (Some(meta), None) => (meta, Vec::new()),
        (None, Some(http)) => (http, Vec::new()),
        (None, None) => (
            bmm_middleware::otel::extract_from_headers(&parts.headers),
            Vec::new(),
        ),
    };
    let tracer = declared.traces.tracer();
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .with_links(links)
        .start_with_context(tracer, &parent);
    Started {
        cx: parent.with_span(span),
        session,
    }
}

/// A started MCP span and the session id the request named.
struct Started {
    cx: Context,
    session: Option<String>,
}

/// A session id worth recording: short, visible ASCII.
fn session_id(value: &http::HeaderValue) -> Option<&str> {
    value
        .to_str()
        .ok()
        .filter(|s| s.len() <= MAX_ID && s.bytes().all(|b| b.is_ascii_graphic()))
}

pin_project_lite::pin_project! {
    /// Response future of [`McpTrace`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Option<Started>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<BoxResponse, Infallible>>,
{
    type Output = Result<BoxResponse, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = ready!(this.inner.poll(cx));
        let Some(Started { cx: span, session }) = this.span.take() else {
            return Poll::Ready(Ok(response));
        };
        let status = response.status().as_u16();
        // `initialize` learns its session id from the answer; a later request's id counts
        // once the server accepted it (an unknown or foreign session is a 404).
        let session = match response
            .headers()
            .get("mcp-session-id")
            .and_then(session_id)
        {
            Some(issued) => Some(issued.to_owned()),
            None => session.filter(|_| (200..300).contains(&status)),
        };
        if let Some(session) = session {
            span.span()
                .set_attribute(KeyValue::new("mcp.session.id", session));
        }
        Poll::Ready(Ok(response.map(|body| {
            BoxBody::new(Outcome {
                inner: body,
                span: Some(span),
                status,
            })
        })))
    }
}

/// The response body, read on its way out for the JSON-RPC answer (rule 4); the span ends
/// with it (or when it is dropped).
struct Outcome {
    inner: BoxBody<Bytes, Infallible>,
    span: Option<Context>,
    status: u16,
}

impl Outcome {
    fn end(&mut self, answer: Option<Answer>) {
        let Some(cx) = self.span.take() else {
            return;
        };
        let span = cx.span();
        let error: Option<Cow<'static, str>> = match answer {
            Some(Answer::Error(code)) => {
                span.set_attribute(KeyValue::new("rpc.response.status_code", code.to_string()));
                Some(Cow::Owned(code.to_string()))
            }
            Some(Answer::ToolError) => Some(Cow::Borrowed("tool_error")),
            Some(Answer::Ok) => None,
            None if self.status >= 400 => Some(Cow::Owned(self.status.to_string())),
            None => None,
        };
        if let Some(error) = error {
            span.set_attribute(KeyValue::new("error.type", error));
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

impl Body for Outcome {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) if self.span.is_some() => {
                if let Some(answer) = frame.data_ref().and_then(|d| answer(d)) {
                    self.end(Some(answer));
                }
            }
            None => self.end(None),
            _ => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.end(None);
    }
}

/// How a request was answered.
#[derive(Debug, PartialEq)]
enum Answer {
    Ok,
    ToolError,
    Error(i64),
}

/// The answer in a JSON body or an SSE frame: the first message with a `result` or an
/// `error` and no `method` (a request the server sends has one).
fn answer(data: &[u8]) -> Option<Answer> {
    let read = |json: &[u8]| -> Option<Answer> {
        let message: Reply = serde_json::from_slice(json).ok()?;
        if message.method.is_some() {
            return None;
        }
        match (message.error, message.result) {
            (Some(error), _) => Some(Answer::Error(error.code)),
            (None, Some(result)) if result.is_error == Some(true) => Some(Answer::ToolError),
            (None, Some(_)) => Some(Answer::Ok),
            (None, None) => None,
        }
    };
    let trimmed = data.trim_ascii_start();
    if trimmed.first() == Some(&b'{') {
        return read(trimmed);
    }
    data.split(|b| *b == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .find_map(|json| read(json.trim_ascii()))
}

#[derive(Deserialize)]
struct Reply {
    method: Option<IgnoredAny>,
    error: Option<ReplyError>,
    result: Option<ReplyResult>,
}

#[derive(Deserialize)]
struct ReplyError {
    code: i64,
}

#[derive(Deserialize)]
struct ReplyResult {
    #[serde(rename = "isError")]
    is_error: Option<bool>,
}

/// What the span reads of a request: borrowed strings, anything else skipped. A key that
/// appears twice makes the whole message unreadable (no span), never "last one wins".
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    method: Text<'a>,
    #[serde(default)]
    id: Id,
    #[serde(borrow)]
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow, default)]
    name: Text<'a>,
    #[serde(borrow, default)]
    uri: Text<'a>,
    #[serde(borrow, default, rename = "protocolVersion")]
    protocol_version: Text<'a>,
    #[serde(borrow, rename = "_meta")]
    meta: Option<Meta<'a>>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, default)]
    traceparent: Text<'a>,
    #[serde(borrow, default)]
    tracestate: Text<'a>,
    #[serde(borrow, default, rename = "io.modelcontextprotocol/protocolVersion")]
    protocol_version: Text<'a>,
}

/// Any JSON value, kept only when it is a string.
#[derive(Default)]
struct Text<'a>(Option<Cow<'a, str>>);

/// A JSON-RPC id as text: a number, or a string of at most [`MAX_ID`] bytes.
#[derive(Default)]
struct Id(Option<String>);

struct AnyValue<T>(std::marker::PhantomData<T>);

macro_rules! skip_others {
    ($out:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($out)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($out)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok($out)
        }
    };
}

impl<'de> serde::de::Visitor<'de> for AnyValue<Text<'de>> {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Text(Some(Cow::Borrowed(v))))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Text(Some(Cow::Owned(v.to_owned()))))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Text(None))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Text(None))
    }

    skip_others!(Text(None));
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AnyValue::<Text<'de>>(std::marker::PhantomData))
    }
}

impl<'de> serde::de::Visitor<'de> for AnyValue<Id> {
    type Value = Id;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Id((v.len() <= MAX_ID).then(|| v.to_owned())))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Id(Some(v.to_string())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Id(Some(v.to_string())))
    }

    skip_others!(Id(None));
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AnyValue::<Id>(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_read_from_json_and_sse() {
        assert_eq!(
            answer(br#"{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}"#),
            Some(Answer::ToolError)
        );
        assert_eq!(
            answer(b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-32602,\"message\":\"x\"}}\n\n"),
            Some(Answer::Error(-32602))
        );
        assert_eq!(
            answer(b"data: {\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"elicitation/create\",\"params\":{}}\n\n"),
            None,
            "a request from the server is not the answer"
        );
        assert_eq!(answer(b"id: 0\ndata: \n\n"), None, "a priming event");
        assert_eq!(
            answer(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
            Some(Answer::Ok)
        );
    }

    #[test]
    fn requests_are_read_leniently_and_ids_bounded() {
        let m: Message<'_> = serde_json::from_str(
            r#"{"jsonrpc":"2.0","id":"abc","method":"tools/call","params":{"name":5,"arguments":{"x":[1,{"y":2}]},"_meta":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","progressToken":3}}}"#,
        )
        .unwrap_or(Message {
            method: Text(None),
            id: Id(None),
            params: None,
        });
        assert_eq!(m.method.0.as_deref(), Some("tools/call"));
        assert_eq!(m.id.0.as_deref(), Some("abc"));
        let params = m.params.as_ref();
        assert!(params.is_some_and(|p| p.name.0.is_none()));
        assert!(
            params
                .and_then(|p| p.meta.as_ref())
                .is_some_and(|m| m.traceparent.0.is_some())
        );
        let long = format!(r#"{{"id":"{}","method":"ping"}}"#, "x".repeat(MAX_ID + 1));
        let m: Option<Message<'_>> = serde_json::from_str(&long).ok();
        assert!(m.is_some_and(|m| m.id.0.is_none()));
        let twice: Result<Message<'_>, _> =
            serde_json::from_str(r#"{"method":"ping","method":"tools/call"}"#);
        assert!(twice.is_err());
    }
}
