use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Client, RefreshRecord, RefreshUse, Store, StoredKey};
use crate::error::StoreError;

/// The embedded store: one SQLite database file (WAL mode).
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_sha256 TEXT PRIMARY KEY,
    family TEXT NOT NULL,
    client_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    scope TEXT NOT NULL,
    resource TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens(family);
CREATE TABLE IF NOT EXISTS used_clients (
    client_id TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid TEXT PRIMARY KEY,
    pkcs8 BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER
);
";

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

/// A refresh record from a row whose first six columns are family, client_id, subject,
/// scope, resource, expires_at.
fn refresh_record(token_sha256: &str, row: &rusqlite::Row<'_>) -> rusqlite::Result<RefreshRecord> {
    Ok(RefreshRecord {
        token_sha256: token_sha256.to_owned(),
        family: row.get(0)?,
        client_id: row.get(1)?,
        subject: row.get(2)?,
        scope: row.get(3)?,
        resource: row.get(4)?,
        expires_at: row.get::<_, i64>(5)? as u64,
    })
}

impl SqliteStore {
    /// Opens (creating if needed) `bmm-as.sqlite3` in `dir`.
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
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        for suffix in ["-wal", "-shm"] {
            private::prepare_file(&dir.join(format!("bmm-as.sqlite3{suffix}")), false)?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn
            .lock()
            .map_err(|_| StoreError("store lock poisoned".to_owned()))
    }
}

impl Store for SqliteStore {
    fn put_client(&self, client: &Client) -> Result<(), StoreError> {
        let document = serde_json::to_string(client).map_err(|e| StoreError(e.to_string()))?;
        self.conn()?.execute(
            "INSERT INTO clients (client_id, document) VALUES (?1, ?2)",
            params![client.client_id, document],
        )?;
        Ok(())
    }

    fn client(&self, client_id: &str) -> Result<Option<Client>, StoreError> {
        let document: Option<String> = self
            .conn()?
            .query_row(
                "SELECT document FROM clients WHERE client_id = ?1",
                params![client_id],
                |row| row.get(0),
            )
            .optional()?;
        document
            .map(|d| serde_json::from_str(&d).map_err(|e| StoreError(e.to_string())))
            .transpose()
    }

    fn put_refresh(&self, r: &RefreshRecord) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO refresh_tokens (token_sha256, family, client_id, subject, scope, resource, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![r.token_sha256, r.family, r.client_id, r.subject, r.scope, r.resource, r.expires_at as i64],
        )?;
        Ok(())
    }

    fn peek_refresh(
        &self,
        token_sha256: &str,
        now: u64,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        let record = self
            .conn()?
            .query_row(
                "SELECT family, client_id, subject, scope, resource, expires_at FROM refresh_tokens
                 WHERE token_sha256 = ?1 AND used = 0 AND revoked = 0 AND expires_at > ?2",
                params![token_sha256, now as i64],
                |row| refresh_record(token_sha256, row),
            )
            .optional()?;
        Ok(record)
    }

    fn use_refresh(
        &self,
        token_sha256: &str,
        client_id: &str,
        now: u64,
    ) -> Result<RefreshUse, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let row = tx
            .query_row(
                "SELECT family, client_id, subject, scope, resource, expires_at, used, revoked
                 FROM refresh_tokens WHERE token_sha256 = ?1 AND client_id = ?2",
                params![token_sha256, client_id],
                |row| {
                    Ok((
                        refresh_record(token_sha256, row)?,
                        row.get::<_, bool>(6)?,
                        row.get::<_, bool>(7)?,
                    ))
                },
            )
            .optional()?;
        let outcome = match row {
            None => RefreshUse::Invalid,
            Some((_, _, true)) => RefreshUse::Invalid,
            Some((record, true, false)) => {
                tx.execute(
                    "UPDATE refresh_tokens SET revoked = 1 WHERE family = ?1",
                    params![record.family],
                )?;
                RefreshUse::Reused
            }
            Some((record, false, false)) if record.expires_at <= now => RefreshUse::Invalid,
            Some((record, false, false)) => {
                tx.execute(
                    "UPDATE refresh_tokens SET used = 1 WHERE token_sha256 = ?1",
                    params![token_sha256],
                )?;
                RefreshUse::Fresh(record)
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    fn revoke_family(&self, family: &str) -> Result<(), StoreError> {
        self.conn()?.execute(
            "UPDATE refresh_tokens SET revoked = 1 WHERE family = ?1",
            params![family],
        )?;
        Ok(())
    }

    fn revoke_refresh(&self, token_sha256: &str, client_id: &str) -> Result<bool, StoreError> {
        let conn = self.conn()?;
        let family: Option<String> = conn
            .query_row(
                "SELECT family FROM refresh_tokens WHERE token_sha256 = ?1 AND client_id = ?2",
                params![token_sha256, client_id],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(family) = &family {
            conn.execute(
                "UPDATE refresh_tokens SET revoked = 1 WHERE family = ?1",
                params![family],
            )?;
        }
        Ok(family.is_some())
    }

    fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT kid, pkcs8, created_at, retired_at FROM signing_keys ORDER BY created_at DESC, rowid DESC")?;
        let keys = stmt
            .query_map([], |row| {
                Ok(StoredKey {
                    kid: row.get(0)?,
                    pkcs8: row.get(1)?,
                    created_at: row.get::<_, i64>(2)? as u64,
                    retired_at: row.get::<_, Option<i64>>(3)?.map(|v| v as u64),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(keys)
    }

    fn rotate_in(&self, key: &StoredKey, now: u64) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE signing_keys SET retired_at = ?1 WHERE retired_at IS NULL",
            params![now as i64],
        )?;
        tx.execute(
            "INSERT INTO signing_keys (kid, pkcs8, created_at) VALUES (?1, ?2, ?3)",
            params![key.kid, key.pkcs8, key.created_at as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn prune_keys(&self, cutoff: u64) -> Result<(), StoreError> {
        self.conn()?.execute(
            "DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < ?1",
            params![cutoff as i64],
        )?;
        Ok(())
    }

    fn mark_client_used(&self, client_id: &str) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT OR IGNORE INTO used_clients (client_id)
             SELECT client_id FROM clients WHERE client_id = ?1",
            params![client_id],
        )?;
        Ok(())
    }

    fn client_used(&self, client_id: &str) -> Result<bool, StoreError> {
        let used: Option<i64> = self
            .conn()?
            .query_row(
                "SELECT 1 FROM used_clients WHERE client_id = ?1",
                params![client_id],
                |row| row.get(0),
            )
            .optional()?;
        Ok(used.is_some())
    }

    fn unused_clients(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn()?.query_row(
            "SELECT COUNT(*) FROM clients WHERE client_id NOT IN (SELECT client_id FROM used_clients)",
            [],
            |row| row.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    fn delete_unused_client(&self, client_id: &str) -> Result<bool, StoreError> {
        let n = self.conn()?.execute(
            "DELETE FROM clients WHERE client_id = ?1
             AND client_id NOT IN (SELECT client_id FROM used_clients)",
            params![client_id],
        )?;
        Ok(n > 0)
    }

    fn prune_unused_clients(&self, cutoff: u64) -> Result<usize, StoreError> {
        let n = self.conn()?.execute(
            "DELETE FROM clients WHERE client_id NOT IN (SELECT client_id FROM used_clients)
             AND json_extract(document, '$.created_at') < ?1",
            params![cutoff as i64],
        )?;
        Ok(n)
    }
}
