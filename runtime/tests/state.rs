//! The server's own state (`bmm_runtime::app`): built by the start-up hook, reached by
//! every Rust tool through `ToolContext::with_state`, a wrong type a tool error (no panic),
//! a failing hook a start-up error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bmm_runtime::def::{AnnotationsDef, Handler, SecretDef, ToolDef};
use bmm_runtime::run::{Args, prepare, serve, start_up};
use bmm_runtime::{ServerDef, Startup, ToolError, ToolOutput};
use clap::Parser;
use serde_json::{Value, json};

static SECRETS: &[SecretDef] = &[SecretDef {
    name: "COUNTER_START",
    description: "where the counter starts",
}];

/// The state the tests install: a counter shared by every call.
#[derive(Debug)]
struct Counter {
    next: AtomicU64,
}

/// A start-up hook: reads a secret, may fail.
async fn build(startup: Startup) -> Result<Counter, String> {
    let start = startup
        .secret("COUNTER_START")
        .ok_or("COUNTER_START is not set")?;
    let start: u64 = start
        .parse()
        .map_err(|e| format!("COUNTER_START `{start}` is not a number: {e}"))?;
    Ok(Counter {
        next: AtomicU64::new(start),
    })
}

fn tool(name: &'static str, handler: Handler) -> ToolDef {
    ToolDef {
        name,
        title: None,
        description: "test",
        input_schema: r#"{"type":"object"}"#,
        output_schema: None,
        annotations: AnnotationsDef::default(),
        scopes: &[],
        task: bmm_runtime::def::TaskSupport::Forbidden,
        rate_limit: None,
        handler,
    }
}

fn def() -> ServerDef {
    ServerDef {
        name: "counter",
        version: "0.1.0",
        title: None,
        instructions: None,
        scopes_supported: &[],
        required_scopes: &[],
        scope_hierarchy: &[],
        secrets: SECRETS,
        upstreams: &[],
        tools: vec![
            tool(
                "next",
                Handler::Rust(Arc::new(|ctx, _| {
                    Box::pin(async move {
                        let ctx = ctx.with_state::<Counter>()?;
                        let n = ctx.state().next.fetch_add(1, Ordering::Relaxed);
                        // The ToolContext's own methods through Deref.
                        let stateless = ctx.is_stateless();
                        ToolOutput::json(&json!({ "n": n, "stateless": stateless }))
                    })
                })),
            ),
            tool(
                "wrong_type",
                Handler::Rust(Arc::new(|ctx, _| {
                    Box::pin(async move {
                        let ctx = ctx.with_state::<String>()?;
                        Err(ToolError::new(format!("got {}", ctx.state())))
                    })
                })),
            ),
        ],
        resources: &[],
        resource_templates: &[],
        prompts: Vec::new(),
    }
}

fn env(name: &str) -> Option<String> {
    (name == "COUNTER_START").then(|| "41".to_owned())
}

/// Serves `def` without authentication on a free loopback port, state built by `build`
/// unless `install` is false.
async fn serve_counter(install: bool) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let args =
        Args::try_parse_from(["counter", "--listen", &addr.to_string(), "--no-auth"]).unwrap();
    let prepared = prepare(def(), &args, env).unwrap();
    if install {
        start_up(&prepared.server, false, build).await.unwrap();
    }
    let server = bmm_middleware::Server::bind(addr, prepared.config.clone())
        .await
        .unwrap();
    tokio::spawn(serve(prepared, server, std::future::pending()));
    format!("http://{addr}/mcp")
}

/// One stateless 2026-07-28 `tools/call`; the JSON-RPC result.
async fn call(url: &str, name: &str) -> Value {
    let params = json!({"name": name, "arguments": {}, "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"}}});
    let text = reqwest::Client::new()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", name)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or(&text);
    let message: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {text}"));
    message["result"].clone()
}

#[tokio::test]
async fn every_call_shares_the_state_the_start_up_hook_built() {
    let url = serve_counter(true).await;
    let first = call(&url, "next").await;
    let second = call(&url, "next").await;
    assert_eq!(first["structuredContent"]["n"], 41, "{first}");
    assert_eq!(first["structuredContent"]["stateless"], true, "{first}");
    assert_eq!(second["structuredContent"]["n"], 42, "{second}");
}

#[tokio::test]
async fn a_state_of_another_type_is_a_tool_error() {
    let url = serve_counter(true).await;
    let result = call(&url, "wrong_type").await;
    assert_eq!(result["isError"], true, "{result}");
    assert!(
        result
            .to_string()
            .contains("not started with a `alloc::string::String` state"),
        "{result}"
    );
}

#[tokio::test]
async fn a_server_started_without_its_state_answers_a_tool_error() {
    let url = serve_counter(false).await;
    let result = call(&url, "next").await;
    assert_eq!(result["isError"], true, "{result}");
    assert!(result.to_string().contains("main_with_state"), "{result}");
}

#[tokio::test]
async fn a_failing_start_up_hook_stops_start_up() {
    let args = Args::try_parse_from(["counter", "--no-auth"]).unwrap();
    let bad_env = |name: &str| (name == "COUNTER_START").then(|| "forty".to_owned());
    let prepared = prepare(def(), &args, bad_env).unwrap();
    let err = start_up(&prepared.server, false, build).await.unwrap_err();
    assert_eq!(
        err.message,
        "start-up failed: COUNTER_START `forty` is not a number: invalid digit found in string"
    );
    // A second state is refused: the first one stays.
    let prepared = prepare(def(), &args, env).unwrap();
    start_up(&prepared.server, false, build).await.unwrap();
    let again = start_up(&prepared.server, false, build).await.unwrap_err();
    assert_eq!(again.message, "the server's state is already set");
}
