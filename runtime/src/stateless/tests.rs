//! The direct stateless path against rmcp's own answers, request by request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Logging and roots are deprecated by SEP-2577 but still in the spec the tools use.
#![allow(deprecated)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use rmcp::model::LoggingLevel;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};
use tower_service::Service;

use super::Stateless;
use crate::def::{AnnotationsDef, Handler, ServerDef, TaskSupport, ToolDef};
use crate::{McpServer, Secrets, ToolOutput};

const HOSTS: &[&str] = &["127.0.0.1", "localhost"];

fn tool(name: &'static str, schema: &'static str, handler: Handler) -> ToolDef {
    ToolDef {
        name,
        title: None,
        description: "A test tool.",
        input_schema: schema,
        output_schema: None,
        annotations: AnnotationsDef::default(),
        scopes: &[],
        task: TaskSupport::Forbidden,
        rate_limit: None,
        handler,
    }
}

const TEXT: &str =
    r#"{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}"#;

/// Flags the cancellation test watches.
#[derive(Default)]
struct Seen {
    cancelled: AtomicBool,
    dropped: AtomicBool,
}

struct SetOnDrop(Arc<Seen>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.dropped.store(true, Ordering::SeqCst);
    }
}

fn server(seen: &Arc<Seen>) -> McpServer {
    let waits = Arc::clone(seen);
    let def = ServerDef {
        name: "direct",
        version: "0.1.0",
        title: None,
        instructions: None,
        scopes_supported: &[],
        required_scopes: &[],
        scope_hierarchy: &[],
        secrets: &[],
        upstreams: &[],
        tools: vec![
            tool(
                "echo",
                TEXT,
                Handler::Rust(Arc::new(|_ctx, args| {
                    Box::pin(
                        async move { Ok(ToolOutput::Structured(json!({"echo": args["text"]}))) },
                    )
                })),
            ),
            tool(
                "chatty",
                TEXT,
                Handler::Rust(Arc::new(|ctx, _args| {
                    Box::pin(async move {
                        ctx.progress(1.0, Some(2.0), Some("half way")).await;
                        ctx.log(LoggingLevel::Warning, json!("a warning")).await;
                        ctx.progress(2.0, Some(2.0), None).await;
                        Ok(ToolOutput::Text("done".to_owned()))
                    })
                })),
            ),
            tool(
                "waits",
                TEXT,
                Handler::Rust(Arc::new(move |ctx, _args| {
                    let seen = Arc::clone(&waits);
                    Box::pin(async move {
                        let ct = ctx.request().ct.clone();
                        let watcher = Arc::clone(&seen);
                        tokio::spawn(async move {
                            ct.cancelled().await;
                            watcher.cancelled.store(true, Ordering::SeqCst);
                        });
                        let _flag = SetOnDrop(seen);
                        std::future::pending::<()>().await;
                        Ok(ToolOutput::Text("never".to_owned()))
                    })
                })),
            ),
            tool(
                "bound",
                r#"{"type":"object","properties":{"text":{"type":"string","x-mcp-header":"Text"}}}"#,
                Handler::Rust(Arc::new(|_ctx, _args| {
                    Box::pin(async move { Ok(ToolOutput::Text("bound".to_owned())) })
                })),
            ),
        ],
        resources: &[],
        resource_templates: &[],
        prompts: Vec::new(),
    };
    McpServer::new(def, Secrets::default(), |_| None).unwrap()
}

type Rmcp = StreamableHttpService<McpServer, LocalSessionManager>;

/// rmcp alone (configured as bmm configures it) and the same behind the direct path.
fn services(seen: &Arc<Seen>) -> (Rmcp, Stateless<Rmcp>) {
    let server = server(seen);
    let factory = server.clone();
    let hosts: Vec<String> = HOSTS.iter().map(|h| (*h).to_owned()).collect();
    let rmcp = StreamableHttpService::new(
        move || Ok(factory.session()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            .with_legacy_session_mode(true)
            .with_allowed_hosts(hosts.clone()),
    );
    let direct = Stateless::new(rmcp.clone(), &server, &hosts);
    (rmcp, direct)
}

fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    })
}

