//! Per-user upstream connections end to end, over real sockets: a runtime server whose
//! HTTP tool's upstream is `user_oauth`, two real bmm-as processes (the MCP server's own
//! authorization server, users alice and bob, where the MCP tokens come from and where
//! whoever opens a connect link signs in first; and the upstream's, sign-in and consent as
//! alice), and a stand-in upstream API that records every request.
//!
//! The identity check (MCP: URL elicitation, phishing): bob, who opens alice's link and
//! signs in as himself, gets a 403 and nothing is stored for anyone (the vault is empty,
//! the upstream saw nothing); a modified link is refused.
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
use std::time::{Duration, SystemTime};

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

const CLIENT_ID: &str = "bmm-connections-test";
/// The MCP server's client at its own authorization server (the identity check).
const CONNECT_CLIENT: &str = "bmm-connect";
const CONNECT_SECRET: &str = "connect-secret-for-tests-only-0123456789";
/// The MCP client the test signs users in with.
const MCP_CLIENT: &str = "mcp-test-client";
const MCP_CLIENT_REDIRECT: &str = "http://127.0.0.1:9/callback";
/// wonderland (tests/consent/bmm-as.toml).
const PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$7fmTQThxut2Y0YnIBhe1Yg$+rl6QuLx63i16fclG8cKnACWop5qVxZDVk4OLlYwgd4";

/// The upstream's authorization server: alice.
fn upstream_as_config() -> String {
    format!(
        r#"
scopes = ["api:read"]
default_scopes = ["api:read"]

[[users]]
name = "alice"
password_hash = "{PASSWORD_HASH}"
"#
    )
}

