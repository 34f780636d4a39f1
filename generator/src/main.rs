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
    /// Write a commented starter spec to `<name>.yaml` (or `--out`), and the JSON Schema of
    /// the spec format next to it (`bmm-spec.schema.json`) for editor completion.
    New {
        /// The server name: lowercase letters, digits and `-`, starting with a letter.
        name: String,
        /// Where to write it (default `<name>.yaml`); an existing file is never replaced.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the JSON Schema of the spec format (for editors: a YAML language server reads
    /// it through the `# yaml-language-server: $schema=...` modeline of a spec).
    Schema,
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
        /// How the crate depends on bmm-runtime: `workspace`, `path:<dir>` (relative to the
        /// crate) or `version:<v>`. Default: `workspace` inside the bmm workspace this bmm
        /// was built in, elsewhere a path to that workspace's runtime.
        #[arg(long)]
        runtime: Option<String>,
    },
    /// Write a bmm tool spec for an OpenAPI 3.0 or 3.1 document (JSON or YAML), with a
    /// report of what was imported and skipped.
    ImportOpenapi {
        /// The OpenAPI document.
        file: PathBuf,
        /// The spec to write (rewritten on every import).
        #[arg(long)]
        out: PathBuf,
        /// Keep operations with this tag (repeatable).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Keep operations whose path matches this glob (`*` within a segment, `**` across).
        #[arg(long = "path", value_name = "GLOB")]
        paths: Vec<String>,
        /// Keep operations with this HTTP method (repeatable).
        #[arg(long = "method", value_name = "METHOD")]
        methods: Vec<String>,
        /// Keep the operation with this operationId (repeatable).
        #[arg(long = "operation-id", value_name = "ID")]
        operation_ids: Vec<String>,
        /// Longest tool name (room for the prefixes clients add).
        #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u16).range(16..=128))]
        max_name_len: u16,
        /// Allow `$ref`s to documents on this host (repeatable); others are refused.
        #[arg(long = "allow-remote-ref-host", value_name = "HOST")]
        allow_remote_ref_hosts: Vec<String>,
        /// Warn when the estimated `tools/list` size passes this many tokens.
        #[arg(long, default_value_t = 25_000)]
        token_budget: usize,
        /// The server name (default: from the document's title).
        #[arg(long)]
        name: Option<String>,
        /// The upstream base URL (default: the document's first server).
        #[arg(long)]
        base_url: Option<String>,
        /// Overrides kept across re-imports (default: `<out>` with `.overrides.yaml`).
        #[arg(long)]
        overrides: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { spec } => check(&spec),
        Command::New { name, out } => new(&name, out),
        Command::Schema => {
            print!("{}", spec::json_schema());
            ExitCode::SUCCESS
        }
        Command::ImportOpenapi {
            file,
            out,
            tags,
            paths,
            methods,
            operation_ids,
            max_name_len,
            allow_remote_ref_hosts,
            token_budget,
            name,
            base_url,
            overrides,
        } => {
            let overrides = overrides.unwrap_or_else(|| overrides_path(&out));
            let options = bmm_generator::openapi::Options {
                tags,
                paths,
                methods,
                operation_ids,
                max_name_len: usize::from(max_name_len),
                allow_remote_ref_hosts,
                token_budget,
                server_name: name,
                base_url,
                overrides: None,
                source_name: file.file_name().map_or_else(
                    || file.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                ),
            };
            import_openapi(&file, &out, &overrides, options)
        }
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
            generate(&spec, &out, check, runtime.as_deref())
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
            write_schema_next_to(&path)
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

/// Writes (or refreshes) the spec format's JSON Schema next to a spec, where the modeline of
/// the starter spec points. The file is bmm's: a stale copy is replaced.
fn write_schema_next_to(spec_path: &std::path::Path) -> ExitCode {
    let schema_path = spec_path.with_file_name(spec::SCHEMA_FILE);
    let schema = spec::json_schema();
    if std::fs::read_to_string(&schema_path).is_ok_and(|old| old == schema) {
        return ExitCode::SUCCESS;
    }
    match std::fs::write(&schema_path, schema) {
        Ok(()) => {
            println!(
                "wrote {}: the spec format's JSON Schema; with VS Code's YAML extension (or any YAML language server) the spec's first line makes the editor complete and check it",
                schema_path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "error: cannot write {}: {e} (the spec was written; `bmm schema > {}` writes the schema)",
                schema_path.display(),
                schema_path.display()
            );
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

fn generate(
    spec: &std::path::Path,
    out: &std::path::Path,
    check: bool,
    runtime: Option<&str>,
) -> ExitCode {
    let runtime = match runtime.map(|r| (r, r.split_once(':'))) {
        None => match bmm_generator::RuntimeDependency::for_output(out) {
            Ok(dependency) => dependency,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        Some(("workspace", None)) => bmm_generator::RuntimeDependency::Workspace,
        Some((_, Some(("path", p)))) => bmm_generator::RuntimeDependency::Path(p.to_owned()),
        Some((_, Some(("version", v)))) => bmm_generator::RuntimeDependency::Version(v.to_owned()),
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
            for note in &outcome.notes {
                eprintln!("note: {note}");
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

/// `<out>` with its extension replaced by `.overrides.yaml`.
fn overrides_path(out: &std::path::Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(|| "spec".to_owned(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}.overrides.yaml"))
}

fn import_openapi(
    file: &std::path::Path,
    out: &std::path::Path,
    overrides: &std::path::Path,
    mut options: bmm_generator::openapi::Options,
) -> ExitCode {
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    if size > bmm_generator::openapi::MAX_DOCUMENT_BYTES as u64 {
        eprintln!(
            "error: {}: {} MiB is over the {} MiB limit",
            file.display(),
            size >> 20,
            bmm_generator::openapi::MAX_DOCUMENT_BYTES >> 20
        );
        return ExitCode::from(1);
    }
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return ExitCode::from(1);
        }
    };
    match std::fs::read_to_string(overrides) {
        Ok(o) => {
            println!("applying overrides from {}", overrides.display());
            options.overrides = Some(o);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", overrides.display());
            return ExitCode::from(1);
        }
    }
    let imported = match bmm_generator::openapi::import(&text, &options) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return ExitCode::from(1);
        }
    };
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty())
        && let Err(e) = std::fs::create_dir_all(parent)
    {
        eprintln!("error: cannot create {}: {e}", parent.display());
        return ExitCode::from(1);
    }
    if let Err(e) = std::fs::write(out, &imported.spec) {
        eprintln!("error: cannot write {}: {e}", out.display());
        return ExitCode::from(1);
    }
    println!("wrote {}", out.display());
    print!("{}", imported.report);
    println!(
        "next: review {}, keep your changes in {}, then `bmm generate {} --out <dir>`",
        out.display(),
        overrides.display(),
        out.display()
    );
    ExitCode::SUCCESS
}
