use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::migrate;
use super::{
    AuditEvent, AuditFilter, Client, ClientSummary, Grant, OpaqueToken, Purged, RefreshRecord,
    RefreshUse, Store, StoredCode, StoredKey,
};
use crate::error::StoreError;

/// The embedded store: one SQLite database file (WAL mode).
///
/// One connection per process, used on tokio's blocking pool (store rule 4). Every
/// read-then-write runs in a `BEGIN IMMEDIATE` transaction, which takes SQLite's write lock
/// before reading, so several processes on one file (waiting up to 5 s for each other)
/// decide single-use things exactly like one process would (store rule 1).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

fn json_error(e: serde_json::Error) -> StoreError {
    StoreError(format!("stored document: {e}"))
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Applies the migrations this database lacks, in one transaction (store rule 3).
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(migrate::VERSION_TABLE)?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM bmm_schema_migrations",
        [],
        |row| row.get(0),
    )?;
    let todo = migrate::pending(current)?;
    for m in todo {
        tx.execute_batch(m.sqlite)
            .map_err(|e| StoreError(format!("migration {} ({}): {e}", m.version, m.name)))?;
        tx.execute(
            "INSERT INTO bmm_schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![m.version, int(crate::now())],
        )?;
        tracing::info!(version = m.version, name = m.name, "store migrated");
    }
    tx.commit()?;
    Ok(())
}

/// Owner-only files (issue 12 item 13).
#[cfg(unix)]
mod private {
    use std::io::ErrorKind;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    use std::path::Path;

    use crate::error::StoreError;

    /// Creates `dir` (and missing parents) `0700`; refuses an existing one that group or
    /// others may write to, warns when they may read it.
    pub(super) fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
        if std::fs::symlink_metadata(dir).is_err() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    StoreError(format!("cannot create data dir {}: {e}", dir.display()))
                })?;
        }
        let meta = std::fs::metadata(dir)
            .map_err(|e| StoreError(format!("cannot read data dir {}: {e}", dir.display())))?;
        if !meta.is_dir() {
            return Err(StoreError(format!(
                "data dir {} is not a directory",
                dir.display()
            )));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o022 != 0 {
            return Err(StoreError(format!(
                "data dir {} is writable by other users (mode {mode:03o}) and holds the signing key; run `chmod 700 {}`",
                dir.display(),
                dir.display()
            )));
        }
        if mode & 0o077 != 0 {
            tracing::warn!(
                "data dir {} is readable by other users (mode {mode:03o}); `chmod 700 {}` is advised",
                dir.display(),
                dir.display()
            );
        }
        Ok(())
    }

    /// Checks that `path` is a regular file only its owner may read or write; creates it
    /// `0600` when missing and `create` is set.
    pub(super) fn prepare_file(path: &Path, create: bool) -> Result<(), StoreError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                if !meta.file_type().is_file() {
                    return Err(StoreError(format!(
                        "{} is not a regular file (a symbolic link?); the store refuses it",
                        path.display()
                    )));
                }
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(StoreError(format!(
                        "{} is readable or writable by other users (mode {mode:03o}) and holds the signing key; run `chmod 600 {}` (and rotate the key if others may have read it)",
                        path.display(),
                        path.display()
                    )));
                }
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound && create => std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map(|_| ())
                .map_err(|e| StoreError(format!("cannot create {}: {e}", path.display()))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError(format!("cannot read {}: {e}", path.display()))),
        }
    }
}

#[cfg(not(unix))]
mod private {
    use std::path::Path;

    use crate::error::StoreError;

    pub(super) fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError(format!("cannot create data dir {}: {e}", dir.display())))
    }

    pub(super) fn prepare_file(_path: &Path, _create: bool) -> Result<(), StoreError> {
        Ok(())
    }
}

const REFRESH_COLUMNS: &str =
    "token_sha256, family, client_id, subject, scope, resource, issued_at, expires_at, jkt";

/// A refresh record from a row whose first columns are [`REFRESH_COLUMNS`].
fn refresh_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RefreshRecord> {
    Ok(RefreshRecord {
        token_sha256: row.get(0)?,
        family: row.get(1)?,
        client_id: row.get(2)?,
        subject: row.get(3)?,
        scope: row.get(4)?,
        resource: row.get(5)?,
        issued_at: uint(row.get(6)?),
        expires_at: uint(row.get(7)?),
        jkt: row.get(8)?,
    })
}

const OPAQUE_COLUMNS: &str =
    "token_sha256, family, client_id, subject, scope, resource, jti, jkt, issued_at, expires_at";

fn opaque_token(row: &rusqlite::Row<'_>) -> rusqlite::Result<OpaqueToken> {
    Ok(OpaqueToken {
        token_sha256: row.get(0)?,
        family: row.get(1)?,
        client_id: row.get(2)?,
        subject: row.get(3)?,
        scope: row.get(4)?,
        resource: row.get(5)?,
        jti: row.get(6)?,
        jkt: row.get(7)?,
        issued_at: uint(row.get(8)?),
        expires_at: uint(row.get(9)?),
    })
}

const CODE_COLUMNS: &str = "code_sha256, client_id, redirect_uri, redirect_uri_given, code_challenge, resource, scope, subject, expires_at, redeemed_family";

