//! The `failing_job` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use std::time::Duration;

use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::FailingJobInput;

/// Works for a second, then reports a tool error (the task still completes, with
/// `isError: true`).
pub(crate) async fn failing_job(
    _ctx: &ToolContext,
    _input: FailingJobInput,
) -> Result<ToolOutput, ToolError> {
    bmm_runtime::tokio::time::sleep(Duration::from_secs(1)).await;
    Err(ToolError::new("the job failed, as it always does"))
}
