//! Graceful shutdown and reload of a real server process (issue 17, item 6).
//!
//! This test binary is its own server: run with `BMM_LIFECYCLE_CHILD=1` it is the `main`
//! of a generated server (`bmm_runtime::main`) with one slow Rust tool, and its arguments
//! are that server's flags. Without it, it runs the tests below, each against such a child
//! process on a free loopback port, and signals it with `kill`.
//! (`harness = false`: libtest's own flags would reach the server's flag parser.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bmm_runtime::def::{AnnotationsDef, Handler, RateLimitDef, TaskSupport, ToolDef};
use bmm_runtime::{ServerDef, ToolOutput};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../middleware/tests/fixtures");
const CHILD: &str = "BMM_LIFECYCLE_CHILD";
const ISSUER: &str = "https://as.example.com";

fn sleeper(name: &'static str, rate_limit: Option<RateLimitDef>) -> ToolDef {
    ToolDef {
        name,
        title: None,
        description: "Answers after `ms` milliseconds.",
        input_schema: r#"{"type":"object","properties":{"ms":{"type":"integer","minimum":0,"maximum":60000}}}"#,
        output_schema: None,
        annotations: AnnotationsDef::default(),
        scopes: &[],
        task: TaskSupport::Forbidden,
        rate_limit,
        handler: Handler::Rust(Arc::new(|_ctx, args| {
            Box::pin(async move {
                let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(ToolOutput::Text(format!("slept {ms} ms")))
            })
        })),
    }
}

fn def() -> ServerDef {
    ServerDef {
        name: "lifecycle",
        version: "0.1.0",
        title: None,
        instructions: None,
        scopes_supported: &[],
        required_scopes: &[],
        scope_hierarchy: &[],
        secrets: &[],
        upstreams: &[],
        tools: vec![
            sleeper("slow", None),
            sleeper(
                "limited",
                Some(RateLimitDef {
                    count: 1,
                    per_secs: 3600,
                }),
            ),
        ],
        resources: &[],
        prompts: Vec::new(),
        resource_templates: &[],
    }
}

fn main() -> ExitCode {
    if std::env::var_os(CHILD).is_some() {
        return bmm_runtime::run::main(def());
    }
    let tests: [(&str, fn()); 5] = [
        (
            "sigterm_during_a_slow_tool_call_lets_it_finish_refuses_new_connections_and_exits_0",
            sigterm_during_a_slow_tool_call_lets_it_finish_refuses_new_connections_and_exits_0,
        ),
        (
            "sighup_makes_the_server_accept_a_key_added_to_the_jwks_after_start",
            sighup_makes_the_server_accept_a_key_added_to_the_jwks_after_start,
        ),
        (
            "sigterm_ends_a_legacy_sessions_open_get_stream_without_waiting_out_the_grace",
            sigterm_ends_a_legacy_sessions_open_get_stream_without_waiting_out_the_grace,
        ),
        (
            "rate_limit_flag_and_a_tools_own_rate_limit_answer_429",
            rate_limit_flag_and_a_tools_own_rate_limit_answer_429,
        ),
        (
            "a_call_cut_off_by_the_end_of_the_grace_is_audited_as_aborted",
            a_call_cut_off_by_the_end_of_the_grace_is_audited_as_aborted,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut passed = 0;
    for (name, test) in tests {
        if filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str())) {
            println!("test {name} ...");
            test();
            println!("test {name} ... ok");
            passed += 1;
        }
    }
    // A failing test panics, so the process exits non-zero before this line.
    println!("{passed} passed, 0 failed");
    ExitCode::SUCCESS
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn jwk(name: &str, kid: &str) -> Value {
    let mut jwk: Value =
        serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/{name}.jwk.json")).unwrap())
            .unwrap();
    jwk["kid"] = json!(kid);
    jwk
}

fn token(key: &str, kid: &str, resource: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.into());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(format!("{FIXTURES}/{key}.pem")).unwrap(),
    )
    .unwrap();
    jsonwebtoken::encode(
        &header,
        &json!({"iss": ISSUER, "sub": "alice", "client_id": "c", "aud": resource, "exp": now + 600}),
        &key,
    )
    .unwrap()
}

