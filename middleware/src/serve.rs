//! Serving an MCP service behind the whole bmm stack on a real socket.
//!
//! The stack, outermost first: OpenTelemetry server spans when configured
//! ([`crate::otel`]) -> tracing (method and path only, never the query string or
//! headers) -> request timeout -> concurrency limit -> body size limit -> protected resource
//! metadata (public, CORS `*`) -> `/healthz` and path routing (404 off the MCP path) ->
//! Origin/Host validation -> bearer authentication -> per-tool scopes (which also buffers
//! the body) -> per-subject rate limits ([`crate::rate_limit`]) -> the MCP service.
//! Refusals are counted and audited between the path routing and the Origin check, MCP
//! requests by method right around the MCP service ([`crate::observe`]).
//!
//! The metadata routes sit outside the Origin check on purpose: the document is public
//! and browser clients fetch it cross-origin; DNS-rebinding protection matters for the
//! MCP endpoint, which stays behind the check.
//!
//! Public routes ([`ServeConfig::public_routes`]): pages a browser opens without an MCP
//! token (bmm-runtime's per-user connection pages under `/connections/`). The rule:
//! 1. They are routed with `/healthz` and `/readyz`, after the MCP path, the metadata and
//!    the health checks (which always win, whatever the prefix) and before the 404; a
//!    path is theirs when it starts with the prefix (a prefix always ends with `/`).
//! 2. They are outside the Origin/Host check, authentication, per-tool scopes, rate
//!    limits and the refusal audit: the handler itself must authenticate whatever it
//!    does (a sealed, expiring parameter, a cookie), answer only safe pages, and set its
//!    own security headers.
//! 3. They stay inside everything before the routing: server spans and tracing (method
//!    and path, never the query string, where such pages carry their sealed
//!    parameters), the request timeout, the concurrency limit and the body size limit.
//!    Their bodies are read before the handler runs, at most 64 KiB; a longer body is
//!    answered 413 without calling it.
//!
//! (`public_routes_are_served_outside_auth_and_the_origin_check_and_never_shadow_mcp`)
//!
//! `/healthz` answers 200 while the process serves (liveness); `/readyz` answers 200 only
//! once every trusted issuer's signing keys are loaded, 503 before (readiness: a load
//! balancer sends no traffic to a server that would answer 503 to valid tokens).
//!
//! The accept loop sets `TCP_NODELAY` on every socket (SSE responses otherwise stall for
//! the delayed-ACK interval), serves HTTP/1.1 and HTTP/2 under the connection limits of
//! [`crate::conn`] (idle, header-read and HTTP/2 keep-alive timeouts, connections per
//! address), and shuts down gracefully: on the shutdown signal it stops accepting (the
//! listening socket is closed, so new connections are refused), tells every connection to
//! close once its requests are answered (HTTP/1.1 answers carry `Connection: close`,
//! HTTP/2 gets a GOAWAY), lets in-flight requests finish for the shutdown grace, then
//! drops whatever is left and returns. On each [`crate::Reload`] trigger (SIGHUP) it
//! refetches every issuer's signing keys without touching a connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;

use crate::auth::{AuthLayer, Authenticator};
use crate::body::{LocalResponse, ResponseBody, from_local, json_response};
use crate::conn::{Activity, Live, PerAddress, Tracked};
use crate::future::LocalOrInner;
use crate::limit::ConcurrencyLimitLayer;
use crate::metadata::{MetadataLayer, ProtectedResourceMetadata};
use crate::observe::{CountRequestsLayer, ObserveRefusalsLayer, Observer, WithPeer};
use crate::origin::{OriginLayer, OriginPolicy};
use crate::otel::{HttpTraceLayer, Traces};
use crate::rate_limit::{RateLimitLayer, RateLimits};
use crate::reload::Reload;
use crate::tool_scope::ToolScopeLayer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The largest request body a public route's handler is given (64 KiB, module rule 3).
const PUBLIC_MAX_BODY_BYTES: usize = 64 * 1024;

/// What a public route's handler returns.
type PublicResponse = std::pin::Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

type PublicHandler = Arc<dyn Fn(Request<Bytes>) -> PublicResponse + Send + Sync>;

/// A public route: a path prefix and the handler of every request under it (module
/// rule 1).
#[derive(Clone)]
struct PublicRoute {
    prefix: String,
    handler: PublicHandler,
}

