//! The import report: what was imported, what was skipped and why, and how large the
//! tool list will be for a model.

use serde_json::json;

use super::output::ToolOut;

/// What an import did.
#[derive(Debug, Default)]
pub struct Report {
    /// Tools written.
    pub tools: usize,
    /// Operations not imported: `METHOD /path` (or the path) and why.
    pub skipped: Vec<(String, String)>,
    /// Things to review.
    pub warnings: Vec<String>,
    /// Estimated size of `tools/list` in tokens (about 4 bytes of JSON per token).
    pub estimated_tokens: usize,
    /// The budget the estimate is compared with.
    pub token_budget: usize,
}

impl Report {
    pub(super) fn new(token_budget: usize) -> Self {
        Self {
            token_budget,
            ..Self::default()
        }
    }

    pub(super) fn skip(&mut self, operation: &str, reason: &str) {
        self.skipped.push((operation.to_owned(), reason.to_owned()));
    }

    pub(super) fn warn(&mut self, warning: String) {
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }

    pub(super) fn skipped_summary(&self) -> String {
        self.skipped
            .iter()
            .take(5)
            .map(|(op, why)| format!("{op}: {why}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Whether the estimate is over the budget.
    pub fn over_budget(&self) -> bool {
        self.estimated_tokens > self.token_budget
    }

    pub(super) fn estimate_tokens(&mut self, tools: &[ToolOut]) {
        let bytes: usize = tools
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "description": t.description,
                    "inputSchema": t.input,
                    "outputSchema": t.output,
                    "annotations": {"readOnlyHint": t.annotations.read_only, "destructiveHint": t.annotations.destructive,
                        "idempotentHint": t.annotations.idempotent, "openWorldHint": t.annotations.open_world},
                })
                .to_string()
                .len()
            })
            .sum();
        self.estimated_tokens = bytes.div_ceil(4);
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "imported {} tool{}; {} operation{} skipped",
            self.tools,
            if self.tools == 1 { "" } else { "s" },
            self.skipped.len(),
            if self.skipped.len() == 1 { "" } else { "s" },
        )?;
        writeln!(
            f,
            "tools/list: about {} tokens (budget {})",
            self.estimated_tokens, self.token_budget
        )?;
        if self.over_budget() {
            writeln!(
                f,
                "warning: the tool list is over the token budget: every client pays it on each conversation; keep fewer operations (--tag, --path, --method, --operation-id, or `disabled` in the overrides file) or raise --token-budget"
            )?;
        }
        if !self.skipped.is_empty() {
            writeln!(f, "skipped:")?;
            for (op, why) in &self.skipped {
                writeln!(f, "  {op}: {why}")?;
            }
        }
        if !self.warnings.is_empty() {
            writeln!(f, "review:")?;
            for w in &self.warnings {
                writeln!(f, "  {w}")?;
            }
        }
        Ok(())
    }
}
