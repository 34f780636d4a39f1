//! Secrets: read once from the environment at start-up, every missing one reported at
//! once, never printed (`Debug` shows names only), and redacted (values of 4 bytes or
//! more, also JSON-escaped, percent-encoded or form-encoded as an echo may show them) from
//! everything a tool call returns: every string of structured content, object
//! keys included, every content block, tool error texts and JSON-RPC error messages and
//! data (`echoed_secrets_are_redacted_from_structured_content`,
//! `secrets_are_redacted_from_nested_json_keys_and_values`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::def::SecretDef;

/// The secret values of a server.
#[derive(Clone, Default)]
pub struct Secrets {
    values: Arc<HashMap<&'static str, String>>,
    /// What is redacted: every value of 4 bytes or more, and the forms an echo may show it
    /// in (JSON-escaped, percent-encoded, form-encoded), longest first.
    patterns: Arc<Vec<String>>,
}

/// A secret's value and the forms an echo may carry it in.
fn patterns_of(value: &str) -> Vec<String> {
    let mut out = vec![value.to_owned()];
    let json = serde_json::Value::String(value.to_owned()).to_string();
    out.push(json[1..json.len() - 1].to_owned());
    out.push(
        percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
            .to_string(),
    );
    out.push(url::form_urlencoded::byte_serialize(value.as_bytes()).collect());
    out
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.values.keys().collect();
        names.sort();
        f.debug_tuple("Secrets").field(&names).finish()
    }
}

impl Secrets {
    /// Reads every declared secret with `lookup` (the environment, in production). `Err`
    /// lists every missing or empty one.
    pub fn load(
        defs: &'static [SecretDef],
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Vec<&'static SecretDef>> {
        let mut values = HashMap::new();
        let mut missing = Vec::new();
        for def in defs {
            match lookup(def.name).filter(|v| !v.is_empty()) {
                Some(v) => {
                    values.insert(def.name, v);
                }
                None => missing.push(def),
            }
        }
        if missing.is_empty() {
            Ok(Self {
                patterns: Arc::new({
                    let mut p: Vec<String> = values
                        .values()
                        .filter(|v: &&String| v.len() >= 4)
                        .flat_map(|v| patterns_of(v))
                        .collect();
                    p.sort_by_key(|x| std::cmp::Reverse(x.len()));
                    p.dedup();
                    p
                }),
                values: Arc::new(values),
            })
        } else {
            Err(missing)
        }
    }

    /// The value of a declared secret.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Whether there is any secret worth redacting.
    fn any(&self) -> bool {
        !self.patterns.is_empty()
    }

    /// Replaces every secret value in every string of `value`, object keys included (an
    /// upstream may echo the request back as JSON). Returns whether anything changed.
    pub(crate) fn redact_value(&self, value: &mut serde_json::Value) -> bool {
        use serde_json::Value;
        if !self.any() {
            return false;
        }
        // Iterative, so a deeply nested echo cannot exhaust the stack.
        let mut changed = false;
        let mut stack = vec![value];
        while let Some(v) = stack.pop() {
            match v {
                Value::String(s) => {
                    let r = self.redact(s);
                    if r != *s {
                        *s = r;
                        changed = true;
                    }
                }
                Value::Array(items) => stack.extend(items.iter_mut()),
                Value::Object(map) => {
                    if map.keys().any(|k| self.redact(k) != *k) {
                        let old = std::mem::take(map);
                        *map = old.into_iter().map(|(k, v)| (self.redact(&k), v)).collect();
                        changed = true;
                    }
                    stack.extend(map.values_mut());
                }
                _ => {}
            }
        }
        changed
    }

    /// A tool result with every secret value replaced: structured content, and every
    /// content block (text, resource text, anything serialized as a string).
    pub(crate) fn redact_result(
        &self,
        mut result: rmcp::model::CallToolResult,
    ) -> rmcp::model::CallToolResult {
        if !self.any() {
            return result;
        }
        if let Some(structured) = result.structured_content.as_mut() {
            self.redact_value(structured);
        }
        for block in &mut result.content {
            let Ok(mut value) = serde_json::to_value(&*block) else {
                *block = rmcp::model::ContentBlock::text("[redacted]");
                continue;
            };
            if self.redact_value(&mut value) {
                *block = serde_json::from_value(value)
                    .unwrap_or_else(|_| rmcp::model::ContentBlock::text("[redacted]"));
            }
        }
        result
    }

