//! `cargo xtask oidc-provider`: a third-party authorization server issuing OPAQUE access
//! tokens, checked through RFC 7662 introspection by a generated server, over real HTTP.
//!
//! The authorization server is panva's `oidc-provider` (npm, pinned in `tests/package.json`),
//! started by `tests/oidc-provider/provider.mjs` on Node 22 with the client credentials
//! grant, introspection and resource indicators (RFC 8707): every token is opaque and its
//! `aud` is the resource it was asked for. The generated `notes` server (the binary the
//! workspace test build made) trusts it with `--issuer` and `--introspection-client-id`
//! (secret in `BMM_INTROSPECTION_CLIENT_SECRET`, `client_secret_basic`); the introspection
//! endpoint comes from the provider's OpenID Connect metadata. Then, as an MCP client:
//!
//! 1. a client credentials token for the server (`resource` = its URL, scopes
//!    `notes:read notes:write`): `tools/list` both as a stateless 2026-07-28 request and in
//!    a 2025-11-25 session (`delete_note`, which needs `notes:admin`, is not listed);
//! 2. `tools/call` of `add_note` (allowed by `notes:write`) succeeds, `delete_note` answers
//!    403 `insufficient_scope`;
//! 3. a read-only token lists no write tool and cannot call `add_note` (403);
//! 4. a random opaque token, and a token the provider issued for another resource (which
//!    the provider reports active, with that other `aud`), are refused with 401
//!    `invalid_token`;
//! 5. the provider is stopped: a token it issued that the server has not seen yet is
//!    answered 503 (introspection outage), never 200.
//!
//! Every process it started is stopped on exit, on success or failure. Logs in
//! `target/oidc-provider/`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::conformance::{Guard, free_port, npm_tools, wait_for};
use crate::demo::{Reply, form, http, random};
use crate::{cargo, run};

const CLIENT_ID: &str = "mcp-client";
const RS_CLIENT_ID: &str = "notes-rs";
const SERVER_NAME: &str = "notes";

