//! `cargo xtask bench`: throughput and latency of a generated server under load.
//!
//! Builds release binaries (bmm-as, the generated `weather` server, and the `plain_rmcp`
//! example: the same kind of tool on rmcp with no bmm layer), and the `weather` server of
//! [`BASELINE`] side by side (a git work tree in `target/bench-baseline/src`, its own
//! target directory in `target/bench-baseline/target`).
//!
//! The first section, "Stateless request path: today vs now" ([`stateless_today_vs_now`]):
//! the baseline's `weather` server ("today"), the work tree's ("now"), both with auth on
//! (a valid token from bmm-as), metrics on and default logging, and the `plain_rmcp`
//! example answer the 2026-07-28 stateless `tools/call word_stats` at 1, 16 and 64
//! connections, each target in its own process per placement: pinned (the server under
//! `taskset` on one CPU, wrk on another; `taskset` must be installed) and unpinned.
//! req/s, p50, p99, non-2xx and wrk socket errors (any is an error) and peak RSS, the now /
//! today and now / plain rmcp ratios, and an interleaved headline (pinned, 16 connections,
//! median of alternating runs).
//!
//! The second, "Allocators" ([`allocators`]): the work tree's `weather` server built three
//! times in release, with the system allocator, `--features bmm-runtime/mimalloc` and
//! `--features bmm-runtime/jemalloc` (the main target directory; copies in
//! `target/bench/alloc/`, each checked to link its allocator alone; the default build is
//! restored after, [`build_allocators`]), each pinned as above with auth on, metrics and
//! default logging, at 16 and 64 connections: req/s, p50, p99, peak and idle RSS, and the
//! mimalloc / system and jemalloc / system ratios of an interleaved headline.
//!
//! `--only stateless` or `--only allocators` runs that section alone (with the builds it
//! needs), and `results.md` then holds only it.
//!
//! Then the other targets: it starts them on loopback, gets a real token from bmm-as
//! (dev mode: registration, PKCE, `resource`), and drives `tools/call word_stats` with
//! wrk (Debian's package, installed when missing) at concurrency 1, 16 and 64 for a
//! fixed duration each, in both protocol eras: stateless
//! 2026-07-28 requests and a legacy session. Targets, side by side: auth on with a valid
//! token and Prometheus metrics on (as a production server runs), the same with every
//! request traced and exported over OTLP to a local sink, auth off, plain rmcp, and a
//! flood of tokens with a forged signature. Reports
//! req/s, p50, p99, wrk socket errors and the server's peak RSS as a Markdown table with the ratios, in
//! `target/bench/results.md`, and shows what 10,000 `initialize` requests do to memory.
//! Then bmm-as's token endpoint (refresh grants) on SQLite and on a private PostgreSQL,
//! side by side with the pool size ([`token_endpoint`]; alone: `cargo xtask bench-token`).
//! With `--profile` (full run only), also samples the auth-on server with `perf` under load
//! (`target/bench/profile.txt`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::conformance::{Guard, free_port, wait_for};
use crate::demo::{decode, form, http, random};
use crate::{cargo, run};

const SECONDS: u32 = 5;
const CONCURRENCY: [u32; 3] = [1, 16, 64];
/// Alternating runs behind the headline ratios.
const ROUNDS: usize = 3;
const TEXT: &str = "The quick brown fox jumps over the lazy dog. It barked! Did it?";
/// The last commit before the direct stateless path (issue 19): the "today" of the first
/// section is built from it, and it is kept so the bench can always show today vs now.
const BASELINE: &str = "5e5837c12b63b838a456af481ba897b9120bf0a6";

fn wrk() -> Result<String, String> {
    let found = |p: &str| Path::new(p).exists();
    if !found("/usr/bin/wrk") {
        run(
            "apt-get update",
            Command::new("apt-get").args(["update", "-qq"]),
        )?;
        run(
            "apt-get install wrk",
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends", "wrk"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if found("/usr/bin/wrk") {
        Ok("/usr/bin/wrk".to_owned())
    } else {
        Err("wrk is still missing after apt-get install wrk".to_owned())
    }
}

fn healthy(port: u16, what: &str) -> Result<(), String> {
    let url = format!("http://127.0.0.1:{port}/healthz");
    wait_for(what, Duration::from_secs(30), || {
        http("GET", &url, &[], None)
            .ok()
            .filter(|r| r.status < 500)
            .map(|_| String::new())
    })
    .map(|_| ())
}

/// A token for `resource` from bmm-as in dev mode, the way a client gets one.
fn obtain_token(issuer: &str, resource: &str, scope: &str) -> Result<String, String> {
    let redirect = "http://127.0.0.1:33419/callback";
    let registration = json!({"client_name": "bmm bench", "redirect_uris": [redirect], "token_endpoint_auth_method": "none"}).to_string();
    let r = http(
        "POST",
        &format!("{issuer}/register"),
        &[("Content-Type", "application/json")],
        Some(&registration),
    )?;
    let client: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    let client_id = client["client_id"].as_str().unwrap_or_default().to_owned();
    let verifier = random()?;
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let authorize = format!(
        "{issuer}/authorize?{}",
        form(&[
            ("response_type", "code"),
            ("client_id", &client_id),
            ("redirect_uri", redirect),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("state", "bench"),
            ("scope", scope),
            ("resource", resource),
        ])
    );
    let r = http("GET", &authorize, &[], None)?;
    let location = r.header("location").unwrap_or_default().to_owned();
    let code = location
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == "code")
        .map(|(_, v)| decode(v))
        .ok_or_else(|| format!("no code from /authorize ({}): {}", r.status, r.body))?;
    let body = form(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", redirect),
        ("code_verifier", &verifier),
        ("client_id", &client_id),
        ("resource", resource),
    ]);
    let r = http(
        "POST",
        &format!("{issuer}/token"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(&body),
    )?;
    let token: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    token["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no access token ({}): {}", r.status, r.body))
}

/// The same token with one signature character changed: right issuer, known `kid`, a
/// signature that does not verify.
fn forge(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let i = bytes.len().saturating_sub(5);
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap_or_default()
}

/// A legacy session on `url`: its id, after `initialize` and `notifications/initialized`.
fn session(url: &str, token: Option<&str>) -> Result<String, String> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bmm-bench", "version": "1"}}});
    let r = http("POST", url, &headers, Some(&init.to_string()))?;
    let id = r
        .header("mcp-session-id")
        .ok_or_else(|| format!("initialize on {url}: {} {}", r.status, r.body))?
        .to_owned();
    headers.push(("Mcp-Session-Id", id.as_str()));
    headers.push(("MCP-Protocol-Version", "2025-11-25"));
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    http("POST", url, &headers, Some(&note.to_string()))?;
    Ok(id)
}

fn lua_string(text: &str) -> String {
    // A Lua long string cannot contain its own closing bracket; JSON here never has "]==]".
    format!("[==[{text}]==]")
}

/// The 2026-07-28 stateless `tools/call word_stats` request every stateless row sends: its
/// body (the request `_meta` a stateless client sends) and its headers beyond
/// `Content-Type` and `Accept` (the bearer token first, when there is one).
fn stateless_call(token: Option<&str>) -> (Value, Vec<(&'static str, String)>) {
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "bmm-bench", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    let mut headers = Vec::new();
    if let Some(tok) = token {
        headers.push(("Authorization", format!("Bearer {tok}")));
    }
    headers.push(("MCP-Protocol-Version", "2026-07-28".to_owned()));
    headers.push(("Mcp-Method", "tools/call".to_owned()));
    headers.push(("Mcp-Name", "word_stats".to_owned()));
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"_meta": meta, "name": "word_stats", "arguments": {"text": TEXT}}});
    (body, headers)
}

fn script(path: &Path, body: &Value, headers: &[(&str, String)]) -> Result<(), String> {
    let mut lua = String::from("wrk.method = \"POST\"\n");
    lua.push_str(&format!("wrk.body = {}\n", lua_string(&body.to_string())));
    lua.push_str("wrk.headers[\"Content-Type\"] = \"application/json\"\n");
    lua.push_str("wrk.headers[\"Accept\"] = \"application/json, text/event-stream\"\n");
    for (k, v) in headers {
        lua.push_str(&format!("wrk.headers[\"{k}\"] = {}\n", lua_string(v)));
    }
    std::fs::write(path, lua).map_err(|e| e.to_string())
}

/// The CPU model, from `/proc/cpuinfo`.
fn machine() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// Peak and current resident memory of a process, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

struct Measure {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    /// wrk's `Socket errors:` line (connect, read, write, timeout); all zero when it printed
    /// none.
    socket_errors: SocketErrors,
}

