//! `bmm import-openapi`: real public documents (`tests/openapi/`, sources in SOURCES.md)
//! and hostile ones. Every imported spec must pass the same validator as `bmm check`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeSet;
use std::io::{Read, Write};

use bmm_generator::openapi::{Imported, Options, import};
use serde_json::{Value, json};

const DOCS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openapi");
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{DOCS}/{name}")).unwrap()
}

fn spec_of(imported: &Imported) -> Value {
    serde_saphyr::from_str(&imported.spec).unwrap()
}

fn tools(imported: &Imported) -> Vec<Value> {
    spec_of(imported)["tools"].as_array().unwrap().clone()
}

fn tool(imported: &Imported, name: &str) -> Value {
    tools(imported)
        .into_iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tool {name} in:\n{}", imported.spec))
}

fn assert_checks(imported: &Imported) {
    let findings = bmm_generator::spec::check_text("imported.yaml", &imported.spec);
    let errors: Vec<_> = findings.iter().filter(|d| d.is_error()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{}", imported.spec);
}

fn doc(paths: Value) -> String {
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Test API", "version": "1.2.3"},
        "servers": [{"url": "https://api.example.com/v1"}],
        "paths": paths,
    })
    .to_string()
}

#[test]
fn committed_public_documents_import_into_specs_that_pass_check() {
    for (file, at_least) in [
        ("petstore-3.0.yaml", 18),
        ("petstore-3.1.yaml", 6),
        ("discord-3.1.json", 200),
    ] {
        let options = Options {
            source_name: file.to_owned(),
            ..Options::default()
        };
        let imported = import(&read(file), &options).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_checks(&imported);
        let tools = tools(&imported);
        assert!(tools.len() >= at_least, "{file}: {} tools", tools.len());
        let names: BTreeSet<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names.len(), tools.len(), "{file}: names are unique");
        for name in &names {
            assert!(name.len() <= 48, "{file}: {name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{file}: {name}"
            );
        }
        // Re-importing gives the same bytes.
        assert_eq!(
            import(&read(file), &options).unwrap().spec,
            imported.spec,
            "{file}"
        );
        assert_eq!(imported.report.tools, tools.len());
    }
}

#[test]
fn the_large_document_reports_its_size_against_the_token_budget() {
    let imported = import(&read("discord-3.1.json"), &Options::default()).unwrap();
    assert!(imported.report.over_budget(), "{}", imported.report);
    assert!(
        imported
            .report
            .to_string()
            .contains("over the token budget")
    );
    // Operations bmm cannot express are listed with a reason, not dropped silently.
    assert!(
        imported
            .report
            .skipped
            .iter()
            .any(|(op, why)| op.starts_with("POST ") && why.contains("multipart/form-data")),
        "{:?}",
        imported.report.skipped
    );
    // The issuer's credential (an API key in the Authorization header) is a secret and
    // upstream auth.
    let spec = spec_of(&imported);
    assert_eq!(spec["upstreams"]["api"]["auth"]["type"], "header");
    assert_eq!(spec["upstreams"]["api"]["auth"]["name"], "Authorization");
    let small = Options {
        tags: Vec::new(),
        paths: vec!["/users/@me".to_owned()],
        token_budget: 25_000,
        ..Options::default()
    };
    let filtered = import(&read("discord-3.1.json"), &small).unwrap();
    assert!(!filtered.report.over_budget(), "{}", filtered.report);
}

#[test]
fn petstore_credentials_become_secrets_never_arguments() {
    let imported = import(&read("petstore-3.0.yaml"), &Options::default()).unwrap();
    let delete = tool(&imported, "delete_pet");
    // `api_key` is a security scheme's header: the server's secret, not an input.
    assert!(
        delete["input"]["properties"].get("api_key").is_none(),
        "{delete}"
    );
    assert_eq!(delete["annotations"]["destructive"], true);
    assert_eq!(delete["run"]["http"]["path"], "/pet/{pet_id}");
    let get = tool(&imported, "get_pet_by_id");
    assert_eq!(get["annotations"]["read_only"], true);
    assert_eq!(get["annotations"]["open_world"], true);
    assert_eq!(get["output"]["type"], "object");
    // A body property and a path parameter with the same name: the parameter is renamed,
    // the body key is kept.
    let update = tool(&imported, "update_user");
    assert_eq!(update["run"]["http"]["path"], "/user/{path_username}");
    assert!(update["input"]["properties"].get("username").is_some());
    // An array body is one argument sent as the whole body.
    let with_list = tool(&imported, "create_users_with_list_input");
    assert_eq!(with_list["run"]["http"]["body"], json!({"field": "body"}));
    assert_eq!(with_list["input"]["properties"]["body"]["type"], "array");
    // An array response is wrapped the way the runtime wraps it.
    let by_status = tool(&imported, "find_pets_by_status");
    assert_eq!(by_status["output"]["properties"]["result"]["type"], "array");
}

#[test]
fn the_committed_petstore_spec_is_what_the_importer_writes() {
    let options = Options {
        server_name: Some("petstore".to_owned()),
        base_url: Some("https://petstore3.swagger.io/api/v3".to_owned()),
        source_name: "petstore-3.0.yaml".to_owned(),
        ..Options::default()
    };
    let imported = import(&read("petstore-3.0.yaml"), &options).unwrap();
    let committed = std::fs::read_to_string(format!("{ROOT}/specs/petstore.yaml")).unwrap();
    assert_eq!(
        imported.spec, committed,
        "re-run: bmm import-openapi generator/tests/openapi/petstore-3.0.yaml --out specs/petstore.yaml --name petstore --base-url https://petstore3.swagger.io/api/v3"
    );
}