/// A JWKS endpoint whose keys the test can change.
async fn start_jwks(keys: Arc<Mutex<Vec<Value>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let keys = Arc::clone(&keys);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let doc = json!({"keys": *keys.lock().unwrap()}).to_string();
                    async move {
                        Ok::<_, Infallible>(http::Response::new(Full::new(bytes::Bytes::from(doc))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/jwks")
}

/// The child server; killed when dropped (if still running).
struct Server {
    child: Child,
    addr: std::net::SocketAddr,
    resource: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn start(jwks: &str, extra: &[&str]) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD, "1")
            .env_remove("RUST_LOG")
            .args(["--listen", &addr.to_string(), "--issuer", ISSUER])
            .args(["--jwks-uri", jwks])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self {
            child,
            addr,
            resource: format!("http://{addr}/mcp"),
        };
        // Ready: listening, and the signing keys loaded.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = reqwest::get(format!("http://{addr}/readyz"))
                .await
                .map(|r| r.status().as_u16());
            if matches!(ready, Ok(200)) {
                break server;
            }
            assert!(Instant::now() < deadline, "the server did not get ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn call(&self, token: &str, ms: u64) -> reqwest::Result<(u16, String)> {
        call_tool(&self.resource, token, "slow", ms).await
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// A stateless 2026-07-28 `tools/call` of `slow`.
async fn call(resource: &str, token: &str, ms: u64) -> reqwest::Result<(u16, String)> {
    call_tool(resource, token, "slow", ms).await
}

/// A stateless 2026-07-28 `tools/call` of `tool`.
async fn call_tool(
    resource: &str,
    token: &str,
    tool: &str,
    ms: u64,
) -> reqwest::Result<(u16, String)> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": tool, "arguments": {"ms": ms},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "lifecycle", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}
        }
    }});
    let response = reqwest::Client::new()
        .post(resource)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .json(&body)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

