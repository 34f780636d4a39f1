//! The audit log: one JSON line per `tools/call` and per refused request, written off the
//! request path.
//!
//! Rules:
//! 1. A line is an [`AuditEntry`] serialised by serde_json (so every string from outside is
//!    escaped) with every string field cut to [`MAX_FIELD_CHARS`] characters.
//! 2. Tool arguments never reach the log: only `args_sha256`, an HMAC-SHA256 of their
//!    canonical JSON (object keys sorted, no whitespace) keyed with the process's salt, so
//!    equal arguments can be correlated without being revealed. Tokens are never logged.
//! 3. Writing never blocks a request: lines go through a bounded queue
//!    ([`QUEUE_LINES`]) to a writer thread; when the queue is full the line is dropped,
//!    counted in `bmm_audit_lines_dropped_total`, and the writer notes the number in a
//!    `{"event":"dropped"}` line once it catches up.
//! 4. A file is opened for appending with mode 0600 (an existing file is set to 0600); when
//!    a line would take it past its size bound it is renamed to `<path>.1` (replacing an
//!    older one) and a fresh file is started. A path that is a symbolic link is refused
//!    (the log is never written through a link someone else planted).
//! 5. Refusals of requests without a verified token (401s, malformed headers) are the
//!    one kind of line anybody can cause without credentials. They are written through
//!    [`AuditLog::record_unverified`], at most [`UNVERIFIED_PER_SECOND`] a second (bursts
//!    of [`UNVERIFIED_BURST`]); the rest are counted in `bmm_audit_lines_suppressed_total`
//!    and noted as one `{"event":"suppressed","count":N}` line before the next one
//!    written. Without this, a client with no token could fill the size bound in minutes
//!    and rotate the record of real tool calls away. Tool calls and refusals of verified
//!    callers are never throttled.
//! 6. [`AuditLog::reopen`] (wired to SIGHUP through [`AuditLog::reopen_on`]) makes the
//!    writer close the file and open the path again after the lines already queued, so an
//!    external rotation (logrotate's `create`, a `mv`) loses no line: what was queued before
//!    the signal goes to the old file, what comes after to the new one.
//!
//! # Deployment caveat
//! A full disk or a revoked file loses lines (logged as a warning and counted as dropped);
//! the server keeps serving rather than failing every tool call.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Longest string field of a line, in characters; longer values are cut.
pub const MAX_FIELD_CHARS: usize = 256;

/// Lines waiting for the writer at most; more are dropped (rule 3).
pub const QUEUE_LINES: usize = 4096;

/// Refusal lines without a verified caller written per second at most (rule 5).
pub const UNVERIFIED_PER_SECOND: u32 = 20;

/// Refusal lines without a verified caller written at once at most (rule 5).
pub const UNVERIFIED_BURST: u32 = 200;

/// Where audit lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditTarget {
    /// Standard output, one line each.
    Stdout,
    /// A file, rotated to `<path>.1` beyond `max_bytes`.
    File {
        /// The log file.
        path: PathBuf,
        /// Size bound of the file, in bytes.
        max_bytes: u64,
    },
}

