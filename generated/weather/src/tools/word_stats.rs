//! The `word_stats` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::{ToolContext, ToolError};

use crate::generated::types::{WordStatsInput, WordStatsOutput};

/// Count words, sentences and characters in a text. Offline and deterministic.
pub(crate) async fn word_stats(
    _ctx: &ToolContext,
    input: WordStatsInput,
) -> Result<WordStatsOutput, ToolError> {
    let text = input.text;
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let words = text.split_whitespace().count();
    let sentences = text
        .split(['.', '!', '?'])
        .filter(|s| s.chars().any(char::is_alphanumeric))
        .count();
    Ok(WordStatsOutput {
        words: count(words),
        sentences: count(sentences),
        characters: count(text.chars().count()),
    })
}
