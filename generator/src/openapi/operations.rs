//! Operations: one tool per selected operation, with its inputs (body properties, path,
//! query and header parameters), path template, name, description, annotations, scopes
//! and output schema.

use std::collections::{BTreeMap, BTreeSet};

use indexmap::IndexMap;

use serde_json::{Map, Value, json};

use super::naming::{clip, derived_name, is_scope_token, is_tool_name, snake, unique_field};
use super::output::{AnnotationsOut, BodyOut, HttpOut, RunOut, ToolOut};
use super::schema::{SPEC_MAX_DEPTH, object_properties};
use super::security::{Credential, credential_params};
use super::{
    Importer, MAX_DESCRIPTION, MAX_OUTPUT_SCHEMA_BYTES, MAX_PARAM_DESCRIPTION, METHODS, Override,
};

/// Tools (as compact JSON) past which the spec cannot fit in `spec::MAX_SPEC_BYTES`, with
/// room for YAML being larger than JSON.
const MAX_TOOLS_JSON_BYTES: usize = 2 * crate::spec::MAX_SPEC_BYTES;

/// Where a parameter goes (OpenAPI's `in`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Location {
    Path,
    Query,
    Header,
    Cookie,
}

impl Location {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "path" => Some(Self::Path),
            "query" => Some(Self::Query),
            "header" => Some(Self::Header),
            "cookie" => Some(Self::Cookie),
            _ => None,
        }
    }

    /// OpenAPI's name for it, also the prefix of a renamed field (`query_limit`).
    fn as_str(self) -> &'static str {
        match self {
            Self::Path => "path",
            Self::Query => "query",
            Self::Header => "header",
            Self::Cookie => "cookie",
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One field of a tool's input.
struct Field {
    name: String,
    schema: Value,
    required: bool,
}

/// A tool's inputs as they are collected, and where each goes.
#[derive(Default)]
struct Inputs {
    fields: Vec<Field>,
    /// Field names in use.
    taken: BTreeSet<String>,
    body: Option<BodyOut>,
    /// The body is a URL-encoded form.
    form: bool,
    /// Path placeholder -> field.
    path_vars: BTreeMap<String, String>,
    query: IndexMap<String, String>,
    headers: IndexMap<String, String>,
}

impl Importer<'_> {
    /// One tool per selected operation, in document order; the others are reported.
    /// Refused as soon as the tools clearly cannot fit in a spec (a huge document fails in
    /// seconds, not after every operation is resolved).
    pub(super) fn tools(
        &mut self,
        credentials: &[Credential],
        chosen: Option<&Credential>,
    ) -> Result<Vec<ToolOut>, String> {
        let mut tools = Vec::new();
        let mut names = BTreeSet::new();
        let mut bytes = 0usize;
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
                let at = Operation {
                    key: &key,
                    path,
                    method,
                };
                match self.operation(&at, &item, op, (credentials, chosen), &mut names) {
                    Ok(Some(tool)) => {
                        bytes += serde_json::to_string(&tool).map_or(0, |t| t.len());
                        tools.push(tool);
                        if bytes > MAX_TOOLS_JSON_BYTES {
                            return Err(format!(
                                "the imported spec would be far over bmm's {} MiB limit for a spec: the first {} tools already take {} MiB of JSON: import fewer operations with --tag, --path, --method or --operation-id, or split the API into several servers",
                                crate::spec::MAX_SPEC_BYTES >> 20,
                                tools.len(),
                                bytes >> 20
                            ));
                        }
                    }
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
        Ok(tools)
    }

    /// The tool for one operation; `None` when the filters or `disabled` leave it out,
    /// `Err` (the reason it is skipped) when bmm cannot call it.
    fn operation(
        &mut self,
        at: &Operation<'_>,
        item: &Value,
        op: &Value,
        (credentials, chosen): (&[Credential], Option<&Credential>),
        names: &mut BTreeSet<String>,
    ) -> Result<Option<ToolOut>, String> {
        let Operation { key, path, method } = *at;
        let operation_id = op.get("operationId").and_then(Value::as_str);
        if !self.selected(at, op, operation_id) {
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
        let params = self.parameters(item, &op)?;
        let credential_params = credential_params(credentials);

        // Body first: its property names are JSON keys and cannot be renamed.
        let mut inputs = Inputs::default();
        self.request_body(key, &op, &mut inputs)?;
        for p in &params {
            self.parameter(key, p, &credential_params, &mut inputs)?;
        }
        let path_template = self.path_template(path, &mut inputs)?;

        let name = self.tool_name(at, &user, &ext, operation_id, names);
        names.insert(name.clone());
        let description = match user.description.as_deref().map(str::trim) {
            Some(d) if !d.is_empty() => clip(d, MAX_DESCRIPTION),
            _ => describe(op.as_object().unwrap_or(&Map::new()), method, path),
        };
        let annotations = annotations(method, &ext);
        let scopes = self.scopes(key, &ext);
        let mut input = input_schema(&inputs.fields);
        self.repaired(key, "input", &mut input);
        let output = self.bounded_output_schema(key, &op).map(|mut output| {
            self.repaired(key, "output", &mut output);
            output
        });
        // What the upstream's OAuth token needs for this operation (crate::openapi::security).
        let oauth_scopes = chosen
            .filter(|c| c.oauth.is_some())
            .and_then(|c| self.requirement_scopes(key, &op, &c.scheme))
            .unwrap_or_default();
        Ok(Some(ToolOut {
            name,
            description,
            annotations,
            scopes,
            input,
            output,
            oauth_scopes,
            run: RunOut {
                http: HttpOut {
                    upstream: "api".into(),
                    method: method.to_ascii_uppercase(),
                    path: path_template,
                    query: inputs.query,
                    headers: inputs.headers,
                    body_format: (inputs.form && inputs.body.is_some()).then_some("form"),
                    body: inputs.body,
                    upstream_scopes: Vec::new(),
                },
            },
        }))
    }

    /// Whether the tag, path, method and operationId filters keep the operation.
    fn selected(&self, at: &Operation<'_>, op: &Value, operation_id: Option<&str>) -> bool {
        let tags: Vec<&str> = op
            .get("tags")
            .and_then(Value::as_array)
            .map(|t| t.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let o = &self.options;
        (o.tags.is_empty() || tags.iter().any(|t| o.tags.iter().any(|w| w == t)))
            && (o.paths.is_empty() || o.paths.iter().any(|g| glob_match(g, at.path)))
            && (o.methods.is_empty() || o.methods.iter().any(|m| m.eq_ignore_ascii_case(at.method)))
            && (o.operation_ids.is_empty()
                || operation_id.is_some_and(|id| o.operation_ids.iter().any(|w| w == id)))
    }

    /// The path item's parameters, overridden by the operation's (same name and `in`).
    fn parameters(&mut self, item: &Value, op: &Value) -> Result<Vec<Value>, String> {
        let mut params: Vec<Value> = Vec::new();
        for list in [item.get("parameters"), op.get("parameters")] {
            for p in list.and_then(Value::as_array).into_iter().flatten() {
                let p = self.resolver.resolve_bounded(p, &mut Vec::new())?;
                let id = (p.get("name").cloned(), p.get("in").cloned());
                params.retain(|q| (q.get("name").cloned(), q.get("in").cloned()) != id);
                params.push(p);
            }
        }
        Ok(params)
    }

    /// The request body: a JSON body (else a URL-encoded form) whose object properties
    /// become fields, or one `body` field holding the whole body.
    fn request_body(&mut self, key: &str, op: &Value, inputs: &mut Inputs) -> Result<(), String> {
        let Some(body) = op.get("requestBody") else {
            return Ok(());
        };
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
        inputs.form = form && media.is_some();
        let Some(media) = media else {
            if required {
                let kinds: Vec<&String> = content.map(|c| c.keys().collect()).unwrap_or_default();
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
            return Ok(());
        };
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
                inputs.taken.insert(name.clone());
                names.push(name.clone());
                inputs.fields.push(Field {
                    required: required && body_required.contains(&name),
                    name,
                    schema: prop,
                });
            }
            if form {
                self.form_encoding_warnings(key, &media, &inputs.fields);
            }
            inputs.body = (!names.is_empty()).then_some(BodyOut::Fields(names));
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
            let field = unique_field("body", "request", &mut inputs.taken);
            if let Some(obj) = schema.as_object_mut()
                && !obj.contains_key("description")
                && let Some(d) = body.get("description").and_then(Value::as_str)
            {
                obj.insert(
                    "description".into(),
                    Value::String(clip(d.trim(), MAX_PARAM_DESCRIPTION)),
                );
            }
            inputs.body = Some(BodyOut::Whole {
                field: field.clone(),
            });
            inputs.fields.push(Field {
                name: field,
                schema,
                required,
            });
        }
        Ok(())
    }

    /// One path, query or header parameter as a field; credentials, cookies and the
    /// headers OpenAPI says to ignore are not inputs.
    fn parameter(
        &mut self,
        key: &str,
        p: &Value,
        credential_params: &BTreeSet<(Location, String)>,
        inputs: &mut Inputs,
    ) -> Result<(), String> {
        let Some(name) = p.get("name").and_then(Value::as_str) else {
            return Ok(());
        };
        let Some(location) = p
            .get("in")
            .and_then(Value::as_str)
            .and_then(Location::parse)
        else {
            return Ok(());
        };
        let required = location == Location::Path || p.get("required") == Some(&Value::Bool(true));
        // OpenAPI: header parameters named Accept, Content-Type or Authorization "SHALL be
        // ignored"; credentials never become arguments.
        if credential_params.contains(&(location, name.to_ascii_lowercase()))
            || (location == Location::Header
                && ["authorization", "accept", "content-type"]
                    .iter()
                    .any(|h| name.eq_ignore_ascii_case(h)))
        {
            return Ok(());
        }
        if location == Location::Cookie
            || (location == Location::Header && name.eq_ignore_ascii_case("cookie"))
        {
            if required {
                return Err(format!(
                    "it needs the cookie `{}`; bmm HTTP tools do not send cookies",
                    clip(name, 60).escape_default()
                ));
            }
            return Ok(());
        }
        if location == Location::Header && !is_header_name(name) {
            return Err(format!(
                "header parameter `{}` is not a valid header name",
                clip(name, 60).escape_default()
            ));
        }
        let field = unique_field(&snake(name), location.as_str(), &mut inputs.taken);
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
                let default_form = matches!(style, None | Some("form")) && explode != Some(false);
                let default_simple = matches!(style, None | Some("simple"));
                if location != Location::Query && !default_simple {
                    self.report.warn(format!(
                        "{key}: {location} parameter `{}` is declared `style: {}`; bmm joins arrays with commas (`a,b`): check the upstream accepts that",
                        clip(name, 60).escape_default(),
                        style.unwrap_or("simple"),
                    ));
                }
                if location == Location::Query && !default_form {
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
                return Ok(());
            }
        }
        let template = format!("{{{field}}}");
        match location {
            Location::Path => {
                inputs.path_vars.insert(name.to_owned(), field.clone());
            }
            Location::Query => {
                inputs.query.insert(name.to_owned(), template);
            }
            Location::Header | Location::Cookie => {
                inputs.headers.insert(name.to_owned(), template);
            }
        }
        inputs.fields.push(Field {
            name: field,
            schema,
            required,
        });
        Ok(())
    }

    /// The override's name, then x-bmm's, then one from the operationId or method + path.
    fn tool_name(
        &mut self,
        at: &Operation<'_>,
        user: &Override,
        ext: &Value,
        operation_id: Option<&str>,
        names: &BTreeSet<String>,
    ) -> String {
        let max = self.options.max_name_len;
        let wanted = user
            .name
            .clone()
            .or_else(|| ext.get("name").and_then(Value::as_str).map(str::to_owned));
        match wanted {
            Some(n) if is_tool_name(&n, max) && !names.contains(&n) => n,
            Some(n) => {
                self.report.warn(format!(
                    "{}: the requested name `{}` is not `[a-z0-9_]` starting with a letter, at most {} long, or is taken; the derived name is used",
                    at.key,
                    clip(&n, 80).escape_default(),
                    max
                ));
                derived_name(operation_id, at.method, at.path, max, names)
            }
            None => derived_name(operation_id, at.method, at.path, max, names),
        }
    }

    /// x-bmm's scopes that are OAuth scope tokens; the others are reported.
    fn scopes(&mut self, key: &str, ext: &Value) -> Vec<String> {
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
        scopes
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

    /// The overrides file's entry for the operation (by `METHOD /path`, then operationId).
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

    /// The bmm path template for an OpenAPI path: `{param}` becomes `{field}`, other braces
    /// are escaped. A placeholder no parameter declares becomes a required string field.
    fn path_template(&mut self, path: &str, inputs: &mut Inputs) -> Result<String, String> {
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
            let field = match inputs.path_vars.get(name) {
                Some(f) => f.clone(),
                None => {
                    let f = unique_field(&snake(name), Location::Path.as_str(), &mut inputs.taken);
                    self.report.warn(format!(
                        "path `{}`: parameter `{}` is not declared; it becomes a required string",
                        clip(path, 120).escape_default(),
                        clip(name, 60).escape_default()
                    ));
                    inputs.path_vars.insert(name.to_owned(), f.clone());
                    inputs.fields.push(Field {
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

    /// The output schema from the first 2xx JSON response (rule 7).
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

    /// `schema` repaired (`Importer::repair`), with a report line for each kind of repair.
    fn repaired(&mut self, key: &str, which: &str, schema: &mut Value) {
        let repairs = self.repair(schema);
        if repairs.is_empty() {
            return;
        }
        let list = |items: &[String]| {
            let mut shown: Vec<String> = items
                .iter()
                .take(3)
                .map(|i| format!("`{}`", clip(i, 60).escape_default()))
                .collect();
            if items.len() > 3 {
                shown.push(format!("and {} more", items.len() - 3));
            }
            shown.join(", ")
        };
        if !repairs.unknown_required.is_empty() {
            self.report.warn(format!(
                "{key}: the {which} schema requires {}, which the document lists in `required` but not among the properties beside it; dropped from `required`",
                list(&repairs.unknown_required)
            ));
        }
        if !repairs.bad_patterns.is_empty() {
            self.report.warn(format!(
                "{key}: the {which} schema's pattern {} is not a regular expression the server's validator accepts (ECMA-262 as the `jsonschema` crate reads it); dropped, so the value is not checked against it",
                list(&repairs.bad_patterns)
            ));
        }
        if !repairs.invalid.is_empty() {
            self.report.warn(format!(
                "{key}: the {which} schema has keywords the server's validator refuses, dropped: {}",
                list(&repairs.invalid)
            ));
        }
        if repairs.cut > 0 || repairs.dropped_values > 0 {
            self.report.warn(format!(
                "{key}: the {which} schema nests deeper than a bmm spec may ({SPEC_MAX_DEPTH} levels): {} schema(s) below that depth are open ones saying so{}",
                repairs.cut,
                if repairs.dropped_values > 0 {
                    format!(", and {} deep value(s) (`enum`, `default`, ...) are dropped", repairs.dropped_values)
                } else {
                    String::new()
                }
            ));
        }
    }

    /// The output schema, unless it is over the size kept (then reported).
    fn bounded_output_schema(&mut self, key: &str, op: &Value) -> Option<Value> {
        self.output_schema(op).filter(|schema| {
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
        })
    }
}

/// Which operation a tool comes from.
#[derive(Clone, Copy)]
struct Operation<'a> {
    /// `METHOD /path`, for messages and overrides.
    key: &'a str,
    path: &'a str,
    /// Lowercase, as OpenAPI keys it.
    method: &'a str,
}

/// Annotations from the method (rule 6), then x-bmm's.
fn annotations(method: &str, ext: &Value) -> AnnotationsOut {
    let mut annotations = AnnotationsOut {
        read_only: matches!(method, "get").then_some(true),
        destructive: matches!(method, "delete").then_some(true),
        idempotent: matches!(method, "get" | "put" | "delete").then_some(true),
        open_world: Some(true),
    };
    if let Some(a) = ext.get("annotations").and_then(Value::as_object) {
        let flag = |k1: &str, k2: &str| a.get(k1).or_else(|| a.get(k2)).and_then(Value::as_bool);
        annotations.read_only = flag("read_only", "readOnlyHint").or(annotations.read_only);
        annotations.destructive =
            flag("destructive", "destructiveHint").or(annotations.destructive);
        annotations.idempotent = flag("idempotent", "idempotentHint").or(annotations.idempotent);
        annotations.open_world = flag("open_world", "openWorldHint").or(annotations.open_world);
    }
    annotations
}

/// The tool's input schema: an object of the fields, closed.
fn input_schema(fields: &[Field]) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for f in fields {
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
    Value::Object(input)
}

/// The tool description: summary and description, or method and path; `Deprecated.` first
/// when it is.
fn describe(op: &Map<String, Value>, method: &str, path: &str) -> String {
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
/// `*` matches within a path segment, `**` across segments.
pub(super) fn glob_match(pattern: &str, text: &str) -> bool {
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
