//! The tool spec, as written in `specs/*.yaml` (JSON is accepted too: YAML 1.2 is a
//! superset of it). Every struct refuses unknown keys, so a typo is an error with a line
//! number rather than a silently ignored setting.
//!
//! Values whose position matters for later checks (names, templates, schemas) are
//! [`Spanned`], so validation can point at the exact line and column. Maps are
//! [`IndexMap`]s: the generated code keeps the spec's order (query parameters, headers).

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
pub use serde_saphyr::Spanned;

/// A bmm tool spec: what one MCP server offers (`bmm check` validates it, `bmm generate`
/// turns it into a server crate).
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(title = "bmm tool spec")]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Format version; 1 when absent.
    #[serde(default)]
    #[schemars(with = "Option<u32>", range(min = 1, max = 1))]
    pub spec_version: Option<Spanned<u32>>,
    /// What the server is.
    pub server: Server,
    /// Inbound OAuth scopes.
    #[serde(default)]
    pub auth: Auth,
    /// Secrets the server needs, by environment variable name.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, Secret>")]
    pub secrets: IndexMap<String, Spanned<Secret>>,
    /// Upstream HTTP APIs, by id.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, Upstream>")]
    pub upstreams: IndexMap<String, Spanned<Upstream>>,
    /// The tools.
    #[serde(default)]
    pub tools: Vec<Tool>,
    /// Static resources and resource templates.
    #[serde(default)]
    pub resources: Vec<Resource>,
    /// Prompts.
    #[serde(default)]
    pub prompts: Vec<Prompt>,
}

/// `server:` — identity shown to clients.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Crate and server name: lowercase letters, digits and `-`, starting with a letter.
    #[schemars(with = "String", regex(pattern = SERVER_NAME_PATTERN))]
    pub name: Spanned<String>,
    /// Semantic version.
    #[schemars(with = "String", regex(pattern = r"^[0-9]+\.[0-9]+\.[0-9]+$"))]
    pub version: Spanned<String>,
    /// Human-readable title.
    #[serde(default)]
    pub title: Option<String>,
    /// One-paragraph description (crate description, README).
    #[serde(default)]
    pub description: Option<String>,
    /// Instructions sent to clients at initialization.
    #[serde(default)]
    pub instructions: Option<String>,
}

/// `auth:` — scopes of the protected resource.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Scopes advertised in the protected resource metadata.
    #[serde(default)]
    #[schemars(with = "Vec<ScopeToken>")]
    pub scopes_supported: Vec<Spanned<String>>,
    /// Scopes every request needs.
    #[serde(default)]
    #[schemars(with = "Vec<ScopeToken>")]
    pub required: Vec<Spanned<String>>,
    /// Broader scope -> narrower scopes it implies.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, Vec<ScopeToken>>")]
    pub hierarchy: IndexMap<String, Vec<Spanned<String>>>,
}

/// A secret: an environment variable read at start-up, never logged or returned.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// What it is and where to get one (shown when it is missing).
    pub description: String,
}

/// An upstream HTTP API.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Base URL (`https://api.example.com/v1`).
    #[schemars(with = "String")]
    pub base_url: Spanned<String>,
    /// Environment variable that overrides the base URL (tests point it at a mock).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub base_url_env: Option<Spanned<String>>,
    /// How a secret is attached to each request.
    #[serde(default)]
    pub auth: Option<UpstreamAuth>,
    /// Hosts requests may go to (default: the base URL's host).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub allow_hosts: Vec<Spanned<String>>,
    /// Allows plain `http` (local development only).
    #[serde(default)]
    pub local: bool,
    /// Timeout of each request, in milliseconds (default 15000).
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub timeout_ms: Option<Spanned<u64>>,
    /// Retries on 429/502/503, honouring `Retry-After` (default 2).
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub max_retries: Option<Spanned<u32>>,
}

/// How a secret is applied to upstream requests.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAuth {
    /// `bearer`, `header` or `query`.
    #[serde(rename = "type")]
    pub kind: UpstreamAuthKind,
    /// Header or query parameter name (for `header` and `query`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub name: Option<Spanned<String>>,
    /// The declared secret holding the credential.
    #[schemars(with = "String")]
    pub secret: Spanned<String>,
}

/// The ways a credential reaches an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamAuthKind {
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `<name>: <secret>`.
    Header,
    /// `?<name>=<secret>`.
    Query,
}

