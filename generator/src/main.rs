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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { spec } => check(&spec),
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
