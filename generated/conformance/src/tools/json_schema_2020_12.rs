//! The `json_schema_2020_12_tool` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::JsonSchema202012ToolInput;

/// Echoes what it received; the point is its input schema, served verbatim.
pub(crate) async fn json_schema_2020_12(
    _ctx: &ToolContext,
    input: JsonSchema202012ToolInput,
) -> Result<ToolOutput, ToolError> {
    Ok(ToolOutput::text(format!(
        "JSON Schema 2020-12 tool called with name={:?}, address={}",
        input.name,
        bmm_runtime::serde_json::to_string(&input.address).unwrap_or_default()
    )))
}
