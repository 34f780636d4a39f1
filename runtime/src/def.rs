//! The static description of a server that generated code hands to the runtime: tools,
//! their schemas and bodies, resources, prompts, secrets and upstreams. Plain data, so the
//! generated crate stays small and the protocol code lives (and is tested) here once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use crate::context::ToolContext;
use crate::output::{ToolError, ToolOutput};

/// A boxed future returned by Rust tool handlers.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A Rust tool: receives the call context and the raw arguments (already checked to be an
/// object), returns a result. Generated glue deserializes the arguments into the typed
/// input struct before calling the user's function.
pub type RustHandler =
    Arc<dyn Fn(ToolContext, Value) -> BoxFuture<Result<ToolOutput, ToolError>> + Send + Sync>;

/// A prompt written in Rust: receives the call context and the arguments, returns the
/// messages (or asks the client first, see [`ToolContext::ask`]).
pub type PromptHandler = Arc<
    dyn Fn(
            ToolContext,
            serde_json::Map<String, Value>,
        ) -> BoxFuture<Result<Vec<rmcp::model::PromptMessage>, ToolError>>
        + Send
        + Sync,
>;

/// A whole server.
#[derive(Clone)]
pub struct ServerDef {
    /// Server name (`serverInfo.name`).
    pub name: &'static str,
    /// Version.
    pub version: &'static str,
    /// Title.
    pub title: Option<&'static str>,
    /// Instructions for clients.
    pub instructions: Option<&'static str>,
    /// Scopes advertised in the protected resource metadata.
    pub scopes_supported: &'static [&'static str],
    /// Scopes every request needs.
    pub required_scopes: &'static [&'static str],
    /// Broader scope -> narrower scopes.
    pub scope_hierarchy: &'static [(&'static str, &'static [&'static str])],
    /// Secrets, read from the environment at start-up.
    pub secrets: &'static [SecretDef],
    /// Upstream APIs.
    pub upstreams: &'static [UpstreamDef],
    /// Tools.
    pub tools: Vec<ToolDef>,
    /// Static resources.
    pub resources: &'static [ResourceDef],
    /// Resource templates.
    pub resource_templates: &'static [ResourceTemplateDef],
    /// Prompts.
    pub prompts: Vec<PromptDef>,
}

impl std::fmt::Debug for ServerDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerDef")
            .field("name", &self.name)
            .field(
                "tools",
                &self.tools.iter().map(|t| t.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// A declared secret.
#[derive(Debug, Clone, Copy)]
pub struct SecretDef {
    /// Environment variable name.
    pub name: &'static str,
    /// What it is (printed when missing).
    pub description: &'static str,
}

/// How a secret reaches an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamAuthDef {
    /// `Authorization: Bearer <secret>`.
    Bearer {
        /// The secret.
        secret: &'static str,
    },
    /// `<name>: <secret>`.
    Header {
        /// Header name.
        name: &'static str,
        /// The secret.
        secret: &'static str,
    },
    /// `?<name>=<secret>`.
    Query {
        /// Query parameter name.
        name: &'static str,
        /// The secret.
        secret: &'static str,
    },
    /// `Authorization: Bearer <token>` with a token from an OAuth authorization server
    /// (crate::upstream_auth): exchanged for the caller's token, the server's own, or the
    /// caller's stored connection.
    OAuth(&'static OAuthDef),
}

/// Which OAuth grant gives an upstream's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthGrant {
    /// RFC 8693 token exchange of the caller's verified access token, as the server's own
    /// client: the upstream sees the caller's subject, never the caller's token.
    TokenExchange,
    /// The server's own token (RFC 6749 section 4.4): every caller acts as the server.
    ClientCredentials,
    /// Each caller's own connection (authorization code + PKCE, run once in the caller's
    /// browser through URL elicitation), kept encrypted in the token vault.
    UserAuthorization,
}

/// How the server authenticates as an OAuth client at the upstream's authorization server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthDef {
    /// A public client (PKCE only; `user_oauth` only).
    None,
    /// HTTP Basic with the client secret held in the named declared secret.
    SecretBasic {
        /// The declared secret holding the client secret.
        secret: &'static str,
    },
    /// The client secret in the form body.
    SecretPost {
        /// The declared secret holding the client secret.
        secret: &'static str,
    },
    /// An RFC 7523 client assertion signed with the PEM private key in the named secret.
    PrivateKeyJwt {
        /// The declared secret holding the PEM private key.
        key: &'static str,
    },
}

