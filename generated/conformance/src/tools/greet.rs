//! The `greet` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::GreetInput;

/// Greets someone by name.
pub(crate) async fn greet(_ctx: &ToolContext, input: GreetInput) -> Result<ToolOutput, ToolError> {
    Ok(ToolOutput::text(format!("Hello, {}!", input.name)))
}
