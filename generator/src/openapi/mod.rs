//! `bmm import-openapi`: an OpenAPI 3.0 or 3.1 document becomes a reviewable bmm tool spec.
//!
//! The output is a spec, not a runtime mode: it is checked with the same validator as a
//! hand-written one (`bmm check`) before it is written, and the generator turns it into a
//! server like any other.
//!
//! Rules:
//! 1. OpenAPI 3.0.x and 3.1.x, JSON or YAML; Swagger 2.0 and anything else are refused with
//!    what to do. Documents over 64 MiB are refused before parsing.
//! 2. Local `$ref`s are resolved; a reference cycle (or a chain deeper than 32) becomes an
//!    open schema with a description saying so, never a stack overflow; each operation's
//!    schemas are bounded in size. External file refs are refused; `http(s)` refs are
//!    refused unless their host is allowed (`--allow-remote-ref-host`), and then fetched
//!    once each with a timeout and a size limit.
//! 3. One tool per operation, filtered by tag, path glob, method and operationId. The
//!    operation's `x-bmm` extension (`disabled`, `name`, `scopes`, `annotations`) and the
//!    side file of overrides (keyed by `METHOD /path` or operationId: `name`, `disabled`,
//!    `description`) are applied; the overrides win.
//! 4. Names come from the operationId (else method and path), are `[a-z0-9_]`, start with a
//!    letter, and are at most `max_name_len` long: longer ones keep a prefix and a hash of
//!    the full name. Collisions get `_2`, `_3`, ... in document order. Same document, same
//!    names.
//! 5. Inputs: the JSON body's properties keep their names (they are the body's keys); a
//!    body that is not an object with properties (an array, a `oneOf`) is one field, `body`,
//!    sent as the whole body; without a JSON body, an `application/x-www-form-urlencoded`
//!    one is taken the same way (object properties only) and sent as a form; path,
//!    query and header parameters are snake_cased and renamed `<in>_<name>` when taken.
//!    `required` is kept. Array parameters are sent in OpenAPI's default styles (the
//!    runtime repeats query pairs and comma-joins elsewhere; another declared style is a
//!    warning); an object (or nested array) parameter is left out with a warning, or its
//!    operation skipped when it is required. Parameters that carry credentials (the API key schemes' names,
//!    `Authorization`) are never inputs: they become a declared secret and upstream auth.
//! 6. Annotations from the method: GET read-only and idempotent, PUT idempotent, DELETE
//!    destructive and idempotent; `open_world` always true.
//! 7. Output schema from the first 2xx JSON response: an object root as is, an array or
//!    scalar root wrapped in `{result: ...}` (as the runtime wraps the value); a root that
//!    is neither (`oneOf`, ...) gets no output schema, nor does one over 16 KiB of JSON.
//! 8. The first server URL (variables at their defaults) is the upstream base URL, with an
//!    `<NAME>_BASE_URL` environment override. Plain `http` is kept only for loopback hosts.
//! 9. Descriptions are cut at 1,000 characters (parameters at 300); all text reaches the
//!    spec through a YAML serializer, never by string pasting.

mod refs;
mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

pub use report::Report;

use refs::Resolver;

/// Largest document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 64 << 20;
const MAX_DESCRIPTION: usize = 1_000;
const MAX_PARAM_DESCRIPTION: usize = 300;
/// Largest output schema kept (JSON bytes).
const MAX_OUTPUT_SCHEMA_BYTES: usize = 16 << 10;
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// What to import and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Keep operations with one of these tags (all when empty).
    pub tags: Vec<String>,
    /// Keep operations whose path matches one of these globs (`*` within a segment, `**`
    /// across segments).
    pub paths: Vec<String>,
    /// Keep operations with one of these methods (case-insensitive).
    pub methods: Vec<String>,
    /// Keep operations with one of these operationIds.
    pub operation_ids: Vec<String>,
    /// Longest tool name.
    pub max_name_len: usize,
    /// Hosts whose `$ref`s may be fetched.
    pub allow_remote_ref_hosts: Vec<String>,
    /// Warn when the estimated `tools/list` size passes this many tokens.
    pub token_budget: usize,
    /// The server name (default: from `info.title`).
    pub server_name: Option<String>,
    /// The upstream base URL (default: the document's first server).
    pub base_url: Option<String>,
    /// The overrides side file's contents, if there is one.
    pub overrides: Option<String>,
    /// The document's file name, for comments and messages.
    pub source_name: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tags: Vec::new(),
            paths: Vec::new(),
            methods: Vec::new(),
            operation_ids: Vec::new(),
            max_name_len: 48,
            allow_remote_ref_hosts: Vec::new(),
            token_budget: 25_000,
            server_name: None,
            base_url: None,
            overrides: None,
            source_name: "openapi".to_owned(),
        }
    }
}