/// A tool.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// `[A-Za-z0-9_.-]`, 1 to 128 characters (warning past 64).
    #[schemars(with = "String", regex(pattern = r"^[A-Za-z0-9_.-]{1,128}$"))]
    pub name: Spanned<String>,
    /// Human-readable title.
    #[serde(default)]
    pub title: Option<String>,
    /// What the tool does, for the model.
    #[schemars(with = "String")]
    pub description: Spanned<String>,
    /// Behaviour hints.
    #[serde(default)]
    pub annotations: Option<Annotations>,
    /// Scopes a call needs, on top of the server-wide ones.
    #[serde(default)]
    #[schemars(with = "Vec<ScopeToken>")]
    pub scopes: Vec<Spanned<String>>,
    /// JSON Schema (2020-12) of the arguments; its root must be an object schema.
    #[schemars(with = "Map<String, Value>")]
    pub input: Spanned<Value>,
    /// JSON Schema of `structuredContent`; its root must be an object schema.
    #[serde(default)]
    #[schemars(with = "Option<Map<String, Value>>")]
    pub output: Option<Spanned<Value>>,
    /// Whether a call may run as an MCP task (the `io.modelcontextprotocol/tasks`
    /// extension) for a client that declared it: `forbidden` (default), `optional`, or
    /// `required` (a client without the extension is refused).
    #[serde(default)]
    pub task: TaskSupport,
    /// Calls of this tool one caller (token issuer and subject) may make, as
    /// `<count>/<unit>` with unit `s`, `min` or `hour` (`10/min`: 10 at once, then one every
    /// 6 s); beyond it 429 with `Retry-After`. On top of the server's `--rate-limit`.
    #[serde(default)]
    #[schemars(
        with = "Option<String>",
        regex(pattern = r"^\s*[0-9]{1,7}\s*/\s*(s|secs?|seconds?|m|mins?|minutes?|h|hours?)\s*$")
    )]
    pub rate_limit: Option<Spanned<String>>,
    /// What a call does.
    #[schemars(with = "Run")]
    pub run: Spanned<Run>,
}

/// `tools[].task`: whether a call may run as an MCP task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskSupport {
    /// Always answered in the `tools/call` response.
    #[default]
    Forbidden,
    /// Runs as a task when the client declared the tasks extension.
    Optional,
    /// Runs only as a task; clients without the extension are refused (`-32021`).
    Required,
}

/// Tool annotations (MCP `ToolAnnotations`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Annotations {
    /// Does not modify its environment.
    #[serde(default)]
    pub read_only: Option<bool>,
    /// May perform destructive updates.
    #[serde(default)]
    pub destructive: Option<bool>,
    /// Repeating a call has no further effect.
    #[serde(default)]
    pub idempotent: Option<bool>,
    /// Interacts with an open world of external entities.
    #[serde(default)]
    pub open_world: Option<bool>,
}

/// `run:` — `http: {...}` or `rust: {...}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Run {
    /// An HTTP call to a declared upstream.
    Http(Box<HttpRun>),
    /// A Rust function the user writes in `src/tools/<fn>.rs`.
    Rust(RustRun),
}

/// An HTTP tool body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpRun {
    /// The upstream id.
    #[schemars(with = "String")]
    pub upstream: Spanned<String>,
    /// HTTP method.
    pub method: HttpMethod,
    /// Path template appended to the base URL; `{field}` placeholders name input fields and
    /// are percent-encoded.
    #[schemars(with = "String")]
    pub path: Spanned<String>,
    /// Query parameters: name -> template. An array argument that is the whole template is
    /// sent as one pair per element; inside a longer template its elements are joined
    /// with commas.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, String>")]
    pub query: IndexMap<String, Spanned<String>>,
    /// Request headers: name -> template.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, String>")]
    pub headers: IndexMap<String, Spanned<String>>,
    /// Input fields sent as the JSON body (`body: [title, text]`), `all`, or one field's
    /// value as the whole body (`body: { field: items }`).
    #[serde(default)]
    #[schemars(with = "Option<Body>")]
    pub body: Option<Spanned<Body>>,
    /// How the body is encoded: `json` (the default) or `form`
    /// (`application/x-www-form-urlencoded`; objects bracketed, `key[field]=value`).
    #[serde(default)]
    #[schemars(with = "Option<BodyFormat>")]
    pub body_format: Option<Spanned<BodyFormat>>,
    /// How the response becomes the result.
    #[serde(default)]
    pub response: Option<ResponseMap>,
}

/// HTTP methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[allow(missing_docs)]
pub enum HttpMethod {
    GET,
    POST,
    PUT,
    PATCH,
    DELETE,
}

