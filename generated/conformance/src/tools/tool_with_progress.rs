//! The `test_tool_with_progress` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use std::time::Duration;

use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestToolWithProgressInput;

/// Reports progress 0, 50 and 100 of 100, 50 ms apart.
pub(crate) async fn tool_with_progress(
    ctx: &ToolContext,
    _input: TestToolWithProgressInput,
) -> Result<ToolOutput, ToolError> {
    for (i, progress) in [0.0, 50.0, 100.0].into_iter().enumerate() {
        if i > 0 {
            bmm_runtime::tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ctx.progress(progress, Some(100.0), None).await;
    }
    Ok(ToolOutput::text("Tool with progress executed successfully"))
}
