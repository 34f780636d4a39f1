//! A server described as data, served through bmm-middleware on a real socket: tools/list
//! and tools/call in both protocol eras with a real JWT, 401 without one, the HTTP tool
//! against a local upstream that checks the secret arrived and the client's token did not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bmm_runtime::def::{
    AnnotationsDef, BodyDef, BodyFormat, Handler, HttpDef, Method, PromptArgumentDef,
    PromptContent, PromptDef, PromptMessageDef, ResourceContent, ResourceDef, SecretDef, ToolDef,
    UpstreamAuthDef, UpstreamDef,
};
use bmm_runtime::run::{Args, prepare, serve};
use bmm_runtime::{ServerDef, ToolOutput};
use clap::Parser;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../middleware/tests/fixtures");

static SECRETS: &[SecretDef] = &[SecretDef {
    name: "ITEMS_API_KEY",
    description: "key for the items API",
}];
static RESOURCES: &[ResourceDef] = &[ResourceDef {
    uri: "demo://readme",
    name: "readme",
    title: Some("Read me"),
    description: None,
    mime_type: Some("text/plain"),
    content: ResourceContent::Text("hello from a resource"),
    subscribable: false,
}];
fn prompts() -> Vec<PromptDef> {
    vec![PromptDef {
        name: "greet",
        title: None,
        description: Some("Greets someone"),
        arguments: &[PromptArgumentDef {
            name: "who",
            description: Some("who to greet"),
            required: true,
            completions: &["Alice", "Bob"],
        }],
        messages: &[PromptMessageDef {
            assistant: false,
            content: PromptContent::Text("Say hello to {who}."),
        }],
        handler: None,
    }]
}

fn upstreams() -> &'static [UpstreamDef] {
    static U: &[UpstreamDef] = &[UpstreamDef {
        id: "items",
        base_url: "https://items.invalid/api",
        base_url_env: Some("ITEMS_BASE_URL"),
        auth: Some(UpstreamAuthDef::Header {
            name: "X-Api-Key",
            secret: "ITEMS_API_KEY",
        }),
        allow_hosts: &[],
        timeout_ms: 5000,
        max_retries: 1,
    }];
    U
}

fn def() -> ServerDef {
    ServerDef {
        name: "demo",
        version: "0.1.0",
        title: Some("Demo"),
        instructions: Some("A test server."),
        scopes_supported: &["demo:read", "demo:admin"],
        required_scopes: &[],
        scope_hierarchy: &[],
        secrets: SECRETS,
        upstreams: upstreams(),
        tools: vec![
            ToolDef {
                name: "whoami",
                title: Some("Who am I"),
                description: "Returns the caller's subject.",
                input_schema: r#"{"type":"object","properties":{"greeting":{"type":"string"}}}"#,
                output_schema: Some(
                    r#"{"type":"object","properties":{"subject":{"type":"string"}},"required":["subject"]}"#,
                ),
                annotations: AnnotationsDef {
                    read_only: Some(true),
                    ..Default::default()
                },
                scopes: &[],
                task: bmm_runtime::def::TaskSupport::Forbidden,
                rate_limit: None,
                handler: Handler::Rust(Arc::new(|ctx, _args| {
                    Box::pin(async move {
                        let subject = ctx
                            .auth()
                            .and_then(|a| a.subject())
                            .unwrap_or("anonymous")
                            .to_owned();
                        ToolOutput::json(&json!({"subject": subject}))
                    })
                })),
            },
            ToolDef {
                name: "get_item",
                title: None,
                description: "Fetches an item.",
                input_schema: r#"{"type":"object","properties":{"id":{"type":"string"}},"required":["id"]}"#,
                output_schema: None,
                annotations: AnnotationsDef::default(),
                scopes: &["demo:read"],
                task: bmm_runtime::def::TaskSupport::Forbidden,
                rate_limit: None,
                handler: Handler::Http(HttpDef {
                    upstream: "items",
                    method: Method::Get,
                    path: "/items/{id}",
                    query: &[("verbose", "true")],
                    headers: &[],
                    body: BodyDef::None,
                    body_format: BodyFormat::Json,
                    response_map: &[("name", "/item/name")],
                    upstream_scopes: &[],
                }),
            },
            ToolDef {
                name: "purge",
                title: None,
                description: "Deletes everything.",
                input_schema: r#"{"type":"object"}"#,
                output_schema: None,
                annotations: AnnotationsDef {
                    destructive: Some(true),
                    ..Default::default()
                },
                scopes: &["demo:admin"],
                task: bmm_runtime::def::TaskSupport::Forbidden,
                rate_limit: None,
                handler: Handler::Rust(Arc::new(|_, _| {
                    Box::pin(async { Ok(ToolOutput::Text("purged".into())) })
                })),
            },
            ToolDef {
                name: "echo_item",
                title: None,
                description: "Fetches an item; the upstream echoes the request.",
                input_schema: r#"{"type":"object","properties":{"id":{"type":"string"}},"required":["id"]}"#,
                output_schema: None,
                annotations: AnnotationsDef::default(),
                scopes: &[],
                task: bmm_runtime::def::TaskSupport::Forbidden,
                rate_limit: None,
                handler: Handler::Http(HttpDef {
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
            },
            ToolDef {
                name: "delete_user",
                title: None,
                description: "Deletes a user.",
                input_schema: r#"{"type":"object","properties":{"username":{"type":"string"}},"required":["username"]}"#,
                output_schema: None,
                annotations: AnnotationsDef::default(),
                scopes: &[],
                task: bmm_runtime::def::TaskSupport::Forbidden,
                rate_limit: None,
                handler: Handler::Http(HttpDef {
                    upstream: "items",
                    method: Method::Delete,
                    path: "/user/{username}",
                    query: &[],
                    headers: &[],
                    body: BodyDef::None,
                    body_format: BodyFormat::Json,
                    response_map: &[],
                    upstream_scopes: &[],
                }),
            },
        ],
        resources: RESOURCES,
        prompts: prompts(),
        resource_templates: &[],
    }
}

/// The upstream: records what it received.
async fn start_upstream(seen: Arc<Mutex<Vec<http::request::Parts>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        let seen = Arc::clone(&seen);
                        async move {
                            let (parts, _) = req.into_parts();
                            let id = parts.uri.path().rsplit('/').next().unwrap_or("").to_owned();
                            // Echoes the request, as some APIs (and httpbin) do.
                            let headers: serde_json::Map<String, Value> = parts
                                .headers
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), json!(v.to_str().unwrap_or("")))
                                })
                                .collect();
                            let echo = json!({"method": parts.method.as_str(), "path": parts.uri.path(), "headers": headers});
                            seen.lock().unwrap().push(parts);
                            let body =
                                json!({"item": {"name": format!("item {id}")}, "echo": echo})
                                    .to_string();
                            let mut r = http::Response::new(Full::new(bytes::Bytes::from(body)));
                            r.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, Infallible>(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/api")
}