#[test]
fn swagger_2_and_other_versions_are_refused_with_what_to_do() {
    let e = import(
        r#"{"swagger": "2.0", "info": {}, "paths": {}}"#,
        &Options::default(),
    )
    .unwrap_err();
    assert!(
        e.contains("Swagger 2.0") && e.contains("swagger2openapi"),
        "{e}"
    );
    let e = import("openapi: 4.0.0\npaths: {}\n", &Options::default()).unwrap_err();
    assert!(e.contains("4.0.0") && e.contains("3.0.x and 3.1.x"), "{e}");
    let e = import("- a\n- b\n", &Options::default()).unwrap_err();
    assert!(e.contains("not an OpenAPI object"), "{e}");
    let e = import("{\"openapi\": ", &Options::default()).unwrap_err();
    assert!(e.contains("not valid JSON"), "{e}");
    let e = import("info: {title: x}\n", &Options::default()).unwrap_err();
    assert!(e.contains("no `openapi` field"), "{e}");
    let bad_name = Options {
        server_name: Some("Bad Name".to_owned()),
        ..Options::default()
    };
    let e = import(
        &doc(json!({"/x": {"get": {"responses": {"200": {"description": "ok"}}}}})),
        &bad_name,
    )
    .unwrap_err();
    assert!(e.contains("not a valid crate name"), "{e}");
}

#[test]
fn reference_cycles_become_bounded_schemas() {
    let mut text: Value = serde_json::from_str(&doc(json!({
        "/nodes": {"post": {"operationId": "createNode",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Node"}}}},
            "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/A"}}}}}}}
    })))
    .unwrap();
    text["components"] = json!({"schemas": {
        "Node": {"type": "object", "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}}}},
        "A": {"type": "object", "properties": {"b": {"$ref": "#/components/schemas/B"}}},
        "B": {"type": "object", "properties": {"a": {"$ref": "#/components/schemas/A"}}},
    }});
    let imported = import(&text.to_string(), &Options::default()).unwrap();
    assert_checks(&imported);
    let t = tool(&imported, "create_node");
    // The body is a Node: its children are Nodes, left open.
    assert_eq!(
        t["input"]["properties"]["children"]["items"]["description"],
        "Recursive reference to Node; not expanded further."
    );
    // A -> B -> A: expanded once around the cycle.
    assert_eq!(
        t["output"]["properties"]["b"]["properties"]["a"]["description"],
        "Recursive reference to A; not expanded further."
    );
    assert!(
        imported
            .report
            .warnings
            .iter()
            .any(|w| w.contains("recursive schema"))
    );
}

