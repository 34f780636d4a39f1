//! Two bmm-as processes (the built binary) on one database: PostgreSQL when
//! `BMM_AS_TEST_DATABASE_URL` is set (`cargo xtask test-postgres`, CI), otherwise one
//! SQLite file in a shared data directory, which must be correct too. The flow alternates
//! between them; single-use and rotating state must be decided by the database: one of 50
//! concurrent redemptions of a code wins, parallel refreshes within the grace period all
//! succeed, a reuse after it revokes the family, a key rotated by one instance is published
//! by the other, a restart loses nothing, and a SIGKILL during a burst of token requests
//! leaves no half-written grant. A grant revoked while refreshes within the grace period
//! run stays revoked, and one used token is re-issued a bounded number of times.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const RESOURCE: &str = "http://127.0.0.1:4103/mcp";
const CALLBACK: &str = "http://127.0.0.1:33418/callback";

/// One shared database and the flags every instance on it gets.
struct Shared {
    dir: tempfile::TempDir,
    database: Vec<String>,
    issuer: String,
}

impl Shared {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database = match test_database_url() {
            Some(admin) => vec!["--database-url".to_owned(), create_database(&admin)],
            None => Vec::new(),
        };
        // Instances behind one load balancer publish one issuer.
        let issuer = format!("http://127.0.0.1:{}", free_port());
        Self {
            dir,
            database,
            issuer,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("as-data")
    }