/// A JWKS endpoint with the middleware's RSA test key.
async fn start_jwks() -> String {
    let mut jwk: Value =
        serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/rsa-a.jwk.json")).unwrap())
            .unwrap();
    jwk["kid"] = json!("k1");
    let doc = json!({"keys": [jwk]}).to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
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

fn token(issuer: &str, resource: &str, scope: &str) -> String {
    token_for(issuer, resource, scope, "alice", "client-a")
}

fn token_for(issuer: &str, resource: &str, scope: &str, sub: &str, client: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("k1".into());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(format!("{FIXTURES}/rsa-a.pem")).unwrap(),
    )
    .unwrap();
    jsonwebtoken::encode(
        &header,
        &json!({"iss": issuer, "sub": sub, "client_id": client, "aud": resource, "exp": now + 600, "scope": scope}),
        &key,
    )
    .unwrap()
}

struct Running {
    url: String,
    issuer: String,
    seen: Arc<Mutex<Vec<http::request::Parts>>>,
}

async fn start() -> Running {
    start_with(&[]).await
}

async fn start_with(extra: &[&str]) -> Running {
    start_def(def(), extra).await
}

async fn start_def(def: ServerDef, extra: &[&str]) -> Running {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = start_upstream(Arc::clone(&seen)).await;
    let jwks = start_jwks().await;
    let issuer = "https://as.example.com".to_owned();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let args = Args::try_parse_from(
        [
            "demo",
            "--listen",
            &addr.to_string(),
            "--issuer",
            &issuer,
            "--jwks-uri",
            &jwks,
        ]
        .into_iter()
        .chain(extra.iter().copied()),
    )
    .unwrap();
    let env = move |name: &str| match name {
        "ITEMS_API_KEY" => Some("secret-key-123".to_owned()),
        "ITEMS_BASE_URL" => Some(upstream.clone()),
        _ => None,
    };
    let prepared = prepare(def, &args, env).unwrap();
    let server = bmm_middleware::Server::bind(addr, prepared.config.clone())
        .await
        .unwrap();
    tokio::spawn(serve(prepared, server, std::future::pending()));
    Running {
        url: format!("http://{addr}/mcp"),
        issuer,
        seen,
    }
}

/// The JSON-RPC message in a response, whether JSON or SSE.
async fn rpc(response: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = response.status().as_u16();
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
    (status, session, body)
}

fn legacy_post(
    url: &str,
    token: &str,
    session: Option<&str>,
    body: Value,
) -> reqwest::RequestBuilder {
    let mut r = reqwest::Client::new()
        .post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .json(&body);
    if let Some(s) = session {
        r = r
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-11-25");
    }
    r
}

#[tokio::test]
async fn legacy_session_lists_and_calls_tools_with_a_valid_jwt() {
    let s = start().await;
    // Every scope: the list is filtered by them (crate::tools_list).
    let t = token(&s.issuer, &s.url, "demo:read demo:admin");
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}});
    let (status, session, body) =
        rpc(legacy_post(&s.url, &t, None, init).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["serverInfo"]["name"], "demo");
    let session = session.expect("a legacy session id");
    let _ = legacy_post(
        &s.url,
        &t,
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .send()
    .await
    .unwrap();
    let (_, _, list) = rpc(legacy_post(
        &s.url,
        &t,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .send()
    .await
    .unwrap())
    .await;
    let tools = list["result"]["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 5);
    assert_eq!(
        tools[0]["inputSchema"],
        json!({"type": "object", "properties": {"greeting": {"type": "string"}}}),
        "served verbatim"
    );
    assert_eq!(tools[0]["annotations"]["readOnlyHint"], true);
    let (_, _, call) = rpc(legacy_post(&s.url, &t, Some(&session), json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}})).send().await.unwrap()).await;
    assert_eq!(
        call["result"]["structuredContent"]["subject"], "alice",
        "{call}"
    );
    assert_eq!(call["result"]["isError"], false);
}

