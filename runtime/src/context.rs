//! What a Rust tool gets besides its input: the caller's verified identity, and the MCP
//! conversation with the client — logging, progress, and questions to the client
//! (elicitation, sampling, roots) that work the same way in both protocol eras.
//!
//! Questions ([`ToolContext::ask`]) are the one place where the eras differ on the wire:
//! in an initialize-based session (2025-11-25 and older) the server sends the request to
//! the client and waits for the answer; in 2026-07-28 servers may not send requests, so
//! the tool answers "input required" and the client retries the call with the answers
//! (`inputResponses`). A tool written against `ask` is called again with the answers in
//! the second case, so it must not have side effects before its questions are answered.
//!
//! Sealed request state ([`ToolContext::seal_state`] / [`ToolContext::open_state`]) is
//! HMAC-sealed with a per-process key and bound (as authenticated associated data) to the
//! tool or prompt it was issued by, the caller (token `iss`, `sub` and `client_id`), and
//! the call's arguments (canonical JSON: keys sorted), and it lives [`STATE_TTL`] (10
//! minutes). Opening it in another tool, for another caller (another client of the same
//! user included), with other arguments, after it expired, or altered, is a JSON-RPC
//! invalid-params error
//! (`sealed_state_is_refused_in_another_tool_for_another_caller_or_arguments`,
//! `sealed_state_expires`). A token with neither `sub` nor `client_id` cannot be told
//! apart from another such token, so state is never sealed (a tool error) or opened
//! (invalid params) for it (`sealed_state_needs_a_caller_with_sub_or_client_id`). Without
//! authentication there is one anonymous caller.
#![allow(deprecated)] // logging and sampling are deprecated by SEP-2577 but still in the spec

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use bmm_middleware::AuthContext;
use rmcp::RoleServer;
use rmcp::model::{
    ClientCapabilities, CreateMessageRequest, CreateMessageRequestParams, CreateMessageResult,
    ElicitRequest, ElicitRequestParams, ElicitResult, ErrorData, InputRequest, InputRequiredResult,
    InputResponses, ListRootsRequest, ListRootsResult, LoggingLevel, LoggingMessageNotification,
    LoggingMessageNotificationParam, ProgressNotification, ProgressNotificationParam,
    RequestStateCodec, RequestStateError, SealOptions, ServerNotification,
};
use rmcp::service::RequestContext;
use serde_json::Value;

use crate::app::{AnyState, Context};
use crate::output::ToolError;
use crate::secrets::Secrets;

/// The log level a session asked for with `logging/setLevel` (`UNSET` until it does).
#[derive(Debug, Clone)]
pub(crate) struct SessionLogLevel(Arc<AtomicU8>);

const UNSET: u8 = u8::MAX;

pub(crate) fn severity(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

impl SessionLogLevel {
    pub(crate) fn new() -> Self {
        Self(Arc::new(AtomicU8::new(UNSET)))
    }

    pub(crate) fn set(&self, level: LoggingLevel) {
        self.0.store(severity(level), Ordering::Relaxed);
    }

    fn get(&self) -> Option<u8> {
        match self.0.load(Ordering::Relaxed) {
            UNSET => None,
            v => Some(v),
        }
    }
}

/// The call's tool arguments' companions from a retried 2026-07-28 request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Retry {
    pub(crate) input_responses: Option<InputResponses>,
    pub(crate) request_state: Option<String>,
}

/// How long a sealed request state can be opened.
pub const STATE_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// Who a call is made by, as far as sealed request state is concerned.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Caller<'a> {
    /// No authentication (`--no-auth`, stdio): there is one anonymous caller.
    Anonymous,
    /// A verified token: its `iss`, `sub` and `client_id`.
    Token {
        issuer: &'a str,
        subject: Option<&'a str>,
        client: Option<&'a str>,
    },
}

impl<'a> Caller<'a> {
    pub(crate) fn of(auth: Option<&'a AuthContext>) -> Self {
        auth.map_or(Self::Anonymous, |a| Self::Token {
            issuer: a.issuer(),
            subject: a.subject(),
            client: a.client_id(),
        })
    }
}

/// What sealed request state is bound to: the call (`tool:<name>` or `prompt:<name>`),
/// the caller (`iss`, `sub`, `client_id`) and the arguments, as unambiguous bytes (a
/// JSON array; an absent claim is `null`, never `""`). A token with neither `sub` nor
/// `client_id` names no caller that could be told apart from another: nothing is bound
/// (`None`), and state is neither sealed nor opened for it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Binding(Option<Vec<u8>>);

