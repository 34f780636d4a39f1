//! Secrets: read once from the environment at start-up, every missing one reported at
//! once, never printed (`Debug` shows names only), and redacted.
//!
//! Rules:
//! 1. Every value of 4 bytes or more is redacted also in the forms an echo may carry it
//!    in: JSON-escaped; percent-encoded with every non-alphanumeric byte encoded, as RFC
//!    3986 encodes a component (unreserved `-._~` kept), and form-encoded — each with
//!    upper- and lowercase hex digits (`secrets_are_redacted_in_their_escaped_and_encoded_forms`,
//!    `secrets_are_redacted_in_rfc3986_and_lowercase_hex_forms`).
//! 2. Every response path is redacted: tool results (every string of structured content,
//!    object keys included, every content block), tool errors and JSON-RPC error messages
//!    and data, prompt results and errors, "input required" results (the questions; the
//!    sealed `requestState` is opaque and kept), questions sent to a legacy session's
//!    client, and log and progress notifications
//!    (`echoed_secrets_are_redacted_from_structured_content`,
//!    `secrets_are_redacted_from_nested_json_keys_and_values`,
//!    `secrets_are_redacted_from_every_response_path`). A response whose redacted form is
//!    no longer valid, or of a kind the runtime does not know, is replaced by an internal
//!    error.
//! 3. Text is redacted whole before it is cut to an excerpt, so a secret straddling the
//!    cut never leaves as a prefix (`secrets_are_redacted_before_an_error_excerpt_is_cut`).

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