#[test]
fn exponential_reference_fan_out_is_cut_short() {
    // Each level refers to the next twice: 2^40 nodes if expanded naively.
    let mut schemas = serde_json::Map::new();
    for i in 0..40 {
        schemas.insert(
            format!("L{i}"),
            json!({"type": "object", "properties": {
                "x": {"$ref": format!("#/components/schemas/L{}", i + 1)},
                "y": {"$ref": format!("#/components/schemas/L{}", i + 1)}}}),
        );
    }
    schemas.insert("L40".to_owned(), json!({"type": "string"}));
    let mut text: Value = serde_json::from_str(&doc(json!({
        "/x": {"get": {"operationId": "getX", "responses": {"200": {"description": "ok",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/L0"}}}}}}}
    })))
    .unwrap();
    text["components"] = json!({"schemas": schemas});
    let started = std::time::Instant::now();
    let imported = import(&text.to_string(), &Options::default()).unwrap();
    assert_checks(&imported);
    assert!(
        imported
            .report
            .warnings
            .iter()
            .any(|w| w.contains("too large"))
    );
    assert!(started.elapsed().as_secs() < 60);
}

#[test]
fn yaml_alias_bombs_are_refused_or_bounded() {
    let mut bomb = String::from(
        "openapi: 3.0.0\ninfo: {title: bomb, version: 1.0.0}\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for i in 1..9 {
        let prev = format!("*a{}", i - 1);
        bomb.push_str(&format!(
            "a{i}: &a{i} [{}]\n",
            [prev.as_str(); 10].join(", ")
        ));
    }
    bomb.push_str("paths: {}\n");
    let started = std::time::Instant::now();
    let result = import(&bomb, &Options::default());
    assert!(result.is_err(), "an alias bomb must not import");
    assert!(started.elapsed().as_secs() < 30);
}

#[test]
fn remote_refs_are_refused_unless_their_host_is_allowed() {
    // A local "remote" document server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let body = r#"{"Pet": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let text = doc(json!({
        "/pets": {"post": {"operationId": "addPet",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": format!("http://{addr}/schemas.json#/Pet")}}}},
            "responses": {"201": {"description": "created"}}}}
    }));
    // Refused: the schema is left open (one free-form `body` argument) and the report
    // names the flag that would fetch it.
    let refused = import(&text, &Options::default()).unwrap();
    assert_checks(&refused);
    let add = tool(&refused, "add_pet");
    assert_eq!(add["run"]["http"]["body"], json!({"field": "body"}));
    assert!(
        add["input"]["properties"]["body"]["description"]
            .as_str()
            .unwrap()
            .starts_with("Unresolved reference"),
        "{add}"
    );
    assert!(
        refused
            .report
            .warnings
            .iter()
            .any(|w| w.contains("--allow-remote-ref-host 127.0.0.1")),
        "{:?}",
        refused.report.warnings
    );
    let allowed = Options {
        allow_remote_ref_hosts: vec!["127.0.0.1".to_owned()],
        ..Options::default()
    };
    let imported = import(&text, &allowed).unwrap();
    let add = tool(&imported, "add_pet");
    assert_eq!(add["input"]["required"], json!(["name"]));
    assert_eq!(add["run"]["http"]["body"], json!(["name"]));
}

#[test]
fn hostile_text_is_clipped_escaped_and_never_becomes_code() {
    let evil = "\"); std::process::exit(1); /* */ // }\n- name: injected\n  run: {rust: {fn: main}}\n{{weird}}";
    let text = doc(json!({
        "/items/{id}": {
            "get": {
                "operationId": "../../etc/passwd\"; DROP",
                "summary": evil,
                "description": "x".repeat(1_000_000),
                "parameters": [
                    {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}, "description": evil},
                    {"name": "q\"}", "in": "query", "schema": {"type": "string"}},
                ],
                "x-bmm": {"scopes": ["items:read", "bad scope\"}"], "annotations": {"open_world": false}},
                "responses": {"200": {"description": "ok"}}
            },
            "delete": {"operationId": "bad-header", "parameters": [{"name": "X-A\r\nB", "in": "header", "schema": {"type": "string"}}],
                "responses": {"204": {"description": "gone"}}},
            "put": {"operationId": "headers", "parameters": [
                    {"name": "Cookie", "in": "header", "schema": {"type": "string"}},
                    {"name": "Content-Type", "in": "header", "schema": {"type": "string"}},
                    {"name": "Accept", "in": "header", "schema": {"type": "string"}},
                    {"name": "Authorization", "in": "header", "schema": {"type": "string"}},
                    {"name": "X-Trace", "in": "header", "schema": {"type": "string"}}],
                "responses": {"204": {"description": "ok"}}}
        }
    }));
    let imported = import(&text, &Options::default()).unwrap();
    assert_checks(&imported);
    let t = &tools(&imported)[0];
    assert_ne!(t["name"], "headers");
    let name = t["name"].as_str().unwrap();
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "{name}"
    );
    let description = t["description"].as_str().unwrap();
    assert!(description.chars().count() <= 1_000);
    assert!(
        description.starts_with(evil),
        "the text survives the YAML round trip"
    );
    assert_eq!(t["scopes"], json!(["items:read"]));
    assert_eq!(t["annotations"]["open_world"], false);
    assert!(
        imported
            .report
            .skipped
            .iter()
            .any(|(op, why)| op.starts_with("DELETE") && why.contains("header name"))
    );
    // Headers OpenAPI says to ignore, and cookies, never become arguments.
    let put = tool(&imported, "headers");
    assert_eq!(
        put["run"]["http"]["headers"],
        json!({"X-Trace": "{x_trace}"})
    );
    // Nothing was injected as a tool.
    assert_eq!(tools(&imported).len(), 2);

    // The generator turns it into code that parses, with the text only in literals.
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("hostile.yaml");
    std::fs::write(&spec, &imported.spec).unwrap();
    let (files, _) =
        bmm_generator::generate::render(&spec, &bmm_generator::RuntimeDependency::Workspace)
            .unwrap();
    let generated = files
        .iter()
        .find(|f| f.path == "src/generated/mod.rs")
        .unwrap();
    let file: proc_macro2::TokenStream = generated.contents.parse().unwrap();
    syn::parse_file(&generated.contents).unwrap();
    // Outside string literals, none of the hostile words exist.
    fn idents(tokens: proc_macro2::TokenStream, out: &mut BTreeSet<String>) {
        for t in tokens {
            match t {
                proc_macro2::TokenTree::Group(g) => idents(g.stream(), out),
                proc_macro2::TokenTree::Ident(i) => {
                    out.insert(i.to_string());
                }
                _ => {}
            }
        }
    }
    let mut seen = BTreeSet::new();
    idents(file, &mut seen);
    for word in ["exit", "injected", "DROP", "passwd", "weird"] {
        assert!(!seen.contains(word), "`{word}` became code");
    }
}

