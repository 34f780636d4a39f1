//! The `test_elicitation_sep1330_enums` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::serde_json::{self, json};
use bmm_runtime::{ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestElicitationSep1330EnumsInput;

/// Elicitation with every enum form of SEP-1330.
pub(crate) async fn elicitation_sep1330_enums(
    ctx: &ToolContext,
    _input: TestElicitationSep1330EnumsInput,
) -> Result<ToolOutput, ToolError> {
    let schema = json!({
        "type": "object",
        "properties": {
            "untitledSingle": {
                "type": "string",
                "description": "Untitled single-select",
                "enum": ["option1", "option2", "option3"]
            },
            "titledSingle": {
                "type": "string",
                "description": "Titled single-select",
                "oneOf": [
                    { "const": "value1", "title": "First Option" },
                    { "const": "value2", "title": "Second Option" },
                    { "const": "value3", "title": "Third Option" }
                ]
            },
            "legacyEnum": {
                "type": "string",
                "description": "Legacy titled enum",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"]
            },
            "untitledMulti": {
                "type": "array",
                "description": "Untitled multi-select",
                "items": { "type": "string", "enum": ["option1", "option2", "option3"] }
            },
            "titledMulti": {
                "type": "array",
                "description": "Titled multi-select",
                "items": {
                    "anyOf": [
                        { "const": "value1", "title": "First Choice" },
                        { "const": "value2", "title": "Second Choice" },
                        { "const": "value3", "title": "Third Choice" }
                    ]
                }
            }
        }
    });
    let answer = ctx
        .elicit(
            "enums",
            "Please select options from the enum fields",
            schema,
        )
        .await?;
    Ok(ToolOutput::text(format!(
        "Elicitation completed: {}",
        serde_json::to_string(&answer).unwrap_or_default()
    )))
}
