//! The `test_missing_capability` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::rmcp::ErrorData;
use bmm_runtime::rmcp::model::ClientCapabilities;
use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestMissingCapabilityInput;

/// Needs the client's sampling capability: a -32021 error (HTTP 400) without it.
pub(crate) async fn missing_capability(
    ctx: &ToolContext,
    _input: TestMissingCapabilityInput,
) -> Result<ToolOutput, ToolError> {
    if ctx.client_capabilities().sampling.is_none() {
        let mut needed = ClientCapabilities::default();
        needed.sampling = Some(Default::default());
        return Err(ToolError::protocol(
            ErrorData::missing_required_client_capability(needed),
        ));
    }
    Ok(ToolOutput::text("The client declared sampling"))
}