/// The counts of wrk's `Socket errors: connect 0, read 12, write 0, timeout 3`.
#[derive(Clone, Copy, Default)]
struct SocketErrors {
    connect: u64,
    read: u64,
    write: u64,
    timeout: u64,
}

impl SocketErrors {
    /// Parses what follows `Socket errors:`.
    fn parse(text: &str) -> Result<Self, String> {
        let mut errors = Self::default();
        for part in text.split(',') {
            let mut words = part.split_whitespace();
            let (Some(kind), Some(count), None) = (words.next(), words.next(), words.next()) else {
                return Err(format!("unexpected wrk socket errors line: `{text}`"));
            };
            let count: u64 = count
                .parse()
                .map_err(|_| format!("unexpected wrk socket errors line: `{text}`"))?;
            match kind {
                "connect" => errors.connect = count,
                "read" => errors.read = count,
                "write" => errors.write = count,
                "timeout" => errors.timeout = count,
                _ => return Err(format!("unexpected wrk socket errors line: `{text}`")),
            }
        }
        Ok(errors)
    }

    fn total(self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

impl std::fmt::Display for SocketErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connect {}, read {}, write {}, timeout {}",
            self.connect, self.read, self.write, self.timeout
        )
    }
}

/// `m`, or an error naming `what` (target, placement, connections) when any answer was not
/// 2xx or wrk saw a socket error: the sections comparing builds keep only clean runs.
fn clean(m: Measure, what: &str, log: &str) -> Result<Measure, String> {
    if m.non_2xx > 0 {
        return Err(format!(
            "{what}: {} non-2xx responses to the stateless tools/call (see target/bench/{log})",
            m.non_2xx
        ));
    }
    if m.socket_errors.total() > 0 {
        return Err(format!(
            "{what}: wrk saw socket errors ({}) (see target/bench/{log})",
            m.socket_errors
        ));
    }
    Ok(m)
}

fn millis(text: &str) -> f64 {
    let (number, factor) = if let Some(v) = text.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (text, 1.0)
    };
    number.parse::<f64>().map_or(f64::NAN, |n| n * factor)
}

fn load(wrk: &str, url: &str, lua: &Path, connections: u32) -> Result<Measure, String> {
    load_on(wrk, url, lua, connections, None)
}

/// [`load`], with wrk pinned to `cpu` (`taskset -c`) when there is one.
fn load_on(
    wrk: &str,
    url: &str,
    lua: &Path,
    connections: u32,
    cpu: Option<u32>,
) -> Result<Measure, String> {
    let threads = connections.min(2);
    let mut command = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), wrk]);
            c
        }
        None => Command::new(wrk),
    };
    let out = command
        .args([
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{SECONDS}s"),
            "--latency",
            "-s",
        ])
        .arg(lua)
        .arg(url)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let find = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix).map(str::trim).map(str::to_owned))
    };
    let rps = find("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("wrk printed no Requests/sec:\n{text}"))?;
    Ok(Measure {
        rps,
        p50_ms: find("50%").map_or(f64::NAN, |v| millis(&v)),
        p99_ms: find("99%").map_or(f64::NAN, |v| millis(&v)),
        non_2xx: find("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        socket_errors: find("Socket errors:")
            .map_or(Ok(SocketErrors::default()), |v| SocketErrors::parse(&v))?,
    })
}

struct Target {
    name: &'static str,
    url: String,
    pid: u32,
    token: Option<String>,
}

/// Which sections `cargo xtask bench` runs (`--only`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Only {
    /// Every section (the default).
    All,
    /// "Stateless request path: today vs now" alone.
    Stateless,
    /// "Allocators" alone.
    Allocators,
}

impl Only {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        match text {
            "all" => Ok(Self::All),
            "stateless" => Ok(Self::Stateless),
            "allocators" => Ok(Self::Allocators),
            other => Err(format!(
                "bench --only: `{other}` is not one of stateless, allocators, all"
            )),
        }
    }
}

/// The release binaries every section uses: bmm-as, the generated `weather` server and the
/// `plain_rmcp` example, with `features` added (the "Allocators" section's builds: the same
/// packages and targets, so every other dependency keeps its features and stays built).
fn build_release(features: Option<&str>) -> Result<(), String> {
    let mut command = cargo();
    command.args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "bmm-authorization-server",
        "-p",
        "weather",
        "-p",
        "bmm-runtime",
        "--bins",
        "--example",
        "plain_rmcp",
    ]);
    let description = match features {
        Some(features) => {
            command.args(["--features", features]);
            format!("build release binaries with --features {features}")
        }
        None => {
            "build release binaries (bmm-as, generated/weather, the plain rmcp example)".to_owned()
        }
    };
    run(&description, &mut command)
}