fn stored_code(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredCode> {
    Ok(StoredCode {
        code_sha256: row.get(0)?,
        client_id: row.get(1)?,
        redirect_uri: row.get(2)?,
        redirect_uri_given: row.get(3)?,
        code_challenge: row.get(4)?,
        resource: row.get(5)?,
        scope: row.get(6)?,
        subject: row.get(7)?,
        expires_at: uint(row.get(8)?),
        redeemed_family: row.get(9)?,
    })
}

const EVENT_COLUMNS: &str =
    "id, at, kind, client_id, subject, resource, scope, address, outcome, detail";

fn audit_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEvent> {
    Ok(AuditEvent {
        id: row.get(0)?,
        at: uint(row.get(1)?),
        kind: row.get(2)?,
        client_id: row.get(3)?,
        subject: row.get(4)?,
        resource: row.get(5)?,
        scope: row.get(6)?,
        address: row.get(7)?,
        outcome: row.get(8)?,
        detail: row.get(9)?,
    })
}

/// Revokes every unrevoked token of `family` at `now`; whether one of them was live.
fn revoke_family_in(conn: &Connection, family: &str, now: u64) -> Result<bool, StoreError> {
    let live: i64 = conn.query_row(
        "SELECT COUNT(*) FROM refresh_tokens
         WHERE family = ?1 AND revoked_at IS NULL AND expires_at > ?2",
        params![family, int(now)],
        |row| row.get(0),
    )?;
    conn.execute(
        "UPDATE refresh_tokens SET revoked_at = ?2 WHERE family = ?1 AND revoked_at IS NULL",
        params![family, int(now)],
    )?;
    conn.execute(
        "UPDATE opaque_tokens SET revoked_at = ?2 WHERE family = ?1 AND revoked_at IS NULL",
        params![family, int(now)],
    )?;
    Ok(live > 0)
}

/// Deletes at most `batch` rows of `table` matching `condition` (whose one parameter is
/// `cutoff`); how many it deleted.
fn delete_batch(
    conn: &Connection,
    table: &str,
    condition: &str,
    cutoff: u64,
    batch: u32,
) -> Result<u64, StoreError> {
    let n = conn.execute(
        &format!(
            "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {condition} LIMIT ?2)"
        ),
        params![int(cutoff), i64::from(batch)],
    )?;
    Ok(n as u64)
}

impl SqliteStore {
    /// Opens (creating if needed) `bmm-as.sqlite3` in `dir` and brings its schema up to
    /// date (see `migrate`). Blocking: call it from a blocking thread.
    ///
    /// The data directory is created `0700` and the database file `0600` whatever the
    /// umask; SQLite gives its `-wal` and `-shm` files the database's mode, and they are
    /// checked too. A database (or `-wal`/`-shm`) file readable or writable by group or
    /// others, a data directory writable by them, or a symbolic link in their place, is
    /// refused with the `chmod` that fixes it: the database holds the signing key.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        private::prepare_dir(dir)?;
        let path = dir.join("bmm-as.sqlite3");
        private::prepare_file(&path, true)?;
        for suffix in ["-wal", "-shm"] {
            private::prepare_file(&dir.join(format!("bmm-as.sqlite3{suffix}")), false)?;
        }
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Deleted and overwritten content (a signing key once stored in clear) is zeroed
        // rather than left in free pages; cheap at this write rate.
        conn.pragma_update(None, "secure_delete", "ON")?;
        migrate(&mut conn)?;
        for suffix in ["-wal", "-shm"] {
            private::prepare_file(&dir.join(format!("bmm-as.sqlite3{suffix}")), false)?;
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Opens the existing `bmm-as.sqlite3` in `dir` read-only and without migrating, for
    /// `bmm-as audit`: a directory without one is refused (nothing is created), and so is
    /// a schema that is not the latest this binary knows. Blocking.
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("bmm-as.sqlite3");
        if std::fs::symlink_metadata(&path).is_err() {
            return Err(StoreError(format!(
                "no bmm-as database in {}",
                dir.display()
            )));
        }
        private::prepare_file(&path, false)?;
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "query_only", "ON")?;
        let versioned: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'bmm_schema_migrations')",
            [],
            |row| row.get(0),
        )?;
        let found: i64 = if versioned {
            conn.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM bmm_schema_migrations",
                [],
                |row| row.get(0),
            )?
        } else {
            0
        };
        migrate::require_latest(found)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// A private in-memory database (tests, tools).
    pub fn in_memory() -> Result<Self, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// How many pending sign-ins are stored, expired or not (tests).
    #[cfg(test)]
    pub(crate) async fn pending_len(&self) -> Result<usize, StoreError> {
        self.run(|conn| {
            let n: i64 =
                conn.query_row("SELECT COUNT(*) FROM pending_signins", [], |row| row.get(0))?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
        .await
    }

    /// Runs `f` with the connection on the blocking pool (store rule 4).
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| StoreError("store lock poisoned".to_owned()))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError(format!("store task failed: {e}")))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn put_client(&self, client: &Client) -> Result<(), StoreError> {
        let document = serde_json::to_string(client).map_err(json_error)?;
        let id = client.client_id.clone();
        let created_at = int(client.created_at);
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO clients (client_id, document, created_at) VALUES (?1, ?2, ?3)",
                params![id, document, created_at],
            )?;
            Ok(())
        })
        .await
    }

    async fn client(&self, client_id: &str) -> Result<Option<Client>, StoreError> {
        let id = client_id.to_owned();
        let document: Option<String> = self
            .run(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT document FROM clients WHERE client_id = ?1",
                        params![id],
                        |row| row.get(0),
                    )
                    .optional()?)
            })
            .await?;
        document
            .map(|d| serde_json::from_str(&d).map_err(json_error))
            .transpose()
    }

    async fn clients(&self, limit: u32, offset: u32) -> Result<Vec<ClientSummary>, StoreError> {
        let rows: Vec<(String, Option<i64>)> = self
            .run(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT document, last_used FROM clients
                     ORDER BY created_at DESC, client_id LIMIT ?1 OFFSET ?2",
                )?;
                let rows = stmt
                    .query_map(
                        params![i64::from(limit.min(1000)), i64::from(offset)],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await?;
        rows.into_iter()
            .map(|(document, last_used)| {
                Ok(ClientSummary {
                    client: serde_json::from_str(&document).map_err(json_error)?,
                    last_used: last_used.map(uint),
                })
            })
            .collect()
    }

    async fn mark_client_used(&self, client_id: &str, now: u64) -> Result<(), StoreError> {
        let id = client_id.to_owned();
        self.run(move |conn| {
            conn.execute(
                "UPDATE clients SET last_used = ?2 WHERE client_id = ?1",
                params![id, int(now)],
            )?;
            Ok(())
        })
        .await
    }

    async fn client_used(&self, client_id: &str) -> Result<bool, StoreError> {
        let id = client_id.to_owned();
        self.run(move |conn| {
            let used: Option<bool> = conn
                .query_row(
                    "SELECT last_used IS NOT NULL FROM clients WHERE client_id = ?1",
                    params![id],
                    |row| row.get(0),
                )
                .optional()?;
            Ok(used.unwrap_or(false))
        })
        .await
    }

    async fn used_clients_among(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let ids = ids.to_vec();
        self.run(move |conn| {
            let mut used = Vec::new();
            for chunk in ids.chunks(500) {
                let marks = vec!["?"; chunk.len()].join(", ");
                let mut stmt = conn.prepare(&format!(
                    "SELECT client_id FROM clients
                     WHERE last_used IS NOT NULL AND client_id IN ({marks})"
                ))?;
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(chunk), |row| row.get(0))?
                    .collect::<Result<Vec<String>, _>>()?;
                used.extend(rows);
            }
            Ok(used)
        })
        .await
    }

    async fn unused_clients(&self) -> Result<u64, StoreError> {
        self.run(|conn| {
            let n: i64 = conn.query_row(
                "SELECT COUNT(*) FROM clients WHERE last_used IS NULL",
                [],
                |row| row.get(0),
            )?;
            Ok(uint(n))
        })
        .await
    }

    async fn delete_unused_client(&self, client_id: &str) -> Result<bool, StoreError> {
        let id = client_id.to_owned();
        self.run(move |conn| {
            let n = conn.execute(
                "DELETE FROM clients WHERE client_id = ?1 AND last_used IS NULL",
                params![id],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn prune_unused_clients(&self, cutoff: u64) -> Result<u64, StoreError> {
        self.run(move |conn| {
            let n = conn.execute(
                "DELETE FROM clients WHERE last_used IS NULL AND created_at < ?1",
                params![int(cutoff)],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn put_code(&self, code: &StoredCode) -> Result<(), StoreError> {
        let c = code.clone();
        self.run(move |conn| {
            conn.execute(
                &format!("INSERT INTO codes ({CODE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
                params![
                    c.code_sha256,
                    c.client_id,
                    c.redirect_uri,
                    c.redirect_uri_given,
                    c.code_challenge,
                    c.resource,
                    c.scope,
                    c.subject,
                    int(c.expires_at),
                    c.redeemed_family
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn code(&self, code_sha256: &str) -> Result<Option<StoredCode>, StoreError> {
        let hash = code_sha256.to_owned();
        self.run(move |conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {CODE_COLUMNS} FROM codes WHERE code_sha256 = ?1"),
                    params![hash],
                    stored_code,
                )
                .optional()?)
        })
        .await
    }

    async fn redeem_code(
        &self,
        code_sha256: &str,
        family: &str,
        now: u64,
    ) -> Result<bool, StoreError> {
        let hash = code_sha256.to_owned();
        let family = family.to_owned();
        self.run(move |conn| {
            let n = conn.execute(
                "UPDATE codes SET redeemed_family = ?2
                 WHERE code_sha256 = ?1 AND redeemed_family IS NULL AND expires_at > ?3",
                params![hash, family, int(now)],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn put_pending(
        &self,
        id_sha256: &str,
        caller: &str,
        document: &str,
        expires_at: u64,
        per_caller: u32,
        global: u32,
    ) -> Result<(), StoreError> {
        let id = id_sha256.to_owned();
        let caller = caller.to_owned();
        let document = document.to_owned();
        let now = crate::now();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM pending_signins WHERE expires_at <= ?1",
                params![int(now)],
            )?;
            let own: i64 = tx.query_row(
                "SELECT COUNT(*) FROM pending_signins WHERE caller = ?1",
                params![caller],
                |row| row.get(0),
            )?;
            let over = own - i64::from(per_caller) + 1;
            if over > 0 {
                tx.execute(
                    "DELETE FROM pending_signins WHERE seq IN
                     (SELECT seq FROM pending_signins WHERE caller = ?1 ORDER BY seq LIMIT ?2)",
                    params![caller, over],
                )?;
            }
            loop {
                let total: i64 =
                    tx.query_row("SELECT COUNT(*) FROM pending_signins", [], |row| row.get(0))?;
                if total < i64::from(global) {
                    break;
                }
                // The largest holder's oldest goes; among equal holders, the one whose
                // oldest is the newest (sign-ins under way survive).
                let n = tx.execute(
                    "DELETE FROM pending_signins WHERE seq = (
                        SELECT MIN(seq) FROM pending_signins WHERE caller = (
                            SELECT caller FROM pending_signins GROUP BY caller
                            ORDER BY COUNT(*) DESC, MIN(seq) DESC LIMIT 1))",
                    [],
                )?;
                if n == 0 {
                    break;
                }
            }
            tx.execute(
                "INSERT INTO pending_signins (id_sha256, caller, document, expires_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![id, caller, document, int(expires_at)],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn take_pending(&self, id_sha256: &str, now: u64) -> Result<Option<String>, StoreError> {
        let id = id_sha256.to_owned();
        self.run(move |conn| {
            let row: Option<(String, i64)> = conn
                .query_row(
                    "DELETE FROM pending_signins WHERE id_sha256 = ?1 RETURNING document, expires_at",
                    params![id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            Ok(row.and_then(|(document, expires_at)| (uint(expires_at) > now).then_some(document)))
        })
        .await
    }

    async fn put_refresh(&self, record: &RefreshRecord) -> Result<(), StoreError> {
        let r = record.clone();
        self.run(move |conn| {
            conn.execute(
                &format!("INSERT INTO refresh_tokens ({REFRESH_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    r.token_sha256,
                    r.family,
                    r.client_id,
                    r.subject,
                    r.scope,
                    r.resource,
                    int(r.issued_at),
                    int(r.expires_at),
                    r.jkt
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn peek_refresh(
        &self,
        token_sha256: &str,
        now: u64,
        grace: u64,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        let hash = token_sha256.to_owned();
        self.run(move |conn| {
            Ok(conn
                .query_row(
                    &format!(
                        "SELECT {REFRESH_COLUMNS} FROM refresh_tokens
                         WHERE token_sha256 = ?1 AND revoked_at IS NULL AND expires_at > ?2
                         AND (used_at IS NULL OR used_at > ?2 - ?3)"
                    ),
                    params![hash, int(now), int(grace)],
                    refresh_record,
                )
                .optional()?)
        })
        .await
    }

    async fn use_refresh(
        &self,
        token_sha256: &str,
        client_id: &str,
        now: u64,
        grace: u64,
        successor: &RefreshRecord,
    ) -> Result<RefreshUse, StoreError> {
        let hash = token_sha256.to_owned();
        let client_id = client_id.to_owned();
        let successor = successor.clone();
        self.run(move |conn| {
            // BEGIN IMMEDIATE: the write lock is taken first, so this rotation and every
            // revocation (which takes it too) run one after the other, across processes.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row = tx
                .query_row(
                    &format!(
                        "SELECT {REFRESH_COLUMNS}, used_at, revoked_at, grace_uses
                         FROM refresh_tokens WHERE token_sha256 = ?1"
                    ),
                    params![hash],
                    |row| {
                        Ok((
                            refresh_record(row)?,
                            row.get::<_, Option<i64>>(9)?,
                            row.get::<_, Option<i64>>(10)?,
                            row.get::<_, i64>(11)?,
                        ))
                    },
                )
                .optional()?;
            let outcome = match row {
                None => RefreshUse::Invalid,
                Some((record, ..)) if record.client_id != client_id => RefreshUse::Invalid,
                Some((_, _, Some(_), _)) => RefreshUse::Invalid,
                Some((record, _, None, _)) if record.expires_at <= now => RefreshUse::Invalid,
                Some((record, None, None, _)) => {
                    tx.execute(
                        "UPDATE refresh_tokens SET used_at = ?2 WHERE token_sha256 = ?1",
                        params![hash, int(now)],
                    )?;
                    RefreshUse::Fresh(record)
                }
                Some((record, Some(used_at), None, uses)) if int(now) - used_at < int(grace) => {
                    if uses >= super::GRACE_REISSUES {
                        RefreshUse::GraceSpent
                    } else {
                        tx.execute(
                            "UPDATE refresh_tokens SET grace_uses = grace_uses + 1
                             WHERE token_sha256 = ?1",
                            params![hash],
                        )?;
                        RefreshUse::Grace(record)
                    }
                }
                Some((record, Some(_), None, _)) => {
                    revoke_family_in(&tx, &record.family, now)?;
                    RefreshUse::Reused(record)
                }
            };
            if let RefreshUse::Fresh(record) | RefreshUse::Grace(record) = &outcome {
                // The family is checked under the same lock the insertion holds: a revoked
                // family never gets a live token.
                let revoked: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM refresh_tokens
                                    WHERE family = ?1 AND revoked_at IS NOT NULL)",
                    params![record.family],
                    |row| row.get(0),
                )?;
                if revoked {
                    // Leave the presented token as it was (dropping `tx` rolls back).
                    return Ok(RefreshUse::Invalid);
                }
                tx.execute(
                    &format!(
                        "INSERT INTO refresh_tokens ({REFRESH_COLUMNS})
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                    ),
                    params![
                        successor.token_sha256,
                        record.family,
                        record.client_id,
                        record.subject,
                        successor.scope,
                        record.resource,
                        int(successor.issued_at),
                        int(successor.expires_at),
                        record.jkt
                    ],
                )?;
            }
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    async fn revoke_family(&self, family: &str) -> Result<bool, StoreError> {
        let family = family.to_owned();
        let now = crate::now();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let live = revoke_family_in(&tx, &family, now)?;
            tx.commit()?;
            Ok(live)
        })
        .await
    }

    async fn revoke_refresh(
        &self,
        token_sha256: &str,
        client_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let hash = token_sha256.to_owned();
        let client_id = client_id.to_owned();
        let now = crate::now();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let family: Option<String> = tx
                .query_row(
                    "SELECT family FROM refresh_tokens WHERE token_sha256 = ?1 AND client_id = ?2",
                    params![hash, client_id],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(family) = &family {
                revoke_family_in(&tx, family, now)?;
            }
            tx.commit()?;
            Ok(family)
        })
        .await
    }

    async fn family_revoked(&self, family: &str) -> Result<bool, StoreError> {
        let family = family.to_owned();
        self.run(move |conn| {
            Ok(conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM refresh_tokens
                                WHERE family = ?1 AND revoked_at IS NOT NULL)",
                params![family],
                |row| row.get(0),
            )?)
        })
        .await
    }

    async fn put_opaque(&self, token: &OpaqueToken) -> Result<(), StoreError> {
        let t = token.clone();
        self.run(move |conn| {
            // Under the write lock, like a rotation: a family revoked before stays so.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let revoked: Option<i64> = match &t.family {
                Some(family) => tx
                    .query_row(
                        "SELECT MAX(revoked_at) FROM refresh_tokens WHERE family = ?1",
                        params![family],
                        |row| row.get(0),
                    )
                    .optional()?
                    .flatten(),
                None => None,
            };
            tx.execute(
                &format!(
                    "INSERT INTO opaque_tokens ({OPAQUE_COLUMNS}, revoked_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ),
                params![
                    t.token_sha256,
                    t.family,
                    t.client_id,
                    t.subject,
                    t.scope,
                    t.resource,
                    t.jti,
                    t.jkt,
                    int(t.issued_at),
                    int(t.expires_at),
                    revoked
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn opaque(
        &self,
        token_sha256: &str,
        now: u64,
    ) -> Result<Option<OpaqueToken>, StoreError> {
        let hash = token_sha256.to_owned();
        self.run(move |conn| {
            Ok(conn
                .query_row(
                    &format!(
                        "SELECT {OPAQUE_COLUMNS} FROM opaque_tokens
                         WHERE token_sha256 = ?1 AND revoked_at IS NULL AND expires_at > ?2"
                    ),
                    params![hash, int(now)],
                    opaque_token,
                )
                .optional()?)
        })
        .await
    }

    async fn revoke_opaque(
        &self,
        token_sha256: &str,
        client_id: &str,
    ) -> Result<Option<Option<String>>, StoreError> {
        let hash = token_sha256.to_owned();
        let client_id = client_id.to_owned();
        let now = crate::now();
        self.run(move |conn| {
            let family: Option<Option<String>> = conn
                .query_row(
                    "UPDATE opaque_tokens SET revoked_at = COALESCE(revoked_at, ?3)
                     WHERE token_sha256 = ?1 AND client_id = ?2 RETURNING family",
                    params![hash, client_id, int(now)],
                    |row| row.get(0),
                )
                .optional()?;
            Ok(family)
        })
        .await
    }

    async fn grants(
        &self,
        subject: Option<&str>,
        client_id: Option<&str>,
        now: u64,
        limit: u32,
    ) -> Result<Vec<Grant>, StoreError> {
        let subject = subject.map(str::to_owned);
        let client_id = client_id.map(str::to_owned);
        self.run(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT family, MIN(client_id), MIN(subject),
                    (SELECT r2.scope FROM refresh_tokens r2 WHERE r2.family = r.family
                     ORDER BY r2.issued_at DESC, r2.rowid DESC LIMIT 1),
                    MIN(resource), MIN(issued_at), MAX(issued_at), MAX(expires_at)
                 FROM refresh_tokens r
                 WHERE (?1 IS NULL OR subject = ?1) AND (?2 IS NULL OR client_id = ?2)
                 GROUP BY family
                 HAVING SUM(CASE WHEN revoked_at IS NULL AND used_at IS NULL AND expires_at > ?3
                            THEN 1 ELSE 0 END) > 0
                 ORDER BY MAX(issued_at) DESC, family LIMIT ?4",
            )?;
            let grants = stmt
                .query_map(
                    params![subject, client_id, int(now), i64::from(limit.min(1000))],
                    |row| {
                        Ok(Grant {
                            family: row.get(0)?,
                            client_id: row.get(1)?,
                            subject: row.get(2)?,
                            scope: row.get(3)?,
                            resource: row.get(4)?,
                            created_at: uint(row.get(5)?),
                            last_used: uint(row.get(6)?),
                            expires_at: uint(row.get(7)?),
                        })
                    },
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(grants)
        })
        .await
    }

    async fn use_assertion_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: u64,
    ) -> Result<bool, StoreError> {
        let client_id = client_id.to_owned();
        let jti = jti.to_owned();
        let now = crate::now();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM assertion_jtis WHERE client_id = ?1 AND jti = ?2 AND expires_at <= ?3",
                params![client_id, jti, int(now)],
            )?;
            let n = tx.execute(
                "INSERT OR IGNORE INTO assertion_jtis (client_id, jti, expires_at) VALUES (?1, ?2, ?3)",
                params![client_id, jti, int(expires_at)],
            )?;
            tx.commit()?;
            Ok(n == 1)
        })
        .await
    }

    async fn cimd_document(&self, url: &str) -> Result<Option<(Client, u64)>, StoreError> {
        let url = url.to_owned();
        let row: Option<(String, i64)> = self
            .run(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT document, fetched_at FROM cimd_documents WHERE url = ?1",
                        params![url],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?)
            })
            .await?;
        row.map(|(d, at)| Ok((serde_json::from_str(&d).map_err(json_error)?, uint(at))))
            .transpose()
    }

    async fn put_cimd_document(
        &self,
        url: &str,
        client: &Client,
        fetched_at: u64,
    ) -> Result<(), StoreError> {
        let url = url.to_owned();
        let document = serde_json::to_string(client).map_err(json_error)?;
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO cimd_documents (url, document, fetched_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(url) DO UPDATE SET document = excluded.document, fetched_at = excluded.fetched_at",
                params![url, document, int(fetched_at)],
            )?;
            Ok(())
        })
        .await
    }

    async fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.run(|conn| {
            let mut stmt = conn.prepare(
                "SELECT kid, pkcs8, created_at, retired_at FROM signing_keys
                 ORDER BY created_at DESC, rowid DESC",
            )?;
            let keys = stmt
                .query_map([], |row| {
                    Ok(StoredKey {
                        kid: row.get(0)?,
                        pkcs8: row.get(1)?,
                        created_at: uint(row.get(2)?),
                        retired_at: row.get::<_, Option<i64>>(3)?.map(uint),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(keys)
        })
        .await
    }

    async fn create_first_key(&self, key: &StoredKey) -> Result<bool, StoreError> {
        let key = key.clone();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: i64 = tx.query_row(
                "SELECT COUNT(*) FROM signing_keys WHERE retired_at IS NULL",
                [],
                |row| row.get(0),
            )?;
            if current > 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO signing_keys (kid, pkcs8, created_at) VALUES (?1, ?2, ?3)",
                params![key.kid, key.pkcs8, int(key.created_at)],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn rotate_in(&self, key: &StoredKey, now: u64) -> Result<(), StoreError> {
        let key = key.clone();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "UPDATE signing_keys SET retired_at = ?1 WHERE retired_at IS NULL",
                params![int(now)],
            )?;
            tx.execute(
                "INSERT INTO signing_keys (kid, pkcs8, created_at) VALUES (?1, ?2, ?3)",
                params![key.kid, key.pkcs8, int(key.created_at)],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn prune_keys(&self, cutoff: u64) -> Result<(), StoreError> {
        self.run(move |conn| {
            conn.execute(
                "DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < ?1",
                params![int(cutoff)],
            )?;
            Ok(())
        })
        .await
    }

    async fn replace_key(&self, kid: &str, old: &[u8], new: &[u8]) -> Result<bool, StoreError> {
        let (kid, old, new) = (kid.to_owned(), old.to_vec(), new.to_vec());
        self.run(move |conn| {
            let n = conn.execute(
                "UPDATE signing_keys SET pkcs8 = ?3 WHERE kid = ?1 AND pkcs8 = ?2",
                params![kid, old, new],
            )?;
            if n == 1 {
                // The key was in clear: leave no copy in free pages or the WAL (a file
                // of a release without secure_delete may still have older ones).
                let checkpoint = conn.execute_batch("VACUUM").and_then(|()| {
                    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                        row.get::<_, i64>(0)
                    })
                });
                match checkpoint {
                    Ok(0) => {}
                    Ok(_) => tracing::warn!(
                        "the database file was compacted but another process kept its WAL from being truncated; it is truncated at a later checkpoint"
                    ),
                    Err(e) => tracing::warn!(
                        "could not compact the database file after encrypting the signing key ({e}); the clear key may remain in free pages until a VACUUM"
                    ),
                }
            }
            Ok(n == 1)
        })
        .await
    }

    async fn record_event(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let e = event.clone();
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO audit_events (at, kind, client_id, subject, resource, scope, address, outcome, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    int(e.at),
                    e.kind,
                    e.client_id,
                    e.subject,
                    e.resource,
                    e.scope,
                    e.address,
                    e.outcome,
                    e.detail
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let f = filter.clone();
        self.run(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {EVENT_COLUMNS} FROM audit_events
                 WHERE (?1 IS NULL OR client_id = ?1) AND (?2 IS NULL OR subject = ?2)
                 AND (?3 IS NULL OR kind = ?3) AND (?4 IS NULL OR at >= ?4)
                 AND (?5 IS NULL OR at < ?5) AND (?6 IS NULL OR id < ?6)
                 ORDER BY id DESC LIMIT ?7"
            ))?;
            let events = stmt
                .query_map(
                    params![
                        f.client_id,
                        f.subject,
                        f.kind,
                        f.since.map(int),
                        f.until.map(int),
                        f.before_id,
                        i64::from(f.limit.min(1000))
                    ],
                    audit_event,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(events)
        })
        .await
    }

    async fn purge(
        &self,
        now: u64,
        cimd_cutoff: u64,
        audit_cutoff: u64,
        batch: u32,
    ) -> Result<Purged, StoreError> {
        self.run(move |conn| {
            let day_ago = now.saturating_sub(86_400);
            Ok(Purged {
                codes: delete_batch(
                    conn,
                    "codes",
                    "expires_at < ?1",
                    now.saturating_sub(600),
                    batch,
                )?,
                pending: delete_batch(conn, "pending_signins", "expires_at <= ?1", now, batch)?,
                refresh_tokens: delete_batch(
                    conn,
                    "refresh_tokens",
                    "expires_at < ?1 OR revoked_at < ?1",
                    day_ago,
                    batch,
                )?,
                assertions: delete_batch(conn, "assertion_jtis", "expires_at <= ?1", now, batch)?,
                cimd_documents: delete_batch(
                    conn,
                    "cimd_documents",
                    "fetched_at < ?1",
                    cimd_cutoff,
                    batch,
                )?,
                audit_events: delete_batch(conn, "audit_events", "at < ?1", audit_cutoff, batch)?,
                opaque_tokens: delete_batch(conn, "opaque_tokens", "expires_at <= ?1", now, batch)?,
            })
        })
        .await
    }
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The schema the releases before migrations created (migration 1's text).
    const OLD_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS clients (client_id TEXT PRIMARY KEY, document TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_sha256 TEXT PRIMARY KEY, family TEXT NOT NULL, client_id TEXT NOT NULL,
    subject TEXT NOT NULL, scope TEXT NOT NULL, resource TEXT NOT NULL,
    expires_at INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens(family);
CREATE TABLE IF NOT EXISTS used_clients (client_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid TEXT PRIMARY KEY, pkcs8 BLOB NOT NULL, created_at INTEGER NOT NULL, retired_at INTEGER);
";

    fn old_data_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bmm-as.sqlite3");
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .unwrap();
        }
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(OLD_SCHEMA).unwrap();
        let client = |id: &str| {
            format!(
                r#"{{"client_id":"{id}","secret_sha256":null,"redirect_uris":["http://127.0.0.1/cb"],"client_name":"Old","token_endpoint_auth_method":"none","created_at":1700000000}}"#
            )
        };
        conn.execute(
            "INSERT INTO clients (client_id, document) VALUES ('bmm_used', ?1), ('bmm_unused', ?2)",
            params![client("bmm_used"), client("bmm_unused")],
        )
        .unwrap();
        conn.execute("INSERT INTO used_clients VALUES ('bmm_used')", [])
            .unwrap();
        let far = int(crate::now() + 86_400);
        for (hash, used, revoked) in [("live", 0, 0), ("spent", 1, 0), ("dead", 0, 1)] {
            conn.execute(
                "INSERT INTO refresh_tokens VALUES (?1, 'fam', 'bmm_used', 'alice', 'read', 'https://mcp.example/', ?2, ?3, ?4)",
                params![hash, far, used, revoked],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO signing_keys VALUES ('kid-old', x'3082', 1700000000, NULL)",
            [],
        )
        .unwrap();
        dir
    }

    #[tokio::test]
    async fn a_data_dir_of_the_previous_release_is_migrated_without_losing_anything() {
        let dir = old_data_dir();
        let store = SqliteStore::open(dir.path()).unwrap();
        let client = store.client("bmm_used").await.unwrap().unwrap();
        assert_eq!(client.client_name.as_deref(), Some("Old"));
        assert_eq!(client.created_at, 1_700_000_000);
        assert!(client.grant_types.is_empty());
        assert!(store.client_used("bmm_used").await.unwrap());
        assert!(!store.client_used("bmm_unused").await.unwrap());
        assert_eq!(store.unused_clients().await.unwrap(), 1);

        let t = crate::now();
        let live = store.peek_refresh("live", t, 5).await.unwrap().unwrap();
        assert_eq!(
            (live.subject.as_str(), live.family.as_str()),
            ("alice", "fam")
        );
        assert_eq!(store.peek_refresh("spent", t, 5).await.unwrap(), None);
        assert_eq!(store.peek_refresh("dead", t, 5).await.unwrap(), None);
        // A token used before the upgrade is a reuse, not within a grace period.
        let successor = RefreshRecord {
            token_sha256: "next".into(),
            family: String::new(),
            client_id: String::new(),
            subject: String::new(),
            scope: "read".into(),
            resource: String::new(),
            issued_at: t,
            expires_at: t + 60,
            jkt: None,
        };
        assert!(matches!(
            store
                .use_refresh("spent", "bmm_used", t, 5, &successor)
                .await
                .unwrap(),
            RefreshUse::Reused(_)
        ));
        assert_eq!(store.peek_refresh("live", t, 5).await.unwrap(), None);

        let keys = store.keys().await.unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            (keys[0].kid.as_str(), keys[0].pkcs8.as_slice()),
            ("kid-old", &[0x30, 0x82][..])
        );
        drop(store);
        // Opening again applies nothing twice.
        let again = SqliteStore::open(dir.path()).unwrap();
        assert!(again.client("bmm_unused").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn used_clients_among_answers_for_many_ids_at_once() {
        let store = SqliteStore::in_memory().unwrap();
        let mut ids = Vec::new();
        for i in 0..1200 {
            let client = Client {
                client_id: format!("bmm_{i}"),
                secret_sha256: None,
                redirect_uris: Vec::new(),
                client_name: None,
                token_endpoint_auth_method: "none".to_owned(),
                created_at: 1,
                grant_types: Vec::new(),
                jwks: None,
                jwks_uri: None,
                scope: None,
            };
            store.put_client(&client).await.unwrap();
            if i % 100 == 7 {
                store.mark_client_used(&client.client_id, 2).await.unwrap();
            }
            ids.push(client.client_id);
        }
        ids.push("bmm_never_registered".to_owned());
        let mut used = store.used_clients_among(&ids).await.unwrap();
        used.sort();
        assert_eq!(used.len(), 12);
        assert!(used.contains(&"bmm_1107".to_owned()));
        assert_eq!(store.unused_clients().await.unwrap(), 1188);
    }

    #[tokio::test]
    async fn a_database_of_a_newer_release_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path()).unwrap());
        let path = dir.path().join("bmm-as.sqlite3");
        let future = migrate::LATEST + 1;
        Connection::open(&path)
            .unwrap()
            .execute(
                "INSERT INTO bmm_schema_migrations VALUES (?1, 0)",
                params![future],
            )
            .unwrap();
        let error = SqliteStore::open(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains(&format!("schema is version {future}"))
                && error.contains("do not downgrade"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn two_handles_on_one_file_redeem_a_code_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = SqliteStore::open(dir.path()).unwrap();
        let b = SqliteStore::open(dir.path()).unwrap();
        let code = StoredCode {
            code_sha256: "c".to_owned(),
            client_id: "x".to_owned(),
            redirect_uri: "http://127.0.0.1/cb".to_owned(),
            redirect_uri_given: true,
            code_challenge: "ch".to_owned(),
            resource: "r".to_owned(),
            scope: String::new(),
            subject: "alice".to_owned(),
            expires_at: crate::now() + 60,
            redeemed_family: None,
        };
        a.put_code(&code).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..20 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                store
                    .redeem_code("c", &format!("f{i}"), crate::now())
                    .await
                    .unwrap()
            }));
        }
        let mut won = 0;
        for task in tasks {
            won += usize::from(task.await.unwrap());
        }
        assert_eq!(won, 1);
        assert!(
            b.code("c")
                .await
                .unwrap()
                .unwrap()
                .redeemed_family
                .is_some()
        );
    }

    fn opaque(hash: &str, family: Option<&str>, expires_at: u64) -> OpaqueToken {
        OpaqueToken {
            token_sha256: hash.to_owned(),
            family: family.map(str::to_owned),
            client_id: "c".to_owned(),
            subject: "alice".to_owned(),
            scope: "read".to_owned(),
            resource: "https://mcp.example".to_owned(),
            jti: format!("j-{hash}"),
            jkt: Some("thumb".to_owned()),
            issued_at: 1,
            expires_at,
        }
    }

    #[tokio::test]
    async fn opaque_tokens_are_revoked_with_their_grant_and_purged_after_expiry() {
        let store = SqliteStore::in_memory().unwrap();
        let t = crate::now();
        let refresh = RefreshRecord {
            token_sha256: "r".into(),
            family: "fam".into(),
            client_id: "c".into(),
            subject: "alice".into(),
            scope: "read".into(),
            resource: "https://mcp.example".into(),
            issued_at: t,
            expires_at: t + 60,
            jkt: Some("thumb".into()),
        };
        store.put_refresh(&refresh).await.unwrap();
        assert_eq!(
            store
                .peek_refresh("r", t, 5)
                .await
                .unwrap()
                .unwrap()
                .jkt
                .as_deref(),
            Some("thumb")
        );
        store
            .put_opaque(&opaque("a", Some("fam"), t + 60))
            .await
            .unwrap();
        store.put_opaque(&opaque("b", None, t + 60)).await.unwrap();
        store.put_opaque(&opaque("old", None, t - 1)).await.unwrap();
        assert_eq!(
            store.opaque("a", t).await.unwrap().unwrap().jkt.as_deref(),
            Some("thumb")
        );
        assert!(store.opaque("old", t).await.unwrap().is_none());
        assert!(!store.family_revoked("fam").await.unwrap());
        assert!(store.revoke_family("fam").await.unwrap());
        assert!(store.family_revoked("fam").await.unwrap());
        assert!(store.opaque("a", t).await.unwrap().is_none());
        assert!(store.opaque("b", t).await.unwrap().is_some());
        // A token stored for a family already revoked is never live.
        store
            .put_opaque(&opaque("late", Some("fam"), t + 60))
            .await
            .unwrap();
        assert!(store.opaque("late", t).await.unwrap().is_none());
        // Only its owner revokes one.
        assert_eq!(store.revoke_opaque("b", "other").await.unwrap(), None);
        assert_eq!(store.revoke_opaque("b", "c").await.unwrap(), Some(None));
        assert!(store.opaque("b", t).await.unwrap().is_none());
        let purged = store.purge(t, 0, 0, 100).await.unwrap();
        assert_eq!(purged.opaque_tokens, 1, "only the expired one");
    }

    #[tokio::test]
    async fn purge_deletes_in_batches_and_keeps_what_is_live() {
        let store = SqliteStore::in_memory().unwrap();
        let t = 10_000_000;
        for i in 0..5 {
            let e = AuditEvent {
                id: 0,
                at: t - 100 + i,
                kind: "sign_in".to_owned(),
                client_id: None,
                subject: Some("alice".to_owned()),
                resource: None,
                scope: None,
                address: None,
                outcome: "ok".to_owned(),
                detail: None,
            };
            store.record_event(&e).await.unwrap();
        }
        let p = store.purge(t, 0, t - 97, 2).await.unwrap();
        assert_eq!(p.audit_events, 2);
        let p = store.purge(t, 0, t - 97, 2).await.unwrap();
        assert_eq!(p.audit_events, 1);
        let p = store.purge(t, 0, t - 97, 2).await.unwrap();
        assert_eq!(p, Purged::default());
        let left = store
            .events(&AuditFilter {
                limit: 10,
                ..AuditFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(left.len(), 2);
        assert!(left[0].id > left[1].id, "newest first");
    }
}
