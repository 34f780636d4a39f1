//! The `test_input_required_result_capabilities` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::serde_json::json;
use bmm_runtime::{Question, ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestInputRequiredResultCapabilitiesInput;

/// Asks only what the client declared it can answer.
pub(crate) async fn input_required_capabilities(
    ctx: &ToolContext,
    _input: TestInputRequiredResultCapabilitiesInput,
) -> Result<ToolOutput, ToolError> {
    let caps = ctx.client_capabilities();
    let mut questions = Vec::new();
    if caps.elicitation.is_some() {
        let q = Question::form(
            "What is your name?",
            json!({
                "type": "object",
                "properties": { "name": { "type": "string" } },
                "required": ["name"]
            }),
        )?;
        questions.push(("user_name".to_owned(), q));
    }
    if caps.sampling.is_some() {
        questions.push((
            "capital_question".to_owned(),
            Question::sample_text("What is the capital of France?", 100),
        ));
    }
    if caps.roots.is_some() {
        questions.push(("client_roots".to_owned(), Question::Roots));
    }
    if questions.is_empty() {
        return Err(ToolError::new(
            "the client declared none of elicitation, sampling and roots",
        ));
    }
    let answers = ctx.ask(questions, None).await?;
    Ok(ToolOutput::text(format!(
        "Received {} answer(s)",
        answers.len()
    )))
}
