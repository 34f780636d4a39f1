//! The `test_multiple_content_types` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::rmcp::model::{ContentBlock, ResourceContents};
use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use super::image_content::PNG;

use crate::generated::types::TestMultipleContentTypesInput;

/// Returns text, an image and an embedded JSON resource.
pub(crate) async fn multiple_content_types(
    _ctx: &ToolContext,
    _input: TestMultipleContentTypesInput,
) -> Result<ToolOutput, ToolError> {
    Ok(ToolOutput::content([
        ContentBlock::text("Multiple content types test:"),
        ContentBlock::image(PNG, "image/png"),
        ContentBlock::resource(ResourceContents::TextResourceContents {
            uri: "test://mixed-content-resource".into(),
            mime_type: Some("application/json".into()),
            text: r#"{"test":"data","value":123}"#.into(),
            meta: None,
        }),
    ]))
}
