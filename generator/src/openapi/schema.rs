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
        if obj.shift_remove("nullable") == Some(Value::Bool(true))
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
                    if let Some(b) = obj.shift_remove(bound) {
                        obj.insert(flag.into(), b);
                    } else {
                        obj.shift_remove(flag);
                    }
                }
                Some(Value::Bool(false)) => {
                    obj.shift_remove(flag);
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

/// Deepest nesting the spec loader accepts: `spec::parse` reads specs with serde-saphyr's
/// default budget, whose `max_depth` refuses a mapping or list inside 64 others.
pub(super) const SPEC_MAX_DEPTH: usize = 64;
/// The nesting of a tool's `input` and `output` schemas in a spec: the root mapping,
/// `tools`, the tool, the schema.
pub(super) const TOOL_SCHEMA_DEPTH: usize = 4;

/// Keywords whose value maps names to schemas.
const SCHEMA_MAPS: [&str; 5] = [
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
];
/// Keywords whose value is one schema.
const SCHEMA_ONE: [&str; 10] = [
    "items",
    "additionalProperties",
    "not",
    "contains",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
    "if",
    "then",
    "else",
];
/// Keywords whose value is a list of schemas.
const SCHEMA_LISTS: [&str; 4] = ["allOf", "anyOf", "oneOf", "prefixItems"];

/// What `repair` changed in one schema, for the report.
#[derive(Debug, Default)]
pub(super) struct Repairs {
    /// `required` names that are not among the properties beside them.
    pub(super) unknown_required: Vec<String>,
    /// `pattern`s (and `patternProperties` keys) the validator cannot compile.
    pub(super) bad_patterns: Vec<String>,
    /// Schemas cut to open ones for the spec's depth limit.
    pub(super) cut: usize,
    /// Other values (`enum`, `default`, `const`, ...) dropped for the depth limit.
    pub(super) dropped_values: usize,
    /// Keywords the validator refused (`where: why`), dropped.
    pub(super) invalid: Vec<String>,
}

impl Repairs {
    pub(super) fn is_empty(&self) -> bool {
        self.unknown_required.is_empty()
            && self.bad_patterns.is_empty()
            && self.cut == 0
            && self.dropped_values == 0
            && self.invalid.is_empty()
    }
}

impl Importer<'_> {
    /// Makes a tool schema one that `bmm check` and the server accept, whatever the
    /// document says: `required` names without a property are dropped, patterns the
    /// validator cannot compile are dropped, and schemas nested deeper than a spec may be
    /// are cut into open ones (rule 10).
    pub(super) fn repair(&mut self, schema: &mut Value) -> Repairs {
        let mut repairs = Repairs::default();
        self.repair_keywords(schema, &mut repairs, 0);
        fit_depth(schema, TOOL_SCHEMA_DEPTH, &mut repairs);
        drop_invalid_keywords(schema, &mut repairs);
        repairs
    }

    fn repair_keywords(&mut self, schema: &mut Value, repairs: &mut Repairs, level: usize) {
        // The importer's own bound (normalize) keeps schemas far shallower than this.
        if level > 2 * SPEC_MAX_DEPTH {
            return;
        }
        let Value::Object(obj) = schema else {
            return;
        };
        if let (Some(Value::Object(props)), Some(Value::Array(required))) =
            (obj.get("properties"), obj.get("required"))
            && !props.is_empty()
        {
            let (known, unknown): (Vec<Value>, Vec<Value>) = required
                .iter()
                .cloned()
                .partition(|r| r.as_str().is_some_and(|r| props.contains_key(r)));
            if !unknown.is_empty() {
                repairs.unknown_required.extend(
                    unknown
                        .iter()
                        .map(|r| r.as_str().map_or_else(|| r.to_string(), str::to_owned)),
                );
                if known.is_empty() {
                    obj.shift_remove("required");
                } else {
                    obj.insert("required".into(), Value::Array(known));
                }
            }
        }
        match obj.get("pattern") {
            Some(Value::String(pattern)) if !self.pattern_compiles(pattern) => {
                repairs.bad_patterns.push(pattern.clone());
                obj.shift_remove("pattern");
            }
            Some(Value::String(_)) | None => {}
            Some(other) => {
                repairs.bad_patterns.push(other.to_string());
                obj.shift_remove("pattern");
            }
        }
        if let Some(Value::Object(patterns)) = obj.get_mut("patternProperties") {
            let bad: Vec<String> = patterns
                .keys()
                .filter(|p| !self.pattern_compiles(p))
                .cloned()
                .collect();
            for p in bad {
                patterns.shift_remove(&p);
                repairs.bad_patterns.push(p);
            }
        }
        for (key, value) in obj.iter_mut() {
            let key = key.as_str();
            if SCHEMA_MAPS.contains(&key) {
                if let Value::Object(children) = value {
                    for child in children.values_mut() {
                        self.repair_keywords(child, repairs, level + 1);
                    }
                }
            } else if SCHEMA_ONE.contains(&key) || SCHEMA_LISTS.contains(&key) {
                match value {
                    Value::Array(children) => {
                        for child in children {
                            self.repair_keywords(child, repairs, level + 1);
                        }
                    }
                    child => self.repair_keywords(child, repairs, level + 1),
                }
            }
        }
    }

    /// Whether the server's validator (jsonschema, JSON Schema 2020-12) compiles the
    /// pattern; each pattern is tried once per import.
    fn pattern_compiles(&mut self, pattern: &str) -> bool {
        if let Some(&ok) = self.patterns.get(pattern) {
            return ok;
        }
        let ok = bmm_core::input_schema::options()
            .build(&json!({ "pattern": pattern }))
            .is_ok();
        self.patterns.insert(pattern.to_owned(), ok);
        ok
    }
}

