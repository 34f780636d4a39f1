//! Reading a spec file: size-bounded, YAML or JSON, every syntax and shape error reported
//! with its line and column.

use std::path::Path;

use super::diagnostic::{Diagnostic, Severity};
use super::model::Spec;

/// Largest spec accepted.
pub const MAX_SPEC_BYTES: usize = 4 * 1024 * 1024;

/// Parses spec text; `file` names it in diagnostics.
pub fn parse(file: &str, text: &str) -> Result<Spec, Diagnostic> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(located(
            file,
            0,
            0,
            format!("the spec is larger than {MAX_SPEC_BYTES} bytes"),
        )
        .help("split large APIs into several servers, or trim descriptions"));
    }
    serde_saphyr::from_str::<Spec>(text).map_err(|error| {
        let (line, column) = error.location().map_or((0, 0), |l| (l.line(), l.column()));
        let message = first_line(&error.to_string());
        let help = help_for(&message);
        let d = located(file, line, column, message);
        match help {
            Some(h) => d.help(h),
            None => d,
        }
    })
}

/// Reads and parses a spec file.
pub fn load(path: &Path) -> Result<Spec, Diagnostic> {
    let file = path.display().to_string();
    let metadata = std::fs::metadata(path).map_err(|e| {
        located(&file, 0, 0, format!("cannot read the spec: {e}")).help("check the path")
    })?;
    if metadata.len() > MAX_SPEC_BYTES as u64 {
        return Err(located(
            &file,
            0,
            0,
            format!("the spec is larger than {MAX_SPEC_BYTES} bytes"),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| located(&file, 0, 0, format!("cannot read the spec: {e}")))?;
    parse(&file, &text)
}

fn located(file: &str, line: u64, column: u64, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: file.to_owned(),
        line,
        column,
        message: message.into(),
        help: None,
    }
}

/// The parser's message without its source snippet (we print our own location).
fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("-->") && !l.starts_with('|'))
        .unwrap_or("the spec could not be read")
        .trim_start_matches("error: ");
    // The position is printed separately, and library advice is not the user's concern.
    let line = match line.strip_prefix("line ") {
        Some(rest) => rest.split_once(": ").map_or(line, |(_, msg)| msg),
        None => line,
    };
    line.split(", set DuplicateKeyPolicy")
        .next()
        .unwrap_or(line)
        .to_owned()
}

fn help_for(message: &str) -> Option<String> {
    if message.contains("unknown field") {
        Some(
            "remove the key or fix its spelling; the message lists the keys allowed here"
                .to_owned(),
        )
    } else if message.contains("missing field") {
        Some("add the field; it is required here".to_owned())
    } else if message.contains("unknown variant") {
        Some("use one of the values the message lists".to_owned())
    } else if message.contains("duplicate") {
        Some("each key may appear once in a mapping".to_owned())
    } else {
        None
    }
}
