//! Signing keys encrypted at rest with `BMM_AS_KEY_ENCRYPTION_KEY` (see `keys` rule 4),
//! through the built binary: a key stored in clear is encrypted in place once a
//! key-encryption key is configured, the same key keeps signing, and a start without the
//! key-encryption key, or with another one, is refused with a clear error. On PostgreSQL
//! when `BMM_AS_TEST_DATABASE_URL` is set, else on the SQLite file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

const RESOURCE: &str = "http://127.0.0.1:4104/mcp";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn command(data_dir: &Path, port: u16, kek: Option<&str>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bmm-as"));
    command
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--resource", RESOURCE])
        .args(database_args(data_dir))
        .env_remove("BMM_AS_KEY_ENCRYPTION_KEY")
        .env("RUST_LOG", "info");
    if let Some(kek) = kek {
        command.env("BMM_AS_KEY_ENCRYPTION_KEY", kek);
    }
    command
}

/// A running bmm-as; killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts bmm-as and returns it with the `kid`s its JWKS publishes once it answers.
async fn start(data_dir: &Path, kek: Option<&str>) -> (Running, Vec<String>) {
    let port = free_port();
    let child = command(data_dir, port, kek)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            panic!("bmm-as exited: {status}");
        }
        if let Ok(r) = http()
            .get(format!("http://127.0.0.1:{port}/jwks"))
            .send()
            .await
            && r.status() == 200
        {
            let (_, jwks) = json_of(r).await;
            let kids = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_owned())
                .collect();
            return (running, kids);
        }
        assert!(Instant::now() < deadline, "bmm-as did not answer in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs bmm-as expecting it to refuse the start; its stderr.
fn refused(data_dir: &Path, kek: Option<&str>) -> String {
    let Output { status, stderr, .. } = command(data_dir, free_port(), kek)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    assert!(!status.success(), "bmm-as started: {stderr}");
    stderr
}

fn kek(byte: u8) -> String {
    STANDARD.encode([byte; 32])
}

#[tokio::test]
async fn a_clear_key_is_encrypted_in_place_and_then_needs_its_key_encryption_key() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("as-data");

    let (first, kids) = start(&data_dir, None).await;
    drop(first);
    assert_eq!(kids.len(), 1);

    let right = kek(7);
    let (second, again) = start(&data_dir, Some(&right)).await;
    drop(second);
    assert_eq!(again, kids, "the same key, now stored encrypted");

    let error = refused(&data_dir, None);
    assert!(
        error.contains("is encrypted") && error.contains("BMM_AS_KEY_ENCRYPTION_KEY"),
        "{error}"
    );
    let error = refused(&data_dir, Some(&kek(8)));
    assert!(
        error.contains("not the key it was encrypted with"),
        "{error}"
    );
    let error = refused(&data_dir, Some("c2hvcnQ="));
    assert!(error.contains("must be 32 bytes"), "{error}");

    let (_third, last) = start(&data_dir, Some(&right)).await;
    assert_eq!(last, kids);
}

#[tokio::test]
async fn a_first_start_with_a_key_encryption_key_never_stores_the_key_in_clear() {
    if test_database_url().is_some() {
        // The check reads the SQLite file; the PostgreSQL path is the test above.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("as-data");
    let (running, kids) = start(&data_dir, Some(&kek(9))).await;
    drop(running);
    assert_eq!(kids.len(), 1);
    let db = rusqlite::Connection::open(data_dir.join("bmm-as.sqlite3")).unwrap();
    let stored: Vec<u8> = db
        .query_row("SELECT pkcs8 FROM signing_keys", [], |row| row.get(0))
        .unwrap();
    assert!(stored.starts_with(b"bmmk1"), "stored encrypted");
    assert!(refused(&data_dir, None).contains("is encrypted"));
}

#[tokio::test]
async fn encrypting_a_clear_key_in_place_leaves_no_clear_copy_in_the_sqlite_files() {
    if test_database_url().is_some() {
        // Reads the SQLite files; PostgreSQL keeps old row versions until VACUUM (logged).
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("as-data");
    let (first, _) = start(&data_dir, None).await;
    drop(first);
    let der: Vec<u8> = {
        let db = rusqlite::Connection::open(data_dir.join("bmm-as.sqlite3")).unwrap();
        db.query_row("SELECT pkcs8 FROM signing_keys", [], |row| row.get(0))
            .unwrap()
    };
    assert!(!der.starts_with(b"bmmk1"), "stored in clear at first");
    // A slice of the private part: the whole record fits in one page.
    let secret = &der[der.len() / 2..der.len() / 2 + 64];
    let holds_secret = |bytes: &[u8]| bytes.windows(secret.len()).any(|w| w == secret);
    let files = |name: &str| std::fs::read(data_dir.join(name)).unwrap_or_default();
    assert!(
        holds_secret(&files("bmm-as.sqlite3")),
        "the check can see it"
    );

    // Killed right after it answers (no checkpoint at close): what is on disk then.
    let (second, _) = start(&data_dir, Some(&kek(5))).await;
    drop(second);
    for name in ["bmm-as.sqlite3", "bmm-as.sqlite3-wal"] {
        assert!(
            !holds_secret(&files(name)),
            "{name} still holds the clear key"
        );
    }
}
