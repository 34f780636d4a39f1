//! The `test_streaming_elicitation` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::serde_json::json;
use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestStreamingElicitationInput;

/// Asks the user to confirm: an input-required result in 2026-07-28, a request before.
pub(crate) async fn streaming_elicitation(
    ctx: &ToolContext,
    _input: TestStreamingElicitationInput,
) -> Result<ToolOutput, ToolError> {
    let schema = json!({
        "type": "object",
        "properties": { "ok": { "type": "boolean" } },
        "required": ["ok"]
    });
    let answer = ctx.elicit("confirm", "Please confirm", schema).await?;
    Ok(ToolOutput::text(format!("Confirmed: {:?}", answer.action)))
}
