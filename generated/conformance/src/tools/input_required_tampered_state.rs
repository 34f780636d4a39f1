//! The `test_input_required_result_tampered_state` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::serde_json::{Value, json};
use bmm_runtime::{Question, ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestInputRequiredResultTamperedStateInput;

/// Asks for confirmation with sealed state; an altered state is a JSON-RPC error.
pub(crate) async fn input_required_tampered_state(
    ctx: &ToolContext,
    _input: TestInputRequiredResultTamperedStateInput,
) -> Result<ToolOutput, ToolError> {
    let _verified: Option<Value> = ctx.open_state()?;
    let question = Question::form(
        "Please confirm",
        json!({
            "type": "object",
            "properties": { "ok": { "type": "boolean" } },
            "required": ["ok"]
        }),
    )?;
    let sealed = ctx.seal_state(&json!({ "step": "confirm" }))?;
    ctx.ask([("confirm".to_owned(), question)], Some(sealed))
        .await?;
    Ok(ToolOutput::text("state verified"))
}
