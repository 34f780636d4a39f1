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
    /// How each request is authenticated: a declared secret (`bearer`, `header`, `query`)
    /// or an OAuth token (`token_exchange`, `client_credentials`, `user_oauth`).
    #[serde(default)]
    #[schemars(with = "Option<UpstreamAuthShape>")]
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

/// How upstream requests are authenticated. One flat mapping for every `type`, so a key
/// that does not belong to the type is `bmm check`'s error with its line (rather than a
/// parser error far from it); the JSON Schema lists each type's keys for editors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamAuth {
    /// The kind of credential.
    #[serde(rename = "type")]
    pub kind: Spanned<UpstreamAuthKind>,
    /// Header or query parameter name (`header` and `query`).
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// The declared secret holding the credential (`bearer`, `header`, `query`).
    #[serde(default)]
    pub secret: Option<Spanned<String>>,
    /// The authorization server's issuer identifier: endpoints are discovered (RFC 8414,
    /// then OpenID Connect discovery).
    #[serde(default)]
    pub issuer: Option<Spanned<String>>,
    /// Environment variable overriding `issuer` at start-up.
    #[serde(default)]
    pub issuer_env: Option<Spanned<String>>,
    /// The token endpoint (instead of `issuer`).
    #[serde(default)]
    pub token_url: Option<Spanned<String>>,
    /// Environment variable overriding `token_url` at start-up.
    #[serde(default)]
    pub token_url_env: Option<Spanned<String>>,
    /// The authorization endpoint (`user_oauth` with `token_url`).
    #[serde(default)]
    pub authorization_url: Option<Spanned<String>>,
    /// Environment variable overriding `authorization_url` at start-up.
    #[serde(default)]
    pub authorization_url_env: Option<Spanned<String>>,
    /// The server's client id at the authorization server.
    #[serde(default)]
    pub client_id: Option<Spanned<String>>,
    /// Environment variable overriding `client_id` at start-up.
    #[serde(default)]
    pub client_id_env: Option<Spanned<String>>,
    /// The declared secret holding the client secret.
    #[serde(default)]
    pub client_secret: Option<Spanned<String>>,
    /// The declared secret holding the PEM private key of `private_key_jwt`.
    #[serde(default)]
    pub private_key: Option<Spanned<String>>,
    /// How the server authenticates as the client.
    #[serde(default)]
    pub client_auth: Option<Spanned<ClientAuth>>,
    /// RFC 8693 `audience` (`token_exchange`, `client_credentials`).
    #[serde(default)]
    pub audience: Option<Spanned<String>>,
    /// RFC 8707 `resource`.
    #[serde(default)]
    pub resource: Option<Spanned<String>>,
    /// Scopes asked for.
    #[serde(default)]
    pub scopes: Option<Vec<Spanned<String>>>,
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
    /// RFC 8693: the caller's token exchanged for one whose audience is the upstream.
    TokenExchange,
    /// The server's own token (OAuth client credentials).
    ClientCredentials,
    /// Each caller's own connection (authorization code + PKCE, kept in the token vault).
    UserOauth,
}

impl UpstreamAuthKind {
    /// The spelling in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bearer => "bearer",
            Self::Header => "header",
            Self::Query => "query",
            Self::TokenExchange => "token_exchange",
            Self::ClientCredentials => "client_credentials",
            Self::UserOauth => "user_oauth",
        }
    }

    /// Whether the upstream's token comes from an OAuth authorization server.
    pub fn is_oauth(self) -> bool {
        matches!(
            self,
            Self::TokenExchange | Self::ClientCredentials | Self::UserOauth
        )
    }
}

/// How the server authenticates at the authorization server's token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with `client_secret` (the default with `client_secret`).
    ClientSecretBasic,
    /// `client_secret` in the form body.
    ClientSecretPost,
    /// An RFC 7523 assertion signed with `private_key` (the default with `private_key`).
    PrivateKeyJwt,
    /// `none`: a public client (`user_oauth` only; PKCE protects the code).
    #[serde(rename = "none")]
    Public,
}

/// How an upstream's requests are authenticated; each `type` takes its own keys.
// The JSON Schema of `auth:` (the loader reads the flat `UpstreamAuth`, and `bmm check`
// enforces the same split with positions).
#[derive(JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[allow(dead_code)]
enum UpstreamAuthShape {
    /// `Authorization: Bearer <secret>`.
    Bearer {
        /// The declared secret holding the token.
        secret: String,
        /// Ignored (a warning).
        #[serde(default)]
        name: Option<String>,
    },
    /// `<name>: <secret>`.
    Header {
        /// The header name.
        #[serde(default)]
        name: Option<String>,
        /// The declared secret holding the credential.
        secret: String,
    },
    /// `?<name>=<secret>`.
    Query {
        /// The query parameter name.
        #[serde(default)]
        name: Option<String>,
        /// The declared secret holding the credential.
        secret: String,
    },
    /// RFC 8693 token exchange: for each call, the caller's verified access token is
    /// exchanged (as this server's confidential client) for a token whose audience is the
    /// upstream; the caller's token goes only to the token endpoint.
    TokenExchange(ServerClientShape),
    /// OAuth client credentials: the server's own token, shared by every caller.
    ClientCredentials(ServerClientShape),
    /// Each caller's own connection: authorization code + PKCE in the caller's browser
    /// (URL elicitation), tokens kept encrypted in the vault, keyed by the caller.
    UserOauth(UserClientShape),
}