/// The result of an import.
#[derive(Debug)]
pub struct Imported {
    /// The spec, YAML, ready to write.
    pub spec: String,
    /// What happened.
    pub report: Report,
}

/// The user's overrides side file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Overrides {
    #[serde(default)]
    operations: BTreeMap<String, Override>,
}

#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Override {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default)]
    description: Option<String>,
}

/// Imports `text` (an OpenAPI document) into a bmm spec.
pub fn import(text: &str, options: &Options) -> Result<Imported, String> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "the document is {} MiB; documents over {} MiB are refused",
            text.len() >> 20,
            MAX_DOCUMENT_BYTES >> 20
        ));
    }
    let doc = parse_document(text)?;
    let version = openapi_version(&doc)?;
    let overrides: Overrides = match &options.overrides {
        Some(text) if !text.trim().is_empty() => serde_saphyr::from_str(text)
            .map_err(|e| format!("the overrides file is not valid: {e}"))?,
        _ => Overrides::default(),
    };
    Importer {
        doc: &doc,
        v30: version.starts_with("3.0"),
        options,
        resolver: Resolver::new(&doc, &options.allow_remote_ref_hosts),
        report: Report::new(options.token_budget),
        overrides,
        used_overrides: BTreeSet::new(),
    }
    .run()
}

fn parse_document(text: &str) -> Result<Value, String> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('{') {
        serde_json::from_str(trimmed).map_err(|e| format!("the document is not valid JSON: {e}"))
    } else {
        serde_saphyr::from_str(trimmed)
            .map_err(|e| format!("the document is not valid YAML or JSON: {e}"))
    }
}

fn openapi_version(doc: &Value) -> Result<String, String> {
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

/// A credential the upstream takes, from `securitySchemes`.
#[derive(Debug, Clone)]
struct Credential {
    scheme: String,
    secret: String,
    kind: &'static str,
    name: Option<String>,
    description: String,
}

struct Importer<'a> {
    doc: &'a Value,
    v30: bool,
    options: &'a Options,
    resolver: Resolver<'a>,
    report: Report,
    overrides: Overrides,
    used_overrides: BTreeSet<String>,
}

/// One field of a tool's input and where it goes.
struct Field {
    name: String,
    schema: Value,
    required: bool,
}

