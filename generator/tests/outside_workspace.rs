//! `bmm generate --out <dir>` outside this workspace writes a crate that builds there: its
//! bmm-runtime dependency is a path to this workspace's runtime, not `workspace = true`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// Generates `specs/notes.yaml` (Rust tools, state, prompts) into a temporary directory
/// with the default runtime dependency and checks the crate there, as a user would, with
/// `cargo check --offline`. The shared target directory, this workspace's lock file and
/// its dev profile (passed as `--config`, the generated files stay as written) let Cargo
/// reuse the dependencies it has already compiled.
#[test]
fn a_crate_generated_outside_the_workspace_builds_there() {
    let root = root();
    let dir = tempfile::tempdir().unwrap();
    assert!(
        !dir.path().canonicalize().unwrap().starts_with(&root),
        "the temporary directory must be outside the workspace"
    );
    let out = dir.path().join("my-server");
    let bmm = env!("CARGO_BIN_EXE_bmm");
    let generated = Command::new(bmm)
        .arg("generate")
        .arg(root.join("specs/notes.yaml"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let manifest = std::fs::read_to_string(out.join("Cargo.toml")).unwrap();
    assert!(
        !manifest
            .lines()
            .any(|l| l.starts_with("bmm-runtime") && l.contains("workspace")),
        "{manifest}"
    );
    let dependency = manifest
        .lines()
        .find(|l| l.starts_with("bmm-runtime = { path = \"../"))
        .unwrap_or_else(|| panic!("no relative path dependency: {manifest}"));
    let path = dependency.split('"').nth(1).unwrap();
    assert_eq!(
        out.join(path).canonicalize().unwrap(),
        root.join("runtime"),
        "{dependency}"
    );
    for file in ["src/state.rs", "src/tools/mod.rs", "src/tools/add_note.rs"] {
        assert!(out.join(file).is_file(), "{file} missing");
    }

    std::fs::copy(root.join("Cargo.lock"), out.join("Cargo.lock")).unwrap();
    let started = std::time::Instant::now();
    let check = Command::new(env!("CARGO"))
        .args(["check", "--offline", "--message-format=short"])
        .args(["--config", "profile.dev.debug=\"line-tables-only\""])
        .args(["--config", "profile.dev.package.\"*\".opt-level=1"])
        .env("CARGO_TARGET_DIR", root.join("target"))
        .current_dir(&out)
        .output()
        .unwrap();
    println!("cargo check took {:?}", started.elapsed());
    assert!(
        check.status.success(),
        "the crate does not build outside the workspace: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}
