//! The `test_simple_text` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestSimpleTextInput;

/// Returns a fixed text block.
pub(crate) async fn simple_text(
    _ctx: &ToolContext,
    _input: TestSimpleTextInput,
) -> Result<ToolOutput, ToolError> {
    Ok(ToolOutput::text(
        "This is a simple text response for testing.",
    ))
}
