//! A small server on real sockets for the metrics and audit tests: a Rust tool, an HTTP
//! tool against a local upstream, a tool needing a scope, a JWKS endpoint, real JWTs.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bmm_runtime::def::{
    AnnotationsDef, BodyDef, BodyFormat, Handler, HttpDef, Method, SecretDef, TaskSupport, ToolDef,
    UpstreamAuthDef, UpstreamDef,
};
use bmm_runtime::run::{Args, prepare, serve};
use bmm_runtime::{ServerDef, ToolOutput};
use clap::Parser;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../middleware/tests/fixtures");

pub(crate) const ISSUER: &str = "https://as.example.com";

static SECRETS: &[SecretDef] = &[SecretDef {
    name: "ITEMS_API_KEY",
    description: "key for the items API",
}];

static UPSTREAMS: &[UpstreamDef] = &[UpstreamDef {
    id: "items",
    base_url: "https://items.invalid/api",
    base_url_env: Some("ITEMS_BASE_URL"),
    auth: Some(UpstreamAuthDef::Header {
        name: "X-Api-Key",
        secret: "ITEMS_API_KEY",
    }),
    allow_hosts: &[],
    timeout_ms: 5000,
    max_retries: 0,
}];

fn tool(name: &'static str, scopes: &'static [&'static str], handler: Handler) -> ToolDef {
    ToolDef {
        name,
        title: None,
        description: "A test tool.",
        input_schema: r#"{"type":"object","properties":{"id":{"type":"string"},"greeting":{"type":"string"}}}"#,
        output_schema: None,
        annotations: AnnotationsDef::default(),
        scopes,
        task: TaskSupport::Forbidden,
        rate_limit: None,
        handler,
    }
}

fn def() -> ServerDef {
    ServerDef {
        name: "observed",
        version: "0.1.0",
        title: None,
        instructions: None,
        scopes_supported: &["demo:read", "demo:admin"],
        required_scopes: &[],
        scope_hierarchy: &[],
        secrets: SECRETS,
        upstreams: UPSTREAMS,
        tools: vec![
            tool(
                "whoami",
                &[],
                Handler::Rust(Arc::new(|_, _| {
                    Box::pin(async { Ok(ToolOutput::Text("you".into())) })
                })),
            ),
            tool(
                "get_item",
                &["demo:read"],
                Handler::Http(HttpDef {
                    upstream: "items",
                    method: Method::Get,
                    path: "/items/{id}",
                    query: &[],
                    headers: &[],
                    body: BodyDef::None,
                    body_format: BodyFormat::Json,
                    response_map: &[],
                    upstream_scopes: &[],
                }),
            ),
            tool(
                "purge",
                &["demo:admin"],
                Handler::Rust(Arc::new(|_, _| {
                    Box::pin(async { Ok(ToolOutput::Text("purged".into())) })
                })),
            ),
        ],
        resources: &[],
        prompts: Vec::new(),
        resource_templates: &[],
    }
}

/// An upstream answering every request with a JSON item.
async fn start_upstream() -> String {
    serve_fixed(json!({"item": {"name": "an item"}}).to_string(), "/api").await
}

/// A JWKS endpoint with the middleware's RSA test key.
async fn start_jwks() -> String {
    let mut jwk: Value =
        serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/rsa-a.jwk.json")).unwrap())
            .unwrap();
    jwk["kid"] = json!("k1");
    serve_fixed(json!({"keys": [jwk]}).to_string(), "/jwks").await
}

async fn serve_fixed(body: String, path: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        let mut r = http::Response::new(Full::new(bytes::Bytes::from(body)));
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
    format!("http://{addr}{path}")
}

/// A signed access token for the server at `resource`.
pub(crate) fn token(resource: &str, scope: &str, client_id: &str, expires_in: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("k1".into());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(format!("{FIXTURES}/rsa-a.pem")).unwrap(),
    )
    .unwrap();
    jsonwebtoken::encode(
        &header,
        &json!({"iss": ISSUER, "sub": "alice", "client_id": client_id, "aud": resource, "iat": now - 1200, "exp": now + expires_in, "scope": scope}),
        &key,
    )
    .unwrap()
}

/// A running server.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) url: String,
}

/// The flags a server is started with, besides `extra`.
pub(crate) fn args(addr: SocketAddr, jwks: &str, extra: &[&str]) -> Args {
    Args::try_parse_from(
        [
            "observed",
            "--listen",
            &addr.to_string(),
            "--issuer",
            ISSUER,
            "--jwks-uri",
            jwks,
        ]
        .into_iter()
        .chain(extra.iter().copied()),
    )
    .unwrap()
}

/// Starts the server with `extra` flags and `salt` as `BMM_AUDIT_SALT`.
pub(crate) async fn start(extra: &[&str], salt: Option<&'static str>) -> Running {
    let upstream = start_upstream().await;
    let jwks = start_jwks().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let args = args(addr, &jwks, extra);
    let env = move |name: &str| match name {
        "ITEMS_API_KEY" => Some("secret-key-123".to_owned()),
        "ITEMS_BASE_URL" => Some(upstream.clone()),
        "BMM_AUDIT_SALT" => salt.map(str::to_owned),
        _ => None,
    };
    let prepared = prepare(def(), &args, env).unwrap();
    let server = bmm_middleware::Server::bind(addr, prepared.config.clone())
        .await
        .unwrap();
    tokio::spawn(serve(prepared, server, std::future::pending()));
    Running {
        addr,
        url: format!("http://{addr}/mcp"),
    }
}

/// Sends a stateless 2026-07-28 `tools/call`; the HTTP status and the JSON-RPC answer.
pub(crate) async fn call_tool(
    s: &Running,
    token: Option<&str>,
    name: &str,
    arguments: Value,
) -> (u16, Value) {
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"}});
    let mut request = reqwest::Client::new()
        .post(&s.url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", name)
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": arguments, "_meta": meta}}));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .find_map(|d| serde_json::from_str::<Value>(d).ok())
        .or_else(|| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    (status, body)
}
