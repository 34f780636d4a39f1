//! The `test_input_required_result_multiple_inputs` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::serde_json::json;
use bmm_runtime::{Question, ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestInputRequiredResultMultipleInputsInput;

/// Asks three questions at once: the user's name, a greeting from the model, the roots.
pub(crate) async fn input_required_multiple_inputs(
    ctx: &ToolContext,
    _input: TestInputRequiredResultMultipleInputsInput,
) -> Result<ToolOutput, ToolError> {
    let name = Question::form(
        "What is your name?",
        json!({
            "type": "object",
            "properties": { "name": { "type": "string" } },
            "required": ["name"]
        }),
    )?;
    let questions = [
        ("user_name".to_owned(), name),
        (
            "greeting".to_owned(),
            Question::sample_text("Generate a greeting", 50),
        ),
        ("client_roots".to_owned(), Question::Roots),
    ];
    let sealed = ctx.seal_state(&json!({ "step": "all" }))?;
    let answers = ctx.ask(questions, Some(sealed)).await?;
    Ok(ToolOutput::text(format!(
        "Received {} answers: {}",
        answers.len(),
        answers.keys().cloned().collect::<Vec<_>>().join(", ")
    )))
}
