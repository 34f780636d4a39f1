//! bmm-as under abuse (issue 12 items 7, 8, 9, 11, 13, 14, 16), over real sockets: SSRF
//! through Client ID Metadata Documents, password guessing, pending sign-in floods, open
//! redirects, file permissions of the key store, registration quotas, and what the consent
//! page shows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bmm_authorization_server::{AppState, Args, Settings, serve};
use clap::Parser;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const RESOURCE: &str = "http://127.0.0.1:4103/mcp";
const CALLBACK: &str = "http://127.0.0.1:33418/callback";

struct TestAs {
    url: String,
    _stop: oneshot::Sender<()>,
}

fn settings(data_dir: &Path, listen: &str, extra: &[&str]) -> Settings {
    let mut argv = vec![
        "bmm-as",
        "--listen",
        listen,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--resource",
        RESOURCE,
    ];
    argv.extend_from_slice(extra);
    Settings::from_args(Args::try_parse_from(argv).unwrap()).unwrap()
}

impl TestAs {
    async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // On PostgreSQL when the suite runs there; the file-permission tests below call
        // `settings` directly and stay on SQLite.
        let database = database_args(data_dir);
        let mut args: Vec<&str> = database.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        let state = AppState::open(settings(data_dir, &addr.to_string(), &args))
            .await
            .unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, state, async move {
            let _ = rx.await;
        }));
        Self {
            url: format!("http://{addr}"),
            _stop: tx,
        }
    }
}

