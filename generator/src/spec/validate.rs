//! Semantic checks of a parsed spec. Every rule produces a diagnostic with the position of
//! the offending value and what to do; nothing here panics on any input.
//!
//! Rules:
//! 1. `server.name` is a crate-style name (`[a-z][a-z0-9-]*`, at most 48 characters);
//!    `server.version` is `MAJOR.MINOR.PATCH`.
//! 2. Tool, resource and prompt names are unique; tool names use `[A-Za-z0-9_.-]`, 1 to 128
//!    characters, with a warning past 64 (clients prefix them).
//! 3. `input` and `output` are JSON Schema objects whose root has `type: object`; the
//!    `input` schema compiles as JSON Schema 2020-12 exactly as the server will compile it
//!    at start-up to validate every call (`$ref`s resolve inside the schema only).
//! 4. `{placeholders}` in path, query and header templates name input properties.
//! 5. Secrets and upstreams referenced anywhere are declared; upstream auth names a header
//!    or query parameter when its type needs one.
//! 6. Upstream base URLs are `https` unless the upstream is marked `local: true`; a base
//!    URL carries no credentials, query or fragment.
//! 7. `rust` tools name a function: a Rust identifier, not a keyword, unique in the spec.
//! 8. Scopes are RFC 6749 scope tokens; per-tool scopes outside `scopes_supported` warn.
//! 9. Resources have exactly one of `uri` and `uri_template`; a static one has exactly
//!    one of `text` and `blob` (valid base64); a template has `text` whose placeholders
//!    are variables of the URI template, and completions only for its variables.
//! 10. Prompt placeholders name declared arguments; embedded resources name declared URIs.
//! 11. A tool's `rate_limit` is a rate `bmm_core::Rate` parses (`10/min`, `2/s`, `100/hour`).
//! 12. An upstream's `auth:` takes the keys of its type and describes a usable OAuth
//!     client for the OAuth types (the rules are in `upstream_auth`).
//! 13. A tool's `upstream_scopes` are scope tokens, only on an upstream whose auth is
//!     `token_exchange` or `client_credentials` (a user consents once, to the upstream's
//!     `scopes`); `run: { disconnect: <upstream> }` names a `user_oauth` upstream and
//!     declares no `output` (its result is text).

use std::collections::{BTreeMap, BTreeSet};

use bmm_core::server_name::SERVER_NAME_RULE;
use bmm_core::{is_scope_token, is_server_name, template};
use serde_json::Value;
use serde_saphyr::Spanned;

use super::diagnostic::{Diagnostic, at};
use super::model::{Body, BodyFormat, Run, Spec, UpstreamAuthKind};

mod upstream_auth;

const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut",
    "pub", "ref", "return", "self", "static", "struct", "super", "trait", "true", "type", "unsafe",
    "use", "where", "while", "abstract", "become", "box", "do", "final", "macro", "override",
    "priv", "try", "typeof", "unsized", "virtual", "yield", "main",
];

/// Runs every rule; returns errors and warnings in spec order.
pub fn validate(file: &str, spec: &Spec) -> Vec<Diagnostic> {
    let mut v = Checker {
        file,
        out: Vec::new(),
    };
    v.server(spec);
    v.auth(spec);
    v.upstreams(spec);
    v.tools(spec);
    v.resources(spec);
    v.prompts(spec);
    v.out
}

struct Checker<'a> {
    file: &'a str,
    out: Vec<Diagnostic>,
}

/// The `{name}` placeholders of a template, or the reason it is malformed (`{{` and `}}`
/// are literal braces; the runtime renders templates with the same parser).
pub fn placeholders(template: &str) -> Result<Vec<&str>, String> {
    template::parse(template)
        .map(|segments| {
            segments
                .into_iter()
                .filter_map(|s| match s {
                    template::Segment::Var(name) => Some(name),
                    _ => None,
                })
                .collect()
        })
        .map_err(|e| e.0)
}

/// Compiles a tool's input schema with the function the server calls at start-up
/// (`bmm_core::input_schema::compile`): a schema that passes here never stops the generated
/// server from starting.
fn compile_input_schema(tool: &str, schema: &Value) -> Result<(), String> {
    bmm_core::input_schema::compile(tool, schema).map(drop)
}

fn object_properties(schema: &Value) -> BTreeSet<String> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

