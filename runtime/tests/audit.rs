//! The audit log over real sockets (bmm_middleware::audit, crate::observe): a line per
//! allowed and refused call, the documented schema, no token or argument value in the
//! file, mode 0600, rotation at the size bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod observe_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use observe_common::{ISSUER, call_tool, start, token};
use serde_json::{Value, json};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "audit-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("audit.log")
}

/// The lines of `path` once there are at least `n` (the writer runs off the request path).
async fn lines(path: &Path, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} audit lines in {}", path.display());
}

fn is_rfc3339_utc(time: &str) -> bool {
    let b = time.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && time
            .chars()
            .enumerate()
            .all(|(i, c)| [4, 7, 10, 13, 16, 19, 23].contains(&i) || c.is_ascii_digit())
}

const ALLOWED: &[&str] = &[
    "time",
    "event",
    "iss",
    "sub",
    "client_id",
    "tool",
    "outcome",
    "duration_ms",
    "upstream_status",
    "jsonrpc_id",
    "args_sha256",
    "reason",
    "status",
    "method",
    "source",
    "count",
];

#[tokio::test]
async fn audit_lines_record_allowed_and_refused_calls_without_tokens_or_argument_values() {
    let path = scratch("calls");
    let s = start(&["--audit-log", path.to_str().unwrap()], Some("test-salt")).await;
    let read = token(&s.url, "demo:read", "client-a", 600);
    let odd_client = format!("evil\"\n{}", "c".repeat(1000));
    let odd = token(&s.url, "", &odd_client, 600);

    let (status, _) = call_tool(&s, Some(&read), "get_item", json!({"id": "ARGVALUE-4242"})).await;
    assert_eq!(status, 200);
    let (status, _) = call_tool(&s, None, "whoami", json!({"greeting": "ARGVALUE-hello"})).await;
    assert_eq!(status, 401);
    let (status, _) = call_tool(&s, Some(&read), "purge", json!({})).await;
    assert_eq!(status, 403);
    let (status, _) = call_tool(
        &s,
        Some(&odd),
        "whoami",
        json!({"greeting": "ARGVALUE-odd"}),
    )
    .await;
    assert_eq!(status, 200);

    let all = lines(&path, 4).await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains(&read) && !text.contains(&odd),
        "a token leaked"
    );
    assert!(
        !text.contains("ARGVALUE"),
        "an argument value leaked: {text}"
    );
    for line in &all {
        let object = line.as_object().unwrap();
        for key in object.keys() {
            assert!(ALLOWED.contains(&key.as_str()), "undocumented field {key}");
        }
        assert!(is_rfc3339_utc(line["time"].as_str().unwrap()), "{line}");
    }

    let call = all
        .iter()
        .find(|l| l["event"] == "tool_call" && l["tool"] == "get_item")
        .unwrap_or_else(|| panic!("no tool_call line: {all:?}"));
    assert_eq!(call["iss"], ISSUER);
    assert_eq!(call["sub"], "alice");
    assert_eq!(call["client_id"], "client-a");
    assert_eq!(call["outcome"], "ok");
    assert_eq!(call["upstream_status"], 200);
    assert_eq!(call["jsonrpc_id"], "7");
    assert_eq!(call["source"], "127.0.0.1");
    assert!(call["duration_ms"].is_u64());
    let hash = call["args_sha256"].as_str().unwrap();
    assert!(hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()));

    let missing = all
        .iter()
        .find(|l| l["event"] == "refusal" && l["reason"] == "missing")
        .unwrap_or_else(|| panic!("no 401 line: {all:?}"));
    assert_eq!(missing["status"], 401);
    assert_eq!(missing["method"], "tools/call");
    assert_eq!(missing["source"], "127.0.0.1");
    let scope = all
        .iter()
        .find(|l| l["event"] == "refusal" && l["reason"] == "scope")
        .unwrap_or_else(|| panic!("no 403 line: {all:?}"));
    assert_eq!(scope["status"], 403);
    // The token was verified before the scope check: the line says whose it was.
    assert_eq!(scope["iss"], ISSUER);
    assert_eq!(scope["sub"], "alice");
    assert_eq!(scope["client_id"], "client-a");
    // A 401 has no verified caller, so no caller fields.
    assert!(missing.get("sub").is_none() && missing.get("iss").is_none());

    // A client_id from outside is escaped and cut.
    let odd_line = all
        .iter()
        .find(|l| l["event"] == "tool_call" && l["tool"] == "whoami")
        .unwrap_or_else(|| panic!("no whoami line: {all:?}"));
    let client = odd_line["client_id"].as_str().unwrap();
    assert!(client.starts_with("evil\"\n") && client.chars().count() == 256);
    assert!(odd_line.get("upstream_status").is_none());

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test]
async fn equal_arguments_hash_alike_and_different_ones_do_not() {
    let path = scratch("hash");
    let s = start(&["--audit-log", path.to_str().unwrap()], Some("salt-1")).await;
    let read = token(&s.url, "demo:read", "client-a", 600);
    for greeting in ["a", "a", "b"] {
        call_tool(&s, Some(&read), "whoami", json!({"greeting": greeting})).await;
    }
    let all = lines(&path, 3).await;
    let hashes: Vec<&str> = all
        .iter()
        .map(|l| l["args_sha256"].as_str().unwrap())
        .collect();
    assert_eq!(hashes[0], hashes[1]);
    assert_ne!(hashes[0], hashes[2]);
}

#[tokio::test]
async fn the_audit_file_is_rotated_at_its_size_bound() {
    let path = scratch("rotate");
    let s = start(
        &[
            "--audit-log",
            path.to_str().unwrap(),
            "--audit-log-max-bytes",
            "4096",
        ],
        None,
    )
    .await;
    // About 150 bytes a refusal line: 60 of them fill more than two files' worth.
    for _ in 0..60 {
        let (status, _) = call_tool(&s, None, "whoami", json!({})).await;
        assert_eq!(status, 401);
    }
    let mut rotated = path.clone().into_os_string();
    rotated.push(".1");
    let rotated = PathBuf::from(rotated);
    for _ in 0..100 {
        if rotated.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated.exists(), "no rotation");
    for file in [&path, &rotated] {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.len() <= 4096,
            "{} holds {} bytes",
            file.display(),
            text.len()
        );
        for line in text.lines() {
            let line: Value = serde_json::from_str(line).unwrap();
            assert_eq!(line["reason"], "missing");
        }
    }
}

#[tokio::test]
async fn a_rate_limit_refusal_is_audited_with_its_reason() {
    let path = scratch("rate");
    let s = start(
        &[
            "--audit-log",
            path.to_str().unwrap(),
            "--rate-limit",
            "1/min",
        ],
        None,
    )
    .await;
    let read = token(&s.url, "demo:read", "client-a", 600);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(call_tool(&s, Some(&read), "whoami", json!({})).await.0);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let all = lines(&path, 3).await;
    let limited = all
        .iter()
        .find(|l| l["event"] == "refusal" && l["reason"] == "rate_limited")
        .unwrap_or_else(|| panic!("no 429 line: {all:?}"));
    assert_eq!(limited["status"], 429);
    assert_eq!(limited["sub"], "alice");
    assert_eq!(limited["client_id"], "client-a");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&read));
}
