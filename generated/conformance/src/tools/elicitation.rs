//! The `test_elicitation` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::serde_json::{self, json};
use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestElicitationInput;

/// Asks the user for a username and an email address.
pub(crate) async fn elicitation(
    ctx: &ToolContext,
    input: TestElicitationInput,
) -> Result<ToolOutput, ToolError> {
    let schema = json!({
        "type": "object",
        "properties": {
            "username": { "type": "string", "description": "User's response" },
            "email": { "type": "string", "description": "User's email address" }
        },
        "required": ["username", "email"]
    });
    let answer = ctx.elicit("elicitation", input.message, schema).await?;
    Ok(ToolOutput::text(format!(
        "User response: {}",
        serde_json::to_string(&answer).unwrap_or_default()
    )))
}