/// RFC 3986 section 2.3: unreserved characters stay as they are (`~` included), as
/// `url` and most HTTP clients encode a path or query component.
const RFC3986: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` with the two hex digits after every `%` in lowercase (`%2f` for `%2F`).
fn lowercase_hex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lower = 0;
    for c in text.chars() {
        if lower > 0 {
            out.push(c.to_ascii_lowercase());
            lower -= 1;
        } else {
            if c == '%' {
                lower = 2;
            }
            out.push(c);
        }
    }
    out
}

/// A secret's value and the forms an echo may carry it in: JSON-escaped; percent-encoded
/// with every non-alphanumeric byte encoded, as RFC 3986 does (unreserved `-._~` kept),
/// and form-encoded — each encoding with upper- and lowercase hex digits.
fn patterns_of(value: &str) -> Vec<String> {
    let mut out = vec![value.to_owned()];
    let json = serde_json::Value::String(value.to_owned()).to_string();
    out.push(json[1..json.len() - 1].to_owned());
    let encoded = [
        percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
            .to_string(),
        percent_encoding::utf8_percent_encode(value, RFC3986).to_string(),
        url::form_urlencoded::byte_serialize(value.as_bytes()).collect(),
    ];
    for form in encoded {
        out.push(lowercase_hex(&form));
        out.push(form);
    }
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

    /// These secrets plus `values` (a call's own, such as the upstream token it sends):
    /// each redacted like a declared secret's value, in every form rule 1 lists. The
    /// declared values stay as they are.
    pub(crate) fn with_values(&self, values: &[&str]) -> Self {
        let mut patterns: Vec<String> = self.patterns.as_ref().clone();
        patterns.extend(
            values
                .iter()
                .filter(|v| v.len() >= 4)
                .flat_map(|v| patterns_of(v)),
        );
        patterns.sort_by_key(|x| std::cmp::Reverse(x.len()));
        patterns.dedup();
        Self {
            values: Arc::clone(&self.values),
            patterns: Arc::new(patterns),
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
                    if let Some(r) = self.redacted(s) {
                        *s = r;
                        changed = true;
                    }
                }
                Value::Array(items) => stack.extend(items.iter_mut()),
                Value::Object(map) => {
                    if map.keys().any(|k| self.redacted(k).is_some()) {
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
            // A plain text block (no `_meta`, whose strings could carry a secret too) is
            // redacted in place; anything else through its JSON form.
            if let rmcp::model::ContentBlock::Text(text) = block
                && text.meta.is_none()
            {
                if let Some(r) = self.redacted(&text.text) {
                    text.text = r;
                }
                continue;
            }
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

    /// Any serializable response with every secret value replaced in every string;
    /// `None` when the redacted form is no longer a valid value of its type.
    pub(crate) fn redact_serde<T>(&self, value: T) -> Option<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        if !self.any() {
            return Some(value);
        }
        let mut json = serde_json::to_value(&value).ok()?;
        if !self.redact_value(&mut json) {
            return Some(value);
        }
        serde_json::from_value(json).ok()
    }

    /// An "input required" result with every secret replaced in its questions; the sealed
    /// `requestState` is opaque and kept as it is.
    pub(crate) fn redact_input_required(
        &self,
        mut result: rmcp::model::InputRequiredResult,
    ) -> Result<rmcp::model::InputRequiredResult, rmcp::ErrorData> {
        let state = result.request_state.take();
        let mut result = self.redact_serde(result).ok_or_else(unredactable)?;
        result.request_state = state;
        Ok(result)
    }

    /// Replaces every secret value in `text` (upstream error bodies may echo them).
    pub(crate) fn redact(&self, text: &str) -> String {
        self.redacted(text).unwrap_or_else(|| text.to_owned())
    }

    /// `text` with every secret replaced, or `None` when it holds none (the common case:
    /// nothing is copied then, since every string of every response passes through here).
    fn redacted(&self, text: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for pattern in self.patterns.iter() {
            let current = out.as_deref().unwrap_or(text);
            if current.contains(pattern.as_str()) {
                out = Some(current.replace(pattern.as_str(), "[redacted]"));
            }
        }
        out
    }
}

/// The error sent instead of a response that could not be redacted.
pub(crate) fn unredactable() -> rmcp::ErrorData {
    rmcp::ErrorData::internal_error("the response could not be redacted", None)
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
    fn secrets_are_redacted_in_rfc3986_and_lowercase_hex_forms() {
        let s = Secrets::load(DEFS, |_| Some("k~y/ü+x-1".to_owned())).unwrap();
        for echo in [
            "k~y%2F%C3%BC%2Bx-1",     // RFC 3986 (`~` kept)
            "k~y%2f%c3%bc%2bx-1",     // the same, lowercase hex
            "k%7Ey%2F%C3%BC%2Bx%2D1", // every non-alphanumeric byte encoded
            "k%7ey%2f%c3%bc%2bx%2d1", // the same, lowercase hex
            "k%7ey%2f%c3%bc%2bx-1",   // form-encoded, lowercase hex
        ] {
            assert_eq!(
                s.redact(&format!("echo {echo}!")),
                "echo [redacted]!",
                "{echo}"
            );
        }
        assert_eq!(lowercase_hex("a%2Fb%C3%BCC"), "a%2fb%c3%bcC");
    }

    #[test]
    fn a_calls_own_values_are_redacted_with_the_declared_ones() {
        let s = Secrets::load(DEFS, |n| Some(format!("value-of-{n}"))).unwrap();
        let call = s.with_values(&["upstream+token/1", "abc"]);
        assert_eq!(
            call.redact("value-of-A_KEY upstream+token/1 upstream%2Btoken%2F1 abc"),
            "[redacted] [redacted] [redacted] abc",
            "short values are not redacted, like declared ones"
        );
        assert_eq!(call.get("A_KEY"), Some("value-of-A_KEY"));
        assert_eq!(
            s.redact("upstream+token/1"),
            "upstream+token/1",
            "the server's own stay as they were"
        );
        assert!(!format!("{call:?}").contains("upstream"));
    }

    #[test]
    fn secrets_never_show_in_debug_and_are_redacted_from_text() {
        let s = Secrets::load(DEFS, |n| Some(format!("value-of-{n}"))).unwrap();
        assert!(!format!("{s:?}").contains("value-of"));
        assert_eq!(s.redact("echo value-of-A_KEY!"), "echo [redacted]!");
    }
}
