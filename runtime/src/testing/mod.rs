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
//! one included) counts, and so does the invalid-params error (-32602) of argument
//! validation when the tool's schema requires arguments; any other JSON-RPC error does not.

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

/// Serves the stand-in JWKS ([`stand_in_jwks`]) on every path of a loopback listener until
/// the runtime stops; returns its base URL (pass it as `--jwks-uri`).
pub async fn stand_in_issuer() -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("stand-in issuer: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let body = stand_in_jwks()?.to_string();
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

/// The stand-in issuer's key set: one RS256 key, the one [`stand_in_token`] signs with.
/// For in-memory tests and benches (`AuthConfig::issuer_with_static_jwks`).
pub fn stand_in_jwks() -> Result<Value, String> {
    let mut jwk: Value = serde_json::from_str(KEY_JWK).map_err(|e| e.to_string())?;
    jwk["kid"] = json!(KID);
    jwk["alg"] = json!("RS256");
    jwk["use"] = json!("sig");
    Ok(json!({ "keys": [jwk] }))
}

/// An RS256 access token from the stand-in issuer, valid for five minutes.
pub fn stand_in_token(issuer: &str, audience: &str, scope: &str) -> Result<String, String> {
    token(issuer, audience, scope)
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
        let reply = self.reply(id, method, params, headers).await?;
        match reply.get("result") {
            Some(result) => Ok(result.clone()),
            None => Err(format!("{method}: JSON-RPC error {}", reply["error"])),
        }
    }
}