#[test]
fn filters_x_bmm_and_overrides_decide_what_is_imported_and_how() {
    let text = doc(json!({
        "/pets": {
            "get": {"operationId": "listPets", "tags": ["pets"], "responses": {"200": {"description": "ok"}}},
            "post": {"operationId": "createPet", "tags": ["pets"], "x-bmm": {"name": "make_pet", "scopes": ["pets:write"]},
                "responses": {"201": {"description": "ok"}}}
        },
        "/pets/{id}": {
            "delete": {"operationId": "deletePet", "tags": ["pets"], "x-bmm": {"disabled": true}, "responses": {"204": {"description": "ok"}}},
            "put": {"tags": ["admin"], "responses": {"200": {"description": "ok"}}}
        },
        "/a/very/long/path/that/goes/on/and/on/and/on/forever/and/ever/{id}": {
            "get": {"responses": {"200": {"description": "ok"}}}
        }
    }));
    let all = import(&text, &Options::default()).unwrap();
    assert_checks(&all);
    let names: Vec<String> = tools(&all)
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"list_pets".to_owned()));
    assert!(names.contains(&"make_pet".to_owned()));
    assert!(names.contains(&"put_pets_id".to_owned()));
    assert!(!names.iter().any(|n| n.contains("delete")), "{names:?}");
    let long = names.iter().find(|n| n.starts_with("get_a_very")).unwrap();
    assert_eq!(long.len(), 48);
    assert_eq!(tool(&all, "make_pet")["scopes"], json!(["pets:write"]));
    assert_eq!(
        spec_of(&all)["auth"]["scopes_supported"],
        json!(["pets:write"])
    );

    let only = |options: Options| -> Vec<String> {
        tools(&import(&text, &options).unwrap())
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        only(Options {
            tags: vec!["admin".into()],
            ..Options::default()
        }),
        ["put_pets_id"]
    );
    assert_eq!(
        only(Options {
            methods: vec!["POST".into()],
            ..Options::default()
        }),
        ["make_pet"]
    );
    assert_eq!(
        only(Options {
            operation_ids: vec!["listPets".into()],
            ..Options::default()
        }),
        ["list_pets"]
    );
    assert_eq!(
        only(Options {
            paths: vec!["/pets/*".into()],
            ..Options::default()
        }),
        ["put_pets_id"]
    );

    let overrides = "operations:\n  GET /pets:\n    name: all_pets\n    description: Every pet, edited by hand.\n  createPet:\n    disabled: true\n  GET /gone:\n    name: nothing\n";
    let edited = import(
        &text,
        &Options {
            overrides: Some(overrides.to_owned()),
            ..Options::default()
        },
    )
    .unwrap();
    assert_checks(&edited);
    let t = tool(&edited, "all_pets");
    assert_eq!(t["description"], "Every pet, edited by hand.");
    assert!(!tools(&edited).iter().any(|t| t["name"] == "make_pet"));
    assert!(
        edited
            .report
            .warnings
            .iter()
            .any(|w| w.contains("GET /gone"))
    );
    let e = import(
        &text,
        &Options {
            overrides: Some("operations:\n  GET /pets:\n    nmae: x\n".to_owned()),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert!(e.contains("overrides file"), "{e}");
}

#[test]
fn array_parameters_are_kept_and_object_parameters_are_refused_or_left_out() {
    let imported = import(
        &doc(json!({
            "/search": {"get": {
                "operationId": "search",
                "parameters": [
                    {"name": "tags", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}},
                    {"name": "ids", "in": "query", "style": "pipeDelimited", "explode": false,
                     "schema": {"type": "array", "items": {"type": "integer"}}},
                    {"name": "filter", "in": "query", "style": "deepObject",
                     "schema": {"type": "object", "properties": {"a": {"type": "string"}}}},
                    {"name": "untyped", "in": "query",
                     "schema": {"additionalProperties": {"type": "string"}}},
                    {"name": "X-Ids", "in": "header", "style": "form",
                     "schema": {"type": "array", "items": {"type": "string"}}},
                ],
                "responses": {"200": {"description": "ok"}},
            }},
            "/strict": {"get": {
                "operationId": "strict",
                "parameters": [
                    {"name": "where", "in": "query", "required": true,
                     "schema": {"type": "array", "items": {"type": "object"}}},
                ],
                "responses": {"200": {"description": "ok"}},
            }},
        })),
        &Options::default(),
    )
    .unwrap();
    assert_checks(&imported);
    let search = tool(&imported, "search");
    let properties = search["input"]["properties"].as_object().unwrap();
    assert_eq!(properties["tags"]["type"], "array", "{search}");
    assert!(properties.contains_key("ids"), "{search}");
    assert!(
        !properties.contains_key("filter"),
        "an object parameter: {search}"
    );
    assert_eq!(search["run"]["http"]["query"]["tags"], "{tags}", "{search}");
    let warnings = imported.report.warnings.join("\n");
    assert!(
        warnings.contains("`ids`") && warnings.contains("pipeDelimited"),
        "{warnings}"
    );
    assert!(warnings.contains("`filter` left out"), "{warnings}");
    assert!(warnings.contains("`untyped` left out"), "{warnings}");
    assert!(
        warnings.contains("header parameter `X-Ids` is declared `style: form`"),
        "{warnings}"
    );
    assert!(
        imported
            .report
            .skipped
            .iter()
            .any(|(op, why)| op == "GET /strict" && why.contains("`where`")),
        "{:?}",
        imported.report.skipped
    );
    assert!(tools(&imported).iter().all(|t| t["name"] != "strict"));
}

