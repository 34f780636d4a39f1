//! The JSON Schema of the spec format, derived from the spec model (`bmm schema` prints it;
//! `bmm new` writes it next to a new spec; `specs/bmm-spec.schema.json` is the checked-in
//! copy). A YAML language server (VS Code's YAML extension, for one) reads it through the
//! modeline `# yaml-language-server: $schema=bmm-spec.schema.json` at the top of a spec and
//! completes keys, shows their documentation and flags unknown keys while the spec is typed.
//!
//! It describes the structure: keys, types, enums, required fields, unknown keys refused
//! (`additionalProperties: false` wherever the loader refuses them) and the syntax of
//! names, versions and scopes. The rules that span several places (a tool naming a
//! declared upstream, unique names, placeholders naming input fields) are `bmm check`'s.
//!
//! Draft-07 is written rather than 2020-12: it is the dialect every YAML and JSON editor
//! integration understands.

use schemars::generate::SchemaSettings;

use super::model::Spec;

/// The file name `bmm new` writes the schema to, next to the spec.
pub const SCHEMA_FILE: &str = "bmm-spec.schema.json";

/// The modeline that points a YAML language server at [`SCHEMA_FILE`] next to the spec.
pub const MODELINE: &str = "# yaml-language-server: $schema=bmm-spec.schema.json";

/// The JSON Schema of the spec format, pretty-printed, ending with a newline. The same
/// for the same bmm: object keys are in a fixed order.
pub fn json_schema() -> String {
    let schema = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<Spec>();
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_else(|_| String::from("{}"));
    text.push('\n');
    text
}
