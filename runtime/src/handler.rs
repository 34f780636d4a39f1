//! The rmcp `ServerHandler` over a [`ServerDef`]: tools, resources and prompts served from
//! the definition, in every protocol era rmcp speaks.

#![allow(deprecated)] // logging/setLevel is deprecated by SEP-2577 but still in the spec

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use rmcp::model::RequestStateCodec;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CompleteRequestParams, CompleteResult, CompletionInfo,
    ContentBlock, GetPromptRequestParams, GetPromptResponse, GetPromptResult, Implementation,
    JsonObject, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, Prompt, PromptArgument, PromptMessage,
    PromptsCapability, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    Reference, Resource, ResourceContents, ResourceTemplate, ResourcesCapability, Role,
    ServerCapabilities, ServerConfig, SetLevelRequestParams, SubscribeRequestParams,
    SubscriptionFilter, Tool, ToolAnnotations, ToolsCapability, UnsubscribeRequestParams,
};
use rmcp::model::{
    CancelTaskParams, ClientCapabilities, CreateTaskResult, GetTaskParams, GetTaskResult,
    UpdateTaskParams,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::Value;

use crate::app::AnyState;
use crate::context::{Retry, SessionLogLevel, ToolContext};
use crate::def::{
    BoxFuture, Handler, PromptContent, ResourceContent, ResourceTemplateDef, ServerDef,
    TaskSupport, UpstreamAuthDef,
};
use crate::http_tool::{self, Upstream};
use crate::listen_cap::ListenCap;
use crate::output::{ToolError, ToolOutput};
use crate::secrets::Secrets;
use crate::tasks::{Owner, TaskInput, TaskStore};
use crate::validate::{self, InputValidator};

/// Everything a running server shares between requests.
pub(crate) struct Shared {
    pub(crate) def: ServerDef,
    pub(crate) tools: Vec<Tool>,
    /// Each tool's compiled input schema, in the order of `tools`.
    pub(crate) validators: Vec<InputValidator>,
    pub(crate) index: HashMap<&'static str, usize>,
    pub(crate) upstreams: HashMap<&'static str, Upstream>,
    pub(crate) secrets: Secrets,
    pub(crate) http: reqwest::Client,
    /// `initialize` / `server/discover` answer, built once.
    pub(crate) info: ServerConfig,
    /// Seals `requestState` (HMAC, key random per process).
    pub(crate) state: Arc<RequestStateCodec>,
    /// Open `subscriptions/listen` streams (crate::listen_cap).
    pub(crate) listens: ListenCap,
    /// The server's state, set once by the start-up hook (crate::app).
    pub(crate) app_state: OnceLock<AnyState>,
    /// Tools running as MCP tasks (crate::tasks).
    pub(crate) tasks: TaskStore,
    /// Where spans go, once traces are on (crate::traces).
    pub(crate) traces: OnceLock<bmm_middleware::Traces>,
    /// Where tool calls are audited, once an audit log is on (crate::observe).
    pub(crate) audit: OnceLock<bmm_middleware::AuditLog>,
    /// The scope policy `tools/list` is filtered by, once filtering is on
    /// (crate::tools_list).
    pub(crate) list_filter: OnceLock<bmm_middleware::ScopePolicy>,
    /// OAuth upstreams' clients and tokens (crate::upstream_auth).
    pub(crate) upstream_tokens: crate::upstream_auth::UpstreamTokens,
    /// Per-user connections (crate::upstream_auth::user), once the vault is open.
    pub(crate) connections: OnceLock<Arc<crate::upstream_auth::user::Connections>>,
}

/// The MCP server: cheap to clone, one per session or request as rmcp asks.
#[derive(Clone)]
pub struct McpServer {
    shared: Arc<Shared>,
    log_level: SessionLogLevel,
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
        let mut validators = Vec::with_capacity(def.tools.len());
        let mut index = HashMap::new();
        for (i, t) in def.tools.iter().enumerate() {
            let input = schema(t.input_schema, t.name)?;
            validators.push(InputValidator::compile(
                t.name,
                &Value::Object((*input).clone()),
            )?);
            let mut tool = Tool::new(t.name, t.description, input);
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
        let upstream_tokens =
            crate::upstream_auth::UpstreamTokens::new(def.upstreams, &secrets, &env, &http)?;
        Ok(Self {
            shared: Arc::new(Shared {
                info: server_info(&def),
                def,
                tools,
                validators,
                index,
                upstreams,
                secrets,
                http,
                state: Arc::new(RequestStateCodec::new_unchecked(
                    rand::random::<[u8; 32]>().to_vec(),
                )),
                listens: ListenCap::default(),
                app_state: OnceLock::new(),
                tasks: TaskStore::default(),
                traces: OnceLock::new(),
                audit: OnceLock::new(),
                list_filter: OnceLock::new(),
                upstream_tokens,
                connections: OnceLock::new(),
            }),
            log_level: SessionLogLevel::new(),
        })
    }

    /// A handler for a new session (or a stateless request): shares everything built
    /// once, with its own session state (the log level).
    pub fn session(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            log_level: SessionLogLevel::new(),
        }
    }

    pub(crate) fn def(&self) -> &ServerDef {
        &self.shared.def
    }

    /// What every request shares (per-user connections are installed into it).
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Installs the server's state (what the start-up hook built), which every Rust tool
    /// and prompt then reaches through [`ToolContext::with_state`]. Once per server: a
    /// second call is refused and keeps the first state.
    pub fn set_state<S: std::any::Any + Send + Sync>(&self, state: S) -> Result<(), String> {
        self.shared
            .app_state
            .set(Arc::new(state))
            .map_err(|_| "the server's state is already set".to_owned())
    }

    /// Writes an audit line per `tools/call` to `audit` (crate::observe). Once per server:
    /// a second call is ignored.
    pub fn set_audit(&self, audit: bmm_middleware::AuditLog) {
        let _ = self.shared.audit.set(audit);
    }

    /// The audit log, once [`McpServer::set_audit`] installed one.
    pub(crate) fn audit(&self) -> Option<&bmm_middleware::AuditLog> {
        self.shared.audit.get()
    }

    /// Turns traces on: MCP server spans and upstream client spans go to `traces`
    /// (crate::traces). Once per server: a second call is ignored.
    pub fn set_traces(&self, traces: bmm_middleware::Traces) {
        let _ = self.shared.traces.set(traces);
    }

    /// Lists only the tools each request's token may call, by `policy` (the scope policy
    /// the middleware enforces; crate::tools_list). Once per server: a second call is
    /// ignored.
    pub fn filter_tools_list_by_scope(&self, policy: bmm_middleware::ScopePolicy) {
        let _ = self.shared.list_filter.set(policy);
    }

    /// Whether `tools/list` is filtered by the caller's scopes.
    pub fn filters_tools_list_by_scope(&self) -> bool {
        self.shared.list_filter.get().is_some()
    }

    /// The tracer, when traces are on.
    pub(crate) fn traces(&self) -> Option<&bmm_middleware::Traces> {
        self.shared.traces.get()
    }

    /// What the start-up hook gets for this server.
    pub(crate) fn startup(&self, stdio: bool) -> crate::app::Startup {
        crate::app::Startup {
            secrets: self.shared.secrets.clone(),
            stdio,
            name: self.shared.def.name,
        }
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        self.shared.info.clone()
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.shared
            .index
            .get(name)
            .map(|i| self.shared.tools[*i].clone())
    }

    /// Every tool, or those the request's token may call (crate::tools_list).
    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let shared = &self.shared;
        Ok(match shared.list_filter.get() {
            Some(policy) => crate::tools_list::filtered(
                policy,
                cx.extensions.get::<http::request::Parts>(),
                &shared.def.tools,
                &shared.tools,
            ),
            None => ListToolsResult::with_all_items(shared.tools.clone()),
        })
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        // Timed and audited whatever the outcome (crate::observe, rule 1).
        let declared = self.shared.index.get(request.name.as_ref());
        let call = crate::observe::ToolCall::start(
            self.shared.audit.get(),
            declared.map(|&i| self.shared.def.tools[i].name),
            &request,
            &cx,
        );
        let response = call.run(self.call_tool_unobserved(request, cx)).await;
        call.finish(&response);
        response
    }

    /// `tasks/get`: only the caller that created the task sees it (crate::tasks, rule 1).
    async fn get_task(
        &self,
        request: GetTaskParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let owner = task_owner(&cx)?;
        self.shared
            .tasks
            .get(&owner, &request.task_id)
            .map(GetTaskResult::new)
    }

    /// `tasks/update`: answers to the questions a running task asked.
    async fn update_task(
        &self,
        request: UpdateTaskParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let owner = task_owner(&cx)?;
        self.shared
            .tasks
            .update(&owner, &request.task_id, request.input_responses)
    }

    /// `tasks/cancel`: stops the task's work (crate::tasks, rule 5).
    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let owner = task_owner(&cx)?;
        self.shared.tasks.cancel(&owner, &request.task_id)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let resource_templates = self
            .shared
            .def
            .resource_templates
            .iter()
            .map(|t| {
                let mut res = ResourceTemplate::new(t.uri_template, t.name);
                if let Some(v) = t.title {
                    res = res.with_title(v);
                }
                if let Some(v) = t.description {
                    res = res.with_description(v);
                }
                if let Some(v) = t.mime_type {
                    res = res.with_mime_type(v);
                }
                res
            })
            .collect();
        Ok(ListResourceTemplatesResult {
            resource_templates,
            ..Default::default()
        })
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let def = &self.shared.def;
        let argument = request.argument.name.as_str();
        let candidates: &[&str] = match &request.r#ref {
            Reference::Prompt(p) => {
                let Some(prompt) = def.prompts.iter().find(|x| x.name == p.name) else {
                    return Err(ErrorData::invalid_params(
                        format!("unknown prompt: {}", p.name),
                        None,
                    ));
                };
                prompt
                    .arguments
                    .iter()
                    .find(|a| a.name == argument)
                    .map_or(&[], |a| a.completions)
            }
            Reference::Resource(r) => {
                let Some(template) = def
                    .resource_templates
                    .iter()
                    .find(|t| t.uri_template == r.uri)
                else {
                    return Err(ErrorData::invalid_params(
                        format!("unknown resource template: {}", r.uri),
                        None,
                    ));
                };
                template
                    .completions
                    .iter()
                    .find(|(name, _)| *name == argument)
                    .map_or(&[], |(_, values)| *values)
            }
            _ => &[],
        };
        Ok(CompleteResult::new(completions(
            candidates,
            &request.argument.value,
        )))
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.log_level.set(request.level);
        Ok(())
    }

    /// 2026-07-28 `subscriptions/listen`: accepted for subscribable resources. The lists
    /// are static (no `listChanged` is advertised) and static content never changes, so the
    /// stream only carries its acknowledgment until the client closes it. A server without
    /// subscribable resources does not implement it (crate::listen_cap, rule 1).
    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let resources = self.shared.def.resources;
        if !resources.iter().any(|r| r.subscribable) {
            return None;
        }
        let mut accepted = SubscriptionFilter::new();
        accepted.resource_subscriptions = requested.resource_subscriptions.as_ref().map(|uris| {
            uris.iter()
                .filter(|uri| {
                    resources
                        .iter()
                        .any(|r| r.subscribable && r.uri == uri.as_str())
                })
                .cloned()
                .collect()
        });
        Some(accepted)
    }

    /// Holds the stream open until the client closes it, counted against the caps of
    /// crate::listen_cap (rule 2).
    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let auth = context
            .request_context()
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| bmm_middleware::AuthContext::from_parts(parts).ok());
        let _permit = self.shared.listens.acquire(auth)?;
        context.cancelled().await;
        Ok(())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.subscribable(&request.uri)
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.subscribable(&request.uri)
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
        let def = &self.shared.def;
        if let Some(r) = def.resources.iter().find(|r| r.uri == uri) {
            return Ok(ReadResourceResult::new(vec![contents(r)]).into());
        }
        for t in def.resource_templates {
            if let Some(vars) = crate::template::match_uri(t.uri_template, uri) {
                return Ok(ReadResourceResult::new(vec![template_contents(t, uri, &vars)]).into());
            }
        }
        Err(ErrorData::resource_not_found(
            format!("resource not found: {uri}"),
            Some(serde_json::json!({"uri": uri})),
        ))
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
                    .map(|arg| {
                        let a = PromptArgument::new(arg.name).with_required(arg.required);
                        match arg.description {
                            Some(d) => a.with_description(d),
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

    /// Every answer, result or error, leaves with secrets redacted (crate::secrets).
    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let secrets = &self.shared.secrets;
        match self.prompt(request, cx).await {
            Ok(GetPromptResponse::Complete(result)) => secrets
                .redact_serde(result)
                .map(GetPromptResponse::Complete)
                .ok_or_else(crate::secrets::unredactable),
            Ok(GetPromptResponse::InputRequired(result)) => secrets
                .redact_input_required(result)
                .map(GetPromptResponse::InputRequired),
            Ok(_) => Err(crate::secrets::unredactable()),
            Err(error) => Err(secrets.redact_error(error)),
        }
    }
}

impl McpServer {
    /// `prompts/get` before redaction.
    async fn prompt(
        &self,
        request: GetPromptRequestParams,
        cx: RequestContext<RoleServer>,
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
        let args =
            validate::prompt_arguments(p.name, p.arguments, request.arguments.unwrap_or_default())?;
        if let Some(handler) = &p.handler {
            let retry = Retry {
                input_responses: request.input_responses,
                request_state: request.request_state,
            };
            let ctx = ToolContext::new(
                cx,
                self.log_level.clone(),
                retry,
                self.shared.state.clone(),
                self.shared.secrets.clone(),
                &format!("prompt:{}", p.name),
                &Value::Object(args.clone()),
            )
            .with_app_state(self.shared.app_state.get().cloned());
            return match handler(ctx, args).await {
                Ok(messages) => {
                    let mut result = GetPromptResult::new(messages);
                    if let Some(d) = p.description {
                        result = result.with_description(d);
                    }
                    Ok(result.into())
                }
                Err(e) => e.into_prompt_response(),
            };
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

impl McpServer {
    /// `tools/call` itself; [`ServerHandler::call_tool`] measures it.
    async fn call_tool_unobserved(
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
        let retry = Retry {
            input_responses: request.input_responses,
            request_state: request.request_state,
        };
        let tool = &shared.def.tools[i];
        // Validated before anything else runs (crate::validate, rule 2).
        let args = Value::Object(request.arguments.unwrap_or_default());
        shared.validators[i].check(tool.name, &args)?;
        // A task only for a client that declared the extension (crate::tasks).
        let declared = || {
            cx.client_capabilities()
                .is_some_and(|caps| caps.supports_tasks())
        };
        match tool.task {
            TaskSupport::Forbidden => {}
            TaskSupport::Optional | TaskSupport::Required if declared() => {
                return self.call_as_task(i, args, retry, cx).await;
            }
            TaskSupport::Optional => {}
            TaskSupport::Required => {
                return Err(ErrorData::missing_required_client_capability(
                    ClientCapabilities::builder().enable_tasks().build(),
                ));
            }
        }
        let outcome = run_tool(
            Arc::clone(shared),
            self.log_level.clone(),
            i,
            args,
            retry,
            cx,
            None,
        )
        .await;
        respond(shared, tool.name, outcome)
    }

    /// `tools/call` as an MCP task: the task is created, the tool polled once, and then
    /// it runs on its own. A tool that asks up front (`ToolContext::ask_upfront`) on
    /// that first poll gets its "input required" round answered directly and no task is
    /// left behind; anything else returns the task (crate::tasks).
    async fn call_as_task(
        &self,
        i: usize,
        args: Value,
        retry: Retry,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let shared = &self.shared;
        let name = shared.def.tools[i].name;
        let owner = task_owner(&cx)?;
        let legacy = !cx
            .protocol_version()
            .is_some_and(|v| v >= rmcp::model::ProtocolVersion::V_2026_07_28);
        let input = match shared.tasks.create(owner, legacy.then(|| cx.peer.clone())) {
            Ok(input) => input,
            // At a running-task limit (the only refusal), an `optional` tool answers
            // directly: SEP-2663 lets the server decide per request whether to make a
            // task, and a client declaring the extension must take either result. This
            // adds no work a client without the extension could not already start.
            Err(_) if shared.def.tools[i].task == TaskSupport::Optional => {
                let outcome = run_tool(
                    Arc::clone(shared),
                    self.log_level.clone(),
                    i,
                    args,
                    retry,
                    cx,
                    None,
                )
                .await;
                return respond(shared, name, outcome);
            }
            Err(refused) => return Err(refused),
        };
        let mut work = run_tool(
            Arc::clone(shared),
            self.log_level.clone(),
            i,
            args,
            retry,
            cx,
            Some(input.clone()),
        );
        let first = std::future::poll_fn(|c| std::task::Poll::Ready(work.as_mut().poll(c))).await;
        match first {
            std::task::Poll::Ready(outcome) => {
                let response = respond(shared, name, outcome);
                if matches!(response, Ok(CallToolResponse::InputRequired(_))) {
                    shared.tasks.forget(&input);
                    return response;
                }
                shared.tasks.finish(&input, response);
            }
            std::task::Poll::Pending => {
                let owned = Arc::clone(shared);
                shared.tasks.start(
                    &input,
                    Box::pin(async move { respond(&owned, name, work.await) }),
                );
            }
        }
        let task = shared.tasks.snapshot(&input).ok_or_else(|| {
            ErrorData::internal_error("the task ended before it was returned", None)
        })?;
        Ok(CallToolResponse::Task(CreateTaskResult::new(task)))
    }
}

/// The caller a task belongs to (crate::tasks, rule 1).
fn task_owner(cx: &RequestContext<RoleServer>) -> Result<Owner, ErrorData> {
    let auth = cx
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| bmm_middleware::AuthContext::from_parts(parts).ok());
    Owner::of(auth).ok_or_else(|| {
        ErrorData::invalid_request("tasks need a token that names its subject (`sub`)", None)
    })
}

/// The span an HTTP tool's upstream calls descend from: the request's MCP span, when
/// traces are on (crate::traces::upstream).
fn upstream_trace(
    shared: &Shared,
    cx: &RequestContext<RoleServer>,
) -> Option<crate::traces::upstream::UpstreamTrace> {
    let traces = shared.traces.get()?;
    let parts = cx.extensions.get::<http::request::Parts>()?;
    let span = parts.extensions.get::<crate::traces::mcp::McpSpan>()?;
    Some(crate::traces::upstream::UpstreamTrace {
        traces: traces.clone(),
        parent: span.0.clone(),
    })
}

/// Runs tool `i`: an HTTP call to its upstream or its Rust function. Owns everything it
/// uses, so it can also run as a task's body.
fn run_tool(
    shared: Arc<Shared>,
    log_level: SessionLogLevel,
    i: usize,
    args: Value,
    retry: Retry,
    cx: RequestContext<RoleServer>,
    task: Option<TaskInput>,
) -> BoxFuture<Result<ToolOutput, ToolError>> {
    Box::pin(async move {
        let tool = &shared.def.tools[i];
        match &tool.handler {
            Handler::Http(http) => match (shared.upstreams.get(http.upstream), args.as_object()) {
                (Some(upstream), Some(fields)) => {
                    let trace = upstream_trace(&shared, &cx);
                    if let Some(UpstreamAuthDef::OAuth(oauth)) = upstream.def.auth {
                        // A token got for this call (crate::upstream_auth): the call's
                        // context carries the caller (exchange, per-user connections).
                        let mut ctx = ToolContext::new(
                            cx,
                            log_level,
                            retry,
                            shared.state.clone(),
                            shared.secrets.clone(),
                            &format!("tool:{}", tool.name),
                            &args,
                        )
                        .with_app_state(shared.app_state.get().cloned());
                        if let Some(task) = task {
                            ctx = ctx.with_task(task);
                        }
                        crate::upstream_auth::execute(
                            &shared,
                            http,
                            upstream,
                            oauth,
                            fields,
                            trace.as_ref(),
                            &ctx,
                        )
                        .await
                    } else {
                        http_tool::execute(
                            http,
                            upstream,
                            &shared.secrets,
                            &shared.http,
                            fields,
                            trace.as_ref(),
                            None,
                        )
                        .await
                    }
                }
                (None, _) | (_, None) => Err(crate::ToolError::new(
                    "the tool's upstream is not configured",
                )),
            },
            Handler::Disconnect(upstream) => {
                let ctx = ToolContext::new(
                    cx,
                    log_level,
                    retry,
                    shared.state.clone(),
                    shared.secrets.clone(),
                    &format!("tool:{}", tool.name),
                    &args,
                );
                crate::upstream_auth::user::disconnect(&shared, &ctx, upstream).await
            }
            Handler::Rust(f) => {
                let mut ctx = ToolContext::new(
                    cx,
                    log_level,
                    retry,
                    shared.state.clone(),
                    shared.secrets.clone(),
                    &format!("tool:{}", tool.name),
                    &args,
                )
                .with_app_state(shared.app_state.get().cloned());
                if let Some(task) = task {
                    ctx = ctx.with_task(task);
                }
                f(ctx, args).await
            }
        }
    })
}

/// A tool's outcome as the `tools/call` answer. Secrets never leave in a result, whatever
/// the tool or upstream echoed (rule 9 of crate::http_tool; crate::secrets).
fn respond(
    shared: &Shared,
    name: &str,
    outcome: Result<ToolOutput, ToolError>,
) -> Result<CallToolResponse, ErrorData> {
    let secrets = &shared.secrets;
    let response = match outcome {
        Ok(output) => Ok(output.into_result().into()),
        Err(error) => error.into_response(),
    };
    match response {
        Ok(CallToolResponse::Complete(result)) => {
            Ok(CallToolResponse::Complete(secrets.redact_result(result)))
        }
        Ok(CallToolResponse::InputRequired(result)) => secrets
            .redact_input_required(result)
            .map(CallToolResponse::InputRequired),
        Ok(CallToolResponse::Task(task)) => secrets
            .redact_serde(task)
            .map(CallToolResponse::Task)
            .ok_or_else(crate::secrets::unredactable),
        // A kind of response this runtime does not know how to redact never leaves.
        Ok(_) => Err(crate::secrets::unredactable()),
        Err(error) => {
            let error = secrets.redact_error(error);
            tracing::debug!(tool = name, error = %error.message, "tool did not complete");
            Err(error)
        }
    }
}

/// The server's capabilities and identity, derived once from the definition.
fn server_info(def: &ServerDef) -> ServerConfig {
    let mut caps = ServerCapabilities::default();
    if !def.tools.is_empty() {
        caps.tools = Some(ToolsCapability::default());
    }
    if !def.resources.is_empty() || !def.resource_templates.is_empty() {
        let mut resources = ResourcesCapability::default();
        if def.resources.iter().any(|r| r.subscribable) {
            resources.subscribe = Some(true);
        }
        caps.resources = Some(resources);
    }
    if !def.prompts.is_empty() {
        caps.prompts = Some(PromptsCapability::default());
    }
    if def.prompts.iter().any(|p| !p.arguments.is_empty()) || !def.resource_templates.is_empty() {
        caps.completions = Some(JsonObject::new());
    }
    caps.logging = Some(JsonObject::new());
    if def.tools.iter().any(|t| t.task != TaskSupport::Forbidden) {
        caps.extensions.get_or_insert_with(Default::default).insert(
            rmcp::model::TASKS_EXTENSION_ID.to_owned(),
            JsonObject::new(),
        );
    }
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

/// Fills `{name}` with the argument's text; unknown placeholders are left as written.
fn substitute(template: &str, args: &serde_json::Map<String, Value>) -> String {
    crate::template::render(template, |name| {
        args.get(name).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    })
}

/// The completion values starting with `prefix` (case-insensitive), at most 100.
fn completions(candidates: &[&str], prefix: &str) -> CompletionInfo {
    let prefix = prefix.to_lowercase();
    let matching: Vec<String> = candidates
        .iter()
        .filter(|c| c.to_lowercase().starts_with(&prefix))
        .map(|c| (*c).to_owned())
        .collect();
    let total = u32::try_from(matching.len()).unwrap_or(u32::MAX);
    let has_more = matching.len() > CompletionInfo::MAX_VALUES;
    let values: Vec<String> = matching
        .into_iter()
        .take(CompletionInfo::MAX_VALUES)
        .collect();
    let mut info = CompletionInfo::default();
    info.values = values;
    info.total = Some(total);
    info.has_more = Some(has_more);
    info
}

/// The contents of a templated resource: placeholders filled with the percent-decoded
/// URI values, JSON-escaped when the MIME type is JSON.
fn template_contents(
    t: &ResourceTemplateDef,
    uri: &str,
    vars: &[(String, &str)],
) -> ResourceContents {
    let json = t
        .mime_type
        .is_some_and(|m| m == "application/json" || m.ends_with("+json"));
    let text = crate::template::render(t.text, |name| {
        let raw = vars.iter().find(|(n, _)| n == name)?.1;
        let value = percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned();
        Some(if json {
            let quoted = Value::String(value).to_string();
            quoted[1..quoted.len() - 1].to_owned()
        } else {
            value
        })
    });
    ResourceContents::TextResourceContents {
        uri: uri.to_owned(),
        mime_type: t.mime_type.map(Into::into),
        text,
        meta: None,
    }
}

impl McpServer {
    /// `resources/subscribe` and `unsubscribe`: accepted for subscribable resources.
    /// Static content never changes, so no update is ever sent; the subscription is only
    /// acknowledged.
    fn subscribable(&self, uri: &str) -> Result<(), ErrorData> {
        match self.shared.def.resources.iter().find(|r| r.uri == uri) {
            Some(r) if r.subscribable => Ok(()),
            Some(_) => Err(ErrorData::invalid_params(
                format!("resource {uri} does not support subscriptions"),
                None,
            )),
            None => Err(ErrorData::resource_not_found(
                format!("resource not found: {uri}"),
                Some(serde_json::json!({"uri": uri})),
            )),
        }
    }
}