/// One audit line. Fields that do not apply are left out of the JSON.
///
/// | field | type | present | meaning |
/// |---|---|---|---|
/// | `time` | string | always | RFC 3339 UTC, milliseconds (`2026-12-02T12:00:00.123Z`) |
/// | `event` | string | always | `tool_call`, `refusal` or `dropped` |
/// | `iss` | string | tool_call | the token's issuer |
/// | `sub` | string | tool_call, when the token has one | the token's subject |
/// | `client_id` | string | tool_call, when the token has one | the OAuth client |
/// | `tool` | string | tool_call | a declared tool name, or `unknown` |
/// | `outcome` | string | tool_call | `ok`, `tool_error` (a result with `isError`), `error` (a JSON-RPC error) |
/// | `duration_ms` | number | tool_call | time in the handler, milliseconds |
/// | `upstream_status` | number | tool_call of an HTTP tool that got an answer | the upstream's HTTP status |
/// | `jsonrpc_id` | string | tool_call | the request id, as text, cut to 64 characters |
/// | `args_sha256` | string | tool_call | hex HMAC-SHA256 of the canonical arguments (rule 2) |
/// | `reason` | string | refusal | a [`Refusal`](crate::Refusal) reason |
/// | `status` | number | refusal | the HTTP status answered |
/// | `method` | string | refusal | the `Mcp-Method` header when it names a known MCP method, else `other` |
/// | `source` | string | refusal, tool_call over HTTP | the client's IP address |
/// | `count` | number | dropped | lines lost since the last such note |
#[derive(Clone, Debug, Default, Serialize)]
#[non_exhaustive]
pub struct AuditEntry {
    /// RFC 3339 UTC time.
    pub time: String,
    /// `tool_call`, `refusal`, `dropped` or `suppressed`.
    pub event: &'static str,
    /// The token's issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The token's subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The token's client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// `ok`, `tool_error` or `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
    /// Milliseconds in the handler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The upstream's HTTP status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// The JSON-RPC id, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jsonrpc_id: Option<String>,
    /// HMAC-SHA256 of the canonical arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_sha256: Option<String>,
    /// Why the request was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The HTTP status of a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The MCP method of a refused request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'static str>,
    /// The client's IP address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Lines dropped or suppressed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl AuditEntry {
    /// An entry of kind `event` stamped with the current time.
    pub fn now(event: &'static str) -> Self {
        Self {
            time: rfc3339_now(),
            event,
            ..Self::default()
        }
    }

    /// Sets the token fields: issuer, subject and client.
    pub fn caller(mut self, iss: &str, sub: Option<&str>, client_id: Option<&str>) -> Self {
        self.iss = Some(bounded(iss, MAX_FIELD_CHARS));
        self.sub = sub.map(|s| bounded(s, MAX_FIELD_CHARS));
        self.client_id = client_id.map(|s| bounded(s, MAX_FIELD_CHARS));
        self
    }
}

