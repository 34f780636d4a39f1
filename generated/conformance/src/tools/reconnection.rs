//! The `test_reconnection` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use std::time::Duration;

use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestReconnectionInput;

/// Answers after 100 ms.
pub(crate) async fn reconnection(
    _ctx: &ToolContext,
    _input: TestReconnectionInput,
) -> Result<ToolOutput, ToolError> {
    bmm_runtime::tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(ToolOutput::text("Reconnection test completed successfully"))
}
