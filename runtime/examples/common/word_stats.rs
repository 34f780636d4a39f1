//! The `word_stats` server both the plain-rmcp floor (`examples/plain_rmcp.rs`) and the
//! in-memory stack bench (`benches/stack.rs`) serve: the same tool as the generated
//! `weather` server's, with no bmm code around it.

use std::sync::Arc;

use bmm_runtime::ToolOutput;
use bmm_runtime::def::{AnnotationsDef, Handler, ServerDef, ToolDef};
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

/// A server with the one `word_stats` tool.
pub(crate) fn server_def() -> ServerDef {
    ServerDef {
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
            task: bmm_runtime::def::TaskSupport::Forbidden,
            rate_limit: None,
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
    }
}