impl std::fmt::Debug for PublicRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicRoute")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// How the server is assembled. Every value has a safe default.
#[derive(Clone, Debug)]
#[must_use]
pub struct ServeConfig {
    mcp_path: String,
    auth: Option<Authenticator>,
    metadata: Option<ProtectedResourceMetadata>,
    origin: OriginPolicy,
    max_body_bytes: usize,
    request_timeout: Duration,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    http2_keep_alive: Duration,
    max_connections_per_address: usize,
    max_connections: usize,
    max_concurrency: usize,
    shutdown_grace: Duration,
    rate_limits: RateLimits,
    reload: Reload,
    traces: Option<Traces>,
    observer: Observer,
    public: Vec<PublicRoute>,
}

impl ServeConfig {
    /// Serves the MCP service at `mcp_path` with authentication from `auth`; the protected
    /// resource metadata is built from it (call [`ServeConfig::metadata`] to add scopes or
    /// a name).
    pub fn new(mcp_path: &str, auth: Authenticator) -> Self {
        let metadata = ProtectedResourceMetadata::new(auth.resource(), auth.issuers());
        let origin = OriginPolicy::for_resource(auth.resource());
        Self {
            auth: Some(auth),
            metadata: Some(metadata),
            origin,
            ..Self::unauthenticated(mcp_path)
        }
    }

    /// Serves without authentication: local protocol tests only. The caller is responsible
    /// for refusing this on a non-loopback address (see [`is_loopback_listen`]).
    pub fn unauthenticated(mcp_path: &str) -> Self {
        Self {
            mcp_path: normalize_path(mcp_path),
            auth: None,
            metadata: None,
            origin: OriginPolicy::loopback(),
            max_body_bytes: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(120),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            http2_keep_alive: Duration::from_secs(30),
            max_connections_per_address: 256,
            max_connections: 4096,
            max_concurrency: 512,
            shutdown_grace: Duration::from_secs(30),
            rate_limits: RateLimits::new(),
            reload: Reload::new(),
            traces: None,
            observer: Observer::default(),
            public: Vec::new(),
        }
    }

    /// Serves every request whose path starts with `prefix` (a `/` is added when it does
    /// not end with one) with `handler`, outside authentication and the Origin check (the
    /// module's public-route rules say what that asks of the handler). The MCP path,
    /// `/healthz`, `/readyz` and the metadata always win over a prefix. Several prefixes
    /// may be given; the first that matches serves.
    pub fn public_routes<F, Fut>(mut self, prefix: &str, handler: F) -> Self
    where
        F: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let mut prefix = normalize_path(prefix);
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        self.public.push(PublicRoute {
            prefix,
            handler: Arc::new(move |request| Box::pin(handler(request))),
        });
        self
    }

    /// The protected resource metadata to serve.
    pub fn metadata(mut self, metadata: ProtectedResourceMetadata) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Allowed hosts and origins. Default is loopback plus the resource's own.
    pub fn origin_policy(mut self, policy: OriginPolicy) -> Self {
        self.origin = policy;
        self
    }

    /// Largest request body. Default is 4 MiB.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Time allowed to produce a response head. Default is 120 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Time a client gets to send a request's headers (HTTP/1.1). Default is 10 s.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Time a connection may stay idle (no request in flight, no response streaming,
    /// or its protocol not yet detected) before it is closed. Default is 60 s.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// HTTP/2 ping interval; a ping unanswered for as long closes the connection.
    /// Default is 30 s.
    pub fn http2_keep_alive(mut self, interval: Duration) -> Self {
        self.http2_keep_alive = interval;
        self
    }

    /// Connections one client address may hold at once; more are closed on accept.
    /// Default is 256.
    pub fn max_connections_per_address(mut self, max: usize) -> Self {
        self.max_connections_per_address = max.max(1);
        self
    }

    /// Connections open at once over all clients; more are closed on accept. Default is
    /// 4096.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Requests handled at once before new ones get 503. Default is 512.
    pub fn max_concurrency(mut self, max: usize) -> Self {
        self.max_concurrency = max;
        self
    }

    /// Time in-flight requests get to finish after the shutdown signal. Default is 30 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Per-subject and per-tool rate limits ([`crate::rate_limit`]); they apply only with
    /// authentication. Default is none.
    pub fn rate_limits(mut self, limits: RateLimits) -> Self {
        self.rate_limits = limits;
        self
    }

    /// The reload broadcast [`Server::serve`] answers (refetching signing keys); trigger
    /// it, or subscribe to it to reload something of your own. Default is a fresh one.
    pub fn reload(mut self, reload: Reload) -> Self {
        self.reload = reload;
        self
    }

    /// The reload broadcast of this configuration.
    pub fn reload_handle(&self) -> &Reload {
        &self.reload
    }

    /// The shutdown grace.
    pub fn shutdown_grace_period(&self) -> Duration {
        self.shutdown_grace
    }

    /// The MCP endpoint path.
    pub fn mcp_path(&self) -> &str {
        &self.mcp_path
    }

    /// Exports a server span per request to `traces` (crate::otel). Default is off.
    pub fn traces(mut self, traces: Traces) -> Self {
        self.traces = Some(traces);
        self
    }

    /// Request metrics and the audit log of refusals ([`crate::observe`]). Default is
    /// neither.
    pub fn observer(mut self, observer: Observer) -> Self {
        self.observer = observer;
        self
    }

    /// The allowed-hosts list, for configuring the MCP service's own Host check.
    pub fn allowed_hosts(&self) -> Vec<String> {
        self.origin.allowed_hosts()
    }
}

