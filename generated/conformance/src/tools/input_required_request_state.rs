//! The `test_input_required_result_request_state` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::serde_json::{Value, json};
use bmm_runtime::{Question, ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestInputRequiredResultRequestStateInput;

/// Asks for confirmation with sealed state, and checks the state on the retry.
pub(crate) async fn input_required_request_state(
    ctx: &ToolContext,
    _input: TestInputRequiredResultRequestStateInput,
) -> Result<ToolOutput, ToolError> {
    let state: Option<Value> = ctx.open_state()?;
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
    match state {
        Some(s) if s["step"] == "confirm" => Ok(ToolOutput::text("state-ok: confirmed")),
        _ => Err(ToolError::new(
            "the answer arrived without the request state",
        )),
    }
}
