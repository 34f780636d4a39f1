//! OpenTelemetry traces (`bmm_runtime::traces`), end to end over real sockets: a server
//! built from the `OTEL_*` settings exports to an in-process OTLP/HTTP collector, which
//! decodes the protobuf `ExportTraceServiceRequest`s; the spans have the MCP semantic
//! conventions' names, attributes and parents; the upstream of an HTTP tool receives the
//! client span's `traceparent` and no MCP token; no exported byte holds the token, the
//! upstream secret or an argument value.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bmm_runtime::def::{
    AnnotationsDef, BodyDef, BodyFormat, Handler, HttpDef, Method, SecretDef, ToolDef,
    UpstreamAuthDef, UpstreamDef,
};
use bmm_runtime::run::{Args, prepare, serve};
use bmm_runtime::traces::Telemetry;
use bmm_runtime::{ServerDef, ToolOutput};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../middleware/tests/fixtures");
const SECRET: &str = "upstream-secret-5f1e";
const ARGUMENT: &str = "argument-value-8c2d";
const GREETING: &str = "greeting-value-77aa";
const UNKNOWN_TOOL: &str = "no-such-tool-3b9f";
const MADE_UP_SESSION: &str = "made-up-session-41c0";

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

fn def() -> ServerDef {
    ServerDef {
        name: "demo",
        version: "0.1.0",
        title: None,
        instructions: None,
        scopes_supported: &["demo:read"],
        required_scopes: &[],
        scope_hierarchy: &[],
        secrets: SECRETS,
        upstreams: UPSTREAMS,
        tools: vec![
            ToolDef {
                name: "greet",
                title: None,
                description: "Greets.",
                input_schema: r#"{"type":"object","properties":{"greeting":{"type":"string"}}}"#,
                output_schema: None,
                annotations: AnnotationsDef::default(),
                scopes: &[],
                task: bmm_runtime::def::TaskSupport::Forbidden,
                rate_limit: None,
                handler: Handler::Rust(Arc::new(|_, _| {
                    Box::pin(async { Ok(ToolOutput::Text("hello".into())) })
                })),
            },
            ToolDef {
                name: "get_item",
                title: None,
                description: "Fetches an item.",
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
                    query: &[("q", "{id}")],
                    headers: &[],
                    body: BodyDef::None,
                    body_format: BodyFormat::Json,
                    response_map: &[],
                    upstream_scopes: &[],
                }),
            },
        ],
        resources: &[],
        prompts: Vec::new(),
        resource_templates: &[],
    }
}

/// Serves `handle` on 127.0.0.1:0 over HTTP/1.1; the base URL.
async fn serve_http<F, Fut>(handle: F) -> String
where
    F: Fn(http::request::Parts, Bytes) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<Full<Bytes>>> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let handle = handle.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let handle = handle.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let bytes = body.collect().await.unwrap().to_bytes();
                            Ok::<_, Infallible>(handle(parts, bytes).await)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// The collector: keeps every raw export body.
async fn start_collector(bodies: Arc<Mutex<Vec<Bytes>>>) -> String {
    serve_http(move |parts, bytes| {
        let bodies = Arc::clone(&bodies);
        async move {
            assert_eq!(parts.uri.path(), "/v1/traces");
            bodies.lock().unwrap().push(bytes);
            let mut r = http::Response::new(Full::new(Bytes::new()));
            r.headers_mut()
                .insert("content-type", "application/x-protobuf".parse().unwrap());
            r
        }
    })
    .await
}

/// The upstream: records what it received; 404 for item `missing`.
async fn start_upstream(seen: Arc<Mutex<Vec<http::request::Parts>>>) -> String {
    let url = serve_http(move |parts, _| {
        let seen = Arc::clone(&seen);
        async move {
            let missing = parts.uri.path().ends_with("/missing");
            seen.lock().unwrap().push(parts);
            let mut r = http::Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            if missing {
                *r.status_mut() = http::StatusCode::NOT_FOUND;
            }
            r
        }
    })
    .await;
    format!("{url}/api")
}

async fn start_jwks() -> String {
    let mut jwk: Value =
        serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/rsa-a.jwk.json")).unwrap())
            .unwrap();
    jwk["kid"] = json!("k1");
    let doc = Bytes::from(json!({"keys": [jwk]}).to_string());
    let url = serve_http(move |_, _| {
        let doc = doc.clone();
        async move { http::Response::new(Full::new(doc)) }
    })
    .await;
    format!("{url}/jwks")
}

fn token(issuer: &str, resource: &str) -> String {
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
        &json!({"iss": issuer, "sub": "alice", "client_id": "client-a", "aud": resource, "exp": now + 600, "scope": "demo:read"}),
        &key,
    )
    .unwrap()
}

