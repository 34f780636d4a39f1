//! What a tool returns: structured JSON (with a text copy for older clients), plain text,
//! or any MCP content; and tool errors, which become `isError` results the model can read,
//! "input required" results (2026-07-28), or JSON-RPC errors.

use rmcp::ErrorData;
use rmcp::model::{
    CallToolResponse, CallToolResult, ContentBlock, GetPromptResponse, InputRequiredResult,
};
use serde_json::Value;

/// A successful tool result.
#[derive(Debug, Clone)]
pub enum ToolOutput {
    /// `structuredContent` (an object), plus the same JSON as a text block.
    Structured(Value),
    /// A text block.
    Text(String),
    /// Any content blocks (images, audio, embedded resources, links, mixed); build them
    /// with [`rmcp::model::ContentBlock`]'s constructors.
    Content(Vec<ContentBlock>),
}

impl ToolOutput {
    /// Serializes `value` as the structured result.
    pub fn json<T: serde::Serialize>(value: &T) -> Result<Self, ToolError> {
        serde_json::to_value(value)
            .map(Self::Structured)
            .map_err(|e| ToolError::new(format!("the tool's result could not be serialized: {e}")))
    }

    /// A single text block.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text(text.into())
    }

    /// Content blocks, in order.
    pub fn content(blocks: impl IntoIterator<Item = ContentBlock>) -> Self {
        Self::Content(blocks.into_iter().collect())
    }

    pub(crate) fn into_result(self) -> CallToolResult {
        match self {
            Self::Structured(value) => CallToolResult::structured(value),
            Self::Text(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
            Self::Content(blocks) => CallToolResult::success(blocks),
        }
    }
}

/// Why a tool did not produce a result.
#[derive(Debug, Clone)]
enum Kind {
    /// Shown to the caller as an `isError` result.
    Failed(String),
    /// The client must answer requests first (2026-07-28 "input required").
    InputRequired(Box<InputRequiredResult>),
    /// The request itself is wrong: a JSON-RPC error.
    Protocol(ErrorData),
}

/// A tool failure. Most are shown to the caller as an `isError` result (the model can read
/// and react to them); [`ToolError::input_required`] and [`ToolError::protocol`] are the
/// two other outcomes a tool can choose.
#[derive(Debug, Clone)]
pub struct ToolError {
    kind: Kind,
}

impl ToolError {
    /// A failure with a message for the model and the user.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Failed(message.into()),
        }
    }

    /// Asks the client for input first (2026-07-28). Usually produced by
    /// [`crate::ToolContext::ask`], which returns it when an answer is missing.
    pub fn input_required(result: InputRequiredResult) -> Self {
        Self {
            kind: Kind::InputRequired(Box::new(result)),
        }
    }

    /// A JSON-RPC error instead of a tool result (for requests that cannot be served at
    /// all, such as a missing client capability).
    pub fn protocol(error: ErrorData) -> Self {
        Self {
            kind: Kind::Protocol(error),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match &self.kind {
            Kind::Failed(m) => m,
            Kind::InputRequired(_) => "input required",
            Kind::Protocol(e) => &e.message,
        }
    }

    /// The MCP response for this outcome.
    pub(crate) fn into_response(self) -> Result<CallToolResponse, ErrorData> {
        match self.kind {
            Kind::Failed(message) => {
                Ok(CallToolResult::error(vec![ContentBlock::text(message)]).into())
            }
            Kind::InputRequired(result) => Ok(CallToolResponse::InputRequired(*result)),
            Kind::Protocol(error) => Err(error),
        }
    }
}

impl ToolError {
    /// The MCP response for this outcome of a Rust prompt: a failure is a JSON-RPC
    /// internal error carrying the message.
    pub(crate) fn into_prompt_response(self) -> Result<GetPromptResponse, ErrorData> {
        match self.kind {
            Kind::Failed(message) => Err(ErrorData::internal_error(message, None)),
            Kind::InputRequired(result) => Ok(GetPromptResponse::InputRequired(*result)),
            Kind::Protocol(error) => Err(error),
        }
    }
}

impl PartialEq for ToolError {
    fn eq(&self, other: &Self) -> bool {
        match (&self.kind, &other.kind) {
            (Kind::Failed(a), Kind::Failed(b)) => a == b,
            (Kind::Protocol(a), Kind::Protocol(b)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ToolError {}
