//! A private PostgreSQL server for bmm-as's tests and bench, and the second pass of the
//! bmm-as test suite against it.
//!
//! - Debian's `postgresql` package is installed with apt-get when no
//!   `/usr/lib/postgresql/*/bin/initdb` exists (CI runs as root on Debian 12: PostgreSQL 15).
//! - `initdb` runs as the `postgres` user (runuser) when we are root, since PostgreSQL
//!   refuses to run as root, and as ourselves otherwise, into a fresh directory under the
//!   temp dir; trust authentication, listening on 127.0.0.1 only (and a Unix socket in that
//!   directory), on a free port; durability off (`fsync=off`): the data is thrown away.
//! - [`TestPostgres`] stops the server (`pg_ctl stop -m immediate`) and deletes the
//!   directory when dropped, so it is torn down when the tests fail too.
//! - [`as_suite`] runs the test binaries of bmm-authorization-server again, already built
//!   by the workspace test run, with `BMM_AS_TEST_DATABASE_URL` set: every test AS then
//!   gets its own database on this server (tests/common); and bmm-runtime's token vault
//!   tests with `BMM_VAULT_TEST_DATABASE_URL` (the vault's PostgreSQL backend).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{cargo, run};

/// A running private PostgreSQL server; stopped and deleted when dropped.
#[derive(Debug)]
pub(crate) struct TestPostgres {
    bin: PathBuf,
    dir: PathBuf,
    as_postgres_user: bool,
    port: u16,
}

