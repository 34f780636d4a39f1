//! The `confirm_delete` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::serde_json::json;
use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::ConfirmDeleteInput;

/// Asks the user to confirm, then reports what it would have done (nothing is deleted).
pub(crate) async fn confirm_delete(
    ctx: &ToolContext,
    input: ConfirmDeleteInput,
) -> Result<ToolOutput, ToolError> {
    let schema = json!({
        "type": "object",
        "properties": { "confirm": { "type": "boolean" } },
        "required": ["confirm"]
    });
    let answer = ctx
        .elicit(
            "confirm_delete",
            format!("Delete {}?", input.filename),
            schema,
        )
        .await?;
    let confirmed = answer
        .content
        .as_ref()
        .and_then(|c| c.get("confirm"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    Ok(ToolOutput::text(if confirmed {
        format!("Deleted {}", input.filename)
    } else {
        format!("Kept {}", input.filename)
    }))
}