    /// Starts an instance named `name` on `port` (0: a free one) with `extra` flags.
    async fn start(&self, name: &str, port: u16, extra: &[&str]) -> Instance {
        let port = if port == 0 { free_port() } else { port };
        let log = self.dir.path().join(format!("{name}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_bmm-as"));
        command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--issuer", &self.issuer])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--resource", RESOURCE, "--dev-user", "alice"])
            .args(&self.database)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = command.spawn().unwrap();
        let mut instance = Instance {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        instance.wait_ready().await;
        instance
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running bmm-as process; killed when dropped.
struct Instance {
    child: Child,
    port: u16,
    url: String,
    log: PathBuf,
}

impl Instance {
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("bmm-as exited ({status}):\n{}", read(&self.log));
            }
            if let Ok(r) = http()
                .get(format!("{}/jwks", self.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bmm-as did not answer within 60 s:\n{}",
                read(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn kids(&self) -> Vec<String> {
        let (status, jwks) = json_of(
            http()
                .get(format!("{}/jwks", self.url))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        let mut kids: Vec<String> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        kids.sort();
        kids
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn register(as_: &Instance) -> String {
    let (status, body) = json_of(
        http()
            .post(format!("{}/register", as_.url))
            .json(&json!({"client_name": "two instances", "redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["client_id"].as_str().unwrap().to_owned()
}

/// A code from `/authorize` (dev mode approves) and its PKCE verifier.
async fn code(as_: &Instance, client_id: &str) -> (String, String) {
    let p = pkce();
    let response = http()
        .get(format!("{}/authorize", as_.url))
        .query(&[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", CALLBACK),
            ("code_challenge", &p.challenge),
            ("code_challenge_method", "S256"),
            ("state", "xyz"),
            ("resource", RESOURCE),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303, "{:?}", response.text().await);
    let location = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    (code, p.verifier)
}

async fn token(url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    match http().post(format!("{url}/token")).form(form).send().await {
        Ok(response) => json_of(response).await,
        // A killed instance: no answer (status 0).
        Err(_) => (0, Value::Null),
    }
}

async fn redeem(url: &str, client_id: &str, code: &str, verifier: &str) -> (u16, Value) {
    token(
        url,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", verifier),
            ("client_id", client_id),
        ],
    )
    .await
}

async fn refresh(url: &str, client_id: &str, refresh_token: &str) -> (u16, Value) {
    token(
        url,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
        ],
    )
    .await
}

/// A fresh grant's refresh token, through `authorize_on` and `token_on`.
async fn grant(authorize_on: &Instance, token_on: &Instance, client_id: &str) -> String {
    let (code, verifier) = code(authorize_on, client_id).await;
    let (status, body) = redeem(&token_on.url, client_id, &code, &verifier).await;
    assert_eq!(status, 200, "{body}");
    body["refresh_token"].as_str().unwrap().to_owned()
}

fn refresh_token_of(body: &Value) -> String {
    body["refresh_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_flow_alternates_between_instances_and_a_restart_of_both_loses_nothing() {
    let shared = Shared::new();
    let a = shared.start("a", 0, &[]).await;
    let b = shared.start("b", 0, &[]).await;
    assert_eq!(
        a.kids().await,
        b.kids().await,
        "one signing key, published by both"
    );

    let client_id = register(&a).await;
    let (code, verifier) = code(&b, &client_id).await;
    let (status, tokens) = redeem(&a.url, &client_id, &code, &verifier).await;
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens["access_token"].is_string());
    let (status, refreshed) = refresh(&b.url, &client_id, &refresh_token_of(&tokens)).await;
    assert_eq!(status, 200, "{refreshed}");
    let (status, again) = refresh(&a.url, &client_id, &refresh_token_of(&refreshed)).await;
    assert_eq!(status, 200, "{again}");
    // The code was redeemed on A: B refuses it, and the replay revokes what it produced.
    let (status, body) = redeem(&b.url, &client_id, &code, &verifier).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = refresh(&b.url, &client_id, &refresh_token_of(&again)).await;
    assert_eq!(status, 400, "{body}");
    // Another grant, the other way round, to carry over the restart.
    let kept = grant(&a, &b, &client_id).await;
    let (status, again) = refresh(&a.url, &client_id, &kept).await;
    assert_eq!(status, 200, "{again}");

    // Restart both on the same database and ports: the client, the grant and the keys
    // are still there.
    let kids = a.kids().await;
    let (port_a, port_b) = (a.port, b.port);
    drop(a);
    drop(b);
    let a = shared.start("a2", port_a, &[]).await;
    let b = shared.start("b2", port_b, &[]).await;
    assert_eq!(a.kids().await, kids);
    assert_eq!(b.kids().await, kids);
    let (status, body) = refresh(&b.url, &client_id, &refresh_token_of(&again)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = refresh(&a.url, &client_id, &refresh_token_of(&body)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn of_fifty_concurrent_redemptions_of_one_code_across_both_instances_one_wins() {
    let shared = Shared::new();
    let a = shared.start("a", 0, &[]).await;
    let b = shared.start("b", 0, &[]).await;
    let client_id = register(&a).await;
    let (code, verifier) = code(&a, &client_id).await;
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..50 {
        let url = if i % 2 == 0 {
            a.url.clone()
        } else {
            b.url.clone()
        };
        let (client_id, code, verifier) = (client_id.clone(), code.clone(), verifier.clone());
        attempts.spawn(async move { redeem(&url, &client_id, &code, &verifier).await });
    }
    let results = attempts.join_all().await;
    let won: Vec<&Value> = results
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(won.len(), 1, "{results:?}");
    for (status, body) in &results {
        assert!(*status == 200 || *status == 400, "{status} {body}");
    }
    // The code was replayed: what it produced is revoked (RFC 6749 section 4.1.2).
    let (status, body) = refresh(&b.url, &client_id, &refresh_token_of(won[0])).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn parallel_refreshes_within_the_grace_period_succeed_and_a_reuse_after_it_revokes() {
    const GRACE: u64 = 10;
    let shared = Shared::new();
    let grace = GRACE.to_string();
    let a = shared
        .start("a", 0, &["--refresh-grace-secs", &grace])
        .await;
    let b = shared
        .start("b", 0, &["--refresh-grace-secs", &grace])
        .await;
    let client_id = register(&a).await;
    let original = grant(&a, &b, &client_id).await;

    // Twenty at once, alternating instances: all succeed (one rotation, nineteen within
    // the grace period) and the family stays alive.
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..20 {
        let url = if i % 2 == 0 {
            a.url.clone()
        } else {
            b.url.clone()
        };
        let (client_id, original) = (client_id.clone(), original.clone());
        attempts.spawn(async move { refresh(&url, &client_id, &original).await });
    }
    let results = attempts.join_all().await;
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
    }
    let successors: Vec<String> = results.iter().map(|(_, b)| refresh_token_of(b)).collect();
    let (status, body) = refresh(&b.url, &client_id, &successors[7]).await;
    assert_eq!(
        status, 200,
        "a later refresh with one of the new tokens works: {body}"
    );
    let newest = refresh_token_of(&body);

    // After the grace period the original is a reuse: the family is revoked everywhere.
    tokio::time::sleep(Duration::from_secs(GRACE) + Duration::from_millis(1100)).await;
    let (status, body) = refresh(&a.url, &client_id, &original).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    for (instance, token) in [(&b, &newest), (&a, &successors[3])] {
        let (status, body) = refresh(&instance.url, &client_id, token).await;
        assert_eq!(status, 400, "the family is revoked: {body}");
    }
}

/// RFC 7009 revocation of `token` by the public client `client_id`.
async fn revoke(url: &str, client_id: &str, token: &str) -> u16 {
    http()
        .post(format!("{url}/revoke"))
        .form(&[("token", token), ("client_id", client_id)])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_grant_revoked_while_refreshes_within_the_grace_period_run_stays_revoked() {
    // Review finding 1: the successor used to be stored after the used token was, in
    // another transaction, so a revocation between the two left it live.
    let shared = Shared::new();
    let a = shared.start("a", 0, &["--refresh-grace-secs", "60"]).await;
    let b = shared.start("b", 0, &["--refresh-grace-secs", "60"]).await;
    let client_id = register(&a).await;
    for trial in 0..6 {
        let original = grant(&a, &b, &client_id).await;
        let (status, body) = refresh(&a.url, &client_id, &original).await;
        assert_eq!(status, 200, "{body}");
        let first = refresh_token_of(&body);
        // 24 refreshes of the used token (within the grace period) on both instances,
        // and a revocation of the grant on B, all at once.
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(25));
        let mut refreshes = tokio::task::JoinSet::new();
        for i in 0..24 {
            let url = if i % 2 == 0 {
                a.url.clone()
            } else {
                b.url.clone()
            };
            let (client_id, original, start) = (client_id.clone(), original.clone(), start.clone());
            refreshes.spawn(async move {
                start.wait().await;
                refresh(&url, &client_id, &original).await
            });
        }
        let revocation = {
            let (url, client_id, first, start) = (
                b.url.clone(),
                client_id.clone(),
                first.clone(),
                start.clone(),
            );
            tokio::spawn(async move {
                start.wait().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
                revoke(&url, &client_id, &first).await
            })
        };
        let results = refreshes.join_all().await;
        assert_eq!(revocation.await.unwrap(), 200);
        let mut issued = vec![first];
        for (status, body) in &results {
            // Before the revocation: a new pair; after it: refused.
            match status {
                200 => issued.push(refresh_token_of(body)),
                400 => assert_eq!(body["error"], "invalid_grant", "{body}"),
                _ => panic!("{status} {body}"),
            }
        }
        let mut live = 0;
        for (i, token) in issued.iter().enumerate() {
            let url = if i % 2 == 0 { &a.url } else { &b.url };
            let (status, _) = refresh(url, &client_id, token).await;
            live += usize::from(status == 200);
        }
        assert_eq!(
            live,
            0,
            "trial {trial}: {live} of {} refresh tokens of a revoked grant still work",
            issued.len()
        );
    }
}

#[tokio::test]
async fn a_used_refresh_token_is_re_issued_a_bounded_number_of_times_within_the_grace_period() {
    // Review finding 12: the cap is 32 re-issues after the rotation.
    const CAP: usize = 32;
    let shared = Shared::new();
    let a = shared.start("a", 0, &["--refresh-grace-secs", "600"]).await;
    let b = shared.start("b", 0, &["--refresh-grace-secs", "600"]).await;
    let client_id = register(&a).await;
    let original = grant(&a, &b, &client_id).await;
    let (status, body) = refresh(&a.url, &client_id, &original).await;
    assert_eq!(status, 200, "{body}");
    let first = refresh_token_of(&body);
    let mut reissued = Vec::new();
    for i in 0..CAP {
        let url = if i % 2 == 0 { &a.url } else { &b.url };
        let (status, body) = refresh(url, &client_id, &original).await;
        assert_eq!(status, 200, "re-issue {i}: {body}");
        reissued.push(refresh_token_of(&body));
    }
    let (status, body) = refresh(&b.url, &client_id, &original).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    // Refused, not revoked: the grant and every pair already issued live on.
    for token in [&first, &reissued[0], &reissued[CAP - 1]] {
        let (status, body) = refresh(&a.url, &client_id, token).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn a_key_rotated_by_one_instance_is_published_by_the_other() {
    let shared = Shared::new();
    let a = shared.start("a", 0, &[]).await;
    let b = shared.start("b", 0, &[]).await;
    let before = b.kids().await;
    assert_eq!(a.kids().await, before);
    let port_a = a.port;
    drop(a);
    let a = shared.start("a2", port_a, &["--rotate-keys"]).await;
    let rotated: Vec<String> = a
        .kids()
        .await
        .into_iter()
        .filter(|k| !before.contains(k))
        .collect();
    assert_eq!(
        rotated.len(),
        1,
        "A publishes its new key at once: {rotated:?}"
    );
    // B reloads the keys from the store every 10 s: the new kid appears within a bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let kids = b.kids().await;
        if kids.contains(&rotated[0]) {
            assert!(
                before.iter().all(|k| kids.contains(k)),
                "the old key stays published"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never published {}: {kids:?}",
            rotated[0]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Both still issue tokens the other's client can refresh.
    let client_id = register(&b).await;
    let token = grant(&b, &a, &client_id).await;
    let (status, body) = refresh(&b.url, &client_id, &token).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_sigkill_during_a_burst_of_token_requests_leaves_no_half_written_grant() {
    const CHAINS: usize = 8;
    let shared = Shared::new();
    // A grace period long enough that a token whose answer was lost in the kill can be
    // presented again (as a client retrying does).
    let a = shared.start("a", 0, &["--refresh-grace-secs", "60"]).await;
    let b = shared.start("b", 0, &["--refresh-grace-secs", "60"]).await;
    let client_id = register(&b).await;
    let mut chains = Vec::new();
    for _ in 0..CHAINS {
        chains.push(grant(&b, &b, &client_id).await);
    }
    // Each chain refreshes on A as fast as it can, keeping the newest token it received;
    // A is killed while they run.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for start in chains {
        let (client_id, url) = (client_id.clone(), a.url.clone());
        let (stop, progress) = (stop.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut held = start;
            let mut received = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let response = http()
                    .post(format!("{url}/token"))
                    .form(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", held.as_str()),
                        ("client_id", client_id.as_str()),
                    ])
                    .send()
                    .await;
                let Ok(response) = response else { break };
                let (status, body) = json_of(response).await;
                if body.is_null() {
                    // The answer was cut off by the kill.
                    break;
                }
                assert_eq!(status, 200, "{body}");
                held = refresh_token_of(&body);
                received += 1;
                progress.fetch_add(1, Ordering::Relaxed);
            }
            (held, received)
        }));
    }
    let mut a = a;
    // Kill A once the burst is under way: a few answers per chain received (or a bound
    // passed, then the assertion below says so).
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(Ordering::Relaxed) < 4 * CHAINS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill();
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for task in tasks {
        let (held, received) = task.await.unwrap();
        total += received;
        // The newest token this client received works on B (directly, or within the
        // grace period if A used it but its answer was lost), and its successor too.
        let (status, body) = refresh(&b.url, &client_id, &held).await;
        assert_eq!(status, 200, "a token the client received must work: {body}");
        let (status, body) = refresh(&b.url, &client_id, &refresh_token_of(&body)).await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        total as usize >= 4 * CHAINS,
        "the burst made only {total} refreshes before the kill"
    );
}
