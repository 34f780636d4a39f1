//! `$ref` resolution with cycle detection and size bounds (rule 2 of the module docs).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{Value, json};

/// Longest chain of references followed before the schema is left open.
const MAX_DEPTH: usize = 32;
/// Most schema nodes one resolved value may have; beyond it the rest is left open.
const MAX_NODES: usize = 5_000;
/// Deepest literal nesting followed.
const MAX_NESTING: usize = 128;
/// Largest remote document fetched.
const MAX_REMOTE_BYTES: usize = 16 << 20;

/// Resolves references of one document (and of the remote documents it may name).
pub(super) struct Resolver<'a> {
    root: &'a Value,
    allow_hosts: &'a [String],
    remote: HashMap<String, Value>,
    notes: Vec<String>,
    noted: BTreeSet<String>,
}

impl<'a> Resolver<'a> {
    pub(super) fn new(root: &'a Value, allow_hosts: &'a [String]) -> Self {
        Self {
            root,
            allow_hosts,
            remote: HashMap::new(),
            notes: Vec::new(),
            noted: BTreeSet::new(),
        }
    }

    /// Notes for the report (cycles cut, schemas truncated), each once.
    pub(super) fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn note(&mut self, note: String) {
        if self.noted.insert(note.clone()) {
            self.notes.push(note);
        }
    }

    /// Follows references at the top of `value` only (a path item, a parameter, a
    /// response): what it points at, not expanded further.
    pub(super) fn resolve(
        &mut self,
        value: &Value,
        stack: &mut Vec<String>,
    ) -> Result<Value, String> {
        let mut current = value.clone();
        let mut base: Option<String> = None;
        for _ in 0..MAX_DEPTH {
            let Some(r) = current.get("$ref").and_then(Value::as_str) else {
                return Ok(current);
            };
            let r = r.to_owned();
            let (doc, pointer) = self.locate(&r, base.as_deref())?;
            let key = format!("{}#{pointer}", doc.as_deref().unwrap_or(""));
            if stack.contains(&key) {
                return Err(format!("$ref `{}` refers to itself", clip(&r)));
            }
            stack.push(key);
            current = self.lookup(doc.as_deref(), &pointer, &r)?;
            base = doc;
        }
        Err("a chain of more than 32 references".into())
    }

    /// `value` with every reference expanded: cycles and very long chains become open
    /// schemas that say so, and the result has at most `MAX_NODES` nodes.
    pub(super) fn resolve_bounded(
        &mut self,
        value: &Value,
        stack: &mut Vec<String>,
    ) -> Result<Value, String> {
        let mut budget = MAX_NODES;
        self.deep(value, None, stack, &mut budget, 0)
    }

    fn deep(
        &mut self,
        value: &Value,
        base: Option<&str>,
        stack: &mut Vec<String>,
        budget: &mut usize,
        nesting: usize,
    ) -> Result<Value, String> {
        if *budget == 0 || nesting > MAX_NESTING {
            return Ok(self.cut_short(None, value));
        }
        *budget -= 1;
        match value {
            Value::Object(obj) => {
                if let Some(Value::String(r)) = obj.get("$ref") {
                    // A reference that cannot be followed leaves an open schema and a note;
                    // the rest of the operation is still imported.
                    let located = self.locate(r, base);
                    let (doc, pointer) = match located {
                        Ok(found) => found,
                        Err(e) => {
                            self.note(e);
                            return Ok(unresolved(r));
                        }
                    };
                    let key = format!("{}#{pointer}", doc.as_deref().unwrap_or(""));
                    let name = pointer.rsplit('/').next().unwrap_or("schema").to_owned();
                    if stack.contains(&key) || stack.len() >= MAX_DEPTH {
                        self.note(format!(
                            "recursive schema `{}` is expanded once; the inner reference is left open",
                            clip(&name)
                        ));
                        return Ok(json!({
                            "description": format!("Recursive reference to {}; not expanded further.", clip(&name))
                        }));
                    }
                    let target = match self.lookup(doc.as_deref(), &pointer, r) {
                        Ok(target) => target,
                        Err(e) => {
                            self.note(e);
                            return Ok(unresolved(r));
                        }
                    };
                    stack.push(key);
                    let resolved = self.deep(&target, doc.as_deref(), stack, budget, nesting + 1);
                    stack.pop();
                    let mut resolved = resolved?;
                    // OpenAPI 3.1 allows keywords next to `$ref`; they refine the target.
                    for (k, v) in obj {
                        if k == "$ref" || k == "example" || k == "examples" {
                            continue;
                        }
                        let v = if *budget == 0 || nesting + 1 > MAX_NESTING {
                            self.cut_short(Some(k), v)
                        } else {
                            self.deep(v, base, stack, budget, nesting + 1)?
                        };
                        if let Some(out) = resolved.as_object_mut() {
                            out.insert(k.clone(), v);
                        }
                    }
                    return Ok(resolved);
                }
                let mut out = serde_json::Map::new();
                for (k, v) in obj {
                    if k == "example" || k == "examples" {
                        continue;
                    }
                    let v = if *budget == 0 || nesting + 1 > MAX_NESTING {
                        self.cut_short(Some(k), v)
                    } else {
                        self.deep(v, base, stack, budget, nesting + 1)?
                    };
                    out.insert(k.clone(), v);
                }
                Ok(Value::Object(out))
            }
            Value::Array(items) => items
                .iter()
                .map(|v| self.deep(v, base, stack, budget, nesting + 1))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            other => Ok(other.clone()),
        }
    }

