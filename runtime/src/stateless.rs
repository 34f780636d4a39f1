//! The stateless 2026-07-28 request path, dispatched directly to the server's handler.
//!
//! rmcp serves a 2026-07-28 request by building a whole service for it: a peer with its
//! channels, a service loop task, a handler task, a one-shot transport and an SSE stream,
//! all for one message in and one out. This layer sits in front of rmcp's Streamable HTTP
//! service and answers the common case itself, calling the same `ServerHandler`
//! ([`McpServer`] through rmcp's `Service::handle_request`, which does the protocol-version
//! and `_meta` checks and the method dispatch) with a [`RequestContext`] built as rmcp
//! builds it. Rules:
//!
//! 1. Only a request rmcp would accept unchanged is taken: `POST`, no `Mcp-Session-Id`,
//!    exactly one `MCP-Protocol-Version: 2026-07-28`, `Content-Type: application/json`,
//!    an `Accept` naming both `application/json` and `text/event-stream` without
//!    parameters, an allowed `Host`, no `Mcp-Param-*` header, a body that is one JSON-RPC
//!    request of a method [`parse`] reads (tools/call, tools/list,
//!    resources/list, resources/templates/list, resources/read, prompts/list, prompts/get,
//!    completion/complete; `initialize` and `subscriptions/listen` need rmcp's session or
//!    stream machinery) whose `_meta` has every key 2026-07-28
//!    requires with that same version, exactly one `Mcp-Method` equal to the method and,
//!    for `tools/call`, `prompts/get` and `resources/read`, exactly one plain `Mcp-Name`
//!    equal to the name or URI; a `tools/call` of a tool whose schema binds arguments to
//!    headers (`x-mcp-header`) is not taken. Everything else (errors included) goes to
//!    rmcp untouched, so every refusal keeps rmcp's status and message
//!    (`requests_rmcp_must_refuse_are_left_to_rmcp`).
//! 2. The handler sees what rmcp gives it: `meta` moved out of the params, the request's
//!    `http::request::Parts` in `extensions`, a fresh cancellation token and a fresh
//!    per-request log level (`direct_and_rmcp_answers_are_the_same`).
//! 3. The answer is what rmcp answers: a result or error with rmcp's status mapping
//!    (unsupported version, missing capability and header mismatch 400, unknown method
//!    404) is `application/json` when that status is not 200, else an SSE stream of one
//!    event (written as one body frame); when the tool first sends notifications
//!    (`ToolContext::log`, `ToolContext::progress`), an SSE stream of them as they come,
//!    then the result, with a keep-alive comment every 15 s
//!    (`direct_and_rmcp_answers_are_the_same`, `notifications_stream_before_the_result`).
//! 4. A client that goes away cancels the call: the handler's future is dropped and its
//!    cancellation token cancelled (`a_dropped_response_cancels_the_handler`).
//! 5. `RequestContext::peer` reaches no client on this path (2026-07-28 has no
//!    server-to-client requests; its notifications travel on the request's own
//!    response): sending through it fails at once instead of waiting. Tools send
//!    notifications with `ToolContext::log` and `ToolContext::progress`.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use rmcp::RoleServer;
use rmcp::model::{
    ClientRequest, ErrorCode, GetExtensions, GetMeta, Implementation, InitializeRequestParams,
    JsonRpcRequest, ProtocolVersion, RequestId, ServerJsonRpcMessage, ServerNotification,
};
use rmcp::service::{Peer, RequestContext, Service as _};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tower_service::Service;

use crate::handler::McpServer;

#[cfg(test)]
mod tests;

type BoxResponse = Response<BoxBody<Bytes, Infallible>>;
type Answer = Pin<Box<dyn Future<Output = ServerJsonRpcMessage> + Send>>;

/// Notifications a call may queue before its answer is read.
const OUTBOX: usize = 64;

/// How often an SSE answer that is still waiting sends a comment, as rmcp does.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Where a tool's notifications go on the direct path (an extension of the request
/// context): the request's own response.
#[derive(Clone, Debug)]
pub(crate) struct Outbox(mpsc::Sender<ServerJsonRpcMessage>);

impl Outbox {
    /// Queues `notification` for the response; an error when the client has gone.
    pub(crate) async fn send(&self, notification: ServerNotification) -> Result<(), String> {
        self.0
            .send(ServerJsonRpcMessage::notification(notification))
            .await
            .map_err(|_| "the response has ended".to_owned())
    }
}

/// A `Host` header's host (lower case, without brackets) and port.
#[derive(Debug, PartialEq, Eq)]
struct Authority {
    host: String,
    port: Option<u16>,
}

