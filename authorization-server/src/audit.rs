//! The audit trail: security-relevant events recorded in the store, listed by
//! `bmm-as audit` and the admin page.
//!
//! Audit rules:
//! 1. An event never holds a token, an authorization code, a client secret, a password or
//!    a hash of one: only who (client, subject, address), what (the kind, the resource and
//!    scopes) and how it ended (the outcome, a short detail).
//! 2. Recording never fails the request it describes: a store error is logged (the event
//!    has no secret to leak) and the request goes on.
//! 3. Every value is capped in length ([`MAX_VALUE`] bytes, on a character boundary), so
//!    a caller cannot grow the trail faster than its request size allows.
//! 4. Events older than `--audit-retention-days` are deleted by the cleanup task.

use std::net::IpAddr;

use crate::AppState;
use crate::store::{AuditEvent, AuditFilter, Store};

/// The event types, as stored in [`AuditEvent::kind`].
pub const KINDS: &[&str] = &[
    "registration",
    "sign_in",
    "consent",
    "code_issued",
    "code_redeemed",
    "token_issued",
    "refresh",
    "refresh_reuse",
    "revocation",
    "key_rotation",
    "cimd_refused",
    "client_credentials",
    "admin_sign_in",
    "admin_revoke",
    "introspection",
    "token_exchange",
];

/// Longest value kept in any field of an event, in bytes.
pub const MAX_VALUE: usize = 512;

/// `text` cut to at most `max` bytes on a character boundary.
fn cap(text: &str, max: usize) -> String {
    // PostgreSQL text cannot hold NUL: an event carrying one would fail to be written.
    if text.contains('\0') {
        return cap(&text.replace('\0', ""), max);
    }
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// A new event of `kind` (one of [`KINDS`]) at the current time with outcome `ok`; the
/// setters fill in the rest.
pub(crate) fn event(kind: &'static str) -> AuditEvent {
    debug_assert!(KINDS.contains(&kind), "unknown audit kind {kind}");
    AuditEvent {
        id: 0,
        at: crate::now(),
        kind: kind.to_owned(),
        client_id: None,
        subject: None,
        resource: None,
        scope: None,
        address: None,
        outcome: "ok".to_owned(),
        detail: None,
    }
}

/// Builder setters (rule 3: every value is capped).
impl AuditEvent {
    /// The client.
    #[must_use]
    pub(crate) fn client(mut self, client_id: &str) -> Self {
        self.client_id = Some(cap(client_id, MAX_VALUE));
        self
    }
    /// The user (or the client, for `client_credentials`).
    #[must_use]
    pub(crate) fn subject(mut self, subject: &str) -> Self {
        self.subject = Some(cap(subject, MAX_VALUE));
        self
    }
    /// The resource.
    #[must_use]
    pub(crate) fn resource(mut self, resource: &str) -> Self {
        self.resource = Some(cap(resource, MAX_VALUE));
        self
    }
    /// The scopes, space-separated.
    #[must_use]
    pub(crate) fn scope(mut self, scope: &str) -> Self {
        self.scope = Some(cap(scope, MAX_VALUE));
        self
    }
    /// The caller's address.
    #[must_use]
    pub(crate) fn address(mut self, address: IpAddr) -> Self {
        self.address = Some(address.to_string());
        self
    }
    /// `ok`, or the refusal (an OAuth error code or a short reason).
    #[must_use]
    pub(crate) fn outcome(mut self, outcome: &str) -> Self {
        self.outcome = cap(outcome, 64);
        self
    }
    /// A short detail (never a secret).
    #[must_use]
    pub(crate) fn detail(mut self, detail: &str) -> Self {
        self.detail = Some(cap(detail, MAX_VALUE));
        self
    }
}

/// Records `event` (rule 2: a store error is logged, never returned).
pub(crate) async fn record(state: &AppState, event: AuditEvent) {
    record_to(state.inner.store.as_ref(), event).await;
}

/// Records `event` in `store`, for code that holds the store but not the state.
pub(crate) async fn record_to(store: &dyn Store, event: AuditEvent) {
    if let Err(err) = store.record_event(&event).await {
        tracing::error!(kind = %event.kind, error = %err, "could not record an audit event");
    }
}

/// The name a sign-in attempt gave, for its audit event: only a configured user's name,
/// never what an unknown attempt typed (it may be a password typed in the wrong field).
pub(crate) fn attempted_user<'u>(
    users: &'u [crate::config::UserConfig],
    name: &str,
) -> Option<&'u str> {
    users
        .iter()
        .find(|u| u.name == name)
        .map(|u| u.name.as_str())
}

