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
//!    The upstream's auth is one security scheme (see `security`): an API key or bearer
//!    token as a declared secret, or an OAuth client (`user_oauth` for an authorization
//!    code flow or OpenID Connect, `client_credentials` for a client credentials flow;
//!    implicit and password flows are refused, as OAuth 2.1 removes them).
//! 9. Descriptions are cut at 1,000 characters (parameters at 300); all text reaches the
//!    spec through a YAML serializer, never by string pasting.
//! 10. Every tool schema is repaired into one `bmm check` and the server accept, each
//!     repair a report line: `required` names that are not among the properties beside
//!     them are dropped, patterns the validator cannot compile are dropped, and schemas
//!     nested deeper than the spec loader reads (64 levels) are cut into open ones whose
//!     description says so. A document is refused only with what to do about it.

//!
//! The modules follow those concerns: `document` (parsing, version, servers), `security`
//! (credentials), `operations` (one tool per operation: filters, parameters, body,
//! annotations), `schema` (resolution and normalisation to JSON Schema 2020-12), `naming`
//! (tool, field, server and secret names; text clipping), `output` (the spec written and
//! checked), with `refs` (`$ref` resolution) and `report` (what the user reads).

mod document;
mod naming;
mod operations;
mod output;
mod refs;
mod report;
mod schema;
mod security;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value};

pub use report::Report;

use naming::{clip, one_line};
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
    let doc = document::parse_document(text)?;
    let version = document::openapi_version(&doc)?;
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
        patterns: HashMap::new(),
    }
    .run()
}

struct Importer<'a> {
    doc: &'a Value,
    v30: bool,
    options: &'a Options,
    resolver: Resolver<'a>,
    report: Report,
    overrides: Overrides,
    used_overrides: BTreeSet<String>,
    /// Whether the validator compiles each pattern met so far.
    patterns: HashMap<String, bool>,
}

impl Importer<'_> {
    fn run(mut self) -> Result<Imported, String> {
        let info = self.doc.get("info").cloned().unwrap_or(Value::Null);
        let title = info
            .get("title")
            .and_then(Value::as_str)
            .unwrap_or("API")
            .to_owned();
        let server_name = naming::server_name(self.options.server_name.as_deref(), &title)?;
        let env_prefix = server_name.replace('-', "_").to_ascii_uppercase();
        let server_name_for_client = server_name.clone();
        let (base_url, local) = self.base_url()?;
        let credentials = self.credentials(&env_prefix, &base_url);
        let chosen = self.chosen_credential(&credentials);

        let mut tools = self.tools(&credentials, chosen.as_ref())?;
        if tools.is_empty() {
            return Err(self.nothing_imported());
        }
        let oauth_scopes = chosen
            .as_ref()
            .map(|c| self.oauth_scopes(c, &mut tools))
            .unwrap_or_default();
        let spec = output::SpecOut::new(
            server_name,
            &info,
            &title,
            output::Upstream {
                base_url,
                env_prefix: &env_prefix,
                local,
                credential: chosen.as_ref(),
                server_name: &server_name_for_client,
                oauth_scopes,
            },
            tools,
        );
        self.report.tools = spec.tools.len();
        self.report.estimate_tokens(&spec.tools);
        let text = self.render(&spec, &info, &title)?;
        for note in self.resolver.take_notes() {
            self.report.warn(note);
        }
        Ok(Imported {
            spec: text,
            report: self.report,
        })
    }
}

impl Importer<'_> {
    /// Why no tool came out, and what to do about it.
    fn nothing_imported(&self) -> String {
        let operations = self
            .doc
            .get("paths")
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|paths| paths.values())
            .map(|item| METHODS.iter().filter(|m| item.get(**m).is_some()).count())
            .sum::<usize>();
        let o = self.options;
        let filtered = !(o.tags.is_empty()
            && o.paths.is_empty()
            && o.methods.is_empty()
            && o.operation_ids.is_empty());
        if !self.report.skipped.is_empty() {
            format!(
                "no operation was imported; every one was skipped: {}",
                self.report.skipped_summary()
            )
        } else if operations == 0 {
            let webhooks = self
                .doc
                .get("webhooks")
                .and_then(Value::as_object)
                .map_or(0, Map::len);
            format!(
                "no operation was imported: the document declares no operations under `paths`{}; there is nothing a tool could call",
                if webhooks > 0 {
                    format!(" (its {webhooks} webhooks are calls the API makes to you)")
                } else {
                    String::new()
                }
            )
        } else if filtered {
            format!(
                "no operation was imported: --tag, --path, --method and --operation-id kept none of the document's {operations} operations; check them against its tags, paths and operationIds"
            )
        } else {
            "no operation was imported".to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::naming::{derived_name, shorten, snake};
    use super::operations::glob_match;
    use std::collections::BTreeSet;

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