    /// What stands in for `value` (found under `key`) once the budget is spent: the shape
    /// a keyword's value needs is kept, so the cut schema still compiles as JSON Schema
    /// 2020-12 (the server validates every call against it and refuses to start with a
    /// schema that does not compile). Scalars (`type: object`) and lists of scalars
    /// (`required`, `enum`) stay as written, a map of schemas (`properties`) becomes empty,
    /// and any other object (a schema) becomes an open schema that says it was cut.
    fn cut_short(&mut self, key: Option<&str>, value: &Value) -> Value {
        let placeholder =
            || json!({"description": "Not expanded further: the schema is too large."});
        match value {
            Value::Object(_)
                if matches!(
                    key,
                    Some(
                        "properties"
                            | "patternProperties"
                            | "$defs"
                            | "definitions"
                            | "dependentSchemas"
                    )
                ) =>
            {
                json!({})
            }
            Value::Object(_) => {
                self.note(
                    "a schema too large to expand was cut short (left open past that point)"
                        .to_owned(),
                );
                placeholder()
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| match item {
                        Value::Object(_) => placeholder(),
                        other => other.clone(),
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// Which document and JSON pointer a reference names.
    fn locate(&self, r: &str, base: Option<&str>) -> Result<(Option<String>, String), String> {
        if let Some(pointer) = r.strip_prefix('#') {
            return Ok((base.map(str::to_owned), pointer.to_owned()));
        }
        let absolute = if r.starts_with("http://") || r.starts_with("https://") {
            r.to_owned()
        } else if let Some(base) = base {
            url::Url::parse(base)
                .and_then(|b| b.join(r))
                .map_err(|e| format!("$ref `{}` cannot be resolved against {base}: {e}", clip(r)))?
                .to_string()
        } else {
            return Err(format!(
                "$ref `{}` points at another file; bundle the document into one file first (for example `npx @redocly/cli bundle openapi.yaml -o bundled.yaml`)",
                clip(r)
            ));
        };
        let (url, fragment) = absolute.split_once('#').unwrap_or((&absolute, ""));
        let host = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        if !self
            .allow_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&host))
        {
            return Err(format!(
                "remote $ref `{}` refused: pass --allow-remote-ref-host {} to fetch documents from that host",
                clip(r),
                if host.is_empty() { "<host>" } else { &host }
            ));
        }
        Ok((Some(url.to_owned()), fragment.to_owned()))
    }

    fn lookup(&mut self, doc: Option<&str>, pointer: &str, r: &str) -> Result<Value, String> {
        let pointer = percent_encoding::percent_decode_str(pointer)
            .decode_utf8()
            .map_err(|_| format!("$ref `{}` is not valid UTF-8 once decoded", clip(r)))?;
        let document = match doc {
            None => self.root,
            Some(url) => {
                if !self.remote.contains_key(url) {
                    let fetched = fetch(url)?;
                    self.remote.insert(url.to_owned(), fetched);
                }
                &self.remote[url]
            }
        };
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            return Err(format!(
                "$ref `{}` is not a JSON pointer (`#/components/...`)",
                clip(r)
            ));
        }
        document
            .pointer(&pointer)
            .cloned()
            .ok_or_else(|| format!("$ref `{}` points at nothing in the document", clip(r)))
    }
}

/// Fetches a remote document (an allowed host only: checked by the caller).
///
/// The fetch goes through `bmm-netguard` (a hostile document must not turn the importer
/// into a probe of the local network): the name is resolved once and only public addresses
/// are connected to, IP-literal hosts in non-public ranges are refused before connecting,
/// no redirect is followed and no proxy is used. Loopback is reachable only when the allowed
/// host itself names loopback (`--allow-remote-ref-host localhost` or `127.0.0.1`): the
/// user asked for it explicitly. Private, link-local and the other non-public ranges are
/// never reachable.
fn fetch(url: &str) -> Result<Value, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("cannot fetch {url}: {e}"))?;
    let loopback_named = match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    let policy = bmm_netguard::Policy::public_only().allow_loopback(loopback_named);
    let guard = bmm_netguard::Guard::new(policy, Duration::from_secs(15))
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    let request = guard
        .get(parsed)
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime to fetch {url}: {e}"))?;
    let text = runtime.block_on(async {
        let mut response = request.send().await.map_err(|e| {
            bmm_netguard::refused_in(&e).map_or_else(|| e.to_string(), ToString::to_string)
        })?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_REMOTE_BYTES {
                return Err("larger than 16 MiB".to_owned());
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| "not UTF-8".to_owned())
    });
    let text = text.map_err(|e| format!("cannot fetch {url}: {e}"))?;
    super::document::parse_document(&text).map_err(|e| format!("{url}: {e}"))
}

fn unresolved(r: &str) -> Value {
    json!({"description": format!("Unresolved reference {}; not expanded.", clip(r))})
}

fn clip(text: &str) -> String {
    super::clip(text, 160).escape_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_ref_fetch_refuses_non_public_addresses_even_on_an_allowed_host() {
        for url in [
            "http://10.0.0.1/openapi.json",
            "http://169.254.169.254/latest/meta-data",
            "http://[fd00::1]/openapi.json",
            "http://[::ffff:192.168.0.1]/openapi.json",
            "http://0.0.0.0/openapi.json",
        ] {
            let error = fetch(url).err().unwrap_or_default();
            assert!(error.contains("refused to connect"), "{url}: {error}");
        }
    }
}
