//! The document and its servers: parsing, the OpenAPI version, the upstream base URL.

use serde_json::Value;

use super::{Importer, clip};

/// The document as JSON: JSON text when it starts with `{`, else YAML.
pub(super) fn parse_document(text: &str) -> Result<Value, String> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('{') {
        serde_json::from_str(trimmed).map_err(|e| format!("the document is not valid JSON: {e}"))
    } else {
        serde_saphyr::from_str(trimmed)
            .map_err(|e| format!("the document is not valid YAML or JSON: {e}"))
    }
}

/// The `openapi` version, when it is 3.0.x or 3.1.x; what to do otherwise.
pub(super) fn openapi_version(doc: &Value) -> Result<String, String> {
    if !doc.is_object() {
        return Err("the document is not an OpenAPI object (its root is not a mapping)".into());
    }
    if doc.get("swagger").is_some() {
        return Err("this is a Swagger 2.0 document; bmm imports OpenAPI 3.0 and 3.1. Convert it first, e.g. `npx swagger2openapi in.yaml -o out.yaml`, then import the result".into());
    }
    let version = match doc.get("openapi") {
        Some(Value::String(v)) => v.clone(),
        Some(other) => other.to_string(),
        None => {
            return Err("the document has no `openapi` field; is it an OpenAPI 3 document?".into());
        }
    };
    if version.starts_with("3.0") || version.starts_with("3.1") {
        Ok(version)
    } else {
        Err(format!(
            "OpenAPI version `{}` is not supported; bmm imports 3.0.x and 3.1.x",
            clip(&version, 40).escape_default()
        ))
    }
}

impl Importer<'_> {
    /// The upstream base URL (the option, else the first server with its variables at their
    /// defaults) and whether it is a loopback `http` one.
    pub(super) fn base_url(&mut self) -> Result<(String, bool), String> {
        let raw = match &self.options.base_url {
            Some(url) => url.clone(),
            None => {
                let server = self
                    .doc
                    .get("servers")
                    .and_then(Value::as_array)
                    .and_then(|s| s.first());
                match server.and_then(|s| s.get("url")).and_then(Value::as_str) {
                    Some(url) => substitute_variables(url, server.and_then(|s| s.get("variables"))),
                    None => {
                        self.report.warn("the document names no server: the upstream base URL is a placeholder (https://upstream.invalid); pass --base-url or set the base URL variable at run time".to_owned());
                        "https://upstream.invalid".to_owned()
                    }
                }
            }
        };
        let raw = raw.trim().trim_end_matches('/').to_owned();
        let url = if raw.starts_with('/') || !raw.contains("://") {
            self.report.warn(format!(
                "the server URL `{}` is relative: the upstream base URL is https://upstream.invalid{} until you pass --base-url or set the base URL variable",
                clip(&raw, 200).escape_default(),
                clip(&raw, 200).escape_default()
            ));
            format!("https://upstream.invalid/{}", raw.trim_start_matches('/'))
        } else {
            raw
        };
        let mut parsed = url::Url::parse(&url).map_err(|e| {
            format!(
                "the server URL `{}` is not a URL: {e}",
                clip(&url, 200).escape_default()
            )
        })?;
        parsed.set_query(None);
        parsed.set_fragment(None);
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        let loopback = matches!(parsed.host(), Some(url::Host::Domain("localhost")))
            || matches!(parsed.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
            || matches!(parsed.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback());
        match parsed.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                self.report.warn(format!(
                    "the server URL `{}` is plain http; bmm sends credentials only over https, so the upstream is https",
                    parsed.as_str().escape_default()
                ));
                let _ = parsed.set_scheme("https");
            }
            other => {
                return Err(format!(
                    "the server URL has scheme `{}`; only http and https are supported",
                    clip(other, 20).escape_default()
                ));
            }
        }
        let text = parsed.as_str().trim_end_matches('/').to_owned();
        Ok((text, parsed.scheme() == "http"))
    }
}

/// `info.version` when it is `MAJOR.MINOR.PATCH`, else `0.1.0`.
pub(super) fn semver(version: Option<&str>) -> String {
    let v = version.unwrap_or("").trim();
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
    {
        v.to_owned()
    } else {
        "0.1.0".to_owned()
    }
}

fn substitute_variables(url: &str, variables: Option<&Value>) -> String {
    let mut out = url.to_owned();
    if let Some(vars) = variables.and_then(Value::as_object) {
        for (name, var) in vars {
            if let Some(default) = var.get("default").and_then(Value::as_str) {
                out = out.replace(&format!("{{{name}}}"), default);
            }
        }
    }
    out
}