/// The keys of `token_exchange` and `client_credentials` auth.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ServerClientShape {
    /// The authorization server's issuer identifier (endpoints discovered); or `token_url`.
    #[serde(default)]
    issuer: Option<String>,
    /// Environment variable overriding `issuer`.
    #[serde(default)]
    issuer_env: Option<EnvName>,
    /// The token endpoint; or `issuer`.
    #[serde(default)]
    token_url: Option<String>,
    /// Environment variable overriding `token_url`.
    #[serde(default)]
    token_url_env: Option<EnvName>,
    /// This server's client id at the authorization server.
    client_id: String,
    /// Environment variable overriding `client_id`.
    #[serde(default)]
    client_id_env: Option<EnvName>,
    /// The declared secret holding the client secret; or `private_key`.
    #[serde(default)]
    client_secret: Option<String>,
    /// The declared secret holding a PEM private key (`private_key_jwt`).
    #[serde(default)]
    private_key: Option<String>,
    /// Default: `client_secret_basic` with `client_secret`, `private_key_jwt` with
    /// `private_key`.
    #[serde(default)]
    client_auth: Option<ConfidentialClientAuth>,
    /// RFC 8693 `audience`: the upstream as the authorization server names it
    /// (`token_exchange` needs `audience` or `resource`).
    #[serde(default)]
    audience: Option<String>,
    /// RFC 8707 `resource`: the upstream's resource identifier (an absolute URI).
    #[serde(default)]
    resource: Option<String>,
    /// Scopes asked for, unless a tool names its own (`upstream_scopes`).
    #[serde(default)]
    scopes: Vec<ScopeToken>,
}

/// The keys of `user_oauth` auth.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct UserClientShape {
    /// The authorization server's issuer identifier (endpoints discovered); or
    /// `token_url` and `authorization_url`.
    #[serde(default)]
    issuer: Option<String>,
    /// Environment variable overriding `issuer`.
    #[serde(default)]
    issuer_env: Option<EnvName>,
    /// The token endpoint (with `authorization_url`); or `issuer`.
    #[serde(default)]
    token_url: Option<String>,
    /// Environment variable overriding `token_url`.
    #[serde(default)]
    token_url_env: Option<EnvName>,
    /// The authorization endpoint (with `token_url`).
    #[serde(default)]
    authorization_url: Option<String>,
    /// Environment variable overriding `authorization_url`.
    #[serde(default)]
    authorization_url_env: Option<EnvName>,
    /// This server's client id at the authorization server.
    client_id: String,
    /// Environment variable overriding `client_id`.
    #[serde(default)]
    client_id_env: Option<EnvName>,
    /// The declared secret holding the client secret (none: a public client).
    #[serde(default)]
    client_secret: Option<String>,
    /// The declared secret holding a PEM private key (`private_key_jwt`).
    #[serde(default)]
    private_key: Option<String>,
    /// Default: `client_secret_basic` with `client_secret`, `private_key_jwt` with
    /// `private_key`, else `none` (a public client).
    #[serde(default)]
    client_auth: Option<ClientAuth>,
    /// RFC 8707 `resource`: the upstream's resource identifier (an absolute URI).
    #[serde(default)]
    resource: Option<String>,
    /// Scopes the user is asked to grant once, when connecting.
    #[serde(default)]
    scopes: Vec<ScopeToken>,
}

/// Client authentication of a confidential client.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum ConfidentialClientAuth {
    /// HTTP Basic with `client_secret`.
    ClientSecretBasic,
    /// `client_secret` in the form body.
    ClientSecretPost,
    /// An RFC 7523 assertion signed with `private_key`.
    PrivateKeyJwt,
}

/// An environment variable name.
#[derive(JsonSchema)]
#[schemars(transparent)]
#[allow(dead_code)]
struct EnvName(#[schemars(regex(pattern = r"^[A-Z][A-Z0-9_]*$"))] String);

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

/// `run:` — `http: {...}`, `rust: {...}` or `disconnect: <upstream>`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Run {
    /// An HTTP call to a declared upstream.
    Http(Box<HttpRun>),
    /// A Rust function the user writes in `src/tools/<fn>.rs`.
    Rust(RustRun),
    /// Forgets the caller's connection to this `user_oauth` upstream (its stored tokens).
    Disconnect(#[schemars(with = "String")] Spanned<String>),
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
    /// Scopes of the upstream token this tool asks for (upstreams with `token_exchange` or
    /// `client_credentials` auth); default: the upstream's `scopes`.
    #[serde(default)]
    #[schemars(with = "Vec<ScopeToken>")]
    pub upstream_scopes: Vec<Spanned<String>>,
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