fn normalize_path(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

/// Whether `addr` is a loopback address (where `--no-auth` may be used).
pub fn is_loopback_listen(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// A bound listener, ready to serve.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    config: ServeConfig,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, config: ServeConfig) -> io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            config,
        })
    }

    /// Serves on a listener bound by the caller (socket activation, or a test that needs
    /// the port before it builds the configuration, without a bind-drop-rebind race).
    pub fn from_listener(listener: TcpListener, config: ServeConfig) -> Self {
        Self { listener, config }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `service` until `shutdown` completes, then drains connections.
    pub async fn serve<S, B>(self, service: S, shutdown: impl Future<Output = ()>) -> io::Result<()>
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError> + std::fmt::Display,
    {
        let Self { listener, config } = self;
        let stack = stack(&config, service);

        if let Some(auth) = &config.auth {
            let auth = auth.clone();
            tokio::spawn(async move { auth.load_keys_until_ready().await });
            let auth = config.auth.clone();
            let mut reloads = config.reload.subscribe();
            tokio::spawn(async move {
                while reloads.changed().await.is_ok() {
                    if let Some(auth) = &auth {
                        auth.reload_keys().await;
                    }
                    // A storm of SIGHUPs is one reload a second at most: triggers in
                    // between are seen as one change (a watch keeps only the latest).
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }

        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(config.http2_keep_alive)
            .keep_alive_timeout(config.http2_keep_alive)
            .max_concurrent_streams(128)
            .max_header_list_size(64 * 1024);
        let builder = Arc::new(builder);
        let per_address =
            PerAddress::new(config.max_connections_per_address, config.max_connections);
        let live = Live::default();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut shutdown = std::pin::pin!(shutdown);
        tracing::info!(addr = %listener.local_addr()?, path = %config.mcp_path, auth = config.auth.is_some(), "serving MCP");
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(conn) => conn,
                        Err(error) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Some(slot) = per_address.acquire(peer.ip()) else {
                        tracing::debug!(peer = %peer.ip(), "connection refused: too many from this address or in all");
                        continue;
                    };
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "TCP_NODELAY could not be set");
                    }
                    let connection = Connection {
                        peer: config.observer.needs_peer().then_some(peer),
                        builder: Arc::clone(&builder),
                        idle_timeout: config.idle_timeout,
                        grace: config.shutdown_grace,
                        stop: stop_rx.clone(),
                    };
                    let guard = live.enter();
                    let service = stack.clone();
                    tokio::spawn(async move {
                        connection.run(stream, service).await;
                        drop((slot, guard));
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        tracing::info!("shutting down: draining connections");
        let _ = stop_tx.send(true);
        tokio::select! {
            () = live.drained() => {}
            () = tokio::time::sleep(config.shutdown_grace) => {
                tracing::warn!("grace period over; closing remaining connections");
            }
        }
        Ok(())
    }
}

/// Drives one accepted connection under the rules of [`crate::conn`].
struct Connection {
    /// The client's address, when the observer reads it (the audit log).
    peer: Option<SocketAddr>,
    builder: Arc<Builder<TokioExecutor>>,
    idle_timeout: Duration,
    grace: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Connection {
    async fn run<S, B>(mut self, stream: tokio::net::TcpStream, service: S)
    where
        S: Service<Request<hyper::body::Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let activity = Activity::new();
        let service = TowerToHyperService::new(Tracked::new(
            WithPeer::new(service, self.peer),
            Arc::clone(&activity),
        ));
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        let mut connection = std::pin::pin!(connection);
        // Checked a few times per idle period, so a connection closes at most a quarter of
        // the timeout late.
        let tick = (self.idle_timeout / 4).max(Duration::from_millis(10));
        let mut closing: Option<tokio::time::Instant> = None;
        loop {
            let deadline = closing.unwrap_or_else(|| tokio::time::Instant::now() + tick);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(error = %error, "connection ended with an error");
                    }
                    return;
                }
                changed = self.stop.changed(), if closing.is_none() => {
                    if changed.is_err() || *self.stop.borrow() {
                        connection.as_mut().graceful_shutdown();
                        closing = Some(tokio::time::Instant::now() + self.grace);
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    if closing.is_some() {
                        tracing::debug!("connection dropped: it did not close within the grace period");
                        return;
                    }
                    if activity.idle_for().is_some_and(|idle| idle >= self.idle_timeout) {
                        tracing::debug!("closing an idle connection");
                        connection.as_mut().graceful_shutdown();
                        closing = Some(tokio::time::Instant::now() + self.grace.min(Duration::from_secs(2)));
                    }
                }
            }
        }
    }
}

/// The whole bmm stack (the module docs list it) around `service`, without a socket: what
/// [`Server::serve`] runs for every connection. Benchmarks and in-memory tests call it
/// with any request body type.
pub fn stack<S, B, ReqBody>(
    config: &ServeConfig,
    service: S,
) -> impl Service<
    Request<ReqBody>,
    Response = Response<
        impl Body<Data = Bytes, Error: Into<BoxError> + std::fmt::Display> + Send + 'static,
    >,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + std::fmt::Display,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
{
    let layers = Layers::of(config);
    ServiceBuilder::new()
        .layer(layers.http_trace)
        .layer(layers.trace)
        .layer(layers.timeout)
        .layer(layers.concurrency)
        .layer(layers.body_limit)
        .layer(layers.metadata)
        .layer(layers.routes)
        .layer(layers.refusals)
        .layer(layers.origin)
        .layer(layers.auth)
        .layer(layers.scope)
        .layer(layers.rate_limit)
        .layer(layers.count)
        .service(service)
}

/// Every layer of [`stack`], built from a config.
struct Layers {
    http_trace: HttpTraceLayer,
    trace: tower_http::trace::TraceLayer<
        tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
        SpanWithoutQuery,
    >,
    timeout: tower_http::timeout::TimeoutLayer,
    concurrency: ConcurrencyLimitLayer,
    body_limit: tower_http::limit::RequestBodyLimitLayer,
    metadata: MetadataLayer,
    routes: RoutesLayer,
    refusals: ObserveRefusalsLayer,
    origin: OriginLayer,
    auth: AuthLayer,
    scope: ToolScopeLayer,
    rate_limit: RateLimitLayer,
    count: CountRequestsLayer,
}

impl Layers {
    fn of(config: &ServeConfig) -> Self {
        let auth = config
            .auth
            .clone()
            .map_or_else(AuthLayer::disabled, AuthLayer::new);
        let scope = match &config.auth {
            Some(auth) if config.rate_limits.has_tool_limits() => {
                ToolScopeLayer::new(auth.clone(), config.max_body_bytes).reading_tools()
            }
            Some(auth) => ToolScopeLayer::new(auth.clone(), config.max_body_bytes),
            None => ToolScopeLayer::buffer_only(config.max_body_bytes),
        };
        // Without authentication there is no verified caller to count (rate_limit rule 5).
        let rate_limit = match &config.auth {
            Some(_) => RateLimitLayer::new(&config.rate_limits),
            None => RateLimitLayer::new(&RateLimits::new()),
        };
        // The DPoP fields come from the authenticator, whoever built the document.
        let metadata =
            MetadataLayer::new_optional(config.metadata.clone().map(|m| match &config.auth {
                Some(auth) => m.dpop_of(auth),
                None => m,
            }));
        Self {
            http_trace: HttpTraceLayer::new(config.traces.clone(), &config.mcp_path),
            trace: tower_http::trace::TraceLayer::new_for_http().make_span_with(SpanWithoutQuery),
            timeout: tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                config.request_timeout,
            ),
            concurrency: ConcurrencyLimitLayer::new(config.max_concurrency),
            body_limit: tower_http::limit::RequestBodyLimitLayer::new(config.max_body_bytes),
            metadata,
            routes: RoutesLayer {
                mcp_path: config.mcp_path.clone(),
                auth: config.auth.clone(),
                public: config.public.clone().into(),
            },
            refusals: ObserveRefusalsLayer::new(config.observer.clone()),
            origin: OriginLayer::new(config.origin.clone()),
            auth,
            scope,
            rate_limit,
            count: CountRequestsLayer::new(&config.observer),
        }
    }
}

