//! The `test_logging_tool` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.
#![allow(deprecated)] // logging is deprecated by SEP-2577 but still in the spec

use bmm_runtime::rmcp::model::LoggingLevel;
use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestLoggingToolInput;

/// Logs one message; the runtime only sends it when the request asked for a log level.
pub(crate) async fn logging_tool(
    ctx: &ToolContext,
    _input: TestLoggingToolInput,
) -> Result<ToolOutput, ToolError> {
    ctx.log(LoggingLevel::Info, "test_logging_tool ran").await;
    Ok(ToolOutput::text("Logging tool completed"))
}