/// How many levels of mappings and lists `value` spans (a scalar: none).
fn height(value: &Value) -> usize {
    match value {
        Value::Object(m) => 1 + m.values().map(height).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(height).max().unwrap_or(0),
        _ => 0,
    }
}

/// Cuts what would nest deeper than `SPEC_MAX_DEPTH` when `schema` (a mapping) sits at
/// `depth` in the spec: a schema without room for its children becomes an open one (its
/// `type` kept when it is one name) with a description saying so; a deep non-schema value
/// (`enum`, `default`, `const`, ...) is dropped.
fn fit_depth(schema: &mut Value, depth: usize, repairs: &mut Repairs) {
    let Value::Object(obj) = schema else {
        return;
    };
    if depth + height_of_map(obj) - 1 <= SPEC_MAX_DEPTH {
        return;
    }
    // A schema's children sit one level down, its subschemas two (`properties: {x: ..}`).
    if depth + 2 > SPEC_MAX_DEPTH {
        let mut open = Map::new();
        if let Some(t @ Value::String(_)) = obj.get("type") {
            open.insert("type".into(), t.clone());
        }
        open.insert(
            "description".into(),
            Value::String(format!(
                "Cut by bmm import-openapi: the document nests this schema deeper than a bmm spec may ({SPEC_MAX_DEPTH} levels), so any value is accepted here."
            )),
        );
        *schema = Value::Object(open);
        repairs.cut += 1;
        return;
    }
    let keys: Vec<String> = obj.keys().cloned().collect();
    for key in keys {
        // Anything cut or dropped below `key` loosened what it says.
        let before = repairs.cut + repairs.dropped_values;
        fit_child(obj, &key, depth, repairs);
        if repairs.cut + repairs.dropped_values > before {
            keep_meaning_after_cut(obj, &key);
        }
    }
}

/// An open schema accepts anything: in most places that only loosens the document's rule,
/// but under `not`, `if` and `contains` it would tighten it (`not: {}` refuses every value),
/// and as an alternative of `oneOf` a value matching another alternative would then match
/// two and be refused. Those keywords go (the looser reading), and such a `oneOf` becomes an
/// `anyOf`.
fn keep_meaning_after_cut(obj: &mut Map<String, Value>, key: &str) {
    match key {
        "not" => {
            obj.shift_remove("not");
        }
        "if" => {
            for k in ["if", "then", "else"] {
                obj.shift_remove(k);
            }
        }
        "contains" => {
            for k in ["contains", "minContains", "maxContains"] {
                obj.shift_remove(k);
            }
        }
        "oneOf" => {
            if let Some(alternatives) = obj.shift_remove("oneOf")
                && !obj.contains_key("anyOf")
            {
                obj.insert("anyOf".to_owned(), alternatives);
            }
        }
        _ => {}
    }
}

/// [`fit_depth`] for the value under `key` of the schema `obj` at `depth`.
fn fit_child(obj: &mut Map<String, Value>, key: &str, depth: usize, repairs: &mut Repairs) {
    {
        let Some(value) = obj.get_mut(key) else {
            return;
        };
        if SCHEMA_MAPS.contains(&key) {
            if let Value::Object(children) = value {
                for child in children.values_mut() {
                    fit_depth(child, depth + 2, repairs);
                }
                return;
            }
        } else if SCHEMA_ONE.contains(&key) || SCHEMA_LISTS.contains(&key) {
            match value {
                Value::Array(children) => {
                    for child in children {
                        fit_depth(child, depth + 2, repairs);
                    }
                    return;
                }
                Value::Object(_) => {
                    fit_depth(value, depth + 1, repairs);
                    return;
                }
                _ => {}
            }
        }
        if depth + height(value) <= SPEC_MAX_DEPTH {
            return;
        }
    }
    obj.shift_remove(key);
    repairs.dropped_values += 1;
}