#[tokio::test]
async fn stateless_2026_request_calls_tools_with_a_valid_jwt() {
    let s = start().await;
    let t = token(&s.issuer, &s.url, "demo:read");
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"}});
    let response = reqwest::Client::new()
        .post(&s.url)
        .header("authorization", format!("Bearer {t}"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "whoami")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}, "_meta": meta}}))
        .send()
        .await
        .unwrap();
    let (status, session, body) = rpc(response).await;
    assert_eq!(status, 200, "{body}");
    assert!(session.is_none(), "2026-07-28 is stateless");
    assert_eq!(
        body["result"]["structuredContent"]["subject"], "alice",
        "{body}"
    );
}

#[tokio::test]
async fn missing_token_gets_the_challenge_before_rmcp() {
    let s = start().await;
    let r = reqwest::Client::new()
        .post(&s.url)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("resource_metadata=\"http://"),
        "{challenge}"
    );
}

#[tokio::test]
async fn http_tool_sends_the_secret_and_never_the_client_token() {
    let s = start().await;
    let t = token(&s.issuer, &s.url, "demo:read");
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}});
    let (_, session, _) = rpc(legacy_post(&s.url, &t, None, init).send().await.unwrap()).await;
    let session = session.unwrap();
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "get_item", "arguments": {"id": "a b"}}});
    let (_, _, body) = rpc(legacy_post(&s.url, &t, Some(&session), call)
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(
        body["result"]["structuredContent"]["name"], "item a%20b",
        "{body}"
    );
    let seen = s.seen.lock().unwrap();
    let request = seen.last().expect("the upstream was called");
    assert_eq!(
        request.headers["x-api-key"], "secret-key-123",
        "the declared secret arrived"
    );
    assert!(
        request.headers.get("authorization").is_none(),
        "the client's token was not forwarded"
    );
    assert!(!format!("{:?}", request.headers).contains(&t));
    assert_eq!(request.uri.path(), "/api/items/a%20b");
    assert_eq!(request.uri.query(), Some("verbose=true"));
}

#[tokio::test]
async fn per_tool_scope_is_enforced_with_403() {
    let s = start().await;
    let t = token(&s.issuer, &s.url, "demo:read");
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}});
    let (_, session, _) = rpc(legacy_post(&s.url, &t, None, init).send().await.unwrap()).await;
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "purge", "arguments": {}}});
    let r = legacy_post(&s.url, &t, session.as_deref(), call)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"demo:admin\"")
    );
}

#[tokio::test]
async fn resources_and_prompts_are_served() {
    let s = start().await;
    let t = token(&s.issuer, &s.url, "");
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}});
    let (_, session, _) = rpc(legacy_post(&s.url, &t, None, init).send().await.unwrap()).await;
    let session = session.unwrap();
    let (_, _, read) = rpc(legacy_post(&s.url, &t, Some(&session), json!({"jsonrpc": "2.0", "id": 2, "method": "resources/read", "params": {"uri": "demo://readme"}})).send().await.unwrap()).await;
    assert_eq!(
        read["result"]["contents"][0]["text"], "hello from a resource",
        "{read}"
    );
    let (_, _, prompt) = rpc(legacy_post(&s.url, &t, Some(&session), json!({"jsonrpc": "2.0", "id": 3, "method": "prompts/get", "params": {"name": "greet", "arguments": {"who": "Ada"}}})).send().await.unwrap()).await;
    assert_eq!(
        prompt["result"]["messages"][0]["content"]["text"], "Say hello to Ada.",
        "{prompt}"
    );
}

#[test]
fn missing_secrets_are_all_listed() {
    let args = Args::try_parse_from(["demo", "--issuer", "https://as.example.com"]).unwrap();
    let err = prepare(def(), &args, |_| None).unwrap_err();
    assert!(err.message.contains("ITEMS_API_KEY"), "{err}");
}

#[test]
fn no_auth_is_refused_off_loopback() {
    let args = Args::try_parse_from(["demo", "--listen", "0.0.0.0:4103", "--no-auth"]).unwrap();
    let err = prepare(def(), &args, |n| {
        (n == "ITEMS_API_KEY").then(|| "k".repeat(8))
    })
    .unwrap_err();
    assert!(err.message.contains("--no-auth is refused"), "{err}");
}

