//! Traces from a real server process (`bmm_runtime::run::main`): the `OTEL_*` environment
//! turns export on, and the spans still batched when SIGTERM arrives reach the collector
//! before the process exits (`bmm_runtime::traces`, rules 1, 2 and 6).
//!
//! This test binary is its own server: with `BMM_TRACES_CHILD=1` it is the `main` of a
//! generated server and its arguments are that server's flags.
//! (`harness = false`: libtest's own flags would reach the server's flag parser.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bmm_runtime::def::{AnnotationsDef, Handler, TaskSupport, ToolDef};
use bmm_runtime::{ServerDef, ToolOutput};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::json;
use tokio::net::TcpListener;

const CHILD: &str = "BMM_TRACES_CHILD";

fn def() -> ServerDef {
    ServerDef {
        name: "traced",
        version: "0.1.0",
        title: None,
        instructions: None,
        scopes_supported: &[],
        required_scopes: &[],
        scope_hierarchy: &[],
        secrets: &[],
        upstreams: &[],
        tools: vec![ToolDef {
            name: "hello",
            title: None,
            description: "Says hello.",
            input_schema: r#"{"type":"object"}"#,
            output_schema: None,
            annotations: AnnotationsDef::default(),
            scopes: &[],
            task: TaskSupport::Forbidden,
            rate_limit: None,
            handler: Handler::Rust(Arc::new(|_, _| {
                Box::pin(async { Ok(ToolOutput::Text("hello".into())) })
            })),
        }],
        resources: &[],
        prompts: Vec::new(),
        resource_templates: &[],
    }
}

fn main() -> ExitCode {
    if std::env::var_os(CHILD).is_some() {
        return bmm_runtime::run::main(def());
    }
    let name = "spans_batched_at_sigterm_reach_the_collector_before_the_process_exits";
    println!("test {name} ...");
    spans_batched_at_sigterm_reach_the_collector_before_the_process_exits();
    println!("test {name} ... ok");
    println!("1 passed, 0 failed");
    ExitCode::SUCCESS
}

/// The collector: keeps every decoded export.
async fn start_collector(exports: Arc<Mutex<Vec<ExportTraceServiceRequest>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let exports = Arc::clone(&exports);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let exports = Arc::clone(&exports);
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            exports
                                .lock()
                                .unwrap()
                                .push(ExportTraceServiceRequest::decode(body).unwrap());
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
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

fn spans_batched_at_sigterm_reach_the_collector_before_the_process_exits() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let exports = Arc::new(Mutex::new(Vec::new()));
        let collector = start_collector(Arc::clone(&exports)).await;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD, "1")
            .env_remove("RUST_LOG")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector)
            .env("OTEL_SERVICE_NAME", "traced-by-env")
            // Far beyond the test: only the flush at shutdown can deliver the spans.
            .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
            .args(["--listen", &addr.to_string(), "--no-auth"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(
            reqwest::get(format!("http://{addr}/healthz"))
                .await
                .map(|r| r.status().as_u16()),
            Ok(200)
        ) {
            assert!(Instant::now() < deadline, "the server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"}});
        let text = reqwest::Client::new()
            .post(format!("http://{addr}/mcp"))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "hello")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "hello", "arguments": {}, "_meta": meta}}))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("hello"), "{text}");
        assert!(exports.lock().unwrap().is_empty(), "nothing exported yet");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exited = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(exited.success(), "{exited:?}");
        let exports = exports.lock().unwrap();
        let resource = exports
            .iter()
            .flat_map(|e| &e.resource_spans)
            .next()
            .expect("spans were exported at shutdown");
        let service = resource
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .map(|v| format!("{:?}", v.value));
        assert!(
            service.as_deref().is_some_and(|s| s.contains("traced-by-env")),
            "{service:?}"
        );
        let names: Vec<&str> = exports
            .iter()
            .flat_map(|e| &e.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.name.as_str())
            .collect();
        assert!(names.contains(&"POST /mcp"), "{names:?}");
        assert!(names.contains(&"tools/call hello"), "{names:?}");
    });
}
