//! The `test_elicitation_sep1034_defaults` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::serde_json::{self, json};
use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestElicitationSep1034DefaultsInput;

/// Elicitation whose fields carry default values (SEP-1034).
pub(crate) async fn elicitation_sep1034_defaults(
    ctx: &ToolContext,
    _input: TestElicitationSep1034DefaultsInput,
) -> Result<ToolOutput, ToolError> {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": { "type": "string", "description": "User name", "default": "John Doe" },
            "age": { "type": "integer", "description": "User age", "default": 30 },
            "score": { "type": "number", "description": "User score", "default": 95.5 },
            "status": {
                "type": "string",
                "description": "User status",
                "enum": ["active", "inactive", "pending"],
                "default": "active"
            },
            "verified": { "type": "boolean", "description": "Verification status", "default": true }
        }
    });
    let answer = ctx
        .elicit(
            "defaults",
            "Please review and update the form fields with defaults",
            schema,
        )
        .await?;
    Ok(ToolOutput::text(format!(
        "Elicitation completed: {}",
        serde_json::to_string(&answer).unwrap_or_default()
    )))
}
