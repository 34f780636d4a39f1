//! Writing a generated crate to disk, and checking that it is up to date.
//!
//! Rules:
//! 1. Generated files (`Cargo.toml`, `README.md`, `src/main.rs`, `src/generated/**`,
//!    `tests/smoke.rs`) are written only when their bytes change.
//! 2. User files (`src/state.rs`, `src/tools/mod.rs`, `src/tools/<fn>.rs`, and the same
//!    under `src/prompts/`) are created when missing and never touched again.
//! 3. `check` changes nothing and reports every generated file that differs or is missing.
//! 4. A Rust tool or prompt whose module the user's `src/tools/mod.rs` (or
//!    `src/prompts/mod.rs`) does not declare is reported with the line to add
//!    (`a_new_tool_names_the_mod_line_to_add`).

use std::path::{Path, PathBuf};

use crate::emit::{self, File, RuntimeDependency};
use crate::spec::{self, Diagnostic};

/// What generating did or would do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Generated files written (or, in check mode, stale).
    pub changed: Vec<PathBuf>,
    /// User files created (or, in check mode, missing).
    pub created: Vec<PathBuf>,
    /// Files already up to date.
    pub unchanged: usize,
    /// Warnings from validation.
    pub warnings: Vec<Diagnostic>,
    /// What the user has to do by hand (rule 4), one sentence each.
    pub notes: Vec<String>,
}

/// Why generating failed.
#[derive(Debug)]
pub enum GenerateError {
    /// The spec has errors.
    Invalid(Vec<Diagnostic>),
    /// Writing or rendering failed.
    Io(String),
}

impl std::fmt::Display for GenerateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(d) => {
                for (i, d) in d.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{d}")?;
                }
                Ok(())
            }
            Self::Io(e) => f.write_str(e),
        }
    }
}

/// Validates `spec_path` and renders its crate (no I/O besides reading the spec).
pub fn render(
    spec_path: &Path,
    runtime: &RuntimeDependency,
) -> Result<(Vec<File>, Vec<Diagnostic>), GenerateError> {
    let (spec, findings) =
        spec::check_file(spec_path).map_err(|d| GenerateError::Invalid(vec![d]))?;
    let (errors, warnings): (Vec<_>, Vec<_>) = findings.into_iter().partition(Diagnostic::is_error);
    if !errors.is_empty() {
        return Err(GenerateError::Invalid(errors));
    }
    // The name reaches comments of Cargo.toml and README.md: no control character (a
    // newline would end the comment and start TOML of its own).
    let file_name: String = spec_path
        .file_name()
        .map_or_else(
            || spec_path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
        .chars()
        .map(|c| {
            if c.is_control() || crate::emit::is_bidi_control(c) {
                '?'
            } else {
                c
            }
        })
        .collect();
    let files = emit::render(&spec, &file_name, runtime).map_err(GenerateError::Io)?;
    Ok((files, warnings))
}

/// Generates (or, with `check`, verifies) the crate for `spec_path` in `out`.
pub fn generate(
    spec_path: &Path,
    out: &Path,
    runtime: &RuntimeDependency,
    check: bool,
) -> Result<Outcome, GenerateError> {
    let (files, warnings) = render(spec_path, runtime)?;
    let mut outcome = Outcome {
        warnings,
        ..Outcome::default()
    };
    let files_paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    for file in files {
        let path = out.join(&file.path);
        let existing = std::fs::read_to_string(&path).ok();
        if file.user_owned {
            if existing.is_none() {
                if !check {
                    write(&path, &file.contents)?;
                }
                outcome.created.push(path);
            } else {
                outcome.unchanged += 1;
            }
        } else if existing.as_deref() == Some(file.contents.as_str()) {
            outcome.unchanged += 1;
        } else {
            if !check {
                write(&path, &file.contents)?;
            }
            outcome.changed.push(path);
        }
    }
    for (dir, module) in user_modules(&files_paths) {
        let mod_rs = out.join(dir).join("mod.rs");
        if let Ok(text) = std::fs::read_to_string(&mod_rs)
            && !crate::layout::declares_module(&text, module)
        {
            outcome.notes.push(format!(
                "{} does not declare the `{module}` module: add `pub(crate) mod {module};` to it",
                mod_rs.display()
            ));
        }
    }
    Ok(outcome)
}

/// `(dir, module)` for every tool and prompt file among `paths` (`src/tools/<m>.rs`).
fn user_modules(paths: &[String]) -> Vec<(&'static str, &str)> {
    let mut out = Vec::new();
    for path in paths {
        for dir in ["src/tools", "src/prompts"] {
            if let Some(module) = path
                .strip_prefix(dir)
                .and_then(|p| p.strip_prefix('/'))
                .and_then(|p| p.strip_suffix(".rs"))
                .filter(|m| *m != "mod" && !m.contains('/'))
            {
                out.push((dir, module));
            }
        }
    }
    out
}

fn write(path: &Path, contents: &str) -> Result<(), GenerateError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| GenerateError::Io(format!("cannot create {}: {e}", parent.display())))?;
    }
    std::fs::write(path, contents)
        .map_err(|e| GenerateError::Io(format!("cannot write {}: {e}", path.display())))
}