impl Authority {
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        Some(match http::uri::Authority::try_from(text) {
            Ok(a) => Self::of(a.host(), a.port_u16()),
            Err(_) => Self::of(text, None),
        })
    }

    fn of(host: &str, port: Option<u16>) -> Self {
        Self {
            host: host
                .trim_matches('[')
                .trim_matches(']')
                .to_ascii_lowercase(),
            port,
        }
    }

    /// rmcp's rule: same host, and the same port when the allowed entry names one.
    fn allows(&self, host: &Self) -> bool {
        self.host == host.host && self.port.is_none_or(|p| host.port == Some(p))
    }
}

#[derive(Debug)]
struct Shared {
    server: McpServer,
    /// Empty: every host (rmcp's rule for an empty list).
    allowed_hosts: Vec<Authority>,
    /// Tools whose schema binds arguments to `Mcp-Param-*` headers.
    header_bound: HashSet<&'static str>,
    peer: OnceLock<Peer<RoleServer>>,
    /// Requests answered here (tests check which path a request took).
    #[cfg(test)]
    taken: std::sync::atomic::AtomicUsize,
}

/// The direct stateless path in front of `inner` (rmcp's service); rules in the module
/// docs.
#[derive(Clone, Debug)]
pub(crate) struct Stateless<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Stateless<S> {
    pub(crate) fn new(inner: S, server: &McpServer, allowed_hosts: &[String]) -> Self {
        let header_bound = server
            .def()
            .tools
            .iter()
            .filter(|t| t.input_schema.contains("x-mcp-header"))
            .map(|t| t.name)
            .collect();
        Self {
            inner,
            shared: Arc::new(Shared {
                server: server.clone(),
                allowed_hosts: allowed_hosts
                    .iter()
                    .filter_map(|h| Authority::parse(h))
                    .collect(),
                header_bound,
                peer: OnceLock::new(),
                #[cfg(test)]
                taken: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }
}

impl<S> Service<Request<Full<Bytes>>> for Stateless<S>
where
    S: Service<Request<Full<Bytes>>, Response = BoxResponse, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = BoxResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<BoxResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        if !self.shared.headers_qualify(req.method(), req.headers()) {
            return Box::pin(self.inner.call(req));
        }
        let (parts, body) = req.into_parts();
        // A `Full` body is one frame, already in memory.
        let bytes = body
            .collect()
            .now_or_never()
            .map(|collected| match collected {
                Ok(c) => c.to_bytes(),
                Err(never) => match never {},
            });
        let taken = bytes
            .as_ref()
            .and_then(|b| self.shared.qualifying_request(&parts.headers, b));
        match taken {
            Some(request) => {
                #[cfg(test)]
                self.shared
                    .taken
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(
                    method = request.request.method(),
                    "answered on the direct stateless path"
                );
                Box::pin(answer(&self.shared, request, parts))
            }
            None => {
                let body = Full::new(bytes.unwrap_or_default());
                Box::pin(self.inner.call(Request::from_parts(parts, body)))
            }
        }
    }
}

/// `collect()` of a `Full` body completes at once; this takes it without an executor.
trait NowOrNever: Future + Sized {
    fn now_or_never(self) -> Option<Self::Output> {
        let mut fut = std::pin::pin!(self);
        match fut
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
        {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }
}

impl<F: Future> NowOrNever for F {}

/// The one value of `name`, when there is exactly one and it is visible ASCII.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()
}

/// Whether `Accept` names both types, plainly (parameters are rmcp's to weigh).
fn accepts_both(headers: &HeaderMap) -> bool {
    let (mut json, mut sse) = (false, false);
    for value in headers.get_all(ACCEPT) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        if value.contains([';', '"']) {
            return false;
        }
        for entry in value.split(',') {
            let entry = entry.trim();
            json |= entry.eq_ignore_ascii_case("application/json");
            sse |= entry.eq_ignore_ascii_case("text/event-stream");
        }
    }
    json && sse
}

impl Shared {
    /// Rule 1, the headers.
    fn headers_qualify(&self, method: &Method, headers: &HeaderMap) -> bool {
        if method != Method::POST
            || headers.contains_key("mcp-session-id")
            || single(headers, "mcp-protocol-version")
                != Some(ProtocolVersion::V_2026_07_28.as_str())
            || single(headers, "mcp-method").is_none()
        {
            return false;
        }
        let json = single(headers, CONTENT_TYPE.as_str()).is_some_and(|ct| {
            ct.split_once(';')
                .map_or(ct, |(essence, _)| essence)
                .trim()
                .eq_ignore_ascii_case("application/json")
        });
        if !json || !accepts_both(headers) {
            return false;
        }
        if headers
            .keys()
            .any(|name| name.as_str().starts_with("mcp-param-"))
        {
            return false;
        }
        let Some(host) = single(headers, HOST.as_str()).and_then(|h| {
            http::uri::Authority::try_from(h)
                .ok()
                .map(|a| Authority::of(a.host(), a.port_u16()))
        }) else {
            return false;
        };
        self.allowed_hosts.is_empty() || self.allowed_hosts.iter().any(|a| a.allows(&host))
    }