/// A stateless 2026-07-28 `tools/call`, with `traceparent` in `_meta` or in a header.
async fn call(
    url: &str,
    token: &str,
    tool: &str,
    arguments: Value,
    meta_parent: Option<&str>,
    header_parent: Option<&str>,
) -> String {
    let mut meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"}});
    if let Some(parent) = meta_parent {
        meta["traceparent"] = json!(parent);
        meta["tracestate"] = json!("vendor=opaque");
    }
    let mut request = reqwest::Client::new()
        .post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .json(&json!({"jsonrpc": "2.0", "id": 41, "method": "tools/call", "params": {"name": tool, "arguments": arguments, "_meta": meta}}));
    if let Some(parent) = header_parent {
        request = request.header("traceparent", parent);
    }
    request.send().await.unwrap().text().await.unwrap()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?;
    match value.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

const META_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const META_PARENT: &str = "00f067aa0ba902b7";
const HEADER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const HEADER_PARENT: &str = "b7ad6b7169203331";

/// The rules of `bmm_runtime::traces` (names, attributes, parents, propagation to the
/// upstream only, nothing secret exported), against a real collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_follow_the_mcp_conventions_and_never_export_secrets() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let collector = start_collector(Arc::clone(&bodies)).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = start_upstream(Arc::clone(&seen)).await;
    let jwks = start_jwks().await;
    let issuer = "https://as.example.com";
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let args = Args::try_parse_from([
        "demo",
        "--listen",
        &addr.to_string(),
        "--issuer",
        issuer,
        "--jwks-uri",
        &jwks,
    ])
    .unwrap();
    let env = move |name: &str| match name {
        "ITEMS_API_KEY" => Some(SECRET.to_owned()),
        "ITEMS_BASE_URL" => Some(upstream.clone()),
        _ => None,
    };
    let telemetry = Telemetry::from_env("demo", |name| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(collector.clone()),
        _ => None,
    })
    .unwrap()
    .expect("an endpoint turns traces on");
    let prepared = prepare(def(), &args, env)
        .unwrap()
        .with_traces(telemetry.traces());
    let server = bmm_middleware::Server::bind(addr, prepared.config.clone())
        .await
        .unwrap();
    tokio::spawn(serve(prepared, server, std::future::pending()));
    let url = format!("http://{addr}/mcp");
    let t = token(issuer, &url);

    let answer = call(
        &url,
        &t,
        "get_item",
        json!({"id": ARGUMENT}),
        Some(&format!("00-{META_TRACE}-{META_PARENT}-01")),
        None,
    )
    .await;
    assert!(answer.contains("\"ok\""), "{answer}");
    let answer = call(
        &url,
        &t,
        "greet",
        json!({"greeting": GREETING}),
        None,
        Some(&format!("00-{HEADER_TRACE}-{HEADER_PARENT}-01")),
    )
    .await;
    assert!(answer.contains("hello"), "{answer}");
    let answer = call(&url, &t, UNKNOWN_TOOL, json!({"x": ARGUMENT}), None, None).await;
    assert!(answer.contains("-32602"), "{answer}");
    let answer = call(&url, &t, "get_item", json!({"id": "missing"}), None, None).await;
    assert!(answer.contains("isError"), "{answer}");
    let unauthenticated = reqwest::Client::new()
        .post(format!("{url}?access_token={ARGUMENT}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    // A legacy session: its id is recorded once issued; a made-up one never is.
    let legacy = |session: Option<&str>, body: Value| {
        let mut r = reqwest::Client::new()
            .post(&url)
            .header("authorization", format!("Bearer {t}"))
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(session) = session {
            r = r
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25");
        }
        r.send()
    };
    let init = legacy(None, json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}})).await.unwrap();
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = init.text().await;
    let made_up = legacy(
        Some(MADE_UP_SESSION),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await
    .unwrap();
    assert_eq!(made_up.status(), 404);

    // Flushes the batch (blocking: the collector runs on this runtime).
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .unwrap();

    let raw: Vec<Bytes> = bodies.lock().unwrap().clone();
    assert!(!raw.is_empty(), "the collector received spans");
    for body in &raw {
        for needle in [
            t.as_str(),
            SECRET,
            ARGUMENT,
            GREETING,
            UNKNOWN_TOOL,
            MADE_UP_SESSION,
        ] {
            assert!(!contains(body, needle), "an export holds `{needle}`");
        }
    }
    let mut spans: Vec<Span> = Vec::new();
    for body in &raw {
        let request = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
        for resource in request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| v.value.clone());
            assert_eq!(service, Some(AnyValue::StringValue("demo".into())));
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let find = |name: &str, trace: &str| -> &Span {
        spans
            .iter()
            .find(|s| s.name == name && hex(&s.trace_id) == trace)
            .unwrap_or_else(|| panic!("no span `{name}` in trace {trace}: {names:?}"))
    };
    const SERVER: i32 = 2;
    const CLIENT: i32 = 3;
    const ERROR: i32 = 2;

    // 1. `traceparent` in `_meta`: the MCP span descends from it and links the HTTP span.
    let mcp = find("tools/call get_item", META_TRACE);
    assert_eq!(hex(&mcp.parent_span_id), META_PARENT);
    assert_eq!(mcp.kind, SERVER);
    assert_eq!(mcp.trace_state, "vendor=opaque");
    for (key, value) in [
        ("mcp.method.name", "tools/call"),
        ("gen_ai.tool.name", "get_item"),
        ("gen_ai.operation.name", "execute_tool"),
        ("jsonrpc.request.id", "41"),
        ("mcp.protocol.version", "2026-07-28"),
        ("network.transport", "tcp"),
        ("network.protocol.name", "http"),
    ] {
        assert_eq!(attr(mcp, key).as_deref(), Some(value), "{key}");
    }
    assert_eq!(attr(mcp, "error.type"), None);
    let [link] = mcp.links.as_slice() else {
        panic!("one link: {:?}", mcp.links)
    };
    let http = spans
        .iter()
        .find(|s| s.span_id == link.span_id)
        .expect("the linked HTTP span");
    assert_eq!(http.name, "POST /mcp");
    assert_eq!(http.kind, SERVER);
    assert_eq!(attr(http, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(attr(http, "http.route").as_deref(), Some("/mcp"));
    assert_eq!(
        attr(http, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_ne!(
        hex(&http.trace_id),
        META_TRACE,
        "no header: a trace of its own"
    );

    // The upstream call: a client span under the MCP span, carried to the upstream.
    let client = find("GET /items/{id}", META_TRACE);
    assert_eq!(client.kind, CLIENT);
    assert_eq!(client.parent_span_id, mcp.span_id);
    assert_eq!(attr(client, "url.template").as_deref(), Some("/items/{id}"));
    assert_eq!(attr(client, "server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        attr(client, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(client, "bmm.upstream").as_deref(), Some("items"));
    let seen = seen.lock().unwrap();
    let first = &seen[0];
    assert_eq!(
        first.headers.get("traceparent").unwrap().to_str().unwrap(),
        format!("00-{META_TRACE}-{}-01", hex(&client.span_id))
    );
    assert_eq!(first.headers.get("tracestate").unwrap(), "vendor=opaque");
    assert_eq!(first.headers.get("x-api-key").unwrap(), SECRET);
    assert!(first.headers.get("authorization").is_none());
    for (name, value) in &first.headers {
        assert!(
            !contains(value.as_bytes(), &t),
            "the MCP token reached the upstream in {name}"
        );
    }

    // 2. `traceparent` header only: HTTP span under it, MCP span under the HTTP span.
    let http = find("POST /mcp", HEADER_TRACE);
    assert_eq!(hex(&http.parent_span_id), HEADER_PARENT);
    let mcp = find("tools/call greet", HEADER_TRACE);
    assert_eq!(mcp.parent_span_id, http.span_id);
    assert!(mcp.links.is_empty());

    // 3. An unknown tool: no tool name anywhere, the JSON-RPC error code as error.type.
    let unknown = spans
        .iter()
        .find(|s| s.name == "tools/call")
        .unwrap_or_else(|| panic!("{names:?}"));
    assert_eq!(attr(unknown, "gen_ai.tool.name"), None);
    assert_eq!(attr(unknown, "error.type").as_deref(), Some("-32602"));
    assert_eq!(
        attr(unknown, "rpc.response.status_code").as_deref(),
        Some("-32602")
    );
    assert_eq!(unknown.status.as_ref().map(|s| s.code), Some(ERROR));

    // 4. An upstream 404: the client span's error is the status, the tool's `tool_error`.
    let failed = spans
        .iter()
        .find(|s| s.name == "GET /items/{id}" && attr(s, "error.type").as_deref() == Some("404"))
        .unwrap_or_else(|| panic!("{names:?}"));
    let tool = spans
        .iter()
        .find(|s| s.span_id == failed.parent_span_id)
        .unwrap();
    assert_eq!(attr(tool, "error.type").as_deref(), Some("tool_error"));
    assert_eq!(tool.status.as_ref().map(|s| s.code), Some(ERROR));

    // 5. Sessions: the issued id on `initialize`, nothing for a made-up one.
    let init = spans.iter().find(|s| s.name == "initialize").unwrap();
    assert_eq!(attr(init, "mcp.session.id"), Some(session));
    assert_eq!(
        attr(init, "mcp.protocol.version").as_deref(),
        Some("2025-11-25")
    );
    let refused = spans.iter().find(|s| s.name == "tools/list").unwrap();
    assert_eq!(attr(refused, "mcp.session.id"), None);
    assert_eq!(attr(refused, "error.type").as_deref(), Some("404"));

    // 6. The refused request: an HTTP span only, its path's query nowhere.
    assert!(
        spans.iter().any(|s| s.name == "POST /mcp"
            && attr(s, "http.response.status_code").as_deref() == Some("401"))
    );
}