/// The MCP server's authorization server: alice and bob (both `wonderland`), and the
/// server's confidential connect client with its verify redirect URI.
fn mcp_as_config(origin: &str) -> String {
    format!(
        r#"
scopes = ["demo"]
default_scopes = ["demo"]

[[users]]
name = "alice"
password_hash = "{PASSWORD_HASH}"

[[users]]
name = "bob"
password_hash = "{PASSWORD_HASH}"

[[clients]]
client_id = "{CONNECT_CLIENT}"
client_secret = "{CONNECT_SECRET}"
redirect_uris = ["{origin}/connections/verify"]
"#
    )
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
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

/// bmm-as on a free port (its files under `dir/name`), with `config`, issuing tokens for
/// `resource`, with `client` (`ID=REDIRECT_URI`) pre-registered as a public client.
async fn start_as(
    dir: &Path,
    name: &str,
    config: &str,
    resource: &str,
    client: &str,
) -> (String, Process) {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("bmm-as.toml");
    std::fs::write(&config_file, config).unwrap();
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
        .arg(&config_file)
        .args(["--resource", resource])
        .args(["--client", client])
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

/// `user` (password `wonderland`) signs in and approves at bmm-as `as_issuer` for the
/// authorization request `authorize`; returns where bmm-as redirects (the client's
/// redirect URI with `code`, `state` and `iss`).
async fn sign_in(authorize: &str, as_issuer: &str, user: &str) -> String {
    let client = http();
    let consent = client.get(authorize).send().await.unwrap();
    assert_eq!(consent.status(), 200, "{authorize}");
    let as_cookie = set_cookie(&consent, "bmm_csrf").expect("bmm-as's CSRF cookie");
    let page = consent.text().await.unwrap();
    let approve = client
        .post(format!("{as_issuer}/authorize"))
        .header("cookie", &as_cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("request_id", &hidden(&page, "request_id")),
            ("csrf", &hidden(&page, "csrf")),
            ("username", user),
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
    approve.headers()["location"].to_str().unwrap().to_owned()
}

/// An MCP access token for `user` from the MCP server's authorization server
/// (authorization code + PKCE as the test's MCP client).
async fn mcp_token(mcp_as: &str, resource: &str, user: &str) -> String {
    let verifier = "a-pkce-verifier-of-at-least-forty-three-characters-0123456789";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()),
    );
    let mut authorize = url::Url::parse(&format!("{mcp_as}/authorize")).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", MCP_CLIENT)
        .append_pair("redirect_uri", MCP_CLIENT_REDIRECT)
        .append_pair("state", "s")
        .append_pair("resource", resource)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let back = url::Url::parse(&sign_in(authorize.as_str(), mcp_as, user).await).unwrap();
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let token: Value = http()
        .post(format!("{mcp_as}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", MCP_CLIENT_REDIRECT),
            ("code_verifier", verifier),
            ("client_id", MCP_CLIENT),
            ("resource", resource),
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    token["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
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

/// The end of a connect flow.
enum Connected {
    /// The "connected" page.
    Page(String),
    /// The identity check refused: its status and page.
    Refused(u16, String),
}

/// Drives the connect flow from `link` in a browser-like HTTP client: the start page, its
/// POST, the sign-in at the MCP server's authorization server as `user`, the verify page
/// and, when it lets the browser through, alice's sign-in and consent at the upstream's
/// bmm-as and the callback.
async fn connect(link: &str, mcp_as: &str, upstream_as: &str, user: &str) -> Connected {
    let client = http();
    let start = client.get(link).send().await.unwrap();
    assert_eq!(start.status(), 200);
    assert_eq!(start.headers()["referrer-policy"], "no-referrer");
    assert!(
        start.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains(&format!("form-action 'self' {mcp_as}"))
    );
    let cookie = set_cookie(&start, "bmm_connect").expect("the CSRF cookie");
    let page = start.text().await.unwrap();
    assert!(
        !page.contains("alice") && !page.contains("bob"),
        "the start page does not say who generated the link: {page}"
    );
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
        authorize.starts_with(&format!("{mcp_as}/authorize?")),
        "sign-in at the MCP server's authorization server first: {authorize}"
    );
    assert!(authorize.contains(&format!("client_id={CONNECT_CLIENT}")));
    // The MCP server's bmm-as: `user` signs in.
    let verify = sign_in(&authorize, mcp_as, user).await;
    assert!(
        verify.starts_with(&format!("{origin}/connections/verify?")),
        "{verify}"
    );
    assert!(
        verify.contains("iss="),
        "bmm-as sends iss (RFC 9207): {verify}"
    );
    // Without this browser's cookie the sign-in is refused.
    let foreign = client.get(&verify).send().await.unwrap();
    assert_eq!(foreign.status(), 400);
    let verified = client
        .get(&verify)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    if verified.status() != 303 {
        let status = verified.status().as_u16();
        return Connected::Refused(status, verified.text().await.unwrap());
    }
    let authorize = verified.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        authorize.starts_with(&format!("{upstream_as}/authorize?")),
        "{authorize}"
    );
    // The upstream's bmm-as: alice signs in and approves.
    let callback = sign_in(&authorize, upstream_as, "alice").await;
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
    Connected::Page(page)
}

/// How many rows the vault holds.
fn vault_rows(path: &Path) -> i64 {
    let db = rusqlite::Connection::open(path).unwrap();
    db.query_row("SELECT COUNT(*) FROM bmm_vault_entries", [], |r| r.get(0))
        .unwrap()
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
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let origin = format!("http://{addr}");
    let mcp_url = format!("{origin}/mcp");
    let (as_issuer, _as) = start_as(
        dir.path(),
        "upstream-as",
        &upstream_as_config(),
        &api,
        &format!("{CLIENT_ID}={origin}/connections/api/callback"),
    )
    .await;
    let (mcp_as, _mcp_as) = start_as(
        dir.path(),
        "mcp-as",
        &mcp_as_config(&origin),
        &mcp_url,
        &format!("{MCP_CLIENT}={MCP_CLIENT_REDIRECT}"),
    )
    .await;

    let vault = dir.path().join("vault.sqlite");
    let args = Args::try_parse_from([
        "connections-test",
        "--listen",
        &addr.to_string(),
        "--issuer",
        &mcp_as,
        "--vault",
        vault.to_str().unwrap(),
        "--connect-client-id",
        CONNECT_CLIENT,
    ])
    .unwrap();
    let key = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
    let env = {
        let (api, as_issuer) = (api.clone(), as_issuer.clone());
        move |name: &str| match name {
            "API_BASE_URL" => Some(api.clone()),
            "API_AS_ISSUER" => Some(as_issuer.clone()),
            "BMM_VAULT_KEY" => Some(key.clone()),
            "BMM_CONNECT_CLIENT_SECRET" => Some(CONNECT_SECRET.to_owned()),
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
        url: mcp_url.clone(),
        client: http(),
    };
    let alice = mcp_token(&mcp_as, &mcp_url, "alice").await;
    let bob = mcp_token(&mcp_as, &mcp_url, "bob").await;
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

    // Bob opens alice's link and signs in as himself: refused, nothing stored for anyone,
    // nothing sent upstream.
    match connect(&legacy_link, &mcp_as, &as_issuer, "bob").await {
        Connected::Refused(status, page) => {
            assert_eq!(status, 403, "{page}");
            assert!(page.contains("made for another user"), "{page}");
            assert!(!page.contains("alice"), "{page}");
        }
        Connected::Page(page) => panic!("bob connected alice's link: {page}"),
    }
    assert_eq!(vault_rows(&vault), 0, "nothing stored for anyone");
    assert!(seen.authorizations.lock().unwrap().is_empty());
    let still = mcp
        .stateless(&alice, "list_repos", url_caps.clone(), None)
        .await;
    assert_eq!(still["result"]["resultType"], "input_required", "{still}");
    let bobs = mcp
        .stateless(&bob, "list_repos", url_caps.clone(), None)
        .await;
    assert_eq!(bobs["result"]["resultType"], "input_required", "{bobs}");
    // A modified link is refused (the sealed caller cannot be changed).
    let (head, t) = legacy_link.split_once("?t=").unwrap();
    let mut altered = t.to_owned().into_bytes();
    let at = altered.len() / 2;
    altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
    let altered = format!("{head}?t={}", String::from_utf8(altered).unwrap());
    let refused = http().get(&altered).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("not valid"));

    // Alice connects through the link of the legacy session.
    let Connected::Page(page) = connect(&legacy_link, &mcp_as, &as_issuer, "alice").await else {
        panic!("alice's own link was refused");
    };
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
    let Connected::Page(page) = connect(&stateless_link, &mcp_as, &as_issuer, "alice").await else {
        panic!("alice's own link was refused");
    };
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

fn offline_args(vault: &Path, extra: &[&str]) -> Args {
    let mut argv = vec![
        "connections-test",
        "--issuer",
        "https://mcp-as.example",
        "--jwks-uri",
        "http://127.0.0.1:9/jwks",
        "--vault",
        vault.to_str().unwrap(),
    ];
    argv.extend_from_slice(extra);
    Args::try_parse_from(argv).unwrap()
}

fn offline_env(name: &str) -> Option<String> {
    match name {
        "API_BASE_URL" => Some("http://127.0.0.1:9/api".to_owned()),
        "API_AS_ISSUER" => Some("http://127.0.0.1:9".to_owned()),
        _ => None,
    }
}

#[test]
fn a_user_oauth_server_without_a_vault_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault.sqlite");
    let args = offline_args(&vault, &["--connect-client-id", CONNECT_CLIENT]);
    let err = prepare(def("http://127.0.0.1:9/api"), &args, offline_env).unwrap_err();
    assert!(err.message.contains("BMM_VAULT_KEY"), "{err}");
    assert!(
        !vault.exists(),
        "nothing is created before the key is checked"
    );
    let short = |name: &str| match name {
        "BMM_VAULT_KEY" => Some("c2hvcnQ=".to_owned()),
        other => offline_env(other),
    };
    let err = prepare(def("http://127.0.0.1:9/api"), &args, short).unwrap_err();
    assert!(
        err.message.contains("BMM_VAULT_KEY") && !err.message.contains("c2hvcnQ"),
        "{err}"
    );
}

#[test]
fn a_user_oauth_server_without_the_identity_check_refuses_to_start_unless_told_to() {
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault.sqlite");
    let key = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
    let env = move |name: &str| match name {
        "BMM_VAULT_KEY" => Some(key.clone()),
        other => offline_env(other),
    };
    let err = prepare(
        def("http://127.0.0.1:9/api"),
        &offline_args(&vault, &[]),
        &env,
    )
    .unwrap_err();
    for needle in [
        "--connect-client-id",
        "BMM_CONNECT_CLIENT_ID",
        "--connect-without-identity-check",
        "/connections/verify",
        "`api`",
    ] {
        assert!(err.message.contains(needle), "{needle}: {err}");
    }
    assert!(!vault.exists(), "nothing is created when refused");
    // The explicit opt-out (a single-user deployment) starts.
    let args = offline_args(&vault, &["--connect-without-identity-check"]);
    prepare(def("http://127.0.0.1:9/api"), &args, &env).unwrap();
    // Both at once are refused by the flags themselves.
    assert!(
        Args::try_parse_from([
            "connections-test",
            "--connect-client-id",
            "x",
            "--connect-without-identity-check",
        ])
        .is_err()
    );
}
