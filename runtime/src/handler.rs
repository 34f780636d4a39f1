//! The rmcp `ServerHandler` over a [`ServerDef`]: tools, resources and prompts served from
//! the definition, in every protocol era rmcp speaks.

use std::collections::HashMap;
use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ContentBlock, GetPromptRequestParams,
    GetPromptResponse, GetPromptResult, Implementation, JsonObject, ListPromptsResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, Prompt, PromptArgument,
    PromptMessage, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, Role, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::Value;

use crate::context::ToolContext;
use crate::def::{Handler, PromptContent, ResourceContent, ServerDef};
use crate::http_tool::{self, Upstream};
use crate::secrets::Secrets;

/// Everything a running server shares between requests.
pub(crate) struct Shared {
    pub(crate) def: ServerDef,
    pub(crate) tools: Vec<Tool>,
    pub(crate) index: HashMap<&'static str, usize>,
    pub(crate) upstreams: HashMap<&'static str, Upstream>,
    pub(crate) secrets: Secrets,
    pub(crate) http: reqwest::Client,
}

/// The MCP server: cheap to clone, one per session or request as rmcp asks.
#[derive(Clone)]
pub struct McpServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("name", &self.shared.def.name)
            .finish_non_exhaustive()
    }
}

fn schema(text: &str, tool: &str) -> Result<Arc<JsonObject>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(Arc::new(map)),
        Ok(_) => Err(format!("the schema of tool `{tool}` is not a JSON object")),
        Err(e) => Err(format!("the schema of tool `{tool}` is not JSON: {e}")),
    }
}

