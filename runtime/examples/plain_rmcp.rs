//! The floor `cargo xtask bench` compares against: the same `word_stats` tool served by
//! rmcp's Streamable HTTP service on plain hyper, with no bmm-middleware layer at all (no
//! auth, no Origin check, no limits, no tracing).
//!
//! usage: plain_rmcp <listen address>
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use bmm_runtime::def::{AnnotationsDef, Handler, ServerDef, ToolDef};
use bmm_runtime::{McpServer, Secrets, ToolOutput};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};

fn word_stats(text: &str) -> Value {
    let sentences = text
        .split(['.', '!', '?'])
        .filter(|s| s.chars().any(char::is_alphanumeric))
        .count();
    json!({
        "words": text.split_whitespace().count(),
        "sentences": sentences,
        "characters": text.chars().count(),
    })
}

#[tokio::main]
async fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4199".to_owned());
    let def = ServerDef {
        name: "plain",
        version: "0.1.0",
        title: None,
        instructions: None,
        scopes_supported: &[],
        required_scopes: &[],
        scope_hierarchy: &[],
        secrets: &[],
        upstreams: &[],
        tools: vec![ToolDef {
            name: "word_stats",
            title: None,
            description: "Count words, sentences and characters in a text.",
            input_schema: r#"{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}"#,
            output_schema: None,
            annotations: AnnotationsDef::default(),
            scopes: &[],
            handler: Handler::Rust(Arc::new(|_ctx, args| {
                Box::pin(async move {
                    let text = args["text"].as_str().unwrap_or_default().to_owned();
                    Ok(ToolOutput::Structured(word_stats(&text)))
                })
            })),
        }],
        resources: &[],
        resource_templates: &[],
        prompts: Vec::new(),
    };
    let server = McpServer::new(def, Secrets::default(), |_| None).unwrap();
    let service = StreamableHttpService::new(
        move || Ok(server.session()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_legacy_session_mode(true),
    );
    let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
    eprintln!("plain rmcp on {listen}/mcp");
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
