//! Executing an HTTP tool: the request is built from the tool's templates and the caller's
//! arguments, sent with the server's own credential, and the response projected into the
//! result.
//!
//! Rules:
//! 1. Placeholders are filled from arguments and percent-encoded for their position; a query
//!    parameter whose template is a single absent placeholder is left out; any other
//!    missing argument is a tool error. An array argument whose placeholder is a query
//!    parameter's whole template becomes one pair per element (`tags=a&tags=b`, OpenAPI's
//!    default `form` style); anywhere else its elements are joined with commas (`simple`
//!    style; the joining comma is percent-encoded in a query, like any comma). An empty
//!    array counts as absent. Elements must be scalars; an object argument is a tool error.
//! 2. The credential comes from a declared secret (bearer, header or query), or is an
//!    OAuth token the caller of [`execute`] got for this call (crate::upstream_auth: token
//!    exchange, client credentials, a user's connection), sent as `Authorization: Bearer`
//!    marked sensitive. The MCP client's `Authorization` header is never forwarded: it is
//!    not even visible here. An upstream answering 401 is told apart ([`Failure`]) so the
//!    caller can renew an OAuth token and retry once.
//! 3. The final URL's host must be in the upstream's allow-list.
//! 4. Each attempt has the upstream's timeout; 429, 502 and 503 are retried up to the
//!    configured count, honouring `Retry-After` (capped at 10 s).
//! 5. Response bodies are read up to 4 MiB. A non-2xx status becomes a tool error with the
//!    status and a short excerpt of the body (300 characters), cut only after the whole
//!    body is redacted, so a secret straddling the cut never leaves even as a prefix
//!    (`secrets_are_redacted_before_an_error_excerpt_is_cut`).
//! 6. Bodies are JSON, or form-encoded when the tool says so ([`BodyFormat::Form`]: nested
//!    objects bracketed, at most 16 levels deep and 4 MiB encoded; a field name with a
//!    bracket is refused; null values and elements are left out).
//! 7. JSON responses become `structuredContent` (projected through the response map when
//!    there is one); other responses become text.
//! 8. A path placeholder's value can never change which path the template addresses: a
//!    value that is empty, `.` or `..`, or has a `.` or `..` piece between `/` or `\`
//!    separators (`a/../b`, `./x`) — also percent-encoded, in any case, any number of
//!    times (`%2e%2e`, `.%2E`, `%252e`, `a%2F..%2Fb`), since upstreams and proxies that
//!    decode `%2F` before resolving dot segments would honour it — is refused with
//!    invalid-params before any request; every other character outside RFC 3986's
//!    unreserved set (`/`, `?`, `#`, `\`, `%` included) is percent-encoded (`a/b` stays
//!    allowed, sent as `a%2Fb`); and the final URL's path must still start with the
//!    upstream's base path followed by the template's literal prefix
//!    (`path_placeholder_refuses_dot_segments`,
//!    `path_placeholder_refuses_encoded_dot_segments_between_separators`, and over a real
//!    socket `path_placeholder_never_reaches_another_upstream_path`).
//! 9. Secret values are redacted from every result: every string of structured content
//!    (object keys included), text, and error messages
//!    (`echoed_secrets_are_redacted_from_structured_content`). An OAuth token is one of
//!    them for its call: the caller passes secrets that include it
//!    (`Secrets::with_values`).

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Url;
use serde_json::{Map, Value};

use crate::def::{BodyDef, BodyFormat, HttpDef, Method, UpstreamAuthDef, UpstreamDef};
use crate::output::{ToolError, ToolOutput};
use crate::secrets::Secrets;
use crate::template::Segment;
use crate::traces::upstream::UpstreamTrace;
use crate::upstream_auth::Secret;

const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// A non-2xx body is quoted in the tool error up to this many characters.
const MAX_ERROR_EXCERPT: usize = 300;
/// Unreserved characters stay as they are (RFC 3986 section 2.3).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A resolved upstream: its definition and its effective base URL.
#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    pub(crate) def: UpstreamDef,
    pub(crate) base: Url,
    pub(crate) hosts: Vec<String>,
}

