//! Secrets: read once from the environment at start-up, every missing one reported at
//! once, never printed (`Debug` shows names only).

use std::collections::HashMap;
use std::sync::Arc;

use crate::def::SecretDef;

/// The secret values of a server.
#[derive(Clone, Default)]
pub struct Secrets {
    values: Arc<HashMap<&'static str, String>>,
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

    /// Replaces every secret value in `text` (upstream error bodies may echo them).
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for value in self.values.values() {
            if value.len() >= 4 {
                out = out.replace(value.as_str(), "[redacted]");
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
    fn secrets_never_show_in_debug_and_are_redacted_from_text() {
        let s = Secrets::load(DEFS, |n| Some(format!("value-of-{n}"))).unwrap();
        assert!(!format!("{s:?}").contains("value-of"));
        assert_eq!(s.redact("echo value-of-A_KEY!"), "echo [redacted]!");
    }
}
