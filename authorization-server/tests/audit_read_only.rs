//! `bmm-as audit` reads the database it is pointed at and changes nothing: no file in a
//! directory without a database, no migration of a database at another schema version
//! (a running older server would break), through the built binary on SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `bmm-as audit --data-dir <dir>`: (exit code, stderr).
fn audit(dir: &Path) -> (Option<i32>, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bmm-as"))
        .arg("audit")
        .arg("--data-dir")
        .arg(dir)
        .env_remove("BMM_AS_DATABASE_URL")
        .env_remove("BMM_AS_CONFIG")
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn audit_on_a_directory_without_a_database_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = audit(dir.path());
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("no bmm-as database in"), "{err}");
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

/// The schema of the first versioned release (migration 1), recorded as version 1.
const VERSION_1: &str = "
CREATE TABLE bmm_schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);
INSERT INTO bmm_schema_migrations VALUES (1, 0);
CREATE TABLE clients (client_id TEXT PRIMARY KEY, document TEXT NOT NULL);
CREATE TABLE refresh_tokens (
    token_sha256 TEXT PRIMARY KEY, family TEXT NOT NULL, client_id TEXT NOT NULL,
    subject TEXT NOT NULL, scope TEXT NOT NULL, resource TEXT NOT NULL,
    expires_at INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family);
CREATE TABLE used_clients (client_id TEXT PRIMARY KEY);
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY, pkcs8 BLOB NOT NULL, created_at INTEGER NOT NULL, retired_at INTEGER);
";

#[test]
fn audit_refuses_a_database_at_an_older_schema_version_and_leaves_it_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bmm-as.sqlite3");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(VERSION_1).unwrap();
    }
    let before = std::fs::read(&path).unwrap();

    let (code, err) = audit(dir.path());
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("the database schema is version 1; this bmm-as reads version")
            && err.contains("use the bmm-as release that serves it"),
        "{err}"
    );

    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file is unchanged"
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM bmm_schema_migrations")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, [1], "no migration recorded");
}