    /// Rule 1, the body: the request when it qualifies.
    fn qualifying_request(
        &self,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Option<JsonRpcRequest<ClientRequest>> {
        let request = parse(body)?;
        let method = request.request.method();
        if single(headers, "mcp-method") != Some(method) {
            return None;
        }
        let name = match &request.request {
            ClientRequest::CallToolRequest(r) => {
                if self.header_bound.contains(r.params.name.as_ref()) {
                    return None;
                }
                Some(r.params.name.as_ref())
            }
            ClientRequest::GetPromptRequest(r) => Some(r.params.name.as_str()),
            ClientRequest::ReadResourceRequest(r) => Some(r.params.uri.as_str()),
            _ => None,
        };
        if let Some(name) = name {
            let header = single(headers, "mcp-name")?;
            // An encoded (`=?base64?…?=`) name is rmcp's to decode.
            if header != name || header.starts_with("=?") {
                return None;
            }
        }
        let meta = request.request.get_meta();
        if !meta
            .missing_required_keys(&ProtocolVersion::V_2026_07_28)
            .is_empty()
            || meta.protocol_version() != Some(ProtocolVersion::V_2026_07_28)
        {
            return None;
        }
        Some(request)
    }

    /// Rule 5: a peer whose service loop has already ended, introduced as a 2026-07-28
    /// client so that rmcp refuses server-to-client requests through it at once.
    fn peer(&self) -> Peer<RoleServer> {
        self.peer
            .get_or_init(|| {
                let (ours, theirs) = tokio::io::duplex(64);
                drop(theirs);
                let info = InitializeRequestParams::new(
                    Default::default(),
                    Implementation::new("bmm-stateless", env!("CARGO_PKG_VERSION")),
                )
                .with_protocol_version(ProtocolVersion::V_2026_07_28);
                let running =
                    rmcp::service::serve_directly(self.server.session(), ours, Some(info));
                running.peer().clone()
            })
            .clone()
    }
}

/// The JSON-RPC envelope of a request, read first to know which request type to read.
#[derive(serde::Deserialize)]
struct Head<'a> {
    jsonrpc: &'a str,
    id: RequestId,
    method: &'a str,
}

/// `body` as one request of a method this path answers, read straight into its rmcp type. rmcp
/// reads a message as an untagged `JsonRpcMessage` (the body buffered, then tried as each
/// kind of message, an error built for each miss): a third of a direct call's time.
/// Anything this does not read (escaped keys, duplicate keys, another method, a batch)
/// goes to rmcp, which reads it its way.
fn parse(body: &[u8]) -> Option<JsonRpcRequest<ClientRequest>> {
    fn typed<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<T> {
        serde_json::from_slice(body).ok()
    }
    let head: Head<'_> = serde_json::from_slice(body).ok()?;
    if head.jsonrpc != "2.0" {
        return None;
    }
    let request = match head.method {
        "tools/call" => ClientRequest::CallToolRequest(typed(body)?),
        "tools/list" => ClientRequest::ListToolsRequest(typed(body)?),
        "resources/list" => ClientRequest::ListResourcesRequest(typed(body)?),
        "resources/templates/list" => ClientRequest::ListResourceTemplatesRequest(typed(body)?),
        "resources/read" => ClientRequest::ReadResourceRequest(typed(body)?),
        "prompts/list" => ClientRequest::ListPromptsRequest(typed(body)?),
        "prompts/get" => ClientRequest::GetPromptRequest(typed(body)?),
        "completion/complete" => ClientRequest::CompleteRequest(typed(body)?),
        _ => return None,
    };
    Some(JsonRpcRequest::new(head.id, request))
}

/// rmcp's HTTP status for a first message that ends the request.
fn status_of(message: &ServerJsonRpcMessage) -> StatusCode {
    let ServerJsonRpcMessage::Error(error) = message else {
        return StatusCode::OK;
    };
    match error.error.code {
        ErrorCode::UNSUPPORTED_PROTOCOL_VERSION
        | ErrorCode::MISSING_REQUIRED_CLIENT_CAPABILITY
        | ErrorCode::HEADER_MISMATCH => StatusCode::BAD_REQUEST,
        ErrorCode::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    }
}