/// Which input fields form the JSON body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Body {
    /// Named fields.
    Fields(Vec<String>),
    /// `all`: every field not used by the path, query or headers.
    Keyword(#[schemars(with = "AllFields")] String),
    /// `{ field: items }`: that field's value is the whole body (an array, say).
    Whole(WholeBody),
}

/// How an HTTP tool's body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// `application/json`.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
}

/// A body that is one input field's value.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WholeBody {
    /// The input property sent as the body.
    pub field: String,
}

/// Response projection.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseMap {
    /// Output field -> JSON pointer into the upstream response.
    #[serde(default)]
    #[schemars(with = "IndexMap<String, String>")]
    pub map: IndexMap<String, Spanned<String>>,
}

/// A Rust tool body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RustRun {
    /// The function name (also the user file `src/tools/<fn>.rs`).
    #[serde(rename = "fn", default)]
    #[schemars(with = "Option<String>")]
    pub function: Option<Spanned<String>>,
    /// Upstreams the function may call through pre-authenticated clients.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub upstreams: Vec<Spanned<String>>,
}

/// A resource (static content) or a resource template.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// A fixed URI (static resource).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub uri: Option<Spanned<String>>,
    /// An RFC 6570 URI template (resource template).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub uri_template: Option<Spanned<String>>,
    /// Programmatic name.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Title.
    #[serde(default)]
    pub title: Option<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// MIME type.
    #[serde(default)]
    pub mime_type: Option<String>,
    /// Text content. For a template, `{variable}` placeholders are filled from the URI
    /// (`{{` and `}}` are literal braces).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub text: Option<Spanned<String>>,
    /// Base64 content (static binary resources).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub blob: Option<Spanned<String>>,
    /// Clients may subscribe to it (`resources/subscribe`); static resources only.
    #[serde(default)]
    pub subscribe: bool,
    /// Completion values for template variables: variable -> values.
    #[serde(default)]
    pub completions: IndexMap<String, Vec<String>>,
}

/// A prompt.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Prompt {
    /// Programmatic name.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Title.
    #[serde(default)]
    pub title: Option<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Arguments.
    #[serde(default)]
    pub arguments: Vec<PromptArgument>,
    /// Messages; `{argument}` placeholders are filled in.
    #[serde(default)]
    pub messages: Vec<PromptMessage>,
    /// Or a Rust function producing the messages (`src/prompts/<fn>.rs`, yours).
    #[serde(rename = "fn", default)]
    #[schemars(with = "Option<String>")]
    pub function: Option<Spanned<String>>,
}

/// A prompt argument.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptArgument {
    /// Name.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Whether it must be given.
    #[serde(default)]
    pub required: bool,
    /// Values offered as completions.
    #[serde(default)]
    pub completions: Vec<String>,
}

/// A prompt message.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptMessage {
    /// `user` or `assistant`.
    pub role: Role,
    /// Text, with `{argument}` placeholders.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub text: Option<Spanned<String>>,
    /// An embedded resource, by URI of a declared resource.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub resource: Option<Spanned<String>>,
    /// An image: base64 data and MIME type.
    #[serde(default)]
    pub image: Option<Image>,
}

/// Message roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Role {
    User,
    Assistant,
}

/// Inline image content.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Base64 data.
    #[schemars(with = "String")]
    pub data: Spanned<String>,
    /// MIME type (`image/png`).
    pub mime_type: String,
}

/// The regular expression of a server name in the JSON Schema of the spec format (the
/// rule itself is `bmm_core::is_server_name`; a test holds the two together).
pub const SERVER_NAME_PATTERN: &str = r"^[a-z](?:[a-z0-9-]{0,46}[a-z0-9])?$";

/// An RFC 6749 scope token, as the JSON Schema of the spec format describes it (the rule
/// itself is `bmm_core::is_scope_token`; a test holds the two together).
#[derive(JsonSchema)]
#[schemars(
    transparent,
    description = "An OAuth scope: printable ASCII without space, `\"` or `\\` (RFC 6749 section 3.3)."
)]
#[allow(dead_code)]
struct ScopeToken(#[schemars(regex(pattern = r"^[\x21\x23-\x5B\x5D-\x7E]+$"))] String);

/// The keyword `all` of `body:`, in the JSON Schema of the spec format.
#[derive(JsonSchema)]
#[allow(dead_code)]
enum AllFields {
    #[serde(rename = "all")]
    All,
}