/// A request as a 2026-07-28 client sends it.
fn good(method: &str, params: Value) -> Request<Full<Bytes>> {
    let mut params = params;
    params["_meta"] = meta();
    let name = params
        .get("name")
        .or_else(|| params.get("uri"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    let mut builder = Request::post("/mcp")
        .header("host", "127.0.0.1:4103")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(name) = name {
        builder = builder.header("mcp-name", name);
    }
    builder
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn copy(req: &Request<Full<Bytes>>, body: Bytes) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(req.method()).uri(req.uri());
    for (k, v) in req.headers() {
        builder = builder.header(k, v);
    }
    builder.body(Full::new(body)).unwrap()
}

async fn body_of(req: &Request<Full<Bytes>>) -> Bytes {
    req.body().clone().collect().await.unwrap().to_bytes()
}

/// Status, content type, and the JSON-RPC messages of an answer (SSE events parsed).
async fn read(
    response: Response<BoxBody<Bytes, std::convert::Infallible>>,
) -> (u16, String, Vec<Value>) {
    let status = response.status().as_u16();
    let ct = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    let messages = if ct.starts_with("text/event-stream") {
        text.split("\n\n")
            .filter_map(|event| {
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim)
                    .collect();
                (!data.is_empty()).then(|| serde_json::from_str(&data).unwrap())
            })
            .collect()
    } else {
        vec![serde_json::from_str(&text).unwrap_or(Value::String(text))]
    };
    (status, ct, messages)
}

async fn both(
    rmcp: &mut Rmcp,
    direct: &mut Stateless<Rmcp>,
    req: Request<Full<Bytes>>,
) -> ((u16, String, Vec<Value>), (u16, String, Vec<Value>)) {
    let body = body_of(&req).await;
    let theirs = read(rmcp.call(copy(&req, body.clone())).await.unwrap()).await;
    let ours = read(direct.call(copy(&req, body)).await.unwrap()).await;
    (theirs, ours)
}

fn taken(direct: &Stateless<Rmcp>) -> usize {
    direct.shared.taken.load(Ordering::SeqCst)
}

#[tokio::test]
async fn direct_and_rmcp_answers_are_the_same() {
    let seen = Arc::default();
    let (mut rmcp, mut direct) = services(&seen);
    let cases = [
        good(
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "hi"}}),
        ),
        good(
            "tools/call",
            json!({"name": "echo", "arguments": {"text": 5}}),
        ),
        good("tools/call", json!({"name": "echo", "arguments": {}})),
        good("tools/call", json!({"name": "nope", "arguments": {}})),
        good("tools/list", json!({})),
        good("prompts/list", json!({})),
        good("prompts/get", json!({"name": "nope"})),
        good("resources/list", json!({})),
        good("resources/templates/list", json!({})),
        good("resources/read", json!({"uri": "file:///nope"})),
        good(
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "nope"}, "argument": {"name": "a", "value": "b"}}),
        ),
    ];
    // A string id and a field JSON-RPC does not define, read as rmcp reads them.
    let mut odd = good(
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "hi"}}),
    );
    let mut body: Value = serde_json::from_slice(&body_of(&odd).await).unwrap();
    body["id"] = json!("req-1");
    body["extra"] = json!({"x": 1});
    odd = copy(&odd, Bytes::from(body.to_string()));
    let cases = cases.into_iter().chain([odd]).collect::<Vec<_>>();
    let n = cases.len();
    for req in cases {
        let what = String::from_utf8_lossy(&body_of(&req).await).into_owned();
        let (theirs, ours) = both(&mut rmcp, &mut direct, req).await;
        assert_eq!(ours, theirs, "{what}");
        assert!(
            ours.1.starts_with("text/event-stream") || ours.0 != 200,
            "{what}: {ours:?}"
        );
    }
    assert_eq!(
        taken(&direct),
        n,
        "every case must have taken the direct path"
    );
}

/// The body of [`good`]'s `tools/call` of `echo`, as text.
fn call_body() -> String {
    let mut params = json!({"name": "echo", "arguments": {"text": "hi"}});
    params["_meta"] = meta();
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}).to_string()
}

