//! bmm-as as the issuer of a generated server, end to end over real sockets: real bmm-as
//! processes (the built binary) issue tokens, and an MCP server described as data
//! (`bmm_runtime`, protected by its runtime flags) serves them on 127.0.0.1.
//!
//! - Opaque tokens (`token_format = "opaque"`) are accepted through bmm-as's `/introspect`,
//!   refused once revoked (after the introspection cache ceiling), refused when garbage
//!   or meant for another resource; an introspection outage is 503, never 200.
//! - Two bmm-as issuers trusted through `--issuers-file`: each one's token is accepted
//!   under its own issuer; an untrusted issuer's is not. With stand-in issuers whose keys
//!   share a `kid`, a token signed with one issuer's key and claiming the other is refused.
//! - `--audience api://…` is accepted only where configured; `--scope-claim scp` maps an
//!   `scp` array.
//! - `tools/list` with a read-only token omits the write tool, in both protocol eras.
//! - DPoP: a bound token from bmm-as (public client, code flow) works with its proof;
//!   as Bearer, with a replayed proof, another key's proof, a wrong `htu`/`htm`, a stale
//!   `iat` or no `ath` it is refused; an opaque DPoP-bound token too (cnf from introspection).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bmm_runtime::ServerDef;
use bmm_runtime::ToolOutput;
use bmm_runtime::def::{AnnotationsDef, Handler, TaskSupport, ToolDef};
use bmm_runtime::run::{Args, prepare, serve};
use clap::Parser;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const MACHINE_SECRET: &str = "machine-secret-0123456789abcdef";
const RS_SECRET: &str = "resource-server-secret-0123456789abcdef";
const CALLBACK: &str = "http://127.0.0.1:33418/callback";
/// A resource bmm-as knows but no test serves.
const OTHER_RESOURCE: &str = "http://127.0.0.1:4104/mcp";
const READ_TOOLS: [&str; 2] = ["whoami", "list_items"];
const ALL_TOOLS: [&str; 3] = ["whoami", "list_items", "write_item"];

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn unique() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    URL_SAFE_NO_PAD.encode(b)
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

/// The claims of a compact JWS (not verified).
fn payload(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
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
        self.kill();
    }
}

