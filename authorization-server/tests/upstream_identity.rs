//! Upstream identity end to end over real sockets (issue 16): an MCP server described as
//! data (`bmm_runtime`) calls a stand-in upstream API that records every request it sees,
//! with tokens from a real bmm-as process acting as the upstream's authorization server
//! (and as the MCP server's own issuer).
//!
//! - Client credentials: 50 concurrent tool calls reach the upstream with one token (one
//!   token request); a token near its expiry is renewed before it; a 401 from the upstream
//!   renews the token once and retries the call once; `private_key_jwt` with a PEM key
//!   from a declared secret and issuer discovery.
//! - Token exchange (RFC 8693): the upstream sees a token whose `aud` is the upstream,
//!   whose `sub` is the caller's and whose `act.sub` is the MCP server's client id; two
//!   callers are two subjects upstream; the same caller token reuses its exchanged token.
//! - Every request the upstream saw is checked: no MCP client token ever reaches it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bmm_runtime::ServerDef;
use bmm_runtime::def::{
    AnnotationsDef, BodyDef, BodyFormat, ClientAuthDef, Handler, HttpDef, Method, OAuthDef,
    OAuthGrant, SecretDef, TaskSupport, ToolDef, UpstreamAuthDef, UpstreamDef,
};
use bmm_runtime::run::{Args, prepare, serve};
use clap::Parser;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const CC_SECRET: &str = "notes-upstream-secret-0123456789abcdef";
const BOT_SECRET: &str = "bot-secret-0123456789abcdef0123456789";
const EXCHANGE_SECRET: &str = "notes-server-exchange-secret-0123456789";
const CALLBACK: &str = "http://127.0.0.1:33418/callback";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The claims of a compact JWS (not verified: the test reads what bmm-as put in).
fn claims(jwt: &str) -> Value {
    let part = jwt
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("not a JWT: {jwt}"));
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

// --- bmm-as, the built binary ---

/// A running bmm-as process; killed when dropped.
struct As {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for As {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl As {
    /// bmm-as with `config` (TOML) for `resources`, with `flags`.
    async fn start(config: &str, resources: &[&str], flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("bmm-as.toml");
        std::fs::write(&config_path, config).unwrap();
        let data_dir = dir.path().join("as-data");
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let log = dir.path().join("bmm-as.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_bmm-as"));
        command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--issuer", &url])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--config")
            .arg(&config_path)
            .args(["--dev-user", "alice"])
            .args(flags);
        for resource in resources {
            command.args(["--resource", resource]);
        }
        command
            .args(database_args(&data_dir))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = command.spawn().unwrap();
        let mut as_ = Self {
            child,
            url,
            log,
            _dir: dir,
        };
        as_.wait_ready().await;
        as_
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("bmm-as exited ({status}):\n{}", self.log_text());
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
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn token_endpoint(&self) -> String {
        format!("{}/token", self.url)
    }

    /// A `client_credentials` token of the machine client `bot` for `resource`: a second
    /// caller of the MCP server (its `sub` is `bot`).
    async fn bot_token(&self, resource: &str, scope: &str) -> String {
        let (status, body) = json_of(
            http()
                .post(self.token_endpoint())
                .basic_auth("bot", Some(BOT_SECRET))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("resource", resource),
                    ("scope", scope),
                ])
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{body}\n{}", self.log_text());
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// Alice's token for `resource` with `scope` (dev mode signs her in and approves).
    async fn alice_token(&self, resource: &str, scope: &str) -> String {
        let p = pkce();
        let response = http()
            .get(format!("{}/authorize", self.url))
            .query(&[
                ("response_type", "code"),
                ("client_id", "mcp-client"),
                ("redirect_uri", CALLBACK),
                ("code_challenge", p.challenge.as_str()),
                ("code_challenge_method", "S256"),
                ("state", "s1"),
                ("scope", scope),
                ("resource", resource),
            ])
            .send()
            .await
            .unwrap();
        assert!(
            [302, 303].contains(&response.status().as_u16()),
            "{}",
            response.text().await.unwrap()
        );
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let code = url::Url::parse(&location)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "code")
            .unwrap_or_else(|| panic!("no code in {location}"))
            .1
            .to_string();
        let (status, body) = json_of(
            http()
                .post(self.token_endpoint())
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", code.as_str()),
                    ("redirect_uri", CALLBACK),
                    ("code_verifier", p.verifier.as_str()),
                    ("client_id", "mcp-client"),
                    ("resource", resource),
                ])
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{body}\n{}", self.log_text());
        body["access_token"].as_str().unwrap().to_owned()
    }
}

