//! Nested schema types reach the user's code: a spec edit deep inside a tool's result
//! schema is a compile error in the user's file, not a wrong JSON shape at run time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Copies `from` into `to`, directories included.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Generates `spec` into `out` (a path dependency on this repository's runtime) and makes
/// the crate its own workspace with this workspace's dev profile for dependencies, so its
/// check reuses the artifacts already in the shared target dir.
fn generate(spec: &Path, out: &Path) {
    let runtime =
        bmm_generator::RuntimeDependency::Path(root().join("runtime").display().to_string());
    bmm_generator::generate(spec, out, &runtime, false).unwrap();
    let manifest = out.join("Cargo.toml");
    let mut cargo_toml = std::fs::read_to_string(&manifest).unwrap();
    if !cargo_toml.contains("[workspace]") {
        cargo_toml.push_str("\n[workspace]\n");
    }
    if !cargo_toml.contains("[profile.dev.package.\"*\"]") {
        cargo_toml.push_str("\n[profile.dev.package.\"*\"]\nopt-level = 1\n");
    }
    std::fs::write(manifest, cargo_toml).unwrap();
}

/// Every `.rs` file under `dir`, appended to `out`.
fn read_all(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_all(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

fn check(dir: &Path) -> Output {
    Command::new(env!("CARGO"))
        .args(["check", "--offline", "--quiet", "--message-format=short"])
        .env("CARGO_TARGET_DIR", root().join("target"))
        .current_dir(dir)
        .output()
        .unwrap()
}

/// `list_notes` builds `ListNotesOutputNotesItem { id, title }` with an `i64` id. Changing
/// the type of `id` inside the result's array items makes `cargo check` fail in
/// `src/tools/list_notes.rs`, the user's file, which regeneration left untouched.
#[test]
fn changing_a_nested_field_type_breaks_the_users_file_at_compile_time() {
    let root = root();
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("notes.yaml");
    let spec = std::fs::read_to_string(root.join("specs/notes.yaml")).unwrap();
    std::fs::write(&spec_path, &spec).unwrap();
    let out = dir.path().join("notes");
    // The user's files as checked in; generation rewrites only its own.
    copy_dir(&root.join("generated/notes/src"), &out.join("src"));
    generate(&spec_path, &out);
    std::fs::copy(root.join("Cargo.lock"), out.join("Cargo.lock")).unwrap();
    let before = check(&out);
    assert!(
        before.status.success(),
        "the copy must build before the edit: {}",
        String::from_utf8_lossy(&before.stderr)
    );

    let user_file = out.join("src/tools/list_notes.rs");
    let user_text = std::fs::read(&user_file).unwrap();
    let nested = "          items:\n            type: object\n            properties:\n              id: { type: integer }";
    assert!(
        spec.contains(nested),
        "specs/notes.yaml no longer has the nested id this test edits"
    );
    let edited = spec.replace(
        nested,
        "          items:\n            type: object\n            properties:\n              id: { type: string }",
    );
    std::fs::write(&spec_path, edited).unwrap();
    generate(&spec_path, &out);
    assert_eq!(
        std::fs::read(&user_file).unwrap(),
        user_text,
        "user file rewritten"
    );
    let mut sources = String::new();
    read_all(&out.join("src"), &mut sources);
    let item = sources
        .split("pub struct ListNotesOutputNotesItem {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .unwrap_or_default();
    assert!(
        item.contains("pub id: String"),
        "the nested field's type did not change: {item}"
    );

    let after = check(&out);
    let stderr = String::from_utf8_lossy(&after.stderr);
    assert!(
        !after.status.success(),
        "the user function compiled against the changed nested type"
    );
    assert!(
        stderr.contains("tools/list_notes.rs") && stderr.contains("mismatched types"),
        "the error must point at the user's file: {stderr}"
    );
}

/// A tool whose schemas use every shape the type mapping knows. Its crate (with a user
/// file that builds and matches the nested types) passes clippy with warnings denied.
const SHAPES: &str = r##"spec_version: 1
server:
  name: shapes
  version: 0.1.0
tools:
  - name: shapes
    description: Every schema shape the type mapping knows.
    input:
      type: object
      $defs:
        node:
          type: object
          description: A tree node.
          properties:
            name: { type: string }
            children: { type: array, items: { $ref: "#/$defs/node" } }
            parent: { $ref: "#/$defs/node" }
          required: [name]
      properties:
        type: { type: string, enum: [GET, in_progress, a-b], description: "*/ fn evil() {} /*" }
        tree: { $ref: "#/$defs/node" }
        shape:
          oneOf:
            - { type: object, properties: { kind: { const: circle }, r: { type: number } }, required: [kind, r] }
            - { type: object, properties: { kind: { const: square }, side: { type: number } }, required: [kind] }
        either: { anyOf: [{ type: integer }, { type: string }] }
        maybe: { type: [string, "null"] }
        labels: { type: object, additionalProperties: { type: integer } }
        open: { type: object }
        self: { type: string }
        gen: { type: string }
        meta:
          title: String
          type: object
          properties: { note: { type: string } }
          additionalProperties: { type: boolean }
      required: [type]
    output:
      type: object
      properties:
        items:
          type: array
          items:
            type: object
            properties:
              id: { type: integer }
              tags: { type: array, items: { type: string, enum: [red, blue] } }
            required: [id]
      required: [items]
    run: { rust: { fn: shapes } }
"##;

const SHAPES_USER_FILE: &str = r##"//! The user's file, using the nested types.

use bmm_runtime::{ToolContext, ToolError};

use crate::generated::types::{
    ShapesInput, ShapesInputEither, ShapesInputNode, ShapesInputShape, ShapesInputType,
    ShapesOutput, ShapesOutputItemsItem, ShapesOutputItemsItemTagsItem, String2,
};

fn depth(node: &ShapesInputNode) -> usize {
    1 + node.children.iter().flatten().map(depth).max().unwrap_or(0)
        + node.parent.as_deref().map_or(0, depth)
}

/// Builds and reads every nested type.
pub(crate) async fn shapes(_ctx: &ToolContext, input: ShapesInput) -> Result<ShapesOutput, ToolError> {
    let kind = match input.r#type {
        ShapesInputType::Get => 1,
        ShapesInputType::InProgress => 2,
        ShapesInputType::Ab => 3,
    };
    let size = match input.shape {
        Some(ShapesInputShape::Circle(c)) => c.r,
        Some(ShapesInputShape::Square(s)) => s.side.unwrap_or_default(),
        None => 0.0,
    };
    let either = match input.either {
        Some(ShapesInputEither::Integer(i)) => i,
        Some(ShapesInputEither::String(s)) => i64::try_from(s.len()).unwrap_or_default(),
        None => 0,
    };
    let labels: i64 = input.labels.unwrap_or_default().values().sum();
    let tree = input.tree.as_ref().map_or(0, depth);
    let extra = input.open.map_or(0, |o| o.len()) + input.maybe.map_or(0, |m| m.len())
        + input.self_.map_or(0, |s| s.len())
        + input.r#gen.map_or(0, |s| s.len())
        + input.meta.map_or(0, |m: String2| {
            m.note.map_or(0, |n| n.len()) + m.extra.values().filter(|v| **v).count()
        });
    Ok(ShapesOutput {
        items: vec![ShapesOutputItemsItem {
            id: kind + either + labels + i64::try_from(tree + extra).unwrap_or_default(),
            tags: (size > 1.0).then(|| vec![ShapesOutputItemsItemTagsItem::Red, ShapesOutputItemsItemTagsItem::Blue]),
        }],
    })
}
"##;

#[test]
fn every_schema_shape_generates_rust_that_passes_clippy() {
    let root = root();
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("shapes.yaml");
    std::fs::write(&spec_path, SHAPES).unwrap();
    let out = dir.path().join("shapes");
    std::fs::create_dir_all(out.join("src/tools")).unwrap();
    std::fs::write(out.join("src/tools/shapes.rs"), SHAPES_USER_FILE).unwrap();
    generate(&spec_path, &out);
    std::fs::copy(root.join("Cargo.lock"), out.join("Cargo.lock")).unwrap();
    let clippy = Command::new(env!("CARGO"))
        .args([
            "clippy",
            "--offline",
            "--quiet",
            "--message-format=short",
            "--",
            "-D",
            "warnings",
        ])
        .env("CARGO_TARGET_DIR", root.join("target"))
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(
        clippy.status.success(),
        "{}",
        String::from_utf8_lossy(&clippy.stderr)
    );
}

/// The served schemas sit in the code as raw string literals no spec text can close early,
/// pretty-printed, in the spec's property order, and Rust reads back exactly the schema.
#[test]
fn schemas_are_raw_literals_in_spec_order_that_no_text_can_close() {
    let spec = r####"spec_version: 1
server: { name: raw, version: 0.1.0 }
tools:
  - name: raw
    description: Hostile descriptions.
    input:
      type: object
      properties:
        zulu: { type: string, description: "ends \"# early \"## or \"### not" }
        alpha: { type: string, description: "r#\"x\"# and \\ and \u2028 and \t" }
        mike: { type: integer }
    run: { rust: { fn: raw } }
"####;
    let parsed = bmm_generator::spec::parse("raw.yaml", spec).unwrap();
    let files = bmm_generator::emit::render(
        &parsed,
        "raw.yaml",
        &bmm_generator::RuntimeDependency::Workspace,
    )
    .unwrap();
    let source = files
        .iter()
        .map(|f| f.contents.as_str())
        .find(|c| c.contains("input_schema:"))
        .unwrap();
    let start = source.find("input_schema: r").unwrap() + "input_schema: ".len();
    let hashes = source[start + 1..]
        .bytes()
        .take_while(|&b| b == b'#')
        .count();
    assert_eq!(hashes, 4, "one more `#` than the longest `\"#...` run");
    let end = source[start..]
        .find(&format!("\"{}", "#".repeat(hashes)))
        .unwrap()
        + start
        + 1
        + hashes;
    let literal: syn::LitStr = syn::parse_str(&source[start..end]).unwrap();
    let text = literal.value();
    assert!(text.contains("\n  \"properties\": {\n"), "{text}");
    let served: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(served, parsed.tools[0].input.value);
    let keys: Vec<&String> = served["properties"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["zulu", "alpha", "mike"]);
}