/// An upstream's OAuth client: where its tokens come from and what it asks for. URLs are
/// either given, or discovered from `issuer` (RFC 8414, then OpenID Connect discovery);
/// each `*_env` names an environment variable that overrides its value at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OAuthDef {
    /// The grant.
    pub grant: OAuthGrant,
    /// The authorization server's issuer identifier (discovery).
    pub issuer: Option<&'static str>,
    /// Environment override of `issuer`.
    pub issuer_env: Option<&'static str>,
    /// The token endpoint.
    pub token_url: Option<&'static str>,
    /// Environment override of `token_url`.
    pub token_url_env: Option<&'static str>,
    /// The authorization endpoint (`user_oauth`).
    pub authorization_url: Option<&'static str>,
    /// Environment override of `authorization_url`.
    pub authorization_url_env: Option<&'static str>,
    /// The server's client id at that authorization server.
    pub client_id: &'static str,
    /// Environment override of `client_id`.
    pub client_id_env: Option<&'static str>,
    /// How the server authenticates as that client.
    pub client_auth: ClientAuthDef,
    /// RFC 8693 `audience` (token exchange, client credentials).
    pub audience: Option<&'static str>,
    /// RFC 8707 `resource`.
    pub resource: Option<&'static str>,
    /// Scopes asked for, unless a tool names its own (`upstream_scopes`).
    pub scopes: &'static [&'static str],
}

/// An upstream HTTP API.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamDef {
    /// Id used by tools.
    pub id: &'static str,
    /// Base URL.
    pub base_url: &'static str,
    /// Environment variable overriding the base URL.
    pub base_url_env: Option<&'static str>,
    /// Credential.
    pub auth: Option<UpstreamAuthDef>,
    /// Hosts requests may reach (empty: the base URL's host).
    pub allow_hosts: &'static [&'static str],
    /// Per-request timeout.
    pub timeout_ms: u64,
    /// Retries on 429/502/503.
    pub max_retries: u32,
}

/// Tool behaviour hints.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnnotationsDef {
    /// `readOnlyHint`.
    pub read_only: Option<bool>,
    /// `destructiveHint`.
    pub destructive: Option<bool>,
    /// `idempotentHint`.
    pub idempotent: Option<bool>,
    /// `openWorldHint`.
    pub open_world: Option<bool>,
}

/// A tool.
#[derive(Clone)]
pub struct ToolDef {
    /// Name.
    pub name: &'static str,
    /// Title.
    pub title: Option<&'static str>,
    /// Description.
    pub description: &'static str,
    /// The input JSON Schema, as JSON text (served verbatim).
    pub input_schema: &'static str,
    /// The output JSON Schema, as JSON text.
    pub output_schema: Option<&'static str>,
    /// Hints.
    pub annotations: AnnotationsDef,
    /// Scopes a call needs.
    pub scopes: &'static [&'static str],
    /// Whether a call may run as an MCP task (crate::tasks).
    pub task: TaskSupport,
    /// The tool's own rate limit per caller (spec `rate_limit`), on top of `--rate-limit`.
    pub rate_limit: Option<RateLimitDef>,
    /// What a call does.
    pub handler: Handler,
}

/// A tool's own rate limit: at most `count` calls per `per_secs` seconds per caller (token
/// issuer and subject), `count` of them at once (spec `rate_limit: 10/min`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitDef {
    /// Calls per window (1 to 1,000,000).
    pub count: u32,
    /// The window in seconds.
    pub per_secs: u32,
}

/// Whether a tool runs as an MCP task (the `io.modelcontextprotocol/tasks` extension) when
/// the client declares that extension. The runtime does the task work: a tool body never
/// knows whether it runs as a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TaskSupport {
    /// Always answered in the `tools/call` response.
    #[default]
    Forbidden,
    /// Runs as a task for a client that declared the extension, directly otherwise.
    Optional,
    /// Runs only as a task: a client that did not declare the extension is refused with
    /// `-32021` (missing required client capability).
    Required,
}

impl std::fmt::Debug for ToolDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolDef")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A tool body.
#[derive(Clone)]
pub enum Handler {
    /// An HTTP call to an upstream.
    Http(HttpDef),
    /// Rust code.
    Rust(RustHandler),
    /// Deletes the caller's stored connection to this `user_oauth` upstream (by id).
    Disconnect(&'static str),
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http(h) => f.debug_tuple("Http").field(h).finish(),
            Self::Rust(_) => f.write_str("Rust(..)"),
            Self::Disconnect(u) => f.debug_tuple("Disconnect").field(u).finish(),
        }
    }
}

/// HTTP methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

