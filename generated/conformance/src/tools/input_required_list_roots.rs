//! The `test_input_required_result_list_roots` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::{Question, ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestInputRequiredResultListRootsInput;

/// Asks for the client's roots, then counts them.
pub(crate) async fn input_required_list_roots(
    ctx: &ToolContext,
    _input: TestInputRequiredResultListRootsInput,
) -> Result<ToolOutput, ToolError> {
    let answers = ctx
        .ask([("client_roots".to_owned(), Question::Roots)], None)
        .await?;
    let count = answers
        .get("client_roots")
        .and_then(|a| a["roots"].as_array())
        .map_or(0, Vec::len);
    Ok(ToolOutput::text(format!("The client has {count} root(s)")))
}