impl As {
    /// Starts bmm-as for `resources`, each with a resource server `rs-<i>` introspecting
    /// with [`RS_SECRET`] and the given token format (`None`: no resource server).
    async fn start(resources: &[(&str, Option<&str>)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from(
            r#"
scopes = ["items:read", "items:write"]
default_scopes = ["items:read"]
"#,
        );
        config.push_str(&format!(
            r#"
[[clients]]
client_id = "svc"
client_secret = "{MACHINE_SECRET}"
grant_types = ["client_credentials"]
scope = "items:read items:write"
"#
        ));
        for (i, (resource, format)) in resources.iter().enumerate() {
            if let Some(format) = format {
                config.push_str(&format!(
                    r#"
[[resource_servers]]
resource = "{resource}"
client_id = "rs-{i}"
client_secret_sha256 = "{}"
token_format = "{format}"
"#,
                    sha256_hex(RS_SECRET)
                ));
            }
        }
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
            .args(["--dev-user", "alice"]);
        for (resource, _) in resources {
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

    /// SIGKILL, and wait for the process to be gone.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn token_endpoint(&self) -> String {
        format!("{}/token", self.url)
    }

    /// A `client_credentials` token of `svc` for `resource` with `scope`, DPoP-bound when
    /// `proof` is given; the whole token response.
    async fn machine_token(&self, resource: &str, scope: &str, proof: Option<String>) -> Value {
        let mut request = http()
            .post(self.token_endpoint())
            .basic_auth("svc", Some(MACHINE_SECRET))
            .form(&[
                ("grant_type", "client_credentials"),
                ("resource", resource),
                ("scope", scope),
            ]);
        if let Some(proof) = proof {
            request = request.header("dpop", proof);
        }
        let (status, body) = json_of(request.send().await.unwrap()).await;
        assert_eq!(status, 200, "{body}\n{}", self.log_text());
        body
    }

    /// The access token of [`Self::machine_token`].
    async fn access_token(&self, resource: &str, scope: &str) -> String {
        self.machine_token(resource, scope, None).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Revokes `token` as `svc` (RFC 7009).
    async fn revoke(&self, token: &str) {
        let r = http()
            .post(format!("{}/revoke", self.url))
            .basic_auth("svc", Some(MACHINE_SECRET))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
}

// --- the MCP server ---

fn tool(
    name: &'static str,
    scopes: &'static [&'static str],
    read_only: bool,
    handler: Handler,
) -> ToolDef {
    ToolDef {
        name,
        title: None,
        description: "A tool.",
        input_schema: r#"{"type":"object"}"#,
        output_schema: None,
        annotations: AnnotationsDef {
            read_only: Some(read_only),
            ..Default::default()
        },
        scopes,
        task: TaskSupport::Forbidden,
        rate_limit: None,
        handler,
    }
}

fn text(reply: &'static str) -> Handler {
    Handler::Rust(Arc::new(move |_, _| {
        Box::pin(async move { Ok(ToolOutput::Text(reply.into())) })
    }))
}

/// A server with a read tool (`items:read`), a write tool (`items:write`) and `whoami`
/// (no scope), which answers what the middleware made of the token.
fn def() -> ServerDef {
    let whoami = Handler::Rust(Arc::new(|ctx, _| {
        Box::pin(async move {
            let auth = ctx.auth();
            ToolOutput::json(&json!({
                "issuer": auth.map(|a| a.issuer().to_owned()),
                "subject": auth.and_then(|a| a.subject()).map(str::to_owned),
                "client_id": auth.and_then(|a| a.client_id()).map(str::to_owned),
                "kind": auth.map(|a| format!("{:?}", a.token_kind())),
                "jkt": auth.and_then(|a| a.confirmation_jkt()).map(str::to_owned),
            }))
        })
    }));
    ServerDef {
        name: "items",
        version: "0.1.0",
        title: None,
        instructions: None,
        scopes_supported: &["items:read", "items:write"],
        required_scopes: &[],
        scope_hierarchy: &[],
        secrets: &[],
        upstreams: &[],
        tools: vec![
            tool("whoami", &[], true, whoami),
            tool("list_items", &["items:read"], true, text("items: a, b")),
            tool("write_item", &["items:write"], false, text("written")),
        ],
        resources: &[],
        resource_templates: &[],
        prompts: Vec::new(),
    }
}

/// A bound listener for the MCP server, and its resource URL (known before bmm-as starts).
async fn mcp_listener() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    (listener, url)
}

/// Serves [`def`] on `listener` with the runtime flags `flags`; `env` are its environment
/// variables (secrets).
fn serve_mcp(listener: tokio::net::TcpListener, flags: &[&str], env: &[(&str, &str)]) {
    let listen = listener.local_addr().unwrap().to_string();
    let args = Args::try_parse_from(
        ["items", "--listen", listen.as_str()]
            .into_iter()
            .chain(flags.iter().copied()),
    )
    .unwrap();
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let prepared = match prepare(def(), &args, move |name: &str| env.get(name).cloned()) {
        Ok(p) => p,
        Err(e) => panic!("prepare: {e}"),
    };
    let server = bmm_middleware::Server::from_listener(listener, prepared.config.clone());
    tokio::spawn(serve(prepared, server, std::future::pending()));
}

/// The flags and environment of a server introspecting at `as_` as `rs-<index>`.
fn introspection_flags(as_: &As, index: usize) -> (Vec<String>, String) {
    (
        vec![
            "--issuer".into(),
            as_.url.clone(),
            "--introspection-client-id".into(),
            format!("rs-{index}"),
            "--introspection-cache-secs".into(),
            "1".into(),
        ],
        RS_SECRET.to_owned(),
    )
}

fn start_introspecting(listener: tokio::net::TcpListener, as_: &As, index: usize) {
    let (flags, secret) = introspection_flags(as_, index);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    serve_mcp(
        listener,
        &flags,
        &[("BMM_INTROSPECTION_CLIENT_SECRET", secret.as_str())],
    );
}

/// How a request presents its token.
enum Auth<'a> {
    Bearer(&'a str),
    /// `Authorization: DPoP <token>` with this `DPoP` proof (none: no header).
    Dpop(&'a str, Option<String>),
}

/// A stateless 2026-07-28 request.
fn stateless(url: &str, auth: &Auth<'_>, method: &str, params: Value) -> reqwest::RequestBuilder {
    let mut params = params;
    params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"}});
    let mut r = http()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(name) = params["name"].as_str() {
        r = r.header("mcp-name", name);
    }
    r = match auth {
        Auth::Bearer(t) => r.header("authorization", format!("Bearer {t}")),
        Auth::Dpop(t, proof) => {
            let r = r.header("authorization", format!("DPoP {t}"));
            match proof {
                Some(p) => r.header("dpop", p.as_str()),
                None => r,
            }
        }
    };
    r.json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
}

/// A reply: status, `WWW-Authenticate` values joined, JSON-RPC message (JSON or SSE).
struct Reply {
    status: u16,
    challenge: String,
    session: Option<String>,
    body: Value,
}

async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(" | ");
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
        .find_map(|d| serde_json::from_str::<Value>(d).ok())
        .or_else(|| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    Reply {
        status,
        challenge,
        session,
        body,
    }
}

/// A stateless `tools/call` of `whoami`.
async fn whoami(url: &str, auth: &Auth<'_>) -> Reply {
    call(url, auth, "whoami").await
}

async fn call(url: &str, auth: &Auth<'_>, name: &str) -> Reply {
    reply(
        stateless(
            url,
            auth,
            "tools/call",
            json!({"name": name, "arguments": {}}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await
}

/// `whoami`'s structured result, asserting a 200.
async fn identity(url: &str, auth: &Auth<'_>) -> Value {
    let r = whoami(url, auth).await;
    assert_eq!(r.status, 200, "{} {}", r.challenge, r.body);
    assert_eq!(r.body["result"]["isError"], false, "{}", r.body);
    r.body["result"]["structuredContent"].clone()
}

fn tool_names(result: &Value) -> Vec<String> {
    result["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {result}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A stateless `tools/list`: the tool names.
async fn stateless_list(url: &str, token: &str) -> Vec<String> {
    let r = reply(
        stateless(url, &Auth::Bearer(token), "tools/list", json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{} {}", r.challenge, r.body);
    tool_names(&r.body["result"])
}

fn legacy_post(
    url: &str,
    token: &str,
    session: Option<&str>,
    body: Value,
) -> reqwest::RequestBuilder {
    let mut r = http()
        .post(url)
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

/// A legacy (2025-11-25) session's `tools/list`: the tool names.
async fn legacy_list(url: &str, token: &str) -> Vec<String> {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}});
    let r = reply(legacy_post(url, token, None, init).send().await.unwrap()).await;
    assert_eq!(r.status, 200, "{} {}", r.challenge, r.body);
    let session = r.session.expect("a legacy session id");
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let _ = legacy_post(url, token, Some(&session), initialized)
        .send()
        .await
        .unwrap();
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let r = reply(
        legacy_post(url, token, Some(&session), list)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{} {}", r.challenge, r.body);
    tool_names(&r.body["result"])
}

fn assert_refused(r: &Reply, status: u16, error: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {} {}", r.challenge, r.body);
    assert!(
        r.challenge.contains(&format!("error=\"{error}\"")),
        "{what}: expected error=\"{error}\" in: {}",
        r.challenge
    );
}

// --- keys of stand-in issuers and DPoP clients ---

/// A P-256 key pair.
struct EcKey(EcdsaKeyPair);

impl EcKey {
    fn new() -> Self {
        Self(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }

    fn xy(&self) -> (String, String) {
        let point = self.0.public_key().as_ref();
        (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..65]),
        )
    }

    /// The public JWK (only the members RFC 7638 hashes).
    fn public_jwk(&self) -> Value {
        let (x, y) = self.xy();
        json!({"kty": "EC", "crv": "P-256", "x": x, "y": y})
    }

    /// RFC 7638 thumbprint (SHA-256, base64url), computed here independently.
    fn thumbprint(&self) -> String {
        let (x, y) = self.xy();
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.0.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    /// An access token (ES256, `kid`) with `claims`.
    fn token(&self, kid: &str, claims: &Value) -> String {
        self.sign(
            &json!({"alg": "ES256", "typ": "at+jwt", "kid": kid}),
            claims,
        )
    }

    /// A DPoP proof (RFC 9449) for `htm` `htu`, with `ath` for `access_token` when given.
    fn proof(&self, htm: &str, htu: &str, access_token: Option<&str>, iat: u64) -> String {
        let mut claims = json!({"jti": unique(), "htm": htm, "htu": htu, "iat": iat});
        if let Some(t) = access_token {
            claims["ath"] = json!(URL_SAFE_NO_PAD.encode(Sha256::digest(t.as_bytes())));
        }
        self.sign(
            &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.public_jwk()}),
            &claims,
        )
    }
}

/// A stand-in issuer: its `jwks_uri` on a real HTTP server publishing `keys` under `kid`.
async fn jwks_server(keys: &[(&EcKey, &str)]) -> String {
    let doc = json!({"keys": keys.iter().map(|(k, kid)| {
        let mut jwk = k.public_jwk();
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!("ES256");
        jwk["use"] = json!("sig");
        jwk
    }).collect::<Vec<_>>()});
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move { axum::Json(doc) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/jwks")
}

fn claims(iss: &str, aud: Value, extra: Value) -> Value {
    let t = now();
    let mut c = json!({"iss": iss, "sub": "alice", "client_id": "client-a", "aud": aud,
        "iat": t, "exp": t + 300, "jti": unique()});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

// --- opaque tokens and introspection (C1) ---

/// An opaque token from bmm-as is accepted through `/introspect`; once revoked at bmm-as
/// and past the cache ceiling (1 s) it is 401; garbage and another resource's opaque
/// tokens are 401 `invalid_token`.
#[tokio::test]
async fn opaque_token_is_accepted_through_introspection_and_refused_once_revoked() {
    let (listener, url) = mcp_listener().await;
    let as_ = As::start(&[(&url, Some("opaque")), (OTHER_RESOURCE, Some("opaque"))]).await;
    start_introspecting(listener, &as_, 0);

    let token = as_.access_token(&url, "items:read items:write").await;
    assert!(token.starts_with("bmo_"), "an opaque token: {token}");
    let me = identity(&url, &Auth::Bearer(&token)).await;
    assert_eq!(me["kind"], "Opaque", "{me}");
    assert_eq!(me["issuer"], as_.url, "{me}");
    assert_eq!(me["client_id"], "svc", "{me}");
    assert_eq!(stateless_list(&url, &token).await, ALL_TOOLS);
    let write = call(&url, &Auth::Bearer(&token), "write_item").await;
    assert_eq!(write.status, 200, "{}", write.body);

    // A read-only opaque token: the write tool is hidden and refused.
    let read = as_.access_token(&url, "items:read").await;
    assert_eq!(stateless_list(&url, &read).await, READ_TOOLS);
    let refused = call(&url, &Auth::Bearer(&read), "write_item").await;
    assert_refused(
        &refused,
        403,
        "insufficient_scope",
        "write with a read-only opaque token",
    );

    // Revoked at bmm-as: refused once the cached answer (1 s ceiling) is gone.
    as_.revoke(&token).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = whoami(&url, &Auth::Bearer(&token)).await;
    assert_refused(&r, 401, "invalid_token", "a revoked opaque token");

    // Never issued, or not opaque-looking garbage.
    let forged = format!("bmo_{}", URL_SAFE_NO_PAD.encode([7u8; 32]));
    for garbage in [forged.as_str(), "not-a-token-at-all"] {
        let r = whoami(&url, &Auth::Bearer(garbage)).await;
        assert_refused(&r, 401, "invalid_token", garbage);
    }

    // An opaque token bmm-as issued for another resource: inactive for this server.
    let other = as_.access_token(OTHER_RESOURCE, "items:read").await;
    assert!(other.starts_with("bmo_"));
    let r = whoami(&url, &Auth::Bearer(&other)).await;
    assert_refused(&r, 401, "invalid_token", "another resource's opaque token");
}

/// bmm-as gone: a token never seen before is 503, and so is a token accepted before once
/// its cached answer has expired; never 200.
#[tokio::test]
async fn introspection_outage_is_503_never_200() {
    let (listener, url) = mcp_listener().await;
    let mut as_ = As::start(&[(&url, Some("opaque"))]).await;
    start_introspecting(listener, &as_, 0);
    let seen = as_.access_token(&url, "items:read").await;
    let fresh = as_.access_token(&url, "items:read").await;
    identity(&url, &Auth::Bearer(&seen)).await;

    as_.kill();
    let r = whoami(&url, &Auth::Bearer(&fresh)).await;
    assert_eq!(
        r.status, 503,
        "a new token during the outage: {} {}",
        r.challenge, r.body
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let r = whoami(&url, &Auth::Bearer(&seen)).await;
    assert_eq!(
        r.status, 503,
        "a known token past its cache ceiling during the outage: {} {}",
        r.challenge, r.body
    );
}

// --- several issuers (issue item 2) ---

/// Two bmm-as processes (distinct keys) in one `--issuers-file`: each one's token is
/// accepted under its own issuer; a third, untrusted bmm-as's is not, nor is A's token
/// whose `iss` was changed to B.
#[tokio::test]
async fn two_bmm_as_issuers_each_token_accepted_under_its_own_issuer() {
    let (listener, url) = mcp_listener().await;
    let a = As::start(&[(&url, None)]).await;
    let b = As::start(&[(&url, None)]).await;
    let c = As::start(&[(&url, None)]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("issuers.json");
    std::fs::write(
        &file,
        json!({"issuers": [{"issuer": a.url}, {"issuer": b.url}]}).to_string(),
    )
    .unwrap();
    serve_mcp(listener, &["--issuers-file", file.to_str().unwrap()], &[]);

    let ta = a.access_token(&url, "items:read").await;
    let tb = b.access_token(&url, "items:read").await;
    assert_ne!(payload(&ta)["iss"], payload(&tb)["iss"], "two issuers");
    assert_eq!(identity(&url, &Auth::Bearer(&ta)).await["issuer"], a.url);
    assert_eq!(identity(&url, &Auth::Bearer(&tb)).await["issuer"], b.url);

    let tc = c.access_token(&url, "items:read").await;
    let r = whoami(&url, &Auth::Bearer(&tc)).await;
    assert_eq!(
        r.status, 401,
        "an untrusted issuer: {} {}",
        r.challenge, r.body
    );

    // A's token and signature, claiming B.
    let mut parts: Vec<String> = ta.split('.').map(str::to_owned).collect();
    let mut claims = payload(&ta);
    claims["iss"] = json!(b.url);
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    let swapped = parts.join(".");
    let r = whoami(&url, &Auth::Bearer(&swapped)).await;
    assert_refused(&r, 401, "invalid_token", "A's token claiming B");
}

/// Issuers A and B publish different keys under the SAME `kid`: a token signed with A's
/// key is accepted only when it claims A, never when it claims B (and the other way).
#[tokio::test]
async fn a_key_of_one_issuer_never_validates_a_token_claiming_another() {
    let (listener, url) = mcp_listener().await;
    let (ka, kb) = (EcKey::new(), EcKey::new());
    let jwks_a = jwks_server(&[(&ka, "k1")]).await;
    let jwks_b = jwks_server(&[(&kb, "k1")]).await;
    let iss_a = jwks_a.replace("/jwks", "/issuer-a");
    let iss_b = jwks_b.replace("/jwks", "/issuer-b");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("issuers.yaml");
    let mut f = std::fs::File::create(&file).unwrap();
    write!(
        f,
        "issuers:\n  - issuer: {iss_a}\n    jwks_uri: {jwks_a}\n    algorithms: [ES256]\n  - issuer: {iss_b}\n    jwks_uri: {jwks_b}\n    algorithms: [ES256]\n"
    )
    .unwrap();
    drop(f);
    serve_mcp(listener, &["--issuers-file", file.to_str().unwrap()], &[]);

    let scope = json!({"scope": "items:read"});
    let good_a = ka.token("k1", &claims(&iss_a, json!(url), scope.clone()));
    let good_b = kb.token("k1", &claims(&iss_b, json!(url), scope.clone()));
    assert_eq!(
        identity(&url, &Auth::Bearer(&good_a)).await["issuer"],
        iss_a
    );
    assert_eq!(
        identity(&url, &Auth::Bearer(&good_b)).await["issuer"],
        iss_b
    );
    for (what, token) in [
        (
            "A's key claiming B",
            ka.token("k1", &claims(&iss_b, json!(url), scope.clone())),
        ),
        (
            "B's key claiming A",
            kb.token("k1", &claims(&iss_a, json!(url), scope.clone())),
        ),
    ] {
        let r = whoami(&url, &Auth::Bearer(&token)).await;
        assert_refused(&r, 401, "invalid_token", what);
    }
}

// --- audiences and scope claims (issue items 3 and 4) ---

/// `aud = api://x` is accepted where `--audience api://x` is configured (the canonical
/// URL still is), refused where it is not, and `api://y` is refused everywhere.
#[tokio::test]
async fn api_audience_is_accepted_only_where_configured() {
    let key = EcKey::new();
    let jwks = jwks_server(&[(&key, "k1")]).await;
    let issuer = jwks.replace("/jwks", "/tenant");
    let (listener, with) = mcp_listener().await;
    serve_mcp(
        listener,
        &[
            "--issuer",
            &issuer,
            "--jwks-uri",
            &jwks,
            "--audience",
            "api://x",
        ],
        &[],
    );
    let (listener, without) = mcp_listener().await;
    serve_mcp(listener, &["--issuer", &issuer, "--jwks-uri", &jwks], &[]);
    let scope = json!({"scope": "items:read"});
    let api_x = key.token("k1", &claims(&issuer, json!("api://x"), scope.clone()));
    let api_x_array = key.token("k1", &claims(&issuer, json!(["api://x"]), scope.clone()));
    let api_y = key.token("k1", &claims(&issuer, json!("api://y"), scope.clone()));

    identity(&with, &Auth::Bearer(&api_x)).await;
    identity(&with, &Auth::Bearer(&api_x_array)).await;
    let canonical = key.token("k1", &claims(&issuer, json!(with), scope.clone()));
    identity(&with, &Auth::Bearer(&canonical)).await;
    let r = whoami(&with, &Auth::Bearer(&api_y)).await;
    assert_refused(
        &r,
        401,
        "invalid_token",
        "api://y where api://x is configured",
    );

    let r = whoami(&without, &Auth::Bearer(&api_x)).await;
    assert_refused(
        &r,
        401,
        "invalid_token",
        "api://x where no audience is configured",
    );
    let canonical = key.token("k1", &claims(&issuer, json!(without), scope.clone()));
    identity(&without, &Auth::Bearer(&canonical)).await;
}

/// `--scope-claim scp`: an `scp` array grants its scopes (and `scope` is ignored);
/// `--scope-claim scope` ignores `scp`.
#[tokio::test]
async fn scp_array_is_mapped_with_scope_claim_scp() {
    let key = EcKey::new();
    let jwks = jwks_server(&[(&key, "k1")]).await;
    let issuer = jwks.replace("/jwks", "/okta");
    let (listener, scp) = mcp_listener().await;
    serve_mcp(
        listener,
        &[
            "--issuer",
            &issuer,
            "--jwks-uri",
            &jwks,
            "--scope-claim",
            "scp",
        ],
        &[],
    );
    let (listener, scope_only) = mcp_listener().await;
    serve_mcp(
        listener,
        &[
            "--issuer",
            &issuer,
            "--jwks-uri",
            &jwks,
            "--scope-claim",
            "scope",
        ],
        &[],
    );

    let read = key.token(
        "k1",
        &claims(&issuer, json!(scp), json!({"scp": ["items:read"]})),
    );
    assert_eq!(stateless_list(&scp, &read).await, READ_TOOLS);
    let r = call(&scp, &Auth::Bearer(&read), "list_items").await;
    assert_eq!(r.status, 200, "{} {}", r.challenge, r.body);
    let r = call(&scp, &Auth::Bearer(&read), "write_item").await;
    assert_refused(&r, 403, "insufficient_scope", "write with scp [items:read]");
    let both = key.token(
        "k1",
        &claims(
            &issuer,
            json!(scp),
            json!({"scp": ["items:read", "items:write"]}),
        ),
    );
    assert_eq!(stateless_list(&scp, &both).await, ALL_TOOLS);
    // `scope` is not read when the issuer's claim is `scp`.
    let scope_claim = key.token(
        "k1",
        &claims(
            &issuer,
            json!(scp),
            json!({"scope": "items:read items:write"}),
        ),
    );
    assert_eq!(stateless_list(&scp, &scope_claim).await, ["whoami"]);

    let read = key.token(
        "k1",
        &claims(&issuer, json!(scope_only), json!({"scp": ["items:read"]})),
    );
    assert_eq!(stateless_list(&scope_only, &read).await, ["whoami"]);
    let r = call(&scope_only, &Auth::Bearer(&read), "list_items").await;
    assert_refused(
        &r,
        403,
        "insufficient_scope",
        "scp with --scope-claim scope",
    );
}

// --- tools/list by scope (issue item 5) ---

/// A read-only JWT from bmm-as lists no write tool, in both protocol eras; a token with
/// both scopes lists it.
#[tokio::test]
async fn tools_list_with_a_read_only_token_from_bmm_as_omits_write_tools() {
    let (listener, url) = mcp_listener().await;
    let as_ = As::start(&[(&url, None)]).await;
    serve_mcp(listener, &["--issuer", &as_.url], &[]);
    let read = as_.access_token(&url, "items:read").await;
    assert_eq!(payload(&read)["scope"], "items:read");
    assert_eq!(stateless_list(&url, &read).await, READ_TOOLS);
    assert_eq!(legacy_list(&url, &read).await, READ_TOOLS);
    let all = as_.access_token(&url, "items:read items:write").await;
    assert_eq!(stateless_list(&url, &all).await, ALL_TOOLS);
    assert_eq!(legacy_list(&url, &all).await, ALL_TOOLS);
    let r = call(&url, &Auth::Bearer(&read), "write_item").await;
    assert_refused(
        &r,
        403,
        "insufficient_scope",
        "write with a read-only token",
    );
    assert!(r.challenge.contains("items:write"), "{}", r.challenge);
}

// --- DPoP (issue item 6) ---

/// A public client's code flow in dev mode with a DPoP proof at the token endpoint.
async fn dpop_code_flow(as_: &As, resource: &str, key: &EcKey) -> Value {
    let (status, reg) = json_of(
        http()
            .post(format!("{}/register", as_.url))
            .json(&json!({"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none", "client_name": "DPoP client"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{reg}");
    let client = reg["client_id"].as_str().unwrap().to_owned();
    let p = pkce();
    let response = http()
        .get(format!("{}/authorize", as_.url))
        .query(&[
            ("response_type", "code"),
            ("client_id", client.as_str()),
            ("redirect_uri", CALLBACK),
            ("code_challenge", p.challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("state", "s1"),
            ("scope", "items:read items:write"),
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
        .unwrap()
        .1
        .to_string();
    let proof = key.proof("POST", &as_.token_endpoint(), None, now());
    let (status, tokens) = json_of(
        http()
            .post(as_.token_endpoint())
            .header("dpop", proof)
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", CALLBACK),
                ("code_verifier", p.verifier.as_str()),
                ("client_id", client.as_str()),
                ("resource", resource),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{tokens}\n{}", as_.log_text());
    let mut tokens = tokens;
    tokens["client_id"] = json!(client);
    tokens
}

/// A DPoP-bound JWT from bmm-as works with its proof (htu = the server's URL); as Bearer,
/// with a replayed proof, another key's proof, a wrong `htu` or `htm`, a stale `iat`, no
/// `ath` or no proof it is refused with the DPoP challenge. The refresh token is bound too.
#[tokio::test]
async fn dpop_bound_token_from_bmm_as_works_and_every_misuse_is_refused() {
    let (listener, url) = mcp_listener().await;
    let as_ = As::start(&[(&url, None)]).await;
    serve_mcp(listener, &["--issuer", &as_.url], &[]);
    let (status, meta) = json_of(
        http()
            .get(format!(
                "{}/.well-known/oauth-authorization-server",
                as_.url
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        meta["dpop_signing_alg_values_supported"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("ES256"))),
        "{meta}"
    );

    let key = EcKey::new();
    let tokens = dpop_code_flow(&as_, &url, &key).await;
    assert_eq!(tokens["token_type"], "DPoP", "{tokens}");
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(payload(&token)["cnf"]["jkt"], key.thumbprint());

    let proof = key.proof("POST", &url, Some(&token), now());
    let me = identity(&url, &Auth::Dpop(&token, Some(proof.clone()))).await;
    assert_eq!(me["jkt"], key.thumbprint(), "{me}");
    assert_eq!(me["subject"], "alice", "{me}");
    // Another request, another proof.
    identity(
        &url,
        &Auth::Dpop(&token, Some(key.proof("POST", &url, Some(&token), now()))),
    )
    .await;

    let r = whoami(&url, &Auth::Dpop(&token, Some(proof))).await;
    assert_refused(&r, 401, "invalid_dpop_proof", "a replayed proof");
    assert!(r.challenge.contains("DPoP"), "{}", r.challenge);
    assert!(r.challenge.contains("algs="), "{}", r.challenge);

    let r = whoami(&url, &Auth::Bearer(&token)).await;
    assert_refused(&r, 401, "invalid_token", "a bound token as Bearer");

    let other = EcKey::new();
    let wrong_htu = url.replace("/mcp", "/other");
    let cases = [
        (
            "another key's proof",
            other.proof("POST", &url, Some(&token), now()),
        ),
        (
            "a wrong htu",
            key.proof("POST", &wrong_htu, Some(&token), now()),
        ),
        ("a wrong htm", key.proof("GET", &url, Some(&token), now())),
        (
            "a stale iat",
            key.proof("POST", &url, Some(&token), now() - 600),
        ),
        ("no ath", key.proof("POST", &url, None, now())),
    ];
    for (what, proof) in cases {
        let r = whoami(&url, &Auth::Dpop(&token, Some(proof))).await;
        assert_refused(&r, 401, "invalid_dpop_proof", what);
    }
    let r = whoami(&url, &Auth::Dpop(&token, None)).await;
    assert_eq!(r.status, 401, "no proof: {} {}", r.challenge, r.body);

    // A Bearer token presented with the DPoP scheme: refused.
    let bearer = as_.access_token(&url, "items:read").await;
    let r = whoami(
        &url,
        &Auth::Dpop(&bearer, Some(key.proof("POST", &url, Some(&bearer), now()))),
    )
    .await;
    assert_refused(
        &r,
        401,
        "invalid_token",
        "an unbound token with the DPoP scheme",
    );
    // And still works as Bearer (the default `--dpop allowed`).
    identity(&url, &Auth::Bearer(&bearer)).await;

    // The public client's refresh token is bound to the key: another key's proof is refused,
    // the key's own gets a new bound token.
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let client = tokens["client_id"].as_str().unwrap();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh),
        ("client_id", client),
    ];
    let (status, body) = json_of(
        http()
            .post(as_.token_endpoint())
            .header(
                "dpop",
                other.proof("POST", &as_.token_endpoint(), None, now()),
            )
            .form(&form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "refresh with another key: {body}");
    let (status, body) = json_of(
        http()
            .post(as_.token_endpoint())
            .header(
                "dpop",
                key.proof("POST", &as_.token_endpoint(), None, now()),
            )
            .form(&form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "refresh with the key: {body}");
    assert_eq!(body["token_type"], "DPoP");
    let renewed = body["access_token"].as_str().unwrap();
    identity(
        &url,
        &Auth::Dpop(renewed, Some(key.proof("POST", &url, Some(renewed), now()))),
    )
    .await;
}

/// An opaque DPoP-bound token (client_credentials with a proof): its binding comes from
/// introspection's `cnf.jkt`; it works with its proof and is refused as Bearer or with
/// another key's proof.
#[tokio::test]
async fn opaque_dpop_bound_token_is_bound_through_introspection() {
    let (listener, url) = mcp_listener().await;
    let as_ = As::start(&[(&url, Some("opaque"))]).await;
    start_introspecting(listener, &as_, 0);
    let key = EcKey::new();
    let body = as_
        .machine_token(
            &url,
            "items:read",
            Some(key.proof("POST", &as_.token_endpoint(), None, now())),
        )
        .await;
    assert_eq!(body["token_type"], "DPoP", "{body}");
    let token = body["access_token"].as_str().unwrap();
    assert!(token.starts_with("bmo_"));

    let me = identity(
        &url,
        &Auth::Dpop(token, Some(key.proof("POST", &url, Some(token), now()))),
    )
    .await;
    assert_eq!(me["kind"], "Opaque", "{me}");
    assert_eq!(me["jkt"], key.thumbprint(), "{me}");
    let r = whoami(&url, &Auth::Bearer(token)).await;
    assert_refused(&r, 401, "invalid_token", "an opaque bound token as Bearer");
    let other = EcKey::new();
    let r = whoami(
        &url,
        &Auth::Dpop(token, Some(other.proof("POST", &url, Some(token), now()))),
    )
    .await;
    assert_refused(&r, 401, "invalid_dpop_proof", "another key's proof");
}
