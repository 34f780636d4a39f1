//! What a tool returns: structured JSON (with a text copy for older clients), plain text,
//! or any MCP content; and tool errors, which become `isError` results the model can read.

use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::Value;

/// A successful tool result.
#[derive(Debug, Clone)]
pub enum ToolOutput {
    /// `structuredContent` (an object), plus the same JSON as a text block.
    Structured(Value),
    /// A text block.
    Text(String),
    /// Any content blocks (images, audio, embedded resources, links, mixed).
    Content(Vec<ContentBlock>),
}

impl ToolOutput {
    /// Serializes `value` as the structured result.
    pub fn json<T: serde::Serialize>(value: &T) -> Result<Self, ToolError> {
        serde_json::to_value(value)
            .map(Self::Structured)
            .map_err(|e| ToolError::new(format!("the tool's result could not be serialized: {e}")))
    }

    pub(crate) fn into_result(self) -> CallToolResult {
        match self {
            Self::Structured(value) => CallToolResult::structured(value),
            Self::Text(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
            Self::Content(blocks) => CallToolResult::success(blocks),
        }
    }
}

/// A tool failure shown to the caller as an `isError` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError {
    message: String,
}

impl ToolError {
    /// A failure with a message for the model and the user.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn into_result(self) -> CallToolResult {
        CallToolResult::error(vec![ContentBlock::text(self.message)])
    }
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ToolError {}
