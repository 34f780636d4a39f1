//! Per-user upstream connections end to end, over real sockets: a runtime server whose
//! HTTP tool's upstream is `user_oauth`, a real bmm-as process as that upstream's
//! authorization server (sign-in and consent as alice), and a stand-in upstream API that
//! records every request.
//!
//! The first call answers with URL elicitation in each era (2026-07-28: input required
//! with `mode: "url"`; a legacy session that declared `elicitation.url`: `-32042`; any other
//! client: a tool error with the link), the connect flow is driven with an HTTP client (the
//! start page and its POST, bmm-as's sign-in and consent, the callback), the legacy
//! session is told the elicitation completed, and the retried calls succeed with alice's
//! upstream token; a 401 from the upstream refreshes it once; the upstream never sees the
//! MCP token; bob is not connected by alice's connection; the vault file holds no token;
//! disconnecting removes the connection.
//!
//! bmm-as: `BMM_AS_BIN` names the binary, else `target/debug/bmm-as`, built first
//! (`cargo build -p bmm-authorization-server --bin bmm-as`) when it is missing or older
//! than the sources it is built from (a workspace test run has just built it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bmm_runtime::ServerDef;
use bmm_runtime::def::{
    AnnotationsDef, BodyDef, BodyFormat, ClientAuthDef, Handler, HttpDef, Method, OAuthDef,
    OAuthGrant, TaskSupport, ToolDef, UpstreamAuthDef, UpstreamDef,
};
use bmm_runtime::run::{Args, prepare, serve};
use clap::Parser;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../middleware/tests/fixtures");
const MCP_ISSUER: &str = "https://mcp-as.example";
const CLIENT_ID: &str = "bmm-connections-test";
/// alice / wonderland (tests/consent/bmm-as.toml).
const AS_CONFIG: &str = r#"
scopes = ["api:read"]
default_scopes = ["api:read"]

[[users]]
name = "alice"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$7fmTQThxut2Y0YnIBhe1Yg$+rl6QuLx63i16fclG8cKnACWop5qVxZDVk4OLlYwgd4"
"#;

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The bmm-as binary (module docs).
fn bmm_as() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("BMM_AS_BIN") {
            return PathBuf::from(bin);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        let bin = target.join("debug").join("bmm-as");
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        let newest = [
            "authorization-server/src",
            "authorization-server/templates",
            "middleware/src",
            "core/src",
            "netguard/src",
            "Cargo.lock",
        ]
        .iter()
        .filter_map(|p| newest_mtime(&root.join(p)))
        .max();
        if built.is_none() || newest.is_some_and(|n| Some(n) > built) {
            let status = Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "bmm-authorization-server",
                    "--bin",
                    "bmm-as",
                ])
                .current_dir(root)
                .status()
                .expect("cargo build bmm-as");
            assert!(status.success(), "building bmm-as failed");
        }
        bin
    })
    .clone()
}

fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| newest_mtime(&e.path()))
        .max()
}

