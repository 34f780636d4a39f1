//! The `protocol_error_job` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use std::time::Duration;

use bmm_runtime::rmcp::ErrorData;
use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::ProtocolErrorJobInput;

/// Fails with a JSON-RPC internal error (a task then ends `failed`).
pub(crate) async fn protocol_error_job(
    _ctx: &ToolContext,
    _input: ProtocolErrorJobInput,
) -> Result<ToolOutput, ToolError> {
    bmm_runtime::tokio::time::sleep(Duration::from_millis(100)).await;
    Err(ToolError::protocol(ErrorData::internal_error(
        "the job hit an internal error",
        None,
    )))
}