impl Upstream {
    /// Resolves the base URL (environment override first).
    pub(crate) fn resolve(
        def: UpstreamDef,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let text = def
            .base_url_env
            .and_then(&env)
            .unwrap_or_else(|| def.base_url.to_owned());
        let base = Url::parse(&text)
            .map_err(|e| format!("upstream `{}`: base URL `{text}` is not a URL: {e}", def.id))?;
        let mut hosts: Vec<String> = def
            .allow_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        if let Some(host) = base.host_str() {
            hosts.push(host.to_ascii_lowercase());
        }
        Ok(Self { def, base, hosts })
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The texts of an array argument's elements, each a scalar.
fn elements(name: &str, items: &[Value]) -> Result<Vec<String>, ToolError> {
    items
        .iter()
        .map(|item| {
            scalar(item).ok_or_else(|| {
                ToolError::new(format!(
                    "argument `{name}`: array elements must be strings, numbers or booleans"
                ))
            })
        })
        .collect()
}

/// An argument's value, `None` when it is absent, null or an empty array (an empty list
/// is undefined, RFC 6570: `/items/{ids}` must not become `/items/`).
fn argument<'a>(args: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    args.get(name)
        .filter(|v| !v.is_null() && v.as_array().is_none_or(|items| !items.is_empty()))
}

/// Fills `{placeholders}`; `encode` escapes each value. `Ok(None)` when a placeholder has no
/// argument.
fn fill(
    template: &str,
    args: &Map<String, Value>,
    encode: bool,
) -> Result<Option<String>, ToolError> {
    let segments = crate::template::parse(template).map_err(|e| {
        ToolError::new(format!(
            "the tool template `{}` is malformed: {e}",
            template.escape_default()
        ))
    })?;
    let mut out = String::with_capacity(template.len());
    for segment in segments {
        let name = match segment {
            Segment::Literal(text) => {
                out.push_str(text);
                continue;
            }
            Segment::Brace(c) => {
                out.push(c);
                continue;
            }
            Segment::Var(name) => name,
        };
        let Some(value) = argument(args, name) else {
            return Ok(None);
        };
        let texts = match value {
            Value::Array(items) => elements(name, items)?,
            other => vec![scalar(other).ok_or_else(|| {
                ToolError::new(format!(
                    "argument `{name}` must be a string, number, boolean or an array of them"
                ))
            })?],
        };
        if encode && addresses_another_path(&texts.join(",")) {
            return Err(ToolError::protocol(rmcp::ErrorData::invalid_params(
                format!(
                    "argument `{name}` may not be empty, `.` or `..`, nor have a `.` or `..` piece between `/` or `\\` (in any encoding): as a path segment it would change which path the request addresses"
                ),
                Some(
                    serde_json::json!({"errors": [{"path": format!("/{name}"), "rule": "pathSegment"}]}),
                ),
            )));
        }
        for (i, text) in texts.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if encode {
                out.extend(utf8_percent_encode(text, COMPONENT));
            } else {
                if text.contains(['\r', '\n']) {
                    return Err(ToolError::new(format!(
                        "argument `{name}` contains a line break"
                    )));
                }
                out.push_str(text);
            }
        }
    }
    Ok(Some(out))
}

/// Whether a path placeholder's value is empty, or `.` or `..` — whole or as any piece
/// between `/` or `\` separators — also once percent-decoded (any number of times, any
/// case: `%2e%2E`, `.%2e`, `%252e`, `a%2F..%2Fb`): as a segment, or once an upstream or
/// proxy decodes `%2F` before resolving dot segments, it would drop or climb a segment
/// (rule 8).
fn addresses_another_path(value: &str) -> bool {
    if value.is_empty() {
        return true;
    }
    let mut text = value.to_owned();
    // Each round removes at least one `%`; a value can hide behind a bounded number only.
    for _ in 0..8 {
        if text
            .split(['/', '\\'])
            .any(|piece| matches!(piece, "." | ".."))
        {
            return true;
        }
        let decoded = percent_encoding::percent_decode_str(&text)
            .decode_utf8_lossy()
            .into_owned();
        if decoded == text {
            return false;
        }
        text = decoded;
    }
    // Still decoding after eight rounds: nothing legitimate looks like that.
    true
}

/// The path a URL whose path is set to `path` really has (the URL parser's normalisation:
/// dot segments resolved, characters it escapes escaped).
fn normalised_path(base: &Url, path: &str) -> String {
    let mut probe = base.clone();
    probe.set_path(path);
    probe.path().to_owned()
}

fn placeholder_names(template: &str) -> Vec<&str> {
    crate::template::names(template)
}

fn retry_after(response: &reqwest::Response, attempt: u32) -> Duration {
    let header = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match header {
        Some(secs) => Duration::from_secs(secs.min(10)),
        None => Duration::from_millis(200 * 2u64.pow(attempt.min(5))),
    }
}