#[test]
fn url_encoded_form_bodies_become_form_tools() {
    let form = |schema: Value| {
        json!({"requestBody": {"required": true, "content": {
            "application/x-www-form-urlencoded": {"schema": schema}}},
            "responses": {"200": {"description": "ok"}}})
    };
    let mut charge = form(
        json!({"type": "object", "required": ["amount"], "properties": {
            "amount": {"type": "integer"},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "expand": {"type": "array", "items": {"type": "string"}},
        }}),
    );
    charge["operationId"] = json!("create_charge");
    let mut both = form(json!({"type": "object", "properties": {"a": {"type": "string"}}}));
    both["operationId"] = json!("prefers_json");
    both["requestBody"]["content"]["application/json"] =
        json!({"schema": {"type": "object", "properties": {"b": {"type": "string"}}}});
    charge["requestBody"]["content"]["application/x-www-form-urlencoded"]["encoding"] = json!({
        "expand": {"style": "pipeDelimited"},
        "amount": {"contentType": "application/json"},
    });
    let mut list = form(json!({"type": "array", "items": {"type": "string"}}));
    list["operationId"] = json!("form_list");
    let mut optional = form(json!({"type": "array", "items": {"type": "string"}}));
    optional["operationId"] = json!("optional_list");
    optional["requestBody"]["required"] = json!(false);
    let imported = import(
        &doc(json!({
            "/charges": {"post": charge},
            "/both": {"post": both},
            "/list": {"post": list},
            "/optional": {"post": optional},
        })),
        &Options::default(),
    )
    .unwrap();
    assert_checks(&imported);
    let charge = tool(&imported, "create_charge");
    assert_eq!(charge["run"]["http"]["body_format"], "form", "{charge}");
    assert_eq!(
        charge["run"]["http"]["body"],
        json!(["amount", "metadata", "expand"]),
        "{charge}"
    );
    assert_eq!(charge["input"]["required"], json!(["amount"]), "{charge}");
    let both = tool(&imported, "prefers_json");
    assert!(both["run"]["http"].get("body_format").is_none(), "{both}");
    assert_eq!(both["run"]["http"]["body"], json!(["b"]), "{both}");
    assert!(
        imported
            .report
            .skipped
            .iter()
            .any(|(op, why)| op == "POST /list" && why.contains("form body")),
        "{:?}",
        imported.report.skipped
    );
    // An optional body that cannot be a form is left out; the operation stays.
    let optional = tool(&imported, "optional_list");
    assert!(optional["run"]["http"].get("body").is_none(), "{optional}");
    assert!(
        optional["run"]["http"].get("body_format").is_none(),
        "{optional}"
    );
    // What the fixed encoding rules do not honour is reported, field by field.
    let warnings = imported.report.warnings.join("\n");
    for expected in [
        "form field `metadata` is an object",
        "form field `expand` is an array sent as repeated fields; the document declares style `pipeDelimited`",
        "form field `amount` is declared as `application/json`",
        "POST /optional: its optional form body",
    ] {
        assert!(warnings.contains(expected), "{expected}\n{warnings}");
    }
}

fn warnings(imported: &Imported) -> String {
    imported.report.warnings.join("\n")
}

#[test]
fn required_names_without_a_property_are_dropped_with_a_report_line() {
    // Mastodon's document (and many others) lists fields in `required` that it never
    // declares; bmm check refuses such a root, and a server would refuse valid answers.
    let account = json!({"type": "object",
    "required": ["id", "username", "acct"],
    "properties": {
        "id": {"type": "string"},
        "username": {"type": "string"},
        "source": {"type": "object", "required": ["note", "privacy"],
            "properties": {"note": {"type": "string"}}},
    }});
    let imported = import(
        &doc(json!({
            "/accounts/{id}": {"get": {
                "operationId": "get_account",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": account}}}},
            }},
            "/accounts": {"post": {
                "operationId": "create_account",
                "requestBody": {"required": true, "content": {"application/json": {"schema": account}}},
                "responses": {"200": {"description": "ok"}},
            }},
        })),
        &Options::default(),
    )
    .unwrap();
    assert_checks(&imported);
    let get = tool(&imported, "get_account");
    assert_eq!(
        get["output"]["required"],
        json!(["id", "username"]),
        "{get}"
    );
    assert_eq!(
        get["output"]["properties"]["source"]["required"],
        json!(["note"]),
        "{get}"
    );
    let create = tool(&imported, "create_account");
    assert_eq!(
        create["input"]["properties"]["source"]["required"],
        json!(["note"]),
        "{create}"
    );
    let w = warnings(&imported);
    assert!(
        w.contains("GET /accounts/{id}: the output schema requires `acct`, `privacy`"),
        "{w}"
    );
    assert!(
        w.contains("POST /accounts: the input schema requires"),
        "{w}"
    );
    assert!(w.contains("dropped from `required`"), "{w}");
}

#[test]
fn schemas_nested_beyond_the_spec_depth_are_cut_into_open_ones() {
    // 40 levels of objects: 80 levels of YAML in the spec, over the loader's 64.
    let mut deep = json!({"type": "string", "description": "the bottom"});
    for i in 0..40 {
        deep = json!({"type": "object", "description": format!("level {i}"),
            "required": ["next"], "properties": {"next": deep}});
    }
    // A deep default value (not a schema) is dropped rather than cut.
    let mut value = json!(1);
    for _ in 0..70 {
        value = json!([value]);
    }
    let body = json!({"type": "object", "properties": {
        "tree": deep,
        "nested": {"type": "array", "default": value},
    }});
    let imported = import(
        &doc(json!({"/trees": {"post": {
            "operationId": "plant",
            "requestBody": {"content": {"application/json": {"schema": body}}},
            "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": deep}}}},
        }}})),
        &Options::default(),
    )
    .unwrap();
    assert_checks(&imported);
    let plant = tool(&imported, "plant");
    let text = plant.to_string();
    assert!(text.contains("Cut by bmm import-openapi"), "{text}");
    assert!(!text.contains("the bottom"), "{text}");
    // What fits is kept as the document says.
    assert_eq!(
        plant["input"]["properties"]["tree"]["properties"]["next"]["description"],
        "level 38"
    );
    assert!(
        plant["input"]["properties"]["nested"]
            .get("default")
            .is_none(),
        "{plant}"
    );
    let w = warnings(&imported);
    assert!(
        w.contains("POST /trees: the input schema nests deeper than a bmm spec may (64 levels)"),
        "{w}"
    );
    assert!(w.contains("deep value(s)"), "{w}");
    assert!(
        w.contains("POST /trees: the output schema nests deeper"),
        "{w}"
    );
}