impl Checker<'_> {
    fn error<T>(
        &mut self,
        value: &Spanned<T>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.out
            .push(Diagnostic::error(self.file, at(value), message).help(help));
    }

    fn warning<T>(
        &mut self,
        value: &Spanned<T>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.out
            .push(Diagnostic::warning(self.file, at(value), message).help(help));
    }

    fn server(&mut self, spec: &Spec) {
        let name = &spec.server.name;
        if !is_server_name(&name.value) {
            self.error(
                name,
                format!(
                    "server name `{}` is not a valid crate name",
                    name.value.escape_default()
                ),
                format!("use {SERVER_NAME_RULE} (e.g. `weather-tools`)"),
            );
        }
        let version = &spec.server.version;
        let parts: Vec<&str> = version.value.split('.').collect();
        if parts.len() != 3
            || parts
                .iter()
                .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            self.error(
                version,
                format!(
                    "server version `{}` is not MAJOR.MINOR.PATCH",
                    version.value.escape_default()
                ),
                "write it like `0.1.0`",
            );
        }
        if let Some(v) = &spec.spec_version
            && v.value != 1
        {
            self.error(
                v,
                format!("spec_version {} is not supported", v.value),
                "this bmm reads spec_version 1",
            );
        }
    }

    fn auth(&mut self, spec: &Spec) {
        let auth = &spec.auth;
        let hierarchy_targets = auth.hierarchy.values().flatten();
        for scope in auth
            .scopes_supported
            .iter()
            .chain(&auth.required)
            .chain(hierarchy_targets)
        {
            self.scope_token(scope);
        }
        if auth
            .scopes_supported
            .iter()
            .any(|s| s.value == "offline_access")
        {
            let s = auth
                .scopes_supported
                .iter()
                .find(|s| s.value == "offline_access");
            if let Some(s) = s {
                self.error(
                    s,
                    "`offline_access` does not belong in scopes_supported",
                    "refresh tokens are the authorization server's business; remove it",
                );
            }
        }
        for broader in auth.hierarchy.keys() {
            if !is_scope_token(broader) {
                self.out.push(
                    Diagnostic::error(
                        self.file,
                        serde_saphyr::Location::UNKNOWN,
                        format!(
                            "hierarchy key `{}` is not a scope token",
                            broader.escape_default()
                        ),
                    )
                    .help("scopes are printable ASCII without spaces, quotes or backslashes"),
                );
            }
        }
    }

    fn scope_token(&mut self, scope: &Spanned<String>) {
        if !is_scope_token(&scope.value) {
            self.error(scope, format!("`{}` is not a scope token", scope.value.escape_default()), "scopes are printable ASCII without spaces, quotes or backslashes (RFC 6749 section 3.3)");
        }
    }

    fn upstreams(&mut self, spec: &Spec) {
        for (id, upstream) in &spec.upstreams {
            let u = &upstream.value;
            match url::Url::parse(&u.base_url.value) {
                Err(e) => self.error(
                    &u.base_url,
                    format!("base_url of upstream `{id}` is not a URL: {e}"),
                    "write an absolute URL like `https://api.example.com/v1`",
                ),
                Ok(url) => {
                    if url.scheme() != "https" && !(url.scheme() == "http" && u.local) {
                        self.error(
                            &u.base_url,
                            format!(
                                "upstream `{id}` uses `{}`; only https is allowed",
                                url.scheme()
                            ),
                            "use https, or add `local: true` for a local development upstream",
                        );
                    }
                    if !url.username().is_empty()
                        || url.password().is_some()
                        || url.query().is_some()
                        || url.fragment().is_some()
                    {
                        self.error(&u.base_url, format!("base_url of upstream `{id}` carries credentials, a query or a fragment"), "put credentials in a declared secret (`auth:`) and parameters in the tools");
                    }
                }
            }
            if let Some(env) = &u.base_url_env
                && !is_env_name(&env.value)
            {
                self.error(
                    env,
                    format!(
                        "`{}` is not an environment variable name",
                        env.value.escape_default()
                    ),
                    "use uppercase letters, digits and `_`",
                );
            }
            self.upstream_auth(spec, id, upstream);
            if let Some(t) = &u.timeout_ms
                && (t.value == 0 || t.value > 300_000)
            {
                self.error(
                    t,
                    "timeout_ms must be between 1 and 300000",
                    "the default is 15000",
                );
            }
        }
        for (name, secret) in &spec.secrets {
            if !is_env_name(name) {
                self.error(
                    secret,
                    format!(
                        "secret name `{}` is not an environment variable name",
                        name.escape_default()
                    ),
                    "use uppercase letters, digits and `_`, starting with a letter",
                );
            }
        }
    }

    fn tools(&mut self, spec: &Spec) {
        let mut names: BTreeMap<&str, &Spanned<String>> = BTreeMap::new();
        let mut functions: BTreeMap<&str, &Spanned<String>> = BTreeMap::new();
        let supported: BTreeSet<&str> = spec
            .auth
            .scopes_supported
            .iter()
            .map(|s| s.value.as_str())
            .collect();
        for tool in &spec.tools {
            let name = &tool.name;
            let n = name.value.as_str();
            if n.is_empty()
                || n.len() > 128
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            {
                self.error(
                    name,
                    format!("tool name `{}` is invalid", n.escape_default()),
                    "use 1 to 128 of `A-Z a-z 0-9 _ . -` (MCP tool name rules)",
                );
            } else if n.len() > 64 {
                self.warning(
                    name,
                    format!("tool name `{n}` is {} characters long", n.len()),
                    "some clients prefix tool names and cut them at 64 characters; shorten it",
                );
            }
            if let Some(first) = names.insert(n, name) {
                let line = first.referenced.line();
                self.error(
                    name,
                    format!("tool `{n}` is defined twice (first on line {line})"),
                    "give each tool a unique name",
                );
            }
            if tool.description.value.trim().is_empty() {
                self.error(
                    &tool.description,
                    format!("tool `{n}` has an empty description"),
                    "say what the tool does: the model chooses tools by their descriptions",
                );
            }
            for scope in &tool.scopes {
                self.scope_token(scope);
                if !supported.is_empty() && !supported.contains(scope.value.as_str()) {
                    self.warning(
                        scope,
                        format!(
                            "tool `{n}` needs scope `{}`, which is not in auth.scopes_supported",
                            scope.value
                        ),
                        "add it to scopes_supported so clients know to ask for it",
                    );
                }
            }
            if let Some(rate) = &tool.rate_limit
                && let Err(e) = bmm_core::Rate::parse(&rate.value)
            {
                self.error(
                    rate,
                    format!("tool `{n}` has an invalid rate_limit: {e}"),
                    "write `rate_limit: 10/min` (or `/s`, `/hour`): calls one caller may make; the count is also the burst",
                );
            }
            let input_ok = self.object_schema(&tool.input, n, "input");
            if input_ok && let Err(e) = compile_input_schema(n, &tool.input.value) {
                self.error(
                    &tool.input,
                    e,
                    "fix the schema: the server validates every call's arguments against it and refuses to start with a schema that does not compile; `$ref`s resolve only inside the schema (`$defs`), nothing is fetched",
                );
            }
            if let Some(output) = &tool.output {
                self.object_schema(output, n, "output");
            }
            let properties = if input_ok {
                object_properties(&tool.input.value)
            } else {
                BTreeSet::new()
            };
            match &tool.run.value {
                Run::Http(http) => {
                    let upstream = spec.upstreams.get(&http.upstream.value);
                    if upstream.is_none() {
                        self.error(
                            &http.upstream,
                            format!(
                                "tool `{n}` calls upstream `{}`, which is not declared",
                                http.upstream.value
                            ),
                            "declare it under `upstreams:`",
                        );
                    }
                    let upstream_kind = upstream
                        .and_then(|u| u.value.auth.as_ref())
                        .map(|a| a.kind.value);
                    if let Some(first) = http.upstream_scopes.first()
                        && !matches!(
                            upstream_kind,
                            Some(
                                UpstreamAuthKind::TokenExchange
                                    | UpstreamAuthKind::ClientCredentials
                            )
                        )
                        && upstream.is_some()
                    {
                        let help = if upstream_kind == Some(UpstreamAuthKind::UserOauth) {
                            "a user grants a `user_oauth` upstream's `scopes` once, when connecting: list them there and remove `upstream_scopes`"
                        } else {
                            "only tokens the server asks for per call (`token_exchange`, `client_credentials`) have scopes; remove `upstream_scopes` or change the upstream's auth"
                        };
                        self.error(
                            first,
                            format!(
                                "tool `{n}` sets `upstream_scopes`, but upstream `{}` has {} auth",
                                http.upstream.value,
                                upstream_kind.map_or("no OAuth", UpstreamAuthKind::as_str)
                            ),
                            help,
                        );
                    }
                    for scope in &http.upstream_scopes {
                        self.scope_token(scope);
                    }
                    if !http.path.value.starts_with('/') {
                        self.error(
                            &http.path,
                            format!(
                                "path `{}` must start with `/`",
                                http.path.value.escape_default()
                            ),
                            "it is appended to the upstream's base_url",
                        );
                    }
                    let templates = std::iter::once(&http.path)
                        .chain(http.query.values())
                        .chain(http.headers.values());
                    for template in templates {
                        self.template(template, &properties, n, input_ok);
                    }
                    for header in http.headers.keys() {
                        if header.eq_ignore_ascii_case("authorization")
                            || header.eq_ignore_ascii_case("cookie")
                        {
                            self.error(&http.path, format!("tool `{n}` sets the `{header}` header from input"), "credentials come from declared secrets through the upstream's `auth:`, never from tool arguments");
                        }
                    }
                    if let Some(body) = &http.body {
                        match &body.value {
                            Body::Keyword(k) if k == "all" => {}
                            Body::Keyword(k) => self.error(
                                body,
                                format!(
                                    "body `{}` is neither a list of fields nor `all`",
                                    k.escape_default()
                                ),
                                "write `body: all`, `body: [field, other]` or `body: { field: name }`",
                            ),
                            Body::Whole(whole) => {
                                if input_ok && !properties.contains(&whole.field) {
                                    self.error(body, format!("body field `{}` is not an input property of tool `{n}`", whole.field.escape_default()), "name a property declared under `input.properties`");
                                }
                            }
                            Body::Fields(fields) => {
                                for f in fields {
                                    if input_ok && !properties.contains(f) {
                                        self.error(body, format!("body field `{}` is not an input property of tool `{n}`", f.escape_default()), "list properties declared under `input.properties`");
                                    }
                                }
                            }
                        }
                    }
                    if let Some(format) = &http.body_format
                        && format.value == BodyFormat::Form
                        && let Some(body) = &http.body
                        && let Body::Whole(whole) = &body.value
                        && let Some(kind) = tool.input.value.pointer(&format!(
                            "/properties/{}/type",
                            whole.field.replace('~', "~0").replace('/', "~1")
                        ))
                        && !(kind == "object"
                            || kind
                                .as_array()
                                .is_some_and(|k| k.contains(&"object".into())))
                    {
                        self.error(
                            body,
                            format!(
                                "tool `{n}` sends `{}` as a form body, but its type is not `object`",
                                whole.field.escape_default()
                            ),
                            "a form body is an object of fields: make the property an object, or use `body: [fields]`",
                        );
                    }
                    if let Some(format) = &http.body_format
                        && format.value == BodyFormat::Form
                        && http.body.is_none()
                    {
                        self.error(
                            format,
                            format!("tool `{n}` sets `body_format: form` but sends no body"),
                            "add `body: [fields]`, `body: all` or `body: { field: x }`, or remove `body_format`",
                        );
                    }
                    if let Some(response) = &http.response {
                        for pointer in response.map.values() {
                            if !(pointer.value.is_empty() || pointer.value.starts_with('/')) {
                                self.error(
                                    pointer,
                                    format!(
                                        "`{}` is not a JSON pointer",
                                        pointer.value.escape_default()
                                    ),
                                    "JSON pointers start with `/`, like `/main/temp` (RFC 6901)",
                                );
                            }
                        }
                    }
                }
                Run::Disconnect(target) => {
                    match spec.upstreams.get(&target.value) {
                        None => self.error(
                            target,
                            format!(
                                "tool `{n}` disconnects upstream `{}`, which is not declared",
                                target.value.escape_default()
                            ),
                            "name a `user_oauth` upstream declared under `upstreams:`",
                        ),
                        Some(u) => {
                            let kind = u.value.auth.as_ref().map(|a| a.kind.value);
                            if kind != Some(UpstreamAuthKind::UserOauth) {
                                self.error(
                                    target,
                                    format!(
                                        "tool `{n}` disconnects upstream `{}`, whose auth is {}",
                                        target.value,
                                        kind.map_or("not OAuth", UpstreamAuthKind::as_str)
                                    ),
                                    "only `user_oauth` upstreams keep a connection per user: name one of those, or remove the tool",
                                );
                            }
                        }
                    }
                    if let Some(output) = &tool.output {
                        self.error(
                            output,
                            format!("disconnect tool `{n}` declares an `output` schema"),
                            "its result is a sentence saying whether a connection was forgotten: remove `output`",
                        );
                    }
                }
                Run::Rust(rust) => {
                    match &rust.function {
                        None => self.error(&tool.run, format!("rust tool `{n}` names no function"), "add `fn: my_function` (the user file becomes src/tools/my_function.rs)"),
                        Some(f) => {
                            let id = f.value.as_str();
                            if !is_function_name(id) {
                                self.error(f, format!("`{}` is not a usable Rust function name", id.escape_default()), "use snake_case letters, digits and `_`, not a Rust keyword");
                            } else if let Some(first) = functions.insert(id, f) {
                                let line = first.referenced.line();
                                self.error(f, format!("function `{id}` is used by two tools (first on line {line})"), "each rust tool has its own function and user file");
                            }
                        }
                    }
                    for u in &rust.upstreams {
                        if !spec.upstreams.contains_key(&u.value) {
                            self.error(
                                u,
                                format!(
                                    "tool `{n}` uses upstream `{}`, which is not declared",
                                    u.value
                                ),
                                "declare it under `upstreams:`",
                            );
                        }
                    }
                }
            }
        }
    }

    fn object_schema(&mut self, schema: &Spanned<Value>, tool: &str, which: &str) -> bool {
        let Some(object) = schema.value.as_object() else {
            self.error(
                schema,
                format!("the {which} schema of tool `{tool}` is not a mapping"),
                "write a JSON Schema object: `type: object` with `properties:`",
            );
            return false;
        };
        if object.get("type").and_then(Value::as_str) != Some("object") {
            self.error(schema, format!("the {which} schema of tool `{tool}` does not have `type: object` at its root"), "MCP tool arguments and structured results are objects; wrap other values in a property");
            return false;
        }
        if let Some(props) = object.get("properties")
            && !props.is_object()
        {
            self.error(
                schema,
                format!("`properties` in the {which} schema of tool `{tool}` is not a mapping"),
                "map each property name to its schema",
            );
            return false;
        }
        if let Some(required) = object.get("required") {
            let props = object_properties(&schema.value);
            match required.as_array() {
                Some(items) => {
                    for r in items {
                        match r.as_str() {
                            // With no `properties` at all the schema is open; nothing to compare.
                            Some(r) if !props.is_empty() && !props.contains(r) => self.error(schema, format!("the {which} schema of tool `{tool}` requires `{}`, which is not among its properties", r.escape_default()), "add the property or remove it from `required`"),
                            Some(_) => {}
                            None => self.error(schema, format!("`required` in the {which} schema of tool `{tool}` holds a non-string"), "list property names"),
                        }
                    }
                }
                None => self.error(
                    schema,
                    format!("`required` in the {which} schema of tool `{tool}` is not a list"),
                    "list property names",
                ),
            }
        }
        true
    }

    fn template(
        &mut self,
        template: &Spanned<String>,
        properties: &BTreeSet<String>,
        tool: &str,
        check_names: bool,
    ) {
        match placeholders(&template.value) {
            Err(reason) => self.error(
                template,
                format!(
                    "template `{}` of tool `{tool}` is malformed: {reason}",
                    template.value.escape_default()
                ),
                "placeholders look like `{field}`",
            ),
            Ok(names) => {
                for name in names {
                    if check_names && !properties.contains(name) {
                        self.error(template, format!("placeholder `{{{name}}}` of tool `{tool}` names no input property"), format!("declare `{name}` under the tool's `input.properties`, or fix the spelling"));
                    }
                }
            }
        }
    }

    fn resources(&mut self, spec: &Spec) {
        let mut names = BTreeSet::new();
        let mut uris = BTreeSet::new();
        for r in &spec.resources {
            if !names.insert(r.name.value.as_str()) {
                self.error(
                    &r.name,
                    format!(
                        "resource name `{}` is used twice",
                        r.name.value.escape_default()
                    ),
                    "give each resource a unique name",
                );
            }
            match (&r.uri, &r.uri_template) {
                (Some(uri), None) => {
                    if url::Url::parse(&uri.value).is_err() {
                        self.error(uri, format!("`{}` is not an absolute URI", uri.value.escape_default()), "resource URIs look like `file:///notes/readme.md` or `test://static-text`");
                    }
                    if !uris.insert(uri.value.as_str()) {
                        self.error(
                            uri,
                            format!(
                                "resource URI `{}` is used twice",
                                uri.value.escape_default()
                            ),
                            "each resource has its own URI",
                        );
                    }
                    if !r.completions.is_empty() {
                        self.error(
                            uri,
                            "completions belong to resource templates",
                            "remove `completions`, or use `uri_template`",
                        );
                    }
                    match (&r.text, &r.blob) {
                        (Some(_), None) => {}
                        (None, Some(blob)) => {
                            if !is_base64(&blob.value) {
                                self.error(
                                    blob,
                                    "`blob` is not valid base64",
                                    "encode binary content with standard base64",
                                );
                            }
                        }
                        _ => self.error(
                            uri,
                            format!(
                                "static resource `{}` needs exactly one of `text` and `blob`",
                                r.name.value.escape_default()
                            ),
                            "give its content as `text:` or as base64 `blob:`",
                        ),
                    }
                }
                (None, Some(template)) => {
                    if r.subscribe {
                        self.error(
                            template,
                            "a resource template cannot be subscribed to",
                            "remove `subscribe: true`, or declare a static resource with `uri`",
                        );
                    }
                    let vars: BTreeSet<&str> = match placeholders(&template.value) {
                        Err(reason) => {
                            self.error(
                                template,
                                format!(
                                    "URI template `{}` is malformed: {reason}",
                                    template.value.escape_default()
                                ),
                                "templates look like `notes://{id}` (simple `{name}` variables only)",
                            );
                            BTreeSet::new()
                        }
                        Ok(v) => v.into_iter().collect(),
                    };
                    if r.blob.is_some() {
                        self.error(
                            template,
                            "a resource template has `text`, not `blob`",
                            "templated content is text with `{variable}` placeholders",
                        );
                    }
                    match &r.text {
                        None => self.error(template, format!("resource template `{}` needs `text`", r.name.value.escape_default()), "give the content as `text:`, with `{variable}` placeholders filled from the URI"),
                        Some(text) => match placeholders(&text.value) {
                            Err(reason) => self.error(text, format!("the text of resource template `{}` is malformed: {reason}", r.name.value.escape_default()), "write `{{` and `}}` for literal braces (JSON text, for example)"),
                            Ok(found) => {
                                for name in found {
                                    if !vars.contains(name) {
                                        self.error(text, format!("placeholder `{{{name}}}` is not a variable of `{}`", template.value.escape_default()), "use a variable of the URI template, or write `{{` and `}}` for literal braces");
                                    }
                                }
                            }
                        },
                    }
                    for name in r.completions.keys() {
                        if !vars.contains(name.as_str()) {
                            self.error(template, format!("completions are given for `{}`, which is not a variable of `{}`", name.escape_default(), template.value.escape_default()), "completions are keyed by URI template variable");
                        }
                    }
                }
                _ => self.error(
                    &r.name,
                    format!(
                        "resource `{}` needs exactly one of `uri` and `uri_template`",
                        r.name.value.escape_default()
                    ),
                    "a static resource has a `uri`; a template has a `uri_template`",
                ),
            }
        }
    }

    fn prompts(&mut self, spec: &Spec) {
        let uris: BTreeSet<&str> = spec
            .resources
            .iter()
            .filter_map(|r| r.uri.as_ref())
            .map(|u| u.value.as_str())
            .collect();
        let mut functions: BTreeSet<&str> = spec
            .tools
            .iter()
            .filter_map(|t| match &t.run.value {
                Run::Rust(r) => r.function.as_ref().map(|f| f.value.as_str()),
                Run::Http(_) | Run::Disconnect(_) => None,
            })
            .collect();
        let mut names = BTreeSet::new();
        for p in &spec.prompts {
            if !names.insert(p.name.value.as_str()) {
                self.error(
                    &p.name,
                    format!(
                        "prompt `{}` is defined twice",
                        p.name.value.escape_default()
                    ),
                    "give each prompt a unique name",
                );
            }
            let mut args = BTreeSet::new();
            for a in &p.arguments {
                if !args.insert(a.name.value.as_str()) {
                    self.error(
                        &a.name,
                        format!(
                            "prompt argument `{}` is declared twice",
                            a.name.value.escape_default()
                        ),
                        "argument names are unique per prompt",
                    );
                }
            }
            match (&p.function, p.messages.is_empty()) {
                (None, true) => self.error(
                    &p.name,
                    format!("prompt `{}` has no messages", p.name.value.escape_default()),
                    "add at least one message, or `fn: my_prompt` to write it in Rust",
                ),
                (Some(f), false) => self.error(
                    f,
                    format!(
                        "prompt `{}` has both `messages` and `fn`",
                        p.name.value.escape_default()
                    ),
                    "a prompt is either static messages or a Rust function",
                ),
                (Some(f), true) => {
                    let id = f.value.as_str();
                    if !is_function_name(id) {
                        self.error(
                            f,
                            format!(
                                "`{}` is not a usable Rust function name",
                                id.escape_default()
                            ),
                            "use snake_case letters, digits and `_`, not a Rust keyword",
                        );
                    } else if !functions.insert(id) {
                        self.error(
                            f,
                            format!("function `{id}` is used twice"),
                            "each rust tool and prompt has its own function and user file",
                        );
                    }
                }
                (None, false) => {}
            }
            for m in &p.messages {
                let kinds = usize::from(m.text.is_some())
                    + usize::from(m.resource.is_some())
                    + usize::from(m.image.is_some());
                if kinds != 1 {
                    self.error(&p.name, format!("a message of prompt `{}` needs exactly one of `text`, `resource` and `image`", p.name.value.escape_default()), "split mixed content into several messages");
                }
                if let Some(text) = &m.text {
                    match placeholders(&text.value) {
                        Err(reason) => self.error(
                            text,
                            format!("message text is malformed: {reason}"),
                            "placeholders look like `{argument}`",
                        ),
                        Ok(found) => {
                            for name in found {
                                if !args.contains(name) {
                                    self.error(text, format!("placeholder `{{{name}}}` names no argument of prompt `{}`", p.name.value.escape_default()), "declare it under `arguments:`");
                                }
                            }
                        }
                    }
                }
                if let Some(uri) = &m.resource
                    && !uris.contains(uri.value.as_str())
                {
                    self.error(
                        uri,
                        format!(
                            "embedded resource `{}` is not a declared static resource",
                            uri.value.escape_default()
                        ),
                        "declare it under `resources:` with a `uri`",
                    );
                }
                if let Some(image) = &m.image
                    && !is_base64(&image.data.value)
                {
                    self.error(
                        &image.data,
                        "image data is not valid base64",
                        "encode the image with standard base64",
                    );
                }
            }
        }
    }
}

/// A snake_case Rust identifier that is not a keyword (a function and a module name).
fn is_function_name(id: &str) -> bool {
    id.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && id != "_"
        && !RUST_KEYWORDS.contains(&id)
}

fn is_env_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_uppercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn is_base64(text: &str) -> bool {
    let t: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    !t.is_empty()
        && t.len().is_multiple_of(4)
        && t.trim_end_matches('=')
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        && t.len() - t.trim_end_matches('=').len() <= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_and_malformed_templates_refused() {
        assert_eq!(
            placeholders("/repos/{owner}/{repo}"),
            Ok(vec!["owner", "repo"])
        );
        assert_eq!(placeholders("/plain"), Ok(vec![]));
        assert!(placeholders("/x/{a").is_err());
        assert!(placeholders("/x/a}").is_err());
        assert!(placeholders("/x/{}").is_err());
        assert!(placeholders("/x/{a b}").is_err());
    }

    #[test]
    fn base64_and_env_names_are_checked() {
        assert!(is_base64("aGVsbG8="));
        assert!(!is_base64("not base64!"));
        assert!(is_env_name("OPENWEATHER_API_KEY"));
        assert!(!is_env_name("lower"));
    }
}
