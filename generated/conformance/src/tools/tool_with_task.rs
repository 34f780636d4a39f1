//! The `test_tool_with_task` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use std::time::Duration;

use bmm_runtime::serde_json::json;
use bmm_runtime::{Question, ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestToolWithTaskInput;

/// Asks the user's name up front (before any task exists), then works a moment as a
/// task and greets them.
pub(crate) async fn tool_with_task(
    ctx: &ToolContext,
    _input: TestToolWithTaskInput,
) -> Result<ToolOutput, ToolError> {
    let question = Question::form(
        "What is your name?",
        json!({
            "type": "object",
            "properties": { "name": { "type": "string" } },
            "required": ["name"]
        }),
    )?;
    let mut answers = ctx
        .ask_upfront([("user_name".to_owned(), question)], None)
        .await?;
    let name = answers
        .remove("user_name")
        .and_then(|a| a.get("content")?.get("name")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "stranger".to_owned());
    bmm_runtime::tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(ToolOutput::text(format!("Hello, {name}!")))
}
