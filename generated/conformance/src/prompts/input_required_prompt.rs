//! The `test_input_required_result_prompt` prompt. Created by bmm once: this file is yours and is never overwritten.

use bmm_runtime::rmcp::model::{PromptMessage, Role};
use bmm_runtime::serde_json::{Map, Value, json};
use bmm_runtime::{ToolContext, ToolError};

/// Asks the user what context to use, then builds the prompt with it.
pub(crate) async fn input_required_prompt(
    ctx: &ToolContext,
    _arguments: Map<String, Value>,
) -> Result<Vec<PromptMessage>, ToolError> {
    let schema = json!({
        "type": "object",
        "properties": { "context": { "type": "string" } },
        "required": ["context"]
    });
    let answer = ctx
        .elicit(
            "user_context",
            "What context should the prompt use?",
            schema,
        )
        .await?;
    let context = answer
        .content
        .as_ref()
        .and_then(|c| c.get("context"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    Ok(vec![PromptMessage::new_text(
        Role::User,
        format!("Use this context: {context}"),
    )])
}