#[tokio::test]
async fn legacy_sessions_are_capped_and_stateless_requests_are_not() {
    let s = start_with(&["--max-sessions", "3"]).await;
    let token = token(&s.issuer, &s.url, "items:read");
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}});
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let (status, session, _) = rpc(legacy_post(&s.url, &token, None, init.clone())
            .send()
            .await
            .unwrap())
        .await;
        assert_eq!(status, 200);
        sessions.push(session.unwrap());
    }
    let refused = legacy_post(&s.url, &token, None, init.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    // An open session keeps working.
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (status, _, body) = rpc(legacy_post(&s.url, &token, Some(&sessions[0]), list)
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(status, 200, "{body}");
    // Closing one makes room for another.
    let closed = reqwest::Client::new()
        .delete(&s.url)
        .header("authorization", format!("Bearer {token}"))
        .header("mcp-session-id", &sessions[1])
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert!(closed.status().is_success(), "{}", closed.status());
    let (status, session, _) = rpc(legacy_post(&s.url, &token, None, init)
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(status, 200);
    assert!(session.is_some());
}

/// A stateless 2026-07-28 `tools/call`; the JSON-RPC answer.
async fn call_tool(s: &Running, token: &str, name: &str, arguments: Value) -> Value {
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"}});
    let response = reqwest::Client::new()
        .post(&s.url)
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", name)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments, "_meta": meta}}))
        .send()
        .await
        .unwrap();
    rpc(response).await.2
}

#[tokio::test]
async fn tool_arguments_are_validated_before_the_upstream_is_called() {
    let s = start().await;
    let t = token(&s.issuer, &s.url, "demo:read");
    let body = call_tool(&s, &t, "get_item", json!({"id": 5})).await;
    assert_eq!(body["error"]["code"], -32602, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("/id") && message.contains("type"),
        "{message}"
    );
    assert_eq!(body["error"]["data"]["errors"][0]["path"], "/id", "{body}");
    let body = call_tool(&s, &t, "get_item", json!({})).await;
    assert_eq!(body["error"]["code"], -32602, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("required")
    );
    assert!(
        s.seen.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
    let body = call_tool(&s, &t, "get_item", json!({"id": "7"})).await;
    assert_eq!(
        body["result"]["structuredContent"]["name"], "item 7",
        "{body}"
    );
}

#[tokio::test]
async fn path_placeholder_never_reaches_another_upstream_path() {
    let s = start().await;
    let t = token(&s.issuer, &s.url, "demo:read");
    for value in [
        "..",
        ".",
        "",
        "%2e%2e",
        ".%2E",
        "%2E",
        "%252e%252e",
        "a/../b",
        "a%2F..%2Fb",
        "a\\..",
        "a%252F..",
    ] {
        let body = call_tool(&s, &t, "delete_user", json!({ "username": value })).await;
        assert_eq!(body["error"]["code"], -32602, "{value}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`username`"),
            "{body}"
        );
    }
    assert!(
        s.seen.lock().unwrap().is_empty(),
        "no DELETE reached the upstream"
    );
    let body = call_tool(&s, &t, "delete_user", json!({ "username": "a/b?c#d\\e" })).await;
    assert!(body["result"].is_object(), "{body}");
    let seen = s.seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, http::Method::DELETE);
    assert_eq!(seen[0].uri.path(), "/api/user/a%2Fb%3Fc%23d%5Ce");
    assert_eq!(seen[0].uri.query(), None);
}

#[tokio::test]
async fn echoed_secrets_are_redacted_from_structured_content() {
    let s = start().await;
    let t = token(&s.issuer, &s.url, "demo:read");
    let body = call_tool(&s, &t, "echo_item", json!({"id": "x"})).await;
    let result = &body["result"];
    assert_eq!(
        result["structuredContent"]["echo"]["headers"]["x-api-key"], "[redacted]",
        "{body}"
    );
    assert!(!body.to_string().contains("secret-key-123"), "{body}");
    assert_eq!(
        s.seen.lock().unwrap()[0].headers["x-api-key"],
        "secret-key-123",
        "the upstream still got the real key"
    );
}

async fn initialize(s: &Running, token: &str) -> reqwest::Response {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}});
    legacy_post(&s.url, token, None, init).send().await.unwrap()
}

fn with_session(
    method: reqwest::Method,
    s: &Running,
    token: &str,
    session: &str,
) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(method, &s.url)
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-11-25")
}

#[tokio::test]
async fn session_is_refused_to_another_subject() {
    let s = start().await;
    let alice = token(&s.issuer, &s.url, "demo:read");
    let bob = token_for(&s.issuer, &s.url, "demo:read", "bob", "client-a");
    let alice_other_client = token_for(&s.issuer, &s.url, "demo:read", "alice", "client-b");
    let (status, session, _) = rpc(initialize(&s, &alice).await).await;
    assert_eq!(status, 200);
    let session = session.unwrap();
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let unknown = with_session(reqwest::Method::POST, &s, &bob, "no-such-session")
        .json(&list)
        .send()
        .await
        .unwrap();
    let unknown_status = unknown.status();
    let unknown_body = unknown.text().await.unwrap();
    assert_eq!(unknown_status, 404);
    for intruder in [&bob, &alice_other_client] {
        for method in [
            reqwest::Method::POST,
            reqwest::Method::GET,
            reqwest::Method::DELETE,
        ] {
            let mut r = with_session(method.clone(), &s, intruder, &session);
            if method == reqwest::Method::POST {
                r = r.json(&list);
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 404, "{method} by another caller");
            assert_eq!(
                r.text().await.unwrap(),
                unknown_body,
                "indistinguishable from unknown"
            );
        }
    }
    // Still alice's, still open.
    let (status, _, body) = rpc(legacy_post(&s.url, &alice, Some(&session), list)
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["result"]["tools"].is_array(), "{body}");
}

#[tokio::test]
async fn sessions_are_capped_per_subject() {
    let s = start_with(&["--max-sessions-per-subject", "2"]).await;
    let alice = token(&s.issuer, &s.url, "demo:read");
    let bob = token_for(&s.issuer, &s.url, "demo:read", "bob", "client-a");
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let (status, session, _) = rpc(initialize(&s, &alice).await).await;
        assert_eq!(status, 200);
        sessions.push(session.unwrap());
    }
    let refused = initialize(&s, &alice).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "5");
    let (status, _, _) = rpc(initialize(&s, &bob).await).await;
    assert_eq!(status, 200, "another caller is not affected");
    let closed = with_session(reqwest::Method::DELETE, &s, &alice, &sessions[0])
        .send()
        .await
        .unwrap();
    assert!(closed.status().is_success(), "{}", closed.status());
    let (status, session, _) = rpc(initialize(&s, &alice).await).await;
    assert_eq!(status, 200, "a closed session makes room");
    assert!(session.is_some());
}