/// Kills bmm-as when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// bmm-as on a free port, issuing tokens for `resource`, with the runtime's callback as
/// its pre-registered public client's redirect URI.
async fn start_as(dir: &Path, resource: &str, redirect_uri: &str) -> (String, Process) {
    let config = dir.join("bmm-as.toml");
    std::fs::write(&config, AS_CONFIG).unwrap();
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("bmm-as.log")).unwrap();
    let child = Command::new(bmm_as())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--issuer",
            &issuer,
        ])
        .arg("--data-dir")
        .arg(dir.join("as-data"))
        .arg("--config")
        .arg(&config)
        .args(["--resource", resource])
        .args(["--client", &format!("{CLIENT_ID}={redirect_uri}")])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start bmm-as");
    let process = Process(child);
    let client = http();
    for _ in 0..150 {
        if client
            .get(format!("{issuer}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return (issuer, process);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "bmm-as did not start: {}",
        std::fs::read_to_string(dir.join("bmm-as.log")).unwrap_or_default()
    );
}

/// What the stand-in upstream API saw.
#[derive(Default)]
struct Upstream {
    /// The `Authorization` header of every request (empty when absent).
    authorizations: Mutex<Vec<String>>,
    /// Answer the next request 401 (a revoked token).
    reject_next: AtomicBool,
}

async fn start_upstream(seen: Arc<Upstream>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let seen = Arc::clone(&seen);
                        async move {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .map(|v| v.to_str().unwrap_or("").to_owned())
                                .unwrap_or_default();
                            seen.authorizations.lock().unwrap().push(auth);
                            let (status, body) = if seen.reject_next.swap(false, Ordering::SeqCst) {
                                (401, json!({"error": "token revoked"}))
                            } else {
                                (
                                    200,
                                    json!({"repos": ["alice/notes"], "path": req.uri().path()}),
                                )
                            };
                            let mut r = http::Response::new(Full::new(bytes::Bytes::from(
                                body.to_string(),
                            )));
                            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            r.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, Infallible>(r)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/api")
}

/// A JWKS endpoint with the middleware's RSA test key: the MCP side's issuer.
async fn start_jwks() -> String {
    let mut jwk: Value =
        serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/rsa-a.jwk.json")).unwrap())
            .unwrap();
    jwk["kid"] = json!("k1");
    let doc = json!({"keys": [jwk]}).to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let doc = doc.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let doc = doc.clone();
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

/// An MCP access token for `sub`.
fn mcp_token(resource: &str, sub: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("k1".into());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(format!("{FIXTURES}/rsa-a.pem")).unwrap(),
    )
    .unwrap();
    jsonwebtoken::encode(
        &header,
        &json!({"iss": MCP_ISSUER, "sub": sub, "client_id": "mcp-client", "aud": resource, "exp": now() + 600, "scope": "demo"}),
        &key,
    )
    .unwrap()
}

fn def(upstream_resource: &str) -> ServerDef {
    let oauth: &'static OAuthDef = Box::leak(Box::new(OAuthDef {
        grant: OAuthGrant::UserAuthorization,
        issuer: Some("https://upstream-as.invalid"),
        issuer_env: Some("API_AS_ISSUER"),
        token_url: None,
        token_url_env: None,
        authorization_url: None,
        authorization_url_env: None,
        client_id: CLIENT_ID,
        client_id_env: None,
        client_auth: ClientAuthDef::None,
        audience: None,
        resource: Some(leak(upstream_resource.to_owned())),
        scopes: &["api:read"],
    }));
    let upstreams: &'static [UpstreamDef] = Box::leak(Box::new([UpstreamDef {
        id: "api",
        base_url: "https://api.invalid/api",
        base_url_env: Some("API_BASE_URL"),
        auth: Some(UpstreamAuthDef::OAuth(oauth)),
        allow_hosts: &[],
        timeout_ms: 5000,
        max_retries: 0,
    }]));
    let tool = |name: &'static str, handler: Handler| ToolDef {
        name,
        title: None,
        description: "test",
        input_schema: r#"{"type":"object"}"#,
        output_schema: None,
        annotations: AnnotationsDef::default(),
        scopes: &[],
        task: TaskSupport::Forbidden,
        rate_limit: None,
        handler,
    };
    ServerDef {
        name: "connections-test",
        version: "0.1.0",
        title: Some("Connections Test"),
        instructions: None,
        scopes_supported: &["demo"],
        required_scopes: &[],
        scope_hierarchy: &[],
        secrets: &[],
        upstreams,
        tools: vec![
            tool(
                "list_repos",
                Handler::Http(HttpDef {
                    upstream: "api",
                    method: Method::Get,
                    path: "/repos",
                    query: &[],
                    headers: &[],
                    body: BodyDef::None,
                    body_format: BodyFormat::Json,
                    response_map: &[],
                    upstream_scopes: &[],
                }),
            ),
            tool("disconnect_api", Handler::Disconnect("api")),
        ],
        resources: &[],
        prompts: vec![],
        resource_templates: &[],
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

/// The JSON-RPC message of a response, JSON or SSE.
async fn rpc(response: reqwest::Response) -> (Option<String>, Value) {
    let session = response
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let body = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|m| m.get("id").is_some())
        .or_else(|| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    (session, body)
}

struct Mcp {
    url: String,
    client: reqwest::Client,
}

impl Mcp {
    /// A stateless 2026-07-28 `tools/call`.
    async fn stateless(
        &self,
        token: &str,
        tool: &str,
        caps: Value,
        responses: Option<Value>,
    ) -> Value {
        let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": caps, "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"}});
        let mut params = json!({"name": tool, "arguments": {}, "_meta": meta});
        if let Some(r) = responses {
            params["inputResponses"] = r;
        }
        let response = self
            .client
            .post(&self.url)
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", tool)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}))
            .send()
            .await
            .unwrap();
        rpc(response).await.1
    }

    fn legacy(&self, token: &str, session: Option<&str>, body: Value) -> reqwest::RequestBuilder {
        let mut r = self
            .client
            .post(&self.url)
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(s) = session {
            r = r
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-11-25");
        }
        r
    }

    /// A legacy session declaring `caps`.
    async fn session(&self, token: &str, caps: Value) -> String {
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": caps, "clientInfo": {"name": "test", "version": "1"}}});
        let (session, body) = rpc(self.legacy(token, None, init).send().await.unwrap()).await;
        assert!(body.get("result").is_some(), "{body}");
        let session = session.unwrap();
        self.legacy(
            token,
            Some(&session),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .send()
        .await
        .unwrap();
        session
    }

    async fn call(&self, token: &str, session: &str, tool: &str) -> Value {
        let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": {}}});
        rpc(self
            .legacy(token, Some(session), body)
            .send()
            .await
            .unwrap())
        .await
        .1
    }
}

fn text_of(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The value of `name`'s hidden input in an HTML page.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        + marker.len();
    let end = start + page[start..].find('"').unwrap();
    page[start..end].replace("&amp;", "&")
}

/// The `name=value` of a `Set-Cookie` header named `name`.
fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|pair| pair.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Drives the connect flow from `link` as alice in a browser-like HTTP client: the start
/// page, its POST, bmm-as's sign-in and consent, the callback. Returns the final page.
async fn connect(link: &str, as_issuer: &str) -> String {
    let client = http();
    let start = client.get(link).send().await.unwrap();
    assert_eq!(start.status(), 200);
    assert_eq!(start.headers()["referrer-policy"], "no-referrer");
    assert!(
        start.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains(&format!("form-action 'self' {as_issuer}"))
    );
    let cookie = set_cookie(&start, "bmm_connect").expect("the CSRF cookie");
    let page = start.text().await.unwrap();
    assert!(page.contains("id=\"subject\">alice<"), "{page}");
    let origin = link.split("/connections/").next().unwrap();
    let post = client
        .post(format!("{origin}/connections/api/start"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("t", &hidden(&page, "t")),
            ("csrf", &hidden(&page, "csrf")),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 303, "{}", post.text().await.unwrap());
    let authorize = post.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        authorize.starts_with(&format!("{as_issuer}/authorize?")),
        "{authorize}"
    );
    // bmm-as: its consent page, then alice signs in and approves.
    let consent = client.get(&authorize).send().await.unwrap();
    assert_eq!(consent.status(), 200);
    let as_cookie = set_cookie(&consent, "bmm_csrf").expect("bmm-as's CSRF cookie");
    let page = consent.text().await.unwrap();
    let approve = client
        .post(format!("{as_issuer}/authorize"))
        .header("cookie", &as_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("request_id", &hidden(&page, "request_id")),
            ("csrf", &hidden(&page, "csrf")),
            ("username", "alice"),
            ("password", "wonderland"),
            ("decision", "approve"),
        ]))
        .send()
        .await
        .unwrap();
    assert!(
        approve.status().is_redirection(),
        "{}",
        approve.text().await.unwrap()
    );
    let callback = approve.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        callback.starts_with(&format!("{origin}/connections/api/callback?")),
        "{callback}"
    );
    // Without this browser's cookie the callback is refused; with it, connected.
    let foreign = client.get(&callback).send().await.unwrap();
    assert_eq!(foreign.status(), 400);
    let done = client
        .get(&callback)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let status = done.status();
    let page = done.text().await.unwrap();
    assert_eq!(status, 200, "{page}");
    page
}

