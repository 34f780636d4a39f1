//! Metrics and audit lines of tool calls and upstream requests.
//!
//! Rules:
//! 1. Every `tools/call` is timed in the handler: `bmm_tool_call_duration_seconds{tool,
//!    outcome}` (tool: a declared name, else `unknown`; outcome: `ok`, `tool_error`,
//!    `error`, `input_required`, `task`) and, with an audit log, a `tool_call` line
//!    ([`bmm_middleware::AuditEntry`]) with the caller, the outcome, the upstream's status
//!    and the arguments' salted hash, never the arguments. A call that never finishes
//!    (its connection closed at the end of the shutdown grace, the request timeout, a
//!    dropped future) is recorded as `aborted` when its record is dropped: the upstream
//!    may already have acted on it, so it must not vanish from the log.
//! 2. Every upstream attempt of an HTTP tool is timed until its answer's head:
//!    `bmm_upstream_request_duration_seconds{upstream, status}` (upstream: the declared
//!    id; status: `2xx`..`5xx`, or `error` when no answer came).
//! 3. `bmm_sessions_open` is read from the legacy session tables when `/metrics` is
//!    scraped (crate::metrics).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;

use bmm_middleware::{AuditEntry, AuditLog, AuthContext, PeerAddr};
use rmcp::model::{CallToolRequestParams, CallToolResponse};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer};

/// Whether a metrics recorder is installed (crate::metrics): without one nothing is
/// measured.
static METRICS_ON: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_metrics_on() {
    METRICS_ON.store(true, Ordering::Relaxed);
}

fn metrics_on() -> bool {
    METRICS_ON.load(Ordering::Relaxed)
}

/// Longest JSON-RPC id recorded, in characters.
const MAX_ID_CHARS: usize = 64;

tokio::task_local! {
    /// Where an HTTP tool's call notes its upstream's last status (0: none yet).
    static UPSTREAM_STATUS: Arc<AtomicU32>;
}

/// Rule 2, and the status for the audit line of the tool call it belongs to.
pub(crate) fn upstream_answered(upstream: &'static str, started: Instant, status: Option<u16>) {
    if let Some(status) = status {
        let _ = UPSTREAM_STATUS.try_with(|cell| cell.store(u32::from(status), Ordering::Relaxed));
    }
    if metrics_on() {
        let class = match status {
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            Some(_) => "other",
            None => "error",
        };
        metrics::histogram!(
            "bmm_upstream_request_duration_seconds",
            "upstream" => upstream,
            "status" => class
        )
        .record(started.elapsed().as_secs_f64());
    }
}

/// A `tools/call` being measured (rule 1).
pub(crate) struct ToolCall {
    started: Instant,
    tool: &'static str,
    audit: Option<(AuditLog, AuditEntry)>,
    /// Only for the audit line: without one, no allocation and no task-local.
    upstream: Option<Arc<AtomicU32>>,
    /// Set once the outcome is recorded; a record dropped without one is `aborted`.
    recorded: bool,
}

impl Drop for ToolCall {
    fn drop(&mut self) {
        if !self.recorded {
            self.record("aborted");
        }
    }
}

impl ToolCall {
    /// Starts measuring `request`; `declared` is its tool's declared name, if any.
    pub(crate) fn start(
        audit: Option<&AuditLog>,
        declared: Option<&'static str>,
        request: &CallToolRequestParams,
        cx: &RequestContext<RoleServer>,
    ) -> Self {
        let audit = audit.map(|log| {
            let parts = cx.extensions.get::<http::request::Parts>();
            let mut entry = AuditEntry::now("tool_call");
            if let Some(ctx) = parts.and_then(|p| AuthContext::from_parts(p).ok()) {
                entry = entry.caller(ctx.issuer(), ctx.subject(), ctx.client_id());
            }
            entry.source = parts
                .and_then(|p| p.extensions.get::<PeerAddr>())
                .map(|p| p.0.ip().to_string());
            entry.tool = Some(bmm_middleware::audit::bounded(
                &request.name,
                bmm_middleware::audit::MAX_FIELD_CHARS,
            ));
            entry.jsonrpc_id = Some(bmm_middleware::audit::bounded(
                &cx.id.to_string(),
                MAX_ID_CHARS,
            ));
            let args = serde_json::Value::Object(request.arguments.clone().unwrap_or_default());
            entry.args_sha256 = Some(log.hash_arguments(&args));
            (log.clone(), entry)
        });
        Self {
            started: Instant::now(),
            tool: declared.unwrap_or("unknown"),
            upstream: audit.as_ref().map(|_| Arc::new(AtomicU32::new(0))),
            audit,
            recorded: false,
        }
    }