/// The bmm-as configuration: the MCP server's machine clients at the upstream's AS
/// (`client_secret_basic`, and `private_key_jwt` with `jwk`), the MCP client alice signs in
/// with, the `bot` machine caller, and, with `exchange`, the MCP server as a resource
/// server that may exchange its callers' tokens for tokens of `upstream`.
fn as_config(mcp: &str, upstream: &str, jwk: &Value, exchange: bool) -> String {
    let jwks = json!({"keys": [jwk]}).to_string();
    let mut config = format!(
        r#"
scopes = ["items:read", "calendar.read", "calendar.write"]
default_scopes = ["items:read"]

[[clients]]
client_id = "notes-upstream"
client_secret = "{CC_SECRET}"
grant_types = ["client_credentials"]
scope = "calendar.read calendar.write"

[[clients]]
client_id = "notes-upstream-jwt"
jwks = '{jwks}'
grant_types = ["client_credentials"]
scope = "calendar.read"

[[clients]]
client_id = "mcp-client"
redirect_uris = ["{CALLBACK}"]

[[clients]]
client_id = "bot"
client_secret = "{BOT_SECRET}"
grant_types = ["client_credentials"]
scope = "items:read calendar.read"
"#
    );
    if exchange {
        config.push_str(&format!(
            r#"
[[resource_servers]]
resource = "{mcp}"
client_id = "notes-server"
client_secret_sha256 = "{}"
token_exchange = {{ audiences = ["{upstream}"] }}
"#,
            sha256_hex(EXCHANGE_SECRET)
        ));
    }
    config
}

// --- the stand-in upstream API ---

/// A request the upstream saw: its path and every header.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    /// The bearer token it carried.
    fn bearer(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .and_then(|(_, v)| v.strip_prefix("Bearer "))
    }
}

/// An upstream API on 127.0.0.1 that records every request and answers with what it saw;
/// tokens in `refuse` are answered 401.
#[derive(Clone, Default)]
struct StandIn {
    seen: Arc<Mutex<Vec<Seen>>>,
    refuse: Arc<Mutex<HashSet<String>>>,
    refuse_all: Arc<std::sync::atomic::AtomicBool>,
}

