//! Compiling a tool's input schema: JSON Schema 2020-12 (the draft MCP declares), with
//! `jsonschema` built without remote or file `$ref` resolution, so nothing is ever fetched.
//!
//! The generator's `bmm check` and the runtime's start-up both call [`compile`]: a schema
//! that passes the check never stops a generated server from starting.

use serde_json::Value;

/// Each text in a compile error (the instance path, the message) is cut to this many
/// characters.
pub const MAX_TEXT: usize = 200;

/// The validator options every compile of a tool schema uses: JSON Schema 2020-12 and the
/// crate's build without remote or file retrieval. The importer uses them to repair what
/// [`compile`] would refuse.
pub fn options<'i>() -> jsonschema::ValidationOptions<'i> {
    jsonschema::options().with_draft(jsonschema::Draft::Draft202012)
}

/// Compiles `schema`, the input schema of tool `tool`. The error names the tool and where
/// in the schema the problem is.
pub fn compile(tool: &str, schema: &Value) -> Result<jsonschema::Validator, String> {
    options().build(schema).map_err(|e| {
        let at = e.instance_path().as_str();
        format!(
            "the input schema of tool `{tool}` is not a valid JSON Schema 2020-12: {}{}",
            if at.is_empty() {
                String::new()
            } else {
                format!("at `{}`: ", cut(at))
            },
            cut(&e.to_string())
        )
    })
}

/// `text` cut to [`MAX_TEXT`] characters, with an ellipsis when something was cut.
pub fn cut(text: &str) -> String {
    if text.chars().count() <= MAX_TEXT {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(MAX_TEXT).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_valid_schema_compiles_and_validates() {
        let validator = compile("t", &json!({"type": "object", "required": ["a"]})).unwrap();
        assert!(validator.is_valid(&json!({"a": 1})));
        assert!(!validator.is_valid(&json!({})));
    }

    #[test]
    fn an_invalid_schema_names_the_tool_and_the_place() {
        let e = compile("my_tool", &json!({"properties": {"a": {"type": 5}}})).unwrap_err();
        assert!(e.contains("`my_tool`"), "{e}");
        assert!(e.contains("2020-12"), "{e}");
    }

    #[test]
    fn remote_refs_are_refused_not_fetched() {
        let e = compile("t", &json!({"$ref": "http://127.0.0.1:9/schema.json"})).unwrap_err();
        assert!(e.contains("`t`"), "{e}");
    }

    #[test]
    fn long_texts_are_cut() {
        let long = "x".repeat(MAX_TEXT + 50);
        let cut_text = cut(&long);
        assert_eq!(cut_text.chars().count(), MAX_TEXT + 1);
        assert!(cut_text.ends_with('…'));
        assert_eq!(cut("short"), "short");
    }
}