/// Parses a time bound for `bmm-as audit --since/--until` and the admin page's filter:
/// RFC 3339 (`2026-05-01T12:00:00Z`), seconds since the epoch, or an age before `now`
/// (`90s`, `30m`, `1h`, `7d`, `2w`). Returns seconds since the epoch.
pub fn parse_time(text: &str, now: u64) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("an empty time".to_owned());
    }
    if let Some(at) = parse_rfc3339(text) {
        return Ok(at);
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| format!("{text:?} is too large"));
    }
    // The unit is the last character, which may be more than one byte (outside input).
    let last = text.char_indices().next_back().map_or(0, |(at, _)| at);
    let (number, unit) = text.split_at(last);
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "{text:?} is neither RFC 3339 (2026-05-01T12:00:00Z) nor an age like 30m, 1h, 7d"
            ));
        }
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number before the unit"))?;
    Ok(now.saturating_sub(number.saturating_mul(unit)))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are in range by construction (1..=31, 1..=12).
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// `2026-05-01T12:00:00Z`, `2026-05-01T12:00:00.5+02:00` or `2026-05-01` (midnight UTC) as
/// seconds since the epoch; `None` if it is not one of those or before 1970.
fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let part = text.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let mut secs = days_from_civil(i64::from(year), month, day) * 86_400;
    if b.len() > 10 {
        if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 20 || b[13] != b':' || b[16] != b':' {
            return None;
        }
        let (h, m, s) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
        if h > 23 || m > 59 || s > 60 {
            return None;
        }
        secs += i64::from(h * 3600 + m * 60 + s);
        let mut rest = &text[19..];
        if let Some(frac) = rest.strip_prefix('.') {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            rest = &frac[digits..];
        }
        match rest {
            "Z" | "z" => {}
            _ => {
                let rb = rest.as_bytes();
                if rb.len() != 6 || !matches!(rb[0], b'+' | b'-') || rb[3] != b':' {
                    return None;
                }
                let oh: u32 = rest.get(1..3)?.parse().ok()?;
                let om: u32 = rest.get(4..6)?.parse().ok()?;
                let offset = i64::from(oh * 3600 + om * 60);
                secs += if rb[0] == b'+' { -offset } else { offset };
            }
        }
    }
    u64::try_from(secs).ok()
}