/// The request URL (base, filled path, query, a query credential), checked against the
/// upstream's allowed hosts; with the arguments the path and query used.
fn request_url(
    def: &HttpDef,
    upstream: &Upstream,
    secrets: &Secrets,
    args: &Map<String, Value>,
) -> Result<(Url, Vec<&'static str>), ToolError> {
    let path = fill(def.path, args, true)?.ok_or_else(|| {
        let missing: Vec<_> = placeholder_names(def.path)
            .into_iter()
            .filter(|n| argument(args, n).is_none())
            .collect();
        ToolError::new(format!(
            "missing argument(s) for the request path: {}",
            missing.join(", ")
        ))
    })?;
    let mut url = upstream.base.clone();
    let base_path = url.path().trim_end_matches('/').to_owned();
    let joined = format!("{base_path}{path}");
    url.set_path(&joined);
    // The filled path keeps the upstream's base path and the template's literal text up to
    // its first placeholder (rule 8): no value may address another path.
    let literal = def.path.split('{').next().unwrap_or_default();
    let prefix = normalised_path(&upstream.base, &format!("{base_path}{literal}"));
    if !url.path().starts_with(&prefix) {
        return Err(ToolError::protocol(rmcp::ErrorData::invalid_params(
            "the arguments would change which path the request addresses",
            None,
        )));
    }
    let mut used: Vec<&str> = placeholder_names(def.path);
    {
        let mut query = url.query_pairs_mut();
        for (name, template) in def.query {
            used.extend(placeholder_names(template));
            // An array that is the whole value: one pair per element (OpenAPI's default
            // `form` style, exploded). Elsewhere arrays are joined with commas.
            if let Some(var) = crate::template::sole_placeholder(template)
                && let Some(Value::Array(items)) = args.get(var)
            {
                for text in elements(var, items)? {
                    query.append_pair(name, &text);
                }
            } else if let Some(value) = fill(template, args, false)? {
                query.append_pair(name, &value);
            }
        }
        if let Some(UpstreamAuthDef::Query { name, secret }) = upstream.def.auth {
            let value = secrets
                .get(secret)
                .ok_or_else(|| ToolError::new("the server is missing a credential"))?;
            query.append_pair(name, value);
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    let host = url
        .host_str()
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if !upstream.hosts.contains(&host) {
        return Err(ToolError::new(format!(
            "the request to `{host}` is outside the upstream's allowed hosts"
        )));
    }
    Ok((url, used))
}

/// A request body, encoded once for every attempt.
enum Encoded {
    Json(Value),
    Form(String),
}

/// Deepest nesting a form body may have (bracketed keys grow with it).
const MAX_FORM_DEPTH: usize = 16;
/// Largest encoded form body: keys repeat per value, so the text can outgrow the arguments.
const MAX_FORM_BYTES: usize = 4 * 1024 * 1024;

/// `application/x-www-form-urlencoded` text of an object body (the rules of
/// [`BodyFormat::Form`]).
fn form_body(body: &Value) -> Result<String, ToolError> {
    struct Form {
        out: url::form_urlencoded::Serializer<'static, String>,
        bytes: usize,
    }
    impl Form {
        fn pair(&mut self, key: &str, value: &str) -> Result<(), ToolError> {
            self.bytes += key.len() + value.len() + 2;
            if self.bytes > MAX_FORM_BYTES {
                return Err(ToolError::new(
                    "the form body would be larger than 4 MiB once encoded",
                ));
            }
            self.out.append_pair(key, value);
            Ok(())
        }
    }
    fn field_name(name: &str) -> Result<&str, ToolError> {
        if name.contains(['[', ']']) {
            Err(ToolError::new(format!(
                "form field name `{}` contains a bracket, which would change the body's structure",
                name.escape_default()
            )))
        } else {
            Ok(name)
        }
    }
    fn pairs(
        key: &str,
        value: &Value,
        depth: usize,
        bracketed: bool,
        form: &mut Form,
    ) -> Result<(), ToolError> {
        if depth > MAX_FORM_DEPTH {
            return Err(ToolError::new(format!(
                "the form body is nested deeper than {MAX_FORM_DEPTH} levels"
            )));
        }
        match value {
            Value::Null => {}
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    match item {
                        // Top level: one pair per element (OpenAPI's default). Inside
                        // brackets, indices: bracket parsers keep only the last of
                        // repeated keys.
                        Value::String(_) | Value::Number(_) | Value::Bool(_) if !bracketed => {
                            pairs(key, item, depth + 1, false, form)?;
                        }
                        Value::Null => {}
                        _ => pairs(&format!("{key}[{i}]"), item, depth + 1, true, form)?,
                    }
                }
            }
            Value::Object(fields) => {
                for (field, v) in fields {
                    let field = field_name(field)?;
                    pairs(&format!("{key}[{field}]"), v, depth + 1, true, form)?;
                }
            }
            other => {
                if let Some(text) = scalar(other) {
                    form.pair(key, &text)?;
                }
            }
        }
        Ok(())
    }
    let Value::Object(fields) = body else {
        return Err(ToolError::new(
            "a form body must be an object of fields, not an array or a single value",
        ));
    };
    let mut form = Form {
        out: url::form_urlencoded::Serializer::new(String::new()),
        bytes: 0,
    };
    for (key, value) in fields {
        pairs(field_name(key)?, value, 0, false, &mut form)?;
    }
    Ok(form.out.finish())
}

