//! Code generation: deterministic, escaped, idempotent; the checked-in example crates are
//! exactly what the generator makes of their specs; user files are never overwritten.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

use bmm_generator::{GenerateError, RuntimeDependency, generate};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn generation_is_deterministic() {
    let spec = root().join("specs/weather.yaml");
    let (a, _) = bmm_generator::generate::render(&spec, &RuntimeDependency::Workspace).unwrap();
    let (b, _) = bmm_generator::generate::render(&spec, &RuntimeDependency::Workspace).unwrap();
    assert_eq!(a, b);
}

#[test]
fn checked_in_generated_crates_match_their_specs() {
    for entry in std::fs::read_dir(root().join("specs")).unwrap() {
        let spec = entry.unwrap().path();
        if spec.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let parsed = bmm_generator::spec::load(&spec).unwrap();
        let out = root().join("generated").join(&parsed.server.name.value);
        let outcome = generate(&spec, &out, &RuntimeDependency::Workspace, true).unwrap();
        assert!(
            outcome.changed.is_empty() && outcome.created.is_empty(),
            "{} is stale: {outcome:?}; run cargo xtask generate",
            out.display()
        );
    }
}

#[test]
fn regeneration_keeps_user_files_and_rewrites_generated_ones() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("demo.yaml");
    let text = std::fs::read_to_string(root().join("specs/weather.yaml")).unwrap();
    std::fs::write(&spec, &text).unwrap();
    let out = dir.path().join("crate");
    let first = generate(&spec, &out, &RuntimeDependency::Workspace, false).unwrap();
    // The tool, its module list and the state: the user's files (crate::layout).
    assert_eq!(first.created.len(), 3, "{first:?}");
    let user = out.join("src/tools/word_stats.rs");
    std::fs::write(&user, "// my own code\n").unwrap();
    std::fs::write(
        &spec,
        text.replace("Count words, sentences", "Count the words, sentences"),
    )
    .unwrap();
    let second = generate(&spec, &out, &RuntimeDependency::Workspace, false).unwrap();
    assert_eq!(
        std::fs::read_to_string(&user).unwrap(),
        "// my own code\n",
        "the user file is untouched"
    );
    assert!(second.created.is_empty());
    assert!(
        second
            .changed
            .iter()
            .any(|p| p.ends_with("src/generated/mod.rs")),
        "{second:?}"
    );
    let check = generate(&spec, &out, &RuntimeDependency::Workspace, true).unwrap();
    assert!(
        check.changed.is_empty(),
        "regenerated output is stable: {check:?}"
    );
}