/// `at` (seconds since the epoch) as RFC 3339 UTC (`2026-05-01T12:00:00Z`), for tables
/// and pages.
pub fn format_time(at: u64) -> String {
    let at = i64::try_from(at).unwrap_or(i64::MAX / 2);
    let (year, month, day) = civil_from_days(at.div_euclid(86_400));
    let secs = at.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Output format of `bmm-as audit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line (JSON lines), for tools.
    Json,
}

/// The server's TOML file as `bmm-as audit` reads it: the database keys only.
#[derive(Default, serde::Deserialize)]
struct OnlyDatabase {
    database_url: Option<String>,
    database_ca_file: Option<std::path::PathBuf>,
}

/// `bmm-as audit`: lists the audit trail of the store the server uses, newest first.
#[derive(Clone, Debug, clap::Args)]
pub struct AuditArgs {
    /// The server's data directory (its SQLite database), when no database URL is given.
    #[arg(long, env = "BMM_AS_DATA_DIR", default_value = ".bmm-as")]
    pub data_dir: std::path::PathBuf,
    /// The server's PostgreSQL database (`postgres://...`); default: SQLite in the data
    /// directory.
    #[arg(long, env = "BMM_AS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// CA certificates (PEM) for the database's TLS (`sslmode=require`), as the server's
    /// `--database-ca-file`.
    #[arg(long, value_name = "PEM", env = "BMM_AS_DATABASE_CA_FILE")]
    pub database_ca_file: Option<std::path::PathBuf>,
    /// The server's TOML file (read for its `database_url` and `database_ca_file` only).
    #[arg(long, env = "BMM_AS_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Only events of this client id.
    #[arg(long)]
    pub client: Option<String>,
    /// Only events of this user (or client, for `client_credentials`).
    #[arg(long)]
    pub subject: Option<String>,
    /// Only events of this type (`registration`, `sign_in`, `refresh_reuse`, ...).
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: Option<String>,
    /// Only events at or after: RFC 3339 (`2026-05-01T12:00:00Z`) or an age (`1h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Only events before: RFC 3339 or an age.
    #[arg(long)]
    pub until: Option<String>,
    /// Most events listed.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// `table` or `json` (JSON lines).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

impl AuditArgs {
    /// The database URL: the flag (or its environment variable), else the TOML file's
    /// `database_url`; `None` means SQLite in the data directory.
    pub fn database_url(&self) -> Result<Option<String>, String> {
        if let Some(url) = self.database_url.as_ref().filter(|u| !u.is_empty()) {
            return Ok(Some(url.clone()));
        }
        Ok(self.file()?.database_url.filter(|u| !u.is_empty()))
    }

    /// The database CA file: the flag (or its environment variable), else the TOML
    /// file's `database_ca_file`.
    pub fn database_ca_file(&self) -> Result<Option<std::path::PathBuf>, String> {
        if let Some(path) = self
            .database_ca_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            return Ok(Some(path.clone()));
        }
        Ok(self
            .file()?
            .database_ca_file
            .filter(|p| !p.as_os_str().is_empty()))
    }

    /// The database keys of the TOML file (none without `--config`).
    fn file(&self) -> Result<OnlyDatabase, String> {
        let Some(path) = &self.config else {
            return Ok(OnlyDatabase::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        toml::from_str::<OnlyDatabase>(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// The store filter these flags describe (the limit is applied by [`list`]).
    pub fn filter(&self, now: u64) -> Result<AuditFilter, String> {
        if let Some(kind) = &self.kind
            && !KINDS.contains(&kind.as_str())
        {
            return Err(format!(
                "unknown event type {kind:?}; the types are {}",
                KINDS.join(", ")
            ));
        }
        let time = |v: &Option<String>| v.as_deref().map(|t| parse_time(t, now)).transpose();
        Ok(AuditFilter {
            client_id: self.client.clone(),
            subject: self.subject.clone(),
            kind: self.kind.clone(),
            since: time(&self.since)?,
            until: time(&self.until)?,
            before_id: None,
            limit: 0,
        })
    }
}

/// Writes the events `args` selects from `store` to `out`, newest first, paging through
/// the store 1000 at a time. Returns how many it wrote.
pub async fn list(
    store: &dyn Store,
    args: &AuditArgs,
    out: &mut dyn std::io::Write,
) -> Result<u64, String> {
    let mut filter = args.filter(crate::now())?;
    let mut left = args.limit;
    let mut events = Vec::new();
    while left > 0 {
        filter.limit = left.min(1000);
        let page = store.events(&filter).await.map_err(|e| e.to_string())?;
        let full = page.len() == filter.limit as usize;
        left -= u32::try_from(page.len()).unwrap_or(left).min(left);
        filter.before_id = page.last().map(|e| e.id);
        events.extend(page);
        if !full {
            break;
        }
    }
    let io = |e: std::io::Error| format!("cannot write: {e}");
    match args.format {
        Format::Json => {
            for event in &events {
                let line = serde_json::to_string(event).map_err(|e| e.to_string())?;
                writeln!(out, "{line}").map_err(io)?;
            }
        }
        Format::Table => write_table(&events, out).map_err(io)?,
    }
    Ok(events.len() as u64)
}

/// Why `bmm-as audit` failed.
#[derive(Debug)]
pub enum CommandError {
    /// A bad flag value (exit status 2).
    Usage(String),
    /// The store could not be opened or read (exit status 1).
    Store(String),
}

/// `bmm-as audit`: opens the store the server uses (read for events only; it never
/// creates a key) and writes the selected events to `out`.
pub async fn command(args: &AuditArgs, out: &mut dyn std::io::Write) -> Result<u64, CommandError> {
    // Flag errors come before the store is opened.
    args.filter(crate::now()).map_err(CommandError::Usage)?;
    let url = args.database_url().map_err(CommandError::Usage)?;
    let store: std::sync::Arc<dyn Store> = match url {
        Some(url) if crate::store::is_postgres_url(&url) => {
            let ca_file = args.database_ca_file().map_err(CommandError::Usage)?;
            crate::store::PgStore::connect_existing(&url, 2, ca_file.as_deref())
                .await
                .map(|pg| std::sync::Arc::new(pg) as std::sync::Arc<dyn Store>)
                .map_err(|e| {
                    CommandError::Store(format!(
                        "database {}: {}",
                        crate::store::redacted_url(&url),
                        e.0
                    ))
                })?
        }
        Some(url) => {
            return Err(CommandError::Usage(format!(
                "--database-url {} is not a postgres:// URL",
                crate::store::redacted_url(&url)
            )));
        }
        None => {
            let dir = args.data_dir.clone();
            if !dir.is_dir() {
                return Err(CommandError::Store(format!(
                    "no data directory at {} (pass the server's --data-dir or --database-url)",
                    dir.display()
                )));
            }
            let sqlite = tokio::task::spawn_blocking(move || {
                crate::store::SqliteStore::open_read_only(&dir)
            })
            .await
            .map_err(|e| CommandError::Store(format!("store task failed: {e}")))?
            .map_err(|e| CommandError::Store(e.0))?;
            std::sync::Arc::new(sqlite)
        }
    };
    list(store.as_ref(), args, out)
        .await
        .map_err(CommandError::Store)
}

/// `text` with control characters shown as `\u{..}`, so a value chosen by a client
/// (a user name, a client id) cannot drive the terminal.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

fn write_table(events: &[AuditEvent], out: &mut dyn std::io::Write) -> std::io::Result<()> {
    const HEADER: [&str; 9] = [
        "TIME", "TYPE", "CLIENT", "SUBJECT", "RESOURCE", "SCOPE", "ADDRESS", "OUTCOME", "DETAIL",
    ];
    let opt = |v: &Option<String>| printable(v.as_deref().unwrap_or("-"));
    let rows: Vec<[String; 9]> = events
        .iter()
        .map(|e| {
            [
                format_time(e.at),
                printable(&e.kind),
                opt(&e.client_id),
                opt(&e.subject),
                opt(&e.resource),
                opt(&e.scope),
                opt(&e.address),
                printable(&e.outcome),
                opt(&e.detail),
            ]
        })
        .collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &[&str]| -> std::io::Result<()> {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(&HEADER)?;
    for row in &rows {
        line(&row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_capped_on_a_character_boundary() {
        let long = "é".repeat(MAX_VALUE);
        let ev = event("registration")
            .client(&long)
            .outcome(&"x".repeat(100));
        let client = ev.client_id.unwrap_or_default();
        assert!(client.len() <= MAX_VALUE && client.len() >= MAX_VALUE - 1);
        assert!(client.chars().all(|c| c == 'é'));
        assert_eq!(ev.outcome.len(), 64);
    }

    #[test]
    fn nul_bytes_are_stripped_because_postgresql_text_cannot_hold_them() {
        let ev = event("client_credentials").client("a\0b");
        assert_eq!(ev.client_id.as_deref(), Some("ab"));
    }

    #[test]
    fn times_parse_as_rfc3339_epoch_or_age() {
        let now = 1_800_000_000;
        assert_eq!(parse_time("1h", now), Ok(now - 3600));
        assert_eq!(parse_time("7d", now), Ok(now - 7 * 86_400));
        assert_eq!(parse_time("1700000000", now), Ok(1_700_000_000));
        assert_eq!(parse_time("1970-01-01T00:01:00Z", now), Ok(60));
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("h", now).is_err());
        // A multi-byte last character is an unknown unit, not a panic.
        assert!(parse_time("é", now).is_err());
        assert!(parse_time("1é", now).is_err());
        assert!(parse_time("", now).is_err());
        assert_eq!(format_time(60), "1970-01-01T00:01:00Z");
        assert_eq!(
            parse_time("2026-05-01T12:00:00+02:00", now),
            Ok(1_777_629_600)
        );
        assert_eq!(
            parse_time("2026-05-01T10:00:00.25Z", now),
            Ok(1_777_629_600)
        );
        assert_eq!(parse_time("2026-05-01", now), Ok(1_777_593_600));
        assert_eq!(format_time(1_777_629_600), "2026-05-01T10:00:00Z");
        for at in [0, 951_782_400, 1_709_164_800, 4_102_444_799] {
            assert_eq!(parse_rfc3339(&format_time(at)), Some(at));
        }
        assert!(parse_time("2026-13-01T00:00:00Z", now).is_err());
        assert!(parse_time("2026-05-01T10:00:00", now).is_err());
    }

    #[test]
    fn table_cells_cannot_drive_the_terminal() {
        assert_eq!(printable("a\u{1b}[31mb\n"), "a\\u{1b}[31mb\\u{a}");
        let mut out = Vec::new();
        let ev = event("sign_in")
            .subject("bob\u{7}")
            .outcome("invalid_credentials");
        write_table(&[ev], &mut out).unwrap_or_default();
        let text = String::from_utf8(out).unwrap_or_default();
        assert!(text.starts_with("TIME"), "{text}");
        assert!(
            text.contains("bob\\u{7}") && !text.contains('\u{7}'),
            "{text}"
        );
    }
}