fn height_of_map(obj: &Map<String, Value>) -> usize {
    1 + obj.values().map(height).max().unwrap_or(0)
}

/// Most keywords `drop_invalid_keywords` removes from one schema before it gives up (the
/// check then names what is left).
const MAX_INVALID_KEYWORDS: usize = 32;

/// Drops, one at a time, each keyword the server's validator (jsonschema, JSON Schema
/// 2020-12) refuses to compile: a `type` that is a schema, a `required` that is not a
/// list, ... whatever else a document gets wrong.
fn drop_invalid_keywords(schema: &mut Value, repairs: &mut Repairs) {
    for _ in 0..MAX_INVALID_KEYWORDS {
        let (pointer, why) = match bmm_core::input_schema::options().build(schema) {
            Ok(_) => return,
            Err(e) => (e.instance_path().as_str().to_owned(), e.to_string()),
        };
        if pointer.is_empty() || !remove_at(schema, &pointer) {
            return;
        }
        let why: String = why.chars().take(120).collect();
        repairs.invalid.push(format!("{pointer} ({why})"));
    }
}

/// Removes what the JSON pointer names (a key of a mapping, an item of a list).
fn remove_at(value: &mut Value, pointer: &str) -> bool {
    let tokens: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let Some((last, parents)) = tokens.split_last() else {
        return false;
    };
    let mut current = value;
    for token in parents {
        current = match current {
            Value::Object(m) => match m.get_mut(token) {
                Some(v) => v,
                None => return false,
            },
            Value::Array(a) => match token.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match current {
        Value::Object(m) => m.shift_remove(last).is_some(),
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `spec::parse` reads with serde-saphyr's default budget; if that ever changes, the
    /// importer's cut must follow.
    #[test]
    fn the_depth_limit_is_the_spec_loaders() {
        let nested = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
        assert!(serde_saphyr::from_str::<Value>(&nested(SPEC_MAX_DEPTH)).is_ok());
        assert!(serde_saphyr::from_str::<Value>(&nested(SPEC_MAX_DEPTH + 1)).is_err());
    }

    #[test]
    fn fitted_schemas_fit_exactly() {
        let mut deep = json!({"type": "string"});
        for _ in 0..100 {
            deep = json!({"type": "object", "properties": {"a": deep}, "enum": [[[1]]]});
        }
        let mut repairs = Repairs::default();
        fit_depth(&mut deep, TOOL_SCHEMA_DEPTH, &mut repairs);
        assert!(repairs.cut == 1, "{repairs:?}");
        assert!(TOOL_SCHEMA_DEPTH + height(&deep) - 1 <= SPEC_MAX_DEPTH);
        // Nothing more was cut than needed: one level deeper would not fit.
        assert!(TOOL_SCHEMA_DEPTH + height(&deep) + 1 > SPEC_MAX_DEPTH);
    }

    /// A schema `levels` deep: objects with one property `a`.
    fn deep(levels: usize) -> Value {
        let mut deep = json!({"type": "string"});
        for _ in 0..levels {
            deep = json!({"type": "object", "properties": {"a": deep}});
        }
        deep
    }

    /// A cut makes a schema accept anything: under `not`, `if` and `contains` that would
    /// refuse values the document accepts, and in a `oneOf` a value could match two
    /// alternatives. Those keywords go, and the `oneOf` becomes an `anyOf`.
    #[test]
    fn a_cut_never_makes_a_schema_refuse_what_the_document_accepts() {
        let mut schema = json!({
            "type": "object",
            "properties": {
                "n": { "not": deep(100) },
                "i": { "if": deep(100), "then": { "type": "string" }, "else": { "type": "integer" } },
                "c": { "type": "array", "contains": deep(100), "minContains": 2 },
                "o": { "oneOf": [deep(100), { "type": "object" }] },
                "kept": { "not": { "type": "string" } }
            }
        });
        let mut repairs = Repairs::default();
        fit_depth(&mut schema, TOOL_SCHEMA_DEPTH, &mut repairs);
        assert!(repairs.cut >= 4, "{repairs:?}");
        let p = &schema["properties"];
        assert_eq!(p["n"], json!({}), "{schema}");
        assert_eq!(p["i"], json!({}), "{schema}");
        assert_eq!(p["c"], json!({ "type": "array" }), "{schema}");
        assert!(
            p["o"].get("oneOf").is_none() && p["o"]["anyOf"].is_array(),
            "{schema}"
        );
        assert_eq!(
            p["kept"],
            json!({ "not": { "type": "string" } }),
            "{schema}"
        );
        // And the result is one the server accepts a value under.
        let validator = bmm_core::input_schema::compile("t", &schema).unwrap();
        assert!(validator.is_valid(&json!({ "n": 1, "i": true, "c": [], "o": {} })));
    }
}