#[tokio::test]
async fn requests_rmcp_must_refuse_are_left_to_rmcp() {
    let seen = Arc::default();
    let (mut rmcp, mut direct) = services(&seen);
    let call = || {
        good(
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "hi"}}),
        )
    };
    let with = |name: &str, value: &str| {
        let mut r = call();
        r.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        r
    };
    let without = |name: &str| {
        let mut r = call();
        r.headers_mut().remove(name);
        r
    };
    let appended = |name: &'static str, value: &'static str| {
        let mut r = call();
        r.headers_mut().append(name, value.parse().unwrap());
        r
    };
    let body = |text: &str| {
        let r = call();
        copy(&r, Bytes::from(text.to_owned()))
    };
    let mut get = call();
    *get.method_mut() = http::Method::GET;
    let mut no_meta_version = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hi"}, "_meta": meta()}});
    no_meta_version["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] =
        json!("2025-11-25");
    let mut no_capabilities = no_meta_version.clone();
    no_capabilities["params"]["_meta"] = meta();
    no_capabilities["params"]["_meta"]
        .as_object_mut()
        .unwrap()
        .remove("io.modelcontextprotocol/clientCapabilities");
    let cases = [
        ("Mcp-Method differs", with("mcp-method", "tools/list")),
        ("no Mcp-Method", without("mcp-method")),
        ("two Mcp-Method", appended("mcp-method", "tools/call")),
        ("Mcp-Name differs", with("mcp-name", "other")),
        ("no Mcp-Name", without("mcp-name")),
        ("two Mcp-Name", appended("mcp-name", "echo")),
        ("encoded Mcp-Name", with("mcp-name", "=?base64?ZWNobw==?=")),
        ("an Mcp-Param header", with("mcp-param-text", "hi")),
        ("Accept without SSE", with("accept", "application/json")),
        (
            "Accept with weights",
            with("accept", "application/json, text/event-stream;q=0"),
        ),
        ("text/plain body", with("content-type", "text/plain")),
        ("host not allowed", with("host", "evil.example")),
        (
            "other protocol version",
            with("mcp-protocol-version", "2025-11-25"),
        ),
        (
            "unknown protocol version",
            with("mcp-protocol-version", "2099-01-01"),
        ),
        ("a session id", with("mcp-session-id", "abc")),
        ("GET", get),
        ("not JSON", body("{")),
        ("a batch", body("[]")),
        (
            "a notification",
            body(
                r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
            ),
        ),
        (
            "_meta names another version",
            body(&no_meta_version.to_string()),
        ),
        (
            "_meta lacks clientCapabilities",
            body(&no_capabilities.to_string()),
        ),
        ("initialize", {
            let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"}}});
            let mut r = body(&init.to_string());
            r.headers_mut()
                .insert("mcp-method", "initialize".parse().unwrap());
            r.headers_mut().remove("mcp-name");
            r
        }),
        ("ping", {
            let mut r = good("ping", json!({}));
            r.headers_mut()
                .insert("mcp-method", "ping".parse().unwrap());
            r
        }),
        (
            "a tool bound to headers",
            good("tools/call", json!({"name": "bound", "arguments": {}})),
        ),
        (
            "JSON-RPC 1.0",
            body(&call_body().replace(r#""jsonrpc":"2.0""#, r#""jsonrpc":"1.0""#)),
        ),
        (
            "an escaped method",
            body(&call_body().replace("tools/call", r"tools\/call")),
        ),
        (
            "a null id",
            body(&call_body().replace(r#""id":7"#, r#""id":null"#)),
        ),
        ("no params", {
            let mut r = body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
            r.headers_mut()
                .insert("mcp-method", "tools/list".parse().unwrap());
            r
        }),
    ];
    for (what, req) in cases {
        let (theirs, ours) = both(&mut rmcp, &mut direct, req).await;
        // rmcp's session ids are random: only the status and the kind of answer compare.
        if what == "initialize" {
            assert_eq!((ours.0, &ours.1), (theirs.0, &theirs.1), "{what}");
        } else {
            assert_eq!(ours, theirs, "{what}");
        }
        assert_eq!(taken(&direct), 0, "{what} was answered on the direct path");
    }
}

#[tokio::test]
async fn notifications_stream_before_the_result() {
    let seen = Arc::default();
    let (mut rmcp, mut direct) = services(&seen);
    let mut req = good(
        "tools/call",
        json!({"name": "chatty", "arguments": {"text": "x"}}),
    );
    let mut body: Value = serde_json::from_slice(&body_of(&req).await).unwrap();
    body["params"]["_meta"]["progressToken"] = json!("p-1");
    body["params"]["_meta"]["io.modelcontextprotocol/logLevel"] = json!("info");
    req = copy(&req, Bytes::from(body.to_string()));
    let (theirs, ours) = both(&mut rmcp, &mut direct, req).await;
    assert_eq!(taken(&direct), 1);
    assert_eq!(ours.0, 200);
    assert!(ours.1.starts_with("text/event-stream"), "{ours:?}");
    let methods: Vec<&str> = ours
        .2
        .iter()
        .map(|m| m["method"].as_str().unwrap_or("result"))
        .collect();
    assert_eq!(
        methods,
        [
            "notifications/progress",
            "notifications/message",
            "notifications/progress",
            "result"
        ],
        "{ours:?}"
    );
    assert_eq!(ours.2[0]["params"]["message"], "half way");
    assert_eq!(ours.2[3]["result"]["content"][0]["text"], "done");
    // rmcp sends the same messages in the same order.
    assert_eq!(ours.2, theirs.2);
}

#[tokio::test]
async fn a_dropped_response_cancels_the_handler() {
    let seen: Arc<Seen> = Arc::default();
    let (_, mut direct) = services(&seen);
    let req = good(
        "tools/call",
        json!({"name": "waits", "arguments": {"text": "x"}}),
    );
    let answer = tokio::time::timeout(Duration::from_millis(200), direct.call(req)).await;
    assert!(answer.is_err(), "the call must still be running");
    assert_eq!(taken(&direct), 1);
    for _ in 0..100 {
        if seen.cancelled.load(Ordering::SeqCst) && seen.dropped.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "cancelled {}, handler dropped {}",
        seen.cancelled.load(Ordering::SeqCst),
        seen.dropped.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn the_peer_of_a_direct_call_reaches_no_client_and_fails_at_once() {
    let seen = Arc::default();
    let (_, direct) = services(&seen);
    let peer = direct.shared.peer();
    let sent = tokio::time::timeout(
        Duration::from_secs(2),
        peer.send_notification(
            rmcp::model::ServerNotification::ToolListChangedNotification(
                rmcp::model::ToolListChangedNotification::default(),
            ),
        ),
    )
    .await
    .expect("a notification through the detached peer must fail at once");
    assert!(sent.is_err());
    let asked = tokio::time::timeout(Duration::from_secs(2), peer.list_roots())
        .await
        .expect("a request through the detached peer must fail at once");
    assert!(asked.is_err());
}