impl Client {
    /// The whole JSON-RPC answer (a result or an error).
    async fn reply(
        &self,
        id: i64,
        method: &str,
        params: Value,
        headers: &[(&str, String)],
    ) -> Result<Value, String> {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let (status, _, text) = self.post(&body, headers).await?;
        message(&text, id)
            .ok_or_else(|| format!("{method}: HTTP {status}, no JSON-RPC answer in: {text}"))
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

/// A tool result, or the invalid-params answer of argument validation (the smoke test
/// calls with `{}`, which a schema with required arguments refuses).
fn check_tool_result(era: &str, reply: &Value) -> Result<(), String> {
    let result = &reply["result"];
    if result["content"].is_array()
        || result["resultType"] == json!("input_required")
        || (reply["error"]["code"] == json!(-32602)
            && reply["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("invalid arguments for tool")))
    {
        Ok(())
    } else {
        Err(format!("{era} tools/call: not a tool result: {result}"))
    }
}

/// Runs `test` on a two-thread tokio runtime.
fn block_on<T>(test: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(test)
}

/// Runs the smoke test against `binary` with `env` (secrets) set; see the module docs.
pub fn smoke(binary: &str, env: &[(&str, &str)]) -> Result<Report, String> {
    block_on(smoke_async(binary, env))
}

/// A stand-in issuer and the server binary on a free loopback port, trusting it.
struct Harness {
    issuer: String,
    base: String,
    resource: String,
    http: reqwest::Client,
    _server: Running,
}

impl Harness {
    async fn start(binary: &str, env: &[(&str, &str)]) -> Result<Self, String> {
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
        Ok(Self {
            issuer,
            base,
            resource,
            http,
            _server,
        })
    }
}

async fn smoke_async(binary: &str, env: &[(&str, &str)]) -> Result<Report, String> {
    let harness = Harness::start(binary, env).await?;
    let Harness {
        issuer,
        base,
        resource,
        http,
        ..
    } = &harness;

    // 1. No token.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bmm-smoke", "version": "1"}}});
    let response = http
        .post(resource.as_str())
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
        token: token(issuer, "http://127.0.0.1:1/mcp", &scope)?,
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
        token: token(issuer, resource, &scope)?,
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
            .reply(
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
            .reply(
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

/// Starts `binary` behind the stand-in issuer with `env` set, and calls each tool with its
/// arguments in a stateless 2026-07-28 request, with a token carrying `scope`. Returns
/// each call's `result` (an `isError` result included; a JSON-RPC error is an `Err`).
/// For tests of HTTP tools against a local upstream (point the upstream's base URL
/// variable at it in `env`).
pub fn call_tools(
    binary: &str,
    env: &[(&str, &str)],
    scope: &str,
    calls: &[(&str, Value)],
) -> Result<Vec<Value>, String> {
    block_on(async {
        let harness = Harness::start(binary, env).await?;
        let client = Client {
            http: harness.http.clone(),
            url: harness.resource.clone(),
            token: token(&harness.issuer, &harness.resource, scope)?,
        };
        let meta = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "bmm-test", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}
        });
        let mut results = Vec::new();
        for (i, (name, arguments)) in calls.iter().enumerate() {
            let headers = [
                ("mcp-protocol-version", "2026-07-28".to_owned()),
                ("mcp-method", "tools/call".to_owned()),
                ("mcp-name", (*name).to_owned()),
            ];
            let id = i64::try_from(i).unwrap_or(i64::MAX - 1) + 1;
            let result = client
                .call(
                    id,
                    "tools/call",
                    json!({"_meta": meta, "name": name, "arguments": arguments}),
                    &headers,
                )
                .await
                .map_err(|e| format!("tools/call {name}: {e}"))?;
            results.push(result);
        }
        Ok(results)
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

const OTHER_KEY_PEM: &str = include_str!("other-key.pem");

/// One case of the forged-token matrix and what the server answered.
#[derive(Debug, Clone)]
pub struct MatrixCase {
    /// What the request carries.
    pub name: &'static str,
    /// Expected HTTP status.
    pub expected_status: u16,
    /// Expected `error` parameter of `WWW-Authenticate` (`None`: no `error` parameter).
    pub expected_error: Option<&'static str>,
    /// The status received.
    pub status: u16,
    /// The `WWW-Authenticate` header received.
    pub challenge: String,
    /// The body received.
    pub body: String,
}

impl MatrixCase {
    fn holds(&self, metadata_url: &str) -> bool {
        if self.status != self.expected_status {
            return false;
        }
        if self.expected_status < 400 {
            return true;
        }
        let error = self
            .challenge
            .split("error=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next());
        let body: Value = serde_json::from_str(&self.body).unwrap_or(Value::Null);
        let body_error = body["error"].as_str();
        let errors_match = match self.expected_error {
            Some(expected) => error == Some(expected) && body_error == Some(expected),
            None => error.is_none() && body_error.is_some(),
        };
        self.challenge.starts_with("Bearer ")
            && self
                .challenge
                .contains(&format!("resource_metadata=\"{metadata_url}\""))
            && errors_match
    }
}

fn b64(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

fn sign(claims: &Value, kid: &str, pem: &str) -> Result<String, String> {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    header.typ = Some("at+jwt".to_owned());
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&header, claims, &key).map_err(|e| e.to_string())
}

/// Sends every forged, expired, misdirected and malformed token the resource-server rules
/// cover to `binary` (plus two valid controls) and returns each case with what came back.
/// `scoped_tool`: a tool and a scope it needs, for the `insufficient_scope` case.
/// Returns `Err` listing every case whose status, `WWW-Authenticate` `error` or JSON body
/// differs from the rule.
pub fn forged_token_matrix(
    binary: &str,
    env: &[(&str, &str)],
    scoped_tool: Option<(&str, &str)>,
) -> Result<Vec<MatrixCase>, String> {
    block_on(matrix_async(binary, env, scoped_tool))
}

async fn matrix_async(
    binary: &str,
    env: &[(&str, &str)],
    scoped_tool: Option<(&str, &str)>,
) -> Result<Vec<MatrixCase>, String> {
    let h = Harness::start(binary, env).await?;
    let metadata_url = format!("{}/.well-known/oauth-protected-resource/mcp", h.base);
    let now = now();
    let claims = |patch: Value| {
        let mut c = json!({
            "iss": h.issuer, "aud": h.resource, "sub": "matrix", "client_id": "matrix",
            "scope": "", "iat": now, "exp": now + 300,
        });
        if let (Some(c), Some(p)) = (c.as_object_mut(), patch.as_object()) {
            for (k, v) in p {
                if v.is_null() {
                    c.remove(k);
                } else {
                    c.insert(k.clone(), v.clone());
                }
            }
        }
        c
    };
    let valid = sign(&claims(json!({})), KID, KEY_PEM)?;
    let (valid_head, valid_rest) = valid.split_once('.').unwrap_or_default();
    let valid_sig = valid_rest.rsplit('.').next().unwrap_or_default();
    let jwk: Value = serde_json::from_str(KEY_JWK).map_err(|e| e.to_string())?;
    let none_token = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "at+jwt", "kid": KID})),
        b64(&claims(json!({})))
    );
    let hs256 = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(KID.to_owned());
        let secret = jwk["n"].as_str().unwrap_or_default().as_bytes().to_vec();
        jsonwebtoken::encode(
            &header,
            &claims(json!({})),
            &EncodingKey::from_secret(&secret),
        )
        .map_err(|e| e.to_string())?
    };
    let tampered = format!(
        "{valid_head}.{}.{valid_sig}",
        b64(&claims(json!({"scope": "everything", "sub": "admin"})))
    );
    type Case = (
        &'static str,
        Vec<(&'static str, String)>,
        u16,
        Option<&'static str>,
    );
    let bearer = |t: &str| vec![("authorization", format!("Bearer {t}"))];
    let mut cases: Vec<Case> = vec![
        ("no Authorization header", vec![], 401, None),
        (
            "Basic credentials",
            vec![("authorization", "Basic YWxpY2U6c2VjcmV0".to_owned())],
            401,
            None,
        ),
        (
            "Bearer with an empty token",
            vec![("authorization", "Bearer ".to_owned())],
            400,
            Some("invalid_request"),
        ),
        (
            "Bearer with two tokens",
            vec![("authorization", format!("Bearer {valid} {valid}"))],
            400,
            Some("invalid_request"),
        ),
        (
            "two Authorization headers",
            vec![
                ("authorization", format!("Bearer {valid}")),
                ("authorization", format!("Bearer {valid}")),
            ],
            400,
            Some("invalid_request"),
        ),
        ("not a JWT", bearer("not-a-jwt"), 401, Some("invalid_token")),
        ("alg none", bearer(&none_token), 401, Some("invalid_token")),
        (
            "HS256 keyed with the public key",
            bearer(&hs256),
            401,
            Some("invalid_token"),
        ),
        (
            "signed by another key under the same kid",
            bearer(&sign(&claims(json!({})), KID, OTHER_KEY_PEM)?),
            401,
            Some("invalid_token"),
        ),
        (
            "unknown kid",
            bearer(&sign(&claims(json!({})), "no-such-kid", OTHER_KEY_PEM)?),
            401,
            Some("invalid_token"),
        ),
        (
            "payload altered after signing",
            bearer(&tampered),
            401,
            Some("invalid_token"),
        ),
        (
            "expired",
            bearer(&sign(
                &claims(json!({"exp": now - 3600, "iat": now - 7200})),
                KID,
                KEY_PEM,
            )?),
            401,
            Some("invalid_token"),
        ),
        (
            "not yet valid (nbf)",
            bearer(&sign(&claims(json!({"nbf": now + 3600})), KID, KEY_PEM)?),
            401,
            Some("invalid_token"),
        ),
        (
            "no exp",
            bearer(&sign(&claims(json!({"exp": null})), KID, KEY_PEM)?),
            401,
            Some("invalid_token"),
        ),
        (
            "another issuer",
            bearer(&sign(
                &claims(json!({"iss": "https://evil.example"})),
                KID,
                KEY_PEM,
            )?),
            401,
            Some("invalid_token"),
        ),
        (
            "no aud",
            bearer(&sign(&claims(json!({"aud": null})), KID, KEY_PEM)?),
            401,
            Some("invalid_token"),
        ),
        (
            "aud of another server",
            bearer(&sign(
                &claims(json!({"aud": "https://other.example/mcp"})),
                KID,
                KEY_PEM,
            )?),
            401,
            Some("invalid_token"),
        ),
        (
            "aud naming a sub-path of this server",
            bearer(&sign(
                &claims(json!({"aud": format!("{}/admin", h.resource)})),
                KID,
                KEY_PEM,
            )?),
            401,
            Some("invalid_token"),
        ),
        (
            "aud of this host on another port",
            bearer(&sign(
                &claims(json!({"aud": h.resource.replacen("127.0.0.1:", "127.0.0.1:1", 1)})),
                KID,
                KEY_PEM,
            )?),
            401,
            Some("invalid_token"),
        ),
        (
            "oversized token (16 KiB)",
            bearer(&"a".repeat(16 * 1024)),
            401,
            Some("invalid_token"),
        ),
        (
            "valid: lowercase scheme",
            vec![("authorization", format!("bearer {valid}"))],
            200,
            None,
        ),
        (
            "valid: aud with one trailing slash (the same resource)",
            bearer(&sign(
                &claims(json!({"aud": format!("{}/", h.resource)})),
                KID,
                KEY_PEM,
            )?),
            200,
            None,
        ),
        (
            "valid: aud array naming this server",
            bearer(&sign(
                &claims(json!({"aud": ["https://other.example/mcp", h.resource]})),
                KID,
                KEY_PEM,
            )?),
            200,
            None,
        ),
    ];
    let mut out = Vec::new();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bmm-matrix", "version": "1"}}});
    for (name, headers, expected_status, expected_error) in cases.drain(..) {
        // Without a header, a valid token rides in the query string: it must be ignored
        // (RFC 6750 allows it; MCP does not).
        let url = if headers.is_empty() {
            format!("{}?access_token={valid}", h.resource)
        } else {
            h.resource.clone()
        };
        let mut request = h
            .http
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .json(&init);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        out.push(send(name, request, expected_status, expected_error).await?);
    }
    if let Some((tool, scope)) = scoped_tool {
        let meta = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "bmm-matrix", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}
        });
        let token = sign(&claims(json!({"scope": "unrelated:scope"})), KID, KEY_PEM)?;
        let request = h
            .http
            .post(&h.resource)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", tool)
            .json(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                "params": {"_meta": meta, "name": tool, "arguments": {}}}));
        let mut case = send(
            "valid token without the tool's scope",
            request,
            403,
            Some("insufficient_scope"),
        )
        .await?;
        if !case.challenge.contains(scope) {
            case.expected_status = 0; // the challenge must name the scope the tool needs
        }
        out.push(case);
    }
    let failed: Vec<String> = out
        .iter()
        .filter(|c| !c.holds(&metadata_url))
        .map(|c| {
            format!(
                "{}: expected {} {:?}, got {} `{}` {}",
                c.name, c.expected_status, c.expected_error, c.status, c.challenge, c.body
            )
        })
        .collect();
    if failed.is_empty() {
        Ok(out)
    } else {
        Err(format!("forged-token matrix:\n  {}", failed.join("\n  ")))
    }
}

async fn send(
    name: &'static str,
    request: reqwest::RequestBuilder,
    expected_status: u16,
    expected_error: Option<&'static str>,
) -> Result<MatrixCase, String> {
    let response = request.send().await.map_err(|e| format!("{name}: {e}"))?;
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = if status >= 400 {
        response.text().await.unwrap_or_default()
    } else {
        String::new()
    };
    Ok(MatrixCase {
        name,
        expected_status,
        expected_error,
        status,
        challenge,
        body,
    })
}
