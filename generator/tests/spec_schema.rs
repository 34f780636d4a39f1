//! The JSON Schema of the spec format (`bmm schema`, `specs/schema/bmm-spec.schema.json`,
//! the file `bmm new` writes): every example spec passes it, every bad spec that is wrong
//! in structure (a type, an unknown key, a missing field, a value outside an enum) fails
//! it, the checked-in copy is never stale, and its patterns say what bmm-core says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

use bmm_generator::spec;
use serde_json::{Value, json};

/// Bad specs whose mistake only `bmm check` can see: the structure is right, a rule that
/// spans places or values is broken (names, references, URLs, placeholders, base64...).
/// The schema accepts them. Moving a spec in or out of this list is a decision: the test
/// fails when the schema's verdict changes.
const SEMANTIC_ONLY: &[&str] = &[
    "authorization-header-from-input.yaml",
    "body-field-unknown.yaml",
    "body-whole-field-unknown.yaml",
    "disconnect-not-user-oauth.yaml",
    "disconnect-undeclared-upstream.yaml",
    "disconnect-with-output.yaml",
    "duplicate-tool.yaml",
    "form-whole-body-not-object.yaml",
    "form-without-body.yaml",
    "header-auth-without-name.yaml",
    "http-upstream.yaml",
    "input-not-object.yaml",
    "input-schema-does-not-compile.yaml",
    "oauth-client-id-empty.yaml",
    "oauth-client-secret-post-without-secret.yaml",
    "oauth-client-secret-undeclared.yaml",
    "oauth-confidential-without-credential.yaml",
    "oauth-env-override-without-value.yaml",
    "oauth-http-token-url.yaml",
    "oauth-issuer-and-token-url.yaml",
    "oauth-issuer-with-query.yaml",
    "oauth-no-endpoint.yaml",
    "oauth-private-key-jwt-without-key.yaml",
    "oauth-public-client-with-secret.yaml",
    "oauth-relative-token-url.yaml",
    "oauth-resource-with-fragment.yaml",
    "oauth-secret-and-private-key.yaml",
    "placeholder-unknown-field.yaml",
    "prompt-fn-clashes-with-tool-fn.yaml",
    "prompt-messages-and-fn.yaml",
    "prompt-unknown-placeholder.yaml",
    "resource-bad-blob.yaml",
    "resource-without-content.yaml",
    "rust-fn-keyword.yaml",
    "rust-tool-without-fn.yaml",
    "subscribe-on-template.yaml",
    "template-json-without-escaped-braces.yaml",
    "template-placeholder-not-a-variable.yaml",
    "timeout-out-of-range.yaml",
    "token-exchange-without-audience.yaml",
    "undeclared-secret.yaml",
    "undeclared-upstream.yaml",
    "upstream-scopes-on-bearer.yaml",
    "upstream-scopes-on-user-oauth.yaml",
    "user-oauth-issuer-and-authorization-url.yaml",
    "user-oauth-token-url-without-authorization-url.yaml",
];

/// Bad specs that are not a YAML document a schema could be applied to.
const NOT_A_DOCUMENT: &[&str] = &["duplicate-yaml-key.yaml", "not-yaml.yaml"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&spec::json_schema()).unwrap();
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("the schema compiles: {e}"))
}

fn yaml(text: &str) -> Result<Value, String> {
    serde_saphyr::from_str::<Value>(text).map_err(|e| e.to_string())
}

fn schema_errors(validator: &jsonschema::Validator, document: &Value) -> Vec<String> {
    validator
        .iter_errors(document)
        .map(|e| format!("{} at `{}`", e, e.instance_path().as_str()))
        .collect()
}

fn files(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(extension))
        .collect();
    paths.sort();
    paths
}