impl Binding {
    pub(crate) fn new(call: &str, caller: Caller<'_>, arguments: &Value) -> Self {
        let (issuer, subject, client) = match caller {
            Caller::Anonymous => (None, None, None),
            Caller::Token {
                subject: None,
                client: None,
                ..
            } => return Self(None),
            Caller::Token {
                issuer,
                subject,
                client,
            } => (Some(issuer), subject, client),
        };
        let mut args = String::new();
        canonical_json(arguments, &mut args);
        let parts = serde_json::json!(["bmm-request-state/2", call, issuer, subject, client, args]);
        Self(Some(parts.to_string().into_bytes()))
    }
}

const NO_CALLER: &str =
    "request state needs a caller: the access token has neither `sub` nor `client_id`";

/// JSON with object keys sorted, whatever order the map keeps them in.
fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(k) {
                    canonical_json(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Seals `value` bound to `binding`, opening for `ttl`.
pub(crate) fn seal_bound<T: serde::Serialize>(
    codec: &RequestStateCodec,
    binding: &Binding,
    value: &T,
    ttl: std::time::Duration,
) -> Result<String, ToolError> {
    let Some(binding) = &binding.0 else {
        return Err(ToolError::new(NO_CALLER));
    };
    codec
        .seal_json_with(value, &SealOptions::new().associated_data(binding).ttl(ttl))
        .map_err(|e| ToolError::new(format!("cannot seal the request state: {e}")))
}

/// Opens state sealed by [`seal_bound`] for the same binding.
pub(crate) fn open_bound<T: serde::de::DeserializeOwned>(
    codec: &RequestStateCodec,
    binding: &Binding,
    raw: &str,
) -> Result<T, ToolError> {
    let Some(binding) = &binding.0 else {
        return Err(ToolError::protocol(ErrorData::invalid_params(
            NO_CALLER, None,
        )));
    };
    codec.open_json_with(raw, binding).map_err(|e| {
        let message = match e {
            RequestStateError::Expired => "requestState has expired; start the call again",
            _ => {
                "requestState failed integrity verification (altered, or issued for another tool, caller or arguments)"
            }
        };
        ToolError::protocol(ErrorData::invalid_params(message, None))
    })
}

/// One question for the client.
#[derive(Debug, Clone)]
pub enum Question {
    /// Ask the user for structured input (`elicitation/create`).
    Elicit(ElicitRequestParams),
    /// Ask the client's model for a completion (`sampling/createMessage`).
    Sample(CreateMessageRequestParams),
    /// Ask for the client's roots (`roots/list`).
    Roots,
}

impl Question {
    /// A form elicitation: `message` and a flat JSON Schema of primitive properties
    /// (`requestedSchema`). Fails when the schema is not one MCP allows.
    pub fn form(message: impl Into<String>, schema: Value) -> Result<Self, ToolError> {
        let requested_schema = serde_json::from_value(schema).map_err(|e| {
            ToolError::new(format!(
                "the elicitation schema is not one MCP allows (an object of primitive properties): {e}"
            ))
        })?;
        Ok(Self::Elicit(ElicitRequestParams::FormElicitationParams {
            meta: None,
            message: message.into(),
            requested_schema,
        }))
    }

    /// A one-message sampling request with a text prompt.
    pub fn sample_text(prompt: impl Into<String>, max_tokens: u32) -> Self {
        Self::Sample(CreateMessageRequestParams::new(
            vec![rmcp::model::SamplingMessage::user_text(prompt)],
            max_tokens,
        ))
    }

    fn capability_missing(&self, caps: &ClientCapabilities) -> Option<ClientCapabilities> {
        let mut needed = ClientCapabilities::default();
        match self {
            Self::Elicit(_) if caps.elicitation.is_none() => {
                needed.elicitation = Some(Default::default());
            }
            Self::Sample(_) if caps.sampling.is_none() => {
                needed.sampling = Some(Default::default());
            }
            Self::Roots if caps.roots.is_none() => needed.roots = Some(Default::default()),
            _ => return None,
        }
        Some(needed)
    }

    fn into_input_request(self) -> InputRequest {
        match self {
            Self::Elicit(p) => InputRequest::Elicitation(ElicitRequest::new(p)),
            Self::Sample(p) => InputRequest::CreateMessage(CreateMessageRequest::new(p)),
            Self::Roots => InputRequest::ListRoots(ListRootsRequest::default()),
        }
    }
}

/// The context of one tool call.
#[derive(Debug, Clone)]
pub struct ToolContext {
    auth: Option<AuthContext>,
    request: RequestContext<RoleServer>,
    log_level: SessionLogLevel,
    retry: Retry,
    state: Arc<RequestStateCodec>,
    /// The call and its arguments; the [`Binding`] is worked out from them (and the
    /// caller) the first time request state is sealed or opened, not on every call.
    call: String,
    arguments: Value,
    binding: std::sync::OnceLock<Binding>,
    secrets: Secrets,
    /// The server's state (crate::app), once the start-up hook has built it.
    app_state: Option<AnyState>,
    /// Set when the call runs as an MCP task (crate::tasks): questions wait for
    /// `tasks/update` instead.
    task: Option<crate::tasks::TaskInput>,
}

impl ToolContext {
    /// The context of a call to `call` (`tool:<name>` or `prompt:<name>`) with `arguments`.
    pub(crate) fn new(
        request: RequestContext<RoleServer>,
        log_level: SessionLogLevel,
        retry: Retry,
        state: Arc<RequestStateCodec>,
        secrets: Secrets,
        call: &str,
        arguments: &Value,
    ) -> Self {
        let auth = request
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| AuthContext::from_parts(parts).ok().cloned());
        Self {
            auth,
            request,
            log_level,
            retry,
            state,
            call: call.to_owned(),
            arguments: arguments.clone(),
            binding: std::sync::OnceLock::new(),
            secrets,
            app_state: None,
            task: None,
        }
    }

    /// The same context for a call that runs as an MCP task (crate::tasks).
    pub(crate) fn with_task(mut self, task: crate::tasks::TaskInput) -> Self {
        self.task = Some(task);
        self
    }

    /// True when this call runs as an MCP task (the client polls `tasks/get`).
    pub fn is_task(&self) -> bool {
        self.task.is_some()
    }

    /// The same context with the server's state (crate::app), if it has one.
    pub(crate) fn with_app_state(mut self, app_state: Option<AnyState>) -> Self {
        self.app_state = app_state;
        self
    }

    /// This context with the server's state, which must be an `S` (crate::app, rule 2).
    /// Generated glue calls it with the crate's own `State` before each Rust tool or
    /// prompt; a server started without that state is a tool error naming the type.
    pub fn with_state<S: Any + Send + Sync>(self) -> Result<Context<S>, ToolError> {
        match self.app_state.clone().map(|state| state.downcast::<S>()) {
            Some(Ok(state)) => Ok(Context::new(self, state)),
            Some(Err(_)) | None => Err(ToolError::new(format!(
                "internal error: the server was not started with a `{}` state (its main must call bmm_runtime::run::main_with_state with it)",
                std::any::type_name::<S>()
            ))),
        }
    }

    /// The verified caller (`None` with `--no-auth` or over stdio).
    pub fn auth(&self) -> Option<&AuthContext> {
        self.auth.as_ref()
    }

    /// The rmcp request context: `peer`, `meta`, and `ct` to notice cancellation.
    pub fn request(&self) -> &RequestContext<RoleServer> {
        &self.request
    }

    /// True for a 2026-07-28 request (stateless: no server-to-client requests).
    pub fn is_stateless(&self) -> bool {
        self.request
            .protocol_version()
            .is_some_and(|v| v >= rmcp::model::ProtocolVersion::V_2026_07_28)
    }

    /// What the client declared it can do (per request in 2026-07-28, per session before).
    pub fn client_capabilities(&self) -> ClientCapabilities {
        self.request.client_capabilities().unwrap_or_default()
    }

    /// Sends a log message to the client, if it wants messages of this level: in a legacy
    /// session, every level until `logging/setLevel` sets a minimum; in 2026-07-28, only
    /// when the request's `_meta` names a level. Delivery failures are ignored. Secret
    /// values are redacted from `data`.
    pub async fn log(&self, level: LoggingLevel, data: impl Into<Value>) {
        let minimum = if self.is_stateless() {
            match self.request.meta.log_level() {
                Some(l) => severity(l),
                None => return,
            }
        } else {
            self.log_level.get().unwrap_or(0)
        };
        if severity(level) < minimum {
            return;
        }
        let mut data = data.into();
        self.secrets.redact_value(&mut data);
        let param = LoggingMessageNotificationParam::new(level, data);
        let note =
            ServerNotification::LoggingMessageNotification(LoggingMessageNotification::new(param));
        if let Err(e) = self.notify(note).await {
            tracing::debug!(error = %e, "log notification not delivered");
        }
    }

    /// Reports progress, if the caller asked for it with a `progressToken`. Secret values
    /// are redacted from `message`.
    pub async fn progress(&self, progress: f64, total: Option<f64>, message: Option<&str>) {
        let Some(token) = self.request.meta.get_progress_token() else {
            return;
        };
        let mut param = ProgressNotificationParam::new(token, progress);
        param.total = total;
        param.message = message.map(|m| self.secrets.redact(m));
        let note = ServerNotification::ProgressNotification(ProgressNotification::new(param));
        if let Err(e) = self.notify(note).await {
            tracing::debug!(error = %e, "progress notification not delivered");
        }
    }

    /// Sends `note` to the client: on the request's own response when the call came by
    /// the direct stateless path (crate::stateless, rule 5), else through rmcp's peer.
    async fn notify(&self, note: ServerNotification) -> Result<(), String> {
        match self.request.extensions.get::<crate::stateless::Outbox>() {
            Some(outbox) => outbox.send(note).await,
            None => self
                .request
                .peer
                .send_notification(note)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// The answer to a question this call asked in an earlier round (2026-07-28). Every
    /// answer MCP defines is a JSON object; anything else counts as no answer.
    pub fn input_response(&self, key: &str) -> Option<&Value> {
        self.retry
            .input_responses
            .as_ref()?
            .get(key)
            .filter(|v| v.is_object())
    }

    /// What this call's request state is bound to.
    fn binding(&self) -> &Binding {
        self.binding.get_or_init(|| {
            Binding::new(&self.call, Caller::of(self.auth.as_ref()), &self.arguments)
        })
    }

    /// The raw `requestState` the client echoed back. Untrusted: use
    /// [`ToolContext::open_state`] to read state this server sealed.
    pub fn request_state(&self) -> Option<&str> {
        self.retry.request_state.as_deref()
    }

    /// Seals `value` into an opaque `requestState` (HMAC-signed with a key that lives only
    /// in this process), for the next round of an "input required" exchange. It opens
    /// only in this tool, for this caller, with these arguments, for [`STATE_TTL`].
    pub fn seal_state<T: serde::Serialize>(&self, value: &T) -> Result<String, ToolError> {
        seal_bound(&self.state, self.binding(), value, STATE_TTL)
    }

    /// Opens the `requestState` the client echoed back: `Ok(None)` when there is none, a
    /// JSON-RPC `invalid_params` error when it was not sealed by this server, was altered,
    /// was issued for another tool, caller or arguments, or has expired.
    pub fn open_state<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, ToolError> {
        let Some(raw) = self.request_state() else {
            return Ok(None);
        };
        open_bound(&self.state, self.binding(), raw).map(Some)
    }

    /// Asks the client every question at once and returns the answers by key. Legacy
    /// sessions: the requests are sent and awaited in order. 2026-07-28: answers come from
    /// the retried request; while any is missing, this returns the "input required"
    /// [`ToolError`] for `?` to pass up, listing the unanswered questions, with
    /// `request_state` echoed back on the retry. A question needing a capability the
    /// client did not declare is a `-32021` error.
    ///
    /// In a call that runs as an MCP task, the questions are listed on `tasks/get`
    /// (status `input_required`) and this waits until `tasks/update` answers them all.
    pub async fn ask(
        &self,
        questions: impl IntoIterator<Item = (String, Question)>,
        request_state: Option<String>,
    ) -> Result<BTreeMap<String, Value>, ToolError> {
        self.ask_in(questions, request_state, self.task.as_ref())
            .await
    }

    /// Like [`ToolContext::ask`], but for answers that decide what the work will be: in a
    /// call that would run as an MCP task, these are asked before the task exists, as an
    /// "input required" round of `tools/call` itself (2026-07-28), and the task starts
    /// once the retried call has every answer. Outside tasks it is [`ToolContext::ask`].
    /// Call it before the tool awaits anything else.
    pub async fn ask_upfront(
        &self,
        questions: impl IntoIterator<Item = (String, Question)>,
        request_state: Option<String>,
    ) -> Result<BTreeMap<String, Value>, ToolError> {
        self.ask_in(questions, request_state, None).await
    }

    async fn ask_in(
        &self,
        questions: impl IntoIterator<Item = (String, Question)>,
        request_state: Option<String>,
        task: Option<&crate::tasks::TaskInput>,
    ) -> Result<BTreeMap<String, Value>, ToolError> {
        let caps = self.client_capabilities();
        let questions: Vec<(String, Question)> = questions.into_iter().collect();
        for (_, q) in &questions {
            if let Some(needed) = q.capability_missing(&caps) {
                return Err(ToolError::protocol(
                    ErrorData::missing_required_client_capability(needed),
                ));
            }
        }
        let mut answers = BTreeMap::new();
        if let Some(task) = task {
            // Every question is listed at once; answers may come in any order.
            let mut waiting = Vec::with_capacity(questions.len());
            for (key, q) in questions {
                if let Some(answer) = self.input_response(&key) {
                    answers.insert(key, answer.clone());
                    continue;
                }
                let q = self.redact_question(q)?;
                let rx = task
                    .ask(key.clone(), q.into_input_request())
                    .ok_or_else(|| ToolError::new("the task has ended"))?;
                waiting.push((key, rx));
            }
            for (key, rx) in waiting {
                let answer = rx
                    .await
                    .map_err(|_| ToolError::new(format!("`{key}` was never answered")))?;
                answers.insert(key, answer);
            }
            return Ok(answers);
        }
        if self.is_stateless() {
            let mut missing = rmcp::model::InputRequests::new();
            for (key, q) in questions {
                match self.input_response(&key) {
                    Some(answer) => {
                        answers.insert(key, answer.clone());
                    }
                    None => {
                        missing.insert(key, q.into_input_request());
                    }
                }
            }
            if missing.is_empty() {
                return Ok(answers);
            }
            return Err(ToolError::input_required(InputRequiredResult::new(
                Some(missing),
                request_state,
            )));
        }
        let peer = &self.request.peer;
        for (key, q) in questions {
            let q = self.redact_question(q)?;
            let answer = match q {
                Question::Elicit(p) => peer
                    .create_elicitation(p)
                    .await
                    .map(|r: ElicitResult| serde_json::to_value(r)),
                Question::Sample(p) => peer
                    .create_message(p)
                    .await
                    .map(|r: CreateMessageResult| serde_json::to_value(r)),
                Question::Roots => peer
                    .list_roots()
                    .await
                    .map(|r: ListRootsResult| serde_json::to_value(r)),
            };
            let answer = answer
                .map_err(|e| ToolError::new(format!("the client did not answer `{key}`: {e}")))?
                .map_err(|e| ToolError::new(format!("the answer to `{key}` is not JSON: {e}")))?;
            answers.insert(key, answer);
        }
        Ok(answers)
    }

    /// A question to send to the client, with every secret value replaced.
    fn redact_question(&self, q: Question) -> Result<Question, ToolError> {
        let refused = || ToolError::protocol(crate::secrets::unredactable());
        Ok(match q {
            Question::Elicit(p) => {
                Question::Elicit(self.secrets.redact_serde(p).ok_or_else(refused)?)
            }
            Question::Sample(p) => {
                Question::Sample(self.secrets.redact_serde(p).ok_or_else(refused)?)
            }
            Question::Roots => Question::Roots,
        })
    }

    /// Asks one elicitation question (see [`ToolContext::ask`]) and returns the answer.
    pub async fn elicit(
        &self,
        key: &str,
        message: impl Into<String>,
        schema: Value,
    ) -> Result<ElicitResult, ToolError> {
        let q = Question::form(message, schema)?;
        let mut answers = self.ask([(key.to_owned(), q)], None).await?;
        decode(key, answers.remove(key))
    }

    /// Asks the client's model one text prompt (see [`ToolContext::ask`]).
    pub async fn sample(
        &self,
        key: &str,
        prompt: impl Into<String>,
        max_tokens: u32,
    ) -> Result<CreateMessageResult, ToolError> {
        let q = Question::sample_text(prompt, max_tokens);
        let mut answers = self.ask([(key.to_owned(), q)], None).await?;
        decode(key, answers.remove(key))
    }
}

/// Decodes an answer into its result type, with an error naming the question.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    key: &str,
    answer: Option<Value>,
) -> Result<T, ToolError> {
    let answer = answer.ok_or_else(|| ToolError::new(format!("no answer to `{key}`")))?;
    serde_json::from_value(answer)
        .map_err(|e| ToolError::new(format!("the client's answer to `{key}` is malformed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> RequestStateCodec {
        RequestStateCodec::new_unchecked(vec![7u8; 32])
    }

    #[test]
    fn sealed_state_is_refused_in_another_tool_for_another_caller_or_arguments() {
        let codec = codec();
        let args = serde_json::json!({"account": "alice-1", "n": 2});
        let alice = Binding::new("tool:read_notes", who("https://as", "alice", "app"), &args);
        let sealed = seal_bound(&codec, &alice, &"secret step", STATE_TTL).unwrap();
        // The same call opens it, whatever order the arguments' keys arrive in.
        let reordered: Value = serde_json::from_str(r#"{"n":2,"account":"alice-1"}"#).unwrap();
        let same = Binding::new(
            "tool:read_notes",
            who("https://as", "alice", "app"),
            &reordered,
        );
        assert_eq!(
            open_bound::<String>(&codec, &same, &sealed).unwrap(),
            "secret step"
        );
        for other in [
            Binding::new(
                "tool:delete_notes",
                who("https://as", "alice", "app"),
                &args,
            ),
            Binding::new(
                "prompt:read_notes",
                who("https://as", "alice", "app"),
                &args,
            ),
            Binding::new(
                "tool:read_notes",
                who("https://as", "mallory", "app"),
                &args,
            ),
            Binding::new(
                "tool:read_notes",
                who("https://other-as", "alice", "app"),
                &args,
            ),
            Binding::new(
                "tool:read_notes",
                who("https://as", "alice", "other-app"),
                &args,
            ),
            Binding::new("tool:read_notes", Caller::Anonymous, &args),
            Binding::new(
                "tool:read_notes",
                who("https://as", "alice", "app"),
                &serde_json::json!({"account": "bob-1", "n": 2}),
            ),
        ] {
            let err = open_bound::<String>(&codec, &other, &sealed).unwrap_err();
            assert!(err.message().contains("integrity"), "{err}");
        }
        let mut altered = sealed.clone();
        altered.push('x');
        assert!(open_bound::<String>(&codec, &alice, &altered).is_err());
        // Another process (another key) never opens it.
        let other_key = RequestStateCodec::new_unchecked(vec![8u8; 32]);
        assert!(open_bound::<String>(&other_key, &alice, &sealed).is_err());
    }

    fn who<'a>(issuer: &'a str, subject: &'a str, client: &'a str) -> Caller<'a> {
        Caller::Token {
            issuer,
            subject: Some(subject),
            client: Some(client),
        }
    }

    #[test]
    fn sealed_state_needs_a_caller_with_sub_or_client_id() {
        let codec = codec();
        let args = serde_json::json!({});
        let nobody = Caller::Token {
            issuer: "https://as",
            subject: None,
            client: None,
        };
        let unbound = Binding::new("tool:t", nobody, &args);
        let err = seal_bound(&codec, &unbound, &1, STATE_TTL).unwrap_err();
        assert!(err.message().contains("caller"), "{err}");
        // State sealed for anyone else never opens for such a token either, nor does
        // state of a sub-less token open for another client of the same issuer.
        let client_only = |client| Caller::Token {
            issuer: "https://as",
            subject: None,
            client: Some(client),
        };
        for caller in [Caller::Anonymous, client_only("a")] {
            let sealed = seal_bound(
                &codec,
                &Binding::new("tool:t", caller, &args),
                &1,
                STATE_TTL,
            )
            .unwrap();
            assert!(open_bound::<i32>(&codec, &unbound, &sealed).is_err());
        }
        let sealed = seal_bound(
            &codec,
            &Binding::new("tool:t", client_only("a"), &args),
            &1,
            STATE_TTL,
        )
        .unwrap();
        let b = Binding::new("tool:t", client_only("b"), &args);
        assert!(open_bound::<i32>(&codec, &b, &sealed).is_err());
        let a = Binding::new("tool:t", client_only("a"), &args);
        assert_eq!(open_bound::<i32>(&codec, &a, &sealed).unwrap(), 1);
    }

    #[test]
    fn sealed_state_expires() {
        let codec = codec();
        let b = Binding::new("tool:t", who("i", "s", "c"), &serde_json::json!({}));
        let sealed = seal_bound(&codec, &b, &1, std::time::Duration::from_millis(1)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let err = open_bound::<i32>(&codec, &b, &sealed).unwrap_err();
        assert!(err.message().contains("expired"), "{err}");
        assert_eq!(STATE_TTL.as_secs(), 600);
    }
}