/// The run; see the module documentation.
pub(crate) fn oidc_provider(root: &Path) -> Result<(), String> {
    let node = npm_tools(root)?;
    let tests = root.join("tests");
    if !tests
        .join("node_modules/oidc-provider/package.json")
        .exists()
    {
        run(
            "npm ci (tests/: oidc-provider, pinned by package-lock.json)",
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&tests),
        )?;
    }
    let binary = root.join("target/debug").join(SERVER_NAME);
    if !binary.exists() {
        run(
            "build generated/notes (the workspace test build)",
            cargo().args(["test", "--workspace", "--no-run", "--quiet"]),
        )?;
    }
    let out = root.join("target/oidc-provider");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let log = |name: &str| std::fs::File::create(out.join(name)).map_err(|e| e.to_string());

    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}/mcp");
    // A second resource the provider knows; nothing listens there.
    let other = format!("http://127.0.0.1:{}/mcp", free_port()?);
    let (client_secret, rs_secret) = (random()?, random()?);
    let config = json!({
        "resources": {url.as_str(): "notes:read notes:write", other.as_str(): "notes:read notes:write"},
        "client": {"client_id": CLIENT_ID, "client_secret": client_secret},
        "resource_server": {"client_id": RS_CLIENT_ID, "client_secret": rs_secret},
    });
    let provider_out = out.join("provider.out");
    let mut provider = Some(Guard(
        Command::new(&node)
            .arg(tests.join("oidc-provider/provider.mjs"))
            .arg("0")
            .env("OIDC_PROVIDER_CONFIG", config.to_string())
            .current_dir(&tests)
            .stdout(std::fs::File::create(&provider_out).map_err(|e| e.to_string())?)
            .stderr(log("provider.log")?)
            .spawn()
            .map_err(|e| format!("cannot start oidc-provider: {e}"))?,
    ));
    let issuer = wait_for("oidc-provider", Duration::from_secs(30), || {
        std::fs::read_to_string(&provider_out)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("issuer ").map(str::to_owned))
    })?;
    let meta_url = format!("{issuer}/.well-known/openid-configuration");
    let meta: Value = serde_json::from_str(&http("GET", &meta_url, &[], None)?.body)
        .map_err(|e| format!("{meta_url}: not JSON: {e}"))?;
    let token_endpoint = meta["token_endpoint"]
        .as_str()
        .ok_or("the provider's metadata has no token_endpoint")?
        .to_owned();
    let introspection = meta["introspection_endpoint"]
        .as_str()
        .ok_or("the provider's metadata has no introspection_endpoint")?;
    eprintln!("oidc-provider: issuer {issuer}, introspection at {introspection}");

    let _server = Guard(
        Command::new(&binary)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--issuer",
                &issuer,
            ])
            .args(["--introspection-client-id", RS_CLIENT_ID])
            .env("BMM_INTROSPECTION_CLIENT_SECRET", &rs_secret)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log("notes.log")?)
            .spawn()
            .map_err(|e| format!("cannot start {SERVER_NAME}: {e}"))?,
    );
    let health = format!("http://127.0.0.1:{port}/healthz");
    wait_for(SERVER_NAME, Duration::from_secs(30), || {
        http("GET", &health, &[], None)
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| String::new())
    })
    .map_err(|e| format!("{e} (log: {})", out.join("notes.log").display()))?;
    eprintln!("{SERVER_NAME}: {url}, trusting {issuer} with introspection client {RS_CLIENT_ID}");

    let token = |resource: &str, scope: &str| -> Result<String, String> {
        let basic = STANDARD.encode(format!(
            "{}:{}",
            form_component(CLIENT_ID),
            form_component(&client_secret)
        ));
        let authorization = format!("Basic {basic}");
        let body = form(&[
            ("grant_type", "client_credentials"),
            ("resource", resource),
            ("scope", scope),
        ]);
        let r = http(
            "POST",
            &token_endpoint,
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Authorization", &authorization),
            ],
            Some(&body),
        )?;
        let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
        match v["access_token"].as_str() {
            Some(t) if r.status == 200 && v["scope"] == json!(scope) => Ok(t.to_owned()),
            _ => Err(format!(
                "token request for {resource} ({scope}): {} {}",
                r.status, v
            )),
        }
    };

    let mut report = Report::default();
    let rw = token(&url, "notes:read notes:write")?;
    report.check(
        !looks_like_jwt(&rw),
        "the provider issues opaque access tokens (not JWS-shaped)",
    )?;

    // 1. tools/list, both eras.
    let r = stateless(&url, &rw, "tools/list", None, json!({}))?;
    let names = tool_names(&r);
    report.check_reply(
        &r,
        r.status == 200
            && names.iter().any(|n| n == "add_note")
            && names.iter().any(|n| n == "list_notes")
            && !names.iter().any(|n| n == "delete_note"),
        &format!(
            "2026-07-28 tools/list with the opaque token: 200, [{}] (delete_note, notes:admin, not listed)",
            names.join(", ")
        ),
    )?;
    let names = session_tools_list(&url, &rw)?;
    report.check(
        names.iter().any(|n| n == "add_note") && !names.iter().any(|n| n == "delete_note"),
        &format!(
            "2025-11-25 session: initialize + tools/list: [{}]",
            names.join(", ")
        ),
    )?;

    // 2. tools/call within and beyond the token's scopes.
    let args = json!({"title": "oidc-provider", "text": "an opaque token, introspected"});
    let r = stateless(&url, &rw, "tools/call", Some("add_note"), args.clone())?;
    let result = r.json()["result"].clone();
    report.check_reply(
        &r,
        r.status == 200
            && result["isError"] != json!(true)
            && result["structuredContent"]["id"].is_number(),
        &format!(
            "tools/call add_note (notes:write): 200, {}",
            result["structuredContent"]
        ),
    )?;
    let r = stateless(
        &url,
        &rw,
        "tools/call",
        Some("delete_note"),
        json!({"id": 1}),
    )?;
    report.check_reply(
        &r,
        r.status == 403
            && r.header("www-authenticate")
                .is_some_and(|c| c.contains("insufficient_scope") && c.contains("notes:admin")),
        "tools/call delete_note (needs notes:admin): 403 insufficient_scope naming notes:admin",
    )?;

    // 3. A read-only token.
    let ro = token(&url, "notes:read")?;
    let r = stateless(&url, &ro, "tools/list", None, json!({}))?;
    let names = tool_names(&r);
    report.check_reply(
        &r,
        r.status == 200
            && names.iter().any(|n| n == "list_notes")
            && !names.iter().any(|n| n == "add_note"),
        &format!(
            "read-only token: tools/list 200, [{}] (no write tool)",
            names.join(", ")
        ),
    )?;
    let r = stateless(&url, &ro, "tools/call", Some("add_note"), args)?;
    report.check_reply(
        &r,
        r.status == 403,
        "read-only token: tools/call add_note 403",
    )?;

    // 4. Tokens the server must refuse.
    let r = stateless(&url, &random()?, "tools/list", None, json!({}))?;
    report.check_reply(
        &r,
        is_invalid_token(&r),
        "a random opaque token: 401 invalid_token",
    )?;
    let foreign = token(&other, "notes:read notes:write")?;
    let r = stateless(&url, &foreign, "tools/list", None, json!({}))?;
    report.check_reply(
        &r,
        is_invalid_token(&r),
        "a token for another resource (introspection says active, aud = that resource): 401 invalid_token",
    )?;

    // 5. An introspection outage.
    let unseen = token(&url, "notes:read notes:write")?;
    drop(provider.take());
    for attempt in 1..=2 {
        let r = stateless(&url, &unseen, "tools/list", None, json!({}))?;
        report.check_reply(
            &r,
            r.status == 503 && r.header("retry-after").is_some(),
            &format!(
                "provider stopped, a token the server has not seen (attempt {attempt}): 503 with Retry-After, never 200"
            ),
        )?;
    }

    eprintln!(
        "\noidc-provider {}: {} checks passed against generated/{SERVER_NAME} (logs in {})",
        npm_version(&tests, "oidc-provider"),
        report.passed,
        out.display()
    );
    Ok(())
}

