//! MCP tasks (SEP-2663) served by the runtime for tools the spec marks `task:
//! optional|required`, over a real socket with real JWTs: a task completes with the
//! result a direct call gives, cancel drops the running tool, a task is invisible to
//! every other caller, `required` refuses a client without the extension, the
//! per-caller live-task limit answers an error instead of growing (an `optional` tool
//! answers directly instead), and finished tasks make room instead of locking their
//! caller out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bmm_runtime::def::{AnnotationsDef, Handler, TaskSupport, ToolDef};
use bmm_runtime::run::{Args, prepare, serve};
use bmm_runtime::{Question, ServerDef, ToolContext, ToolOutput};
use clap::Parser;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../middleware/tests/fixtures");
const TASKS: &str = "io.modelcontextprotocol/tasks";

/// Set when the `slow` tool's future is dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn tool(name: &'static str, task: TaskSupport, handler: Handler) -> ToolDef {
    ToolDef {
        name,
        title: None,
        description: "a test tool",
        input_schema: r#"{"type":"object","properties":{"n":{"type":"integer"}}}"#,
        output_schema: None,
        annotations: AnnotationsDef::default(),
        scopes: &[],
        task,
        rate_limit: None,
        handler,
    }
}

/// `double` (optional: doubles `n` after a pause), `slow` (optional: waits an hour, sets
/// `dropped` when its future is dropped), `only_task` (required), `slow_task` (required:
/// waits an hour).
fn def(dropped: Arc<AtomicBool>) -> ServerDef {
    let double = Handler::Rust(Arc::new(|_ctx, args: Value| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let n = args["n"].as_i64().unwrap_or(0);
            Ok(ToolOutput::text(format!("{}", n * 2)))
        })
    }));
    let slow = Handler::Rust(Arc::new(move |_ctx, _args| {
        let flag = DropFlag(Arc::clone(&dropped));
        Box::pin(async move {
            let _flag = flag;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(ToolOutput::text("finished"))
        })
    }));
    let slow_task = Handler::Rust(Arc::new(|_ctx, _args| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(ToolOutput::text("finished"))
        })
    }));
    let only_task = Handler::Rust(Arc::new(|_ctx, _args| {
        Box::pin(async { Ok(ToolOutput::text("done")) })
    }));
    let two_questions = Handler::Rust(Arc::new(|ctx: ToolContext, _args| {
        Box::pin(async move {
            let answers = ctx
                .ask(
                    [("a".to_owned(), question()), ("b".to_owned(), question())],
                    None,
                )
                .await?;
            Ok(ToolOutput::text(format!(
                "{} {}",
                answers["a"]["content"]["name"], answers["b"]["content"]["name"]
            )))
        })
    }));
    let upfront = Handler::Rust(Arc::new(|ctx: ToolContext, _args| {
        Box::pin(async move {
            let answers = ctx
                .ask_upfront([("who".to_owned(), question())], None)
                .await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(ToolOutput::text(format!(
                "hello {}",
                answers["who"]["content"]["name"]
            )))
        })
    }));
    ServerDef {
        name: "tasks-demo",
        version: "0.1.0",
        title: None,
        instructions: None,
        scopes_supported: &[],
        required_scopes: &[],
        scope_hierarchy: &[],
        secrets: &[],
        upstreams: &[],
        tools: vec![
            tool("double", TaskSupport::Optional, double),
            tool("slow", TaskSupport::Optional, slow),
            tool("only_task", TaskSupport::Required, only_task),
            tool("slow_task", TaskSupport::Required, slow_task),
            tool("two_questions", TaskSupport::Optional, two_questions),
            tool("upfront", TaskSupport::Required, upfront),
        ],
        resources: &[],
        resource_templates: &[],
        prompts: Vec::new(),
    }
}

fn question() -> Question {
    Question::form(
        "Name?",
        json!({"type": "object", "properties": {"name": {"type": "string"}}}),
    )
    .unwrap()
}

