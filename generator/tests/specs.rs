//! Spec checking: every bad spec under `tests/bad_specs/` gives its documented error at its
//! documented line, never a panic; every example under `specs/` passes; hostile inputs are
//! refused quickly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;
use std::process::Command;

use bmm_generator::spec::{self, Severity};

fn header<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
}

#[test]
fn bad_specs_each_give_their_documented_error_and_line() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_specs");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        count += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = header(&text, "expect")
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()));
        let name = path.file_name().unwrap().to_str().unwrap();
        let diagnostics = spec::check_text(name, &text);
        let errors: Vec<_> = diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        assert!(!errors.is_empty(), "{name}: no error reported");
        let hit = errors.iter().find(|d| d.message.contains(expect));
        let hit = hit.unwrap_or_else(|| {
            panic!("{name}: expected an error containing {expect:?}, got {errors:#?}")
        });
        assert!(hit.line > 0, "{name}: the error has no line: {hit}");
        if let Some(line) = header(&text, "line") {
            assert_eq!(hit.line, line.parse::<u64>().unwrap(), "{name}: {hit}");
        }
        assert!(
            hit.help.is_some() || expect.is_empty() || hit.message.contains("expected"),
            "{name}: no help for {hit}"
        );
    }
    assert!(count >= 25, "only {count} bad specs");
}

#[test]
fn example_specs_pass_without_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "json")
        ) {
            continue;
        }
        count += 1;
        let (_, findings) = spec::check_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let errors: Vec<_> = findings.iter().filter(|d| d.is_error()).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
    }
    assert!(count >= 1);
}

#[test]
fn json_specs_are_read_like_yaml() {
    let json = r#"{"server": {"name": "demo", "version": "0.1.0"}, "tools": [{"name": "t", "description": "d", "input": {"type": "object"}, "run": {"rust": {"fn": "t"}}}]}"#;
    assert!(spec::check_text("demo.json", json).is_empty());
    let bad = r#"{"server": {"name": "demo", "version": "0.1.0", "nmae": 1}}"#;
    let d = spec::check_text("demo.json", bad);
    assert!(d[0].message.contains("unknown field `nmae`"), "{d:?}");
}

#[test]
fn long_tool_names_warn_past_64_characters() {
    let text = format!(
        "server: {{ name: demo, version: 0.1.0 }}\ntools:\n  - name: {}\n    description: d\n    input: {{ type: object }}\n    run: {{ rust: {{ fn: t }} }}\n",
        "a".repeat(70)
    );
    let d = spec::check_text("long.yaml", &text);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].severity, Severity::Warning);
    assert_eq!(d[0].line, 3);
}

#[test]
fn hostile_specs_are_refused_without_hanging_or_panicking() {
    let huge = format!(
        "server: {{ name: demo, version: 0.1.0 }}\n# {}\n",
        "x".repeat(spec::MAX_SPEC_BYTES)
    );
    assert!(
        spec::check_text("huge.yaml", &huge)[0]
            .message
            .contains("larger than")
    );
    let laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
    assert!(!spec::check_text("laughs.yaml", laughs).is_empty());
    let deep = format!(
        "server: {{ name: demo, version: 0.1.0 }}\ntools:\n  - name: t\n    description: d\n    input: {}{}\n    run: {{ rust: {{ fn: t }} }}\n",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    assert!(!spec::check_text("deep.yaml", &deep).is_empty());
    for garbage in [
        "",
        "---",
        "\u{0}\u{1}",
        "[]",
        "42",
        "server: 1",
        "tools: {}",
    ] {
        assert!(
            !spec::check_text("garbage.yaml", garbage).is_empty(),
            "{garbage:?}"
        );
    }
}

#[test]
fn bmm_check_prints_file_line_and_column_and_exits_1_on_errors() {
    let bad =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_specs/undeclared-upstream.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_bmm"))
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("undeclared-upstream.yaml:10:25"),
        "{stderr}"
    );
    assert!(stderr.contains("help:"), "{stderr}");
    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/weather.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_bmm"))
        .arg("check")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = Command::new(env!("CARGO_BIN_EXE_bmm"))
        .args(["check", "/nonexistent/spec.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
}
