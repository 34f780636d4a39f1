//! The spec written: its shape (serialised by serde, never pasted together), the header
//! comment, the size limit, and the same check as `bmm check` before anything is written.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use super::document::semver;
use super::security::Credential;
use super::{Importer, clip, one_line};

/// The upstream, as `run` found it.
pub(super) struct Upstream<'a> {
    pub(super) base_url: String,
    pub(super) env_prefix: &'a str,
    pub(super) local: bool,
    pub(super) credential: Option<&'a Credential>,
    /// The server name, the OAuth client id until the user edits it.
    pub(super) server_name: &'a str,
    /// The scopes an OAuth upstream asks for.
    pub(super) oauth_scopes: Vec<String>,
}

impl SpecOut {
    pub(super) fn new(
        server_name: String,
        info: &Value,
        title: &str,
        upstream: Upstream<'_>,
        tools: Vec<ToolOut>,
    ) -> Self {
        let mut scopes = std::collections::BTreeSet::new();
        for t in &tools {
            scopes.extend(t.scopes.iter().cloned());
        }
        let chosen = upstream.credential;
        let auth = chosen.map(|c| UpstreamAuthOut::new(c, &upstream));
        SpecOut {
            spec_version: 1,
            server: ServerOut {
                name: server_name,
                version: semver(info.get("version").and_then(Value::as_str)),
                title: Some(clip(&one_line(title), 100)),
                description: Some(clip(
                    &format!(
                        "MCP tools for the {} API, imported from its OpenAPI document.",
                        one_line(title)
                    ),
                    300,
                )),
            },
            auth: (!scopes.is_empty()).then(|| AuthOut {
                scopes_supported: scopes.into_iter().collect(),
            }),
            secrets: chosen
                .iter()
                .map(|c| {
                    (
                        c.secret.clone(),
                        SecretOut {
                            description: c.description.clone(),
                        },
                    )
                })
                .collect(),
            upstreams: BTreeMap::from([(
                "api".to_owned(),
                UpstreamOut {
                    base_url: upstream.base_url,
                    base_url_env: format!("{}_BASE_URL", upstream.env_prefix),
                    local: upstream.local.then_some(true),
                    auth,
                },
            )]),
            tools,
        }
    }
}

impl Importer<'_> {
    /// The spec's text: a header comment, then the YAML; refused when over bmm's size
    /// limit, and checked as `bmm check` would (its warnings go to the report).
    pub(super) fn render(
        &mut self,
        spec: &SpecOut,
        info: &Value,
        title: &str,
    ) -> Result<String, String> {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "# Imported by `bmm import-openapi` from {} ({} {}).",
            one_line(&clip(&self.options.source_name, 120)),
            one_line(&clip(title, 80)),
            one_line(&clip(
                info.get("version").and_then(Value::as_str).unwrap_or("?"),
                40
            )),
        );
        text.push_str(
            "# Re-importing rewrites this file: keep renames, disabled operations and edited\n\
             # descriptions in the overrides side file, which every import applies.\n",
        );
        text.push_str(
            &serde_saphyr::to_string(spec).map_err(|e| format!("cannot write YAML: {e}"))?,
        );
        if text.len() > crate::spec::MAX_SPEC_BYTES {
            return Err(format!(
                "the imported spec would be {:.1} MiB, over bmm's {} MiB limit for a spec ({} tools, about {} tokens of tools/list): import fewer operations with --tag, --path, --method or --operation-id, or split the API into several servers",
                text.len() as f64 / f64::from(1u32 << 20),
                crate::spec::MAX_SPEC_BYTES >> 20,
                self.report.tools,
                self.report.estimated_tokens
            ));
        }
        let findings = crate::spec::check_text("imported.yaml", &text);
        let errors: Vec<String> = findings
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect();
        if !errors.is_empty() {
            return Err(format!(
                "internal error: the imported spec does not pass `bmm check`:\n{}",
                errors.join("\n")
            ));
        }
        for d in findings.iter().filter(|d| !d.is_error()) {
            self.report.warn(d.to_string());
        }
        Ok(text)
    }
}