/// A running audit log. Cheap to clone; the writer stops when the last clone is dropped.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    queue: SyncSender<Vec<u8>>,
    key: [u8; 64],
    dropped: Arc<AtomicU64>,
    reopen: Arc<AtomicBool>,
    /// Lines queued and not yet written and flushed ([`AuditLog::drain`]).
    pending: Arc<AtomicU64>,
    /// Tokens left for unverified refusal lines, and when they were last counted (rule 5).
    unverified: std::sync::Mutex<(f64, std::time::Instant)>,
    suppressed: AtomicU64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens `target` (a file is created or appended to, mode 0600) and starts the writer
    /// thread. `salt` keys the argument hash (rule 2).
    pub fn open(target: AuditTarget, salt: &[u8]) -> io::Result<Self> {
        let sink = match &target {
            AuditTarget::Stdout => Sink::Stdout,
            AuditTarget::File { path, max_bytes } => {
                let file = open_append(path)?;
                let size = file.metadata()?.len();
                Sink::File {
                    path: path.clone(),
                    file: io::BufWriter::new(file),
                    size,
                    max_bytes: (*max_bytes).max(1),
                }
            }
        };
        let (queue, lines) = sync_channel(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let reopen = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicU64::new(0));
        let writer_dropped = Arc::clone(&dropped);
        let writer_reopen = Arc::clone(&reopen);
        let writer_pending = Arc::clone(&pending);
        std::thread::Builder::new()
            .name("bmm-audit".into())
            .spawn(move || {
                write_lines(
                    lines,
                    sink,
                    &writer_dropped,
                    &writer_reopen,
                    &writer_pending,
                );
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                queue,
                key: hmac_key(salt),
                dropped,
                reopen,
                pending,
                unverified: std::sync::Mutex::new((
                    f64::from(UNVERIFIED_BURST),
                    std::time::Instant::now(),
                )),
                suppressed: AtomicU64::new(0),
            }),
        })
    }

    /// Queues the refusal `entry` of a request without a verified caller, within the
    /// budget of rule 5; past it the line is counted and noted later instead.
    pub fn record_unverified(&self, entry: &AuditEntry) {
        let admitted = self.inner.unverified.lock().is_ok_and(|mut bucket| {
            let now = std::time::Instant::now();
            let refill =
                now.duration_since(bucket.1).as_secs_f64() * f64::from(UNVERIFIED_PER_SECOND);
            bucket.0 = (bucket.0 + refill).min(f64::from(UNVERIFIED_BURST));
            bucket.1 = now;
            if bucket.0 >= 1.0 {
                bucket.0 -= 1.0;
                true
            } else {
                false
            }
        });
        if !admitted {
            self.inner.suppressed.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("bmm_audit_lines_suppressed_total").increment(1);
            return;
        }
        let suppressed = self.inner.suppressed.swap(0, Ordering::Relaxed);
        if suppressed > 0 {
            self.record(&AuditEntry {
                count: Some(suppressed),
                ..AuditEntry::now("suppressed")
            });
        }
        self.record(entry);
    }

    /// Waits until every line queued so far is written and flushed, for at most `limit`
    /// (a server calls it on its way out, so the lines of calls cut off by the end of the
    /// shutdown grace are not lost with the process). Returns whether it got there.
    pub fn drain(&self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while self.inner.pending.load(Ordering::Acquire) > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        true
    }

    /// Asks the writer to open the file again by its path once the lines queued so far are
    /// written (rule 5); standard output is left alone.
    pub fn reopen(&self) {
        // An empty line is the reopen marker, in order with the lines around it. When the
        // queue is full the writer is awake anyway and sees the flag after this batch.
        if self.inner.queue.try_send(Vec::new()).is_err() {
            self.inner.reopen.store(true, Ordering::Release);
        }
    }

    /// Reopens the file at every trigger of `reload` (SIGHUP in a server), for as long as
    /// the async runtime runs.
    pub fn reopen_on(&self, reload: &crate::Reload) {
        let mut changes = reload.subscribe();
        let log = self.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                log.reopen();
            }
        });
    }

    /// The hex HMAC-SHA256 of `args` in canonical form (rule 2).
    pub fn hash_arguments(&self, args: &Value) -> String {
        let mut canonical = Vec::new();
        write_canonical(&mut canonical, args);
        hex(&hmac_sha256(&self.inner.key, &canonical))
    }

    /// Queues `entry`; drops it (and counts the drop) if the writer is behind (rule 3).
    pub fn record(&self, entry: &AuditEntry) {
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return;
        };
        line.push(b'\n');
        self.inner.pending.fetch_add(1, Ordering::AcqRel);
        match self.inner.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.inner.pending.fetch_sub(1, Ordering::AcqRel);
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("bmm_audit_lines_dropped_total").increment(1);
            }
        }
    }
}

enum Sink {
    Stdout,
    File {
        path: PathBuf,
        file: io::BufWriter<File>,
        size: u64,
        max_bytes: u64,
    },
}

impl Sink {
    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        match self {
            Self::Stdout => io::stdout().lock().write_all(line),
            Self::File {
                path,
                file,
                size,
                max_bytes,
            } => {
                let len = line.len() as u64;
                if *size > 0 && size.saturating_add(len) > *max_bytes {
                    file.flush()?;
                    let mut rotated = path.clone().into_os_string();
                    rotated.push(".1");
                    std::fs::rename(&*path, &rotated)?;
                    *file = io::BufWriter::new(open_append(path)?);
                    *size = 0;
                }
                file.write_all(line)?;
                *size = size.saturating_add(len);
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout => io::stdout().lock().flush(),
            Self::File { file, .. } => file.flush(),
        }
    }