impl StandIn {
    /// Starts it; its base URL (also its resource identifier at bmm-as).
    async fn start(&self) -> String {
        let state = self.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap| {
                let state = state.clone();
                async move {
                    let seen = Seen {
                        path: uri.path().to_owned(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| {
                                (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                            })
                            .collect(),
                    };
                    let refused = state.refuse_all.load(std::sync::atomic::Ordering::SeqCst)
                        || seen
                            .bearer()
                            .is_some_and(|t| state.refuse.lock().unwrap().contains(t));
                    let authorization = seen
                        .headers
                        .iter()
                        .find(|(k, _)| k == "authorization")
                        .map(|(_, v)| v.clone());
                    state.seen.lock().unwrap().push(seen.clone());
                    let status = if refused {
                        axum::http::StatusCode::UNAUTHORIZED
                    } else {
                        axum::http::StatusCode::OK
                    };
                    (
                        status,
                        axum::Json(json!({"path": seen.path, "authorization": authorization})),
                    )
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/api")
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn refuse(&self, token: &str) {
        self.refuse.lock().unwrap().insert(token.to_owned());
    }

    fn refuse_all(&self) {
        self.refuse_all
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The bearer tokens seen on `path`, in order.
    fn tokens_on(&self, path: &str) -> Vec<String> {
        self.seen()
            .iter()
            .filter(|s| s.path == path)
            .map(|s| {
                s.bearer()
                    .unwrap_or_else(|| panic!("no bearer: {s:?}"))
                    .to_owned()
            })
            .collect()
    }

    /// Asserts that none of `mcp_tokens` appears anywhere in any request seen.
    fn assert_never_saw(&self, mcp_tokens: &[&str]) {
        let seen = self.seen();
        assert!(!seen.is_empty());
        for request in &seen {
            for (name, value) in &request.headers {
                for token in mcp_tokens {
                    assert!(
                        !value.contains(token),
                        "the MCP client's token reached the upstream in `{name}` of {}",
                        request.path
                    );
                }
            }
        }
    }
}

fn distinct(tokens: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in tokens {
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    out
}

// --- the MCP server ---

/// An EC P-256 key: the PEM of its PKCS#8 private key and its public JWK.
fn ec_key() -> (String, Value) {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "notes-1",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
    let b64 = STANDARD.encode(pkcs8.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    (pem, jwk)
}

fn get_tool(name: &'static str, upstream: &'static str, path: &'static str) -> ToolDef {
    get_tool_with_scopes(name, upstream, path, &[])
}

fn get_tool_with_scopes(
    name: &'static str,
    upstream: &'static str,
    path: &'static str,
    upstream_scopes: &'static [&'static str],
) -> ToolDef {
    ToolDef {
        name,
        title: None,
        description: "Calls the upstream.",
        input_schema: r#"{"type":"object"}"#,
        output_schema: None,
        annotations: AnnotationsDef::default(),
        scopes: &[],
        task: TaskSupport::Forbidden,
        rate_limit: None,
        handler: Handler::Http(HttpDef {
            upstream,
            method: Method::Get,
            path,
            query: &[],
            headers: &[],
            body: BodyDef::None,
            body_format: BodyFormat::Json,
            response_map: &[],
            upstream_scopes,
        }),
    }
}

fn oauth(grant: OAuthGrant, client_id: &'static str, client_auth: ClientAuthDef) -> OAuthDef {
    OAuthDef {
        grant,
        issuer: None,
        issuer_env: None,
        // Replaced at start-up by the environment (the bmm-as URL is known only then).
        token_url: Some("https://as.invalid/token"),
        token_url_env: Some("UPSTREAM_TOKEN_URL"),
        authorization_url: None,
        authorization_url_env: None,
        client_id,
        client_id_env: None,
        client_auth,
        audience: None,
        resource: None,
        scopes: &[],
    }
}

/// The server: `cc` (client credentials, `client_secret_basic`), `cc_jwt` (client
/// credentials, `private_key_jwt`, issuer discovery) and `as_user` (token exchange)
/// upstreams, all the stand-in at `upstream`.
fn def(upstream: &str) -> ServerDef {
    let resource = leak(upstream.to_owned());
    let cc: &'static OAuthDef = Box::leak(Box::new(OAuthDef {
        resource: Some(resource),
        scopes: &["calendar.read"],
        ..oauth(
            OAuthGrant::ClientCredentials,
            "notes-upstream",
            ClientAuthDef::SecretBasic {
                secret: "NOTES_UPSTREAM_SECRET",
            },
        )
    }));
    let cc_jwt: &'static OAuthDef = Box::leak(Box::new(OAuthDef {
        resource: Some(resource),
        scopes: &["calendar.read"],
        token_url: None,
        token_url_env: None,
        issuer: Some("https://as.invalid"),
        issuer_env: Some("UPSTREAM_ISSUER"),
        ..oauth(
            OAuthGrant::ClientCredentials,
            "notes-upstream-jwt",
            ClientAuthDef::PrivateKeyJwt {
                key: "NOTES_UPSTREAM_KEY",
            },
        )
    }));
    let exchange: &'static OAuthDef = Box::leak(Box::new(OAuthDef {
        audience: Some(resource),
        resource: Some(resource),
        ..oauth(
            OAuthGrant::TokenExchange,
            "notes-server",
            ClientAuthDef::SecretBasic {
                secret: "NOTES_EXCHANGE_SECRET",
            },
        )
    }));
    let upstreams: &'static [UpstreamDef] = Box::leak(
        [("cc", cc), ("cc_jwt", cc_jwt), ("as_user", exchange)]
            .map(|(id, o)| UpstreamDef {
                id,
                base_url: resource,
                base_url_env: None,
                auth: Some(UpstreamAuthDef::OAuth(o)),
                allow_hosts: &[],
                timeout_ms: 5000,
                max_retries: 0,
            })
            .to_vec()
            .into_boxed_slice(),
    );
    ServerDef {
        name: "notes",
        version: "0.1.0",
        title: None,
        instructions: None,
        scopes_supported: &["items:read"],
        required_scopes: &[],
        scope_hierarchy: &[],
        secrets: &[
            SecretDef {
                name: "NOTES_UPSTREAM_SECRET",
                description: "client secret",
            },
            SecretDef {
                name: "NOTES_UPSTREAM_KEY",
                description: "private key",
            },
            SecretDef {
                name: "NOTES_EXCHANGE_SECRET",
                description: "exchange secret",
            },
        ],
        upstreams,
        tools: vec![
            get_tool("machine_call", "cc", "/machine"),
            get_tool("machine_jwt_call", "cc_jwt", "/machine-jwt"),
            get_tool("as_me", "as_user", "/me"),
            get_tool_with_scopes("as_me_narrow", "as_user", "/me-narrow", &["calendar.read"]),
        ],
        resources: &[],
        resource_templates: &[],
        prompts: Vec::new(),
    }
}