#[derive(Default)]
struct Report {
    passed: usize,
}

impl Report {
    fn check(&mut self, ok: bool, what: &str) -> Result<(), String> {
        if ok {
            self.passed += 1;
            eprintln!("    ok: {what}");
            Ok(())
        } else {
            Err(format!("expected: {what}"))
        }
    }

    /// Like `check`, with the server's answer in the error.
    fn check_reply(&mut self, reply: &Reply, ok: bool, what: &str) -> Result<(), String> {
        self.check(ok, what).map_err(|e| {
            let body: String = reply.body.chars().take(400).collect();
            format!(
                "{e}\n    got {} WWW-Authenticate: {:?} body: {body}",
                reply.status,
                reply.header("www-authenticate")
            )
        })
    }
}

fn is_invalid_token(r: &Reply) -> bool {
    r.status == 401
        && r.header("www-authenticate")
            .is_some_and(|c| c.contains("error=\"invalid_token\""))
}

/// RFC 6749 section 2.3.1: client id and secret are form-urlencoded before HTTP Basic.
fn form_component(value: &str) -> String {
    form(&[("", value)])
        .strip_prefix('=')
        .unwrap_or_default()
        .to_owned()
}

fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

const MCP_HEADERS: [(&str, &str); 2] = [
    ("Content-Type", "application/json"),
    ("Accept", "application/json, text/event-stream"),
];

/// A stateless 2026-07-28 request (`_meta` in the params, `Mcp-Method`/`Mcp-Name` headers).
fn stateless(
    url: &str,
    token: &str,
    method: &str,
    name: Option<&str>,
    arguments: Value,
) -> Result<Reply, String> {
    let bearer = format!("Bearer {token}");
    let mut headers = MCP_HEADERS.to_vec();
    headers.extend([
        ("Authorization", bearer.as_str()),
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", method),
    ]);
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "bmm-oidc-provider-check", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    let params = match name {
        Some(n) => {
            headers.push(("Mcp-Name", n));
            json!({"_meta": meta, "name": n, "arguments": arguments})
        }
        None => json!({"_meta": meta}),
    };
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    http("POST", url, &headers, Some(&body.to_string()))
}

/// `initialize`, `notifications/initialized` and `tools/list` in a 2025-11-25 session.
fn session_tools_list(url: &str, token: &str) -> Result<Vec<String>, String> {
    let bearer = format!("Bearer {token}");
    let mut headers = MCP_HEADERS.to_vec();
    headers.push(("Authorization", bearer.as_str()));
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bmm-oidc-provider-check", "version": "1"}}});
    let r = http("POST", url, &headers, Some(&init.to_string()))?;
    let session = r.header("mcp-session-id").unwrap_or_default().to_owned();
    if r.status != 200 || session.is_empty() {
        return Err(format!(
            "2025-11-25 initialize with the opaque token: {} {:?} {}",
            r.status,
            r.header("www-authenticate"),
            r.body.chars().take(400).collect::<String>()
        ));
    }
    headers.push(("Mcp-Session-Id", &session));
    headers.push(("MCP-Protocol-Version", "2025-11-25"));
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let _ = http("POST", url, &headers, Some(&initialized.to_string()))?;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let r = http("POST", url, &headers, Some(&list.to_string()))?;
    if r.status != 200 {
        return Err(format!(
            "2025-11-25 tools/list in the session: {} {}",
            r.status,
            r.body.chars().take(400).collect::<String>()
        ));
    }
    Ok(tool_names(&r))
}

fn tool_names(r: &Reply) -> Vec<String> {
    r.json()["result"]["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The installed version of an npm package under `tests/node_modules` (for the report).
fn npm_version(tests: &Path, package: &str) -> String {
    std::fs::read_to_string(
        tests
            .join("node_modules")
            .join(package)
            .join("package.json"),
    )
    .ok()
    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    .and_then(|v| v["version"].as_str().map(str::to_owned))
    .unwrap_or_else(|| "(version unknown)".to_owned())
}