/// The claims of a JWT (not verified: the upstream here only records).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_user_connects_in_both_eras_and_the_upstream_sees_only_their_upstream_token() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Upstream::default());
    let api = start_upstream(Arc::clone(&seen)).await;
    let jwks = start_jwks().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let origin = format!("http://{addr}");
    let (as_issuer, _as) = start_as(
        dir.path(),
        &api,
        &format!("{origin}/connections/api/callback"),
    )
    .await;

    let vault = dir.path().join("vault.sqlite");
    let args = Args::try_parse_from([
        "connections-test",
        "--listen",
        &addr.to_string(),
        "--issuer",
        MCP_ISSUER,
        "--jwks-uri",
        &jwks,
        "--vault",
        vault.to_str().unwrap(),
    ])
    .unwrap();
    let key = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
    let env = {
        let (api, as_issuer) = (api.clone(), as_issuer.clone());
        move |name: &str| match name {
            "API_BASE_URL" => Some(api.clone()),
            "API_AS_ISSUER" => Some(as_issuer.clone()),
            "BMM_VAULT_KEY" => Some(key.clone()),
            _ => None,
        }
    };
    let prepared = prepare(def(&api), &args, env).unwrap();
    let server = bmm_middleware::Server::from_listener(
        TcpListener::from_std(listener).unwrap(),
        prepared.config.clone(),
    );
    tokio::spawn(serve(prepared, server, std::future::pending()));
    let mcp = Mcp {
        url: format!("{origin}/mcp"),
        client: http(),
    };
    let alice = mcp_token(&mcp.url, "alice");
    let bob = mcp_token(&mcp.url, "bob");
    let url_caps = json!({"elicitation": {"url": {}}});

    // 2026-07-28 with URL elicitation: input required, mode url; never -32042.
    let first = mcp
        .stateless(&alice, "list_repos", url_caps.clone(), None)
        .await;
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    let request = &result["inputRequests"]["bmm_connect_api"];
    assert_eq!(request["method"], "elicitation/create", "{first}");
    assert_eq!(request["params"]["mode"], "url");
    let stateless_link = request["params"]["url"].as_str().unwrap().to_owned();
    assert!(stateless_link.starts_with(&format!("{origin}/connections/api/start?t=")));
    assert!(
        request["params"]["message"]
            .as_str()
            .unwrap()
            .contains("api")
    );
    // Accepted without connecting: asked again.
    let again = mcp
        .stateless(
            &alice,
            "list_repos",
            url_caps.clone(),
            Some(json!({"bmm_connect_api": {"action": "accept"}})),
        )
        .await;
    assert_eq!(again["result"]["resultType"], "input_required", "{again}");
    // 2026-07-28 without URL elicitation: the tool error with the link.
    let plain = mcp.stateless(&alice, "list_repos", json!({}), None).await;
    assert_eq!(plain["result"]["isError"], true, "{plain}");
    assert!(text_of(&plain["result"]).contains("/connections/api/start?t="));

    // A legacy session without URL elicitation: the tool error with the link.
    let session = mcp.session(&alice, json!({})).await;
    let call = mcp.call(&alice, &session, "list_repos").await;
    assert_eq!(call["result"]["isError"], true, "{call}");
    assert!(text_of(&call["result"]).contains(&format!("{origin}/connections/api/start?t=")));

    // A legacy session with URL elicitation: -32042, and the completion notification on its
    // stream once the connection is stored.
    let url_session = mcp.session(&alice, url_caps.clone()).await;
    let mut stream = mcp
        .client
        .get(&mcp.url)
        .header("authorization", format!("Bearer {alice}"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &url_session)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let call = mcp.call(&alice, &url_session, "list_repos").await;
    assert_eq!(call["error"]["code"], -32042, "{call}");
    let elicitation = &call["error"]["data"]["elicitations"][0];
    assert_eq!(elicitation["mode"], "url");
    let elicitation_id = elicitation["elicitationId"].as_str().unwrap().to_owned();
    assert!(!elicitation_id.is_empty());
    let legacy_link = elicitation["url"].as_str().unwrap().to_owned();
    assert!(
        seen.authorizations.lock().unwrap().is_empty(),
        "no upstream call before connecting"
    );

    // Alice connects through the link of the legacy session.
    let page = connect(&legacy_link, &as_issuer).await;
    assert!(page.contains("Connected"), "{page}");
    let completed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut text = String::new();
        while let Some(chunk) = stream.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("notifications/elicitation/complete") {
                return text;
            }
        }
        text
    })
    .await
    .expect("the completion notification");
    assert!(completed.contains(&elicitation_id), "{completed}");

    // The retried calls succeed in both eras, with alice's upstream token.
    let ok = mcp
        .stateless(
            &alice,
            "list_repos",
            url_caps.clone(),
            Some(json!({"bmm_connect_api": {"action": "accept"}})),
        )
        .await;
    assert_eq!(
        ok["result"]["structuredContent"]["repos"][0], "alice/notes",
        "{ok}"
    );
    let ok = mcp.call(&alice, &url_session, "list_repos").await;
    assert_eq!(ok["result"]["isError"], false, "{ok}");
    // A 401 from the upstream: refreshed once, the call made again.
    seen.reject_next.store(true, Ordering::SeqCst);
    let ok = mcp.call(&alice, &session, "list_repos").await;
    assert_eq!(ok["result"]["isError"], false, "{ok}");
    {
        let auths = seen.authorizations.lock().unwrap();
        assert_eq!(auths.len(), 4, "{auths:?}");
        let tokens: Vec<&str> = auths
            .iter()
            .map(|a| a.strip_prefix("Bearer ").expect("a bearer token"))
            .collect();
        for token in &tokens {
            assert_ne!(*token, alice, "the MCP token never reaches the upstream");
            assert_ne!(*token, bob);
            let c = claims(token);
            assert_eq!(c["iss"], as_issuer.as_str(), "{c}");
            assert_eq!(c["sub"], "alice", "{c}");
            assert_eq!(c["aud"], api.as_str(), "{c}");
            assert_eq!(c["client_id"], CLIENT_ID, "{c}");
        }
        assert_eq!(tokens[0], tokens[1], "the stored token is reused");
        assert_eq!(tokens[1], tokens[2], "the one the upstream then refused");
        assert_ne!(tokens[2], tokens[3], "a refreshed token for the retry");
        // The vault file (and its WAL) never holds a token in clear.
        for name in ["vault.sqlite", "vault.sqlite-wal"] {
            let Ok(bytes) = std::fs::read(dir.path().join(name)) else {
                continue;
            };
            for token in &tokens {
                let needle = token.split('.').nth(2).unwrap().as_bytes();
                assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{name}");
            }
        }
    }

    // Bob is not connected by alice's connection; he declines.
    let bobs = mcp
        .stateless(&bob, "list_repos", url_caps.clone(), None)
        .await;
    assert_eq!(bobs["result"]["resultType"], "input_required", "{bobs}");
    let declined = mcp
        .stateless(
            &bob,
            "list_repos",
            url_caps.clone(),
            Some(json!({"bmm_connect_api": {"action": "decline"}})),
        )
        .await;
    assert_eq!(declined["result"]["isError"], true, "{declined}");
    assert!(text_of(&declined["result"]).contains("declined"));
    // Bob's disconnect finds nothing; alice's removes hers, and she is asked again.
    let none = mcp.stateless(&bob, "disconnect_api", json!({}), None).await;
    assert!(text_of(&none["result"]).contains("no connection"), "{none}");
    let gone = mcp
        .stateless(&alice, "disconnect_api", json!({}), None)
        .await;
    assert!(text_of(&gone["result"]).contains("Disconnected"), "{gone}");
    let asked = mcp
        .stateless(&alice, "list_repos", url_caps.clone(), None)
        .await;
    assert_eq!(asked["result"]["resultType"], "input_required", "{asked}");
    assert_eq!(seen.authorizations.lock().unwrap().len(), 4);

    // The stateless link works too (the legacy one was the first used): alice connects
    // again and the call goes through.
    let page = connect(&stateless_link, &as_issuer).await;
    assert!(page.contains("Connected"), "{page}");
    let ok = mcp
        .stateless(
            &alice,
            "list_repos",
            url_caps,
            Some(json!({"bmm_connect_api": {"action": "accept"}})),
        )
        .await;
    assert_eq!(
        ok["result"]["structuredContent"]["repos"][0], "alice/notes",
        "{ok}"
    );
}

#[test]
fn a_user_oauth_server_without_a_vault_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault.sqlite");
    let args = Args::try_parse_from([
        "connections-test",
        "--issuer",
        MCP_ISSUER,
        "--jwks-uri",
        "http://127.0.0.1:9/jwks",
        "--vault",
        vault.to_str().unwrap(),
    ])
    .unwrap();
    let env = |name: &str| match name {
        "API_BASE_URL" => Some("http://127.0.0.1:9/api".to_owned()),
        "API_AS_ISSUER" => Some("http://127.0.0.1:9".to_owned()),
        _ => None,
    };
    let err = prepare(def("http://127.0.0.1:9/api"), &args, env).unwrap_err();
    assert!(err.message.contains("BMM_VAULT_KEY"), "{err}");
    assert!(
        !vault.exists(),
        "nothing is created before the key is checked"
    );
    let short = |name: &str| match name {
        "BMM_VAULT_KEY" => Some("c2hvcnQ=".to_owned()),
        other => env(other),
    };
    let err = prepare(def("http://127.0.0.1:9/api"), &args, short).unwrap_err();
    assert!(
        err.message.contains("BMM_VAULT_KEY") && !err.message.contains("c2hvcnQ"),
        "{err}"
    );
}
