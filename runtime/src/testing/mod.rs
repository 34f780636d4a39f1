//! The smoke test every generated crate runs against its own binary (feature `testing`).
//!
//! [`smoke`] starts a stand-in authorization server (a JWKS over HTTP on 127.0.0.1, an
//! RS256 key used nowhere else), starts the server binary on a free loopback port with
//! `--issuer`/`--jwks-uri` pointing at it, and checks over real HTTP:
//! 1. a request without a token is refused: 401 with `WWW-Authenticate: Bearer
//!    resource_metadata="<this server's metadata URL>"`;
//! 2. a token whose audience is another server is refused: 401 `invalid_token`;
//! 3. with a valid token (audience = this server, every scope the metadata lists), a legacy
//!    session (`initialize` 2025-11-25) answers `tools/list` and `tools/call`;
//! 4. so does a stateless 2026-07-28 request (`_meta` client context, `Mcp-Method` and
//!    `Mcp-Name` headers).
//!
//! `tools/call` goes to the first tool with `{}` arguments: any tool result (an `isError`
//! one included) counts, a JSON-RPC error does not.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const KEY_PEM: &str = include_str!("key.pem");
const KEY_JWK: &str = include_str!("key.jwk.json");
const KID: &str = "bmm-smoke";

/// What the smoke test saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Tool names listed in the legacy session.
    pub legacy_tools: Vec<String>,
    /// Tool names listed by the stateless request.
    pub stateless_tools: Vec<String>,
    /// The `WWW-Authenticate` header of the unauthenticated request.
    pub challenge: String,
}

/// Kills the server when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16, String> {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Serves the JWKS on every path until the runtime stops.
async fn stand_in_issuer() -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("stand-in issuer: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut jwk: Value = serde_json::from_str(KEY_JWK).map_err(|e| e.to_string())?;
    jwk["kid"] = json!(KID);
    jwk["alg"] = json!("RS256");
    jwk["use"] = json!("sig");
    let body = json!({ "keys": [jwk] }).to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = socket.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(format!("http://{addr}"))
}

fn token(issuer: &str, audience: &str, scope: &str) -> Result<String, String> {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.to_owned());
    header.typ = Some("at+jwt".to_owned());
    let claims = json!({
        "iss": issuer, "aud": audience, "sub": "smoke-test", "client_id": "smoke-test",
        "scope": scope, "iat": now(), "exp": now() + 300,
    });
    let key = EncodingKey::from_rsa_pem(KEY_PEM.as_bytes()).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| e.to_string())
}