/// Which input fields form the JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyDef {
    /// No body.
    None,
    /// These fields.
    Fields(&'static [&'static str]),
    /// Every field not used in the path, query or headers.
    Rest,
    /// This field's value is the whole body (absent: no body).
    Field(&'static str),
}

/// How an HTTP tool's body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyFormat {
    /// `application/json`.
    #[default]
    Json,
    /// `application/x-www-form-urlencoded`: a scalar is `key=value`, a top-level array of
    /// scalars is one pair per element (`key=a&key=b`), an object is bracketed
    /// (`key[field]=value`) and arrays inside brackets are indexed (`key[field][0]=a`,
    /// `key[0][field]=value`); null values are left out. The body must be an object.
    Form,
}

/// An HTTP tool body.
#[derive(Debug, Clone, Copy)]
pub struct HttpDef {
    /// Upstream id.
    pub upstream: &'static str,
    /// Method.
    pub method: Method,
    /// Path template (`/repos/{owner}`).
    pub path: &'static str,
    /// Query parameters: name, template.
    pub query: &'static [(&'static str, &'static str)],
    /// Headers: name, template.
    pub headers: &'static [(&'static str, &'static str)],
    /// Body.
    pub body: BodyDef,
    /// Body encoding.
    pub body_format: BodyFormat,
    /// Output field, JSON pointer into the response.
    pub response_map: &'static [(&'static str, &'static str)],
    /// Scopes of the upstream token this tool asks for (token exchange and client
    /// credentials); empty: the upstream's own `scopes`.
    pub upstream_scopes: &'static [&'static str],
}

/// A static resource.
#[derive(Debug, Clone, Copy)]
pub struct ResourceDef {
    /// URI.
    pub uri: &'static str,
    /// Name.
    pub name: &'static str,
    /// Title.
    pub title: Option<&'static str>,
    /// Description.
    pub description: Option<&'static str>,
    /// MIME type.
    pub mime_type: Option<&'static str>,
    /// Content.
    pub content: ResourceContent,
    /// Clients may subscribe to updates (`resources/subscribe`).
    pub subscribable: bool,
}

/// A resource template: URIs matching `uri_template` (RFC 6570, simple `{name}` variables)
/// read as `text` with the same placeholders filled in.
#[derive(Debug, Clone, Copy)]
pub struct ResourceTemplateDef {
    /// The URI template.
    pub uri_template: &'static str,
    /// Name.
    pub name: &'static str,
    /// Title.
    pub title: Option<&'static str>,
    /// Description.
    pub description: Option<&'static str>,
    /// MIME type of every matching resource.
    pub mime_type: Option<&'static str>,
    /// Content template (`{name}` placeholders, `{{`/`}}` literal braces). Values are
    /// percent-decoded from the URI and, for a JSON MIME type, escaped as JSON string
    /// content.
    pub text: &'static str,
    /// Completion values per template variable.
    pub completions: &'static [(&'static str, &'static [&'static str])],
}

/// Resource content.
#[derive(Debug, Clone, Copy)]
pub enum ResourceContent {
    /// Text.
    Text(&'static str),
    /// Base64 data.
    Blob(&'static str),
}

/// A prompt.
#[derive(Clone)]
pub struct PromptDef {
    /// Name.
    pub name: &'static str,
    /// Title.
    pub title: Option<&'static str>,
    /// Description.
    pub description: Option<&'static str>,
    /// Arguments.
    pub arguments: &'static [PromptArgumentDef],
    /// Messages (static prompts).
    pub messages: &'static [PromptMessageDef],
    /// Rust code producing the messages instead.
    pub handler: Option<PromptHandler>,
}

impl std::fmt::Debug for PromptDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptDef")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A prompt argument.
#[derive(Debug, Clone, Copy)]
pub struct PromptArgumentDef {
    /// Name.
    pub name: &'static str,
    /// Description.
    pub description: Option<&'static str>,
    /// Whether it must be given.
    pub required: bool,
    /// Values offered by `completion/complete`.
    pub completions: &'static [&'static str],
}

/// A prompt message.
#[derive(Debug, Clone, Copy)]
pub struct PromptMessageDef {
    /// Whether the assistant says it (else the user).
    pub assistant: bool,
    /// Content.
    pub content: PromptContent,
}

/// Prompt message content.
#[derive(Debug, Clone, Copy)]
pub enum PromptContent {
    /// Text with `{argument}` placeholders.
    Text(&'static str),
    /// The URI of a declared static resource, embedded.
    Resource(&'static str),
    /// A base64 image and its MIME type.
    Image(&'static str, &'static str),
}