impl McpServer {
    /// Builds the server: schemas parsed once, upstream URLs resolved (environment
    /// overrides applied), the HTTP client built. Errors name what is wrong.
    pub fn new(
        def: ServerDef,
        secrets: Secrets,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut tools = Vec::with_capacity(def.tools.len());
        let mut index = HashMap::new();
        for (i, t) in def.tools.iter().enumerate() {
            let mut tool = Tool::new(t.name, t.description, schema(t.input_schema, t.name)?);
            if let Some(title) = t.title {
                tool = tool.with_title(title);
            }
            if let Some(output) = t.output_schema {
                tool = tool.with_raw_output_schema(schema(output, t.name)?);
            }
            let a = t.annotations;
            if a.read_only.is_some()
                || a.destructive.is_some()
                || a.idempotent.is_some()
                || a.open_world.is_some()
            {
                tool = tool.with_annotations(ToolAnnotations::from_raw(
                    None,
                    a.read_only,
                    a.destructive,
                    a.idempotent,
                    a.open_world,
                ));
            }
            tools.push(tool);
            index.insert(t.name, i);
        }
        let mut upstreams = HashMap::new();
        for u in def.upstreams {
            upstreams.insert(u.id, Upstream::resolve(*u, &env)?);
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bmm-runtime/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            shared: Arc::new(Shared {
                def,
                tools,
                index,
                upstreams,
                secrets,
                http,
            }),
        })
    }

    pub(crate) fn def(&self) -> &ServerDef {
        &self.shared.def
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        let def = &self.shared.def;
        let caps = ServerCapabilities::builder();
        let caps = match (
            def.tools.is_empty(),
            def.resources.is_empty(),
            def.prompts.is_empty(),
        ) {
            (false, false, false) => caps
                .enable_tools()
                .enable_resources()
                .enable_prompts()
                .build(),
            (false, false, true) => caps.enable_tools().enable_resources().build(),
            (false, true, false) => caps.enable_tools().enable_prompts().build(),
            (false, true, true) => caps.enable_tools().build(),
            (true, false, false) => caps.enable_resources().enable_prompts().build(),
            (true, false, true) => caps.enable_resources().build(),
            (true, true, false) => caps.enable_prompts().build(),
            (true, true, true) => ServerCapabilities::default(),
        };
        let mut implementation = Implementation::new(def.name, def.version);
        if let Some(title) = def.title {
            implementation = implementation.with_title(title);
        }
        let info = ServerConfig::new(caps).with_server_info(implementation);
        match def.instructions {
            Some(text) => info.with_instructions(text),
            None => info,
        }
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.shared
            .index
            .get(name)
            .map(|i| self.shared.tools[*i].clone())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.shared.tools.clone()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let shared = &self.shared;
        let Some(&i) = shared.index.get(request.name.as_ref()) else {
            return Err(ErrorData::invalid_params(
                format!("unknown tool: {}", request.name),
                None,
            ));
        };
        let args = request.arguments.unwrap_or_default();
        let tool = &shared.def.tools[i];
        let outcome = match &tool.handler {
            Handler::Http(http) => match shared.upstreams.get(http.upstream) {
                Some(upstream) => {
                    http_tool::execute(http, upstream, &shared.secrets, &shared.http, &args).await
                }
                None => Err(crate::ToolError::new(
                    "the tool's upstream is not configured",
                )),
            },
            Handler::Rust(f) => f(ToolContext::new(cx), Value::Object(args)).await,
        };
        let result = match outcome {
            Ok(output) => output.into_result(),
            Err(error) => {
                tracing::debug!(tool = tool.name, error = %error, "tool failed");
                error.into_result()
            }
        };
        Ok(result.into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let resources = self
            .shared
            .def
            .resources
            .iter()
            .map(|r| {
                let mut res = Resource::new(r.uri, r.name);
                if let Some(t) = r.title {
                    res = res.with_title(t);
                }
                if let Some(d) = r.description {
                    res = res.with_description(d);
                }
                if let Some(m) = r.mime_type {
                    res = res.with_mime_type(m);
                }
                res
            })
            .collect();
        Ok(ListResourcesResult {
            resources,
            ..Default::default()
        })
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri.as_str();
        let Some(r) = self.shared.def.resources.iter().find(|r| r.uri == uri) else {
            return Err(ErrorData::resource_not_found(
                format!("resource not found: {uri}"),
                Some(serde_json::json!({"uri": uri})),
            ));
        };
        Ok(ReadResourceResult::new(vec![contents(r)]).into())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let prompts = self
            .shared
            .def
            .prompts
            .iter()
            .map(|p| {
                let args: Vec<PromptArgument> = p
                    .arguments
                    .iter()
                    .map(|(name, description, required)| {
                        let a = PromptArgument::new(*name).with_required(*required);
                        match description {
                            Some(d) => a.with_description(*d),
                            None => a,
                        }
                    })
                    .collect();
                let mut prompt =
                    Prompt::new(p.name, p.description, (!args.is_empty()).then_some(args));
                if let Some(t) = p.title {
                    prompt = prompt.with_title(t);
                }
                prompt
            })
            .collect();
        Ok(ListPromptsResult {
            prompts,
            ..Default::default()
        })
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let Some(p) = self
            .shared
            .def
            .prompts
            .iter()
            .find(|p| p.name == request.name)
        else {
            return Err(ErrorData::invalid_params(
                format!("unknown prompt: {}", request.name),
                None,
            ));
        };
        let args = request.arguments.unwrap_or_default();
        for (name, _, required) in p.arguments {
            if *required && !args.contains_key(*name) {
                return Err(ErrorData::invalid_params(
                    format!("prompt `{}` needs argument `{name}`", p.name),
                    None,
                ));
            }
        }
        let mut messages = Vec::with_capacity(p.messages.len());
        for m in p.messages {
            let role = if m.assistant {
                Role::Assistant
            } else {
                Role::User
            };
            let content = match m.content {
                PromptContent::Text(template) => ContentBlock::text(substitute(template, &args)),
                PromptContent::Resource(uri) => {
                    match self.shared.def.resources.iter().find(|r| r.uri == uri) {
                        Some(r) => ContentBlock::resource(contents(r)),
                        None => {
                            return Err(ErrorData::internal_error(
                                format!("prompt resource {uri} is not declared"),
                                None,
                            ));
                        }
                    }
                }
                PromptContent::Image(data, mime) => ContentBlock::image(data, mime),
            };
            messages.push(PromptMessage::new(role, content));
        }
        let mut result = GetPromptResult::new(messages);
        if let Some(d) = p.description {
            result = result.with_description(d);
        }
        Ok(result.into())
    }
}

fn contents(r: &crate::def::ResourceDef) -> ResourceContents {
    match r.content {
        ResourceContent::Text(text) => ResourceContents::TextResourceContents {
            uri: r.uri.into(),
            mime_type: r.mime_type.map(Into::into),
            text: text.into(),
            meta: None,
        },
        ResourceContent::Blob(blob) => ResourceContents::BlobResourceContents {
            uri: r.uri.into(),
            mime_type: r.mime_type.map(Into::into),
            blob: blob.into(),
            meta: None,
        },
    }
}

/// Replaces `{name}` with the argument's text; unknown placeholders are left as written.
fn substitute(template: &str, args: &serde_json::Map<String, Value>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let name = &after[..close];
                match args.get(name) {
                    Some(Value::String(s)) => out.push_str(s),
                    Some(other) => out.push_str(&other.to_string()),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}
