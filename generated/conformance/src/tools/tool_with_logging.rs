//! The `test_tool_with_logging` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.
#![allow(deprecated)] // logging is deprecated by SEP-2577 but still in the spec

use std::time::Duration;

use bmm_runtime::rmcp::model::LoggingLevel;
use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestToolWithLoggingInput;

/// Sends three log messages while it runs, 50 ms apart.
pub(crate) async fn tool_with_logging(
    ctx: &ToolContext,
    _input: TestToolWithLoggingInput,
) -> Result<ToolOutput, ToolError> {
    let steps = [
        "Tool execution started",
        "Tool processing data",
        "Tool execution completed",
    ];
    for (i, step) in steps.into_iter().enumerate() {
        if i > 0 {
            bmm_runtime::tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ctx.log(LoggingLevel::Info, step).await;
    }
    Ok(ToolOutput::text("Tool with logging executed successfully"))
}
