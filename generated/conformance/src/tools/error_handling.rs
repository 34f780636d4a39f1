//! The `test_error_handling` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestErrorHandlingInput;

/// Always fails with an error result.
pub(crate) async fn error_handling(
    _ctx: &ToolContext,
    _input: TestErrorHandlingInput,
) -> Result<ToolOutput, ToolError> {
    Err(ToolError::new(
        "This tool intentionally returns an error for testing",
    ))
}