    /// Runs `call` so that upstream statuses reach this record.
    pub(crate) async fn run<F: Future>(&self, call: F) -> F::Output {
        match &self.upstream {
            Some(cell) => UPSTREAM_STATUS.scope(Arc::clone(cell), call).await,
            None => call.await,
        }
    }

    /// Records the outcome.
    pub(crate) fn finish(mut self, response: &Result<CallToolResponse, ErrorData>) {
        let outcome = match response {
            Ok(CallToolResponse::Complete(result)) if result.is_error == Some(true) => "tool_error",
            Ok(CallToolResponse::Complete(_)) => "ok",
            Ok(CallToolResponse::InputRequired(_)) => "input_required",
            Ok(CallToolResponse::Task(_)) => "task",
            Ok(_) => "ok",
            Err(_) => "error",
        };
        self.record(outcome);
    }

    fn record(&mut self, outcome: &'static str) {
        self.recorded = true;
        let elapsed = self.started.elapsed();
        if metrics_on() {
            metrics::histogram!(
                "bmm_tool_call_duration_seconds",
                "tool" => self.tool,
                "outcome" => outcome
            )
            .record(elapsed.as_secs_f64());
        }
        if let Some((log, mut entry)) = self.audit.take() {
            entry.outcome = Some(outcome);
            entry.duration_ms = Some(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
            let status = self
                .upstream
                .as_ref()
                .map_or(0, |cell| cell.load(Ordering::Relaxed));
            entry.upstream_status = u16::try_from(status).ok().filter(|s| *s != 0);
            log.record(&entry);
        }
    }
}

/// The stack's [`Observer`](bmm_middleware::Observer) for `args`: request metrics with
/// `--metrics-listen`, and with `--audit-log` the audit log, opened now (an unwritable
/// file refuses start-up) and handed to `server` for its tool calls.
pub(crate) fn observer(
    server: &crate::McpServer,
    args: &crate::run::Args,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<bmm_middleware::Observer, String> {
    let mut observer = bmm_middleware::Observer::new();
    if let Some(addr) = args.metrics_listen {
        crate::metrics::check_address(addr, args.listen)?;
        observer = observer.metrics(true);
    }
    let Some(target) = &args.audit_log else {
        return Ok(observer);
    };
    let target = match target.as_str() {
        "" => return Err("--audit-log: give a file path, or - for standard output".into()),
        "-" => bmm_middleware::AuditTarget::Stdout,
        path => bmm_middleware::AuditTarget::File {
            path: path.into(),
            max_bytes: args.audit_log_max_bytes,
        },
    };
    let salt = match env("BMM_AUDIT_SALT") {
        Some(salt) if !salt.is_empty() => salt.into_bytes(),
        _ => {
            tracing::warn!(
                "BMM_AUDIT_SALT is not set: audit argument hashes use a random salt and can only be compared within this process"
            );
            rand::random::<[u8; 32]>().to_vec()
        }
    };
    let log = AuditLog::open(target, &salt).map_err(|e| {
        format!(
            "--audit-log {}: {e}",
            args.audit_log.as_deref().unwrap_or_default()
        )
    })?;
    server.set_audit(log.clone());
    Ok(observer.audit(log))
}
