//! Security schemes: the credentials the upstream takes, the one bmm applies, and the
//! parameters that carry them (never tool inputs).

use std::collections::BTreeSet;

use serde_json::Value;

use super::naming::{clip, env_name, one_line};
use super::operations::Location;
use super::{Importer, METHODS};

/// A credential the upstream takes, from `securitySchemes`.
#[derive(Debug, Clone)]
pub(super) struct Credential {
    pub(super) scheme: String,
    pub(super) secret: String,
    pub(super) kind: &'static str,
    pub(super) name: Option<String>,
    pub(super) description: String,
}

/// The `(location, lowercase name)` of every parameter that carries a credential: API
/// keys in a header or query (other schemes with a name count as cookies).
pub(super) fn credential_params(credentials: &[Credential]) -> BTreeSet<(Location, String)> {
    credentials
        .iter()
        .filter_map(|c| {
            let name = c.name.as_ref()?.to_ascii_lowercase();
            let location = match c.kind {
                "header" => Location::Header,
                "query" => Location::Query,
                _ => Location::Cookie,
            };
            Some((location, name))
        })
        .collect()
}

impl Importer<'_> {
    /// Every declared security scheme, as the credential bmm would hold for it.
    pub(super) fn credentials(&mut self, env_prefix: &str) -> Vec<Credential> {
        let Some(schemes) = self
            .doc
            .pointer("/components/securitySchemes")
            .and_then(Value::as_object)
            .cloned()
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, scheme) in &schemes {
            let scheme = match self.resolver.resolve(scheme, &mut Vec::new()) {
                Ok(s) => s,
                Err(e) => {
                    self.report.warn(format!(
                        "security scheme `{}`: {e}",
                        clip(name, 60).escape_default()
                    ));
                    continue;
                }
            };
            let kind = scheme.get("type").and_then(Value::as_str).unwrap_or("");
            let location = scheme.get("in").and_then(Value::as_str).unwrap_or("");
            let param = scheme
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let http_scheme = scheme
                .get("scheme")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_ascii_lowercase();
            let (kind, param) = match (kind, location) {
                ("apiKey", "header") if param.is_some() => ("header", param),
                ("apiKey", "query") if param.is_some() => ("query", param),
                ("http", _) if http_scheme == "bearer" => ("bearer", None),
                ("oauth2" | "openIdConnect", _) => ("bearer", None),
                _ => ("unsupported", param),
            };
            let secret = format!("{env_prefix}_{}", env_name(name));
            let described = scheme
                .get("description")
                .and_then(Value::as_str)
                .map(|d| format!(" {}", clip(&one_line(d), 200)))
                .unwrap_or_default();
            out.push(Credential {
                scheme: name.clone(),
                secret,
                kind,
                name: param,
                description: format!(
                    "Credential for the upstream API (security scheme `{name}`).{described}"
                ),
            });
        }
        out
    }

    /// The scheme the upstream uses: the first of the document's `security` that bmm can
    /// apply, else the first one used by an operation, else the first declared.
    pub(super) fn chosen_credential(&mut self, credentials: &[Credential]) -> Option<Credential> {
        let mut wanted: Vec<String> = Vec::new();
        let collect = |security: Option<&Value>, wanted: &mut Vec<String>| {
            for req in security.and_then(Value::as_array).into_iter().flatten() {
                if let Some(obj) = req.as_object() {
                    wanted.extend(obj.keys().cloned());
                }
            }
        };
        collect(self.doc.get("security"), &mut wanted);
        if let Some(paths) = self.doc.get("paths").and_then(Value::as_object) {
            for item in paths.values() {
                for m in METHODS {
                    collect(item.get(m).and_then(|op| op.get("security")), &mut wanted);
                }
            }
        }
        wanted.extend(credentials.iter().map(|c| c.scheme.clone()));
        let chosen = wanted.iter().find_map(|w| {
            credentials
                .iter()
                .find(|c| &c.scheme == w && c.kind != "unsupported")
        })?;
        if chosen.kind == "bearer" {
            self.report.warn(format!(
                "security scheme `{}`: the upstream gets a fixed bearer token from the secret {} (bmm never forwards the MCP client's token, and does not run the upstream's OAuth flow)",
                chosen.scheme.escape_default(), chosen.secret
            ));
        }
        for c in credentials.iter().filter(|c| c.kind == "unsupported") {
            self.report.warn(format!(
                "security scheme `{}` (cookie API key, HTTP basic, mutual TLS, ...) cannot be applied by bmm upstreams; operations that need only it will fail upstream",
                c.scheme.escape_default()
            ));
        }
        Some(chosen.clone())
    }
}
