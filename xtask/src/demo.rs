//! `cargo xtask demo`: the OAuth walkthrough of the product page, end to end, on loopback,
//! in the page's own layout.
//!
//! The layout is the page's: bmm-as under a path (issuer `http://127.0.0.1:<port>/oauth`,
//! endpoints `/oauth/register`, `/oauth/token`, ...), the first MCP server's resource
//! identifier is its origin (`http://127.0.0.1:<port>`) while MCP is served at `/mcp`
//! (`--mcp-path /mcp`), its protected resource metadata at the root well-known URL. The
//! second server uses the default layout (resource `http://127.0.0.1:<port>/mcp`).
//!
//! It starts bmm-as (dev mode) and the two instances of the generated `weather` server, then
//! behaves like an MCP client, printing the page's steps: step 1, the 401 challenge;
//! step 2, the protected resource metadata; then the AS metadata found where RFC 8414
//! section 3.1 puts it for an issuer with a path; step 3, dynamic registration with the
//! page's JSON (`claude://oauth/callback`, a non-standard `resource` member); the
//! authorization request with PKCE S256 and `resource`; step 4, the token request as JSON,
//! as the page sends it; then an authenticated `initialize`, `tools/list`, `tools/call`;
//! finally it replays the token against the second server, which must refuse it (audience
//! binding). The exit code is 0 only if every step behaved as specified. Everything it
//! started is stopped on exit.
//!
//! With `--exchange` (and in `cargo xtask ci`), a last step shows token exchange (RFC 8693,
//! issue 16): the first server, configured in bmm-as as a resource server that may exchange
//! its callers' tokens for the second server (`[[resource_servers]]` with a
//! `token_exchange` policy), trades the user's token for one whose audience is the second
//! server. The step prints the exchanged token's claims (`aud`, `sub`, `act`, `scope`,
//! `exp`), never a token, and the second server, which refused the user's own token,
//! accepts the exchanged one. The default walkthrough stays the page's.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::conformance::{Guard, free_port, wait_for};
use crate::{cargo, run};

pub(crate) struct Reply {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn json(&self) -> Value {
        // SSE responses carry the JSON-RPC message in a `data:` line.
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .find_map(|d| serde_json::from_str(d).ok())
            .or_else(|| serde_json::from_str(&self.body).ok())
            .unwrap_or(Value::Null)
    }
}

fn dechunk(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size.filter(|s| *s > 0) else {
            break;
        };
        let start = line_end + 2;
        let end = (start + size).min(rest.len());
        out.extend_from_slice(&rest[start..end]);
        rest = rest.get(end + 2..).unwrap_or(&[]);
    }
    out
}

/// One HTTP/1.1 exchange on loopback (`Connection: close`).
pub(crate) fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Reply, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not a loopback URL: {url}"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream =
        TcpStream::connect(authority).map_err(|e| format!("connect {authority}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    // SSE streams of legacy sessions may stay open; the response we need comes first.
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&raw);
                if text.contains("\r\n\r\n")
                    && text.contains("\"jsonrpc\"")
                    && text.trim_end().ends_with('}')
                    && text.contains("text/event-stream")
                {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP response")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn step(n: usize, what: &str) {
    eprintln!("\n[{n}] {what}");
}

fn show(method: &str, url: &str, reply: &Reply, interesting: &[&str]) {
    eprintln!("    {method} {url} -> {}", reply.status);
    for h in interesting {
        if let Some(v) = reply.header(h) {
            eprintln!("    {h}: {v}");
        }
    }
}

fn expect(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        eprintln!("    ok: {what}");
        Ok(())
    } else {
        Err(format!("expected {what}"))
    }
}

pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub(crate) fn random() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| e.to_string())?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The walkthrough. `build`: build the two binaries first (false in CI, which runs the
/// ones the workspace test build made rather than building them again with another
/// feature set).
pub(crate) fn demo(root: &Path, build: bool, exchange: bool) -> Result<(), String> {
    if build {
        run(
            "build bmm-as and the generated weather server",
            cargo().args([
                "build",
                "--quiet",
                "-p",
                "bmm-authorization-server",
                "-p",
                "weather",
                "--bins",
            ]),
        )?;
    }
    let dir = root.join("target/demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (as_port, one_port, two_port) = (free_port()?, free_port()?, free_port()?);
    // The page's layout: the AS under /oauth, the first server's resource is its origin.
    let issuer = format!("http://127.0.0.1:{as_port}/oauth");
    let one_resource = format!("http://127.0.0.1:{one_port}");
    let one = format!("{one_resource}/mcp");
    let two = format!("http://127.0.0.1:{two_port}/mcp");
    let log = |name: &str| std::fs::File::create(dir.join(name)).map_err(|e| e.to_string());
    // The first server as a resource server that may exchange its callers' tokens for the
    // second server's: only the SHA-256 of its secret goes into bmm-as's config.
    let exchanger = if exchange {
        let secret = random()?;
        let config = dir.join("bmm-as.toml");
        std::fs::write(
            &config,
            format!(
                "[[resource_servers]]\nresource = {one_resource:?}\nclient_id = {EXCHANGER:?}\nclient_secret_sha256 = \"{:x}\"\ntoken_exchange = {{ audiences = [{two:?}] }}\n",
                Sha256::digest(secret.as_bytes())
            ),
        )
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        Some((secret, config))
    } else {
        None
    };
    let mut bmm_as = Command::new(root.join("target/debug/bmm-as"));
    if let Some((_, config)) = &exchanger {
        bmm_as.arg("--config").arg(config);
    }
    let _as = Guard(
        bmm_as
            .args([
                "--listen",
                &format!("127.0.0.1:{as_port}"),
                "--issuer",
                &issuer,
                "--resource",
                &one_resource,
                "--resource",
                &two,
                "--dev-user",
                "demo-user",
            ])
            .arg("--data-dir")
            .arg(dir.join("as-data"))
            .stdout(Stdio::null())
            .stderr(log("bmm-as.log")?)
            .spawn()
            .map_err(|e| format!("cannot start bmm-as: {e}"))?,
    );
    let server = |port: u16, layout: &[&str], log_name: &str| -> Result<Guard, String> {
        Ok(Guard(
            Command::new(root.join("target/debug/weather"))
                .args([
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--issuer",
                    &issuer,
                ])
                .args(layout)
                .env("OPENWEATHER_API_KEY", "demo-key-not-used-by-word-stats")
                .stdout(Stdio::null())
                .stderr(log(log_name)?)
                .spawn()
                .map_err(|e| format!("cannot start the weather server: {e}"))?,
        ))
    };
    // The servers fetch the issuer's keys at start-up: start them once the issuer answers.
    let as_health = format!("http://127.0.0.1:{as_port}/healthz");
    wait_for("bmm-as", Duration::from_secs(30), || {
        http("GET", &as_health, &[], None)
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| String::new())
    })?;
    let _one = server(
        one_port,
        &["--resource", &one_resource, "--mcp-path", "/mcp"],
        "weather-1.log",
    )?;
    let _two = server(two_port, &[], "weather-2.log")?;
    // Ready: each server has loaded the issuer's signing keys.
    for url in [
        format!("http://127.0.0.1:{one_port}/readyz"),
        format!("http://127.0.0.1:{two_port}/readyz"),
    ] {
        wait_for(&url, Duration::from_secs(30), || {
            http("GET", &url, &[], None)
                .ok()
                .filter(|r| r.status == 200)
                .map(|_| String::new())
        })?;
    }
    eprintln!(
        "bmm-as: issuer {issuer}\nweather #1: resource {one_resource}, MCP at {one}\nweather #2: resource {two}\n(logs in {})",
        dir.display()
    );
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string();
    let mcp_headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];

    step(1, "step 1 — 401 challenge: an MCP request without a token");
    let r = http("POST", &one, &mcp_headers, Some(&list))?;
    show("POST", &one, &r, &["www-authenticate"]);
    let challenge = r.header("www-authenticate").unwrap_or_default().to_owned();
    expect(
        r.status == 401
            && challenge.starts_with("Bearer ")
            && challenge.contains("resource_metadata=\""),
        "401 with a Bearer challenge naming resource_metadata",
    )?;
    let root_prm = format!("{one_resource}/.well-known/oauth-protected-resource");
    let prm_url = challenge
        .split("resource_metadata=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_default()
        .to_owned();

    step(2, "step 2 — resource metadata (RFC 9728)");
    let r = http("GET", &prm_url, &[], None)?;
    show("GET", &prm_url, &r, &["content-type"]);
    let prm: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    eprintln!("    {prm}");
    expect(
        prm_url == root_prm
            && prm["resource"] == json!(one_resource)
            && prm["authorization_servers"] == json!([issuer]),
        "at the root well-known URL: resource is this server's origin, the AS is listed",
    )?;

    step(
        3,
        "authorization server metadata (RFC 8414 section 3.1: the issuer's path after the well-known prefix)",
    );
    let meta_url =
        format!("http://127.0.0.1:{as_port}/.well-known/oauth-authorization-server/oauth");
    let r = http("GET", &meta_url, &[], None)?;
    show("GET", &meta_url, &r, &[]);
    let meta: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    expect(
        r.status == 200
            && meta["issuer"] == json!(issuer)
            && meta["code_challenge_methods_supported"] == json!(["S256"])
            && meta["token_endpoint"] == json!(format!("{issuer}/token"))
            && meta["registration_endpoint"] == json!(format!("{issuer}/register")),
        "issuer is byte-identical, endpoints under /oauth, PKCE S256 advertised",
    )?;
    let endpoint = |k: &str| meta[k].as_str().unwrap_or_default().to_owned();

    step(
        4,
        "step 3 — dynamic registration (RFC 7591), the page's JSON",
    );
    let redirect = "claude://oauth/callback";
    let registration = json!({"client_name": "Claude Desktop", "redirect_uris": [redirect], "token_endpoint_auth_method": "none", "resource": one_resource}).to_string();
    eprintln!("    {registration}");
    let r = http(
        "POST",
        &endpoint("registration_endpoint"),
        &[("Content-Type", "application/json")],
        Some(&registration),
    )?;
    show("POST", &endpoint("registration_endpoint"), &r, &[]);
    let client: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    let client_id = client["client_id"].as_str().unwrap_or_default().to_owned();
    eprintln!("    client_id: {client_id}");
    expect(
        r.status == 201 && client_id.starts_with("bmm_"),
        "201 with a client id",
    )?;

    step(
        5,
        "authorization request with PKCE (S256) and resource (RFC 8707)",
    );
    let verifier = random()?;
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let state = random()?;
    // Scope selection as the MCP spec has clients do it: the challenge's `scope`, else every
    // scope the protected resource metadata lists.
    let scope = prm["scopes_supported"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    eprintln!("    scope: {scope}");
    let authorize = format!(
        "{}?{}",
        endpoint("authorization_endpoint"),
        form(&[
            ("response_type", "code"),
            ("client_id", &client_id),
            ("redirect_uri", redirect),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("state", &state),
            ("scope", &scope),
            ("resource", &one_resource)
        ])
    );
    let r = http("GET", &authorize, &[], None)?;
    show(
        "GET",
        &endpoint("authorization_endpoint"),
        &r,
        &["location"],
    );
    let location = r.header("location").unwrap_or_default().to_owned();
    let query: Vec<(String, String)> = location
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), decode(v)))
        .collect();
    let get = |k: &str| {
        query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    expect(
        location.starts_with(redirect)
            && get("state") == state
            && get("iss") == issuer
            && !get("code").is_empty(),
        "redirect with code, state and iss (RFC 9207)",
    )?;

    step(
        6,
        "step 4 — token exchange, the request as JSON as the page sends it",
    );
    let body = json!({
        "grant_type": "authorization_code",
        "code": get("code"),
        "code_verifier": verifier,
        "client_id": client_id,
        "redirect_uri": redirect,
        "resource": one_resource,
    })
    .to_string();
    let r = http(
        "POST",
        &endpoint("token_endpoint"),
        &[("Content-Type", "application/json")],
        Some(&body),
    )?;
    show("POST", &endpoint("token_endpoint"), &r, &["cache-control"]);
    let tokens: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    let access = tokens["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let claims: Value = access
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    eprintln!(
        "    access token claims: iss={} sub={} aud={} scope={:?}",
        claims["iss"], claims["sub"], claims["aud"], claims["scope"]
    );
    expect(
        r.status == 200 && claims["aud"] == json!(one_resource) && claims["iss"] == json!(issuer),
        "a JWT whose audience is the first server's origin, issued by the AS under /oauth",
    )?;

    step(7, "initialize, tools/list and tools/call with the token");
    let bearer = format!("Bearer {access}");
    let mut headers = mcp_headers.to_vec();
    headers.push(("Authorization", &bearer));
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bmm-demo", "version": "1"}}}).to_string();
    let r = http("POST", &one, &headers, Some(&init))?;
    show("POST", &one, &r, &["mcp-session-id"]);
    let session = r.header("mcp-session-id").unwrap_or_default().to_owned();
    expect(
        r.status == 200 && r.json()["result"]["serverInfo"]["name"] == "weather",
        "initialized, serverInfo.name = weather",
    )?;
    headers.push(("Mcp-Session-Id", &session));
    headers.push(("MCP-Protocol-Version", "2025-11-25"));
    let _ = http(
        "POST",
        &one,
        &headers,
        Some(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string()),
    )?;
    let r = http(
        "POST",
        &one,
        &headers,
        Some(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string()),
    )?;
    let names: Vec<String> = r.json()["result"]["tools"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    show("POST", &one, &r, &[]);
    eprintln!("    tools: {}", names.join(", "));
    expect(
        names.contains(&"word_stats".to_owned()),
        "the spec's tools are listed",
    )?;
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "word_stats", "arguments": {"text": "Tokens are bound to one server. Nothing is passed through!"}}}).to_string();
    let r = http("POST", &one, &headers, Some(&call))?;
    show("POST", &one, &r, &[]);
    let result = r.json()["result"]["structuredContent"].clone();
    eprintln!("    word_stats: {result}");
    expect(
        result["words"] == json!(10) && result["sentences"] == json!(2),
        "the tool ran for the authenticated caller",
    )?;

    step(
        8,
        "the same token against another server (audience binding)",
    );
    let mut other = mcp_headers.to_vec();
    other.push(("Authorization", &bearer));
    let r = http("POST", &two, &other, Some(&init))?;
    show("POST", &two, &r, &["www-authenticate"]);
    expect(
        r.status == 401
            && r.header("www-authenticate")
                .is_some_and(|c| c.contains("error=\"invalid_token\"")),
        "401 invalid_token: the token was issued for the first server only",
    )?;

    if let Some((secret, _)) = &exchanger {
        exchange_step(&ExchangeDemo {
            token_endpoint: &endpoint("token_endpoint"),
            secret,
            access: &access,
            user: &claims,
            two: &two,
            init: &init,
        })?;
    }

    eprintln!("\ndemo: every step behaved as specified");
    Ok(())
}

