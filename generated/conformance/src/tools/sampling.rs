//! The `test_sampling` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::serde_json;
use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestSamplingInput;

/// Asks the client's model to answer the prompt and returns its answer.
pub(crate) async fn sampling(
    ctx: &ToolContext,
    input: TestSamplingInput,
) -> Result<ToolOutput, ToolError> {
    let answer = ctx.sample("sampling", input.prompt, 100).await?;
    let text = serde_json::to_value(&answer)
        .ok()
        .and_then(|v| v.pointer("/content/text")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok(ToolOutput::text(format!("LLM response: {text}")))
}