#[test]
fn patterns_the_validator_cannot_compile_are_dropped_with_a_report_line() {
    // From AWS documents: `\w` inside a character-class range.
    let bad = r"^[\w-.+]+@[\w-.+]+$";
    let body = json!({"type": "object", "properties": {
        "email": {"type": "string", "pattern": bad},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "tags": {"type": "object", "patternProperties": {bad: {"type": "string"}, "^x-": {"type": "string"}}},
    }});
    let imported = import(
        &doc(json!({"/users": {"post": {
            "operationId": "create_user",
            "requestBody": {"content": {"application/json": {"schema": body}}},
            "responses": {"200": {"description": "ok"}},
        }}})),
        &Options::default(),
    )
    .unwrap();
    assert_checks(&imported);
    let user = tool(&imported, "create_user");
    let props = &user["input"]["properties"];
    assert!(props["email"].get("pattern").is_none(), "{user}");
    assert_eq!(props["code"]["pattern"], "^[A-Z]{3}$");
    assert_eq!(
        props["tags"]["patternProperties"],
        json!({"^x-": {"type": "string"}})
    );
    let w = warnings(&imported);
    assert!(
        w.contains("POST /users: the input schema's pattern `^[\\\\w-.+]+@[\\\\w-.+]+$`"),
        "{w}"
    );
}

#[test]
fn keywords_the_validator_refuses_are_dropped_with_a_report_line() {
    // From real documents: a `pattern` that is a number (api.video) and a `type` that is
    // a whole schema (codat.io).
    let body = json!({"type": "object", "properties": {
        "timecode": {"type": "string", "pattern": 0},
        "kind": {"type": {"type": "string", "enum": ["item", "service"]}, "description": "what it is"},
        "name": {"type": "string", "minLength": 1},
    }});
    let imported = import(
        &doc(json!({"/items": {"post": {
            "operationId": "create_item",
            "requestBody": {"content": {"application/json": {"schema": body}}},
            "responses": {"200": {"description": "ok"}},
        }}})),
        &Options::default(),
    )
    .unwrap();
    assert_checks(&imported);
    let item = tool(&imported, "create_item");
    let props = &item["input"]["properties"];
    assert_eq!(props["timecode"], json!({"type": "string"}), "{item}");
    assert_eq!(
        props["kind"],
        json!({"description": "what it is"}),
        "{item}"
    );
    assert_eq!(props["name"], json!({"type": "string", "minLength": 1}));
    let w = warnings(&imported);
    assert!(
        w.contains("POST /items: the input schema's pattern `0`"),
        "{w}"
    );
    assert!(
        w.contains(
            "POST /items: the input schema has keywords the server's validator refuses, dropped: `/properties/kind/type"
        ),
        "{w}"
    );
}