/// Why an HTTP tool call gave no result.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The upstream answered 401: the credential was refused (an OAuth token may be
    /// renewed and the call made once more).
    Unauthorized(ToolError),
    /// Anything else.
    Other(ToolError),
}

impl Failure {
    /// The tool error, whatever the cause.
    pub(crate) fn into_error(self) -> ToolError {
        match self {
            Self::Unauthorized(e) | Self::Other(e) => e,
        }
    }
}

impl From<ToolError> for Failure {
    fn from(e: ToolError) -> Self {
        Self::Other(e)
    }
}

/// Runs one HTTP tool call; `bearer` is the OAuth token for an OAuth upstream
/// (crate::upstream_auth), `None` for the others.
pub(crate) async fn execute(
    def: &HttpDef,
    upstream: &Upstream,
    secrets: &Secrets,
    client: &reqwest::Client,
    args: &Map<String, Value>,
    trace: Option<&UpstreamTrace>,
    bearer: Option<&Secret>,
) -> Result<ToolOutput, ToolError> {
    send(def, upstream, secrets, client, args, trace, bearer)
        .await
        .map_err(Failure::into_error)
}

/// [`execute`], telling a 401 from the upstream apart (rule 2).
pub(crate) async fn send(
    def: &HttpDef,
    upstream: &Upstream,
    secrets: &Secrets,
    client: &reqwest::Client,
    args: &Map<String, Value>,
    trace: Option<&UpstreamTrace>,
    bearer: Option<&Secret>,
) -> Result<ToolOutput, Failure> {
    let (url, mut used) = request_url(def, upstream, secrets, args)?;
    let method = match def.method {
        Method::Get => reqwest::Method::GET,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        Method::Patch => reqwest::Method::PATCH,
        Method::Delete => reqwest::Method::DELETE,
    };
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, template) in def.headers {
        used.extend(placeholder_names(template));
        if let Some(value) = fill(template, args, false)? {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ToolError::new(format!("`{name}` is not a header name")))?;
            let value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                ToolError::new(format!(
                    "the value for header `{name}` is not a valid header value"
                ))
            })?;
            headers.insert(name, value);
        }
    }
    match upstream.def.auth {
        Some(UpstreamAuthDef::Bearer { secret }) => {
            let value = secrets
                .get(secret)
                .ok_or_else(|| ToolError::new("the server is missing a credential"))?;
            let mut header = reqwest::header::HeaderValue::from_str(&format!("Bearer {value}"))
                .map_err(|_| {
                    ToolError::new("the configured credential is not a valid header value")
                })?;
            header.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, header);
        }
        Some(UpstreamAuthDef::Header { name, secret }) => {
            let value = secrets
                .get(secret)
                .ok_or_else(|| ToolError::new("the server is missing a credential"))?;
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ToolError::new("the configured credential header name is invalid"))?;
            let mut header = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                ToolError::new("the configured credential is not a valid header value")
            })?;
            header.set_sensitive(true);
            headers.insert(name, header);
        }
        Some(UpstreamAuthDef::OAuth(_)) => {
            let token = bearer.ok_or_else(|| {
                ToolError::new(format!(
                    "upstream `{}`: no OAuth token was obtained for this call",
                    upstream.def.id
                ))
            })?;
            let mut header =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| {
                        ToolError::new(format!(
                            "upstream `{}`: the OAuth token is not a valid header value",
                            upstream.def.id
                        ))
                    })?;
            header.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, header);
        }
        // In the URL (request_url).
        Some(UpstreamAuthDef::Query { .. }) | None => {}
    }
    let body = match def.body {
        BodyDef::None => None,
        BodyDef::Fields(fields) => Some(Value::Object(
            fields
                .iter()
                .filter_map(|f| args.get(*f).map(|v| ((*f).to_owned(), v.clone())))
                .collect(),
        )),
        BodyDef::Field(field) => args.get(field).cloned(),
        BodyDef::Rest => Some(Value::Object(
            args.iter()
                .filter(|(k, _)| !used.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )),
    };
    let body = match (body, def.body_format) {
        (None, _) => None,
        (Some(value), BodyFormat::Json) => Some(Encoded::Json(value)),
        (Some(Value::Null), BodyFormat::Form) => None,
        (Some(value), BodyFormat::Form) => Some(Encoded::Form(form_body(&value)?)),
    };
    let timeout = Duration::from_millis(upstream.def.timeout_ms);
    let mut attempt = 0;
    let response = loop {
        let mut request = client
            .request(method.clone(), url.clone())
            .headers(headers.clone())
            .timeout(timeout);
        match &body {
            Some(Encoded::Json(body)) => request = request.json(body),
            Some(Encoded::Form(text)) => {
                // A Content-Type the tool sets itself (a charset, say) is kept, not doubled.
                if !headers.contains_key(reqwest::header::CONTENT_TYPE) {
                    request = request.header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    );
                }
                request = request.body(text.clone());
            }
            None => {}
        }
        // A client span per attempt, carried to the upstream (crate::traces::upstream).
        let span = trace.map(|t| {
            t.attempt(
                method_name(def.method),
                &url,
                def.path,
                upstream.def.id,
                attempt,
            )
        });
        if let Some(span) = &span {
            request = request.headers(span.headers());
        }
        let started = std::time::Instant::now();
        let sent = request.send().await;
        crate::observe::upstream_answered(
            upstream.def.id,
            started,
            sent.as_ref().ok().map(|r| r.status().as_u16()),
        );
        if let Some(span) = span {
            match &sent {
                Ok(response) => span.answered(response.status().as_u16()),
                Err(e) => span.failed(e.is_timeout()),
            }
        }
        let response = sent.map_err(|e| {
            let reason = if e.is_timeout() {
                "timed out".to_owned()
            } else {
                "could not be reached".to_owned()
            };
            ToolError::new(format!("upstream `{}` {reason}", upstream.def.id))
        })?;
        let status = response.status().as_u16();
        if matches!(status, 429 | 502 | 503) && attempt < upstream.def.max_retries {
            tokio::time::sleep(retry_after(&response, attempt)).await;
            attempt += 1;
            continue;
        }
        break response;
    };
    let status = response.status();
    let is_json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let bytes = read_bounded(response).await?;
    if !status.is_success() {
        // Redacted whole, then cut: a secret straddling the cut never leaves as a prefix.
        let redacted = secrets.redact(&String::from_utf8_lossy(&bytes));
        let excerpt: String = redacted.trim().chars().take(MAX_ERROR_EXCERPT).collect();
        let error = ToolError::new(format!(
            "upstream `{}` answered {}: {}",
            upstream.def.id,
            status.as_u16(),
            excerpt.trim()
        ));
        return Err(if status == reqwest::StatusCode::UNAUTHORIZED {
            Failure::Unauthorized(error)
        } else {
            Failure::Other(error)
        });
    }
    if !is_json {
        return Ok(ToolOutput::Text(
            secrets.redact(&String::from_utf8_lossy(&bytes)),
        ));
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ToolError::new(format!(
            "upstream `{}` sent invalid JSON: {e}",
            upstream.def.id
        ))
    })?;
    if def.response_map.is_empty() {
        return Ok(match value {
            Value::Object(_) => ToolOutput::Structured(value),
            other => ToolOutput::Structured(serde_json::json!({ "result": other })),
        });
    }
    let mut out = Map::new();
    for (field, pointer) in def.response_map {
        if let Some(v) = value.pointer(pointer) {
            out.insert((*field).to_owned(), v.clone());
        }
    }
    Ok(ToolOutput::Structured(Value::Object(out)))
}

