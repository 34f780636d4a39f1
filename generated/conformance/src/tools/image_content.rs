//! The `test_image_content` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::rmcp::model::ContentBlock;
use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestImageContentInput;

/// A 1x1 red PNG.
pub(crate) const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

/// Returns a PNG image block.
pub(crate) async fn image_content(
    _ctx: &ToolContext,
    _input: TestImageContentInput,
) -> Result<ToolOutput, ToolError> {
    Ok(ToolOutput::content([ContentBlock::image(PNG, "image/png")]))
}