#[test]
fn spec_text_reaches_generated_code_only_as_escaped_literals() {
    let hostile = r#""); std::process::exit(1); /* */ } fn evil() { //"#;
    let spec_text = format!(
        "server: {{ name: demo, version: 0.1.0, title: {hostile:?}, instructions: {hostile:?} }}\nauth: {{ scopes_supported: [a] }}\nresources:\n  - {{ uri: 'x://y', name: n, text: {hostile:?} }}\ntools:\n  - name: t\n    description: {hostile:?}\n    input:\n      type: object\n      properties:\n        {hostile:?}: {{ type: string, description: {hostile:?} }}\n    output: {{ type: object, properties: {{ r: {{ type: string }} }} }}\n    run: {{ rust: {{ fn: t }} }}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("hostile.yaml");
    std::fs::write(&spec, spec_text).unwrap();
    let (files, _) = bmm_generator::generate::render(&spec, &RuntimeDependency::Workspace).unwrap();
    for file in files.iter().filter(|f| f.path.ends_with(".rs")) {
        let parsed: syn::File = syn::parse_file(&file.contents)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", file.path, file.contents));
        let mut idents = Vec::new();
        collect_idents(quote::ToTokens::to_token_stream(&parsed), &mut idents);
        assert!(
            !idents.iter().any(|i| i == "evil" || i == "exit"),
            "{}: spec text became code",
            file.path
        );
    }
    let cargo = files.iter().find(|f| f.path == "Cargo.toml").unwrap();
    assert!(
        cargo.contents.lines().all(|l| !l.starts_with("fn ")),
        "{}",
        cargo.contents
    );
}

/// Issue 12 item 20: a bare CR (or another line separator or control character) in a
/// description, as a hostile OpenAPI document can carry, must not reach a `///` line,
/// which rustc rejects ("bare CR not allowed in doc-comment").
#[test]
fn doc_comments_normalise_line_endings_so_a_bare_cr_cannot_break_the_build() {
    // YAML escapes: the spec carries the raw characters after parsing.
    let nasty = r"first line\rsecond\r\nthird\u2028fourth\abell\vvt";
    let spec_text = format!(
        "server: {{ name: demo, version: 0.1.0 }}\nauth: {{ scopes_supported: [a] }}\ntools:\n  - name: t\n    description: \"{nasty}\"\n    input:\n      type: object\n      description: \"{nasty}\"\n      properties:\n        x: {{ type: string, description: \"{nasty}\" }}\n    output: {{ type: object, description: \"{nasty}\", properties: {{ r: {{ type: string, description: \"{nasty}\" }} }} }}\n    run: {{ rust: {{ fn: t }} }}\nprompts:\n  - name: p\n    description: \"{nasty}\"\n    fn: p\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("cr.yaml");
    std::fs::write(&spec, spec_text).unwrap();
    let (files, _) = bmm_generator::generate::render(&spec, &RuntimeDependency::Workspace).unwrap();
    let mut docs = 0;
    for file in files.iter().filter(|f| f.path.ends_with(".rs")) {
        // String literals carry `\r` escaped; a raw control character can only be in a
        // comment, where rustc refuses a bare CR.
        assert!(
            !file.contents.chars().any(|c| c.is_control() && c != '\n'),
            "{}: raw control character in the source",
            file.path
        );
        docs += file.contents.matches("fourth").count();
        syn::parse_file(&file.contents).unwrap_or_else(|e| panic!("{}: {e}", file.path));
    }
    assert!(docs > 0, "the descriptions reached doc comments");
}

/// The sibling of item 20 in `Cargo.toml`: a DEL (or another control character) in the
/// server's description must still make a valid TOML file.
#[test]
fn cargo_toml_description_escapes_every_control_character() {
    let spec_text = "server: { name: demo, version: 0.1.0, description: \"del\\x7Fbell\\a cr\\r\\\"quote\" }\nauth: { scopes_supported: [a] }\ntools:\n  - name: t\n    description: t\n    input: { type: object }\n    run: { rust: { fn: t } }\n";
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("del.yaml");
    std::fs::write(&spec, spec_text).unwrap();
    let (files, _) = bmm_generator::generate::render(&spec, &RuntimeDependency::Workspace).unwrap();
    let cargo = files.iter().find(|f| f.path == "Cargo.toml").unwrap();
    let parsed: toml::Table =
        toml::from_str(&cargo.contents).unwrap_or_else(|e| panic!("{e}\n{}", cargo.contents));
    assert_eq!(
        parsed["package"]["description"].as_str(),
        Some("del\u{7f}bell\u{7} cr\r\"quote")
    );
}

/// The spec's file name is written into comments of `Cargo.toml` and `README.md` and the
/// doc comments of Rust files: a newline in it must not start a TOML table of its own.
#[test]
fn a_spec_file_name_with_a_newline_cannot_inject_into_cargo_toml() {
    let spec_text = "server: { name: demo, version: 0.1.0 }\nauth: { scopes_supported: [a] }\ntools:\n  - name: t\n    description: t\n    input: { type: object }\n    run: { rust: { fn: t } }\n";
    let dir = tempfile::tempdir().unwrap();
    let spec = dir
        .path()
        .join("x\n[patch.crates-io]\nserde = { path = \"evil\" }\n#.yaml");
    std::fs::write(&spec, spec_text).unwrap();
    let (files, _) = bmm_generator::generate::render(&spec, &RuntimeDependency::Workspace).unwrap();
    let cargo = files.iter().find(|f| f.path == "Cargo.toml").unwrap();
    let parsed: toml::Table =
        toml::from_str(&cargo.contents).unwrap_or_else(|e| panic!("{e}\n{}", cargo.contents));
    assert!(!parsed.contains_key("patch"), "{}", cargo.contents);
    for file in &files {
        assert!(
            !file.contents.contains("\n[patch.crates-io]"),
            "{} carries the name's newline: {}",
            file.path,
            file.contents
        );
    }
}

/// Bidirectional formatting characters in spec text ("Trojan Source") never reach the
/// generated source (rustc refuses them in comments and literals), and a description with
/// more `#`s after a quote than a raw string can take still renders.
#[test]
fn hidden_direction_characters_and_long_hash_runs_render_safely() {
    let hashes = "#".repeat(300);
    let spec_text = format!(
        "server: {{ name: demo, version: 0.1.0 }}\nauth: {{ scopes_supported: [a] }}\ntools:\n  - name: t\n    description: \"abc \\u202E evil \\u2066x\\u2069\"\n    input:\n      type: object\n      properties:\n        q: {{ type: string, description: '\"{hashes} and \\u202E' }}\n    run: {{ rust: {{ fn: t }} }}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bidi\u{202E}.yaml");
    std::fs::write(&spec, spec_text).unwrap();
    let (files, _) = bmm_generator::generate::render(&spec, &RuntimeDependency::Workspace)
        .unwrap_or_else(|e| panic!("{e:?}"));
    for file in &files {
        let hidden = file.contents.chars().find(|c| {
            matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        });
        assert_eq!(hidden, None, "{} holds a bidi control", file.path);
    }
    let module = files
        .iter()
        .find(|f| f.path.ends_with("generated/mod.rs"))
        .unwrap();
    syn::parse_file(&module.contents).unwrap();
    assert!(module.contents.contains(&hashes), "the description is kept");
}

/// Issue 16: the OAuth upstream types become `UpstreamAuthDef::OAuth(&OAuthDef { .. })`
/// with the contract's client authentication mapping (none -> `None`, basic ->
/// `SecretBasic`, post -> `SecretPost`, private_key_jwt -> `PrivateKeyJwt`, defaulted from
/// the keys given), tools carry their `upstream_scopes`, `disconnect` becomes
/// `Handler::Disconnect`, spec text stays a literal, and a `user_oauth` upstream gives the
/// smoke test a throwaway vault.
#[test]
fn oauth_upstreams_emit_the_contract_shapes() {
    let hostile = r#"x"); std::process::exit(1); //"#;
    let spec_text = format!(
        r#"server: {{ name: demo, version: 0.1.0 }}
secrets:
  S: {{ description: client secret }}
  K: {{ description: PEM key }}
upstreams:
  te:
    base_url: https://te.example.com
    auth: {{ type: token_exchange, issuer: https://as.example.com/t, issuer_env: TE_ISSUER, client_id: {hostile:?}, private_key: K, audience: {hostile:?}, resource: https://te.example.com/, scopes: [a, b] }}
  cc:
    base_url: https://cc.example.com
    auth: {{ type: client_credentials, token_url: https://as.example.com/token, client_id: cc, client_id_env: CC_ID, client_secret: S, client_auth: client_secret_post }}
  pub:
    base_url: https://pub.example.com
    auth: {{ type: user_oauth, token_url: http://127.0.0.1:9/token, authorization_url: http://localhost:9/authorize, authorization_url_env: PUB_AUTHZ, client_id: pub }}
  conf:
    base_url: https://conf.example.com
    auth: {{ type: user_oauth, issuer: https://as.example.com, client_id: conf, client_secret: S, scopes: [repo] }}
tools:
  - name: t
    description: d
    input: {{ type: object }}
    run: {{ http: {{ upstream: te, method: GET, path: /x, upstream_scopes: [a] }} }}
  - name: u
    description: d
    input: {{ type: object }}
    run: {{ http: {{ upstream: cc, method: GET, path: /x }} }}
  - name: forget_pub
    description: Forget my connection
    input: {{ type: object }}
    run: {{ disconnect: pub }}
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("oauth.yaml");
    std::fs::write(&spec, &spec_text).unwrap();
    let (files, findings) = bmm_generator::generate::render(&spec, &RuntimeDependency::Workspace)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(findings.is_empty(), "{findings:?}");
    let file = |path: &str| files.iter().find(|f| f.path == path).unwrap();
    let module = file("src/generated/mod.rs");
    let parsed: syn::File = syn::parse_file(&module.contents).unwrap();
    let mut idents = Vec::new();
    collect_idents(quote::ToTokens::to_token_stream(&parsed), &mut idents);
    assert!(!idents.iter().any(|i| i == "exit"), "spec text became code");
    let flat: String = module.contents.split_whitespace().collect();
    for expected in [
        r#"UpstreamAuthDef::OAuth(&OAuthDef{grant:OAuthGrant::TokenExchange,issuer:Some("https://as.example.com/t"),issuer_env:Some("TE_ISSUER"),token_url:None,token_url_env:None,authorization_url:None,authorization_url_env:None,client_id:"x\");std::process::exit(1);//",client_id_env:None,client_auth:ClientAuthDef::PrivateKeyJwt{key:"K"},audience:Some("x\");std::process::exit(1);//"),resource:Some("https://te.example.com/"),scopes:&["a","b"],})"#,
        r#"grant:OAuthGrant::ClientCredentials,issuer:None,issuer_env:None,token_url:Some("https://as.example.com/token"),"#,
        r#"client_id:"cc",client_id_env:Some("CC_ID"),client_auth:ClientAuthDef::SecretPost{secret:"S"},audience:None,resource:None,scopes:&[],"#,
        r#"grant:OAuthGrant::UserAuthorization,issuer:None,issuer_env:None,token_url:Some("http://127.0.0.1:9/token"),token_url_env:None,authorization_url:Some("http://localhost:9/authorize"),authorization_url_env:Some("PUB_AUTHZ"),client_id:"pub",client_id_env:None,client_auth:ClientAuthDef::None,"#,
        r#"client_id:"conf",client_id_env:None,client_auth:ClientAuthDef::SecretBasic{secret:"S"},audience:None,resource:None,scopes:&["repo"],"#,
        r#"response_map:&[],upstream_scopes:&["a"],"#,
        r#"handler:Handler::Disconnect("pub"),"#,
    ] {
        assert!(flat.contains(expected), "{expected}\n{}", module.contents);
    }
    assert!(
        flat.contains(r#"response_map:&[],upstream_scopes:&[],"#),
        "a tool without upstream_scopes asks for the upstream's"
    );
    let smoke = file("tests/smoke.rs");
    assert!(
        smoke.contents.contains("BMM_VAULT_KEY"),
        "{}",
        smoke.contents
    );
    assert!(
        smoke.contents.contains("CARGO_TARGET_TMPDIR"),
        "{}",
        smoke.contents
    );
    // Without a `user_oauth` upstream, no vault.
    let weather = root().join("specs/weather.yaml");
    let (files, _) =
        bmm_generator::generate::render(&weather, &RuntimeDependency::Workspace).unwrap();
    let smoke = files.iter().find(|f| f.path == "tests/smoke.rs").unwrap();
    assert!(!smoke.contents.contains("BMM_VAULT"), "{}", smoke.contents);
}

fn collect_idents(tokens: proc_macro2::TokenStream, out: &mut Vec<String>) {
    for t in tokens {
        match t {
            proc_macro2::TokenTree::Ident(i) => out.push(i.to_string()),
            proc_macro2::TokenTree::Group(g) => collect_idents(g.stream(), out),
            _ => {}
        }
    }
}

#[test]
fn invalid_specs_generate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("crate");
    let bad = root().join("generator/tests/bad_specs/undeclared-upstream.yaml");
    match generate(&bad, &out, &RuntimeDependency::Workspace, false) {
        Err(GenerateError::Invalid(d)) => assert!(d[0].message.contains("not declared")),
        other => panic!("{other:?}"),
    }
    assert!(!out.exists());
}

#[test]
fn bmm_new_writes_a_starter_spec_that_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("my-shop.yaml");
    let text = bmm_generator::starter_spec("my-shop", "my-shop.yaml").unwrap();
    std::fs::write(&path, &text).unwrap();
    let (spec, findings) = bmm_generator::spec::check_file(&path).unwrap();
    assert!(findings.is_empty(), "{findings:?}");
    assert_eq!(spec.server.name.value, "my-shop");
    assert_eq!(spec.tools.len(), 1);
    for bad in ["My Shop", "shop\nserver: x", "", "-shop", "shop_1"] {
        assert!(
            bmm_generator::starter_spec(bad, "x.yaml").is_err(),
            "{bad:?}"
        );
    }
}

/// Makes the generated crate at `out` its own workspace with this workspace's dev profile
/// for dependencies, so its build reuses the artifacts already in the shared target dir.
fn standalone(out: &Path) {
    let manifest = out.join("Cargo.toml");
    let mut cargo_toml = std::fs::read_to_string(&manifest).unwrap();
    assert!(
        !cargo_toml.contains("[workspace]"),
        "generated Cargo.toml already declares a workspace"
    );
    cargo_toml.push_str("\n[workspace]\n\n[profile.dev.package.\"*\"]\nopt-level = 1\n");
    std::fs::write(manifest, cargo_toml).unwrap();
}

/// A spec edit that renames an argument breaks the user's function, and the compiler says
/// so in the user's file, which regeneration left untouched. Builds a copy of
/// `generated/notes` (its own workspace, sharing this workspace's target directory and
/// lock file, so only the two small crates are checked).
#[test]
fn a_schema_change_that_breaks_a_user_function_is_a_compile_error_in_that_file() {
    let root = root();
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("notes.yaml");
    let spec = std::fs::read_to_string(root.join("specs/notes.yaml")).unwrap();
    std::fs::write(&spec_path, &spec).unwrap();
    let out = dir.path().join("notes");
    let runtime =
        bmm_generator::RuntimeDependency::Path(root.join("runtime").display().to_string());
    bmm_generator::generate(&spec_path, &out, &runtime, false).unwrap();
    for entry in std::fs::read_dir(root.join("generated/notes/src/tools")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, out.join("src/tools").join(path.file_name().unwrap())).unwrap();
    }
    // The note store the tools share.
    std::fs::copy(
        root.join("generated/notes/src/state.rs"),
        out.join("src/state.rs"),
    )
    .unwrap();
    standalone(&out);
    std::fs::copy(root.join("Cargo.lock"), out.join("Cargo.lock")).unwrap();
    let check = || {
        Command::new(env!("CARGO"))
            .args(["check", "--offline", "--quiet", "--message-format=short"])
            .env("CARGO_TARGET_DIR", root.join("target"))
            .current_dir(&out)
            .output()
            .unwrap()
    };
    let before = check();
    assert!(
        before.status.success(),
        "the copy must build before the edit: {}",
        String::from_utf8_lossy(&before.stderr)
    );

    let user_file = out.join("src/tools/add_note.rs");
    let user_text = std::fs::read(&user_file).unwrap();
    let edited = spec
        .replace(
            "        title: { type: string, minLength: 1",
            "        heading: { type: string, minLength: 1",
        )
        .replace("required: [title, text]", "required: [heading, text]");
    assert_ne!(edited, spec, "the edit must change the spec");
    std::fs::write(&spec_path, edited).unwrap();
    bmm_generator::generate(&spec_path, &out, &runtime, false).unwrap();
    // Regeneration rewrote Cargo.toml; without the same profile the second check would
    // rebuild every dependency at another opt-level (minutes and gigabytes of target dir).
    standalone(&out);
    assert_eq!(
        std::fs::read(&user_file).unwrap(),
        user_text,
        "user file rewritten"
    );

    let after = check();
    let stderr = String::from_utf8_lossy(&after.stderr);
    assert!(!after.status.success(), "the broken user function compiled");
    assert!(
        stderr.contains("tools/add_note.rs") && stderr.contains("no field `title`"),
        "the error must point at the user's file and the renamed field: {stderr}"
    );
}