    /// A JSON-RPC error with every secret value replaced in its message and data.
    pub(crate) fn redact_error(&self, mut error: rmcp::ErrorData) -> rmcp::ErrorData {
        if !self.any() {
            return error;
        }
        let message = self.redact(&error.message);
        if message != error.message {
            error.message = message.into();
        }
        if let Some(data) = error.data.as_mut() {
            self.redact_value(data);
        }
        error
    }

    /// Replaces every secret value in `text` (upstream error bodies may echo them).
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for pattern in self.patterns.iter() {
            if out.contains(pattern.as_str()) {
                out = out.replace(pattern.as_str(), "[redacted]");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static DEFS: &[SecretDef] = &[
        SecretDef {
            name: "A_KEY",
            description: "a",
        },
        SecretDef {
            name: "B_KEY",
            description: "b",
        },
    ];

    #[test]
    fn every_missing_secret_is_reported_at_once() {
        let missing = Secrets::load(DEFS, |_| None).unwrap_err();
        assert_eq!(
            missing.iter().map(|d| d.name).collect::<Vec<_>>(),
            ["A_KEY", "B_KEY"]
        );
        let empty = Secrets::load(DEFS, |n| (n == "A_KEY").then(String::new)).unwrap_err();
        assert_eq!(empty.len(), 2, "an empty value counts as missing");
    }

    #[test]
    fn secrets_are_redacted_from_nested_json_keys_and_values() {
        let s = Secrets::load(DEFS, |n| Some(format!("value-of-{n}"))).unwrap();
        let mut v = serde_json::json!({
            "headers": {"x-api-key": "value-of-A_KEY", "value-of-B_KEY": [1, {"k": "pre value-of-A_KEY post"}]},
            "n": 5,
        });
        assert!(s.redact_value(&mut v));
        let text = v.to_string();
        assert!(!text.contains("value-of"), "{text}");
        assert_eq!(v["headers"]["x-api-key"], "[redacted]");
        assert_eq!(v["headers"]["[redacted]"][1]["k"], "pre [redacted] post");
        let result = rmcp::model::CallToolResult::structured(v.clone());
        let mut echoed =
            rmcp::model::CallToolResult::success(vec![rmcp::model::ContentBlock::text(
                "key value-of-B_KEY",
            )]);
        echoed.structured_content = Some(serde_json::json!({"k": "value-of-A_KEY"}));
        let echoed = s.redact_result(echoed);
        let text =
            serde_json::to_string(&echoed).unwrap() + &serde_json::to_string(&result).unwrap();
        assert!(!text.contains("value-of"), "{text}");
        let e = s.redact_error(rmcp::ErrorData::invalid_params(
            "bad value-of-A_KEY",
            Some(serde_json::json!({"v": "value-of-B_KEY"})),
        ));
        assert!(!format!("{e:?}").contains("value-of"));
    }

    #[test]
    fn secrets_are_redacted_in_their_escaped_and_encoded_forms() {
        let s = Secrets::load(DEFS, |n| Some(format!("k+y/\"{n}\" ü"))).unwrap();
        let raw = "k+y/\"A_KEY\" ü";
        let echoes = [
            raw.to_owned(),
            serde_json::json!({"echo": raw}).to_string(),
            format!(
                "https://api/x?key={}",
                url::form_urlencoded::byte_serialize(raw.as_bytes()).collect::<String>()
            ),
            percent_encoding::utf8_percent_encode(raw, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
        ];
        for echo in echoes {
            let out = s.redact(&echo);
            assert!(
                out.contains("[redacted]") && !out.contains("A_KEY"),
                "{echo} -> {out}"
            );
        }
    }

    #[test]
    fn secrets_never_show_in_debug_and_are_redacted_from_text() {
        let s = Secrets::load(DEFS, |n| Some(format!("value-of-{n}"))).unwrap();
        assert!(!format!("{s:?}").contains("value-of"));
        assert_eq!(s.redact("echo value-of-A_KEY!"), "echo [redacted]!");
    }
}
