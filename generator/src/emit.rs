//! Rendering a validated spec into the files of a server crate.
//!
//! Rust code is built with `quote!` (every spec string becomes an escaped literal) and
//! formatted with prettyplease; crate files come from askama templates. Output is a pure
//! function of the spec: the same spec gives the same bytes.

use askama::Template;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use serde_json::Value;

use crate::layout;
use crate::names::pascal;
use crate::rust_types::TypeSpace;
use crate::spec::model::{
    Body, BodyFormat, ClientAuth, HttpMethod, Run, Spanned, Spec, TaskSupport, UpstreamAuth,
    UpstreamAuthKind,
};

/// One file of the generated crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Path relative to the crate root.
    pub path: String,
    /// Contents.
    pub contents: String,
    /// Created once and never overwritten (the user's code).
    pub user_owned: bool,
}

/// How the generated crate depends on bmm-runtime.
#[derive(Debug, Clone)]
pub enum RuntimeDependency {
    /// `{ workspace = true }` (crates inside the bmm workspace).
    Workspace,
    /// `{ path = "..." }`.
    Path(String),
    /// `"<version>"`.
    Version(String),
}

impl RuntimeDependency {
    fn toml(&self) -> String {
        match self {
            Self::Workspace => "{ workspace = true }".to_owned(),
            Self::Path(p) => format!("{{ path = {} }}", toml_string(p)),
            Self::Version(v) => toml_string(v),
        }
    }

    /// The same dependency with the `testing` feature (the generated smoke test).
    fn toml_testing(&self) -> String {
        match self {
            Self::Workspace => "{ workspace = true, features = [\"testing\"] }".to_owned(),
            Self::Path(p) => format!("{{ path = {}, features = [\"testing\"] }}", toml_string(p)),
            Self::Version(v) => format!(
                "{{ version = {}, features = [\"testing\"] }}",
                toml_string(v)
            ),
        }
    }
}