/// The JSON-RPC message answering `id` in a JSON or SSE response body.
fn message(body: &str, id: i64) -> Option<Value> {
    let candidates: Vec<&str> = if body.trim_start().starts_with('{') {
        vec![body]
    } else {
        body.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .collect()
    };
    candidates
        .into_iter()
        .filter_map(|c| serde_json::from_str::<Value>(c).ok())
        .find(|v| v["id"] == json!(id))
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Client {
    async fn post(
        &self,
        body: &Value,
        headers: &[(&str, String)],
    ) -> Result<(u16, reqwest::header::HeaderMap, String), String> {
        let mut request = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .json(body);
        for (k, v) in headers {
            request = request.header(*k, v);
        }
        let response = request.send().await.map_err(|e| format!("POST: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|e| e.to_string())?;
        Ok((status, headers, text))
    }

    async fn call(
        &self,
        id: i64,
        method: &str,
        params: Value,
        headers: &[(&str, String)],
    ) -> Result<Value, String> {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let (status, _, text) = self.post(&body, headers).await?;
        let reply = message(&text, id)
            .ok_or_else(|| format!("{method}: HTTP {status}, no JSON-RPC answer in: {text}"))?;
        match reply.get("result") {
            Some(result) => Ok(result.clone()),
            None => Err(format!("{method}: JSON-RPC error {}", reply["error"])),
        }
    }
}

fn tool_names(result: &Value) -> Vec<String> {
    result["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn check_tool_result(era: &str, result: &Value) -> Result<(), String> {
    if result["content"].is_array() || result["resultType"] == json!("input_required") {
        Ok(())
    } else {
        Err(format!("{era} tools/call: not a tool result: {result}"))
    }
}

/// Runs the smoke test against `binary` with `env` (secrets) set; see the module docs.
pub fn smoke(binary: &str, env: &[(&str, &str)]) -> Result<Report, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(smoke_async(binary, env))
}

async fn smoke_async(binary: &str, env: &[(&str, &str)]) -> Result<Report, String> {
    let issuer = stand_in_issuer().await?;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let resource = format!("{base}/mcp");
    let mut command = Command::new(binary);
    command
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--issuer",
            &issuer,
        ])
        .args(["--jwks-uri", &format!("{issuer}/jwks")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        command.env(k, v);
    }
    let _server = Running(
        command
            .spawn()
            .map_err(|e| format!("cannot start {binary}: {e}"))?,
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let mut ready = false;
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ready {
        return Err(format!("{binary} did not answer /healthz within 30 s"));
    }

    // 1. No token.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bmm-smoke", "version": "1"}}});
    let response = http
        .post(&resource)
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let metadata_url = format!("{base}/.well-known/oauth-protected-resource/mcp");
    if response.status().as_u16() != 401
        || !challenge.starts_with("Bearer ")
        || !challenge.contains(&format!("resource_metadata=\"{metadata_url}\""))
        || challenge.contains("error=")
    {
        return Err(format!(
            "without a token: expected 401 with a resource_metadata challenge, got {} `{challenge}`",
            response.status()
        ));
    }
    let metadata: Value = http
        .get(&metadata_url)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| format!("protected resource metadata: {e}"))?;
    if metadata["resource"] != json!(resource) {
        return Err(format!("metadata names another resource: {metadata}"));
    }
    let scope = metadata["scopes_supported"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();

    // 2. A token for another server.
    let foreign = Client {
        http: http.clone(),
        url: resource.clone(),
        token: token(&issuer, "http://127.0.0.1:1/mcp", &scope)?,
    };
    let (status, headers, _) = foreign.post(&init, &[]).await?;
    let foreign_challenge = headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if status != 401 || !foreign_challenge.contains("error=\"invalid_token\"") {
        return Err(format!(
            "a token for another audience: expected 401 invalid_token, got {status} `{foreign_challenge}`"
        ));
    }

    // 3. Legacy session.
    let client = Client {
        http: http.clone(),
        url: resource.clone(),
        token: token(&issuer, &resource, &scope)?,
    };
    let (status, headers, text) = client.post(&init, &[]).await?;
    let session = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("initialize: HTTP {status}, no session id: {text}"))?
        .to_owned();
    if message(&text, 1)
        .and_then(|m| m.get("result").cloned())
        .is_none()
    {
        return Err(format!("initialize failed: {text}"));
    }
    let legacy = [
        ("mcp-session-id", session.clone()),
        ("mcp-protocol-version", "2025-11-25".to_owned()),
    ];
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, _) = client.post(&initialized, &legacy).await?;
    if status != 202 {
        return Err(format!("notifications/initialized: HTTP {status}"));
    }
    let listed = client.call(2, "tools/list", json!({}), &legacy).await?;
    let legacy_tools = tool_names(&listed);
    if let Some(first) = legacy_tools.first() {
        let result = client
            .call(
                3,
                "tools/call",
                json!({"name": first, "arguments": {}}),
                &legacy,
            )
            .await?;
        check_tool_result("legacy", &result)?;
    }

    // 4. Stateless 2026-07-28.
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "bmm-smoke", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    let modern = |method: &str, name: Option<&str>| {
        let mut h = vec![
            ("mcp-protocol-version", "2026-07-28".to_owned()),
            ("mcp-method", method.to_owned()),
        ];
        if let Some(n) = name {
            h.push(("mcp-name", n.to_owned()));
        }
        h
    };
    let listed = client
        .call(
            4,
            "tools/list",
            json!({"_meta": meta}),
            &modern("tools/list", None),
        )
        .await?;
    let stateless_tools = tool_names(&listed);
    if let Some(first) = stateless_tools.first() {
        let result = client
            .call(
                5,
                "tools/call",
                json!({"_meta": meta, "name": first, "arguments": {}}),
                &modern("tools/call", Some(first)),
            )
            .await?;
        check_tool_result("stateless", &result)?;
    }
    Ok(Report {
        legacy_tools,
        stateless_tools,
        challenge,
    })
}

/// Runs `binary --stdio` with `env` set: `initialize`, `notifications/initialized` and
/// `tools/list` as newline-delimited JSON-RPC on stdin; returns the listed tool names.
pub fn smoke_stdio(binary: &str, env: &[(&str, &str)]) -> Result<Vec<String>, String> {
    use std::io::{BufRead, BufReader, Write};
    let mut command = Command::new(binary);
    command
        .arg("--stdio")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = Running(
        command
            .spawn()
            .map_err(|e| format!("cannot start {binary} --stdio: {e}"))?,
    );
    let mut stdin = child.0.stdin.take().ok_or("no stdin")?;
    let stdout = child.0.stdout.take().ok_or("no stdout")?;
    let messages = [
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "bmm-smoke", "version": "1"}}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}),
    ];
    for m in &messages {
        writeln!(stdin, "{m}").map_err(|e| format!("stdin: {e}"))?;
    }
    stdin.flush().map_err(|e| e.to_string())?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "no tools/list answer on stdout within 30 s".to_owned())?;
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| format!("stdout carries something that is not JSON-RPC ({e}): {line}"))?;
        if value["id"] == json!(2) {
            drop(stdin);
            return Ok(tool_names(&value["result"]));
        }
    }
}
