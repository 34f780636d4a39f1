//! Schemas: resolved, bounded, and normalised from OpenAPI's dialect to JSON Schema
//! 2020-12 as MCP clients read it.

use serde_json::{Map, Value, json};

use super::{Importer, MAX_PARAM_DESCRIPTION, clip};

impl Importer<'_> {
    /// A resolved, bounded, 2020-12 schema for a tool (`input`: drop `readOnly`
    /// properties; output: drop `writeOnly` ones).
    pub(super) fn schema(&mut self, schema: &Value, input: bool) -> Value {
        let resolved = match self.resolver.resolve_bounded(schema, &mut Vec::new()) {
            Ok(s) => s,
            Err(e) => {
                self.report.warn(format!(
                    "a schema could not be resolved ({e}); it is left open"
                ));
                json!({})
            }
        };
        normalize(resolved, self.v30, input, 0)
    }
}

/// OpenAPI 3.0 schema dialect to JSON Schema 2020-12, without the keys that only bloat a
/// tool list (`example`, `xml`, `externalDocs`, vendor extensions).
fn normalize(schema: Value, v30: bool, input: bool, depth: usize) -> Value {
    let Value::Object(mut obj) = schema else {
        return schema;
    };
    if depth > 64 {
        return json!({});
    }
    obj.retain(|k, v| {
        !(k.starts_with("x-")
            || (k == "$ref" && !v.is_string())
            || matches!(
                k.as_str(),
                "example" | "examples" | "xml" | "externalDocs" | "discriminator"
            ))
    });
    if v30 {
        if obj.remove("nullable") == Some(Value::Bool(true))
            && let Some(Value::String(t)) = obj.get("type").cloned()
        {
            obj.insert("type".into(), json!([t, "null"]));
        }
        for (flag, bound) in [
            ("exclusiveMinimum", "minimum"),
            ("exclusiveMaximum", "maximum"),
        ] {
            match obj.get(flag) {
                Some(Value::Bool(true)) => {
                    if let Some(b) = obj.remove(bound) {
                        obj.insert(flag.into(), b);
                    } else {
                        obj.remove(flag);
                    }
                }
                Some(Value::Bool(false)) => {
                    obj.remove(flag);
                }
                _ => {}
            }
        }
    }
    if let Some(Value::String(d)) = obj.get("description") {
        let d = clip(d.trim(), MAX_PARAM_DESCRIPTION);
        obj.insert("description".into(), Value::String(d));
    }
    let drop_flag = if input { "readOnly" } else { "writeOnly" };
    let mut out = Map::new();
    for (k, v) in obj {
        let v = match k.as_str() {
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                match v {
                    Value::Object(props) => Value::Object(
                        props
                            .into_iter()
                            .filter(|(_, p)| {
                                !(k == "properties" && p.get(drop_flag) == Some(&Value::Bool(true)))
                            })
                            .map(|(name, p)| (name, normalize(p, v30, input, depth + 1)))
                            .collect(),
                    ),
                    other => other,
                }
            }
            "items"
            | "additionalProperties"
            | "not"
            | "contains"
            | "propertyNames"
            | "unevaluatedProperties"
            | "unevaluatedItems"
            | "if"
            | "then"
            | "else" => normalize(v, v30, input, depth + 1),
            "allOf" | "anyOf" | "oneOf" | "prefixItems" => match v {
                Value::Array(items) => Value::Array(
                    items
                        .into_iter()
                        .map(|i| normalize(i, v30, input, depth + 1))
                        .collect(),
                ),
                other => other,
            },
            _ => v,
        };
        out.insert(k, v);
    }
    Value::Object(out)
}

/// The properties of an object schema (merging `allOf` parts), in document order.
pub(super) fn object_properties(schema: &Value) -> Option<Vec<(String, Value)>> {
    let mut out: Vec<(String, Value)> = Vec::new();
    let mut any = false;
    let kind = schema.get("type");
    if kind.is_some_and(|t| {
        t != "object" && !t.as_array().is_some_and(|a| a.contains(&json!("object")))
    }) {
        return None;
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        any = true;
        for (k, v) in props {
            out.push((k.clone(), v.clone()));
        }
    }
    for part in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(props) = object_properties(part) {
            any = true;
            for (k, v) in props {
                if !out.iter().any(|(n, _)| n == &k) {
                    out.push((k, v));
                }
            }
        }
    }
    any.then_some(out)
}