/// Rule 3 for a call whose first message is its answer.
fn single_answer(message: &ServerJsonRpcMessage) -> BoxResponse {
    let status = status_of(message);
    if status == StatusCode::OK {
        let mut response = Response::new(Full::new(event(message)).boxed());
        sse_headers(response.headers_mut());
        return response;
    }
    let (status, body) = match serde_json::to_vec(message) {
        Ok(body) => (status, body),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize an answer");
            (StatusCode::INTERNAL_SERVER_ERROR, Vec::new())
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The headers rmcp sends with an SSE answer.
fn sse_headers(headers: &mut HeaderMap) {
    headers.insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    headers.insert("x-accel-buffering", http::HeaderValue::from_static("no"));
}

/// Rules 2–4: runs the handler and answers.
fn answer(
    shared: &Arc<Shared>,
    request: JsonRpcRequest<ClientRequest>,
    parts: http::request::Parts,
) -> impl Future<Output = Result<BoxResponse, Infallible>> + Send + 'static {
    let JsonRpcRequest {
        id, mut request, ..
    } = request;
    let (outbox, mut notes) = mpsc::channel(OUTBOX);
    let mut cx = RequestContext::new(id.clone(), shared.peer());
    let ct = CancellationToken::new();
    cx.ct = ct.clone();
    cx.meta = std::mem::take(request.get_meta_mut());
    cx.extensions = std::mem::take(request.extensions_mut());
    cx.extensions.insert(parts);
    cx.extensions.insert(Outbox(outbox));
    let server = shared.server.session();
    let mut handler: Answer = Box::pin(async move {
        match server.handle_request(request, cx).await {
            Ok(result) => ServerJsonRpcMessage::response(result, id),
            Err(error) => ServerJsonRpcMessage::error(error, Some(id)),
        }
    });
    async move {
        // Dropped with this future (the client went away): the handler's token too.
        let guard = ct.drop_guard();
        let mut open = true;
        let first = std::future::poll_fn(|cx| {
            if let Poll::Ready(message) = handler.as_mut().poll(cx) {
                return Poll::Ready(Err(message));
            }
            if open {
                match notes.poll_recv(cx) {
                    Poll::Ready(Some(note)) => return Poll::Ready(Ok(note)),
                    Poll::Ready(None) => open = false,
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await;
        let mut queue = VecDeque::new();
        let (handler, guard) = match first {
            Err(result) => {
                guard.disarm();
                while let Ok(note) = notes.try_recv() {
                    queue.push_back(note);
                }
                if queue.is_empty() {
                    return Ok(single_answer(&result));
                }
                queue.push_back(result);
                (None, None)
            }
            Ok(note) => {
                queue.push_back(note);
                (Some(handler), Some(guard))
            }
        };
        let body = SseBody {
            queue,
            notes: Some(notes),
            handler: Mutex::new(handler),
            _guard: guard,
            keep_alive: Box::pin(tokio::time::sleep(KEEP_ALIVE)),
        };
        let mut response = Response::new(BoxBody::new(body));
        sse_headers(response.headers_mut());
        Ok(response)
    }
}

/// The SSE answer of a call that sent notifications first: them, then its result.
struct SseBody {
    queue: VecDeque<ServerJsonRpcMessage>,
    notes: Option<mpsc::Receiver<ServerJsonRpcMessage>>,
    /// `Mutex` only to make the body `Sync`; `poll_frame` has it exclusively.
    handler: Mutex<Option<Answer>>,
    _guard: Option<DropGuard>,
    keep_alive: Pin<Box<tokio::time::Sleep>>,
}

fn event(message: &ServerJsonRpcMessage) -> Bytes {
    let mut text = b"data: ".to_vec();
    if let Err(e) = serde_json::to_writer(&mut text, message) {
        tracing::error!(error = %e, "cannot serialize a message");
        text.truncate(6);
        text.extend_from_slice(b"{}");
    }
    text.extend_from_slice(b"\n\n");
    Bytes::from(text)
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            if let Some(message) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(event(&message)))));
            }
            let handler = this
                .handler
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(running) = handler.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(notes) = this.notes.as_mut() {
                match notes.poll_recv(cx) {
                    Poll::Ready(Some(note)) => {
                        this.queue.push_back(note);
                        continue;
                    }
                    Poll::Ready(None) => this.notes = None,
                    Poll::Pending => {}
                }
            }
            if let Poll::Ready(result) = running.as_mut().poll(cx) {
                *handler = None;
                if let Some(guard) = this._guard.take() {
                    guard.disarm();
                }
                if let Some(mut notes) = this.notes.take() {
                    while let Ok(note) = notes.try_recv() {
                        this.queue.push_back(note);
                    }
                }
                this.queue.push_back(result);
                continue;
            }
            if this.keep_alive.as_mut().poll(cx).is_ready() {
                let next = tokio::time::Instant::now() + KEEP_ALIVE;
                this.keep_alive.as_mut().reset(next);
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b":\n\n")))));
            }
            return Poll::Pending;
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
