//! Prometheus metrics, served at `/metrics` on a listener of their own.
//!
//! Rules:
//! 1. Off unless `--metrics-listen` (`BMM_METRICS_LISTEN`) is given; the address must
//!    differ from the MCP listen address (start-up is refused otherwise), so the MCP
//!    port never serves metrics and the metrics port never serves MCP.
//! 2. The listener answers `GET /metrics` (and `HEAD`) with the Prometheus text format,
//!    404 for any other path and 405 for other methods. It has no authentication: bind
//!    it to an address only the scraper reaches.
//! 3. Bounded like the MCP listener: at most [`MAX_CONNECTIONS`] connections at once
//!    (more are closed on accept), HTTP/1.1 only, 5 s to send the request head, 10 s per
//!    connection in all, and no request body is read.
//! 4. Every metric bmm emits is described (`# HELP`), and the counters with fixed label
//!    sets (refusal reasons, rate-limit kinds, JWKS outcomes) are shown from zero, so a
//!    dashboard sees them before the first event.
//! 5. Histograms have buckets from 1 ms to 60 s.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use tokio::net::TcpListener;

/// Connections the metrics listener serves at once.
pub const MAX_CONNECTIONS: usize = 16;

/// Histogram buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Auth refusal reasons ([`bmm_middleware::Refusal`]), shown from zero.
const REFUSAL_REASONS: &[&str] = &[
    "missing",
    "malformed",
    "invalid",
    "expired",
    "audience",
    "issuer",
    "scope",
    "unavailable",
];

/// Legacy session tables whose sizes make `bmm_sessions_open` (crate::observe, rule 3).
static SESSION_TABLES: Mutex<Vec<Weak<LocalSessionManager>>> = Mutex::new(Vec::new());

/// Counts the sessions of `sessions` in `bmm_sessions_open` at each scrape.
pub(crate) fn watch_sessions(sessions: &Arc<LocalSessionManager>) {
    if let Ok(mut tables) = SESSION_TABLES.lock() {
        tables.retain(|t| t.strong_count() > 0);
        tables.push(Arc::downgrade(sessions));
    }
}

async fn count_sessions() {
    let tables: Vec<Arc<LocalSessionManager>> = match SESSION_TABLES.lock() {
        Ok(tables) => tables.iter().filter_map(Weak::upgrade).collect(),
        Err(_) => return,
    };
    let mut open = 0usize;
    for table in tables {
        open += table.sessions.read().await.len();
    }
    metrics::gauge!("bmm_sessions_open").set(open as f64);
}

/// Installs the Prometheus recorder (once per process) and describes every metric.
fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .map_err(|e| format!("metrics: {e}"))?
        .install_recorder()
        .map_err(|e| format!("metrics: {e}"))?;
    crate::observe::set_metrics_on();
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "bmm_requests_total",
        "MCP requests by JSON-RPC method and outcome (ok, error, refused)"
    );
    describe_counter!(
        "bmm_auth_refusals_total",
        "Requests refused by authentication or authorization, by reason"
    );
    describe_histogram!(
        "bmm_tool_call_duration_seconds",
        Unit::Seconds,
        "Time to answer tools/call, by declared tool and outcome"
    );
    describe_histogram!(
        "bmm_upstream_request_duration_seconds",
        Unit::Seconds,
        "Time until an HTTP tool's upstream answered (head), by upstream and status class"
    );
    describe_counter!(
        "bmm_jwks_fetches_total",
        "Fetches of the issuers' signing keys, by outcome"
    );
    describe_gauge!("bmm_sessions_open", "Legacy MCP sessions open");
    describe_counter!(
        "bmm_rate_limit_refusals_total",
        "Requests refused by a rate limit, by limit (subject, tool)"
    );
    describe_counter!(
        "bmm_audit_lines_dropped_total",
        "Audit lines lost because the writer was behind or could not write"
    );
    describe_counter!(
        "bmm_audit_lines_suppressed_total",
        "Refusal lines of requests without a verified token left out over the audit log's budget"
    );
    for reason in REFUSAL_REASONS {
        metrics::counter!("bmm_auth_refusals_total", "reason" => *reason).increment(0);
    }
    for limit in ["subject", "tool"] {
        metrics::counter!("bmm_rate_limit_refusals_total", "limit" => limit).increment(0);
    }
    for outcome in ["ok", "error"] {
        metrics::counter!("bmm_jwks_fetches_total", "outcome" => outcome).increment(0);
    }
    metrics::counter!("bmm_audit_lines_dropped_total").increment(0);
    metrics::gauge!("bmm_sessions_open").set(0.0);
}

/// Refuses a metrics address on the MCP listen port (rule 1).
pub(crate) fn check_address(addr: SocketAddr, mcp_listen: SocketAddr) -> Result<(), String> {
    if addr == mcp_listen || (addr.port() == mcp_listen.port() && addr.port() != 0) {
        return Err(format!(
            "--metrics-listen {addr} is on the MCP listen port: metrics need an address of their own"
        ));
    }
    Ok(())
}

/// Installs the recorder, binds `addr` (never the MCP listen address `mcp_listen`) and
/// serves `/metrics` there in the background. Returns the bound address.
pub async fn start(addr: SocketAddr, mcp_listen: SocketAddr) -> Result<SocketAddr, String> {
    check_address(addr, mcp_listen)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("metrics listener: {e}"))?;
    let handle = install()?;
    tokio::spawn(serve(listener, handle));
    Ok(bound)
}

/// Serves `/metrics` from `handle` on `listener` for ever (rules 2 and 3).
async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(answer(&request, &handle).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(10), connection).await;
            drop(slot);
        });
    }
}

async fn answer<B>(request: &Request<B>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n"));
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(b"GET /metrics\n"),
        );
    }
    count_sessions().await;
    let mut response = reply(StatusCode::OK, Bytes::from(handle.render()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