/// rmcp opens a legacy session for an `initialize` body even when the request is labelled
/// 2026-07-28 (which the session layer does not count in advance): that session is bound
/// to its caller all the same.
#[tokio::test]
async fn session_opened_by_a_2026_labelled_initialize_is_bound_to_its_caller() {
    let s = start().await;
    let alice = token(&s.issuer, &s.url, "demo:read");
    let bob = token_for(&s.issuer, &s.url, "demo:read", "bob", "client-a");
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2026-07-28", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}});
    let response = legacy_post(&s.url, &alice, None, init)
        .header("mcp-protocol-version", "2026-07-28")
        .send()
        .await
        .unwrap();
    let (_, session, body) = rpc(response).await;
    let session = session.expect("rmcp 3.11 opens a legacy session for any initialize");
    let version = body["result"]["protocolVersion"]
        .as_str()
        .unwrap_or("2025-11-25")
        .to_owned();
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    for (who, expected) in [(&bob, 404), (&alice, 200)] {
        let r = reqwest::Client::new()
            .post(&s.url)
            .header("authorization", format!("Bearer {who}"))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", &version)
            .json(&list)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected);
    }
}

#[test]
fn a_tool_schema_that_does_not_compile_refuses_start_up() {
    let args = Args::try_parse_from(["demo", "--issuer", "https://as.example.com"]).unwrap();
    let mut broken = def();
    broken.tools[0].input_schema = r#"{"type":"object","properties":{"n":{"type":"integr"}}}"#;
    let err = prepare(broken, &args, |n| {
        (n == "ITEMS_API_KEY").then(|| "k".repeat(8))
    })
    .unwrap_err();
    assert!(
        err.message.contains("`whoami`") && err.message.contains("2020-12"),
        "{err}"
    );
}

/// The same path can not exceed the caps: the session rmcp opened is closed again and the
/// caller gets the cap's answer.
#[tokio::test]
async fn a_2026_labelled_initialize_cannot_exceed_the_session_caps() {
    let s = start_with(&["--max-sessions-per-subject", "1"]).await;
    let alice = token(&s.issuer, &s.url, "demo:read");
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2026-07-28", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}});
    let labelled = || {
        legacy_post(&s.url, &alice, None, init.clone())
            .header("mcp-protocol-version", "2026-07-28")
            .send()
    };
    let (status, session, _) = rpc(labelled().await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(session.is_some());
    let refused = labelled().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("mcp-session-id").is_none());
}

#[tokio::test]
async fn prompt_arguments_must_be_declared_strings_over_http() {
    let s = start().await;
    let t = token(&s.issuer, &s.url, "");
    let (_, session, _) = rpc(initialize(&s, &t).await).await;
    let session = session.unwrap();
    for (arguments, needle) in [(json!({"who": 5}), "string"), (json!({}), "`who`")] {
        let get = json!({"jsonrpc": "2.0", "id": 3, "method": "prompts/get", "params": {"name": "greet", "arguments": arguments}});
        let (_, _, body) = rpc(legacy_post(&s.url, &t, Some(&session), get)
            .send()
            .await
            .unwrap())
        .await;
        assert_eq!(body["error"]["code"], -32602, "{body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(needle),
            "{body}"
        );
    }
}

/// A stateless 2026-07-28 `subscriptions/listen` for `uri`.
fn listen(s: &Running, token: &str, uri: &str) -> reqwest::RequestBuilder {
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"}});
    reqwest::Client::new()
        .post(&s.url)
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "subscriptions/listen", "params": {"notifications": {"resourceSubscriptions": [uri]}, "_meta": meta}}))
}

/// The JSON-RPC messages of a response that must end by itself (within 10 s).
async fn messages_of_closed_stream(response: reqwest::RequestBuilder) -> Vec<Value> {
    let text = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        response.send().await.unwrap().text().await.unwrap()
    })
    .await
    .expect("the stream closes");
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .chain(serde_json::from_str::<Value>(&text).ok())
        .collect()
}

/// listen_cap rule 1: with nothing subscribable, listen is refused at once, not held open.
#[tokio::test]
async fn listen_is_refused_when_nothing_is_subscribable() {
    let s = start().await;
    let t = token(&s.issuer, &s.url, "demo:read");
    let messages = messages_of_closed_stream(listen(&s, &t, "demo://readme")).await;
    assert!(
        messages.iter().any(|m| m["error"]["code"] == -32601),
        "{messages:?}"
    );
}

static SUBSCRIBABLE: &[ResourceDef] = &[ResourceDef {
    uri: "demo://live",
    name: "live",
    title: None,
    description: None,
    mime_type: Some("text/plain"),
    content: ResourceContent::Text("live"),
    subscribable: true,
}];

/// listen_cap rule 2: four open streams per subject; a fifth is refused with a JSON-RPC
/// error and closes, while another subject may still listen (the global cap of 256 is
/// tested in listen_cap's unit tests).
#[tokio::test]
async fn listen_streams_are_capped_per_subject_and_globally() {
    let mut d = def();
    d.resources = SUBSCRIBABLE;
    let s = start_def(d, &[]).await;
    let alice = token(&s.issuer, &s.url, "demo:read");
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut response = listen(&s, &alice, "demo://live").send().await.unwrap();
        assert_eq!(response.status(), 200);
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), response.chunk())
            .await
            .expect("the acknowledgment")
            .unwrap()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&first).contains("acknowledged"),
            "{first:?}"
        );
        open.push(response);
    }
    // Another client of the same subject counts against the same cap.
    let alice_elsewhere = token_for(&s.issuer, &s.url, "demo:read", "alice", "client-b");
    let messages = messages_of_closed_stream(listen(&s, &alice_elsewhere, "demo://live")).await;
    let refusal = messages
        .iter()
        .find(|m| m.get("error").is_some())
        .unwrap_or_else(|| panic!("{messages:?}"));
    assert_eq!(refusal["error"]["code"], -32000, "{refusal}");
    let bob = token_for(&s.issuer, &s.url, "demo:read", "bob", "client-a");
    let mut response = listen(&s, &bob, "demo://live").send().await.unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), response.chunk())
        .await
        .expect("bob's acknowledgment")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("acknowledged"));
    drop(open);
}

