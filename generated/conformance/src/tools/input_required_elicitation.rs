//! The `test_input_required_result_elicitation` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::serde_json::json;
use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestInputRequiredResultElicitationInput;

/// Asks for the user's name, then greets them.
pub(crate) async fn input_required_elicitation(
    ctx: &ToolContext,
    _input: TestInputRequiredResultElicitationInput,
) -> Result<ToolOutput, ToolError> {
    let schema = json!({
        "type": "object",
        "properties": { "name": { "type": "string" } },
        "required": ["name"]
    });
    let answer = ctx
        .elicit("user_name", "What is your name?", schema)
        .await?;
    let name = answer
        .content
        .as_ref()
        .and_then(|c| c.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("stranger");
    Ok(ToolOutput::text(format!("Hello, {name}!")))
}