/// One of [`stack_by_layer`]'s services.
#[doc(hidden)]
pub type BoxedStack = tower::util::BoxCloneSyncService<
    Request<Full<Bytes>>,
    Response<http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>>,
    Infallible,
>;

/// [`stack`] built up one layer at a time, innermost first: `service` alone, then with
/// authentication (which the layers inside it need), then with the innermost layer (and
/// authentication), and so on to the whole stack, each named after the layer it adds.
/// Each is boxed once, the same way, so the difference between neighbours is what one
/// layer costs. For the in-memory stack bench (bmm-runtime's `benches/stack.rs`).
#[doc(hidden)]
pub fn stack_by_layer<S, B>(config: &ServeConfig, service: S) -> Vec<(&'static str, BoxedStack)>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + std::fmt::Display,
{
    fn boxed<T, TB>(service: T) -> BoxedStack
    where
        T: Service<Request<Full<Bytes>>, Response = Response<TB>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        T::Future: Send + 'static,
        TB: Body<Data = Bytes> + Send + 'static,
        TB::Error: Into<BoxError>,
    {
        tower::util::BoxCloneSyncService::new(tower::ServiceExt::map_response(
            service,
            |r: Response<TB>| {
                r.map(|b| {
                    http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(
                        b,
                        Into::into,
                    ))
                })
            },
        ))
    }
    let l = Layers::of(config);
    // The layers inside authentication need its verified caller: until authentication is
    // added in its place, it wraps each of them from the outside.
    let mut out = vec![
        ("MCP service", boxed(service.clone())),
        ("+ authentication", boxed(l.auth.layer(service.clone()))),
    ];
    let s = l.count.layer(service);
    out.push(("+ request counts (observe)", boxed(l.auth.layer(s.clone()))));
    let s = l.rate_limit.layer(s);
    out.push(("+ rate limits", boxed(l.auth.layer(s.clone()))));
    let s = l.scope.layer(s);
    out.push(("+ tool scopes (body read)", boxed(l.auth.layer(s.clone()))));
    let s = l.auth.layer(s);
    let s = l.origin.layer(s);
    out.push(("+ Origin/Host check", boxed(s.clone())));
    let s = l.refusals.layer(s);
    out.push(("+ refusal counts (observe)", boxed(s.clone())));
    let s = l.routes.layer(s);
    out.push(("+ routes", boxed(s.clone())));
    let s = l.metadata.layer(s);
    out.push(("+ resource metadata", boxed(s.clone())));
    let s = l.body_limit.layer(s);
    out.push(("+ body size limit", boxed(s.clone())));
    let s = l.concurrency.layer(s);
    out.push(("+ concurrency limit", boxed(s.clone())));
    let s = l.timeout.layer(s);
    out.push(("+ request timeout", boxed(s.clone())));
    let s = l.trace.layer(s);
    out.push(("+ tracing span", boxed(s.clone())));
    let s = l.http_trace.layer(s);
    out.push(("+ OpenTelemetry HTTP span", boxed(s)));
    out
}

