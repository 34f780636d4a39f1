//! `bmm`: the bmm command line.

use std::path::PathBuf;
use std::process::ExitCode;

use bmm_generator::spec;
use clap::{Parser, Subcommand};

/// bmm: generate secure MCP servers from tool specs.
#[derive(Debug, Parser)]
#[command(name = "bmm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a spec: every error and warning with file, line and column.
    Check {
        /// The spec file (YAML or JSON).
        spec: PathBuf,
    },
    /// Write a commented starter spec to `<name>.yaml` (or `--out`).
    New {
        /// The server name: lowercase letters, digits and `-`, starting with a letter.
        name: String,
        /// Where to write it (default `<name>.yaml`); an existing file is never replaced.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Generate (or check) the server crate for a spec.
    Generate {
        /// The spec file (YAML or JSON).
        spec: PathBuf,
        /// The crate directory to write.
        #[arg(long, conflicts_with = "into", required_unless_present = "into")]
        out: Option<PathBuf>,
        /// Write the crate to `<DIR>/<server name>` instead.
        #[arg(long, value_name = "DIR")]
        into: Option<PathBuf>,
        /// Change nothing; fail when the generated files are not up to date.
        #[arg(long)]
        check: bool,
        /// How the crate depends on bmm-runtime: `workspace`, `path:<dir>` or `version:<v>`.
        #[arg(long, default_value = "workspace")]
        runtime: String,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { spec } => check(&spec),
        Command::New { name, out } => new(&name, out),
        Command::Generate {
            spec,
            out,
            into,
            check,
            runtime,
        } => {
            // clap guarantees one of --out and --into.
            let out = match (out, into) {
                (Some(out), _) => out,
                (None, into) => match spec::load(&spec) {
                    Ok(parsed) => into.unwrap_or_default().join(&parsed.server.name.value),
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::from(1);
                    }
                },
            };
            generate(&spec, &out, check, &runtime)
        }
    }
}

fn new(name: &str, out: Option<PathBuf>) -> ExitCode {
    let path = out.unwrap_or_else(|| PathBuf::from(format!("{name}.yaml")));
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let text = match bmm_generator::starter_spec(name, &file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    match written {
        Ok(()) => {
            println!(
                "wrote {}: edit it, then `bmm check {}` and `bmm generate {} --out {name}`",
                path.display(),
                path.display(),
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!(
                "error: {} already exists; bmm new never replaces a file (choose another --out)",
                path.display()
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", path.display());
            ExitCode::from(1)
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match spec::check_file(path) {
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(1)
        }
        Ok((spec, findings)) => {
            for f in &findings {
                eprintln!("{f}\n");
            }
            let errors = findings.iter().filter(|f| f.is_error()).count();
            let warnings = findings.len() - errors;
            if errors > 0 {
                eprintln!(
                    "{}: {errors} error(s), {warnings} warning(s)",
                    path.display()
                );
                ExitCode::from(1)
            } else {
                println!(
                    "{}: ok ({} tools, {} resources, {} prompts; {warnings} warning(s))",
                    path.display(),
                    spec.tools.len(),
                    spec.resources.len(),
                    spec.prompts.len()
                );
                ExitCode::SUCCESS
            }
        }
    }
}

fn generate(spec: &std::path::Path, out: &std::path::Path, check: bool, runtime: &str) -> ExitCode {
    let runtime = match runtime.split_once(':') {
        None if runtime == "workspace" => bmm_generator::RuntimeDependency::Workspace,
        Some(("path", p)) => bmm_generator::RuntimeDependency::Path(p.to_owned()),
        Some(("version", v)) => bmm_generator::RuntimeDependency::Version(v.to_owned()),
        _ => {
            eprintln!("error: --runtime must be `workspace`, `path:<dir>` or `version:<v>`");
            return ExitCode::from(2);
        }
    };
    match bmm_generator::generate(spec, out, &runtime, check) {
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
        Ok(outcome) => {
            for w in &outcome.warnings {
                eprintln!("{w}\n");
            }
            if check {
                for p in outcome.changed.iter().chain(&outcome.created) {
                    eprintln!("stale: {}", p.display());
                }
                if outcome.changed.is_empty() && outcome.created.is_empty() {
                    println!("{}: up to date", out.display());
                    ExitCode::SUCCESS
                } else {
                    eprintln!(
                        "{}: out of date; run `bmm generate` (or `cargo xtask generate`)",
                        out.display()
                    );
                    ExitCode::from(1)
                }
            } else {
                for p in &outcome.changed {
                    println!("wrote   {}", p.display());
                }
                for p in &outcome.created {
                    println!("created {} (yours from now on)", p.display());
                }
                println!(
                    "{}: {} written, {} created, {} unchanged",
                    out.display(),
                    outcome.changed.len(),
                    outcome.created.len(),
                    outcome.unchanged
                );
                ExitCode::SUCCESS
            }
        }
    }
}