/// session_cap rule 2 counts the subject (`iss` + `sub`), not each of its clients, while
/// rule 3 still binds every session to the full caller, client included.
#[tokio::test]
async fn sessions_are_capped_per_subject_across_clients() {
    let s = start_with(&["--max-sessions-per-subject", "2"]).await;
    let via = |client: &str| token_for(&s.issuer, &s.url, "demo:read", "alice", client);
    let (status, first, _) = rpc(initialize(&s, &via("client-a")).await).await;
    assert_eq!(status, 200);
    let (status, _, _) = rpc(initialize(&s, &via("client-b")).await).await;
    assert_eq!(status, 200);
    let refused = initialize(&s, &via("client-c")).await;
    assert_eq!(
        refused.status(),
        429,
        "a third client of alice is over her cap"
    );
    let other_client = with_session(reqwest::Method::GET, &s, &via("client-b"), &first.unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        other_client.status(),
        404,
        "a session stays bound to the client that opened it"
    );
    let bob = token_for(&s.issuer, &s.url, "demo:read", "bob", "client-c");
    let (status, _, _) = rpc(initialize(&s, &bob).await).await;
    assert_eq!(status, 200, "another subject is not affected");
}

/// A tool whose Rust body leaks the server's secret in every way it can reach the client.
#[allow(deprecated)] // logging is deprecated by SEP-2577 but still in the spec
fn leaky_tool(name: &'static str) -> ToolDef {
    ToolDef {
        name,
        title: None,
        description: "Leaks the key.",
        input_schema: r#"{"type":"object"}"#,
        output_schema: None,
        annotations: AnnotationsDef::default(),
        scopes: &[],
        task: bmm_runtime::def::TaskSupport::Forbidden,
        rate_limit: None,
        handler: Handler::Rust(Arc::new(move |ctx, _| {
            Box::pin(async move {
                ctx.log(
                    rmcp::model::LoggingLevel::Info,
                    json!({"msg": "key secret-key-123"}),
                )
                .await;
                ctx.progress(1.0, None, Some("at secret-key-123")).await;
                if name == "leaky_ask" {
                    ctx.elicit(
                        "confirm",
                        "send secret-key-123?",
                        json!({"type": "object", "properties": {"ok": {"type": "boolean"}}}),
                    )
                    .await?;
                }
                Ok(ToolOutput::Text("done".into()))
            })
        })),
    }
}

fn leaky_prompt(name: &'static str, fail: bool) -> PromptDef {
    PromptDef {
        name,
        title: None,
        description: None,
        arguments: &[],
        messages: &[],
        handler: Some(Arc::new(move |_ctx, _| {
            Box::pin(async move {
                if fail {
                    return Err(bmm_runtime::ToolError::new("failed with secret-key-123"));
                }
                Ok(vec![rmcp::model::PromptMessage::new(
                    rmcp::model::Role::User,
                    rmcp::model::ContentBlock::text("use secret-key-123 and secret%2dkey%2d123"),
                )])
            })
        })),
    }
}

/// A stateless 2026-07-28 request; the whole response text (JSON or SSE).
async fn stateless_text(s: &Running, method: &str, name: &str, params: Value) -> String {
    let mut params = params;
    params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}},
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
        "io.modelcontextprotocol/logLevel": "debug", "progressToken": "p1"});
    let t = token(&s.issuer, &s.url, "demo:read");
    reqwest::Client::new()
        .post(&s.url)
        .header("authorization", format!("Bearer {t}"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method)
        .header("mcp-name", name)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// secrets: prompt results and errors, "input required" questions, log and progress
/// notifications all leave with the secret redacted.
#[tokio::test]
async fn secrets_are_redacted_from_every_response_path() {
    let mut d = def();
    d.tools.push(leaky_tool("leaky_log"));
    d.tools.push(leaky_tool("leaky_ask"));
    d.prompts.push(leaky_prompt("leaky_prompt", false));
    d.prompts.push(leaky_prompt("leaky_prompt_error", true));
    let s = start_def(d, &[]).await;
    for (method, name, params, expect) in [
        (
            "tools/call",
            "leaky_log",
            json!({"name": "leaky_log", "arguments": {}}),
            "notifications/progress",
        ),
        (
            "tools/call",
            "leaky_ask",
            json!({"name": "leaky_ask", "arguments": {}}),
            "input_required",
        ),
        (
            "prompts/get",
            "leaky_prompt",
            json!({"name": "leaky_prompt"}),
            "messages",
        ),
        (
            "prompts/get",
            "leaky_prompt_error",
            json!({"name": "leaky_prompt_error"}),
            "error",
        ),
    ] {
        let text = stateless_text(&s, method, name, params).await;
        assert!(text.contains(expect), "{name}: {text}");
        assert!(text.contains("[redacted]"), "{name}: {text}");
        assert!(
            !text.contains("secret-key-123") && !text.to_lowercase().contains("secret%2dkey"),
            "{name}: {text}"
        );
    }
}

// --- tools/list filtered by the caller's scopes (bmm_runtime::tools_list) ---

/// `def()` with `demo:admin` implying `demo:read`, and a tool needing two scopes.
fn scoped_def() -> ServerDef {
    let mut d = def();
    d.scope_hierarchy = &[("demo:admin", &["demo:read"])];
    d.scopes_supported = &["demo:read", "demo:admin", "demo:keys"];
    d.tools.push(ToolDef {
        name: "rotate_keys",
        title: None,
        description: "Rotates the keys.",
        input_schema: r#"{"type":"object"}"#,
        output_schema: None,
        annotations: AnnotationsDef::default(),
        scopes: &["demo:admin", "demo:keys"],
        task: bmm_runtime::def::TaskSupport::Forbidden,
        rate_limit: None,
        handler: Handler::Rust(Arc::new(|_, _| {
            Box::pin(async { Ok(ToolOutput::Text("rotated".into())) })
        })),
    });
    d
}

fn token_expiring(issuer: &str, resource: &str, scope: &str, secs: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("k1".into());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(format!("{FIXTURES}/rsa-a.pem")).unwrap(),
    )
    .unwrap();
    jsonwebtoken::encode(
        &header,
        &json!({"iss": issuer, "sub": "alice", "client_id": "client-a", "aud": resource, "exp": now + secs, "scope": scope}),
        &key,
    )
    .unwrap()
}