impl Importer<'_> {
    fn run(mut self) -> Result<Imported, String> {
        let info = self.doc.get("info").cloned().unwrap_or(Value::Null);
        let title = info
            .get("title")
            .and_then(Value::as_str)
            .unwrap_or("API")
            .to_owned();
        let server_name = match &self.options.server_name {
            Some(n) if is_crate_name(n) => n.clone(),
            Some(n) => {
                return Err(format!(
                    "server name `{}` is not a valid crate name: use lowercase letters, digits and `-`, starting with a letter, at most 48 characters",
                    clip(n, 60).escape_default()
                ));
            }
            None => crate_name(&title),
        };
        let env_prefix = server_name.replace('-', "_").to_ascii_uppercase();
        let (base_url, local) = self.base_url()?;
        let credentials = self.credentials(&env_prefix);
        let chosen = self.chosen_credential(&credentials);

        let mut tools = Vec::new();
        let mut names = BTreeSet::new();
        let paths = self
            .doc
            .get("paths")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (path, item) in &paths {
            let item = match self.resolver.resolve(item, &mut Vec::new()) {
                Ok(item) => item,
                Err(e) => {
                    self.report.skip(path, &e);
                    continue;
                }
            };
            for method in METHODS {
                let Some(op) = item.get(method) else { continue };
                let key = format!("{} {path}", method.to_ascii_uppercase());
                match self.operation(&key, path, method, &item, op, &credentials, &mut names) {
                    Ok(Some(tool)) => tools.push(tool),
                    Ok(None) => {}
                    Err(reason) => self.report.skip(&key, &reason),
                }
            }
        }
        for key in self.overrides.operations.keys() {
            if !self.used_overrides.contains(key) {
                self.report.warn(format!(
                    "the overrides file names `{}`, which matches no operation of the document",
                    clip(key, 120).escape_default()
                ));
            }
        }
        if tools.is_empty() {
            return Err(format!(
                "no operation was imported{}",
                if self.report.skipped.is_empty() {
                    " (the document has no operations, or the filters kept none)".to_owned()
                } else {
                    format!(": {}", self.report.skipped_summary())
                }
            ));
        }

        let mut scopes = BTreeSet::new();
        for t in &tools {
            scopes.extend(t.scopes.iter().cloned());
        }
        let spec = SpecOut {
            spec_version: 1,
            server: ServerOut {
                name: server_name,
                version: semver(info.get("version").and_then(Value::as_str)),
                title: Some(clip(&one_line(&title), 100)),
                description: Some(clip(
                    &format!(
                        "MCP tools for the {} API, imported from its OpenAPI document.",
                        one_line(&title)
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
                    base_url,
                    base_url_env: format!("{env_prefix}_BASE_URL"),
                    local: local.then_some(true),
                    auth: chosen.map(|c| UpstreamAuthOut {
                        kind: c.kind,
                        secret: c.secret.clone(),
                        name: c.name.clone(),
                    }),
                },
            )]),
            tools,
        };
        self.report.tools = spec.tools.len();
        self.report.estimate_tokens(&spec.tools);
        let mut text = String::new();
        let _ = writeln!(
            text,
            "# Imported by `bmm import-openapi` from {} ({} {}).",
            one_line(&clip(&self.options.source_name, 120)),
            one_line(&clip(&title, 80)),
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
            &serde_saphyr::to_string(&spec).map_err(|e| format!("cannot write YAML: {e}"))?,
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
        for note in self.resolver.take_notes() {
            self.report.warn(note);
        }
        Ok(Imported {
            spec: text,
            report: self.report,
        })
    }

    fn base_url(&mut self) -> Result<(String, bool), String> {
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

    fn credentials(&mut self, env_prefix: &str) -> Vec<Credential> {
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
    fn chosen_credential(&mut self, credentials: &[Credential]) -> Option<Credential> {
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

    /// A form body is sent by fixed rules (top-level arrays repeated, objects bracketed):
    /// the fields whose `encoding` (or type) asks for something else are reported.
    fn form_encoding_warnings(&mut self, key: &str, media: &Value, fields: &[Field]) {
        let encoding = media.get("encoding").and_then(Value::as_object);
        for field in fields {
            let declared = encoding.and_then(|e| e.get(&field.name));
            let get = |k: &str| declared.and_then(|d| d.get(k)).and_then(Value::as_str);
            let style = get("style");
            let explode = declared
                .and_then(|d| d.get("explode"))
                .and_then(Value::as_bool);
            let name = clip(&field.name, 60).escape_default().to_string();
            if let Some(content_type) = get("contentType")
                && !content_type.starts_with("text/plain")
            {
                self.report.warn(format!(
                    "{key}: form field `{name}` is declared as `{}`; bmm sends it as form text",
                    clip(content_type, 60).escape_default()
                ));
            }
            let shape = url_shape(&field.schema);
            if matches!(shape, UrlShape::Unsupported) && style != Some("deepObject") {
                self.report.warn(format!(
                    "{key}: form field `{name}` is an object (or nested array) sent bracketed (`{name}[key]=value`, as deepObject); the document declares style `{}`",
                    style.unwrap_or("form")
                ));
            } else if matches!(shape, UrlShape::Array)
                && (!matches!(style, None | Some("form")) || explode == Some(false))
            {
                self.report.warn(format!(
                    "{key}: form field `{name}` is an array sent as repeated fields; the document declares style `{}`, explode {}",
                    style.unwrap_or("form"),
                    explode.unwrap_or(true)
                ));
            }
        }
    }

    fn override_for(&mut self, key: &str, operation_id: Option<&str>) -> Override {
        let mut found = Override::default();
        for k in [Some(key), operation_id].into_iter().flatten() {
            if let Some(o) = self.overrides.operations.get(k) {
                self.used_overrides.insert(k.to_owned());
                found = o.clone();
                break;
            }
        }
        found
    }

    #[allow(clippy::too_many_arguments)]
    fn operation(
        &mut self,
        key: &str,
        path: &str,
        method: &str,
        item: &Value,
        op: &Value,
        credentials: &[Credential],
        names: &mut BTreeSet<String>,
    ) -> Result<Option<ToolOut>, String> {
        let operation_id = op.get("operationId").and_then(Value::as_str);
        let tags: Vec<&str> = op
            .get("tags")
            .and_then(Value::as_array)
            .map(|t| t.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let o = &self.options;
        if !o.tags.is_empty() && !tags.iter().any(|t| o.tags.iter().any(|w| w == t)) {
            return Ok(None);
        }
        if !o.paths.is_empty() && !o.paths.iter().any(|g| glob_match(g, path)) {
            return Ok(None);
        }
        if !o.methods.is_empty() && !o.methods.iter().any(|m| m.eq_ignore_ascii_case(method)) {
            return Ok(None);
        }
        if !o.operation_ids.is_empty()
            && !operation_id.is_some_and(|id| o.operation_ids.iter().any(|w| w == id))
        {
            return Ok(None);
        }
        let ext = op.get("x-bmm").cloned().unwrap_or(Value::Null);
        let user = self.override_for(key, operation_id);
        let disabled = user
            .disabled
            .or_else(|| ext.get("disabled").and_then(Value::as_bool))
            .unwrap_or(false);
        if disabled {
            self.report
                .skip(key, "disabled (x-bmm or the overrides file)");
            return Ok(None);
        }
        if !matches!(method, "get" | "post" | "put" | "patch" | "delete") {
            return Err(format!(
                "{} operations are not supported by bmm HTTP tools",
                method.to_ascii_uppercase()
            ));
        }
        // Pieces of the operation are resolved where they are used, each within bounds.
        let op = op.clone();

        // Parameters: the path item's, overridden by the operation's (same name and `in`).
        let mut params: Vec<Value> = Vec::new();
        for list in [item.get("parameters"), op.get("parameters")] {
            for p in list.and_then(Value::as_array).into_iter().flatten() {
                let p = self.resolver.resolve_bounded(p, &mut Vec::new())?;
                let id = (p.get("name").cloned(), p.get("in").cloned());
                params.retain(|q| (q.get("name").cloned(), q.get("in").cloned()) != id);
                params.push(p);
            }
        }
        let credential_params: BTreeSet<(String, String)> = credentials
            .iter()
            .filter_map(|c| {
                let name = c.name.as_ref()?.to_ascii_lowercase();
                let location = match c.kind {
                    "header" => "header",
                    "query" => "query",
                    _ => "cookie",
                };
                Some((location.to_owned(), name))
            })
            .collect();

        // Body first: its property names are JSON keys and cannot be renamed.
        let mut fields: Vec<Field> = Vec::new();
        let mut body_out: Option<BodyOut> = None;
        let mut body_form = false;
        let mut taken: BTreeSet<String> = BTreeSet::new();
        if let Some(body) = op.get("requestBody") {
            let body = self.resolver.resolve(body, &mut Vec::new())?;
            let required = body
                .get("required")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let content = body.get("content").and_then(Value::as_object);
            let media_of = |wanted: fn(&str) -> bool| {
                content.and_then(|c| c.iter().find(|(k, _)| wanted(k)).map(|(_, v)| v.clone()))
            };
            // JSON when offered, else a URL-encoded form (Stripe, Twilio, OAuth endpoints).
            let (media, form) = match media_of(is_json_media) {
                Some(json) => (Some(json), false),
                None => (media_of(is_form_media), true),
            };
            body_form = form && media.is_some();
            match media {
                Some(media) => {
                    let mut schema = self.schema(media.get("schema").unwrap_or(&json!({})), true);
                    if let Some(properties) = object_properties(&schema) {
                        let body_required: BTreeSet<String> = schema
                            .get("required")
                            .and_then(Value::as_array)
                            .map(|r| {
                                r.iter()
                                    .filter_map(Value::as_str)
                                    .map(str::to_owned)
                                    .collect()
                            })
                            .unwrap_or_default();
                        let mut names = Vec::new();
                        for (name, prop) in properties {
                            if prop.get("readOnly") == Some(&Value::Bool(true)) {
                                continue;
                            }
                            taken.insert(name.clone());
                            names.push(name.clone());
                            fields.push(Field {
                                required: required && body_required.contains(&name),
                                name,
                                schema: prop,
                            });
                        }
                        if form {
                            self.form_encoding_warnings(key, &media, &fields);
                        }
                        body_out = (!names.is_empty()).then_some(BodyOut::Fields(names));
                    } else if form && required {
                        return Err(
                            "its form body is not an object with properties; bmm sends form fields from named arguments"
                                .to_owned(),
                        );
                    } else if form {
                        self.report.warn(format!(
                            "{key}: its optional form body is not an object with properties; left out"
                        ));
                    } else {
                        // An array, a `oneOf`, an open object: one field is the whole body.
                        let field = unique_field("body", "request", &mut taken);
                        if let Some(obj) = schema.as_object_mut()
                            && !obj.contains_key("description")
                            && let Some(d) = body.get("description").and_then(Value::as_str)
                        {
                            obj.insert(
                                "description".into(),
                                Value::String(clip(d.trim(), MAX_PARAM_DESCRIPTION)),
                            );
                        }
                        body_out = Some(BodyOut::Whole {
                            field: field.clone(),
                        });
                        fields.push(Field {
                            name: field,
                            schema,
                            required,
                        });
                    }
                }
                None if required => {
                    let kinds: Vec<&String> =
                        content.map(|c| c.keys().collect()).unwrap_or_default();
                    return Err(format!(
                        "its request body is required and neither JSON nor a URL-encoded form ({}); bmm HTTP tools send those two",
                        kinds
                            .iter()
                            .map(|k| clip(k, 60))
                            .collect::<Vec<_>>()
                            .join(", ")
                            .escape_default()
                    ));
                }
                None => {}
            }
        }

        let mut path_vars: BTreeMap<String, String> = BTreeMap::new();
        let mut query: BTreeMap<String, String> = BTreeMap::new();
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for p in &params {
            let Some(name) = p.get("name").and_then(Value::as_str) else {
                continue;
            };
            let location = p.get("in").and_then(Value::as_str).unwrap_or("");
            let required = location == "path" || p.get("required") == Some(&Value::Bool(true));
            // OpenAPI: header parameters named Accept, Content-Type or Authorization "SHALL be
            // ignored"; credentials never become arguments.
            if credential_params.contains(&(location.to_owned(), name.to_ascii_lowercase()))
                || (location == "header"
                    && ["authorization", "accept", "content-type"]
                        .iter()
                        .any(|h| name.eq_ignore_ascii_case(h)))
            {
                continue;
            }
            if location == "cookie" || (location == "header" && name.eq_ignore_ascii_case("cookie"))
            {
                if required {
                    return Err(format!(
                        "it needs the cookie `{}`; bmm HTTP tools do not send cookies",
                        clip(name, 60).escape_default()
                    ));
                }
                continue;
            }
            if location == "header" && !is_header_name(name) {
                return Err(format!(
                    "header parameter `{}` is not a valid header name",
                    clip(name, 60).escape_default()
                ));
            }
            if !matches!(location, "path" | "query" | "header") {
                continue;
            }
            let field = unique_field(&snake(name), location, &mut taken);
            let mut schema = match p.get("schema") {
                Some(s) => self.schema(s, true),
                None => json!({"type": "string"}),
            };
            if let Some(d) = p.get("description").and_then(Value::as_str)
                && let Some(obj) = schema.as_object_mut()
                && !obj.contains_key("description")
            {
                obj.insert(
                    "description".into(),
                    Value::String(clip(d.trim(), MAX_PARAM_DESCRIPTION)),
                );
            }
            match url_shape(&schema) {
                UrlShape::Scalar => {}
                UrlShape::Array => {
                    let style = p.get("style").and_then(Value::as_str);
                    let explode = p.get("explode").and_then(Value::as_bool);
                    let default_form =
                        matches!(style, None | Some("form")) && explode != Some(false);
                    let default_simple = matches!(style, None | Some("simple"));
                    if location != "query" && !default_simple {
                        self.report.warn(format!(
                            "{key}: {location} parameter `{}` is declared `style: {}`; bmm joins arrays with commas (`a,b`): check the upstream accepts that",
                            clip(name, 60).escape_default(),
                            style.unwrap_or("simple"),
                        ));
                    }
                    if location == "query" && !default_form {
                        self.report.warn(format!(
                            "{key}: query parameter `{}` is declared `style: {}, explode: {}`; bmm sends arrays as repeated pairs (`{0}=a&{0}=b`): check the upstream accepts that",
                            clip(name, 60).escape_default(),
                            style.unwrap_or("form"),
                            explode.unwrap_or(true),
                        ));
                    }
                }
                UrlShape::Unsupported if required => {
                    return Err(format!(
                        "its {location} parameter `{}` is an object or nested array; bmm HTTP tools put scalars and arrays of scalars in URLs and headers",
                        clip(name, 60).escape_default()
                    ));
                }
                UrlShape::Unsupported => {
                    self.report.warn(format!(
                        "{key}: optional {location} parameter `{}` left out: it is an object or nested array, which bmm does not put in URLs or headers",
                        clip(name, 60).escape_default()
                    ));
                    continue;
                }
            }
            let template = format!("{{{field}}}");
            match location {
                "path" => {
                    path_vars.insert(name.to_owned(), field.clone());
                }
                "query" => {
                    query.insert(name.to_owned(), template);
                }
                _ => {
                    headers.insert(name.to_owned(), template);
                }
            }
            fields.push(Field {
                name: field,
                schema,
                required,
            });
        }
        let path_template = self.path_template(path, &mut path_vars, &mut fields, &mut taken)?;

        // Name: the override, then x-bmm, then operationId or method + path.
        let wanted = user
            .name
            .clone()
            .or_else(|| ext.get("name").and_then(Value::as_str).map(str::to_owned));
        let name = match wanted {
            Some(n) if is_tool_name(&n, self.options.max_name_len) && !names.contains(&n) => n,
            Some(n) => {
                self.report.warn(format!(
                    "{key}: the requested name `{}` is not `[a-z0-9_]` starting with a letter, at most {} long, or is taken; the derived name is used",
                    clip(&n, 80).escape_default(), self.options.max_name_len
                ));
                derived_name(operation_id, method, path, self.options.max_name_len, names)
            }
            None => derived_name(operation_id, method, path, self.options.max_name_len, names),
        };
        names.insert(name.clone());

        let description = match user.description.as_deref().map(str::trim) {
            Some(d) if !d.is_empty() => clip(d, MAX_DESCRIPTION),
            _ => self.describe(op.as_object().unwrap_or(&Map::new()), method, path),
        };
        let mut annotations = AnnotationsOut {
            read_only: matches!(method, "get").then_some(true),
            destructive: matches!(method, "delete").then_some(true),
            idempotent: matches!(method, "get" | "put" | "delete").then_some(true),
            open_world: Some(true),
        };
        if let Some(a) = ext.get("annotations").and_then(Value::as_object) {
            let flag =
                |k1: &str, k2: &str| a.get(k1).or_else(|| a.get(k2)).and_then(Value::as_bool);
            annotations.read_only = flag("read_only", "readOnlyHint").or(annotations.read_only);
            annotations.destructive =
                flag("destructive", "destructiveHint").or(annotations.destructive);
            annotations.idempotent =
                flag("idempotent", "idempotentHint").or(annotations.idempotent);
            annotations.open_world = flag("open_world", "openWorldHint").or(annotations.open_world);
        }
        let mut scopes = Vec::new();
        for s in ext
            .get("scopes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match s.as_str() {
                Some(s) if is_scope_token(s) => scopes.push(s.to_owned()),
                _ => self.report.warn(format!(
                    "{key}: x-bmm scope {} is not an OAuth scope token; dropped",
                    clip(&s.to_string(), 80).escape_default()
                )),
            }
        }

        let mut properties = Map::new();
        let mut required = Vec::new();
        for f in &fields {
            if f.required {
                required.push(Value::String(f.name.clone()));
            }
            properties.insert(f.name.clone(), f.schema.clone());
        }
        let mut input = Map::new();
        input.insert("type".into(), json!("object"));
        input.insert("properties".into(), Value::Object(properties));
        if !required.is_empty() {
            input.insert("required".into(), Value::Array(required));
        }
        input.insert("additionalProperties".into(), json!(false));

        let output = self.output_schema(&op).filter(|schema| {
            // Output schemas are optional: a huge one costs every client on every list and
            // buys little, so it is left out (and counted in the report).
            let size = schema.to_string().len();
            if size > MAX_OUTPUT_SCHEMA_BYTES {
                self.report.warn(format!(
                    "{key}: output schema left out ({} KiB of JSON, over {} KiB)",
                    size >> 10,
                    MAX_OUTPUT_SCHEMA_BYTES >> 10
                ));
                false
            } else {
                true
            }
        });
        Ok(Some(ToolOut {
            name,
            description,
            annotations,
            scopes,
            input: Value::Object(input),
            output,
            run: RunOut {
                http: HttpOut {
                    upstream: "api".into(),
                    method: method.to_ascii_uppercase(),
                    path: path_template,
                    query,
                    headers,
                    body_format: (body_form && body_out.is_some()).then_some("form"),
                    body: body_out,
                },
            },
        }))
    }

    /// The bmm path template for an OpenAPI path: `{param}` becomes `{field}`, other braces
    /// are escaped. A placeholder no parameter declares becomes a required string field.
    fn path_template(
        &mut self,
        path: &str,
        vars: &mut BTreeMap<String, String>,
        fields: &mut Vec<Field>,
        taken: &mut BTreeSet<String>,
    ) -> Result<String, String> {
        if !path.starts_with('/') {
            return Err("its path does not start with `/`".into());
        }
        let mut out = String::new();
        let mut rest = path;
        while let Some(open) = rest.find(['{', '}']) {
            out.push_str(&rest[..open]);
            if rest[open..].starts_with('}') {
                out.push_str("}}");
                rest = &rest[open + 1..];
                continue;
            }
            let Some(close) = rest[open..].find('}') else {
                return Err("its path has an unclosed `{`".into());
            };
            let name = &rest[open + 1..open + close];
            let field = match vars.get(name) {
                Some(f) => f.clone(),
                None => {
                    let f = unique_field(&snake(name), "path", taken);
                    self.report.warn(format!(
                        "path `{}`: parameter `{}` is not declared; it becomes a required string",
                        clip(path, 120).escape_default(),
                        clip(name, 60).escape_default()
                    ));
                    vars.insert(name.to_owned(), f.clone());
                    fields.push(Field {
                        name: f.clone(),
                        schema: json!({"type": "string"}),
                        required: true,
                    });
                    f
                }
            };
            out.push('{');
            out.push_str(&field);
            out.push('}');
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn describe(&self, op: &Map<String, Value>, method: &str, path: &str) -> String {
        let summary = op
            .get("summary")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim();
        let details = op
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim();
        let mut text = match (summary.is_empty(), details.is_empty()) {
            (false, false) if details.starts_with(summary) => details.to_owned(),
            (false, false) => format!("{summary}\n\n{details}"),
            (false, true) => summary.to_owned(),
            (true, false) => details.to_owned(),
            (true, true) => format!("{} {path}", method.to_ascii_uppercase()),
        };
        if op.get("deprecated") == Some(&Value::Bool(true)) {
            text.insert_str(0, "Deprecated. ");
        }
        clip(&text, MAX_DESCRIPTION)
    }

    fn output_schema(&mut self, op: &Value) -> Option<Value> {
        let responses = op.get("responses")?.as_object()?;
        let mut codes: Vec<&String> = responses.keys().filter(|k| k.starts_with('2')).collect();
        codes.sort();
        for code in codes {
            let Ok(response) = self.resolver.resolve(&responses[code], &mut Vec::new()) else {
                continue;
            };
            let Some(content) = response.get("content").and_then(Value::as_object) else {
                continue;
            };
            let Some(schema) = content
                .iter()
                .find(|(k, _)| is_json_media(k))
                .and_then(|(_, m)| m.get("schema"))
            else {
                continue;
            };
            let schema = self.schema(schema, false);
            let kind = schema.get("type");
            let is_object = kind == Some(&json!("object"))
                || (kind.is_none() && schema.get("properties").is_some());
            return if is_object {
                let mut schema = schema;
                if let Some(obj) = schema.as_object_mut() {
                    obj.insert("type".into(), json!("object"));
                }
                Some(schema)
            } else if matches!(
                kind.and_then(Value::as_str),
                Some("array" | "string" | "number" | "integer" | "boolean")
            ) {
                Some(
                    json!({"type": "object", "properties": {"result": schema}, "required": ["result"]}),
                )
            } else {
                None
            };
        }
        None
    }

    /// A resolved, bounded, 2020-12 schema for a tool (`input`: drop `readOnly`
    /// properties; output: drop `writeOnly` ones).
    fn schema(&mut self, schema: &Value, input: bool) -> Value {
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

/// What a parameter's value is, for the URL and headers.
enum UrlShape {
    /// A string, number, boolean, or a type the schema leaves open.
    Scalar,
    /// An array of scalars: repeated query pairs, or comma-joined elsewhere.
    Array,
    /// An object, or an array of objects or arrays.
    Unsupported,
}

fn url_shape(schema: &Value) -> UrlShape {
    let is = |schema: &Value, kind: &str| match schema.get("type") {
        Some(Value::String(t)) => t == kind,
        Some(Value::Array(types)) => types.iter().all(|t| t == kind || t == "null"),
        // Untyped, but shaped like an object.
        None => {
            kind == "object"
                && (schema.get("properties").is_some()
                    || schema.get("additionalProperties").is_some()
                    || schema.get("patternProperties").is_some())
        }
        _ => false,
    };
    if is(schema, "object") {
        UrlShape::Unsupported
    } else if is(schema, "array") {
        match schema.get("items") {
            Some(items) if is(items, "object") || is(items, "array") => UrlShape::Unsupported,
            _ => UrlShape::Array,
        }
    } else {
        UrlShape::Scalar
    }
}

/// The properties of an object schema (merging `allOf` parts), in document order.
fn object_properties(schema: &Value) -> Option<Vec<(String, Value)>> {
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

fn is_form_media(media: &str) -> bool {
    media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

fn is_json_media(media: &str) -> bool {
    let base = media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    base == "application/json" || (base.starts_with("application/") && base.ends_with("+json"))
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_scope_token(s: &str) -> bool {
    s.len() <= 200 && crate::spec::is_scope_token(s)
}

fn is_tool_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `[a-z0-9_]` from any text (the generator's own snake_case).
fn snake(text: &str) -> String {
    crate::names::snake_case(text)
}

fn unique_field(base: &str, location: &str, taken: &mut BTreeSet<String>) -> String {
    let base = if base.is_empty() { "param" } else { base };
    let base = if base.starts_with(|c: char| c.is_ascii_digit()) {
        format!("p_{base}")
    } else {
        base.to_owned()
    };
    let mut candidate = base.clone();
    if taken.contains(&candidate) {
        candidate = format!("{location}_{base}");
    }
    let mut n = 2;
    while taken.contains(&candidate) {
        candidate = format!("{location}_{base}_{n}");
        n += 1;
    }
    taken.insert(candidate.clone());
    candidate
}

/// A tool name from the operationId (or method and path), shortened with a stable hash
/// and made unique.
fn derived_name(
    operation_id: Option<&str>,
    method: &str,
    path: &str,
    max: usize,
    names: &BTreeSet<String>,
) -> String {
    let mut base = operation_id.map(snake).unwrap_or_default();
    if base.is_empty() {
        base = snake(&format!("{method} {}", path.replace(['{', '}'], "")));
    }
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base.insert_str(0, "op_");
    }
    let base = shorten(&base, max);
    if !names.contains(&base) {
        return base;
    }
    (2..)
        .map(|n| {
            let suffix = format!("_{n}");
            format!("{}{suffix}", shorten(&base, max - suffix.len()))
        })
        .find(|c| !names.contains(c))
        .unwrap_or(base)
}

/// `name` if it fits in `max`, else a prefix, `_`, and 8 hex digits of its SHA-256.
fn shorten(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let digest = Sha256::digest(name.as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let keep = max.saturating_sub(hash.len() + 1);
    let prefix = name[..keep].trim_end_matches('_');
    format!("{prefix}_{hash}")
}

/// A crate-style server name from a title.
fn crate_name(title: &str) -> String {
    let mut name = snake(title).replace('_', "-");
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert_str(0, "api-");
    }
    let name = name.trim_end_matches('-');
    let mut name: String = name.chars().take(40).collect();
    while name.ends_with('-') {
        name.pop();
    }
    if name.is_empty() {
        "openapi-server".to_owned()
    } else {
        name
    }
}

fn is_crate_name(name: &str) -> bool {
    name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn env_name(text: &str) -> String {
    let s = snake(text).to_ascii_uppercase();
    if s.is_empty() {
        "CREDENTIAL".to_owned()
    } else {
        s
    }
}

fn semver(version: Option<&str>) -> String {
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

/// `*` matches within a path segment, `**` across segments.
fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => (0..=t.len()).any(|i| go(&p[2..], &t[i..])),
            Some(b'*') => {
                let limit = t.iter().position(|&c| c == b'/').unwrap_or(t.len());
                (0..=limit).any(|i| go(&p[1..], &t[i..]))
            }
            Some(&c) => t.first() == Some(&c) && go(&p[1..], &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// At most `max` characters, with an ellipsis when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

#[derive(Serialize)]
struct SpecOut {
    spec_version: u32,
    server: ServerOut,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<AuthOut>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    secrets: BTreeMap<String, SecretOut>,
    upstreams: BTreeMap<String, UpstreamOut>,
    tools: Vec<ToolOut>,
}

#[derive(Serialize)]
struct ServerOut {
    name: String,
    version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
}

#[derive(Serialize)]
struct AuthOut {
    scopes_supported: Vec<String>,
}

#[derive(Serialize)]
struct SecretOut {
    description: String,
}

#[derive(Serialize)]
struct UpstreamOut {
    base_url: String,
    base_url_env: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    local: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<UpstreamAuthOut>,
}

#[derive(Serialize)]
struct UpstreamAuthOut {
    #[serde(rename = "type")]
    kind: &'static str,
    secret: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

#[derive(Serialize)]
struct ToolOut {
    name: String,
    description: String,
    annotations: AnnotationsOut,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    scopes: Vec<String>,
    input: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<Value>,
    run: RunOut,
}

#[derive(Serialize)]
struct AnnotationsOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    read_only: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destructive: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotent: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    open_world: Option<bool>,
}

#[derive(Serialize)]
struct RunOut {
    http: HttpOut,
}

#[derive(Serialize)]
struct HttpOut {
    upstream: String,
    method: String,
    path: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    query: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<BodyOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_format: Option<&'static str>,
}

/// `body: [fields]` or `body: { field: name }`.
#[derive(Serialize)]
#[serde(untagged)]
enum BodyOut {
    Fields(Vec<String>),
    Whole { field: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_snake_case_bounded_and_stable() {
        assert_eq!(snake("getPetById"), "get_pet_by_id");
        assert_eq!(snake("List-ALL pets!"), "list_all_pets");
        let long = "a".repeat(60);
        let short = shorten(&long, 48);
        assert_eq!(short.len(), 48);
        assert_eq!(short, shorten(&long, 48));
        assert_ne!(shorten(&format!("{long}b"), 48), short);
        let taken = BTreeSet::from(["get_pets".to_owned()]);
        assert_eq!(derived_name(None, "get", "/pets", 48, &taken), "get_pets_2");
        assert_eq!(
            derived_name(Some("9lives"), "get", "/x", 48, &taken),
            "op_9lives"
        );
    }

    #[test]
    fn globs_match_within_and_across_segments() {
        assert!(glob_match("/pets/*", "/pets/{id}"));
        assert!(!glob_match("/pets/*", "/pets/{id}/photos"));
        assert!(glob_match("/pets/**", "/pets/{id}/photos"));
        assert!(glob_match("**", "/anything/at/all"));
    }
}