pub(crate) fn bench(root: &Path, profile: bool, only: Only) -> Result<(), String> {
    if profile && only != Only::All {
        return Err(
            "bench: --profile profiles the full run's auth-on server; leave out --only".to_owned(),
        );
    }
    taskset()?;
    let wrk = wrk()?;
    build_release(None)?;
    let baseline = match only {
        Only::Allocators => None,
        Only::All | Only::Stateless => Some(build_baseline(root)?),
    };
    let release = root.join("target/release");
    let out = root.join("target/bench");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let allocator_builds = match only {
        Only::Stateless => None,
        Only::All | Only::Allocators => Some(build_allocators(root, &out)?),
    };
    // Each section is written to results.md as soon as it is done, so a later failure still
    // leaves it there.
    let mut md = "# bmm bench\n\n".to_owned();
    let write = |md: &str| std::fs::write(out.join("results.md"), md).map_err(|e| e.to_string());
    // First, alone on the machine: today vs now on the stateless path.
    if let Some(baseline) = &baseline {
        md.push_str(&stateless_today_vs_now(&wrk, &release, baseline, &out)?);
        write(&md)?;
    }
    if let Some(builds) = &allocator_builds {
        if baseline.is_some() {
            md.push('\n');
        }
        md.push_str(&allocators(&wrk, builds, &release, &out)?);
        write(&md)?;
    }
    if only != Only::All {
        println!("{md}");
        return Ok(());
    }
    let log = |name: &str| std::fs::File::create(out.join(name)).map_err(|e| e.to_string());
    let (as_port, on_port, off_port, plain_port) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let (metrics_port, traced_port) = (free_port()?, free_port()?);
    let sink = OtlpSink::start()?;
    let issuer = format!("http://127.0.0.1:{as_port}");
    let on_url = format!("http://127.0.0.1:{on_port}/mcp");
    let traced_url = format!("http://127.0.0.1:{traced_port}/mcp");
    let _as = Guard(
        Command::new(release.join("bmm-as"))
            .args([
                "--listen",
                &format!("127.0.0.1:{as_port}"),
                "--resource",
                &on_url,
                "--resource",
                &traced_url,
            ])
            .args(["--dev-user", "bench", "--data-dir"])
            .arg(out.join("as-data"))
            .stdout(Stdio::null())
            .stderr(log("bmm-as.log")?)
            .spawn()
            .map_err(|e| format!("cannot start bmm-as: {e}"))?,
    );
    let weather =
        |port: u16, extra: &[&str], env: &[(&str, &str)], name: &str| -> Result<Guard, String> {
            Ok(Guard(
                Command::new(release.join("weather"))
                    .args(["--listen", &format!("127.0.0.1:{port}")])
                    .args(extra)
                    .env("OPENWEATHER_API_KEY", "bench")
                    .envs(env.iter().copied())
                    // A generated server's default logging (`DEFAULT_LOG_FILTER`): the request span
                    // is on, as it is for users.
                    .env_remove("RUST_LOG")
                    .stdout(Stdio::null())
                    .stderr(log(name)?)
                    .spawn()
                    .map_err(|e| format!("cannot start weather: {e}"))?,
            ))
        };
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let on = weather(
        on_port,
        &["--issuer", &issuer, "--metrics-listen", &metrics_listen],
        &[],
        "weather-auth-on.log",
    )?;
    let sink_url = format!("http://127.0.0.1:{}", sink.port);
    // Every request sampled (the SDK's default for a root span) and exported in batches.
    let traced = weather(
        traced_port,
        &["--issuer", &issuer, "--resource", &traced_url],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink_url),
            ("OTEL_SERVICE_NAME", "weather-bench"),
        ],
        "weather-traced.log",
    )?;
    let off = weather(off_port, &["--no-auth"], &[], "weather-auth-off.log")?;
    let plain = Guard(
        Command::new(release.join("examples/plain_rmcp"))
            .arg(format!("127.0.0.1:{plain_port}"))
            .stdout(Stdio::null())
            .stderr(log("plain-rmcp.log")?)
            .spawn()
            .map_err(|e| format!("cannot start plain_rmcp: {e}"))?,
    );
    healthy(as_port, "bmm-as")?;
    healthy(on_port, "weather (auth on)")?;
    healthy(traced_port, "weather (traces exported)")?;
    healthy(off_port, "weather (auth off)")?;
    healthy(plain_port, "plain rmcp")?;
    let idle = [on.0.id(), off.0.id(), plain.0.id()].map(|pid| memory(pid).1);
    let token = obtain_token(&issuer, &on_url, "text:use weather:read")?;
    let traced_token = obtain_token(&issuer, &traced_url, "text:use weather:read")?;
    let forged = forge(&token);
    // Warm-up: the first authenticated request fetches the JWKS (the server started before
    // bmm-as answered, so it retries at most once a second); measure after it succeeds.
    let warm_up = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bmm-bench", "version": "1"}}})
    .to_string();
    for (url, token) in [(&on_url, &token), (&traced_url, &traced_token)] {
        let bearer = format!("Bearer {token}");
        let mut r = http("GET", &format!("{issuer}/healthz"), &[], None)?;
        for _ in 0..30 {
            r = http(
                "POST",
                url,
                &[
                    ("Content-Type", "application/json"),
                    ("Accept", "application/json, text/event-stream"),
                    ("Authorization", &bearer),
                ],
                Some(&warm_up),
            )?;
            if r.status != 503 {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if r.status != 200 {
            return Err(format!(
                "warm-up request to {url} answered {}: {}",
                r.status, r.body
            ));
        }
    }
    let targets = [
        Target {
            name: "bmm, auth on (valid token)",
            url: on_url.clone(),
            pid: on.0.id(),
            token: Some(token.clone()),
        },
        Target {
            name: "bmm, traces exported (auth on, every request sampled)",
            url: traced_url,
            pid: traced.0.id(),
            token: Some(traced_token),
        },
        Target {
            name: "bmm, auth off",
            url: format!("http://127.0.0.1:{off_port}/mcp"),
            pid: off.0.id(),
            token: None,
        },
        Target {
            name: "plain rmcp (no bmm layer)",
            url: format!("http://127.0.0.1:{plain_port}/mcp"),
            pid: plain.0.id(),
            token: None,
        },
        Target {
            name: "bmm, forged signature (401)",
            url: on_url,
            pid: on.0.id(),
            token: Some(forged),
        },
    ];
    let mut rows = Vec::new();
    let mut scripts = Vec::new();
    let mut results: Vec<(String, &'static str, u32, Measure)> = Vec::new();
    for era in ["2026-07-28 stateless", "2025-11-25 session"] {
        for t in &targets {
            let (body, headers) = if era.starts_with("2026") {
                stateless_call(t.token.as_deref())
            } else {
                let mut headers: Vec<(&str, String)> = Vec::new();
                if let Some(tok) = &t.token {
                    headers.push(("Authorization", format!("Bearer {tok}")));
                }
                // A forged token cannot open a session: reuse the valid session's id, so the
                // only difference is the token.
                let session_token = if t.name.contains("forged") {
                    Some(token.as_str())
                } else {
                    t.token.as_deref()
                };
                let id = session(&t.url, session_token)?;
                headers.push(("Mcp-Session-Id", id));
                headers.push(("MCP-Protocol-Version", "2025-11-25".to_owned()));
                let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": "word_stats", "arguments": {"text": TEXT}}});
                (body, headers)
            };
            let lua = out.join(format!(
                "{}-{}.lua",
                rows.len(),
                era.split(' ').next().unwrap_or("era")
            ));
            script(&lua, &body, &headers)?;
            scripts.push((era, t.name, t.url.clone(), lua.clone()));
            for c in CONCURRENCY {
                let m = load(&wrk, &t.url, &lua, c)?;
                let (peak, _) = memory(t.pid);
                eprintln!(
                    "    {era} | {} | c={c}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, non-2xx {}, socket errors {} ({}), peak RSS {:.1} MiB",
                    t.name,
                    m.rps,
                    m.p50_ms,
                    m.p99_ms,
                    m.non_2xx,
                    m.socket_errors.total(),
                    m.socket_errors,
                    peak
                );
                rows.push(format!(
                    "| {era} | {} | {c} | {:.0} | {:.2} | {:.2} | {} | {} | {:.1} |",
                    t.name,
                    m.rps,
                    m.p50_ms,
                    m.p99_ms,
                    m.non_2xx,
                    m.socket_errors.total(),
                    peak
                ));
                results.push((era.to_owned(), t.name, c, m));
            }
        }
    }
    // The headline ratios again, interleaved: auth on, auth off and plain rmcp take turns
    // (stateless, 16 connections) and the median of each is kept, so a noisy neighbour
    // slows all three rather than one.
    let mut turns: Vec<(&str, Vec<Measure>)> = Vec::new();
    for _ in 0..ROUNDS {
        for (era, name, url, lua) in &scripts {
            if !era.starts_with("2026") || name.contains("forged") {
                continue;
            }
            let m = load(&wrk, url, lua, 16)?;
            if m.socket_errors.total() > 0 {
                eprintln!(
                    "    interleaved | {name} | c=16: socket errors ({})",
                    m.socket_errors
                );
            }
            match turns.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => v.push(m),
                None => turns.push((name, vec![m])),
            }
        }
    }
    let median = |name: &str, f: fn(&Measure) -> f64| {
        turns
            .iter()
            .find(|(n, _)| n.starts_with(name))
            .map_or(f64::NAN, |(_, v)| {
                let mut xs: Vec<f64> = v.iter().map(f).collect();
                xs.sort_by(f64::total_cmp);
                xs[xs.len() / 2]
            })
    };
    let interleaved = format!(
        "Interleaved, 2026-07-28 stateless, 16 connections, median of {ROUNDS} alternating runs: \
         auth on with metrics {:.0} req/s (p99 {:.2} ms), auth off {:.0} (p99 {:.2} ms), plain rmcp {:.0} (p99 {:.2} ms), \
         traces exported {:.0} (p99 {:.2} ms); \
         **auth on / auth off {:.3}, auth on / plain rmcp {:.3}, traces exported / auth on {:.3}**.",
        median("bmm, auth on", |m| m.rps),
        median("bmm, auth on", |m| m.p99_ms),
        median("bmm, auth off", |m| m.rps),
        median("bmm, auth off", |m| m.p99_ms),
        median("plain rmcp", |m| m.rps),
        median("plain rmcp", |m| m.p99_ms),
        median("bmm, traces", |m| m.rps),
        median("bmm, traces", |m| m.p99_ms),
        median("bmm, auth on", |m| m.rps) / median("bmm, auth off", |m| m.rps),
        median("bmm, auth on", |m| m.rps) / median("plain rmcp", |m| m.rps),
        median("bmm, traces", |m| m.rps) / median("bmm, auth on", |m| m.rps),
    );
    eprintln!("    {interleaved}");

    let rps = |era: &str, name: &str, c: u32| {
        results
            .iter()
            .find(|(e, n, cc, _)| e == era && n.starts_with(name) && *cc == c)
            .map_or(f64::NAN, |(_, _, _, m)| m.rps)
    };
    let mut ratios = Vec::new();
    for era in ["2026-07-28 stateless", "2025-11-25 session"] {
        for c in CONCURRENCY {
            let on = rps(era, "bmm, auth on", c);
            ratios.push(format!(
                "| {era} | {c} | {:.3} | {:.3} | {:.3} | {:.3} |",
                on / rps(era, "bmm, auth off", c),
                on / rps(era, "plain rmcp", c),
                rps(era, "bmm, traces", c) / on,
                rps(era, "bmm, forged", c) / on,
            ));
        }
    }

    // 10,000 initialize requests: what legacy sessions cost in memory.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bmm-bench", "version": "1"}}});
    let off_url = format!("http://127.0.0.1:{off_port}/mcp");
    let (_, before) = memory(off.0.id());
    let init_text = init.to_string();
    let headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    let (mut accepted, mut refused) = (0u32, 0u32);
    for _ in 0..10_000 {
        match http("POST", &off_url, &headers, Some(&init_text))?.status {
            200 => accepted += 1,
            503 => refused += 1,
            other => return Err(format!("initialize answered {other}")),
        }
    }
    let (peak_after, after) = memory(off.0.id());
    let machine = machine();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    md.push_str(&format!(
        "\n## Targets side by side, both eras\n\n{cores} cores ({machine}); wrk, {SECONDS} s per cell, `tools/call word_stats`, release builds, \
         everything on one machine (the load generator shares the cores).\n\n\
         | era | target | connections | req/s | p50 ms | p99 ms | non-2xx | socket errors | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|\n"
    ));
    md.push_str(&rows.join("\n"));
    md.push_str("\n\n| era | connections | auth on / auth off | auth on / plain rmcp | traces exported / auth on | forged / valid |\n|---|---|---|---|---|---|\n");
    md.push_str(&ratios.join("\n"));
    md.push_str("\n\n");
    md.push_str(&interleaved);
    md.push_str(&format!(
        "\n\nIdle RSS (MiB): auth on {:.1}, auth off {:.1}, plain rmcp {:.1}.\n\n\
         10,000 `initialize` requests (legacy sessions, auth off, `--max-sessions` default): {accepted} opened a session, \
         {refused} were refused with 503; RSS {before:.1} MiB before, {after:.1} MiB after (peak {peak_after:.1}).\n",
        idle[0], idle[1], idle[2]
    ));
    // The metrics endpoint after the load: the counters saw it, and the traces reached
    // the sink (so the traced rows measured real exports, not a silently idle exporter).
    let scrape = http(
        "GET",
        &format!("http://{metrics_listen}/metrics"),
        &[],
        None,
    )?;
    let counted: f64 = scrape
        .body
        .lines()
        .filter(|l| l.starts_with("bmm_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    if scrape.status != 200 || counted < 1.0 {
        return Err(format!(
            "/metrics answered {} without bmm_requests_total counts",
            scrape.status
        ));
    }
    let (exports, bytes) = sink.received();
    if exports == 0 {
        return Err("the traced server exported no spans to the OTLP sink".to_owned());
    }
    md.push_str(&format!(
        "\nMetrics: `bmm_requests_total` on the auth-on server counted {counted:.0} requests \
         ({} bytes of exposition). Traces: the OTLP sink received {exports} export requests, \
         {:.1} MiB.\n",
        scrape.body.len(),
        bytes as f64 / 1_048_576.0
    ));
    // Token-endpoint throughput, SQLite and PostgreSQL side by side (the other servers
    // are idle by now).
    md.push('\n');
    md.push_str(&token_endpoint(&release, &out)?);
    std::fs::write(out.join("results.md"), &md).map_err(|e| e.to_string())?;
    println!("{md}");
    if profile {
        // The first script is the stateless 2026-07-28 call with a valid token.
        perf_profile(
            &wrk,
            &targets[0].url,
            &out.join("0-2026-07-28.lua"),
            on.0.id(),
            &out,
        )?;
    }
    Ok(())
}

/// Fails clearly when `taskset` (util-linux) is missing: the pinned placement needs it.
fn taskset() -> Result<(), String> {
    let missing = |why: String| {
        format!(
            "taskset is missing ({why}): the stateless section pins the server and wrk to CPUs \
             with it (it is part of util-linux: apt-get install util-linux)"
        )
    };
    let out = Command::new("taskset")
        .arg("--version")
        .output()
        .map_err(|e| missing(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(missing(format!("taskset --version: {}", out.status)))
    }
}

/// The CPUs this process may run on (`Cpus_allowed_list`), in order.
fn allowed_cpus() -> Vec<u32> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or_default()
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(first), Ok(last)) = (first.parse::<u32>(), last.parse::<u32>()) {
            cpus.extend(first..=last);
        }
    }
    cpus
}

