//! Tool and prompt arguments, checked before any tool body runs (MCP: servers MUST validate
//! tool inputs).
//!
//! Rules:
//! 1. Every tool's input schema is compiled once, when the server is built, as JSON Schema
//!    2020-12 (the draft MCP declares). A schema that does not compile — not a valid schema, or a `$ref` to anything outside
//!    the document: no remote or file references are ever fetched — is a start-up error
//!    naming the tool (`tool_schema_that_does_not_compile_is_a_start_up_error`).
//! 2. Every `tools/call` is validated against its tool's schema before an upstream request
//!    is built or a Rust function runs; absent `arguments` are validated as `{}`. A
//!    violation is a JSON-RPC invalid-params error (-32602) naming each failing argument by
//!    its instance path (a JSON pointer) and the rule (the schema keyword and its schema
//!    path) (`tool_arguments_violating_the_schema_are_invalid_params`).
//! 3. The error is bounded: at most [`MAX_REPORTED`] violations, each text at most
//!    [`MAX_TEXT`] characters, and argument values are never echoed (masked as `value`),
//!    so neither a huge nor a secret argument comes back in the error
//!    (`validation_errors_are_bounded_and_never_echo_values`).
//! 4. `prompts/get`: every required argument must be present and every argument value must
//!    be a string (MCP prompt arguments are strings); arguments the prompt does not declare
//!    are dropped before any prompt template or handler sees them
//!    (`prompt_arguments_must_be_declared_strings`).

use bmm_core::input_schema::cut;
use jsonschema::Validator;
use rmcp::ErrorData;
use serde_json::{Map, Value, json};

use crate::def::PromptArgumentDef;

/// At most this many violations are reported per call.
pub const MAX_REPORTED: usize = 4;
/// Each reported text (path, rule, message) is cut to this many characters.
pub const MAX_TEXT: usize = bmm_core::input_schema::MAX_TEXT;

/// A tool's compiled input schema.
pub struct InputValidator {
    validator: Validator,
}

impl std::fmt::Debug for InputValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InputValidator(..)")
    }
}

impl InputValidator {
    /// Compiles `schema` (a tool's input schema) once.
    pub fn compile(tool: &str, schema: &Value) -> Result<Self, String> {
        let validator = bmm_core::input_schema::compile(tool, schema)?;
        Ok(Self { validator })
    }

    /// Checks `arguments`; the error is the JSON-RPC invalid-params answer.
    pub fn check(&self, tool: &str, arguments: &Value) -> Result<(), ErrorData> {
        if self.validator.is_valid(arguments) {
            return Ok(());
        }
        let mut reported = Vec::new();
        let mut summary = Vec::new();
        let mut more = false;
        for (i, error) in self.validator.iter_errors(arguments).enumerate() {
            if i >= MAX_REPORTED {
                more = true;
                break;
            }
            let path = cut(error.instance_path().as_str());
            let rule = cut(error.kind().keyword());
            let schema_path = cut(error.schema_path().as_str());
            let message = cut(&error.masked().to_string());
            let shown = if path.is_empty() {
                "(arguments)"
            } else {
                &path
            };
            summary.push(format!(
                "{shown}: {message} (rule `{rule}` at {schema_path})"
            ));
            reported.push(json!({
                "path": path,
                "rule": rule,
                "schemaPath": schema_path,
                "message": message,
            }));
        }
        let mut text = format!(
            "invalid arguments for tool `{}`: {}",
            cut(tool),
            summary.join("; ")
        );
        if more {
            text.push_str("; and more");
        }
        Err(ErrorData::invalid_params(
            text,
            Some(json!({ "tool": cut(tool), "errors": reported })),
        ))
    }
}