/// A JWKS endpoint with the middleware's RSA test key.
async fn start_jwks() -> String {
    let mut jwk: Value =
        serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/rsa-a.jwk.json")).unwrap())
            .unwrap();
    jwk["kid"] = json!("k1");
    let doc = json!({"keys": [jwk]}).to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let doc = doc.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let doc = doc.clone();
                    async move {
                        Ok::<_, Infallible>(http::Response::new(Full::new(bytes::Bytes::from(doc))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/jwks")
}

struct Running {
    url: String,
    issuer: String,
}

impl Running {
    fn token(&self, sub: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("k1".into());
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(
            &std::fs::read(format!("{FIXTURES}/rsa-a.pem")).unwrap(),
        )
        .unwrap();
        jsonwebtoken::encode(
            &header,
            &json!({"iss": self.issuer, "sub": sub, "client_id": "client-a", "aud": self.url, "exp": now + 600}),
            &key,
        )
        .unwrap()
    }

    /// A stateless 2026-07-28 request as `sub`, declaring the tasks extension when
    /// `tasks`; the JSON-RPC message of the answer.
    async fn request(
        &self,
        sub: &str,
        tasks: bool,
        method: &str,
        name: &str,
        params: Value,
    ) -> Value {
        let mut params = params;
        let extensions = if tasks { json!({TASKS: {}}) } else { json!({}) };
        params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}, "extensions": extensions},
            "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"}});
        let response = reqwest::Client::new()
            .post(&self.url)
            .header("authorization", format!("Bearer {}", self.token(sub)))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", method)
            .header("mcp-name", name)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
            .send()
            .await
            .unwrap();
        let text = response.text().await.unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .find_map(|d| serde_json::from_str::<Value>(d).ok())
            .or_else(|| serde_json::from_str(&text).ok())
            .unwrap_or(Value::Null)
    }

    async fn call(&self, sub: &str, tasks: bool, tool: &str, arguments: Value) -> Value {
        self.request(
            sub,
            tasks,
            "tools/call",
            tool,
            json!({"name": tool, "arguments": arguments}),
        )
        .await
    }

    async fn task(&self, sub: &str, method: &str, id: &str) -> Value {
        let mut params = json!({"taskId": id});
        if method == "tasks/update" {
            params["inputResponses"] = json!({"k": {"action": "accept"}});
        }
        self.request(sub, true, method, id, params).await
    }

    async fn answer(&self, id: &str, key: &str, name: &str) -> Value {
        let params = json!({"taskId": id, "inputResponses": {key: {"action": "accept", "content": {"name": name}}}});
        self.request("alice", true, "tasks/update", id, params)
            .await
    }

    /// Polls `tasks/get` until the task ends (at most 10 s).
    async fn until_ended(&self, sub: &str, id: &str) -> Value {
        for _ in 0..200 {
            let got = self.task(sub, "tasks/get", id).await;
            let status = got["result"]["status"].as_str().unwrap_or_default();
            if ["completed", "failed", "cancelled"].contains(&status) {
                return got["result"].clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("task {id} never ended");
    }
}

async fn start(dropped: Arc<AtomicBool>) -> Running {
    let jwks = start_jwks().await;
    let issuer = "https://as.example.com".to_owned();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let args = Args::try_parse_from([
        "demo",
        "--listen",
        &addr.to_string(),
        "--issuer",
        &issuer,
        "--jwks-uri",
        &jwks,
    ])
    .unwrap();
    let prepared = prepare(def(dropped), &args, |_: &str| None).unwrap();
    let server = bmm_middleware::Server::bind(addr, prepared.config.clone())
        .await
        .unwrap();
    tokio::spawn(serve(prepared, server, std::future::pending()));
    Running {
        url: format!("http://{addr}/mcp"),
        issuer,
    }
}

fn task_id(created: &Value) -> String {
    assert_eq!(created["result"]["resultType"], "task", "{created}");
    created["result"]["taskId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_task_completes_with_the_result_a_direct_call_gives() {
    let s = start(Arc::default()).await;
    let direct = s.call("alice", false, "double", json!({"n": 21})).await;
    assert_eq!(direct["result"]["resultType"], "complete", "{direct}");
    assert_eq!(direct["result"]["content"][0]["text"], "42", "{direct}");

    let created = s.call("alice", true, "double", json!({"n": 21})).await;
    let id = task_id(&created);
    assert_eq!(id.len(), 64, "256 random bits in hex");
    assert!(created["result"]["ttlMs"].as_u64().unwrap() > 0);
    let ended = s.until_ended("alice", &id).await;
    assert_eq!(ended["status"], "completed", "{ended}");
    assert_eq!(ended["result"]["content"], direct["result"]["content"]);
    assert!(ended.get("error").is_none());
}

#[tokio::test]
async fn cancel_drops_the_running_tool() {
    let dropped = Arc::new(AtomicBool::new(false));
    let s = start(Arc::clone(&dropped)).await;
    let id = task_id(&s.call("alice", true, "slow", json!({})).await);
    let working = s.task("alice", "tasks/get", &id).await;
    assert_eq!(working["result"]["status"], "working", "{working}");
    assert!(!dropped.load(Ordering::SeqCst));

    let ack = s.task("alice", "tasks/cancel", &id).await;
    assert_eq!(ack["result"]["resultType"], "complete", "{ack}");
    let ended = s.until_ended("alice", &id).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    for _ in 0..200 {
        if dropped.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        dropped.load(Ordering::SeqCst),
        "the tool's future was not dropped"
    );
    // Cancelling again is acknowledged and changes nothing.
    let again = s.task("alice", "tasks/cancel", &id).await;
    assert_eq!(again["result"]["resultType"], "complete", "{again}");
    assert_eq!(s.until_ended("alice", &id).await["status"], "cancelled");
}

#[tokio::test]
async fn another_caller_can_neither_see_nor_update_nor_cancel_a_task() {
    let dropped = Arc::new(AtomicBool::new(false));
    let s = start(Arc::clone(&dropped)).await;
    let id = task_id(&s.call("alice", true, "slow", json!({})).await);
    let unknown = s.task("bob", "tasks/get", &"0".repeat(64)).await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
    for method in ["tasks/get", "tasks/update", "tasks/cancel"] {
        let answer = s.task("bob", method, &id).await;
        // The same answer as for an id that never existed: nothing tells them apart.
        assert_eq!(answer["error"], unknown["error"], "{method}: {answer}");
    }
    let still = s.task("alice", "tasks/get", &id).await;
    assert_eq!(still["result"]["status"], "working", "{still}");
    assert!(
        !dropped.load(Ordering::SeqCst),
        "bob's cancel stopped alice's task"
    );
    s.task("alice", "tasks/cancel", &id).await;
}

#[tokio::test]
async fn a_required_task_tool_refuses_a_client_without_the_extension() {
    let s = start(Arc::default()).await;
    let refused = s.call("alice", false, "only_task", json!({})).await;
    assert_eq!(refused["error"]["code"], -32021, "{refused}");
    assert!(
        refused["error"]["data"]["requiredCapabilities"]["extensions"]
            .get(TASKS)
            .is_some(),
        "{refused}"
    );
    let created = s.call("alice", true, "only_task", json!({})).await;
    let ended = s.until_ended("alice", &task_id(&created)).await;
    assert_eq!(ended["result"]["content"][0]["text"], "done", "{ended}");
}

#[tokio::test]
async fn past_the_live_task_limit_a_required_tool_gets_an_error_not_a_task() {
    let dropped = Arc::new(AtomicBool::new(false));
    let s = start(dropped).await;
    let limit = bmm_runtime::tasks::MAX_LIVE_PER_CALLER;
    let mut ids = Vec::new();
    for _ in 0..limit {
        ids.push(task_id(
            &s.call("alice", true, "slow_task", json!({})).await,
        ));
    }
    let refused = s.call("alice", true, "slow_task", json!({})).await;
    assert!(refused["result"].is_null(), "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!(
                "too many running tasks for this caller (limit {limit}); wait"
            )),
        "{refused}"
    );
    // Another caller is not starved by alice.
    let bob = s.call("bob", true, "slow_task", json!({})).await;
    task_id(&bob);
    // A cancelled task frees its place.
    s.task("alice", "tasks/cancel", &ids[0]).await;
    task_id(&s.call("alice", true, "slow_task", json!({})).await);
}