/// Serves [`def`] on `listener`, trusting `as_` as its issuer, with the secrets.
fn serve_mcp(listener: tokio::net::TcpListener, as_: &As, upstream: &str, key_pem: &str) {
    let listen = listener.local_addr().unwrap().to_string();
    let args = Args::try_parse_from(["notes", "--listen", &listen, "--issuer", &as_.url]).unwrap();
    let env: HashMap<&str, String> = [
        ("NOTES_UPSTREAM_SECRET", CC_SECRET.to_owned()),
        ("NOTES_UPSTREAM_KEY", key_pem.to_owned()),
        ("NOTES_EXCHANGE_SECRET", EXCHANGE_SECRET.to_owned()),
        ("UPSTREAM_TOKEN_URL", as_.token_endpoint()),
        ("UPSTREAM_ISSUER", as_.url.clone()),
    ]
    .into_iter()
    .collect();
    let prepared = match prepare(def(upstream), &args, move |name: &str| {
        env.get(name).cloned()
    }) {
        Ok(p) => p,
        Err(e) => panic!("prepare: {e}"),
    };
    let server = bmm_middleware::Server::from_listener(listener, prepared.config.clone());
    tokio::spawn(serve(prepared, server, std::future::pending()));
}

/// Everything a test needs: the upstream, bmm-as, the MCP server.
struct World {
    upstream: StandIn,
    upstream_url: String,
    mcp: String,
    as_: As,
}

async fn world(exchange: bool, as_flags: &[&str]) -> World {
    let upstream = StandIn::default();
    let upstream_url = upstream.start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mcp = format!("http://{}/mcp", listener.local_addr().unwrap());
    let (pem, jwk) = ec_key();
    let as_ = As::start(
        &as_config(&mcp, &upstream_url, &jwk, exchange),
        &[&mcp, &upstream_url],
        as_flags,
    )
    .await;
    serve_mcp(listener, &as_, &upstream_url, &pem);
    World {
        upstream,
        upstream_url,
        mcp,
        as_,
    }
}