/// `http.request.method` of a tool's method.
fn method_name(method: Method) -> &'static str {
    match method {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Patch => "PATCH",
        Method::Delete => "DELETE",
    }
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, ToolError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|_| ToolError::new("the upstream response broke off"))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ToolError::new("the upstream response is larger than 4 MiB"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The URL a `GET` tool with `path` and `query` templates on the fixed upstream
/// `https://api.example/v3` addresses with `args`: for the fuzz target and the tests.
fn example_url(
    path: &'static str,
    query: &'static [(&'static str, &'static str)],
    args: &Map<String, Value>,
) -> Result<url::Url, ToolError> {
    let upstream = Upstream::resolve(
        UpstreamDef {
            id: "api",
            base_url: "https://api.example/v3",
            base_url_env: None,
            auth: None,
            allow_hosts: &[],
            timeout_ms: 1000,
            max_retries: 0,
        },
        |_| None,
    )
    .map_err(ToolError::new)?;
    let def = HttpDef {
        upstream: "api",
        method: Method::Get,
        path,
        query,
        headers: &[],
        body: BodyDef::None,
        body_format: BodyFormat::Json,
        response_map: &[],
        upstream_scopes: &[],
    };
    request_url(&def, &upstream, &Secrets::default(), args).map(|(url, _)| url)
}

/// The path `GET /v3/user/{username}/items/{id}` addresses with `args` (for the fuzz
/// target), `None` when the arguments are refused.
pub(crate) fn fuzz_path(args: &Map<String, Value>) -> Option<String> {
    example_url("/user/{username}/items/{id}", &[("q", "{q}")], args)
        .ok()
        .map(|url| url.path().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn placeholders_are_percent_encoded_in_paths() {
        let a = args(serde_json::json!({"owner": "a b/c", "n": 5}));
        assert_eq!(
            fill("/x/{owner}/{n}", &a, true).unwrap().as_deref(),
            Some("/x/a%20b%2Fc/5")
        );
        assert_eq!(fill("/x/{missing}", &a, true).unwrap(), None);
        assert!(fill("/x/{obj}", &args(serde_json::json!({"obj": {}})), true).is_err());
    }

    fn url_for(
        path: &'static str,
        query: &'static [(&'static str, &'static str)],
        a: Value,
    ) -> Result<String, ToolError> {
        example_url(path, query, &args(a)).map(|url| url.to_string())
    }

    #[test]
    fn an_array_query_argument_is_one_pair_per_element() {
        let url = url_for(
            "/pet/findByTags",
            &[("tags", "{tags}"), ("limit", "{limit}")],
            serde_json::json!({"tags": ["a b", "c&d", 3, true], "limit": 5}),
        )
        .unwrap();
        assert_eq!(
            url,
            "https://api.example/v3/pet/findByTags?tags=a+b&tags=c%26d&tags=3&tags=true&limit=5"
        );
        let empty = url_for("/p", &[("tags", "{tags}")], serde_json::json!({"tags": []})).unwrap();
        assert_eq!(empty, "https://api.example/v3/p", "no element, no pair");
    }

    #[test]
    fn an_array_elsewhere_is_joined_with_commas_each_element_encoded() {
        let url = url_for(
            "/items/{ids}",
            &[("q", "in:{names}")],
            serde_json::json!({"ids": [1, "a/b", "c,d"], "names": ["x", "y"]}),
        )
        .unwrap();
        assert_eq!(
            url,
            "https://api.example/v3/items/1,a%2Fb,c%2Cd?q=in%3Ax%2Cy"
        );
    }

    #[test]
    fn nested_arrays_and_objects_in_the_url_are_tool_errors() {
        for value in [
            serde_json::json!([["a"]]),
            serde_json::json!([{"k": 1}]),
            serde_json::json!({"k": 1}),
        ] {
            let query = url_for(
                "/p",
                &[("v", "{v}")],
                serde_json::json!({ "v": value.clone() }),
            );
            let path = url_for("/p/{v}", &[], serde_json::json!({ "v": value.clone() }));
            for result in [query, path] {
                let err = result.expect_err("refused");
                assert!(
                    format!("{err:?}").contains("`v`"),
                    "{err:?} names the argument"
                );
            }
        }
    }

    /// Pairs come in the arguments' order (serde_json keeps it).
    #[test]
    fn form_bodies_repeat_arrays_and_bracket_objects() {
        let text = form_body(&serde_json::json!({
            "amount": 2000,
            "currency": "eur",
            "description": "a & b = c",
            "expand": ["customer", "invoice"],
            "metadata": {"order": "6735", "note": null, "tags": ["x", null, "y"]},
            "items": [{"price": "p_1", "quantity": 2}],
            "ids": [1, null, 2],
            "skipped": null,
            "flag": true,
        }))
        .unwrap();
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(text.as_bytes())
            .into_owned()
            .collect();
        let expected: Vec<(String, String)> = [
            ("amount", "2000"),
            ("currency", "eur"),
            ("description", "a & b = c"),
            ("expand", "customer"),
            ("expand", "invoice"),
            ("metadata[order]", "6735"),
            // Inside brackets, arrays are indexed: bracket parsers keep the last of
            // repeated keys.
            ("metadata[tags][0]", "x"),
            ("metadata[tags][2]", "y"),
            ("items[0][price]", "p_1"),
            ("items[0][quantity]", "2"),
            ("ids", "1"),
            ("ids", "2"),
            ("flag", "true"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(pairs, expected, "{text}");
    }

    #[test]
    fn a_form_body_that_is_not_an_object_or_too_deep_is_a_tool_error() {
        assert!(form_body(&serde_json::json!(["a"])).is_err());
        assert!(form_body(&serde_json::json!("a")).is_err());
        let nested = |levels: usize| {
            let mut deep = serde_json::json!("leaf");
            for _ in 0..levels {
                deep = serde_json::json!({ "k": deep });
            }
            serde_json::json!({ "root": deep })
        };
        assert!(
            form_body(&nested(MAX_FORM_DEPTH)).is_ok(),
            "the limit itself"
        );
        let err = form_body(&nested(MAX_FORM_DEPTH + 1)).expect_err("too deep");
        assert!(format!("{err:?}").contains("deeper"), "{err:?}");
    }

    #[test]
    fn form_field_names_with_brackets_and_oversized_forms_are_tool_errors() {
        for body in [
            serde_json::json!({"a]b": 1}),
            serde_json::json!({"metadata": {"a][admin": true}}),
        ] {
            let err = form_body(&body).expect_err("bracket");
            assert!(format!("{err:?}").contains("bracket"), "{err:?}");
        }
        // 100,000 elements under a 100-byte key: ~10 MB once each pair repeats the key.
        let key = "k".repeat(100);
        let body = serde_json::json!({ key: vec![1; 100_000] });
        let err = form_body(&body).expect_err("too large");
        assert!(format!("{err:?}").contains("4 MiB"), "{err:?}");
    }

    #[test]
    fn empty_arrays_are_absent_and_header_arrays_are_comma_joined() {
        let err = url_for("/items/{ids}", &[], serde_json::json!({"ids": []}))
            .expect_err("an empty path array is a missing argument");
        assert!(format!("{err:?}").contains("ids"), "{err:?}");
        let a = args(serde_json::json!({"v": ["a", 1, true], "e": []}));
        assert_eq!(fill("{v}", &a, false).unwrap().as_deref(), Some("a,1,true"));
        assert_eq!(fill("x-{e}", &a, false).unwrap(), None);
    }

    /// The request as a real upstream on 127.0.0.1 received it: content type and body.
    #[tokio::test]
    async fn a_form_tool_posts_url_encoded_fields_to_the_upstream() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base: &'static str =
            Box::leak(format!("http://{}/v1", listener.local_addr().unwrap()).into_boxed_str());
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the body's announced length.
            loop {
                let n = stream.read(&mut buf).unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break;
                    }
                }
                assert!(n > 0, "the connection closed early");
            }
            let reply = "{\"id\":\"ch_1\"}";
            write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            )
            .unwrap();
            String::from_utf8(request).unwrap()
        });
        let upstream = Upstream::resolve(
            UpstreamDef {
                id: "pay",
                base_url: base,
                base_url_env: None,
                auth: None,
                allow_hosts: &[],
                timeout_ms: 5000,
                max_retries: 0,
            },
            |_| None,
        )
        .unwrap();
        let def = HttpDef {
            upstream: "pay",
            method: Method::Post,
            path: "/charges",
            query: &[],
            headers: &[],
            body: BodyDef::Rest,
            body_format: BodyFormat::Form,
            response_map: &[],
            upstream_scopes: &[],
        };
        let output = execute(
            &def,
            &upstream,
            &Secrets::default(),
            &reqwest::Client::new(),
            &args(serde_json::json!({"amount": 5, "metadata": {"k": "v w"}})),
            None,
            None,
        )
        .await
        .unwrap();
        let request = server.join().unwrap();
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /v1/charges HTTP/1.1"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/x-www-form-urlencoded"),
            "{head}"
        );
        assert_eq!(body, "amount=5&metadata%5Bk%5D=v+w");
        assert!(format!("{output:?}").contains("ch_1"), "{output:?}");
    }

    #[test]
    fn path_placeholder_refuses_dot_segments() {
        for value in [
            "",
            ".",
            "..",
            "%2e",
            "%2E%2e",
            ".%2E",
            "%2e.",
            "%252e%252e",
            "%25252e",
        ] {
            let err = url_for(
                "/user/{username}",
                &[],
                serde_json::json!({ "username": value }),
            )
            .expect_err(value);
            assert!(
                format!("{err:?}").contains("`username`"),
                "{value}: {err:?}"
            );
            assert!(
                format!("{err:?}").contains("InvalidParams")
                    || format!("{err:?}").contains("-32602"),
                "{value}: {err:?}"
            );
        }
        let err = url_for(
            "/user/{username}",
            &[],
            serde_json::json!({ "username": [".."] }),
        )
        .expect_err("an array of one dot segment");
        assert!(format!("{err:?}").contains("`username`"), "{err:?}");
        // Separators and escapes inside a value are encoded, never interpreted.
        assert_eq!(
            url_for(
                "/user/{username}",
                &[],
                serde_json::json!({ "username": "a/b?c#d\\e%2F" })
            )
            .unwrap(),
            "https://api.example/v3/user/a%2Fb%3Fc%23d%5Ce%252F"
        );
        // Dots that are not a whole value stay legitimate.
        assert_eq!(
            url_for("/files/{name}", &[], serde_json::json!({ "name": "...a" })).unwrap(),
            "https://api.example/v3/files/...a"
        );
        assert_eq!(
            url_for("/v/{a}.{b}", &[], serde_json::json!({ "a": "x", "b": "y" })).unwrap(),
            "https://api.example/v3/v/x.y"
        );
    }

    /// An upstream on a real socket that answers 404 quoting the whole request target.
    async fn start_echoing_404() -> &'static str {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base: &'static str =
            Box::leak(format!("http://{}/v1", listener.local_addr().unwrap()).into_boxed_str());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            let body = format!("not found: {}", req.uri());
                            let mut r = http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(body),
                            ));
                            *r.status_mut() = http::StatusCode::NOT_FOUND;
                            Ok::<_, std::convert::Infallible>(r)
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        base
    }

    /// Rule 5: an attacker pads an argument so the echoed `api_key=SECRET` straddles the
    /// excerpt's cut; no padding length leaks any part of the secret.
    #[tokio::test]
    async fn secrets_are_redacted_before_an_error_excerpt_is_cut() {
        static DEFS: &[crate::def::SecretDef] = &[crate::def::SecretDef {
            name: "API_KEY",
            description: "key",
        }];
        const SECRET: &str = "Zq9Xk2secretvalue";
        let secrets = Secrets::load(DEFS, |_| Some(SECRET.to_owned())).unwrap();
        let base = start_echoing_404().await;
        let upstream = Upstream::resolve(
            UpstreamDef {
                id: "api",
                base_url: base,
                base_url_env: None,
                auth: Some(UpstreamAuthDef::Query {
                    name: "api_key",
                    secret: "API_KEY",
                }),
                allow_hosts: &[],
                timeout_ms: 5000,
                max_retries: 0,
            },
            |_| None,
        )
        .unwrap();
        let def = HttpDef {
            upstream: "api",
            method: Method::Get,
            path: "/items/{id}",
            query: &[],
            headers: &[],
            body: BodyDef::None,
            body_format: BodyFormat::Json,
            response_map: &[],
            upstream_scopes: &[],
        };
        let client = reqwest::Client::new();
        let mut straddled = false;
        for pad in 240..320 {
            let id = "a".repeat(pad);
            let err = execute(
                &def,
                &upstream,
                &secrets,
                &client,
                &args(serde_json::json!({ "id": id })),
                None,
                None,
            )
            .await
            .expect_err("a 404");
            let message = err.message();
            assert!(message.contains("answered 404"), "{message}");
            // Any 4-character piece of the secret would be a leak.
            for i in 0..=SECRET.len() - 4 {
                assert!(
                    !message.contains(&SECRET[i..i + 4]),
                    "padding {pad} leaks {:?}: {message}",
                    &SECRET[i..i + 4]
                );
            }
            straddled |= !message.contains("[redacted]") && message.contains("api_key=");
        }
        assert!(straddled, "some padding put the secret across the cut");
    }

    /// Rule 8: an upstream or proxy that decodes `%2F` before resolving dot segments
    /// would climb out of the template through `a%2F..%2Fb`.
    #[test]
    fn path_placeholder_refuses_encoded_dot_segments_between_separators() {
        for value in [
            "a/../b",
            "a/..",
            "../a",
            "./a",
            "a/./b",
            "a\\..\\b",
            "..\\a",
            "a%2F..%2Fb",
            "a%2f%2e%2e%2fb",
            "a%5C..%5Cb",
            "a%252F..%252Fb",
            "a%25252F%25252E%25252E",
        ] {
            let err = url_for(
                "/user/{username}/items",
                &[],
                serde_json::json!({ "username": value }),
            )
            .expect_err(value);
            assert!(
                format!("{err:?}").contains("`username`"),
                "{value}: {err:?}"
            );
        }
        for (value, path) in [
            ("a/b", "a%2Fb"),
            ("a..b/c", "a..b%2Fc"),
            ("a/...", "a%2F..."),
            (".a/b.", ".a%2Fb."),
        ] {
            assert_eq!(
                url_for(
                    "/user/{username}/items",
                    &[],
                    serde_json::json!({ "username": value }),
                )
                .unwrap(),
                format!("https://api.example/v3/user/{path}/items"),
                "{value}"
            );
        }
    }

    #[test]
    fn header_values_with_line_breaks_are_refused() {
        let a = args(serde_json::json!({"v": "x\r\nInjected: 1"}));
        assert!(fill("{v}", &a, false).is_err());
    }
}