#[tokio::test]
async fn past_the_live_task_limit_an_optional_tool_answers_directly() {
    let s = start(Arc::default()).await;
    for _ in 0..bmm_runtime::tasks::MAX_LIVE_PER_CALLER {
        task_id(&s.call("alice", true, "slow_task", json!({})).await);
    }
    let direct = s.call("alice", true, "double", json!({"n": 21})).await;
    assert_eq!(direct["result"]["resultType"], "complete", "{direct}");
    assert_eq!(direct["result"]["content"][0]["text"], "42", "{direct}");
    // Below the limit the same call is a task.
    task_id(&s.call("bob", true, "double", json!({"n": 21})).await);
}

#[tokio::test]
async fn finished_tasks_never_lock_a_caller_out() {
    let s = start(Arc::default()).await;
    let kept = bmm_runtime::tasks::MAX_KEPT_PER_CALLER;
    let mut ids = Vec::new();
    // `only_task` ends on its first poll: every task is finished before the next call.
    for n in 0..kept + 8 {
        let created = s.call("alice", true, "only_task", json!({})).await;
        assert_eq!(
            created["result"]["resultType"], "task",
            "call {n}: {created}"
        );
        ids.push(task_id(&created));
    }
    // The oldest results made room and are forgotten, like an id that never existed.
    let unknown = s.task("alice", "tasks/get", &"0".repeat(64)).await;
    let oldest = s.task("alice", "tasks/get", &ids[0]).await;
    assert_eq!(oldest["error"], unknown["error"], "{oldest}");
    assert_eq!(oldest["error"]["code"], -32602, "{oldest}");
    // The newest are readable.
    for id in &ids[ids.len() - kept..] {
        let got = s.task("alice", "tasks/get", id).await;
        assert_eq!(got["result"]["status"], "completed", "{got}");
    }
    let newest = s.task("alice", "tasks/get", ids.last().unwrap()).await;
    assert_eq!(
        newest["result"]["result"]["content"][0]["text"], "done",
        "{newest}"
    );
}