/// Checks a prompt's arguments (rule 4) and returns only the declared ones.
pub(crate) fn prompt_arguments(
    prompt: &str,
    declared: &[PromptArgumentDef],
    mut given: Map<String, Value>,
) -> Result<Map<String, Value>, ErrorData> {
    let mut out = Map::new();
    for arg in declared {
        match given.remove(arg.name) {
            Some(Value::String(s)) => {
                out.insert(arg.name.to_owned(), Value::String(s));
            }
            Some(_) => {
                return Err(ErrorData::invalid_params(
                    format!(
                        "invalid arguments for prompt `{prompt}`: argument `{}` must be a string",
                        arg.name
                    ),
                    Some(json!({"errors": [{"path": format!("/{}", arg.name), "rule": "type"}]})),
                ));
            }
            None if arg.required => {
                return Err(ErrorData::invalid_params(
                    format!("prompt `{prompt}` needs argument `{}`", arg.name),
                    Some(
                        json!({"errors": [{"path": format!("/{}", arg.name), "rule": "required"}]}),
                    ),
                ));
            }
            None => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validator(schema: Value) -> InputValidator {
        InputValidator::compile("t", &schema).unwrap()
    }

    #[test]
    fn tool_schema_that_does_not_compile_is_a_start_up_error() {
        for bad in [
            json!({"type": "nope"}),
            json!({"type": "object", "properties": {"a": {"minimum": "x"}}}),
            json!({"$ref": "https://schemas.example/remote.json"}),
            json!({"$ref": "file:///etc/passwd"}),
            json!({"type": "object", "properties": {"a": {"pattern": "("}}}),
        ] {
            let err = InputValidator::compile("get_pet", &bad).expect_err("refused");
            assert!(err.contains("`get_pet`"), "{err}");
        }
        // A local reference resolves.
        validator(json!({
            "$defs": {"id": {"type": "integer"}},
            "type": "object",
            "properties": {"id": {"$ref": "#/$defs/id"}}
        }));
    }

    #[test]
    fn tool_arguments_violating_the_schema_are_invalid_params() {
        let v = validator(json!({
            "type": "object",
            "properties": {"pet_id": {"type": "integer"}, "tag": {"type": "string", "enum": ["a", "b"]}},
            "required": ["pet_id"],
            "additionalProperties": false
        }));
        assert!(v.check("t", &json!({"pet_id": 7})).is_ok());
        assert!(v.check("t", &json!({"pet_id": 7, "tag": "a"})).is_ok());
        let err = v.check("t", &json!({"pet_id": "seven"})).unwrap_err();
        assert_eq!(err.code, ErrorData::invalid_params("", None).code);
        assert!(err.message.contains("/pet_id"), "{}", err.message);
        assert!(err.message.contains("type"), "{}", err.message);
        let data = err.data.unwrap();
        assert_eq!(data["errors"][0]["path"], "/pet_id");
        assert_eq!(data["errors"][0]["rule"], "type");
        let err = v.check("t", &json!({"pet_id": ".."})).unwrap_err();
        assert!(err.message.contains("/pet_id"), "{}", err.message);
        let err = v.check("t", &json!({})).unwrap_err();
        assert!(err.message.contains("pet_id") && err.message.contains("required"));
        let err = v.check("t", &json!({"pet_id": 1, "x": 1})).unwrap_err();
        assert!(
            err.message.contains("additionalProperties"),
            "{}",
            err.message
        );
    }

    #[test]
    fn validation_errors_are_bounded_and_never_echo_values() {
        let v = validator(json!({
            "type": "object",
            "additionalProperties": {"type": "integer"}
        }));
        let mut args = Map::new();
        for i in 0..1000 {
            args.insert(format!("k{i}"), json!("secret-value-xyz"));
        }
        let err = v.check("t", &Value::Object(args)).unwrap_err();
        assert!(!err.message.contains("secret-value-xyz"), "{}", err.message);
        assert!(err.message.len() < (MAX_REPORTED + 1) * 4 * MAX_TEXT);
        assert!(err.message.ends_with("and more"), "{}", err.message);
        let data = err.data.unwrap();
        assert_eq!(data["errors"].as_array().unwrap().len(), MAX_REPORTED);
        let long = "x".repeat(10_000);
        let v = validator(json!({"type": "object", "additionalProperties": false}));
        let err = v.check("t", &json!({ long: 1 })).unwrap_err();
        assert!(err.message.len() < 4 * MAX_TEXT, "{}", err.message.len());
    }

    /// The raw string literal `text` starts with, after its `r` (`#"..."#`), or `None`.
    fn raw_literal(text: &str) -> Option<&str> {
        let hashes = text.bytes().take_while(|&b| b == b'#').count();
        let body = text[hashes..].strip_prefix('"')?;
        let end = format!("\"{}", "#".repeat(hashes));
        body.find(&end).map(|at| &body[..at])
    }

    /// Every checked-in generated server's tool schemas compile as 2020-12, so validation
    /// refuses no server at start-up.
    #[test]
    fn generated_servers_input_schemas_compile() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../generated");
        let mut compiled = 0;
        for entry in std::fs::read_dir(root).unwrap() {
            let file = entry.unwrap().path().join("src/generated/mod.rs");
            let Ok(source) = std::fs::read_to_string(&file) else {
                continue;
            };
            for piece in source.split("input_schema: r").skip(1) {
                let text = raw_literal(piece)
                    .unwrap_or_else(|| panic!("{}: no raw string literal", file.display()));
                let schema: Value = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("{}: {e}: {text}", file.display()));
                InputValidator::compile("generated", &schema)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                compiled += 1;
            }
        }
        assert!(compiled > 10, "found {compiled} schemas");
    }

    #[test]
    fn prompt_arguments_must_be_declared_strings() {
        static ARGS: &[PromptArgumentDef] = &[
            PromptArgumentDef {
                name: "who",
                description: None,
                required: true,
                completions: &[],
            },
            PromptArgumentDef {
                name: "mood",
                description: None,
                required: false,
                completions: &[],
            },
        ];
        let map = |v: Value| v.as_object().cloned().unwrap();
        let ok = prompt_arguments("p", ARGS, map(json!({"who": "Ada", "extra": "x"}))).unwrap();
        assert_eq!(Value::Object(ok), json!({"who": "Ada"}));
        let err = prompt_arguments("p", ARGS, map(json!({"mood": "ok"}))).unwrap_err();
        assert!(err.message.contains("`who`"), "{}", err.message);
        let err = prompt_arguments("p", ARGS, map(json!({"who": 5}))).unwrap_err();
        assert!(err.message.contains("string"), "{}", err.message);
    }
}