/// The first server's client id as a resource server at bmm-as (`--exchange`).
const EXCHANGER: &str = "weather-1";

/// What the token exchange step needs from the walkthrough.
struct ExchangeDemo<'a> {
    token_endpoint: &'a str,
    /// The exchanging resource server's secret.
    secret: &'a str,
    /// The user's access token (for the first server).
    access: &'a str,
    /// Its claims.
    user: &'a Value,
    two: &'a str,
    init: &'a str,
}

/// Step 9: the first server exchanges the user's token for one for the second server
/// (RFC 8693); the claims are printed, never the token; the second server accepts it.
fn exchange_step(d: &ExchangeDemo<'_>) -> Result<(), String> {
    step(
        9,
        "token exchange (RFC 8693): the first server trades the user's token for one for the second server",
    );
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{EXCHANGER}:{}", d.secret))
    );
    let body = form(&[
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", d.access),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("audience", d.two),
    ]);
    eprintln!(
        "    as `{EXCHANGER}` (a [[resource_servers]] entry with token_exchange = {{ audiences = [\"{}\"] }}), subject_token = the user's token, audience = {}",
        d.two, d.two
    );
    let r = http(
        "POST",
        d.token_endpoint,
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &basic),
        ],
        Some(&body),
    )?;
    show("POST", d.token_endpoint, &r, &["cache-control"]);
    let answer: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    let exchanged = answer["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let claims: Value = exchanged
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    eprintln!(
        "    exchanged token claims: aud={} sub={} act={} scope={} exp={} (the user's token: aud={} exp={})",
        claims["aud"],
        claims["sub"],
        claims["act"],
        claims["scope"],
        claims["exp"],
        d.user["aud"],
        d.user["exp"]
    );
    if r.status != 200 {
        eprintln!(
            "    error: {} {}",
            answer["error"], answer["error_description"]
        );
    }
    let narrowed = |scope: &Value| -> bool {
        let held: Vec<&str> = d.user["scope"].as_str().unwrap_or("").split(' ').collect();
        scope
            .as_str()
            .is_some_and(|s| s.split(' ').all(|s| held.contains(&s)))
    };
    expect(
        r.status == 200
            && answer["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
            && answer.get("refresh_token").is_none()
            && claims["aud"] == json!(d.two)
            && claims["sub"] == d.user["sub"]
            && claims["act"] == json!({"sub": EXCHANGER})
            && narrowed(&claims["scope"])
            && claims["exp"].as_u64() <= d.user["exp"].as_u64(),
        "a token for the second server: the user's subject, the first server as actor, no wider scopes, no later expiry, no refresh token",
    )?;

    step(10, "the exchanged token at the second server");
    let bearer = format!("Bearer {exchanged}");
    let headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("Authorization", bearer.as_str()),
    ];
    let r = http("POST", d.two, &headers, Some(d.init))?;
    show("POST", d.two, &r, &["mcp-session-id"]);
    expect(
        r.status == 200 && r.json()["result"]["serverInfo"]["name"] == "weather",
        "accepted: the second server refused the user's own token (step 8) but takes the exchanged one",
    )
}

pub(crate) fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
