//! The tool spec: model, loading with positions, validation and diagnostics.

mod diagnostic;
mod load;
pub mod model;
mod schema;
mod validate;

use std::path::Path;

/// The OpenAPI importer checks `x-bmm` scopes with the same rule.
pub(crate) use bmm_core::is_scope_token;
pub use diagnostic::{Diagnostic, Severity};
pub use load::{MAX_SPEC_BYTES, load, parse};
pub use model::Spec;
pub use schema::{MODELINE, SCHEMA_FILE, json_schema};
pub use validate::{placeholders, validate};

/// Loads and validates a spec file. `Err` holds the parse error, `Ok` the spec and every
/// finding of validation (which may include errors).
pub fn check_file(path: &Path) -> Result<(Spec, Vec<Diagnostic>), Diagnostic> {
    let spec = load(path)?;
    let findings = validate(&path.display().to_string(), &spec);
    Ok((spec, findings))
}

/// Parses and validates spec text; every diagnostic, parse error included.
pub fn check_text(file: &str, text: &str) -> Vec<Diagnostic> {
    match parse(file, text) {
        Ok(spec) => validate(file, &spec),
        Err(d) => vec![d],
    }
}