/// A stateless 2026-07-28 `tools/call` of `tool` with `token`: the JSON-RPC response.
async fn call(url: &str, token: &str, tool: &str) -> Value {
    let params = json!({"name": tool, "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"}}});
    let response = http()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .header("authorization", format!("Bearer {token}"))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .find_map(|d| serde_json::from_str::<Value>(d).ok())
        .or_else(|| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| panic!("no JSON-RPC message in {text}"))
}

/// A call that must succeed: its structured result.
async fn call_ok(url: &str, token: &str, tool: &str) -> Value {
    let r = call(url, token, tool).await;
    assert_eq!(r["result"]["isError"], false, "{r}");
    r["result"]["structuredContent"].clone()
}

// --- client credentials ---

/// 50 concurrent calls, one token at the upstream (one token request); the token the
/// upstream echoes back never reaches the MCP client (redacted); the MCP client's token
/// never reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_calls_share_one_client_credentials_token() {
    let w = world(false, &[]).await;
    let caller = w.as_.bot_token(&w.mcp, "items:read").await;
    let mut calls = Vec::new();
    for _ in 0..50 {
        let (mcp, caller) = (w.mcp.clone(), caller.clone());
        calls.push(tokio::spawn(async move {
            call_ok(&mcp, &caller, "machine_call").await
        }));
    }
    for c in calls {
        let result = c.await.unwrap();
        assert_eq!(result["path"], "/api/machine", "{result}");
        assert_eq!(
            result["authorization"], "Bearer [redacted]",
            "the upstream token is redacted from what the upstream echoed: {result}"
        );
    }
    let tokens = w.upstream.tokens_on("/api/machine");
    assert_eq!(tokens.len(), 50);
    let distinct = distinct(&tokens);
    assert_eq!(distinct.len(), 1, "one token for 50 concurrent calls");
    let c = claims(&distinct[0]);
    assert_eq!(c["aud"], json!(w.upstream_url), "{c}");
    assert_eq!(c["client_id"], "notes-upstream", "{c}");
    assert_eq!(c["sub"], "notes-upstream", "{c}");
    assert_eq!(c["scope"], "calendar.read", "{c}");
    assert!(c["jti"].is_string(), "{c}");
    w.upstream.assert_never_saw(&[&caller]);
}