/// A stateless 2026-07-28 `tools/list`: the JSON-RPC `result`.
async fn stateless_list(s: &Running, token: &str) -> Value {
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"}});
    let response = reqwest::Client::new()
        .post(&s.url)
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/list")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}),
        )
        .send()
        .await
        .unwrap();
    let (status, _, body) = rpc(response).await;
    assert_eq!(status, 200, "{body}");
    body["result"].clone()
}

/// A legacy session's `tools/list` sent with `token`: the JSON-RPC `result`.
async fn legacy_list(s: &Running, token: &str, session: &str) -> Value {
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (status, _, body) = rpc(legacy_post(&s.url, token, Some(session), list)
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(status, 200, "{body}");
    body["result"].clone()
}

async fn legacy_session(s: &Running, token: &str) -> String {
    let response = initialize(s, token).await;
    let (status, session, body) = rpc(response).await;
    assert_eq!(status, 200, "{body}");
    let session = session.unwrap();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let _ = legacy_post(&s.url, token, Some(&session), initialized)
        .send()
        .await
        .unwrap();
    session
}

fn names(result: &Value) -> Vec<String> {
    result["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {result}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

const UNSCOPED: [&str; 3] = ["whoami", "echo_item", "delete_user"];
const READ: [&str; 4] = ["whoami", "get_item", "echo_item", "delete_user"];
const ADMIN: [&str; 5] = ["whoami", "get_item", "purge", "echo_item", "delete_user"];
const ALL: [&str; 6] = [
    "whoami",
    "get_item",
    "purge",
    "echo_item",
    "delete_user",
    "rotate_keys",
];

/// tools_list rule 1, in both eras; the scope hierarchy applies (`demo:admin` implies
/// `demo:read`).
#[tokio::test]
async fn tools_list_hides_tools_the_token_lacks_scopes_for() {
    let s = start_def(scoped_def(), &[]).await;
    for (scope, expected) in [
        ("", &UNSCOPED[..]),
        ("demo:read", &READ[..]),
        ("demo:admin", &ADMIN[..]),
        ("demo:admin demo:keys", &ALL[..]),
        ("demo:read demo:keys", &READ[..]),
    ] {
        let t = token(&s.issuer, &s.url, scope);
        assert_eq!(
            names(&stateless_list(&s, &t).await),
            expected,
            "2026-07-28, scope `{scope}`"
        );
        let session = legacy_session(&s, &t).await;
        assert_eq!(
            names(&legacy_list(&s, &t, &session).await),
            expected,
            "legacy, scope `{scope}`"
        );
    }
}

/// tools_list rule 2: a legacy session lists by the token of each request (a step-up
/// shows the new tools at once, a narrower token hides them again).
#[tokio::test]
async fn tools_list_follows_the_token_of_each_request() {
    let s = start_def(scoped_def(), &[]).await;
    let read = token(&s.issuer, &s.url, "demo:read");
    let admin = token(&s.issuer, &s.url, "demo:admin demo:keys");
    let session = legacy_session(&s, &read).await;
    assert_eq!(names(&legacy_list(&s, &read, &session).await), READ);
    assert_eq!(names(&legacy_list(&s, &admin, &session).await), ALL);
    assert_eq!(names(&legacy_list(&s, &read, &session).await), READ);
}

/// tools_list rule 3: private, fresh for 5 minutes at most and never past the token's
/// expiry; `off` lists every tool with rmcp's own hints.
#[tokio::test]
async fn filtered_list_is_private_and_fresh_until_the_token_expires() {
    let s = start_def(scoped_def(), &[]).await;
    let long = token_expiring(&s.issuer, &s.url, "demo:read", 3600);
    let result = stateless_list(&s, &long).await;
    assert_eq!(result["cacheScope"], "private", "{result}");
    assert_eq!(result["ttlMs"], 300_000, "{result}");
    let short = token_expiring(&s.issuer, &s.url, "demo:read", 90);
    let ttl = stateless_list(&s, &short).await["ttlMs"].as_u64().unwrap();
    assert!(ttl > 0 && ttl <= 90_000, "{ttl}");
    let session = legacy_session(&s, &long).await;
    let legacy = legacy_list(&s, &long, &session).await;
    assert_eq!(legacy["cacheScope"], "private", "{legacy}");
    assert_eq!(legacy["ttlMs"], 300_000, "{legacy}");

    let off = start_def(scoped_def(), &["--tools-list-by-scope", "off"]).await;
    let t = token(&off.issuer, &off.url, "demo:read");
    let result = stateless_list(&off, &t).await;
    assert_eq!(names(&result), ALL);
    assert_eq!(
        result["cacheScope"], "private",
        "rmcp's conservative default"
    );
    assert_eq!(result["ttlMs"], 0);
}

/// tools_list rule 5: hidden is not allowed; the call is refused with 403 naming every
/// scope it needs in one challenge, in both eras.
#[tokio::test]
async fn calling_a_hidden_tool_is_refused_with_every_missing_scope() {
    let s = start_def(scoped_def(), &[]).await;
    let t = token(&s.issuer, &s.url, "demo:read");
    assert!(!names(&stateless_list(&s, &t).await).contains(&"rotate_keys".to_owned()));
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"}});
    let stateless = reqwest::Client::new()
        .post(&s.url)
        .header("authorization", format!("Bearer {t}"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "rotate_keys")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "rotate_keys", "arguments": {}, "_meta": meta}}))
        .send()
        .await
        .unwrap();
    let session = legacy_session(&s, &t).await;
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "rotate_keys", "arguments": {}}});
    let legacy = legacy_post(&s.url, &t, Some(&session), call)
        .send()
        .await
        .unwrap();
    for response in [stateless, legacy] {
        assert_eq!(response.status(), 403);
        let challenges: Vec<&str> = response
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        // One challenge per accepted scheme (Bearer, and DPoP: --dpop allowed), each
        // naming every scope the call needs, so one step-up is enough.
        let bearer = challenges
            .iter()
            .filter(|c| c.starts_with("Bearer "))
            .count();
        assert_eq!(bearer, 1, "{challenges:?}");
        for challenge in &challenges {
            assert!(
                challenge.contains("error=\"insufficient_scope\"")
                    && challenge.contains("scope=\"demo:admin demo:keys\""),
                "{challenges:?}"
            );
        }
    }
}