async fn register(as_: &TestAs, body: Value) -> (u16, Value) {
    let response = http()
        .post(format!("{}/register", as_.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn client_with(as_: &TestAs, redirect: &str) -> String {
    let (status, body) = register(
        as_,
        json!({"redirect_uris": [redirect], "token_endpoint_auth_method": "none", "client_name": "Test Client"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["client_id"].as_str().unwrap().to_owned()
}

fn challenge() -> String {
    pkce().challenge
}

fn params(client_id: &str, redirect: &str, challenge: &str) -> Vec<(String, String)> {
    [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("state", "xyz"),
        ("scope", "mcp:read"),
        ("resource", RESOURCE),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

async fn authorize_from(
    client: &reqwest::Client,
    as_: &TestAs,
    q: &[(String, String)],
) -> reqwest::Response {
    client
        .get(format!("{}/authorize", as_.url))
        .query(q)
        .send()
        .await
        .unwrap()
}

fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        + marker.len();
    page[start..].split('"').next().unwrap().to_owned()
}

fn cookie(response: &reqwest::Response) -> String {
    response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

fn users_config() -> tempfile::NamedTempFile {
    use argon2::PasswordHasher;
    use std::io::Write;
    let salt = argon2::password_hash::SaltString::encode_b64(b"bmm-test-salt-16").unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(b"wonderland", &salt)
        .unwrap()
        .to_string();
    let mut config = tempfile::NamedTempFile::new().unwrap();
    write!(
        config,
        "scopes = [\"mcp:read\"]\n[[users]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n"
    )
    .unwrap();
    config
}

/// The consent form of a fresh page: (cookie, request_id, csrf).
struct Form {
    cookie: String,
    request_id: String,
    csrf: String,
}

async fn consent_form(client: &reqwest::Client, as_: &TestAs, client_id: &str) -> Form {
    let page = authorize_from(client, as_, &params(client_id, CALLBACK, &challenge())).await;
    assert_eq!(page.status(), 200);
    let cookie = cookie(&page);
    let html = page.text().await.unwrap();
    Form {
        cookie,
        request_id: hidden(&html, "request_id"),
        csrf: hidden(&html, "csrf"),
    }
}

/// Posts a sign-in; returns the status, the next form (when the page is shown again) and
/// the body or location.
async fn sign_in(
    client: &reqwest::Client,
    as_: &TestAs,
    form: &Form,
    username: &str,
    password: &str,
) -> (u16, Option<Form>, String) {
    let response = client
        .post(format!("{}/authorize", as_.url))
        .header("cookie", &form.cookie)
        .form(&[
            ("request_id", form.request_id.as_str()),
            ("csrf", form.csrf.as_str()),
            ("username", username),
            ("password", password),
            ("decision", "approve"),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    if response.status().is_redirection() {
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        return (status, None, location);
    }
    let next_cookie = response
        .headers()
        .get("set-cookie")
        .map(|_| cookie(&response));
    let html = response.text().await.unwrap();
    let next = next_cookie.map(|cookie| Form {
        cookie,
        request_id: hidden(&html, "request_id"),
        csrf: hidden(&html, "csrf"),
    });
    (status, next, html)
}

// ---- item 7: SSRF through Client ID Metadata Documents ----

/// A listener that counts the connections it accepts (and never answers).
async fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (port, count)
}

#[tokio::test]
async fn cimd_fetch_refuses_loopback_and_private_addresses() {
    let (port, connections) = counting_listener().await;
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &["--dev-user", "alice"]).await;
    let c = challenge();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("2130706433:{port}"),
        format!("0x7f000001:{port}"),
        format!("127.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("0.0.0.0:{port}"),
        "10.0.0.1".to_owned(),
        "172.16.0.1".to_owned(),
        "192.168.1.1".to_owned(),
        "100.64.0.1".to_owned(),
        "169.254.169.254".to_owned(),
        "[fd00::1]".to_owned(),
        "[fe80::1]".to_owned(),
        "[::ffff:10.0.0.1]".to_owned(),
    ] {
        let id = format!("https://{host}/client.json");
        let response = authorize_from(&http(), &as_, &params(&id, CALLBACK, &c)).await;
        assert_eq!(response.status(), 400, "{id}");
        assert!(response.headers().get("location").is_none(), "{id}");
        let page = response.text().await.unwrap();
        assert!(
            page.contains("refused to connect") || page.contains("normalised form"),
            "{id}: {page}"
        );
    }
    // `http` document URLs are not metadata documents at all without the dev flag.
    let id = format!("http://127.0.0.1:{port}/client.json");
    let response = authorize_from(&http(), &as_, &params(&id, CALLBACK, &c)).await;
    assert_eq!(response.status(), 400);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the loopback listener received a connection"
    );
}

#[tokio::test]
async fn cimd_client_ids_must_be_normalised_urls_with_a_path_and_no_credentials() {
    let (port, connections) = counting_listener().await;
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(
        dir.path(),
        &["--dev-user", "alice", "--allow-loopback-cimd"],
    )
    .await;
    for id in [
        format!("http://2130706433:{port}/client.json"),
        format!("http://127.0.0.1:{port}/a/../client.json"),
        format!("http://127.0.0.1:{port}/"),
        format!("http://user:pw@127.0.0.1:{port}/client.json"),
        format!("http://127.0.0.1:{port}/client.json#x"),
        format!("HTTP://127.0.0.1:{port}/client.json"),
    ] {
        let response = authorize_from(&http(), &as_, &params(&id, CALLBACK, &challenge())).await;
        assert_eq!(response.status(), 400, "{id}");
        let page = response.text().await.unwrap();
        assert!(
            page.contains("not a usable Client ID Metadata Document URL"),
            "{id}: {page}"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn cimd_fetches_are_bounded_per_caller_address() {
    let (port, connections) = counting_listener().await;
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(
        dir.path(),
        &["--dev-user", "alice", "--allow-loopback-cimd"],
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let id = format!("http://127.0.0.1:{port}/client{i}.json");
        let url = format!("{}/authorize", as_.url);
        let q = params(&id, CALLBACK, &challenge());
        tasks.push(tokio::spawn(async move {
            let response = http().get(url).query(&q).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "two fetches at a time per caller address"
    );
    let mut busy = 0;
    for task in tasks.iter_mut().skip(2) {
        let (status, page) = tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, 503, "busy, not a bad request");
        assert!(
            page.contains("too many client metadata documents"),
            "{page}"
        );
        busy += 1;
    }
    assert_eq!(busy, 4, "the others are answered at once, without a fetch");
    for task in tasks {
        task.abort();
    }
}

#[tokio::test]
async fn cimd_failures_are_cached_so_a_failing_url_is_not_fetched_again() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&hits);
    let app = axum::Router::new().fallback(move || {
        let seen = Arc::clone(&seen);
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            axum::http::StatusCode::NOT_FOUND
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(
        dir.path(),
        &["--dev-user", "alice", "--allow-loopback-cimd"],
    )
    .await;
    let id = format!("http://127.0.0.1:{port}/missing.json");
    for _ in 0..5 {
        let response = authorize_from(&http(), &as_, &params(&id, CALLBACK, &challenge())).await;
        assert_eq!(response.status(), 400);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

// ---- item 8: password guessing ----

#[tokio::test]
async fn sign_in_backs_off_per_user_name_without_checking_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let config = users_config();
    let as_ = TestAs::start(dir.path(), &["--config", config.path().to_str().unwrap()]).await;
    let client_id = client_with(&as_, CALLBACK).await;
    let browser = http();
    let mut form = consent_form(&browser, &as_, &client_id).await;
    for _ in 0..5 {
        let (status, next, _) = sign_in(&browser, &as_, &form, "alice", "guess").await;
        assert_eq!(status, 200);
        form = next.unwrap();
    }
    // The right password is not even checked while the name is backing off.
    let (status, next, page) = sign_in(&browser, &as_, &form, "alice", "wonderland").await;
    assert_eq!(status, 429, "{page}");
    assert!(page.contains("Too many failed sign-ins"), "{page}");
    // Another address is backed off for that name too (the count is per name).
    let other = http_from(Some("127.0.0.2".parse().unwrap()));
    let form2 = consent_form(&other, &as_, &client_id).await;
    let (status, _, _) = sign_in(&other, &as_, &form2, "alice", "wonderland").await;
    assert_eq!(status, 429);
    // After the wait, the right password works.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, location) =
        sign_in(&browser, &as_, &next.unwrap(), "alice", "wonderland").await;
    assert_eq!(status, 303, "{location}");
    assert!(location.contains("code="));
}

#[tokio::test]
async fn sign_in_backs_off_per_address_across_user_names() {
    let dir = tempfile::tempdir().unwrap();
    let config = users_config();
    let as_ = TestAs::start(dir.path(), &["--config", config.path().to_str().unwrap()]).await;
    let client_id = client_with(&as_, CALLBACK).await;
    let browser = http_from(Some("127.0.0.3".parse().unwrap()));
    let mut form = consent_form(&browser, &as_, &client_id).await;
    for i in 0..10 {
        let (status, next, _) = sign_in(&browser, &as_, &form, &format!("user{i}"), "x").await;
        assert_eq!(status, 200);
        form = next.unwrap();
    }
    let (status, _, _) = sign_in(&browser, &as_, &form, "someone-else", "x").await;
    assert_eq!(status, 429);
    // Another address is unaffected.
    let other = http_from(Some("127.0.0.4".parse().unwrap()));
    let form = consent_form(&other, &as_, &client_id).await;
    let (status, _, location) = sign_in(&other, &as_, &form, "alice", "wonderland").await;
    assert_eq!(status, 303, "{location}");
}

#[tokio::test]
async fn unknown_user_names_cost_the_same_argon2_time_as_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = users_config();
    let as_ = TestAs::start(dir.path(), &["--config", config.path().to_str().unwrap()]).await;
    let client_id = client_with(&as_, CALLBACK).await;
    let browser = http_from(Some("127.0.0.5".parse().unwrap()));
    let mut form = consent_form(&browser, &as_, &client_id).await;
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..4 {
        for (name, times) in [("alice", &mut known), ("nobody", &mut unknown)] {
            let name = if name == "alice" {
                name.to_owned()
            } else {
                format!("{name}{i}")
            };
            let start = Instant::now();
            let (status, next, _) = sign_in(&browser, &as_, &form, &name, "wrong").await;
            times.push(start.elapsed());
            assert_eq!(status, 200);
            form = next.unwrap();
        }
    }
    known.sort();
    unknown.sort();
    let (k, u) = (known[1], unknown[1]);
    assert!(
        u * 3 >= k && k * 3 >= u,
        "known {k:?} vs unknown {u:?}: an unknown name must cost an Argon2 run too"
    );
}

// ---- item 9: pending sign-ins ----

#[tokio::test]
async fn pending_sign_in_flood_from_one_address_does_not_lock_out_another() {
    let dir = tempfile::tempdir().unwrap();
    let config = users_config();
    let as_ = TestAs::start(dir.path(), &["--config", config.path().to_str().unwrap()]).await;
    let client_id = client_with(&as_, CALLBACK).await;
    // A real user opens the page first, then an attacker floods from another address.
    let user = http_from(Some("127.0.0.7".parse().unwrap()));
    let early = consent_form(&user, &as_, &client_id).await;
    let flooder = http_from(Some("127.0.0.6".parse().unwrap()));
    let first = consent_form(&flooder, &as_, &client_id).await;
    let c = challenge();
    // Far more than the 16 pending requests an address may hold, and within the 300
    // consent pages a minute it may open (the rate limit is tested in tests/admin.rs).
    for _ in 0..280 {
        let response = authorize_from(&flooder, &as_, &params(&client_id, CALLBACK, &c)).await;
        assert_eq!(
            response.status(),
            200,
            "the flood is served, never a 503 for others"
        );
    }
    // The flooder only evicted its own oldest requests.
    let (status, _, _) = sign_in(&flooder, &as_, &first, "alice", "wonderland").await;
    assert_eq!(
        status, 400,
        "the flooder's oldest pending request was evicted"
    );
    let (status, _, location) = sign_in(&user, &as_, &early, "alice", "wonderland").await;
    assert_eq!(status, 303, "{location}");
    let later = consent_form(&user, &as_, &client_id).await;
    let (status, _, location) = sign_in(&user, &as_, &later, "alice", "wonderland").await;
    assert_eq!(status, 303, "{location}");
}

// ---- item 11: open redirector ----

#[tokio::test]
async fn bad_requests_of_self_registered_clients_get_an_error_page_not_a_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(
        dir.path(),
        &[
            "--dev-user",
            "alice",
            "--client",
            "operator-app=https://operator.example/cb",
        ],
    )
    .await;
    let evil = client_with(&as_, "https://evil.example/land").await;
    let c = challenge();
    let base = params(&evil, "https://evil.example/land", &c);
    let set = |key: &str, value: Option<&str>| {
        let mut q: Vec<(String, String)> = base.iter().filter(|(k, _)| k != key).cloned().collect();
        if let Some(v) = value {
            q.push((key.to_owned(), v.to_owned()));
        }
        q
    };
    for (q, error) in [
        (
            set("response_type", Some("token")),
            "unsupported_response_type",
        ),
        (set("code_challenge", None), "invalid_request"),
        (
            set("code_challenge_method", Some("plain")),
            "invalid_request",
        ),
        (
            set("resource", Some("https://other.example/mcp")),
            "invalid_target",
        ),
        (set("scope", Some("a\"b")), "invalid_scope"),
    ] {
        let response = authorize_from(&http(), &as_, &q).await;
        assert_eq!(response.status(), 400, "{error}");
        assert!(
            response.headers().get("location").is_none(),
            "{error}: redirected"
        );
        assert!(response.text().await.unwrap().contains(error));
    }
    // A client the operator configured still gets errors by redirect (RFC 6749 4.1.2.1).
    let q = params("operator-app", "https://operator.example/cb", &c);
    let q: Vec<_> = q
        .into_iter()
        .filter(|(k, _)| k != "code_challenge")
        .collect();
    let response = authorize_from(&http(), &as_, &q).await;
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with("https://operator.example/cb?error=invalid_request"),
        "{location}"
    );
}

// ---- item 13: file permissions ----

#[cfg(unix)]
#[tokio::test]
async fn data_dir_is_created_0700_and_the_key_store_files_0600() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("as-data");
    let state = AppState::open(settings(&dir, "127.0.0.1:0", &[]))
        .await
        .unwrap();
    drop(state);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for name in ["bmm-as.sqlite3", "bmm-as.sqlite3-wal", "bmm-as.sqlite3-shm"] {
        let path = dir.join(name);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{name}");
        }
    }
    assert_eq!(mode(&dir.join("bmm-as.sqlite3")), 0o600);
}

#[cfg(unix)]
#[tokio::test]
async fn start_is_refused_on_a_group_or_world_readable_key_store() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("as-data");
    drop(
        AppState::open(settings(&dir, "127.0.0.1:0", &[]))
            .await
            .unwrap(),
    );
    let db = dir.join("bmm-as.sqlite3");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = AppState::open(settings(&dir, "127.0.0.1:0", &[]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!("chmod 600 {}", db.display())),
        "{error}"
    );
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let error = AppState::open(settings(&dir, "127.0.0.1:0", &[]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!("chmod 700 {}", dir.display())),
        "{error}"
    );
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(
        AppState::open(settings(&dir, "127.0.0.1:0", &[]))
            .await
            .is_ok()
    );
}

// ---- item 14: registration quota, expiry and field limits ----

async fn register_from(ip: &str, as_: &TestAs) -> (u16, Value) {
    let response = http_from(Some(ip.parse().unwrap()))
        .post(format!("{}/register", as_.url))
        .json(&json!({"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_full_registration_quota_evicts_the_largest_holders_oldest_unused_client() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--dev-user", "alice", "--max-unused-clients", "4"];
    let as_ = TestAs::start(dir.path(), &args).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (status, body) = register_from("127.0.0.1", &as_).await;
        assert_eq!(status, 201, "{body}");
        held.push(body["client_id"].as_str().unwrap().to_owned());
    }
    let (status, small) = register_from("127.0.0.2", &as_).await;
    assert_eq!(status, 201);
    // Full: a newcomer still registers, and the largest holder loses its oldest client.
    let (status, body) = register_from("127.0.0.3", &as_).await;
    assert_eq!(status, 201, "{body}");
    let gone = authorize_from(&http(), &as_, &params(&held[0], CALLBACK, &challenge())).await;
    assert_eq!(gone.status(), 400, "the largest holder's oldest is deleted");
    for id in [&held[1], &held[2], small["client_id"].as_str().unwrap()] {
        let kept = authorize_from(&http(), &as_, &params(id, CALLBACK, &challenge())).await;
        assert_eq!(kept.status(), 303, "the others stay");
    }
    // Clients registered before a restart have no known holder: a full quota refuses.
    drop(as_);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let as_ = TestAs::start(
        dir.path(),
        &["--dev-user", "alice", "--max-unused-clients", "1"],
    )
    .await;
    let (status, body) = register_from("127.0.0.4", &as_).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
}

#[tokio::test]
async fn clients_that_never_complete_an_authorization_expire() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(
        dir.path(),
        &["--dev-user", "alice", "--unused-client-ttl", "3"],
    )
    .await;
    // Times are whole seconds: a client registered at 12.999 with a TTL of 1 is expired at
    // 13.000. A TTL of 3 leaves a loaded machine at least 2 s to authorize the used client.
    let unused = client_with(&as_, CALLBACK).await;
    let used = client_with(&as_, CALLBACK).await;
    let response = authorize_from(&http(), &as_, &params(&used, CALLBACK, &challenge())).await;
    assert_eq!(response.status(), 303);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let response = authorize_from(&http(), &as_, &params(&unused, CALLBACK, &challenge())).await;
    assert_eq!(
        response.status(),
        400,
        "an expired unused client is unknown"
    );
    let response = authorize_from(&http(), &as_, &params(&used, CALLBACK, &challenge())).await;
    assert_eq!(response.status(), 303, "a used client stays");
}

#[tokio::test]
async fn registration_field_limits_are_small() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &[]).await;
    let many: Vec<String> = (0..11)
        .map(|i| format!("https://a.example/cb{i}"))
        .collect();
    let long_uri = format!("https://a.example/{}", "a".repeat(1024));
    for body in [
        json!({"redirect_uris": ["https://a.example/cb"], "client_name": "n".repeat(101)}),
        json!({"redirect_uris": many}),
        json!({"redirect_uris": [long_uri]}),
        json!({"redirect_uris": ["https://a.example/cb"], "scope": "s".repeat(1025)}),
        json!({"redirect_uris": ["https://a.example/cb"], "logo_uri": format!("https://a.example/{}", "l".repeat(1024))}),
        json!({"redirect_uris": ["https://a.example/cb"], "software_id": "x".repeat(257)}),
    ] {
        let (status, response) = register(&as_, body).await;
        assert_eq!(status, 400, "{response}");
    }
    let (status, _) = register(
        &as_,
        json!({"redirect_uris": ["https://a.example/cb"], "client_name": "n".repeat(100)}),
    )
    .await;
    assert_eq!(status, 201);
}

// ---- item 16: consent page and redirect schemes ----

#[tokio::test]
async fn consent_page_shows_the_cimd_host_a_capped_name_and_the_full_redirect_target() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let doc_url = format!(
        "http://localhost:{}/client.json",
        listener.local_addr().unwrap().port()
    );
    let served = doc_url.clone();
    let name = format!("Trusted Bank {}", "A".repeat(5000));
    let app = axum::Router::new().route(
        "/client.json",
        axum::routing::get(move || {
            let id = served.clone();
            let name = name.clone();
            async move { axum::Json(json!({"client_id": id, "client_name": name, "redirect_uris": ["http://127.0.0.1:33418/callback?tenant=x"]})) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let config = users_config();
    let as_ = TestAs::start(
        dir.path(),
        &[
            "--config",
            config.path().to_str().unwrap(),
            "--allow-loopback-cimd",
        ],
    )
    .await;
    let response = authorize_from(
        &http(),
        &as_,
        &params(
            &doc_url,
            "http://127.0.0.1:33418/callback?tenant=x",
            &challenge(),
        ),
    )
    .await;
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert!(
        html.contains("<strong id=\"client-host\">localhost</strong>"),
        "{html}"
    );
    assert!(!html.contains(&"A".repeat(101)), "the name is capped");
    assert!(html.contains(&format!("Trusted Bank {}…", "A".repeat(100 - 13))));
    assert!(
        html.contains("<code id=\"redirect-uri\">http://127.0.0.1:33418/callback?tenant=x</code>"),
        "{html}"
    );
}

#[tokio::test]
async fn registration_refuses_browser_internal_redirect_schemes_and_keeps_app_schemes() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &[]).await;
    for bad in [
        "ms-msdt:/id PCWDiagnostic",
        "view-source:https://a.example/",
        "chrome://settings",
        "search-ms:query=x",
    ] {
        let (status, body) = register(
            &as_,
            json!({"redirect_uris": [bad], "token_endpoint_auth_method": "none"}),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_redirect_uri");
    }
    for good in [
        "claude://oauth/callback",
        "cursor://anysphere.cursor-retrieval/oauth",
        "vscode://vscode.github-authentication/did-authenticate",
        "com.example.app:/cb",
    ] {
        let (status, body) = register(
            &as_,
            json!({"redirect_uris": [good], "token_endpoint_auth_method": "none"}),
        )
        .await;
        assert_eq!(status, 201, "{good}: {body}");
    }
}

#[tokio::test]
async fn cimd_fetches_are_bounded_globally_across_callers() {
    let (port, connections) = counting_listener().await;
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(
        dir.path(),
        &["--dev-user", "alice", "--allow-loopback-cimd"],
    )
    .await;
    let mut tasks = Vec::new();
    for caller in 0..10u8 {
        for i in 0..2 {
            let id = format!("http://127.0.0.1:{port}/c{caller}-{i}.json");
            let url = format!("{}/authorize", as_.url);
            let q = params(&id, CALLBACK, &challenge());
            let client = http_from(Some(IpAddr::from([127, 0, 1, caller + 1])));
            tasks.push(tokio::spawn(async move {
                let _ = client.get(url).query(&q).send().await;
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        16,
        "at most 16 fetches at a time in all"
    );
    for task in tasks {
        task.abort();
    }
}

#[tokio::test]
async fn one_address_cannot_fill_the_registration_quota_with_unused_clients() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &["--dev-user", "alice"]).await;
    let mut first = None;
    for _ in 0..20 {
        let id = client_with(&as_, CALLBACK).await;
        first.get_or_insert(id);
    }
    let (status, body) = register(
        &as_,
        json!({"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    // Another address still registers.
    let other = http_from(Some("127.0.0.9".parse().unwrap()));
    let response = other
        .post(format!("{}/register", as_.url))
        .json(&json!({"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // Completing an authorization frees a slot.
    let response = authorize_from(
        &http(),
        &as_,
        &params(&first.unwrap(), CALLBACK, &challenge()),
    )
    .await;
    assert_eq!(response.status(), 303);
    client_with(&as_, CALLBACK).await;
}

/// Registers one client, sending `headers`; the status.
async fn register_with_headers(as_: &TestAs, headers: &[(&str, &str)]) -> u16 {
    let mut request = http()
        .post(format!("{}/register", as_.url))
        .json(&json!({"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &[]).await;
    // A different spoofed address on every request: all are still counted as 127.0.0.1.
    for i in 0..20 {
        let xff = format!("198.51.100.{i}");
        let status = register_with_headers(&as_, &[("x-forwarded-for", &xff)]).await;
        assert_eq!(status, 201);
    }
    let status = register_with_headers(&as_, &[("x-forwarded-for", "203.0.113.1")]).await;
    assert_eq!(status, 429);
    let status = register_with_headers(&as_, &[("forwarded", "for=203.0.113.2")]).await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn behind_a_trusted_proxy_limits_apply_per_forwarded_address() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &["--trusted-proxy", "127.0.0.0/8"]).await;
    for _ in 0..20 {
        let status = register_with_headers(&as_, &[("x-forwarded-for", "198.51.100.1")]).await;
        assert_eq!(status, 201);
    }
    // The same forwarded client, also when a (trusted) second proxy is listed after it.
    let status = register_with_headers(&as_, &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_eq!(status, 429);
    let status = register_with_headers(
        &as_,
        &[("x-forwarded-for", "6.6.6.6, 198.51.100.1, 127.0.0.5")],
    )
    .await;
    assert_eq!(
        status, 429,
        "the right-most untrusted address is the caller"
    );
    // Other forwarded clients have their own budgets, by either header.
    let status = register_with_headers(&as_, &[("x-forwarded-for", "198.51.100.2")]).await;
    assert_eq!(status, 201);
    let status = register_with_headers(&as_, &[("forwarded", "for=\"198.51.100.3:443\"")]).await;
    assert_eq!(status, 201);
    // No header, or a malformed one: the peer address (127.0.0.1), its own budget.
    assert_eq!(register_with_headers(&as_, &[]).await, 201);
    let status = register_with_headers(&as_, &[("x-forwarded-for", "not-an-address")]).await;
    assert_eq!(status, 201);
}

/// A PKCE pair: (verifier, S256 challenge).
fn pkce_pair() -> (String, String) {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    let verifier = format!("v{}", URL_SAFE_NO_PAD.encode(b));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

async fn post_form(as_: &TestAs, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = http()
        .post(format!("{}{path}", as_.url))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn token_and_revoke_never_fetch_client_metadata_documents() {
    // A document URL never seen at /authorize: invalid_client, and no fetch.
    let (port, fetches) = counting_listener().await;
    let unseen = format!("http://127.0.0.1:{port}/client.json");
    let dir = tempfile::tempdir().unwrap();
    let args = ["--dev-user", "alice", "--allow-loopback-cimd"];
    let as_ = TestAs::start(dir.path(), &args).await;
    let (status, body) = post_form(
        &as_,
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "guess"),
            ("client_id", &unseen),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, _) = post_form(
        &as_,
        "/revoke",
        &[("token", "guess"), ("client_id", &unseen)],
    )
    .await;
    assert_eq!(status, 401);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fetches.load(Ordering::SeqCst), 0, "nothing was fetched");

    // A client seen at /authorize keeps working at /token from the token it holds, also
    // after a restart emptied the document cache, without another fetch.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let doc_url = format!("http://{}/client.json", listener.local_addr().unwrap());
    let served = doc_url.clone();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let app = axum::Router::new().route(
        "/client.json",
        axum::routing::get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let id = served.clone();
            async move { axum::Json(json!({"client_id": id, "redirect_uris": [CALLBACK]})) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (verifier, challenge) = pkce_pair();
    let response = authorize_from(&http(), &as_, &params(&doc_url, CALLBACK, &challenge)).await;
    assert_eq!(response.status(), 303);
    let location = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let (status, tokens) = post_form(
        &as_,
        "/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", &verifier),
            ("client_id", &doc_url),
        ],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    drop(as_);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let as_ = TestAs::start(dir.path(), &args).await;
    let (status, refreshed) = post_form(
        &as_,
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", &doc_url),
        ],
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "fetched once, at /authorize"
    );
}

#[tokio::test]
async fn sign_in_attempts_in_flight_count_against_the_backoff_allowance() {
    let dir = tempfile::tempdir().unwrap();
    let config = users_config();
    let as_ = TestAs::start(dir.path(), &["--config", config.path().to_str().unwrap()]).await;
    let client_id = client_with(&as_, CALLBACK).await;
    let browser = http_from(Some("127.0.0.5".parse().unwrap()));
    let mut forms = Vec::new();
    for _ in 0..12 {
        forms.push(consent_form(&browser, &as_, &client_id).await);
    }
    // 12 guesses for one name at once: only the name's 5 free failures are checked.
    let as_ = Arc::new(as_);
    let mut tasks = Vec::new();
    for form in forms {
        let (browser, as_) = (browser.clone(), Arc::clone(&as_));
        tasks.push(tokio::spawn(async move {
            sign_in(&browser, &as_, &form, "alice", "guess").await.0
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    let checked = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        (1..=5).contains(&checked),
        "at most 5 passwords checked: {statuses:?}"
    );
    assert_eq!(checked + refused, 12, "{statuses:?}");
}

/// A dev-mode grant for `client_id`: its token response.
async fn dev_grant(as_: &TestAs, client_id: &str) -> Value {
    let (verifier, challenge) = pkce_pair();
    let response = authorize_from(&http(), as_, &params(client_id, CALLBACK, &challenge)).await;
    assert_eq!(response.status(), 303);
    let location = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let (status, tokens) = post_form(
        as_,
        "/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", &verifier),
            ("client_id", client_id),
        ],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    tokens
}

async fn refresh(as_: &TestAs, client_id: &str, token: &str) -> (u16, Value) {
    post_form(
        as_,
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", client_id),
        ],
    )
    .await
}

#[tokio::test]
async fn a_refresh_token_presented_by_another_client_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &["--dev-user", "alice"]).await;
    let a = client_with(&as_, CALLBACK).await;
    let b = client_with(&as_, CALLBACK).await;
    let tokens = dev_grant(&as_, &a).await;
    let first = tokens["refresh_token"].as_str().unwrap();
    let (status, body) = refresh(&as_, &b, first).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // Neither used up nor revoked: A still refreshes with it.
    let (status, rotated) = refresh(&as_, &a, first).await;
    assert_eq!(status, 200, "{rotated}");
    // A used token of A presented by B does not trip reuse detection for A's grant.
    let (status, body) = refresh(&as_, &b, first).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, body) = refresh(&as_, &a, rotated["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn redirect_uris_refuse_userinfo_and_browser_or_os_launch_schemes() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &[]).await;
    for bad in [
        "https://claude.ai@evil.example/callback",
        "https://user:pass@a.example/cb",
        "http://claude.ai@127.0.0.1:33418/callback",
        "x-safari-https://evil.example/",
        "googlechrome://evil.example/",
        "googlechromes://evil.example/",
        "firefox://open-url?url=https://evil.example/",
        "opera://settings",
        "microsoft-edge:https://evil.example/",
        "itms-services://?action=download-manifest&url=https://evil.example/m.plist",
        "itms-apps://apps.apple.com/app/id1",
        "itms-beta://x",
        "shortcuts://run-shortcut?name=x",
        "x-apple-health://",
        "ms-word:ofe|u|https://evil.example/a.docx",
    ] {
        let (status, body) = register(
            &as_,
            json!({"redirect_uris": [bad], "token_endpoint_auth_method": "none"}),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_redirect_uri", "{bad}");
    }
    for good in [
        "claude://oauth/callback",
        "cursor://anysphere.cursor-retrieval/oauth",
        "vscode://vscode.github-authentication/did-authenticate",
        "com.example.app:/cb",
        "https://claude.ai/api/mcp/auth_callback",
        "http://127.0.0.1:33418/callback",
    ] {
        let (status, body) = register(
            &as_,
            json!({"redirect_uris": [good], "token_endpoint_auth_method": "none"}),
        )
        .await;
        assert_eq!(status, 201, "{good}: {body}");
    }
}

#[tokio::test]
async fn http2_connections_carry_at_most_16_concurrent_streams() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &[]).await;
    let mut socket = tokio::net::TcpStream::connect(as_.url.trim_start_matches("http://"))
        .await
        .unwrap();
    // The client preface and an empty SETTINGS frame; the server answers with its SETTINGS.
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut header = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut header))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(header[3], 0x4, "the server's first frame is SETTINGS");
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0u8; len];
    socket.read_exact(&mut payload).await.unwrap();
    let max_streams = payload.chunks_exact(6).find_map(|p| {
        (u16::from_be_bytes([p[0], p[1]]) == 0x3)
            .then(|| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
    });
    assert_eq!(max_streams, Some(16));
}