impl TestPostgres {
    /// Installs PostgreSQL if needed, then initialises and starts a private server.
    pub(crate) fn start() -> Result<Self, String> {
        let bin = bin_dir()?;
        let as_postgres_user = is_root();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // The postgres user must reach the directory: a root's TMPDIR may be private.
        let base = if as_postgres_user {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("bmm-pg-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // From here on, dropping `server` tears down whatever was made.
        let mut server = Self {
            bin,
            dir,
            as_postgres_user,
            port: 0,
        };
        if as_postgres_user {
            run(
                "chown the PostgreSQL directory to postgres",
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&server.dir),
            )?;
        }
        let data = server.data();
        let mut initdb = server.command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
            ])
            .stdout(Stdio::null());
        run("initdb (private PostgreSQL for the tests)", &mut initdb)?;
        // A free port can be taken by someone else before the server binds it: retry.
        let mut last = String::new();
        for _ in 0..3 {
            server.port = free_port()?;
            let options = format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400 -c wal_level=minimal -c max_wal_senders=0 -c max_wal_size=64MB -c min_wal_size=32MB",
                server.port,
                server.dir.display()
            );
            let mut pg_ctl = server.command("pg_ctl");
            pg_ctl
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(server.log())
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .stdout(Stdio::null());
            match run(
                &format!("pg_ctl start on 127.0.0.1:{}", server.port),
                &mut pg_ctl,
            ) {
                Ok(()) => return Ok(server),
                Err(e) => last = e,
            }
        }
        let log = std::fs::read_to_string(server.log()).unwrap_or_default();
        Err(format!("{last}\n--- PostgreSQL log ---\n{log}"))
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`: the superuser on the admin database
    /// (tests create their own databases from it).
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The URL of the database `database` on this server (made with CREATE DATABASE).
    pub(crate) fn url_of(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs `psql -c sql` against the admin database.
    pub(crate) fn psql(&self, sql: &str) -> Result<(), String> {
        let mut psql = self.command("psql");
        psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url())
            .args(["-c", sql])
            .stdout(Stdio::null());
        run(&format!("psql -c {sql}"), &mut psql)
    }

    /// Drops every database the tests made (`bmm_t_*`, tests/common), closing any
    /// connection left to them.
    pub(crate) fn drop_test_databases(&self) -> Result<(), String> {
        // DROP DATABASE cannot run inside a function or transaction: psql's \gexec runs
        // each generated statement on its own.
        let script = "SELECT format('DROP DATABASE %I WITH (FORCE)', datname) \
                      FROM pg_database WHERE datname LIKE 'bmm\\_t\\_%' \\gexec\n";
        let mut psql = self.command("psql");
        psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url())
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = psql.spawn().map_err(|e| format!("cannot run psql: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write as _;
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| format!("psql stdin: {e}"))?;
        }
        let status = child.wait().map_err(|e| format!("psql: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("dropping the test databases failed ({status})"))
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// A PostgreSQL binary, run as the `postgres` user when we are root.
    fn command(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `/usr/lib/postgresql/<newest>/bin`, installing Debian's postgresql when there is none.
fn bin_dir() -> Result<PathBuf, String> {
    if let Some(bin) = installed_bin_dir() {
        return Ok(bin);
    }
    run(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    run(
        "apt-get install postgresql",
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "postgresql",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    installed_bin_dir().ok_or_else(|| {
        "no /usr/lib/postgresql/*/bin/initdb even after apt-get install postgresql".to_owned()
    })
}

fn installed_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Bytes under `dir` (what we can read of it; the data dir is the postgres user's).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => dir_size(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// The test binaries of bmm-authorization-server (unit and integration), as cargo built
/// them: with `workspace`, the workspace build `cargo test --workspace` made (nothing is
/// rebuilt); otherwise the package alone.
fn as_test_binaries(workspace: bool) -> Result<(Vec<PathBuf>, Option<PathBuf>), String> {
    let mut command = cargo();
    command.args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    if workspace {
        command.arg("--workspace");
    } else {
        command.args(["-p", "bmm-authorization-server", "-p", "bmm-runtime"]);
    }
    eprintln!("==> building the bmm-as test binaries");
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cargo test --no-run: {e}"))?;
    if !output.status.success() {
        return Err(format!("cargo test --no-run failed ({})", output.status));
    }
    let mut binaries = Vec::new();
    let mut runtime_lib = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let package = message["package_id"].as_str().unwrap_or_default();
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        if package.contains("#bmm-authorization-server@") {
            binaries.push(PathBuf::from(executable));
        } else if package.contains("#bmm-runtime@")
            && message["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "lib"))
        {
            runtime_lib = Some(PathBuf::from(executable));
        }
    }
    if binaries.is_empty() {
        return Err("cargo built no bmm-authorization-server test binary".to_owned());
    }
    binaries.sort();
    binaries.dedup();
    Ok((binaries, runtime_lib))
}

/// The whole bmm-as test suite again, on a private PostgreSQL server (torn down after).
pub(crate) fn as_suite(root: &Path, workspace: bool) -> Result<(), String> {
    let (binaries, runtime_lib) = as_test_binaries(workspace)?;
    let server = TestPostgres::start()?;
    let url = server.url();
    // The runtime's token vault shares bmm-as's PostgreSQL backend: its tests run on this
    // server too (they return at once without `BMM_VAULT_TEST_DATABASE_URL`).
    let runtime_lib = runtime_lib.ok_or("cargo built no bmm-runtime library test binary")?;
    run(
        "bmm-runtime token vault tests on PostgreSQL",
        Command::new(&runtime_lib)
            .args(["upstream_auth::vault", "--test-threads", "1"])
            .current_dir(root.join("runtime"))
            .env("CARGO_MANIFEST_DIR", root.join("runtime").as_os_str())
            .env("BMM_VAULT_TEST_DATABASE_URL", &url),
    )?;
    for binary in &binaries {
        let name = binary
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        run(
            &format!("bmm-as tests on PostgreSQL: {name}"),
            Command::new(binary)
                .current_dir(root.join("authorization-server"))
                .env(
                    "CARGO_MANIFEST_DIR",
                    root.join("authorization-server").as_os_str(),
                )
                .env("BMM_AS_TEST_DATABASE_URL", &url),
        )?;
        // Each test made its own database (~8 MB): drop them before the next binary, so
        // the suite's disk use stays that of one binary, not of all of them (a CI run
        // once filled its disk here).
        eprintln!(
            "    PostgreSQL data after {name}: {} MB",
            dir_size(&server.dir) / 1_000_000
        );
        server.drop_test_databases()?;
    }
    drop(server);
    Ok(())
}