/// Binds `addr` and serves until SIGINT or SIGTERM.
pub async fn serve<S, B>(addr: SocketAddr, config: ServeConfig, service: S) -> io::Result<()>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + std::fmt::Display,
{
    Server::bind(addr, config)
        .await?
        .serve(service, shutdown_signal())
        .await
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Spans carry the method and path only: the query string may hold a token someone put
/// there by mistake, and it must not reach the logs. They are `debug`: at a server's
/// default `info` a span per request cost a few microseconds (formatted fields, the
/// registry) for context no info-level event inside a request uses.
#[derive(Clone, Copy, Debug)]
struct SpanWithoutQuery;

impl<B> tower_http::trace::MakeSpan<B> for SpanWithoutQuery {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
    }
}

#[derive(Clone, Debug)]
struct RoutesLayer {
    mcp_path: String,
    auth: Option<Authenticator>,
    public: Arc<[PublicRoute]>,
}

impl<S> Layer<S> for RoutesLayer {
    type Service = Routes<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Routes {
            inner,
            mcp_path: self.mcp_path.clone(),
            auth: self.auth.clone(),
            public: Arc::clone(&self.public),
        }
    }
}

/// `/healthz`, `/readyz`, the MCP path, the public routes, and 404 for everything else.
#[derive(Clone, Debug)]
struct Routes<S> {
    inner: S,
    mcp_path: String,
    auth: Option<Authenticator>,
    public: Arc<[PublicRoute]>,
}

