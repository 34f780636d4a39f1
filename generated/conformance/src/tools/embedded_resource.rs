//! The `test_embedded_resource` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::rmcp::model::{ContentBlock, ResourceContents};
use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestEmbeddedResourceInput;

/// Returns an embedded text resource.
pub(crate) async fn embedded_resource(
    _ctx: &ToolContext,
    _input: TestEmbeddedResourceInput,
) -> Result<ToolOutput, ToolError> {
    Ok(ToolOutput::content([ContentBlock::resource(
        ResourceContents::TextResourceContents {
            uri: "test://embedded-resource".into(),
            mime_type: Some("text/plain".into()),
            text: "This is an embedded resource content.".into(),
            meta: None,
        },
    )]))
}