    /// Closes the file and opens its path again (rule 5).
    fn reopen(&mut self) -> io::Result<()> {
        match self {
            Self::Stdout => Ok(()),
            Self::File {
                path, file, size, ..
            } => {
                file.flush()?;
                let fresh = open_append(path)?;
                *size = fresh.metadata()?.len();
                *file = io::BufWriter::new(fresh);
                tracing::info!(path = %path.display(), "audit log reopened");
                Ok(())
            }
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the audit log path is a symbolic link; give the file itself",
        ));
    }
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // O_NOFOLLOW closes the race between the check above and the open.
        options
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
        let file = options.open(path)?;
        if !file.metadata()?.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the audit log path is not a regular file",
            ));
        }
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    options.open(path)
}

/// The writer thread: writes lines as they come, flushes when the queue is empty, notes
/// drops, warns about write errors at most once a minute.
fn write_lines(
    lines: Receiver<Vec<u8>>,
    mut sink: Sink,
    dropped: &AtomicU64,
    reopen: &AtomicBool,
    pending: &AtomicU64,
) {
    let mut last_warning: Option<std::time::Instant> = None;
    let mut warn = |error: io::Error| {
        metrics::counter!("bmm_audit_lines_dropped_total").increment(1);
        if last_warning.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
            last_warning = Some(std::time::Instant::now());
            tracing::warn!(%error, "audit log write failed; lines are being lost");
        }
    };
    // An empty line is the reopen marker (rule 5).
    let take = |sink: &mut Sink, line: &[u8]| {
        if line.is_empty() {
            sink.reopen()
        } else {
            sink.write(line)
        }
    };
    while let Ok(line) = lines.recv() {
        let mut taken = u64::from(!line.is_empty());
        if let Err(e) = take(&mut sink, &line) {
            warn(e);
        }
        let mut next = lines.try_recv();
        while let Ok(line) = next {
            taken += u64::from(!line.is_empty());
            if let Err(e) = take(&mut sink, &line) {
                warn(e);
            }
            next = lines.try_recv();
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(
                lost,
                "audit log queue was full; lines were dropped (bmm_audit_lines_dropped_total)"
            );
            let note = AuditEntry {
                count: Some(lost),
                ..AuditEntry::now("dropped")
            };
            if let Ok(mut text) = serde_json::to_vec(&note) {
                text.push(b'\n');
                if let Err(e) = sink.write(&text) {
                    warn(e);
                }
            }
        }
        if let Err(e) = sink.flush() {
            warn(e);
        }
        pending.fetch_sub(taken, Ordering::AcqRel);
        if reopen.swap(false, Ordering::AcqRel)
            && let Err(e) = sink.reopen()
        {
            warn(e);
        }
    }
}

/// `text` cut to at most `max` characters.
pub fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

/// Compact JSON with object keys sorted, recursively: the same arguments give the same
/// bytes whatever order the client wrote them in.
fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, key);
                out.push(b':');
                if let Some(v) = map.get(key) {
                    write_canonical(out, v);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, v);
            }
            out.push(b']');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// The HMAC key block for `salt` (RFC 2104: hashed when longer than the block).
fn hmac_key(salt: &[u8]) -> [u8; 64] {
    let mut key = [0u8; 64];
    if salt.len() > 64 {
        key[..32].copy_from_slice(&Sha256::digest(salt));
    } else {
        key[..salt.len()].copy_from_slice(salt);
    }
    key
}