/// The upstream answers 401 to the current token: that call renews it once and is made
/// once more; 10 calls refused at once with the same token renew it once in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_401_from_the_upstream_renews_the_token_once_and_retries_once() {
    let w = world(false, &[]).await;
    let caller = w.as_.bot_token(&w.mcp, "items:read").await;
    call_ok(&w.mcp, &caller, "machine_call").await;
    let first = w.upstream.tokens_on("/api/machine")[0].clone();

    w.upstream.refuse(&first);
    call_ok(&w.mcp, &caller, "machine_call").await;
    let tokens = w.upstream.tokens_on("/api/machine");
    assert_eq!(tokens.len(), 3, "one call, one refusal, one retry");
    assert_eq!(
        tokens[1], first,
        "the refused attempt used the cached token"
    );
    assert_ne!(tokens[2], first, "the retry used a new token");
    assert_ne!(claims(&tokens[2])["jti"], claims(&first)["jti"]);
    let second = tokens[2].clone();

    // Refused with the second token, 10 at once: one renewal for all of them.
    w.upstream.refuse(&second);
    let mut calls = Vec::new();
    for _ in 0..10 {
        let (mcp, caller) = (w.mcp.clone(), caller.clone());
        calls.push(tokio::spawn(async move {
            call_ok(&mcp, &caller, "machine_call").await
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    let tokens = w.upstream.tokens_on("/api/machine");
    assert_eq!(
        distinct(&tokens).len(),
        3,
        "first, second and one renewal for all the refused calls"
    );
    let later = &tokens[3..];
    let third = distinct(later).last().unwrap().clone();
    assert_eq!(
        later.iter().filter(|t| **t == third).count(),
        10,
        "every call succeeded with the renewed token"
    );
    let refused = later.iter().filter(|t| **t == second).count();
    assert!(
        (1..=10).contains(&refused),
        "calls that started before the renewal were refused once and retried once: {refused}"
    );

    // An upstream that refuses every token: one retry, then a tool error naming the
    // upstream and the status, without the token.
    w.upstream.refuse_all();
    let before = w.upstream.tokens_on("/api/machine").len();
    let r = call(&w.mcp, &caller, "machine_call").await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    let text = r["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("upstream `cc` answered 401"), "{text}");
    let after = w.upstream.tokens_on("/api/machine");
    assert_eq!(after.len(), before + 2, "one refusal, one retry");
    for token in distinct(&after) {
        assert!(!r.to_string().contains(&token), "{r}");
    }
    w.upstream.assert_never_saw(&[&caller]);
}

/// With a 60 s access-token lifetime, the token is reused until `exp - 6 s` and renewed
/// before it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_credentials_token_is_renewed_before_it_expires() {
    // It waits ~55 s for the runtime's renewal and tests nothing of bmm-as's store: the
    // PostgreSQL pass (the same binary with a database URL) leaves it to the SQLite one.
    if std::env::var_os("BMM_AS_TEST_DATABASE_URL").is_some() {
        return;
    }
    let w = world(false, &["--access-token-ttl", "60"]).await;
    let caller = w.as_.bot_token(&w.mcp, "items:read").await;
    call_ok(&w.mcp, &caller, "machine_call").await;
    let first = w.upstream.tokens_on("/api/machine")[0].clone();
    let c = claims(&first);
    let (iat, exp) = (c["iat"].as_u64().unwrap(), c["exp"].as_u64().unwrap());
    assert_eq!(exp - iat, 60, "{c}");

    // Well before the renewal point: reused.
    call_ok(&w.mcp, &caller, "machine_call").await;
    assert_eq!(w.upstream.tokens_on("/api/machine")[1], first);

    // Past `exp - 6 s` but before `exp`: a new one (the MCP token is renewed as well,
    // since it has the same 60 s lifetime).
    let renew_at = exp - 5;
    let wait = renew_at.saturating_sub(now());
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert!(now() < exp, "still before the first token's expiry");
    let caller = w.as_.bot_token(&w.mcp, "items:read").await;
    call_ok(&w.mcp, &caller, "machine_call").await;
    let tokens = w.upstream.tokens_on("/api/machine");
    assert_eq!(tokens.len(), 3);
    assert_ne!(tokens[2], first, "renewed near its expiry");
    let renewed = claims(&tokens[2]);
    assert!(
        renewed["iat"].as_u64().unwrap() < exp,
        "renewed before the old one expired: {renewed}"
    );
}

/// `private_key_jwt` with the PEM key of a declared secret, the token endpoint found by
/// discovery from the issuer.
#[tokio::test]
async fn private_key_jwt_client_credentials_with_a_discovered_token_endpoint() {
    let w = world(false, &[]).await;
    let caller = w.as_.bot_token(&w.mcp, "items:read").await;
    let result = call_ok(&w.mcp, &caller, "machine_jwt_call").await;
    assert_eq!(result["path"], "/api/machine-jwt");
    let tokens = w.upstream.tokens_on("/api/machine-jwt");
    let c = claims(&tokens[0]);
    assert_eq!(c["client_id"], "notes-upstream-jwt", "{c}");
    assert_eq!(c["aud"], json!(w.upstream_url), "{c}");
    w.upstream.assert_never_saw(&[&caller]);
}

// --- token exchange ---

/// The upstream sees an exchanged token: `aud` the upstream, `sub` the caller's,
/// `act.sub` the MCP server's client id; two callers are two subjects; the same caller
/// token reuses its exchanged token, another token of the same caller gets its own; the
/// tool's `upstream_scopes` narrow it; no MCP token ever reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exchanged_token_carries_the_callers_subject_to_the_upstream() {
    let w = world(true, &[]).await;
    let scope = "items:read calendar.read calendar.write";
    let alice = w.as_.alice_token(&w.mcp, scope).await;
    let bot = w.as_.bot_token(&w.mcp, "items:read calendar.read").await;

    let r = call(&w.mcp, &alice, "as_me").await;
    assert_eq!(r["result"]["isError"], false, "{r}\n{}", w.as_.log_text());
    let seen = w.upstream.tokens_on("/api/me");
    let a = claims(&seen[0]);
    assert_eq!(a["aud"], json!(w.upstream_url), "{a}");
    assert_eq!(a["sub"], "alice", "{a}");
    assert_eq!(a["act"]["sub"], "notes-server", "{a}");
    assert_eq!(a["client_id"], "mcp-client", "{a}");
    assert_eq!(a["iss"], w.as_.url, "{a}");

    // The same caller token: the cached exchanged token, also under concurrency.
    let mut calls = Vec::new();
    for _ in 0..10 {
        let (mcp, alice) = (w.mcp.clone(), alice.clone());
        calls.push(tokio::spawn(
            async move { call_ok(&mcp, &alice, "as_me").await },
        ));
    }
    for c in calls {
        c.await.unwrap();
    }
    let seen = w.upstream.tokens_on("/api/me");
    assert_eq!(seen.len(), 11);
    assert_eq!(
        distinct(&seen).len(),
        1,
        "one exchange for one caller token"
    );

    // Another caller: another subject upstream.
    call_ok(&w.mcp, &bot, "as_me").await;
    let b = claims(w.upstream.tokens_on("/api/me").last().unwrap());
    assert_eq!(b["sub"], "bot", "{b}");
    assert_eq!(b["act"]["sub"], "notes-server", "{b}");
    assert_ne!(b["jti"], a["jti"]);

    // Another token of alice's: its own exchange (the cache is per caller token).
    let alice_again = w.as_.alice_token(&w.mcp, scope).await;
    call_ok(&w.mcp, &alice_again, "as_me").await;
    let again = claims(w.upstream.tokens_on("/api/me").last().unwrap());
    assert_eq!(again["sub"], "alice");
    assert_ne!(again["jti"], a["jti"]);

    // The tool's upstream_scopes narrow the exchanged token.
    call_ok(&w.mcp, &alice, "as_me_narrow").await;
    let narrow = claims(&w.upstream.tokens_on("/api/me-narrow")[0]);
    assert_eq!(narrow["scope"], "calendar.read", "{narrow}");
    assert_eq!(narrow["sub"], "alice");

    w.upstream.assert_never_saw(&[&alice, &bot, &alice_again]);
    // Nor do the exchanged tokens reach the MCP client.
    let r = call(&w.mcp, &alice, "as_me").await;
    let text = r.to_string();
    for token in w.upstream.tokens_on("/api/me") {
        assert!(!text.contains(&token), "{text}");
    }
}

/// A caller the upstream's authorization server will not exchange for (its token lacks
/// the scope the tool asks for): a tool error naming the upstream and the OAuth error,
/// without any token.
#[tokio::test]
async fn a_refused_exchange_is_a_tool_error_naming_the_upstream_and_the_oauth_error() {
    let w = world(true, &[]).await;
    let bot = w.as_.bot_token(&w.mcp, "items:read").await;
    let r = call(&w.mcp, &bot, "as_me_narrow").await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    let text = r["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("upstream `as_user`"), "{text}");
    assert!(text.contains("invalid_scope"), "{text}");
    assert!(!text.contains(&bot), "{text}");
    assert!(w.upstream.seen().is_empty(), "nothing reached the upstream");
}