#[tokio::test]
async fn questions_asked_inside_a_task_wait_for_tasks_update_key_by_key() {
    let s = start(Arc::default()).await;
    let id = task_id(&s.call("alice", true, "two_questions", json!({})).await);
    let mut got = Value::Null;
    for _ in 0..200 {
        got = s.task("alice", "tasks/get", &id).await["result"].clone();
        if got["inputRequests"]
            .as_object()
            .is_some_and(|m| m.len() == 2)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(got["status"], "input_required", "{got}");
    assert_eq!(
        got["inputRequests"]["a"]["method"], "elicitation/create",
        "{got}"
    );

    let ack = s.answer(&id, "a", "Ada").await;
    assert_eq!(ack["result"]["resultType"], "complete", "{ack}");
    let got = s.task("alice", "tasks/get", &id).await["result"].clone();
    assert_eq!(got["status"], "input_required", "{got}");
    let keys: Vec<&String> = got["inputRequests"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["b"], "{got}");

    s.answer(&id, "b", "Grace").await;
    let ended = s.until_ended("alice", &id).await;
    assert_eq!(
        ended["result"]["content"][0]["text"], r#""Ada" "Grace""#,
        "{ended}"
    );
}

#[tokio::test]
async fn answers_asked_up_front_come_before_the_task_exists() {
    let s = start(Arc::default()).await;
    let first = s.call("alice", true, "upfront", json!({})).await;
    assert_eq!(first["result"]["resultType"], "input_required", "{first}");
    assert!(first["result"].get("taskId").is_none(), "{first}");
    let retry = json!({"name": "upfront", "arguments": {},
        "inputResponses": {"who": {"action": "accept", "content": {"name": "Ada"}}}});
    let created = s
        .request("alice", true, "tools/call", "upfront", retry)
        .await;
    let ended = s.until_ended("alice", &task_id(&created)).await;
    assert_eq!(
        ended["result"]["content"][0]["text"], r#"hello "Ada""#,
        "{ended}"
    );
}
