//! The `test_audio_content` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::rmcp::model::ContentBlock;
use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestAudioContentInput;

/// A WAV file: 44-byte header, 8 kHz mono 8-bit, two samples of silence.
const WAV: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQIAAACAgA==";

/// Returns a WAV audio block.
pub(crate) async fn audio_content(
    _ctx: &ToolContext,
    _input: TestAudioContentInput,
) -> Result<ToolOutput, ToolError> {
    Ok(ToolOutput::content([ContentBlock::audio(WAV, "audio/wav")]))
}