#[test]
fn a_document_far_over_the_spec_limit_is_refused_early_with_what_to_do() {
    // 600 operations, each with a 20 KiB description-heavy body: far over 4 MiB.
    let big = "x".repeat(250);
    let mut props = serde_json::Map::new();
    for i in 0..80 {
        props.insert(
            format!("field_{i}"),
            json!({"type": "string", "description": big}),
        );
    }
    let body = json!({"type": "object", "properties": props});
    let mut paths = serde_json::Map::new();
    for i in 0..600 {
        paths.insert(
            format!("/things/{i}"),
            json!({"post": {
                "requestBody": {"content": {"application/json": {"schema": body}}},
                "responses": {"200": {"description": "ok"}},
            }}),
        );
    }
    let started = std::time::Instant::now();
    let e = import(&doc(Value::Object(paths)), &Options::default()).unwrap_err();
    assert!(
        e.contains("over bmm's 4 MiB limit") && e.contains("--tag, --path"),
        "{e}"
    );
    assert!(!e.contains("internal error"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[test]
fn documents_with_nothing_to_import_are_refused_with_why() {
    // Webhook-only documents (Adyen's notification APIs) have no calls to make.
    let webhooks = json!({
        "openapi": "3.1.0",
        "info": {"title": "Notifications", "version": "1"},
        "paths": {},
        "webhooks": {"balance": {"post": {"responses": {"200": {"description": "ok"}}}}},
    })
    .to_string();
    let e = import(&webhooks, &Options::default()).unwrap_err();
    assert!(
        e.contains("no operations under `paths` (its 1 webhooks are calls the API makes to you)"),
        "{e}"
    );
    let one = doc(
        json!({"/pets": {"get": {"tags": ["pets"], "responses": {"200": {"description": "ok"}}}}}),
    );
    let options = Options {
        tags: vec!["stores".to_owned()],
        ..Options::default()
    };
    let e = import(&one, &options).unwrap_err();
    assert!(
        e.contains("kept none of the document's 1 operations"),
        "{e}"
    );
    let multipart = doc(json!({"/files": {"post": {
        "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {"type": "object"}}}},
        "responses": {"200": {"description": "ok"}},
    }}}));
    let e = import(&multipart, &Options::default()).unwrap_err();
    assert!(
        e.contains("every one was skipped: POST /files: its request body is required and neither JSON nor a URL-encoded form"),
        "{e}"
    );
}

/// A document with `securitySchemes` and `security`, its operations `(path, method,
/// security)` answering 200 (a `null` security is left out: the document's applies).
fn secured(schemes: Value, security: Value, operations: &[(&str, &str, Value)]) -> String {
    let mut paths = serde_json::Map::new();
    for (path, method, op_security) in operations {
        let mut op = json!({"operationId": format!("{method}_{}", path.trim_start_matches('/')), "responses": {"200": {"description": "ok"}}});
        if !op_security.is_null() {
            op["security"] = op_security.clone();
        }
        paths
            .entry(path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .unwrap()
            .insert(method.to_string(), op);
    }
    let mut document = json!({
        "openapi": "3.0.3",
        "info": {"title": "Test API", "version": "1.2.3"},
        "servers": [{"url": "https://api.example.com/v1"}],
        "paths": paths,
        "components": {"securitySchemes": schemes},
    });
    if !security.is_null() {
        document["security"] = security;
    }
    document.to_string()
}

#[test]
fn oauth2_authorization_code_becomes_user_oauth_asking_for_the_operations_scopes() {
    let schemes = json!({"oauth": {"type": "oauth2", "flows": {"authorizationCode": {
        "authorizationUrl": "https://auth.example.com/authorize",
        // Relative: resolved against the server URL.
        "tokenUrl": "/oauth/token",
        "scopes": {"read": "read", "write": "write", "admin": "everything"},
    }}}});
    let text = secured(
        schemes.clone(),
        Value::Null,
        &[
            ("/items", "get", json!([{"oauth": ["read"]}])),
            ("/items", "post", json!([{"oauth": ["write", "read"]}])),
        ],
    );
    let imported = import(&text, &Options::default()).unwrap();
    assert_checks(&imported);
    let spec = spec_of(&imported);
    let auth = &spec["upstreams"]["api"]["auth"];
    assert_eq!(
        auth,
        &json!({
            "type": "user_oauth",
            "authorization_url": "https://auth.example.com/authorize",
            "authorization_url_env": "TEST_API_OAUTH_AUTHORIZATION_URL",
            "token_url": "https://api.example.com/oauth/token",
            "token_url_env": "TEST_API_OAUTH_TOKEN_URL",
            "client_id": "test-api",
            "client_id_env": "TEST_API_OAUTH_CLIENT_ID",
            "client_secret": "TEST_API_OAUTH_CLIENT_SECRET",
            "scopes": ["read", "write"],
        }),
        "{}",
        imported.spec
    );
    let secret = spec["secrets"]["TEST_API_OAUTH_CLIENT_SECRET"]["description"]
        .as_str()
        .unwrap();
    assert!(
        secret.starts_with("Client secret of this server's OAuth client")
            && secret.contains("TEST_API_OAUTH_CLIENT_ID")
            && secret.contains("/connections/api/callback"),
        "{secret}"
    );
    // A user consents once, to the upstream's scopes: tools name none of their own.
    for tool in tools(&imported) {
        assert!(
            tool["run"]["http"].get("upstream_scopes").is_none(),
            "{tool}"
        );
    }
    let report = warnings(&imported);
    assert!(
        report.contains("each user connects their own account"),
        "{report}"
    );
    assert!(report.contains("asked for `read write`"), "{report}");

    // No requirement names a scope: every scope the flow declares.
    let text = secured(
        schemes,
        json!([{"oauth": []}]),
        &[("/items", "get", Value::Null)],
    );
    let imported = import(&text, &Options::default()).unwrap();
    assert_checks(&imported);
    assert_eq!(
        spec_of(&imported)["upstreams"]["api"]["auth"]["scopes"],
        json!(["read", "write", "admin"])
    );
}

#[test]
fn oauth2_client_credentials_becomes_client_credentials_with_narrower_tools_asking_for_less() {
    let schemes = json!({"machine": {"type": "oauth2", "flows": {"clientCredentials": {
        "tokenUrl": "https://auth.example.com/token",
        "scopes": {"reports:read": "", "reports:write": "", "not a scope": ""},
    }}}});
    let text = secured(
        schemes,
        json!([{"machine": ["reports:read", "reports:write"]}]),
        &[
            ("/reports", "post", Value::Null),
            ("/reports", "get", json!([{"machine": ["reports:read"]}])),
        ],
    );
    let imported = import(&text, &Options::default()).unwrap();
    assert_checks(&imported);
    let spec = spec_of(&imported);
    let auth = &spec["upstreams"]["api"]["auth"];
    assert_eq!(auth["type"], "client_credentials");
    assert_eq!(auth["token_url"], "https://auth.example.com/token");
    assert!(auth.get("authorization_url").is_none(), "{auth}");
    assert_eq!(auth["client_secret"], "TEST_API_MACHINE_CLIENT_SECRET");
    assert_eq!(auth["scopes"], json!(["reports:read", "reports:write"]));
    assert!(
        tool(&imported, "post_reports")["run"]["http"]
            .get("upstream_scopes")
            .is_none()
    );
    assert_eq!(
        tool(&imported, "get_reports")["run"]["http"]["upstream_scopes"],
        json!(["reports:read"])
    );
    let report = warnings(&imported);
    assert!(
        report.contains("scope `not a scope` is not an OAuth scope token"),
        "{report}"
    );
    assert!(
        report.contains("its own token (`client_credentials`"),
        "{report}"
    );
}

#[test]
fn implicit_and_password_flows_are_refused_with_why() {
    let schemes = json!({
        "old": {"type": "oauth2", "flows": {
            "implicit": {"authorizationUrl": "https://auth.example.com/authorize", "scopes": {}},
            "password": {"tokenUrl": "https://auth.example.com/token", "scopes": {}},
        }},
    });
    let text = secured(
        schemes,
        json!([{"old": []}]),
        &[("/items", "get", Value::Null)],
    );
    let imported = import(&text, &Options::default()).unwrap();
    assert_checks(&imported);
    let spec = spec_of(&imported);
    assert!(
        spec["upstreams"]["api"].get("auth").is_none(),
        "{}",
        imported.spec
    );
    assert!(spec.get("secrets").is_none(), "{}", imported.spec);
    let report = warnings(&imported);
    assert!(
        report.contains("security scheme `old` (oauth2) is not used: it has no authorization code or client credentials flow"),
        "{report}"
    );
    assert!(
        report.contains("its `implicit` flow is never used: OAuth 2.1 removes the implicit grant"),
        "{report}"
    );
    assert!(
        report.contains(
            "its `password` flow is never used: OAuth 2.1 removes the resource owner password grant"
        ),
        "{report}"
    );

    // Beside a usable flow, the removed one is still named.
    let schemes = json!({"both": {"type": "oauth2", "flows": {
        "implicit": {"authorizationUrl": "https://auth.example.com/authorize", "scopes": {}},
        "authorizationCode": {"authorizationUrl": "https://auth.example.com/authorize", "tokenUrl": "https://auth.example.com/token", "scopes": {}},
    }}});
    let text = secured(
        schemes,
        json!([{"both": []}]),
        &[("/items", "get", Value::Null)],
    );
    let imported = import(&text, &Options::default()).unwrap();
    assert_checks(&imported);
    assert_eq!(
        spec_of(&imported)["upstreams"]["api"]["auth"]["type"],
        "user_oauth"
    );
    assert!(
        warnings(&imported).contains("security scheme `both`: its `implicit` flow is never used"),
        "{}",
        warnings(&imported)
    );
}

#[test]
fn oauth_endpoints_must_be_https_else_the_next_flow_or_nothing() {
    let schemes = json!({"o": {"type": "oauth2", "flows": {
        "authorizationCode": {"authorizationUrl": "http://auth.example.com/authorize", "tokenUrl": "https://auth.example.com/token", "scopes": {}},
        "clientCredentials": {"tokenUrl": "https://auth.example.com/token", "scopes": {}},
    }}});
    let text = secured(
        schemes,
        json!([{"o": []}]),
        &[("/items", "get", Value::Null)],
    );
    let imported = import(&text, &Options::default()).unwrap();
    assert_checks(&imported);
    assert_eq!(
        spec_of(&imported)["upstreams"]["api"]["auth"]["type"],
        "client_credentials"
    );
    let schemes = json!({"o": {"type": "oauth2", "flows": {
        "clientCredentials": {"tokenUrl": "http://auth.example.com/token", "scopes": {}},
    }}});
    let text = secured(
        schemes,
        json!([{"o": []}]),
        &[("/items", "get", Value::Null)],
    );
    let imported = import(&text, &Options::default()).unwrap();
    assert_checks(&imported);
    assert!(spec_of(&imported)["upstreams"]["api"].get("auth").is_none());
    assert!(
        warnings(&imported).contains(
            "client credentials flow: its tokenUrl `http://auth.example.com/token` is not https"
        ),
        "{}",
        warnings(&imported)
    );
    // Loopback http is fine (a local authorization server).
    let schemes = json!({"o": {"type": "oauth2", "flows": {
        "clientCredentials": {"tokenUrl": "http://127.0.0.1:8080/token", "scopes": {}},
    }}});
    let text = secured(
        schemes,
        json!([{"o": []}]),
        &[("/items", "get", Value::Null)],
    );
    let imported = import(&text, &Options::default()).unwrap();
    assert_checks(&imported);
    assert_eq!(
        spec_of(&imported)["upstreams"]["api"]["auth"]["token_url"],
        "http://127.0.0.1:8080/token"
    );
}

#[test]
fn open_id_connect_becomes_user_oauth_at_its_issuer_only_when_nothing_else_is_usable() {
    let oidc = json!({"type": "openIdConnect",
        "openIdConnectUrl": "https://login.example.com/realms/acme/.well-known/openid-configuration"});
    let key = json!({"type": "apiKey", "in": "header", "name": "X-Key"});
    // Listed first, but an API key is usable: the key wins.
    let text = secured(
        json!({"oidc": oidc, "key": key}),
        json!([{"oidc": []}, {"key": []}]),
        &[("/items", "get", Value::Null)],
    );
    let imported = import(&text, &Options::default()).unwrap();
    assert_checks(&imported);
    assert_eq!(
        spec_of(&imported)["upstreams"]["api"]["auth"]["type"],
        "header"
    );
    // Alone, it is the upstream's auth.
    let text = secured(
        json!({"oidc": oidc}),
        json!([{"oidc": ["openid", "profile"]}]),
        &[("/items", "get", Value::Null)],
    );
    let imported = import(&text, &Options::default()).unwrap();
    assert_checks(&imported);
    let spec = spec_of(&imported);
    assert_eq!(
        spec["upstreams"]["api"]["auth"],
        json!({
            "type": "user_oauth",
            "issuer": "https://login.example.com/realms/acme",
            "issuer_env": "TEST_API_OIDC_ISSUER",
            "client_id": "test-api",
            "client_id_env": "TEST_API_OIDC_CLIENT_ID",
            "client_secret": "TEST_API_OIDC_CLIENT_SECRET",
            "scopes": ["openid", "profile"],
        })
    );
    // A discovery URL that names no issuer is not guessed at.
    let text = secured(
        json!({"oidc": {"type": "openIdConnect", "openIdConnectUrl": "https://login.example.com/oidc"}}),
        json!([{"oidc": []}]),
        &[("/items", "get", Value::Null)],
    );
    let imported = import(&text, &Options::default()).unwrap();
    assert_checks(&imported);
    assert!(spec_of(&imported)["upstreams"]["api"].get("auth").is_none());
    assert!(
        warnings(&imported).contains("does not end in /.well-known/openid-configuration"),
        "{}",
        warnings(&imported)
    );
}
