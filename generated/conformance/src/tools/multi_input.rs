//! The `multi_input` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::serde_json::json;
use bmm_runtime::{Question, ToolContext, ToolError, ToolOutput};

use crate::generated::types::MultiInputInput;

/// Asks two questions at once and reports both answers.
pub(crate) async fn multi_input(
    ctx: &ToolContext,
    _input: MultiInputInput,
) -> Result<ToolOutput, ToolError> {
    let name = Question::form(
        "What is your name?",
        json!({
            "type": "object",
            "properties": { "name": { "type": "string" } },
            "required": ["name"]
        }),
    )?;
    let confirm = Question::form(
        "Proceed?",
        json!({
            "type": "object",
            "properties": { "confirm": { "type": "boolean" } },
            "required": ["confirm"]
        }),
    )?;
    let answers = ctx
        .ask(
            [("name".to_owned(), name), ("confirm".to_owned(), confirm)],
            None,
        )
        .await?;
    Ok(ToolOutput::text(format!(
        "Received {} answers: {}",
        answers.len(),
        answers.keys().cloned().collect::<Vec<_>>().join(", ")
    )))
}
