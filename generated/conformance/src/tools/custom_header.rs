//! The `test_custom_header` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestCustomHeaderInput;

/// Echoes the value (rmcp has already checked it against the `Mcp-Param-Value` header).
pub(crate) async fn custom_header(
    _ctx: &ToolContext,
    input: TestCustomHeaderInput,
) -> Result<ToolOutput, ToolError> {
    Ok(ToolOutput::text(format!("Received value: {}", input.value)))
}