pin_project_lite::pin_project! {
    /// A routed request's response: local, the inner service's, or a public route's.
    #[project = RoutesFutureProj]
    #[derive(Debug)]
    enum RoutesFuture<F> {
        Routed {
            #[pin]
            future: LocalOrInner<F>,
        },
        Public {
            future: PublicBox,
        },
    }
}

/// A public route's answer in the making (its body read first, module rule 3).
struct PublicBox(std::pin::Pin<Box<dyn Future<Output = LocalResponse> + Send>>);

impl std::fmt::Debug for PublicBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublicBox(..)")
    }
}

impl<F, B, E> Future for RoutesFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RoutesFutureProj::Routed { future } => future.poll(cx),
            RoutesFutureProj::Public { future } => {
                future.0.as_mut().poll(cx).map(|r| Ok(from_local(r)))
            }
        }
    }
}

/// Reads the body (at most [`PUBLIC_MAX_BODY_BYTES`]) and calls the handler.
fn public_call<B>(handler: PublicHandler, request: Request<B>) -> PublicBox
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;
    let (parts, body) = request.into_parts();
    PublicBox(Box::pin(async move {
        match http_body_util::Limited::new(body, PUBLIC_MAX_BODY_BYTES)
            .collect()
            .await
        {
            Ok(collected) => handler(Request::from_parts(parts, collected.to_bytes())).await,
            Err(_) => json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &serde_json::json!({"error": "payload_too_large"}),
            ),
        }
    }))
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Routes<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = RoutesFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        match self.route(request) {
            Ok(future) => RoutesFuture::Routed { future },
            Err(future) => RoutesFuture::Public { future },
        }
    }
}