/// The commit a git work tree at `dir` has checked out, when `dir` is the top of one (a
/// plain directory below this repository would answer with the repository's own HEAD).
fn worktree_head(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let top = PathBuf::from(git(&["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    git(&["rev-parse", "HEAD"])
}

/// The generated `weather` server of [`BASELINE`], built side by side: a git work tree
/// in `target/bench-baseline/src` (reused, or moved to the baseline when it is at another
/// commit) and its own target directory, so the work tree's release binaries stay as
/// they are and a second run is incremental. Returns the binary.
fn build_baseline(root: &Path) -> Result<PathBuf, String> {
    let dir = root.join("target/bench-baseline");
    let src = dir.join("src");
    let short = &BASELINE[..7];
    if src.exists() {
        match worktree_head(&src) {
            Some(head) if head == BASELINE => {}
            Some(_) => run(
                &format!("check out the baseline {short} in target/bench-baseline/src"),
                Command::new("git")
                    .arg("-C")
                    .arg(&src)
                    .args(["checkout", "--quiet", "--detach", BASELINE]),
            )?,
            None => std::fs::remove_dir_all(&src).map_err(|e| {
                format!(
                    "{} is not a git work tree and cannot be removed: {e}",
                    src.display()
                )
            })?,
        }
    }
    if !src.exists() {
        // A work tree whose directory was deleted is still registered until pruned.
        run(
            "git worktree prune",
            Command::new("git")
                .arg("-C")
                .arg(root)
                .args(["worktree", "prune"]),
        )?;
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        run(
            &format!("git worktree add target/bench-baseline/src {short}"),
            Command::new("git")
                .arg("-C")
                .arg(root)
                .args(["worktree", "add", "--quiet", "--detach"])
                .arg(&src)
                .arg(BASELINE),
        )?;
    }
    run(
        &format!("build the baseline's weather server ({short}, release)"),
        cargo()
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .args(["build", "--release", "--quiet", "-p", "weather"]),
    )?;
    let binary = dir.join("target/release/weather");
    if binary.exists() {
        Ok(binary)
    } else {
        Err(format!("the baseline build made no {}", binary.display()))
    }
}

/// A token for `url` (the resource of the server behind it) from bmm-as, after warming that
/// server up: its first authenticated request fetches the JWKS (the server may have started
/// before bmm-as answered, and retries at most once a second), so load is measured only
/// after an `initialize` with the token answered 200. `what` names the server in errors.
fn token_and_warm_up(issuer: &str, url: &str, what: &str) -> Result<String, String> {
    let warm_up = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bmm-bench", "version": "1"}}})
    .to_string();
    let token = obtain_token(issuer, url, "text:use weather:read")?;
    let bearer = format!("Bearer {token}");
    let mut r = http("GET", &format!("{issuer}/healthz"), &[], None)?;
    for _ in 0..30 {
        r = http(
            "POST",
            url,
            &[
                ("Content-Type", "application/json"),
                ("Accept", "application/json, text/event-stream"),
                ("Authorization", &bearer),
            ],
            Some(&warm_up),
        )?;
        if r.status != 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if r.status != 200 {
        return Err(format!(
            "warm-up request to {url} ({what}) answered {}: {}",
            r.status, r.body
        ));
    }
    Ok(token)
}

/// Checks one answer to the stateless `tools/call`: 200 and a JSON-RPC result that is not
/// a tool error (the body may be JSON or an SSE stream of one message).
fn check_answer(
    name: &str,
    url: &str,
    body: &Value,
    headers: &[(&str, String)],
) -> Result<(), String> {
    let mut all = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    all.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
    let r = http("POST", url, &all, Some(&body.to_string()))?;
    let message = serde_json::from_str::<Value>(&r.body).ok().or_else(|| {
        r.body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|m| m.get("id").is_some())
    });
    let ok = r.status == 200
        && message.as_ref().is_some_and(|m| {
            m["result"].is_object() && m["result"]["isError"].as_bool() != Some(true)
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name}: the stateless tools/call on {url} answered {}: {}",
            r.status, r.body
        ))
    }
}

/// One server of the stateless section: a target in a placement, in its own process.
struct Instance {
    target: &'static str,
    placement: &'static str,
    port: u16,
    url: String,
    token: Option<String>,
    wrk_cpu: Option<u32>,
    lua: PathBuf,
    server: Guard,
}

/// The first section of the bench: the 2026-07-28 stateless `tools/call word_stats` on the
/// generated `weather` server built from [`BASELINE`] ("today"), on the work tree's
/// ("now", both with auth on and a valid token from bmm-as, metrics on, default logging),
/// and on the `plain_rmcp` example, each in its own process per placement: pinned (the
/// server under `taskset -c` on one CPU, so its runtime sees one CPU, and wrk on
/// another) and unpinned. Every response must be 2xx. Returns a Markdown section.
fn stateless_today_vs_now(
    wrk: &str,
    release: &Path,
    baseline: &Path,
    out: &Path,
) -> Result<String, String> {
    let cpus = allowed_cpus();
    let cores = cpus.len();
    let [server_cpu, wrk_cpu, ..] = cpus[..] else {
        return Err(format!(
            "the pinned placement needs two CPUs, this process may use {cpus:?}"
        ));
    };
    let placements = [
        ("pinned", Some(server_cpu), Some(wrk_cpu)),
        ("unpinned", None, None),
    ];
    let now_binary = release.join("weather");
    // The weather binaries run with auth on; `None` is the plain rmcp example.
    let targets: [(&'static str, Option<&Path>); 3] = [
        ("today", Some(baseline)),
        ("now", Some(&now_binary)),
        ("plain rmcp", None),
    ];
    let log = |name: &str| std::fs::File::create(out.join(name)).map_err(|e| e.to_string());
    let slug = |placement: &str, target: &str| format!("{placement}-{}", target.replace(' ', "-"));
    let mut ports = Vec::new();
    for (placement, _, _) in placements {
        for (target, _) in targets {
            ports.push((placement, target, free_port()?));
        }
    }
    let as_port = free_port()?;
    let issuer = format!("http://127.0.0.1:{as_port}");
    let url = |port: u16| format!("http://127.0.0.1:{port}/mcp");
    // One resource per auth-on instance: each has its own port, so its own resource URL
    // (the server's default, `http://<listen>/mcp`).
    let mut authorization_server = Command::new(release.join("bmm-as"));
    authorization_server.args(["--listen", &format!("127.0.0.1:{as_port}")]);
    for (_, target, port) in &ports {
        if *target != "plain rmcp" {
            authorization_server.args(["--resource", &url(*port)]);
        }
    }
    let _as = Guard(
        authorization_server
            .args(["--dev-user", "bench", "--data-dir"])
            .arg(out.join("stateless-as-data"))
            .stdout(Stdio::null())
            .stderr(log("stateless-bmm-as.log")?)
            .spawn()
            .map_err(|e| format!("cannot start bmm-as: {e}"))?,
    );
    let mut instances = Vec::new();
    for (placement, cpu, wrk_on) in placements {
        for (target, binary) in targets {
            let port = ports
                .iter()
                .find(|(p, t, _)| *p == placement && *t == target)
                .map_or(0, |(_, _, port)| *port);
            let program =
                binary.map_or_else(|| release.join("examples/plain_rmcp"), Path::to_path_buf);
            let mut command = match cpu {
                Some(cpu) => {
                    let mut c = Command::new("taskset");
                    c.args(["-c", &cpu.to_string()]).arg(&program);
                    c
                }
                None => Command::new(&program),
            };
            if binary.is_some() {
                let metrics_listen = format!("127.0.0.1:{}", free_port()?);
                command
                    .args(["--listen", &format!("127.0.0.1:{port}")])
                    .args(["--issuer", &issuer, "--metrics-listen", &metrics_listen])
                    .env("OPENWEATHER_API_KEY", "bench")
                    // A generated server's default logging, as in the rows below.
                    .env_remove("RUST_LOG");
            } else {
                command.arg(format!("127.0.0.1:{port}"));
            }
            let server = Guard(
                command
                    .stdout(Stdio::null())
                    .stderr(log(&format!("stateless-{}.log", slug(placement, target)))?)
                    .spawn()
                    .map_err(|e| format!("cannot start {target} ({placement}): {e}"))?,
            );
            instances.push(Instance {
                target,
                placement,
                port,
                url: url(port),
                token: None,
                wrk_cpu: wrk_on,
                lua: out.join(format!("stateless-{}.lua", slug(placement, target))),
                server,
            });
        }
    }
    healthy(as_port, "bmm-as (stateless section)")?;
    for i in &instances {
        healthy(i.port, &format!("{} ({})", i.target, i.placement))?;
    }
    // A token per resource, and the warm-up of each auth-on instance.
    for i in instances.iter_mut().filter(|i| i.target != "plain rmcp") {
        let what = format!("{}, {}", i.target, i.placement);
        i.token = Some(token_and_warm_up(&issuer, &i.url, &what)?);
    }
    // The request, and one answer checked in full before any load: 200 alone would not
    // tell a tool result from a JSON-RPC error.
    for i in &instances {
        let (body, headers) = stateless_call(i.token.as_deref());
        check_answer(
            &format!("{} ({})", i.target, i.placement),
            &i.url,
            &body,
            &headers,
        )?;
        script(&i.lua, &body, &headers)?;
    }
    let measure = |i: &Instance, c: u32| -> Result<Measure, String> {
        clean(
            load_on(wrk, &i.url, &i.lua, c, i.wrk_cpu)?,
            &format!("{} ({}, {c} connections)", i.target, i.placement),
            &format!("stateless-{}.log", slug(i.placement, i.target)),
        )
    };
    let mut results: Vec<(&'static str, &'static str, u32, Measure)> = Vec::new();
    let mut rows = Vec::new();
    for i in &instances {
        for c in CONCURRENCY {
            let m = measure(i, c)?;
            let (peak, _) = memory(i.server.0.id());
            eprintln!(
                "    stateless | {} | {} | c={c}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, non-2xx {}, peak RSS {:.1} MiB",
                i.placement, i.target, m.rps, m.p50_ms, m.p99_ms, m.non_2xx, peak
            );
            rows.push(format!(
                "| {} | {} | {c} | {:.0} | {:.2} | {:.2} | {} | {:.1} |",
                i.placement, i.target, m.rps, m.p50_ms, m.p99_ms, m.non_2xx, peak
            ));
            results.push((i.placement, i.target, c, m));
        }
    }
    // The headline, interleaved: today, now and plain rmcp take turns (pinned, 16
    // connections) and the median of each is kept, so a noisy neighbour slows all three.
    let mut turns: Vec<(&str, Vec<Measure>)> = Vec::new();
    for _ in 0..ROUNDS {
        for i in instances.iter().filter(|i| i.placement == "pinned") {
            let m = measure(i, 16)?;
            match turns.iter_mut().find(|(n, _)| *n == i.target) {
                Some((_, v)) => v.push(m),
                None => turns.push((i.target, vec![m])),
            }
        }
    }
    // Still answering correctly after the load.
    for i in &instances {
        let (body, headers) = stateless_call(i.token.as_deref());
        check_answer(
            &format!("{} ({}), after the load", i.target, i.placement),
            &i.url,
            &body,
            &headers,
        )?;
    }
    let median = |name: &str, f: fn(&Measure) -> f64| {
        turns
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(f64::NAN, |(_, v)| {
                let mut xs: Vec<f64> = v.iter().map(f).collect();
                xs.sort_by(f64::total_cmp);
                xs[xs.len() / 2]
            })
    };
    let headline = format!(
        "Interleaved, pinned, 16 connections, median of {ROUNDS} alternating runs: \
         today {:.0} req/s (p99 {:.2} ms), now {:.0} (p99 {:.2} ms), plain rmcp {:.0} (p99 {:.2} ms); \
         **now / today {:.3}, now / plain rmcp {:.3}; p99 now / today {:.3}, now / plain rmcp {:.3}**.",
        median("today", |m| m.rps),
        median("today", |m| m.p99_ms),
        median("now", |m| m.rps),
        median("now", |m| m.p99_ms),
        median("plain rmcp", |m| m.rps),
        median("plain rmcp", |m| m.p99_ms),
        median("now", |m| m.rps) / median("today", |m| m.rps),
        median("now", |m| m.rps) / median("plain rmcp", |m| m.rps),
        median("now", |m| m.p99_ms) / median("today", |m| m.p99_ms),
        median("now", |m| m.p99_ms) / median("plain rmcp", |m| m.p99_ms),
    );
    eprintln!("    {headline}");
    let get = |placement: &str, target: &str, c: u32, f: fn(&Measure) -> f64| {
        results
            .iter()
            .find(|(p, t, cc, _)| *p == placement && *t == target && *cc == c)
            .map_or(f64::NAN, |(_, _, _, m)| f(m))
    };
    let mut ratios = Vec::new();
    for (placement, _, _) in placements {
        for c in CONCURRENCY {
            let rps = |t: &str| get(placement, t, c, |m| m.rps);
            let p99 = |t: &str| get(placement, t, c, |m| m.p99_ms);
            ratios.push(format!(
                "| {placement} | {c} | {:.3} | {:.3} | {:.3} | {:.3} |",
                rps("now") / rps("today"),
                rps("now") / rps("plain rmcp"),
                p99("now") / p99("today"),
                p99("now") / p99("plain rmcp"),
            ));
        }
    }
    Ok(format!(
        "## Stateless request path: today vs now\n\n\
         The 2026-07-28 stateless `tools/call word_stats` (the request of the rows below), wrk, \
         {SECONDS} s per cell, release builds, {} ({cores} CPUs usable). **today**: the generated `weather` server built from \
         commit `{BASELINE}` (the last commit before the direct stateless path); **now**: the work \
         tree's; both with auth on (a valid token from bmm-as), `--metrics-listen` and default \
         logging. **plain rmcp**: the `plain_rmcp` example (no bmm layer). One process per target \
         and placement, so peak RSS is per configuration. **pinned**: the server under \
         `taskset -c {server_cpu}` (its runtime sees one CPU) and wrk under `taskset -c {wrk_cpu}`; \
         **unpinned**: neither pinned. Every response was 2xx, wrk saw no socket errors, and one \
         answer per server was checked to be a tool result, before and after the load.\n\n\
         | placement | target | connections | req/s | p50 ms | p99 ms | non-2xx | peak RSS MiB |\n\
         |---|---|---|---|---|---|---|---|\n{}\n\n\
         | placement | connections | now / today req/s | now / plain rmcp req/s | now / today p99 | now / plain p99 |\n\
         |---|---|---|---|---|---|\n{}\n\n{headline}\n",
        machine(),
        rows.join("\n"),
        ratios.join("\n")
    ))
}

/// The allocators of the "Allocators" section: name, and the `--features` its build adds.
const ALLOCATORS: [(&str, Option<&str>); 3] = [
    ("system", None),
    ("mimalloc", Some("bmm-runtime/mimalloc")),
    ("jemalloc", Some("bmm-runtime/jemalloc")),
];
/// Connections of the "Allocators" table.
const ALLOCATOR_CONCURRENCY: [u32; 2] = [16, 64];

/// The binaries of the "Allocators" section, from [`build_allocators`].
struct AllocatorBuilds {
    /// Allocator name and its copy of the `weather` server, in [`ALLOCATORS`] order.
    binaries: Vec<(&'static str, PathBuf)>,
    /// Set when the sources changed while the three were built (someone editing the work
    /// tree): they may not differ by their allocator alone.
    note: Option<String>,
}

/// Builds the work tree's `weather` server with each of [`ALLOCATORS`] ([`build_release`]
/// with the allocator's feature: the main target directory, only bmm-runtime, its
/// allocator crates and the binaries rebuilt), copies each to
/// `target/bench/alloc/weather-<allocator>` and checks that it links the allocator it is
/// named after and no other. Then builds the default again, so `target/release/weather`
/// (and the `plain_rmcp` example) are the system allocator's for the other sections and
/// for users, and checks that too.
fn build_allocators(root: &Path, out: &Path) -> Result<AllocatorBuilds, String> {
    let dir = out.join("alloc");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let release_weather = root.join("target/release/weather");
    let sources = sources_state(root);
    let mut binaries = Vec::new();
    for (name, features) in ALLOCATORS {
        build_release(features)?;
        let copy = dir.join(format!("weather-{name}"));
        std::fs::copy(&release_weather, &copy).map_err(|e| {
            format!(
                "cannot copy {} to {}: {e}",
                release_weather.display(),
                copy.display()
            )
        })?;
        let linked = linked_allocators(&copy)?;
        if linked != (name == "mimalloc", name == "jemalloc") {
            return Err(format!(
                "{} (built with {}) does not link {name} alone: mimalloc {}, jemalloc {}",
                copy.display(),
                features.map_or("the default features".to_owned(), |f| format!(
                    "--features {f}"
                )),
                linked.0,
                linked.1
            ));
        }
        binaries.push((name, copy));
    }
    let note = (sources_state(root) != sources).then(|| {
        "**Note:** the sources changed while the three binaries were built (the work tree was \
         being edited), so they may differ by more than their allocator."
            .to_owned()
    });
    if let Some(note) = &note {
        eprintln!("    {note}");
    }
    // The default build again (its artifacts are still there: only the binaries are
    // copied back into place).
    build_release(None)?;
    if linked_allocators(&release_weather)? != (false, false) {
        return Err(format!(
            "{} still links mimalloc or jemalloc after the default build",
            release_weather.display()
        ));
    }
    Ok(AllocatorBuilds { binaries, note })
}

/// Which optional allocators a binary links, (mimalloc, jemalloc): mimalloc's functions are
/// `mi_*` (`mi_malloc`), tikv-jemalloc-sys prefixes jemalloc's with `_rjem_`
/// (`_rjem_malloc`); both are in the symbol table (release builds are not stripped), and
/// each allocator's own messages (`mimalloc:`, `<jemalloc>:`) are in its code.
fn linked_allocators(binary: &Path) -> Result<(bool, bool), String> {
    let bytes =
        std::fs::read(binary).map_err(|e| format!("cannot read {}: {e}", binary.display()))?;
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    Ok((
        has(b"mi_malloc") || has(b"mimalloc: "),
        has(b"_rjem_") || has(b"<jemalloc>: "),
    ))
}

/// What `git diff` and `git status` say about the sources of the `weather` server, to tell
/// whether they changed between two moments.
fn sources_state(root: &Path) -> Vec<u8> {
    let paths = [
        "runtime",
        "middleware",
        "core",
        "netguard",
        "generated/weather",
        "Cargo.toml",
        "Cargo.lock",
    ];
    let mut state = Vec::new();
    for args in [
        &["diff", "HEAD", "--"][..],
        &["status", "--porcelain", "--"][..],
    ] {
        if let Ok(o) = Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .args(paths)
            .stderr(Stdio::null())
            .output()
        {
            state.extend(o.stdout);
        }
    }
    state
}

/// Resets a process's peak RSS (VmHWM) to its current RSS (`clear_refs`, Linux 4.0 and
/// later), so the next [`memory`] peak is the peak since. False when the kernel refuses.
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// One server of the "Allocators" section.
struct AllocatorInstance {
    name: &'static str,
    url: String,
    token: String,
    lua: PathBuf,
    log: String,
    server: Guard,
}

/// The "Allocators" section: the work tree's `weather` server built with the system
/// allocator, mimalloc and jemalloc ([`build_allocators`]), each in its own process under
/// `taskset -c` on one CPU (wrk on another), with auth on (its own resource and a valid
/// token from bmm-as), `--metrics-listen` and default logging, answering the 2026-07-28
/// stateless `tools/call word_stats` at 16 and 64 connections: req/s, p50, p99, peak RSS
/// (reset before each run) and idle RSS; then an interleaved headline (16 connections,
/// median of alternating runs) with the mimalloc / system and jemalloc / system ratios.
/// Every response must be 2xx with no socket error. Returns a Markdown section.
fn allocators(
    wrk: &str,
    builds: &AllocatorBuilds,
    release: &Path,
    out: &Path,
) -> Result<String, String> {
    let cpus = allowed_cpus();
    let cores = cpus.len();
    let [server_cpu, wrk_cpu, ..] = cpus[..] else {
        return Err(format!(
            "the allocator section pins the server and wrk to two CPUs, this process may use {cpus:?}"
        ));
    };
    let log = |name: &str| std::fs::File::create(out.join(name)).map_err(|e| e.to_string());
    let url = |port: u16| format!("http://127.0.0.1:{port}/mcp");
    let ports = builds
        .binaries
        .iter()
        .map(|_| free_port())
        .collect::<Result<Vec<_>, _>>()?;
    let as_port = free_port()?;
    let issuer = format!("http://127.0.0.1:{as_port}");
    let mut authorization_server = Command::new(release.join("bmm-as"));
    authorization_server.args(["--listen", &format!("127.0.0.1:{as_port}")]);
    for port in &ports {
        authorization_server.args(["--resource", &url(*port)]);
    }
    let _as = Guard(
        authorization_server
            .args(["--dev-user", "bench", "--data-dir"])
            .arg(out.join("alloc-as-data"))
            .stdout(Stdio::null())
            .stderr(log("alloc-bmm-as.log")?)
            .spawn()
            .map_err(|e| format!("cannot start bmm-as: {e}"))?,
    );
    let mut started = Vec::new();
    for ((name, binary), port) in builds.binaries.iter().zip(&ports) {
        let metrics_listen = format!("127.0.0.1:{}", free_port()?);
        let log_name = format!("alloc-{name}.log");
        let server = Guard(
            Command::new("taskset")
                .args(["-c", &server_cpu.to_string()])
                .arg(binary)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--issuer", &issuer, "--metrics-listen", &metrics_listen])
                .env("OPENWEATHER_API_KEY", "bench")
                // A generated server's default logging, as in the other sections.
                .env_remove("RUST_LOG")
                .stdout(Stdio::null())
                .stderr(log(&log_name)?)
                .spawn()
                .map_err(|e| format!("cannot start weather ({name}): {e}"))?,
        );
        started.push((*name, *port, log_name, server));
    }
    healthy(as_port, "bmm-as (allocator section)")?;
    let mut instances = Vec::new();
    for (name, port, log_name, server) in started {
        healthy(port, &format!("weather ({name})"))?;
        let token = token_and_warm_up(&issuer, &url(port), name)?;
        instances.push(AllocatorInstance {
            name,
            url: url(port),
            token,
            lua: out.join(format!("alloc-{name}.lua")),
            log: log_name,
            server,
        });
    }
    // One answer checked in full before any load, and the request wrk sends.
    for i in &instances {
        let (body, headers) = stateless_call(Some(&i.token));
        check_answer(&format!("weather ({})", i.name), &i.url, &body, &headers)?;
        script(&i.lua, &body, &headers)?;
    }
    let idle: Vec<f64> = instances
        .iter()
        .map(|i| memory(i.server.0.id()).1)
        .collect();
    // Each run's own peak: VmHWM reset to the current RSS before it.
    let mut peaks_reset = true;
    let mut measure = |i: &AllocatorInstance, c: u32| -> Result<(Measure, f64), String> {
        peaks_reset &= reset_peak(i.server.0.id());
        let m = clean(
            load_on(wrk, &i.url, &i.lua, c, Some(wrk_cpu))?,
            &format!("weather ({}, pinned, {c} connections)", i.name),
            &i.log,
        )?;
        Ok((m, memory(i.server.0.id()).0))
    };
    let mut rows = Vec::new();
    for i in &instances {
        for c in ALLOCATOR_CONCURRENCY {
            let (m, peak) = measure(i, c)?;
            eprintln!(
                "    allocators | {} | c={c}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, peak RSS {peak:.1} MiB",
                i.name, m.rps, m.p50_ms, m.p99_ms
            );
            rows.push(format!(
                "| {} | {c} | {:.0} | {:.2} | {:.2} | {peak:.1} |",
                i.name, m.rps, m.p50_ms, m.p99_ms
            ));
        }
    }
    // The headline, interleaved: the three take turns at 16 connections and the median of
    // each is kept, so a noisy neighbour slows all three rather than one.
    let mut turns: Vec<Vec<(Measure, f64)>> = instances.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (i, runs) in instances.iter().zip(&mut turns) {
            runs.push(measure(i, 16)?);
        }
    }
    // Still answering correctly after the load.
    for i in &instances {
        let (body, headers) = stateless_call(Some(&i.token));
        check_answer(
            &format!("weather ({}), after the load", i.name),
            &i.url,
            &body,
            &headers,
        )?;
    }
    let after: Vec<f64> = instances
        .iter()
        .map(|i| memory(i.server.0.id()).1)
        .collect();
    let median = |name: &str, f: fn(&(Measure, f64)) -> f64| {
        instances
            .iter()
            .zip(&turns)
            .find(|(i, _)| i.name == name)
            .map_or(f64::NAN, |(_, runs)| {
                let mut xs: Vec<f64> = runs.iter().map(f).collect();
                xs.sort_by(f64::total_cmp);
                xs[xs.len() / 2]
            })
    };
    let rps = |name: &str| median(name, |(m, _)| m.rps);
    let p99 = |name: &str| median(name, |(m, _)| m.p99_ms);
    let peak = |name: &str| median(name, |(_, peak)| *peak);
    let headline = format!(
        "Interleaved, 16 connections, median of {ROUNDS} alternating runs: \
         system {:.0} req/s (p99 {:.2} ms, peak RSS {:.1} MiB), mimalloc {:.0} (p99 {:.2} ms, {:.1} MiB), \
         jemalloc {:.0} (p99 {:.2} ms, {:.1} MiB); **mimalloc / system: req/s {:.3}, peak RSS {:.3}; \
         jemalloc / system: req/s {:.3}, peak RSS {:.3}**.",
        rps("system"),
        p99("system"),
        peak("system"),
        rps("mimalloc"),
        p99("mimalloc"),
        peak("mimalloc"),
        rps("jemalloc"),
        p99("jemalloc"),
        peak("jemalloc"),
        rps("mimalloc") / rps("system"),
        peak("mimalloc") / peak("system"),
        rps("jemalloc") / rps("system"),
        peak("jemalloc") / peak("system"),
    );
    eprintln!("    {headline}");
    let list = |values: &[f64]| {
        instances
            .iter()
            .zip(values)
            .map(|(i, v)| format!("{} {v:.1}", i.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let peak_text = if peaks_reset {
        "VmHWM reset to the current RSS before each run (`/proc/<pid>/clear_refs`), so it is that \
         run's peak"
    } else {
        "VmHWM, which the kernel would not reset here, so it is the peak since the server \
         started"
    };
    let note = builds
        .note
        .as_ref()
        .map_or_else(String::new, |n| format!("\n{n}\n"));
    Ok(format!(
        "## Allocators\n\n\
         The work tree's generated `weather` server built three times in release: with the system \
         allocator (glibc malloc), with `--features bmm-runtime/mimalloc` and with `--features \
         bmm-runtime/jemalloc` (copies in `target/bench/alloc/`, each checked to link the allocator \
         it is named after and no other). Each with auth on (its own resource and a valid token from \
         bmm-as), `--metrics-listen` and default logging, in its own process under \
         `taskset -c {server_cpu}` (its runtime sees one CPU), wrk under `taskset -c {wrk_cpu}`; \
         the 2026-07-28 stateless `tools/call word_stats`, {SECONDS} s per cell, {} ({cores} CPUs \
         usable). Peak RSS: {peak_text}. Every response was 2xx, wrk saw no socket errors, and one \
         answer per server was checked to be a tool result, before and after the load.\n\n\
         | allocator | connections | req/s | p50 ms | p99 ms | peak RSS MiB |\n\
         |---|---|---|---|---|---|\n{}\n\n\
         Idle RSS before the load (after start-up, the warm-up and one checked call), MiB: {}. \
         RSS after all runs, MiB: {}.\n\n{headline}\n{note}",
        machine(),
        rows.join("\n"),
        list(&idle),
        list(&after),
    ))
}

/// Samples the auth-on server with `perf` while wrk drives it at concurrency 16, and
/// writes the flat profile (self time by symbol) to `target/bench/profile.txt`.
fn perf_profile(wrk: &str, url: &str, lua: &Path, pid: u32, out: &Path) -> Result<(), String> {
    let data = out.join("perf.data");
    let mut perf = Command::new("perf")
        .args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-o"])
        .arg(&data)
        .args(["-p", &pid.to_string(), "--", "sleep", &SECONDS.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run perf (apt-get install linux-perf): {e}"))?;
    let m = load(wrk, url, lua, 16)?;
    let status = perf.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!(
            "perf record failed ({status}); is perf_event_paranoid too strict?"
        ));
    }
    let report = |args: &[&str]| -> Result<String, String> {
        let out = Command::new("perf")
            .args(["report", "--stdio", "-g", "none", "--percent-limit"])
            .args(args)
            .arg("-i")
            .arg(&data)
            .stderr(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run perf report: {e}"))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.trim_end_matches(|c: char| c == '-' || c.is_whitespace()))
            .collect::<Vec<_>>()
            .join("\n"))
    };
    let flat = report(&["1", "--no-children", "--sort", "dso,symbol"])?;
    let inclusive = report(&["4", "--children", "--sort", "symbol"])?;
    let profile = format!(
        "perf profile of the auth-on server, 2026-07-28 stateless `tools/call`, 16 connections \
         ({:.0} req/s while sampled).\n\nSelf time by symbol, >= 1 %:\n\n{flat}\n\n\
         Inclusive time (callees counted), >= 4 %:\n\n{inclusive}\n",
        m.rps
    );
    std::fs::write(out.join("profile.txt"), &profile).map_err(|e| e.to_string())?;
    println!("{profile}");
    Ok(())
}

/// An OTLP/HTTP endpoint that accepts every export and keeps only counts: what the traced
/// server pays is its own export work, not a collector's.
struct OtlpSink {
    port: u16,
    counts: std::sync::Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)>,
}

impl OtlpSink {
    fn start() -> Result<Self, String> {
        use std::io::{BufRead, BufReader, Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("OTLP sink: cannot listen: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let counts = std::sync::Arc::new((
            std::sync::atomic::AtomicU64::new(0),
            std::sync::atomic::AtomicU64::new(0),
        ));
        let shared = std::sync::Arc::clone(&counts);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counts = std::sync::Arc::clone(&shared);
                std::thread::spawn(move || {
                    let Ok(mut writer) = stream.try_clone() else {
                        return;
                    };
                    let mut reader = BufReader::new(stream);
                    loop {
                        let mut length = 0usize;
                        let mut line = String::new();
                        let mut started = false;
                        loop {
                            line.clear();
                            match reader.read_line(&mut line) {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                            let trimmed = line.trim_end();
                            if trimmed.is_empty() {
                                if started {
                                    break;
                                }
                                continue;
                            }
                            started = true;
                            if let Some((name, value)) = trimmed.split_once(':')
                                && name.eq_ignore_ascii_case("content-length")
                            {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; length.min(64 << 20)];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        counts.0.fetch_add(1, Ordering::Relaxed);
                        counts.1.fetch_add(length as u64, Ordering::Relaxed);
                        let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                        if writer.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Self { port, counts })
    }

    /// Export requests and body bytes received so far.
    fn received(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (
            self.counts.0.load(Ordering::Relaxed),
            self.counts.1.load(Ordering::Relaxed),
        )
    }
}

/// Concurrent refresh chains measured per backend.
const TOKEN_CONCURRENCY: [usize; 2] = [1, 16];
/// `--database-pool-size` of the PostgreSQL instance (bmm-as's default).
const TOKEN_POOL_SIZE: usize = 8;
/// Caller addresses the token requests are spread over (see [`token_endpoint`]).
const TOKEN_ADDRESSES: u32 = 2048;

/// `cargo xtask bench-token`: only the token-endpoint table (release bmm-as), in
/// `target/bench/token.md`.
pub(crate) fn bench_token(root: &Path) -> Result<(), String> {
    run(
        "build release bmm-as",
        cargo().args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "bmm-authorization-server",
            "--bin",
            "bmm-as",
        ]),
    )?;
    let out = root.join("target/bench-token");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let md = token_endpoint(&root.join("target/release"), &out)?;
    std::fs::write(out.join("token.md"), &md).map_err(|e| e.to_string())?;
    println!("{md}");
    Ok(())
}

/// Token-endpoint throughput, SQLite and PostgreSQL side by side: bmm-as (release, dev
/// mode) on each backend, one public client, and `c` refresh chains driven at once for
/// [`SECONDS`] each (every request is `grant_type=refresh_token` with the refresh token
/// the previous answer returned: a read, a row-locked use, an insert, a client update and
/// an audit event per request, plus signing the access token). PostgreSQL is a private
/// server ([`crate::postgres::TestPostgres`], durability off as in the tests: fsync is
/// off, so its numbers are an upper bound of the database's own cost) on this machine.
/// Requests come from 127.0.0.1, trusted as a proxy, with `X-Forwarded-For` spread over
/// 2,048 addresses of the benchmarking range 198.18.0.0/15 (a header only: no packet is
/// sent there), so the per-address token limit (600 a minute) does not cap what is
/// measured. Returns a Markdown section.
pub(crate) fn token_endpoint(release: &Path, out: &Path) -> Result<String, String> {
    let pg = crate::postgres::TestPostgres::start()?;
    pg.psql("CREATE DATABASE bmm_bench")?;
    let backends = [
        ("SQLite", None),
        ("PostgreSQL", Some(pg.url_of("bmm_bench"))),
    ];
    let resource = "http://127.0.0.1:4103/mcp";
    let mut rows = Vec::new();
    for (backend, url) in &backends {
        let port = free_port()?;
        let issuer = format!("http://127.0.0.1:{port}");
        let mut command = Command::new(release.join("bmm-as"));
        command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--resource", resource, "--dev-user", "bench"])
            .args(["--trusted-proxy", "127.0.0.1/32"])
            .args(["--database-pool-size", &TOKEN_POOL_SIZE.to_string()])
            .arg("--data-dir")
            .arg(out.join(format!("as-{backend}")));
        if let Some(url) = url {
            command.args(["--database-url", url]);
        }
        let log = std::fs::File::create(out.join(format!("bmm-as-{backend}.log")))
            .map_err(|e| e.to_string())?;
        let _as = Guard(
            command
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start bmm-as: {e}"))?,
        );
        let metadata = format!("{issuer}/.well-known/oauth-authorization-server");
        wait_for("bmm-as", Duration::from_secs(30), || {
            http("GET", &metadata, &[], None)
                .ok()
                .filter(|r| r.status == 200)
                .map(|_| String::new())
        })?;
        let client_id = register_public(&issuer)?;
        let max = TOKEN_CONCURRENCY.iter().copied().max().unwrap_or(1);
        let mut chains = (0..max)
            .map(|_| refresh_token_for(&issuer, &client_id, resource))
            .collect::<Result<Vec<_>, _>>()?;
        for connections in TOKEN_CONCURRENCY {
            let (measure, next) = refresh_load(&issuer, &client_id, &chains[..connections])?;
            chains.splice(..connections, next);
            let pool = if url.is_some() {
                TOKEN_POOL_SIZE.to_string()
            } else {
                "one connection".to_owned()
            };
            rows.push(format!(
                "| {backend} | {pool} | {connections} | {:.0} | {:.2} | {:.2} | {} |",
                measure.rps, measure.p50_ms, measure.p99_ms, measure.non_2xx
            ));
        }
    }
    drop(pg);
    Ok(format!(
        "## Token endpoint\n\n`POST /token` with `grant_type=refresh_token` (rotation: each answer's refresh \
         token is the next request's), release bmm-as, {SECONDS} s per cell, one new connection per \
         request; PostgreSQL {} on this machine with fsync off, pool of {TOKEN_POOL_SIZE} connections \
         (`--database-pool-size`); SQLite in WAL mode, one connection.\n\n\
         | backend | pool size | concurrent refresh chains | refreshes/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|\n{}\n",
        pg_version(),
        rows.join("\n")
    ))
}

fn pg_version() -> String {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .max()
        })
        .map_or_else(String::new, |v| v.to_string())
}

fn register_public(issuer: &str) -> Result<String, String> {
    let registration = json!({"client_name": "bmm token bench", "redirect_uris": ["http://127.0.0.1:33419/callback"], "token_endpoint_auth_method": "none"}).to_string();
    let r = http(
        "POST",
        &format!("{issuer}/register"),
        &[("Content-Type", "application/json")],
        Some(&registration),
    )?;
    let client: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    client["client_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("registration answered {}: {}", r.status, r.body))
}

/// A refresh token from the code flow (dev mode approves).
fn refresh_token_for(issuer: &str, client_id: &str, resource: &str) -> Result<String, String> {
    let redirect = "http://127.0.0.1:33419/callback";
    let verifier = random()?;
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let authorize = format!(
        "{issuer}/authorize?{}",
        form(&[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", redirect),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("state", "bench"),
            ("resource", resource),
        ])
    );
    let r = http("GET", &authorize, &[], None)?;
    let location = r.header("location").unwrap_or_default().to_owned();
    let code = location
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == "code")
        .map(|(_, v)| decode(v))
        .ok_or_else(|| format!("no code from /authorize ({}): {}", r.status, r.body))?;
    let body = form(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", redirect),
        ("code_verifier", &verifier),
        ("client_id", client_id),
        ("resource", resource),
    ]);
    let r = http(
        "POST",
        &format!("{issuer}/token"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        Some(&body),
    )?;
    let token: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    token["refresh_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no refresh token ({}): {}", r.status, r.body))
}

/// Drives one thread per chain for [`SECONDS`]; returns the measure and each chain's
/// newest refresh token.
fn refresh_load(
    issuer: &str,
    client_id: &str,
    chains: &[String],
) -> Result<(Measure, Vec<String>), String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    let counter = std::sync::Arc::new(AtomicU32::new(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(u64::from(SECONDS));
    let started = std::time::Instant::now();
    let workers: Vec<_> = chains
        .iter()
        .map(|token| {
            let (issuer, client_id, counter) =
                (issuer.to_owned(), client_id.to_owned(), counter.clone());
            let mut token = token.clone();
            std::thread::spawn(move || {
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                while std::time::Instant::now() < deadline {
                    let n = counter.fetch_add(1, Ordering::Relaxed) % TOKEN_ADDRESSES;
                    let caller = format!("198.18.{}.{}", n / 256, n % 256);
                    let body = form(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", &token),
                        ("client_id", &client_id),
                    ]);
                    let t = std::time::Instant::now();
                    let r = http(
                        "POST",
                        &format!("{issuer}/token"),
                        &[
                            ("Content-Type", "application/x-www-form-urlencoded"),
                            ("X-Forwarded-For", &caller),
                        ],
                        Some(&body),
                    );
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    let next = r.ok().filter(|r| r.status == 200).and_then(|r| {
                        serde_json::from_str::<Value>(&r.body).ok()?["refresh_token"]
                            .as_str()
                            .map(str::to_owned)
                    });
                    match next {
                        Some(next) => token = next,
                        None => {
                            // The chain is broken (its token is used or revoked): stop it.
                            errors += 1;
                            break;
                        }
                    }
                }
                (latencies, errors, token)
            })
        })
        .collect();
    let (mut all, mut errors, mut tokens) = (Vec::new(), 0, Vec::new());
    for worker in workers {
        let (latencies, e, token) = worker
            .join()
            .map_err(|_| "a token bench thread panicked".to_owned())?;
        all.extend(latencies);
        errors += e;
        tokens.push(token);
    }
    let elapsed = started.elapsed().as_secs_f64();
    if errors > 0 {
        return Err(format!(
            "{errors} refresh chains broke during the token bench (see target/bench*/bmm-as-*.log)"
        ));
    }
    all.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok((
        Measure {
            rps: all.len() as f64 / elapsed,
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
            non_2xx: errors,
            socket_errors: SocketErrors::default(),
        },
        tokens,
    ))
}
