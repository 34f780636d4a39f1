//! Entry points for the fuzz targets in `fuzz/` (not a stable API).
//!
//! A finding is a panic: the checks here assert the rules of [`crate::validate`] and
//! `http_tool` (rule 8) on whatever arguments the fuzzer makes up.

use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::validate::{InputValidator, MAX_REPORTED, MAX_TEXT};

/// Schemas like the generated servers' (types, formats, enums, patterns, nesting, `$ref`,
/// combinators, `additionalProperties: false`).
fn validators() -> &'static [InputValidator] {
    static V: OnceLock<Vec<InputValidator>> = OnceLock::new();
    V.get_or_init(|| {
        [
            json!({"type": "object", "properties": {"pet_id": {"type": "integer", "format": "int64", "minimum": 1}}, "required": ["pet_id"], "additionalProperties": false}),
            json!({"type": "object", "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[a-z][a-z0-9_-]*$"},
                "status": {"enum": ["available", "pending", "sold"]},
                "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "uniqueItems": true, "maxItems": 8},
                "when": {"type": "string", "format": "date-time"},
                "either": {"oneOf": [{"type": "string"}, {"type": "number", "multipleOf": 0.5}]}
            }, "$defs": {"tag": {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"}}, "required": ["name"]}},
               "dependentRequired": {"when": ["status"]}, "unevaluatedProperties": false}),
            json!({"type": "object"}),
        ]
        .iter()
        .filter_map(|schema| InputValidator::compile("fuzz", schema).ok())
        .collect()
    })
}

/// Validates `data` (as JSON arguments) against every fuzz schema, checking the error
/// bound, then fills an HTTP tool path with it, checking no value changes the path.
#[allow(clippy::panic)]
pub fn tool_arguments(data: &[u8]) {
    let Ok(arguments) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for validator in validators() {
        if let Err(error) = validator.check("fuzz", &arguments) {
            // Each reported violation: path, rule, schema path and message, each cut.
            let bound = (MAX_REPORTED + 1) * 4 * (MAX_TEXT + 8) + 256;
            if error.message.len() > bound {
                panic!("validation error of {} bytes", error.message.len());
            }
        }
    }
    if let Value::Object(map) = &arguments
        && let Some(path) = crate::http_tool::fuzz_path(map)
    {
        let segments: Vec<&str> = path.split('/').collect();
        if !path.starts_with("/v3/user/")
            || segments.len() != 6
            || segments[4] != "items"
            || segments
                .iter()
                .skip(1)
                .any(|s| s.is_empty() || *s == "." || *s == "..")
        {
            panic!("the template's path changed: {path}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz entry on hand-written hostile seeds (the fuzzer starts from these too).
    #[test]
    fn fuzz_entry_holds_on_hostile_seeds() {
        for seed in [
            r#"{"username": "..", "id": "1"}"#,
            r#"{"username": "%2e%2E", "id": "."}"#,
            r#"{"username": "a/../../b", "id": "x?y#z"}"#,
            r#"{"username": ["..", "x"], "id": [".."]}"#,
            r#"{"username": "ok", "id": 5, "q": ["a", "b"]}"#,
            r#"{"pet_id": "seven", "name": "Bad Name", "tags": [{}, {}], "either": 0.3}"#,
            r#"[1, 2, 3]"#,
            "null",
        ] {
            tool_arguments(seed.as_bytes());
        }
        assert_eq!(validators().len(), 3, "every fuzz schema compiles");
        let path = crate::http_tool::fuzz_path(
            serde_json::json!({"username": "a b", "id": "c/d"})
                .as_object()
                .unwrap_or(&serde_json::Map::new()),
        );
        assert_eq!(path.as_deref(), Some("/v3/user/a%20b/items/c%2Fd"));
    }
}
