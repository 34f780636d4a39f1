//! The `test_input_required_result_sampling` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::serde_json;
use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestInputRequiredResultSamplingInput;

/// Asks the client's model a question, then reports its answer.
pub(crate) async fn input_required_sampling(
    ctx: &ToolContext,
    _input: TestInputRequiredResultSamplingInput,
) -> Result<ToolOutput, ToolError> {
    let answer = ctx
        .sample("capital_question", "What is the capital of France?", 100)
        .await?;
    let text = serde_json::to_value(&answer)
        .ok()
        .and_then(|v| v.pointer("/content/text")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok(ToolOutput::text(format!("The model answered: {text}")))
}
