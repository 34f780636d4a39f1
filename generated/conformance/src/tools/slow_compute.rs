//! The `slow_compute` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use std::time::Duration;

use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::SlowComputeInput;

/// Sleeps `seconds` (0 to 600, checked by the schema), then reports it. Run as a task, a
/// `tasks/cancel` drops this future mid-sleep.
pub(crate) async fn slow_compute(
    _ctx: &ToolContext,
    input: SlowComputeInput,
) -> Result<ToolOutput, ToolError> {
    let seconds = u64::try_from(input.seconds).unwrap_or(0).min(600);
    bmm_runtime::tokio::time::sleep(Duration::from_secs(seconds)).await;
    let label = input.label.as_deref().unwrap_or("unlabelled");
    Ok(ToolOutput::text(format!(
        "Computed for {seconds} s ({label})"
    )))
}