#[derive(Serialize)]
pub(super) struct SpecOut {
    pub(super) spec_version: u32,
    pub(super) server: ServerOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) auth: Option<AuthOut>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) secrets: BTreeMap<String, SecretOut>,
    pub(super) upstreams: BTreeMap<String, UpstreamOut>,
    pub(super) tools: Vec<ToolOut>,
}

#[derive(Serialize)]
pub(super) struct ServerOut {
    pub(super) name: String,
    pub(super) version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) description: Option<String>,
}

#[derive(Serialize)]
pub(super) struct AuthOut {
    pub(super) scopes_supported: Vec<String>,
}

#[derive(Serialize)]
pub(super) struct SecretOut {
    pub(super) description: String,
}

#[derive(Serialize)]
pub(super) struct UpstreamOut {
    pub(super) base_url: String,
    pub(super) base_url_env: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) local: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) auth: Option<UpstreamAuthOut>,
}

#[derive(Serialize)]
pub(super) struct UpstreamAuthOut {
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) issuer_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) authorization_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) authorization_url_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) token_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) token_url_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) client_id_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) client_secret: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) scopes: Vec<String>,
}

impl UpstreamAuthOut {
    fn new(c: &Credential, upstream: &Upstream<'_>) -> Self {
        let Some(o) = &c.oauth else {
            return Self {
                kind: c.kind,
                secret: Some(c.secret.clone()),
                name: c.name.clone(),
                issuer: None,
                issuer_env: None,
                authorization_url: None,
                authorization_url_env: None,
                token_url: None,
                token_url_env: None,
                client_id: None,
                client_id_env: None,
                client_secret: None,
                scopes: Vec::new(),
            };
        };
        let env = |value: &Option<String>, suffix: &str| {
            value.as_ref().map(|_| format!("{}_{suffix}", o.env))
        };
        Self {
            kind: c.kind,
            secret: None,
            name: None,
            issuer: o.issuer.clone(),
            issuer_env: env(&o.issuer, "ISSUER"),
            authorization_url: o.authorization_url.clone(),
            authorization_url_env: env(&o.authorization_url, "AUTHORIZATION_URL"),
            token_url: o.token_url.clone(),
            token_url_env: env(&o.token_url, "TOKEN_URL"),
            client_id: Some(upstream.server_name.to_owned()),
            client_id_env: Some(format!("{}_CLIENT_ID", o.env)),
            client_secret: Some(c.secret.clone()),
            scopes: upstream.oauth_scopes.clone(),
        }
    }
}

#[derive(Serialize)]
pub(super) struct ToolOut {
    pub(super) name: String,
    pub(super) description: String,
    pub(super) annotations: AnnotationsOut,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) scopes: Vec<String>,
    pub(super) input: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) output: Option<Value>,
    pub(super) run: RunOut,
    /// The scopes the operation's security requirements name for the chosen OAuth scheme.
    #[serde(skip)]
    pub(super) oauth_scopes: Vec<String>,
}

#[derive(Serialize)]
pub(super) struct AnnotationsOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) read_only: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) destructive: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) idempotent: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) open_world: Option<bool>,
}

#[derive(Serialize)]
pub(super) struct RunOut {
    pub(super) http: HttpOut,
}

#[derive(Serialize)]
pub(super) struct HttpOut {
    pub(super) upstream: String,
    pub(super) method: String,
    pub(super) path: String,
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub(super) query: IndexMap<String, String>,
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub(super) headers: IndexMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) body: Option<BodyOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) body_format: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) upstream_scopes: Vec<String>,
}

/// `body: [fields]` or `body: { field: name }`.
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum BodyOut {
    Fields(Vec<String>),
    Whole { field: String },
}
