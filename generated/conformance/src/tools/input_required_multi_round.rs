//! The `test_input_required_result_multi_round` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::serde_json::{Value, json};
use bmm_runtime::{Question, ToolContext, ToolError, ToolOutput};

use crate::generated::types::TestInputRequiredResultMultiRoundInput;

fn text_question(message: &str, field: &str) -> Result<Question, ToolError> {
    Question::form(
        message,
        json!({
            "type": "object",
            "properties": { field: { "type": "string" } },
            "required": [field]
        }),
    )
}

/// Two rounds: the name first, then the favourite colour; the name travels in the sealed
/// state of the second round.
pub(crate) async fn input_required_multi_round(
    ctx: &ToolContext,
    _input: TestInputRequiredResultMultiRoundInput,
) -> Result<ToolOutput, ToolError> {
    let state: Option<Value> = ctx.open_state()?;
    let remembered = state
        .as_ref()
        .filter(|s| s["round"] == 2)
        .and_then(|s| s["name"].as_str())
        .map(str::to_owned);
    let name = match remembered {
        Some(name) => name,
        None => {
            let question = text_question("Step 1: What is your name?", "name")?;
            let sealed = ctx.seal_state(&json!({ "round": 1 }))?;
            let answers = ctx
                .ask([("step1".to_owned(), question)], Some(sealed))
                .await?;
            answers
                .get("step1")
                .and_then(|a| a["content"]["name"].as_str())
                .unwrap_or_default()
                .to_owned()
        }
    };
    let question = text_question("Step 2: What is your favorite color?", "color")?;
    let sealed = ctx.seal_state(&json!({ "round": 2, "name": name }))?;
    let answers = ctx
        .ask([("step2".to_owned(), question)], Some(sealed))
        .await?;
    let color = answers
        .get("step2")
        .and_then(|a| a["content"]["color"].as_str())
        .unwrap_or_default();
    Ok(ToolOutput::text(format!("{name} likes {color}")))
}