fn hmac_sha256(key: &[u8; 64], message: &[u8]) -> [u8; 32] {
    let mut inner = Sha256::new();
    inner.update(key.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(key.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn rfc3339_now() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(since.as_secs(), since.subsec_millis())
}

fn rfc3339(secs: u64, millis: u32) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "bmm-audit-{name}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir.join("audit.log")
    }

    fn wait_for_lines(path: &Path, n: usize) -> String {
        for _ in 0..200 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().count() >= n {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("fewer than {n} lines in {}", path.display());
    }

    #[test]
    fn reopen_after_an_external_rotation_writes_to_the_new_file_and_loses_nothing() {
        let path = scratch("reopen");
        let log = AuditLog::open(
            AuditTarget::File {
                path: path.clone(),
                max_bytes: 1 << 20,
            },
            b"salt",
        )
        .expect("open");
        log.record(&AuditEntry::now("before"));
        wait_for_lines(&path, 1);
        // What logrotate does: move the file away, then signal.
        let moved = path.with_extension("log.old");
        std::fs::rename(&path, &moved).expect("rename");
        log.record(&AuditEntry::now("queued_before_reopen"));
        log.reopen();
        log.record(&AuditEntry::now("after"));
        let fresh = wait_for_lines(&path, 1);
        let old = wait_for_lines(&moved, 2);
        assert!(old.contains("\"before\"") && old.contains("queued_before_reopen"));
        assert!(fresh.contains("\"after\""), "{fresh}");
        assert!(!fresh.contains("before"), "{fresh}");
    }

    #[test]
    fn refusals_without_a_verified_caller_cannot_flood_the_log() {
        let path = scratch("flood");
        let log = AuditLog::open(
            AuditTarget::File {
                path: path.clone(),
                max_bytes: 1 << 30,
            },
            b"salt",
        )
        .expect("open");
        let flood = 5_000;
        for _ in 0..flood {
            log.record_unverified(&AuditEntry {
                reason: Some("missing"),
                ..AuditEntry::now("refusal")
            });
        }
        // Refill for a moment, then one more: it brings the note of what was suppressed.
        std::thread::sleep(std::time::Duration::from_millis(200));
        log.record_unverified(&AuditEntry {
            reason: Some("missing"),
            ..AuditEntry::now("refusal")
        });
        log.record(&AuditEntry::now("tool_call"));
        let text = wait_for_lines(&path, 1);
        let mut written = 0;
        let mut noted = 0;
        let mut calls = 0;
        for _ in 0..200 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            calls = text.matches("\"tool_call\"").count();
            if calls == 1 {
                written = text.matches("\"refusal\"").count();
                noted = text
                    .lines()
                    .filter(|l| l.contains("\"suppressed\""))
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter_map(|v| v["count"].as_u64())
                    .sum::<u64>();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(calls, 1, "{text}");
        assert!(
            written <= UNVERIFIED_BURST as usize + 10,
            "{written} refusal lines from a flood of {flood}"
        );
        // Every refusal is either written or counted in a note.
        assert_eq!(written as u64 + noted, flood + 1);
    }

    #[cfg(unix)]
    #[test]
    fn an_audit_path_that_is_a_symbolic_link_is_refused() {
        let path = scratch("symlink");
        let target = path.with_extension("target");
        std::fs::write(&target, b"").expect("target");
        std::os::unix::fs::symlink(&target, &path).expect("symlink");
        let opened = AuditLog::open(
            AuditTarget::File {
                path,
                max_bytes: 1 << 20,
            },
            b"salt",
        );
        assert!(opened.is_err(), "a symlinked audit path was opened");
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = hmac_sha256(&hmac_key(b"Jefe"), b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn argument_hash_ignores_key_order_and_depends_on_salt_and_values() {
        let log = |salt: &[u8]| AuditLog {
            inner: Arc::new(Inner {
                queue: sync_channel(1).0,
                key: hmac_key(salt),
                dropped: Arc::default(),
                reopen: Arc::default(),
                pending: Arc::default(),
                unverified: std::sync::Mutex::new((0.0, std::time::Instant::now())),
                suppressed: AtomicU64::new(0),
            }),
        };
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,"x"],"x":null}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,"x"]},"b":1}"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,"x"]},"b":2}"#).unwrap();
        let one = log(b"salt");
        assert_eq!(one.hash_arguments(&a), one.hash_arguments(&b));
        assert_ne!(one.hash_arguments(&a), one.hash_arguments(&c));
        assert_ne!(one.hash_arguments(&a), log(b"other").hash_arguments(&a));
        assert_eq!(one.hash_arguments(&a).len(), 64);
    }

    #[test]
    fn times_are_rfc_3339_utc() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_796_212_800, 123), "2026-12-02T12:00:00.123Z");
    }

    #[test]
    fn long_fields_are_cut_on_character_boundaries() {
        assert_eq!(bounded("ééé", 2), "éé");
        assert_eq!(bounded("ab", 5), "ab");
    }
}