fn sigterm_during_a_slow_tool_call_lets_it_finish_refuses_new_connections_and_exits_0() {
    runtime().block_on(async {
        let keys = Arc::new(Mutex::new(vec![jwk("rsa-a", "k1")]));
        let jwks = start_jwks(keys).await;
        let mut server = Server::start(&jwks, &["--shutdown-grace-secs", "20"]).await;
        let token = token("rsa-a", "k1", &server.resource);
        let (status, text) = server.call(&token, 0).await.unwrap();
        assert_eq!(status, 200, "{text}");

        let slow = {
            let token = token.clone();
            let resource = server.resource.clone();
            tokio::spawn(async move { call(&resource, &token, 2_000).await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let signalled = Instant::now();
        server.signal("TERM");

        // The listening socket closes at once: a new connection is refused while the slow
        // call is still running.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::net::TcpStream::connect(server.addr).await {
                Err(e) => {
                    // A connection caught in the closing listener's backlog is reset
                    // rather than refused: both are a refusal.
                    assert!(
                        matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionRefused
                                | std::io::ErrorKind::ConnectionReset
                        ),
                        "{e}"
                    );
                    break;
                }
                Ok(_) => {
                    assert!(Instant::now() < deadline, "still accepting after SIGTERM");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        assert!(
            !slow.is_finished(),
            "the slow call ended before the drain was seen"
        );

        let (status, text) = slow.await.unwrap().expect("the slow call was answered");
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("slept 2000 ms"), "{text}");
        let exit = tokio::task::spawn_blocking(move || {
            let exit = server.wait_exit(Duration::from_secs(15));
            drop(server);
            exit
        })
        .await
        .unwrap()
        .expect("the server exited within the grace");
        assert!(exit.success(), "{exit:?}");
        assert!(signalled.elapsed() < Duration::from_secs(20));
    });
}

fn sighup_makes_the_server_accept_a_key_added_to_the_jwks_after_start() {
    runtime().block_on(async {
        let keys = Arc::new(Mutex::new(vec![jwk("rsa-a", "k1")]));
        let jwks = start_jwks(Arc::clone(&keys)).await;
        let server = Server::start(&jwks, &[]).await;
        let rotated = token("rsa-b", "k2", &server.resource);
        // Unknown kid: refused, and remembered as unknown for a while (no refetch).
        assert_eq!(server.call(&rotated, 0).await.unwrap().0, 401);
        keys.lock().unwrap().push(jwk("rsa-b", "k2"));
        assert_eq!(server.call(&rotated, 0).await.unwrap().0, 401);
        server.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, text) = server.call(&rotated, 0).await.unwrap();
            if status == 200 {
                assert!(text.contains("slept 0 ms"), "{text}");
                break;
            }
            assert_eq!(status, 401, "{text}");
            assert!(Instant::now() < deadline, "the new key was never accepted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The connection-keeping process is the same one: still serving.
        let old = token("rsa-a", "k1", &server.resource);
        assert_eq!(server.call(&old, 0).await.unwrap().0, 200);
    });
}

fn rate_limit_flag_and_a_tools_own_rate_limit_answer_429() {
    runtime().block_on(async {
        let keys = Arc::new(Mutex::new(vec![jwk("rsa-a", "k1")]));
        let jwks = start_jwks(keys).await;
        let server = Server::start(&jwks, &["--rate-limit", "3/hour"]).await;
        let token = token("rsa-a", "k1", &server.resource);
        let r = &server.resource;
        // `limited` allows one call an hour per caller; the caller has three requests.
        assert_eq!(call_tool(r, &token, "limited", 0).await.unwrap().0, 200);
        let (status, text) = call_tool(r, &token, "limited", 0).await.unwrap();
        assert_eq!(status, 429, "{text}");
        assert!(text.contains(r#""limit":"tool""#), "{text}");
        assert_eq!(call_tool(r, &token, "slow", 0).await.unwrap().0, 200);
        let (status, text) = call_tool(r, &token, "slow", 0).await.unwrap();
        assert_eq!(status, 429, "{text}");
        assert!(text.contains(r#""limit":"subject""#), "{text}");
    });
}

fn sigterm_ends_a_legacy_sessions_open_get_stream_without_waiting_out_the_grace() {
    runtime().block_on(async {
        let keys = Arc::new(Mutex::new(vec![jwk("rsa-a", "k1")]));
        let jwks = start_jwks(keys).await;
        let mut server = Server::start(&jwks, &["--shutdown-grace-secs", "30"]).await;
        let token = token("rsa-a", "k1", &server.resource);
        let http = reqwest::Client::new();
        let post = |body: Value, session: Option<String>| {
            let mut request = http
                .post(&server.resource)
                .bearer_auth(&token)
                .header("accept", "application/json, text/event-stream")
                .json(&body);
            if let Some(session) = session {
                request = request
                    .header("mcp-session-id", session)
                    .header("mcp-protocol-version", "2025-11-25");
            }
            request.send()
        };
        let init = post(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "lifecycle", "version": "1"}}}),
            None,
        )
        .await
        .unwrap();
        assert_eq!(init.status(), 200);
        let session = init.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        drop(init.text().await);
        let initialized = post(
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            Some(session.clone()),
        )
        .await
        .unwrap();
        assert!(initialized.status().is_success());
        let mut stream = http
            .get(&server.resource)
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-11-25")
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200);
        let reader = tokio::spawn(async move { while let Ok(Some(_)) = stream.chunk().await {} });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let signalled = Instant::now();
        server.signal("TERM");
        let exit = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(25)))
            .await
            .unwrap()
            .expect("the server exited");
        assert!(exit.success(), "{exit:?}");
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "the open stream held the shutdown for {:?}",
            signalled.elapsed()
        );
        let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    });
}

fn a_call_cut_off_by_the_end_of_the_grace_is_audited_as_aborted() {
    runtime().block_on(async {
        let keys = Arc::new(Mutex::new(vec![jwk("rsa-a", "k1")]));
        let jwks = start_jwks(keys).await;
        let dir = std::env::temp_dir().join(format!("bmm-lifecycle-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let audit = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&audit);
        let mut server = Server::start(
            &jwks,
            &[
                "--shutdown-grace-secs",
                "1",
                "--audit-log",
                audit.to_str().unwrap(),
            ],
        )
        .await;
        let token = token("rsa-a", "k1", &server.resource);
        let slow = {
            let token = token.clone();
            let resource = server.resource.clone();
            tokio::spawn(async move { call(&resource, &token, 30_000).await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.signal("TERM");
        let exit = tokio::task::spawn_blocking(move || {
            let exit = server.wait_exit(Duration::from_secs(15));
            drop(server);
            exit
        })
        .await
        .unwrap()
        .expect("the server exited after the grace");
        assert!(exit.success(), "{exit:?}");
        assert!(
            slow.await.unwrap().is_err(),
            "the cut-off call was answered"
        );
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let line = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["event"] == "tool_call" && l["tool"] == "slow")
            .unwrap_or_else(|| panic!("no tool_call line for the cut-off call: {text:?}"));
        assert_eq!(line["outcome"], "aborted", "{line}");
        assert_eq!(line["sub"], "alice", "{line}");
    });
}