/// A TOML basic string. JSON string syntax is a subset of it, except that TOML also
/// forbids a raw DEL (U+007F), which JSON leaves as it is: escaped here.
/// Bidirectional formatting characters are escaped too: the file must read as it parses.
fn toml_string(text: &str) -> String {
    let json = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c == '\u{7f}' || is_bidi_control(c) {
            out.push_str(&format!("\\u{:04X}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Template)]
#[template(path = "Cargo.toml.txt", escape = "none")]
struct CargoToml<'a> {
    spec_file: &'a str,
    crate_name: String,
    version: String,
    description: String,
    runtime_dependency: String,
    runtime_dependency_testing: String,
}

#[derive(Template)]
#[template(path = "README.md.txt", escape = "none")]
struct Readme<'a> {
    spec_file: &'a str,
    crate_name: &'a str,
    title: String,
    description: String,
    secrets: Vec<(String, String)>,
    /// OAuth upstreams: id, how the token is obtained, environment overrides.
    oauth_upstreams: Vec<(String, &'static str, String)>,
    /// Some upstream is `user_oauth`: the token vault.
    vault: bool,
    tools: Vec<(String, String, String)>,
}

#[derive(Template)]
#[template(path = "starter.yaml.txt", escape = "none")]
struct Starter<'a> {
    name: &'a str,
    title: String,
    file: &'a str,
}

/// The commented starter spec of `bmm new`. `name` must be a valid server name (it is
/// written into YAML unquoted, so nothing else is accepted).
pub fn starter_spec(name: &str, file: &str) -> Result<String, String> {
    if !bmm_core::is_server_name(name) {
        return Err(format!(
            "`{}` is not a server name: use {}",
            name.escape_default(),
            bmm_core::server_name::SERVER_NAME_RULE
        ));
    }
    let title = name
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ");
    // The file name lands in YAML comments only; keep it on one line.
    let file = file.replace(['\n', '\r'], " ");
    Starter {
        name,
        title,
        file: &file,
    }
    .render()
    .map_err(|e| e.to_string())
}

/// Markdown table cells: one line, no pipes, no raw HTML.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
        .replace('<', "&lt;")
}

/// The README's rows for OAuth upstreams: id, how the token is obtained, and the
/// environment variables that override the spec's URLs and client id.
fn oauth_upstreams(spec: &Spec) -> Vec<(String, &'static str, String)> {
    spec.upstreams
        .iter()
        .filter_map(|(id, u)| {
            let u = &u.value;
            let a = u.auth.as_ref().filter(|a| a.kind.value.is_oauth())?;
            let how = match a.kind.value {
                UpstreamAuthKind::TokenExchange => {
                    "token exchange (RFC 8693): the caller's token, exchanged for one naming the caller"
                }
                UpstreamAuthKind::ClientCredentials => {
                    "client credentials: the server's own token, the same for every caller"
                }
                _ => "the caller's own connection (authorization code + PKCE in their browser)",
            };
            let env = [
                &u.base_url_env,
                &a.issuer_env,
                &a.token_url_env,
                &a.authorization_url_env,
                &a.client_id_env,
            ]
            .into_iter()
            .flatten()
            .map(|e| format!("`{}`", cell(&e.value)))
            .collect::<Vec<_>>()
            .join(" ");
            Some((cell(id), how, env))
        })
        .collect()
}

/// Whether some upstream is `user_oauth` (the server opens its token vault).
fn uses_vault(spec: &Spec) -> bool {
    spec.upstreams.values().any(|u| {
        u.value
            .auth
            .as_ref()
            .is_some_and(|a| a.kind.value == UpstreamAuthKind::UserOauth)
    })
}

/// Renders every file of the crate for `spec` (already validated).
pub fn render(
    spec: &Spec,
    spec_file: &str,
    runtime: &RuntimeDependency,
) -> Result<Vec<File>, String> {
    let name = &spec.server.name.value;
    let description = spec
        .server
        .description
        .clone()
        .unwrap_or_else(|| format!("The {name} MCP server, generated by bmm."));
    let cargo = CargoToml {
        spec_file,
        crate_name: toml_string(name),
        version: toml_string(&spec.server.version.value),
        description: toml_string(&description),
        runtime_dependency: runtime.toml(),
        runtime_dependency_testing: runtime.toml_testing(),
    }
    .render()
    .map_err(|e| e.to_string())?;
    let readme = Readme {
        spec_file,
        crate_name: name,
        title: cell(spec.server.title.as_deref().unwrap_or(name)),
        description: description.replace('<', "&lt;"),
        secrets: spec
            .secrets
            .iter()
            .map(|(k, v)| (k.clone(), cell(&v.value.description)))
            .collect(),
        oauth_upstreams: oauth_upstreams(spec),
        vault: uses_vault(spec),
        tools: spec
            .tools
            .iter()
            .map(|t| {
                let scopes = t
                    .scopes
                    .iter()
                    .map(|s| format!("`{}`", cell(&s.value)))
                    .collect::<Vec<_>>()
                    .join(" ");
                (cell(&t.name.value), scopes, cell(&t.description.value))
            })
            .collect(),
    }
    .render()
    .map_err(|e| e.to_string())?
    // Markdown shows no escapes: hidden direction changes are dropped.
    .replace(is_bidi_control, "");
    // The modules of the user's Rust tools and prompts (crate::layout, rule 2).
    let rust_tools: Vec<&str> = spec
        .tools
        .iter()
        .filter_map(|t| match &t.run.value {
            Run::Rust(r) => Some(
                r.function
                    .as_ref()
                    .map_or(t.name.value.as_str(), |f| f.value.as_str()),
            ),
            Run::Http(_) | Run::Disconnect(_) => None,
        })
        .collect();
    let rust_prompts: Vec<&str> = spec
        .prompts
        .iter()
        .filter_map(|p| p.function.as_ref().map(|f| f.value.as_str()))
        .collect();
    let mut files = vec![
        File {
            path: "Cargo.toml".to_owned(),
            contents: cargo,
            user_owned: false,
        },
        File {
            path: "README.md".to_owned(),
            contents: readme,
            user_owned: false,
        },
        File {
            path: "src/main.rs".to_owned(),
            contents: rust_file(layout::main_rs(
                spec_file,
                !rust_tools.is_empty(),
                !rust_prompts.is_empty(),
            ))?,
            user_owned: false,
        },
        File {
            path: "tests/smoke.rs".to_owned(),
            contents: rust_file(smoke_test(spec, spec_file))?,
            user_owned: false,
        },
        File {
            path: "src/generated/mod.rs".to_owned(),
            contents: rust_file(generated_mod(spec, spec_file)?)?,
            user_owned: false,
        },
    ];
    for p in &spec.prompts {
        if let Some(f) = &p.function {
            let description = p.description.as_deref().unwrap_or(&p.name.value);
            files.push(File {
                path: format!("src/prompts/{}.rs", f.value),
                contents: rust_file(prompt_stub(&f.value, &p.name.value, description))?,
                user_owned: true,
            });
        }
    }
    for tool in &spec.tools {
        if let Run::Rust(rust) = &tool.run.value
            && let Some(f) = &rust.function
        {
            files.push(File {
                path: format!("src/tools/{}.rs", f.value),
                contents: rust_file(user_stub(
                    &f.value,
                    &tool.name.value,
                    &tool.description.value,
                    tool.output.is_some(),
                ))?,
                user_owned: true,
            });
        }
    }
    files.push(File {
        path: "src/state.rs".to_owned(),
        contents: rust_file(layout::state_rs())?,
        user_owned: true,
    });
    if !rust_tools.is_empty() {
        files.push(File {
            path: "src/tools/mod.rs".to_owned(),
            contents: rust_file(layout::modules_rs("tool", &rust_tools))?,
            user_owned: true,
        });
    }
    if !rust_prompts.is_empty() {
        files.push(File {
            path: "src/prompts/mod.rs".to_owned(),
            contents: rust_file(layout::modules_rs("prompt", &rust_prompts))?,
            user_owned: true,
        });
    }
    rustfmt_all(&mut files);
    Ok(files)
}

fn rust_file(tokens: TokenStream) -> Result<String, String> {
    layout::unparse_spaced(&tokens)
        .map_err(|e| format!("internal error: generated code does not parse: {e}"))
}

/// Runs rustfmt over prettyplease's output of every `.rs` file, so generated crates pass
/// `cargo fmt --check` as workspace members. One rustfmt process formats them all (one
/// per file cost 85 % of generating a 500-tool spec); every file must be reachable from a
/// crate root (`src/main.rs`, `src/lib.rs`, `tests/*.rs`). Without rustfmt, or if it fails,
/// the prettyplease output is kept (still valid, still deterministic for a toolchain).
fn rustfmt_all(files: &mut [File]) {
    let rust: Vec<usize> = (0..files.len())
        .filter(|&i| files[i].path.ends_with(".rs"))
        .collect();
    if rust.is_empty() {
        return;
    }
    let Ok(dir) = tempfile::Builder::new().prefix("bmm-fmt-").tempdir() else {
        return;
    };
    // The crate's own layout: rustfmt follows `mod` declarations (`#[path]` included) from
    // the files it is given, and they must resolve.
    let paths: Vec<std::path::PathBuf> = rust
        .iter()
        .map(|&i| dir.path().join(&files[i].path))
        .collect();
    for (&i, path) in rust.iter().zip(&paths) {
        let written = path
            .parent()
            .is_some_and(|parent| std::fs::create_dir_all(parent).is_ok())
            && std::fs::write(path, &files[i].contents).is_ok();
        if !written {
            return;
        }
    }
    // Only the crate roots are named: rustfmt formats the modules they declare, and naming
    // those too would format each of them twice.
    let roots = rust
        .iter()
        .zip(&paths)
        .filter(|&(&i, _)| {
            let path = &files[i].path;
            path == "src/main.rs" || path == "src/lib.rs" || path.starts_with("tests/")
        })
        .map(|(_, path)| path);
    let status = std::process::Command::new(
        std::env::var("RUSTFMT").unwrap_or_else(|_| "rustfmt".to_owned()),
    )
    .args(["--edition", "2024", "--quiet"])
    .args(roots)
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .status();
    if !status.is_ok_and(|s| s.success()) {
        return;
    }
    for (&i, path) in rust.iter().zip(&paths) {
        if let Ok(formatted) = std::fs::read_to_string(path)
            && !formatted.is_empty()
        {
            files[i].contents = formatted;
        }
    }
}

/// `tests/smoke.rs`: the binary on a real socket behind the auth layer, both eras.
fn smoke_test(spec: &Spec, spec_file: &str) -> TokenStream {
    let doc = layout::bmm_doc(
        "Smoke test of the server binary (see `bmm_runtime::testing`).",
        spec_file,
    );
    let env_name = format!("CARGO_BIN_EXE_{}", spec.server.name.value);
    let mut secrets: Vec<TokenStream> = spec
        .secrets
        .keys()
        .map(|k| quote!((#k, "smoke-test-secret")))
        .collect();
    // A `user_oauth` upstream makes the server open its token vault at start-up: a key (32
    // bytes, base64; known, since it guards nothing) and a file under cargo's scratch dir.
    let vault = uses_vault(spec);
    let secrets_doc = if vault {
        " The secrets it needs, with stand-in values, and a throwaway token vault."
    } else {
        " The secrets it needs, with stand-in values."
    };
    if vault {
        secrets.push(quote!((
            "BMM_VAULT_KEY",
            "Ym1tIHNtb2tlIHRlc3Q6IG5vdCBhIHJlYWwga2V5ISE="
        )));
        secrets.push(quote!((
            "BMM_VAULT",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/smoke-vault.sqlite")
        )));
        // The connect pages' identity check needs the server's client id at its own
        // authorization server (start-up refuses without it); nothing is fetched at start.
        secrets.push(quote!((
            "BMM_CONNECT_CLIENT_ID",
            "smoke-test-connect-client"
        )));
    }
    let tools = spec.tools.iter().map(|t| t.name.value.as_str());
    let scoped = match spec.tools.iter().find_map(|t| {
        t.scopes
            .first()
            .map(|s| (t.name.value.as_str(), s.value.as_str()))
    }) {
        Some((tool, scope)) => quote!(Some((#tool, #scope))),
        None => quote!(None),
    };
    quote! {
        #doc

        /// The server binary.
        const BINARY: &str = env!(#env_name);
        #[doc = #secrets_doc]
        const SECRETS: &[(&str, &str)] = &[#(#secrets),*];
        /// The tools the spec declares, in order.
        const TOOLS: &[&str] = &[#(#tools),*];

        #[test]
        fn serves_both_protocol_eras_behind_the_auth_layer() {
            let report = bmm_runtime::testing::smoke(BINARY, SECRETS).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(report.legacy_tools, TOOLS);
            assert_eq!(report.stateless_tools, TOOLS);
        }

        #[test]
        fn refuses_every_forged_token() {
            let cases = bmm_runtime::testing::forged_token_matrix(BINARY, SECRETS, #scoped)
                .unwrap_or_else(|e| panic!("{e}"));
            for case in &cases {
                println!("{:<45} {} {}", case.name, case.status, case.challenge);
            }
        }

        #[test]
        fn serves_the_same_tools_over_stdio() {
            let tools = bmm_runtime::testing::smoke_stdio(BINARY, SECRETS).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(tools, TOOLS);
        }
    }
}

fn opt_str(value: Option<&str>) -> TokenStream {
    match value {
        Some(v) => quote!(Some(#v)),
        None => quote!(None),
    }
}

fn opt_bool(value: Option<bool>) -> TokenStream {
    match value {
        Some(v) => quote!(Some(#v)),
        None => quote!(None),
    }
}

/// A JSON Schema as a pretty-printed raw string literal (`r#"..."#`, with more `#`s than
/// any `"#...` run in the text, so nothing in it can end the literal early). Objects keep
/// the spec's property order (serde_json's `preserve_order`).
fn schema_literal(schema: &Value) -> Result<TokenStream, String> {
    let pretty = serde_json::to_string_pretty(schema).map_err(|e| e.to_string())?;
    // Bidirectional formatting characters can only sit inside JSON strings: written as
    // `\uXXXX` escapes, the JSON value is the same and the source shows no hidden text.
    let mut text = String::with_capacity(pretty.len());
    for c in pretty.chars() {
        if is_bidi_control(c) {
            text.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            text.push(c);
        }
    }
    let mut longest = 0;
    for (i, _) in text.match_indices('"') {
        let run = text[i + 1..].bytes().take_while(|&b| b == b'#').count();
        longest = longest.max(run);
    }
    if longest >= 255 {
        // A raw string takes at most 255 `#`s: an escaped literal then.
        let literal = proc_macro2::Literal::string(&text);
        return Ok(quote!(#literal));
    }
    let hashes = "#".repeat(longest + 1);
    format!("r{hashes}\"{text}\"{hashes}")
        .parse::<proc_macro2::Literal>()
        .map(|literal| quote!(#literal))
        .map_err(|e| format!("internal error: schema literal: {e}"))
}

fn generated_mod(spec: &Spec, spec_file: &str) -> Result<TokenStream, String> {
    let doc = layout::bmm_doc(
        "The server definition, as the spec describes it.",
        spec_file,
    );
    let s = &spec.server;
    let name = s.name.value.as_str();
    let version = s.version.value.as_str();
    let title = opt_str(s.title.as_deref());
    let instructions = opt_str(s.instructions.as_deref());
    let scopes_supported: Vec<&str> = spec
        .auth
        .scopes_supported
        .iter()
        .map(|s| s.value.as_str())
        .collect();
    let required: Vec<&str> = spec
        .auth
        .required
        .iter()
        .map(|s| s.value.as_str())
        .collect();
    let hierarchy = spec.auth.hierarchy.iter().map(|(broader, narrower)| {
        let narrower: Vec<&str> = narrower.iter().map(|s| s.value.as_str()).collect();
        quote!((#broader, &[#(#narrower),*]))
    });
    let secrets = spec.secrets.iter().map(|(n, d)| {
        let description = d.value.description.as_str();
        quote!(SecretDef { name: #n, description: #description })
    });
    let upstreams = spec.upstreams.iter().map(|(id, u)| {
        let u = &u.value;
        let base = u.base_url.value.as_str();
        let env = opt_str(u.base_url_env.as_ref().map(|e| e.value.as_str()));
        let auth = match &u.auth {
            None => quote!(None),
            Some(a) => {
                let auth = upstream_auth(a);
                quote!(Some(#auth))
            }
        };
        let hosts: Vec<&str> = u.allow_hosts.iter().map(|h| h.value.as_str()).collect();
        let timeout = u.timeout_ms.as_ref().map_or(15_000, |t| t.value);
        let retries = u.max_retries.as_ref().map_or(2, |r| r.value);
        quote! {
            UpstreamDef { id: #id, base_url: #base, base_url_env: #env, auth: #auth, allow_hosts: &[#(#hosts),*], timeout_ms: #timeout, max_retries: #retries }
        }
    });
    let with_state = layout::ctx_with_state();
    // Every tool's root type names, reserved before any nested type is named.
    let roots: Vec<syn::Ident> = spec
        .tools
        .iter()
        .filter(|t| matches!(t.run.value, Run::Rust(_)))
        .flat_map(|t| {
            let base = pascal(&t.name.value);
            let output = t.output.as_ref().map(|_| format_ident!("{base}Output"));
            std::iter::once(format_ident!("{base}Input")).chain(output)
        })
        .collect();
    let mut types = TypeSpace::new(&roots);
    let mut tools = Vec::new();
    for tool in &spec.tools {
        let tname = tool.name.value.as_str();
        let ttitle = opt_str(tool.title.as_deref());
        let tdesc = tool.description.value.as_str();
        let input = schema_literal(&tool.input.value)?;
        let output = match &tool.output {
            Some(o) => {
                let text = schema_literal(&o.value)?;
                quote!(Some(#text))
            }
            None => quote!(None),
        };
        let a = tool.annotations.as_ref();
        let (ro, de, id, ow) = (
            opt_bool(a.and_then(|a| a.read_only)),
            opt_bool(a.and_then(|a| a.destructive)),
            opt_bool(a.and_then(|a| a.idempotent)),
            opt_bool(a.and_then(|a| a.open_world)),
        );
        let scopes: Vec<&str> = tool.scopes.iter().map(|s| s.value.as_str()).collect();
        let task = match tool.task {
            TaskSupport::Forbidden => quote!(TaskSupport::Forbidden),
            TaskSupport::Optional => quote!(TaskSupport::Optional),
            TaskSupport::Required => quote!(TaskSupport::Required),
        };
        // `bmm check` refused a rate it cannot parse, so `None` here is "no limit".
        let rate_limit = match tool
            .rate_limit
            .as_ref()
            .and_then(|r| bmm_core::Rate::parse(&r.value).ok())
        {
            Some(rate) => {
                let count = proc_macro2::Literal::u32_unsuffixed(rate.count());
                let per_secs = proc_macro2::Literal::u32_unsuffixed(rate.per_secs());
                quote!(Some(RateLimitDef { count: #count, per_secs: #per_secs }))
            }
            None => quote!(None),
        };
        let handler = match &tool.run.value {
            Run::Http(h) => {
                let upstream = h.upstream.value.as_str();
                let method = match h.method {
                    HttpMethod::GET => quote!(Method::Get),
                    HttpMethod::POST => quote!(Method::Post),
                    HttpMethod::PUT => quote!(Method::Put),
                    HttpMethod::PATCH => quote!(Method::Patch),
                    HttpMethod::DELETE => quote!(Method::Delete),
                };
                let path = h.path.value.as_str();
                let query = h.query.iter().map(|(k, v)| {
                    let v = v.value.as_str();
                    quote!((#k, #v))
                });
                let headers = h.headers.iter().map(|(k, v)| {
                    let v = v.value.as_str();
                    quote!((#k, #v))
                });
                let body = match h.body.as_ref().map(|b| &b.value) {
                    None => quote!(BodyDef::None),
                    Some(Body::Keyword(_)) => quote!(BodyDef::Rest),
                    Some(Body::Fields(f)) => quote!(BodyDef::Fields(&[#(#f),*])),
                    Some(Body::Whole(w)) => {
                        let f = &w.field;
                        quote!(BodyDef::Field(#f))
                    }
                };
                let body_format = match h.body_format.as_ref().map(|f| f.value) {
                    Some(BodyFormat::Form) => quote!(BodyFormat::Form),
                    Some(BodyFormat::Json) | None => quote!(BodyFormat::Json),
                };
                let upstream_scopes: Vec<&str> =
                    h.upstream_scopes.iter().map(|s| s.value.as_str()).collect();
                let map = h.response.iter().flat_map(|r| r.map.iter()).map(|(k, v)| {
                    let v = v.value.as_str();
                    quote!((#k, #v))
                });
                quote! {
                    Handler::Http(HttpDef { upstream: #upstream, method: #method, path: #path, query: &[#(#query),*], headers: &[#(#headers),*], body: #body, body_format: #body_format, response_map: &[#(#map),*], upstream_scopes: &[#(#upstream_scopes),*] })
                }
            }
            Run::Disconnect(upstream) => {
                let upstream = upstream.value.as_str();
                quote!(Handler::Disconnect(#upstream))
            }
            Run::Rust(r) => {
                let f = r.function.as_ref().map_or(tname, |f| f.value.as_str());
                let module = format_ident!("{}", f);
                let input_ty = format_ident!("{}Input", pascal(tname));
                types.add_root(
                    &input_ty,
                    &tool.input.value,
                    &format!("Arguments of the `{tname}` tool."),
                );
                let call = if let Some(o) = &tool.output {
                    let output_ty = format_ident!("{}Output", pascal(tname));
                    types.add_root(
                        &output_ty,
                        &o.value,
                        &format!("Result of the `{tname}` tool."),
                    );
                    quote! {
                        let output = crate::tools::#module::#module(&ctx, input).await?;
                        ToolOutput::json(&output)
                    }
                } else {
                    quote!(crate::tools::#module::#module(&ctx, input).await)
                };
                quote! {
                    Handler::Rust(Arc::new(|ctx, args| {
                        Box::pin(async move {
                            let input: types::#input_ty = bmm_runtime::serde_json::from_value(args)
                                .map_err(|e| ToolError::new(format!("invalid arguments: {e}")))?;
                            #with_state
                            #call
                        })
                    }))
                }
            }
        };
        tools.push(quote! {
            ToolDef {
                name: #tname,
                title: #ttitle,
                description: #tdesc,
                input_schema: #input,
                output_schema: #output,
                annotations: AnnotationsDef { read_only: #ro, destructive: #de, idempotent: #id, open_world: #ow },
                scopes: &[#(#scopes),*],
                task: #task,
                rate_limit: #rate_limit,
                handler: #handler,
            }
        });
    }
    let resources = spec.resources.iter().filter_map(|r| {
        let uri = r.uri.as_ref()?.value.as_str();
        let rname = r.name.value.as_str();
        let rtitle = opt_str(r.title.as_deref());
        let rdesc = opt_str(r.description.as_deref());
        let mime = opt_str(r.mime_type.as_deref());
        let subscribable = r.subscribe;
        let content = match (&r.text, &r.blob) {
            (Some(t), _) => {
                let t = t.value.as_str();
                quote!(ResourceContent::Text(#t))
            }
            (None, Some(b)) => {
                let b: String = b.value.chars().filter(|c| !c.is_whitespace()).collect();
                quote!(ResourceContent::Blob(#b))
            }
            (None, None) => return None,
        };
        Some(quote!(ResourceDef { uri: #uri, name: #rname, title: #rtitle, description: #rdesc, mime_type: #mime, content: #content, subscribable: #subscribable }))
    });
    let resource_templates = spec.resources.iter().filter_map(|r| {
        let template = r.uri_template.as_ref()?.value.as_str();
        let rname = r.name.value.as_str();
        let rtitle = opt_str(r.title.as_deref());
        let rdesc = opt_str(r.description.as_deref());
        let mime = opt_str(r.mime_type.as_deref());
        let text = r.text.as_ref()?.value.as_str();
        let completions = r.completions.iter().map(|(var, values)| quote!((#var, &[#(#values),*])));
        Some(quote!(ResourceTemplateDef { uri_template: #template, name: #rname, title: #rtitle, description: #rdesc, mime_type: #mime, text: #text, completions: &[#(#completions),*] }))
    });
    let prompts: Vec<TokenStream> = spec.prompts.iter().map(|p| {
        let pname = p.name.value.as_str();
        let ptitle = opt_str(p.title.as_deref());
        let pdesc = opt_str(p.description.as_deref());
        let args = p.arguments.iter().map(|a| {
            let n = a.name.value.as_str();
            let d = opt_str(a.description.as_deref());
            let r = a.required;
            let c = &a.completions;
            quote!(PromptArgumentDef { name: #n, description: #d, required: #r, completions: &[#(#c),*] })
        });
        let messages = p.messages.iter().filter_map(|m| {
            let assistant = matches!(m.role, crate::spec::model::Role::Assistant);
            let content = if let Some(t) = &m.text {
                let t = t.value.as_str();
                quote!(PromptContent::Text(#t))
            } else if let Some(r) = &m.resource {
                let r = r.value.as_str();
                quote!(PromptContent::Resource(#r))
            } else {
                let image = m.image.as_ref()?;
                let data = image.data.value.as_str();
                let mime = image.mime_type.as_str();
                quote!(PromptContent::Image(#data, #mime))
            };
            Some(quote!(PromptMessageDef { assistant: #assistant, content: #content }))
        });
        let handler = match &p.function {
            None => quote!(None),
            Some(f) => {
                let module = format_ident!("{}", f.value);
                quote!(Some(Arc::new(|ctx, args| Box::pin(async move { #with_state crate::prompts::#module::#module(&ctx, args).await }))))
            }
        };
        quote!(PromptDef { name: #pname, title: #ptitle, description: #pdesc, arguments: &[#(#args),*], messages: &[#(#messages),*], handler: #handler })
    }).collect();
    let uses_rust = !roots.is_empty();
    let types = types.into_items();
    let uses_arc = uses_rust || spec.prompts.iter().any(|p| p.function.is_some());
    let arc_import = uses_arc.then(|| {
        quote!(
            use std::sync::Arc;
        )
    });
    let uses_output = spec
        .tools
        .iter()
        .any(|t| matches!(t.run.value, Run::Rust(_)) && t.output.is_some());
    let rust_imports = match (uses_rust, uses_output) {
        (false, _) => None,
        (true, false) => Some(quote!(
            use bmm_runtime::ToolError;
        )),
        (true, true) => Some(quote!(
            use bmm_runtime::{ToolError, ToolOutput};
        )),
    };
    let ctx_alias = uses_arc.then(layout::ctx_alias);
    let types_mod = uses_rust.then(|| {
        quote! {
            /// Typed arguments and results of the Rust tools, from the spec's JSON Schemas.
            // A tool may ignore some of its arguments or never produce some values, and
            // variant names come from the spec's values.
            #[allow(dead_code, clippy::enum_variant_names, clippy::large_enum_variant)]
            pub(crate) mod types {
                #(#types)*
            }
        }
    });
    Ok(quote! {
        #doc

        #arc_import

        #rust_imports
        #[allow(unused_imports)]
        use bmm_runtime::def::*;
        use bmm_runtime::ServerDef;

        #ctx_alias

        #types_mod

        /// The server, as the spec describes it.
        pub(crate) fn server() -> ServerDef {
            ServerDef {
                name: #name,
                version: #version,
                title: #title,
                instructions: #instructions,
                scopes_supported: &[#(#scopes_supported),*],
                required_scopes: &[#(#required),*],
                scope_hierarchy: &[#(#hierarchy),*],
                secrets: &[#(#secrets),*],
                upstreams: &[#(#upstreams),*],
                tools: Vec::from([#(#tools),*]),
                resources: &[#(#resources),*],
                resource_templates: &[#(#resource_templates),*],
                prompts: Vec::from([#(#prompts),*]),
            }
        }
    })
}

/// An upstream's `UpstreamAuthDef` (the spec passed `bmm check`). The OAuth types become
/// `UpstreamAuthDef::OAuth(&OAuthDef { .. })`: every field is a constant, so the
/// reference is promoted to a `'static` one.
fn upstream_auth(a: &UpstreamAuth) -> TokenStream {
    fn text(v: &Option<Spanned<String>>) -> Option<&str> {
        v.as_ref().map(|v| v.value.as_str())
    }
    let secret = text(&a.secret).unwrap_or_default();
    let name = text(&a.name).unwrap_or_default();
    let grant = match a.kind.value {
        UpstreamAuthKind::Bearer => return quote!(UpstreamAuthDef::Bearer { secret: #secret }),
        UpstreamAuthKind::Header => {
            return quote!(UpstreamAuthDef::Header { name: #name, secret: #secret });
        }
        UpstreamAuthKind::Query => {
            return quote!(UpstreamAuthDef::Query { name: #name, secret: #secret });
        }
        UpstreamAuthKind::TokenExchange => quote!(OAuthGrant::TokenExchange),
        UpstreamAuthKind::ClientCredentials => quote!(OAuthGrant::ClientCredentials),
        UpstreamAuthKind::UserOauth => quote!(OAuthGrant::UserAuthorization),
    };
    let client_secret = text(&a.client_secret);
    let private_key = text(&a.private_key);
    // The default method follows from what is given (`bmm check` rule 12).
    let method =
        a.client_auth
            .as_ref()
            .map(|m| m.value)
            .unwrap_or(match (client_secret, private_key) {
                (Some(_), _) => ClientAuth::ClientSecretBasic,
                (None, Some(_)) => ClientAuth::PrivateKeyJwt,
                (None, None) => ClientAuth::Public,
            });
    let client_auth = match method {
        ClientAuth::ClientSecretBasic => {
            let secret = client_secret.unwrap_or_default();
            quote!(ClientAuthDef::SecretBasic { secret: #secret })
        }
        ClientAuth::ClientSecretPost => {
            let secret = client_secret.unwrap_or_default();
            quote!(ClientAuthDef::SecretPost { secret: #secret })
        }
        ClientAuth::PrivateKeyJwt => {
            let key = private_key.unwrap_or_default();
            quote!(ClientAuthDef::PrivateKeyJwt { key: #key })
        }
        ClientAuth::Public => quote!(ClientAuthDef::None),
    };
    let issuer = opt_str(text(&a.issuer));
    let issuer_env = opt_str(text(&a.issuer_env));
    let token_url = opt_str(text(&a.token_url));
    let token_url_env = opt_str(text(&a.token_url_env));
    let authorization_url = opt_str(text(&a.authorization_url));
    let authorization_url_env = opt_str(text(&a.authorization_url_env));
    let client_id = text(&a.client_id).unwrap_or_default();
    let client_id_env = opt_str(text(&a.client_id_env));
    let audience = opt_str(text(&a.audience));
    let resource = opt_str(text(&a.resource));
    let scopes: Vec<&str> = a
        .scopes
        .iter()
        .flatten()
        .map(|s| s.value.as_str())
        .collect();
    quote! {
        UpstreamAuthDef::OAuth(&OAuthDef {
            grant: #grant,
            issuer: #issuer,
            issuer_env: #issuer_env,
            token_url: #token_url,
            token_url_env: #token_url_env,
            authorization_url: #authorization_url,
            authorization_url_env: #authorization_url_env,
            client_id: #client_id,
            client_id_env: #client_id_env,
            client_auth: #client_auth,
            audience: #audience,
            resource: #resource,
            scopes: &[#(#scopes),*],
        })
    }
}

/// Text for a `#[doc]` attribute, which prettyplease prints as `///` lines: every line
/// ending (CRLF, a bare CR, Unicode line and paragraph separators) becomes `\n`, since
/// rustc rejects a bare CR in a doc comment, and other control characters are dropped.
/// The leading space makes `/// text`.
pub(crate) fn doc_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 1);
    out.push(' ');
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\n' | '\u{2028}' | '\u{2029}' | '\u{85}' => out.push('\n'),
            '\t' => out.push(' '),
            c if c.is_control() || is_bidi_control(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// Unicode's bidirectional formatting characters: in source they make code read otherwise
/// than it compiles ("Trojan Source"), and rustc refuses them in comments and literals.
pub(crate) fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn prompt_stub(function: &str, prompt: &str, description: &str) -> TokenStream {
    let module_doc = layout::user_doc(&format!("The `{prompt}` prompt."), &[]);
    let f = format_ident!("{}", function);
    let fn_doc = doc_text(description);
    let message =
        format!("`{prompt}` is not implemented yet: write it in src/prompts/{function}.rs");
    quote! {
        #module_doc

        use bmm_runtime::rmcp::model::PromptMessage;
        use bmm_runtime::serde_json::{Map, Value};
        use bmm_runtime::ToolError;

        use crate::generated::Ctx;

        #[doc = #fn_doc]
        pub(crate) async fn #f(ctx: &Ctx, arguments: Map<String, Value>) -> Result<Vec<PromptMessage>, ToolError> {
            let _ = (ctx, arguments);
            Err(ToolError::new(#message))
        }
    }
}

fn user_stub(function: &str, tool: &str, description: &str, has_output: bool) -> TokenStream {
    let module_doc = layout::user_doc(
        &format!("The `{tool}` tool."),
        &["If the tool's schema changes, the compiler points here."],
    );
    let f = format_ident!("{}", function);
    let input = format_ident!("{}Input", pascal(tool));
    let fn_doc = doc_text(description);
    let message = format!("`{tool}` is not implemented yet: write it in src/tools/{function}.rs");
    if has_output {
        let output = format_ident!("{}Output", pascal(tool));
        quote! {
            #module_doc

            use bmm_runtime::ToolError;

            use crate::generated::Ctx;
            use crate::generated::types::{#input, #output};

            #[doc = #fn_doc]
            pub(crate) async fn #f(ctx: &Ctx, input: #input) -> Result<#output, ToolError> {
                let _ = (ctx, input);
                Err(ToolError::new(#message))
            }
        }
    } else {
        quote! {
            #module_doc

            use bmm_runtime::{ToolError, ToolOutput};

            use crate::generated::Ctx;
            use crate::generated::types::#input;

            #[doc = #fn_doc]
            pub(crate) async fn #f(ctx: &Ctx, input: #input) -> Result<ToolOutput, ToolError> {
                let _ = (ctx, input);
                Err(ToolError::new(#message))
            }
        }
    }
}