#[test]
fn the_checked_in_schema_is_the_one_bmm_prints() {
    let path = root().join("specs/schema/bmm-spec.schema.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == spec::json_schema(),
        "{} is stale: run `cargo run -p bmm-generator --bin bmm -- schema > specs/schema/bmm-spec.schema.json`",
        path.display()
    );
    let printed = Command::new(env!("CARGO_BIN_EXE_bmm"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(printed.status.success());
    assert_eq!(String::from_utf8(printed.stdout).unwrap(), committed);
}

#[test]
fn the_schema_describes_the_format() {
    let schema: Value = serde_json::from_str(&spec::json_schema()).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["required"], json!(["server"]));
    assert_eq!(schema["additionalProperties"], false);
    let definitions = schema["definitions"].as_object().unwrap();
    // Every object the loader refuses unknown keys in says so.
    for name in [
        "Server",
        "Auth",
        "Secret",
        "Upstream",
        "Tool",
        "HttpRun",
        "RustRun",
        "Resource",
        "Prompt",
        "PromptMessage",
        "Image",
    ] {
        assert_eq!(definitions[name]["additionalProperties"], false, "{name}");
        assert!(definitions[name]["description"].is_string(), "{name}");
    }
    assert_eq!(
        definitions["Tool"]["required"],
        json!(["name", "description", "input", "run"])
    );
    assert_eq!(
        definitions["HttpMethod"]["enum"],
        json!(["GET", "POST", "PUT", "PATCH", "DELETE"])
    );
    assert_eq!(definitions["Role"]["enum"], json!(["user", "assistant"]));
    // Upstream auth: one shape per `type`, each refusing the other types' keys.
    let shapes = definitions["UpstreamAuthShape"]["oneOf"]
        .as_array()
        .unwrap();
    let mut types = Vec::new();
    for shape in shapes {
        let shape = match shape.get("$ref").and_then(Value::as_str) {
            Some(r) => &definitions[r.trim_start_matches("#/definitions/")],
            None => shape,
        };
        let kind = &shape["properties"]["type"];
        types.push(
            kind.get("const")
                .or(kind["enum"].get(0))
                .cloned()
                .unwrap_or_default(),
        );
        assert_eq!(shape["additionalProperties"], false, "{shape}");
    }
    assert_eq!(
        types,
        json!([
            "bearer",
            "header",
            "query",
            "token_exchange",
            "client_credentials",
            "user_oauth"
        ])
        .as_array()
        .unwrap()
        .clone()
    );
    assert!(
        definitions["Tool"]["properties"]["description"]["description"]
            .as_str()
            .unwrap()
            .contains("for the model")
    );
}

#[test]
fn every_example_spec_passes_the_schema_and_points_editors_at_it() {
    let validator = validator();
    let specs = files(&root().join("specs"), "yaml");
    assert!(specs.len() >= 4);
    for path in specs {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let errors = schema_errors(&validator, &yaml(&text).unwrap());
        assert!(errors.is_empty(), "{name}: {errors:#?}");
        // Imported specs are rewritten by `bmm import-openapi`, which writes no modeline.
        if name != "petstore.yaml" {
            assert_eq!(
                text.lines().next(),
                Some("# yaml-language-server: $schema=schema/bmm-spec.schema.json"),
                "{name}: the first line is the modeline"
            );
        }
    }
}

#[test]
fn bad_specs_that_are_wrong_in_structure_fail_the_schema() {
    let validator = validator();
    let mut semantic = Vec::new();
    let mut not_a_document = Vec::new();
    let mut structural = 0;
    for path in files(&root().join("generator/tests/bad_specs"), "yaml") {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        match yaml(&text) {
            Err(_) => not_a_document.push(name),
            Ok(document) if schema_errors(&validator, &document).is_empty() => {
                semantic.push(name);
            }
            Ok(_) => structural += 1,
        }
    }
    assert_eq!(
        semantic, SEMANTIC_ONLY,
        "bad specs the schema accepts (the rest must fail it)"
    );
    assert_eq!(not_a_document, NOT_A_DOCUMENT);
    assert!(structural >= 10, "only {structural} structural bad specs");
}

#[test]
fn the_schema_fails_what_the_loader_refuses_with_the_offending_place() {
    let validator = validator();
    let ok = json!({
        "server": {"name": "demo", "version": "0.1.0"},
        "tools": [{"name": "t", "description": "d", "input": {"type": "object"},
                   "run": {"http": {"upstream": "api", "method": "GET", "path": "/x", "body": "all"}}}]
    });
    assert!(schema_errors(&validator, &ok).is_empty());
    for (pointer, value, at) in [
        ("/server/nmae", json!("x"), "/server"),
        ("/server/name", json!("Demo"), "/server/name"),
        ("/server/name", json!("demo-"), "/server/name"),
        ("/server/version", json!("1.0"), "/server/version"),
        ("/spec_version", json!(2), "/spec_version"),
        // Inside `run` (one of `http` and `rust`) the error names `run`.
        ("/tools/0/run/http/method", json!("get"), "/tools/0/run"),
        (
            "/tools/0/run/http/body",
            json!("everything"),
            "/tools/0/run",
        ),
        ("/tools/0/run/http/typo", json!(1), "/tools/0/run"),
        ("/tools/0/scopes", json!(["a b"]), "/tools/0/scopes/0"),
        ("/tools/0/input", json!("object"), "/tools/0/input"),
    ] {
        let mut document = ok.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        document.pointer_mut(parent).unwrap()[key] = value;
        let errors = schema_errors(&validator, &document);
        assert!(
            errors.iter().any(|e| e.ends_with(&format!("at `{at}`"))),
            "{pointer}: {errors:#?}"
        );
    }
}

#[test]
fn the_schema_patterns_and_bmm_new_say_what_bmm_core_says() {
    let schema: Value = serde_json::from_str(&spec::json_schema()).unwrap();
    let definitions = &schema["definitions"];
    let name = jsonschema::validator_for(&definitions["Server"]["properties"]["name"]).unwrap();
    let scope = jsonschema::validator_for(&definitions["ScopeToken"]).unwrap();
    let samples = [
        "",
        "a",
        "weather",
        "weather-tools",
        "weather-",
        "-weather",
        "Weather",
        "2a",
        "a_b",
        "a b",
        "a\"b",
        "a\\b",
        "mcp:read",
        "notes.write",
        "!#[]{}~",
        "é",
        "a\nb",
        "a\u{7f}",
    ];
    let long = ["a".repeat(48), "a".repeat(49)];
    for sample in samples
        .iter()
        .copied()
        .chain(long.iter().map(String::as_str))
    {
        assert_eq!(
            name.is_valid(&json!(sample)),
            bmm_core::is_server_name(sample),
            "server name {sample:?}"
        );
        assert_eq!(
            scope.is_valid(&json!(sample)),
            bmm_core::is_scope_token(sample),
            "scope {sample:?}"
        );
        // `bmm new` takes exactly the names `bmm check` accepts.
        assert_eq!(
            bmm_generator::starter_spec(sample, "x.yaml").is_ok(),
            bmm_core::is_server_name(sample),
            "bmm new {sample:?}"
        );
    }
}

#[test]
fn bmm_new_writes_the_modeline_and_the_schema_next_to_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("my-shop.yaml");
    let status = Command::new(env!("CARGO_BIN_EXE_bmm"))
        .args(["new", "my-shop", "--out"])
        .arg(&spec_path)
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&spec_path).unwrap();
    assert_eq!(text.lines().next(), Some(spec::MODELINE));
    let schema = std::fs::read_to_string(dir.path().join(spec::SCHEMA_FILE)).unwrap();
    assert_eq!(schema, spec::json_schema());
    let errors = schema_errors(&validator(), &yaml(&text).unwrap());
    assert!(errors.is_empty(), "{errors:#?}");
    // A stale schema next to a second spec is refreshed; the spec is never replaced.
    std::fs::write(dir.path().join(spec::SCHEMA_FILE), "{}").unwrap();
    let other = dir.path().join("other.yaml");
    let status = Command::new(env!("CARGO_BIN_EXE_bmm"))
        .args(["new", "other", "--out"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(status.success());
    let refreshed = std::fs::read_to_string(dir.path().join(spec::SCHEMA_FILE)).unwrap();
    assert_eq!(refreshed, spec::json_schema());
}