impl<S> Routes<S> {
    /// The MCP path, health, readiness and 404 (`Ok`), or a public route (`Err`).
    fn route<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
    ) -> Result<LocalOrInner<S::Future>, PublicBox>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ReqBody: Body + Send + 'static,
        ReqBody::Data: Send,
        ReqBody::Error: Into<BoxError>,
    {
        let path = request.uri().path();
        if path == self.mcp_path || path.strip_suffix('/') == Some(self.mcp_path.as_str()) {
            return Ok(LocalOrInner::inner(self.inner.call(request)));
        }
        if path == "/healthz" && matches!(*request.method(), Method::GET | Method::HEAD) {
            return Ok(LocalOrInner::local(json_response(
                StatusCode::OK,
                &serde_json::json!({"status": "ok"}),
            )));
        }
        if path == "/readyz" && matches!(*request.method(), Method::GET | Method::HEAD) {
            let waiting: Vec<String> = self
                .auth
                .as_ref()
                .map(|auth| auth.issuers_without_keys().map(|i| i.to_string()).collect())
                .unwrap_or_default();
            return Ok(LocalOrInner::local(if waiting.is_empty() {
                json_response(StatusCode::OK, &serde_json::json!({"status": "ready"}))
            } else {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({
                        "status": "not_ready",
                        "reason": "the signing keys of these issuers are not loaded yet",
                        "issuers": waiting,
                    }),
                )
            }));
        }
        if let Some(route) = self.public.iter().find(|r| path.starts_with(&r.prefix)) {
            return Err(public_call(Arc::clone(&route.handler), request));
        }
        Ok(LocalOrInner::local(json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not_found", "error_description": format!("the MCP endpoint is {}", self.mcp_path)}),
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    /// Log output collected in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::ErrorKind::Other)?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The module rule "tracing (method and path only, never the query string or
    /// headers)", at the most verbose level.
    #[tokio::test(flavor = "current_thread")]
    async fn tracing_spans_carry_method_and_path_never_query_or_headers() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let service = tower::service_fn(|_req: Request<Full<Bytes>>| async {
            tracing::warn!("inside the request");
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        });
        let config = ServeConfig::unauthenticated("/mcp");
        let request = Request::post("/mcp?access_token=QUERYSECRET")
            .header("host", "127.0.0.1:4103")
            .header("authorization", "Bearer HEADERSECRET")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap_or_default();
        let response = stack(&config, service).oneshot(request).await;
        let Ok(response) = response;
        assert_eq!(response.status(), StatusCode::OK);
        let _ = response.into_body().collect().await;
        let logs =
            String::from_utf8_lossy(&captured.0.lock().map(|l| l.clone()).unwrap_or_default())
                .to_string();
        assert!(
            logs.contains("request{method=POST path=/mcp}") && logs.contains("inside the request"),
            "{logs}"
        );
        assert!(
            !logs.contains("QUERYSECRET") && !logs.contains("HEADERSECRET"),
            "{logs}"
        );
    }

    /// The module's public-route rules: a public route answers without a token and
    /// whatever the Origin and Host (the MCP path refuses both), gets its body, is
    /// refused a body over the bound, and never shadows the MCP path, `/healthz` or the
    /// metadata, even with a prefix that covers them.
    #[tokio::test(flavor = "current_thread")]
    async fn public_routes_are_served_outside_auth_and_the_origin_check_and_never_shadow_mcp() {
        let auth = crate::AuthConfig::new(
            crate::Resource::parse_insecure("http://127.0.0.1:4103/mcp")
                .unwrap_or_else(|_| unreachable!()),
        )
        .issuer(crate::Issuer::parse("http://127.0.0.1:9").unwrap_or_else(|_| unreachable!()))
        .build()
        .unwrap_or_else(|_| unreachable!());
        let mcp = tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"mcp"))))
        });
        let handler = |request: Request<Bytes>| async move {
            let text = format!(
                "public {} {} {}",
                request.method(),
                request.uri().path(),
                request.body().len()
            );
            Response::new(Full::new(Bytes::from(text)))
        };
        for prefix in ["/connections", "/"] {
            let config = ServeConfig::new("/mcp", auth.clone()).public_routes(prefix, handler);
            let send = |method: Method, path: &str, body: Vec<u8>| {
                let request = Request::builder()
                    .method(method)
                    .uri(path)
                    .header("host", "evil.example")
                    .header("origin", "https://evil.example")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_default();
                let service = stack(&config, mcp);
                async move {
                    let Ok(response) = service.oneshot(request).await;
                    let status = response.status();
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    (status, String::from_utf8_lossy(&body).into_owned())
                }
            };
            let (status, body) = send(
                Method::POST,
                "/connections/github/start?t=x",
                b"t=abc".to_vec(),
            )
            .await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, "public POST /connections/github/start 5")
            );
            // The MCP endpoint is still behind the Origin check and authentication.
            let (status, body) = send(Method::POST, "/mcp", b"{}".to_vec()).await;
            assert_ne!(status, StatusCode::OK, "{body}");
            assert!(!body.contains("public") && body != "mcp", "{body}");
            // Health and metadata win over any prefix.
            let (status, body) = send(Method::GET, "/healthz", Vec::new()).await;
            assert_eq!(status, StatusCode::OK);
            assert!(body.contains("ok"), "{body}");
            let (status, body) = send(
                Method::GET,
                "/.well-known/oauth-protected-resource/mcp",
                Vec::new(),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
            assert!(body.contains("authorization_servers"), "{body}");
            let (status, _) = send(
                Method::POST,
                "/connections/x",
                vec![b'a'; PUBLIC_MAX_BODY_BYTES + 1],
            )
            .await;
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        }
        // Without a public route, the same path is the 404.
        let config = ServeConfig::new("/mcp", auth);
        let request = Request::get("/connections/github/start")
            .body(Full::new(Bytes::new()))
            .unwrap_or_default();
        let Ok(response) = stack(&config, mcp).oneshot(request).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}