/// --no-auth: no filtering (there are no scopes to filter by), even when asked for.
#[tokio::test]
async fn no_auth_does_not_filter_tools_list() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let args = Args::try_parse_from([
        "demo",
        "--listen",
        &addr.to_string(),
        "--no-auth",
        "--tools-list-by-scope",
        "on",
    ])
    .unwrap();
    let prepared = prepare(scoped_def(), &args, |n| {
        (n == "ITEMS_API_KEY").then(|| "k".repeat(8))
    })
    .unwrap();
    assert!(!prepared.server.filters_tools_list_by_scope());
}

/// The direct stateless path (bmm-runtime `stateless`) on a real socket: hostile variants of
/// a 2026-07-28 call get rmcp's refusals (the direct path leaves them to rmcp), none
/// panics or hangs the server, and a good call still answers afterwards.
#[tokio::test]
async fn hostile_stateless_requests_are_refused_as_rmcp_refuses_them() {
    let s = start().await;
    let t = token(&s.issuer, &s.url, "demo:read");
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"}});
    let good = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}, "_meta": meta}}).to_string();
    let mut nested = String::new();
    for _ in 0..5000 {
        nested.push('[');
    }
    let deep = good.replace(
        "\"arguments\":{}",
        &format!("\"arguments\":{{\"x\":{nested}}}"),
    );
    let client = reqwest::Client::new();
    let send = |body: String, extra: Vec<(&'static str, &'static str)>| {
        let mut r = client
            .post(&s.url)
            .header("authorization", format!("Bearer {t}"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "whoami");
        for (k, v) in extra {
            r = r.header(k, v);
        }
        r.body(body).send()
    };
    /// What is sent, the extra headers, and rmcp's status for it.
    type Case = (&'static str, String, Vec<(&'static str, &'static str)>, u16);
    let cases: Vec<Case> = vec![
        (
            "Mcp-Name of another tool",
            good.clone(),
            vec![("mcp-name", "other")],
            400,
        ),
        (
            "a second Mcp-Method",
            good.clone(),
            vec![("mcp-method", "tools/list")],
            400,
        ),
        (
            "_meta of another version",
            good.replace("2026-07-28", "2025-11-25"),
            vec![],
            400,
        ),
        ("not JSON", good[..good.len() - 3].to_owned(), vec![], 400),
        ("nested 5,000 deep", deep, vec![], 400),
        (
            "a body over the limit",
            format!("{}{}", " ".repeat(5 << 20), good),
            vec![],
            413,
        ),
    ];
    for (what, body, extra, expected) in cases {
        let response = send(body, extra).await.unwrap();
        assert_eq!(response.status().as_u16(), expected, "{what}");
    }
    // An escaped method is read by rmcp (the direct path does not unescape): same answer.
    let escaped = good.replace("tools/call", r"tools\/call");
    let (status, _, body) = rpc(send(escaped, vec![]).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["result"]["structuredContent"]["subject"], "alice",
        "{body}"
    );
    let (status, _, body) = rpc(send(good, vec![]).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["result"]["structuredContent"]["subject"], "alice",
        "{body}"
    );
}
