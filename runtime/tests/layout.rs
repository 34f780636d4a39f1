//! Where a generated server lives: its resource identifier may be its bare origin while MCP
//! is served at `--mcp-path` (the product page's layout, a canonical URI the MCP spec lists
//! as valid), with the protected resource metadata and the challenge following RFC 9728 for
//! that identifier; and the challenge names scopes when the spec declares them (issue 12
//! item 19, issue 13 item 2). Real sockets, real JWTs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;

use bmm_runtime::def::{AnnotationsDef, Handler, ToolDef};
use bmm_runtime::run::{Args, prepare, serve};
use bmm_runtime::testing::{stand_in_issuer, stand_in_token};
use bmm_runtime::{ServerDef, ToolOutput};
use clap::Parser;
use serde_json::{Value, json};

const ISSUER: &str = "https://as.example.com/oauth";

fn def() -> ServerDef {
    ServerDef {
        name: "layout",
        version: "0.1.0",
        title: None,
        instructions: None,
        scopes_supported: &["notes:read", "notes:write"],
        required_scopes: &[],
        scope_hierarchy: &[],
        secrets: &[],
        upstreams: &[],
        tools: vec![ToolDef {
            name: "ping",
            title: None,
            description: "Answers pong.",
            input_schema: r#"{"type":"object"}"#,
            output_schema: None,
            annotations: AnnotationsDef::default(),
            scopes: &["notes:read"],
            task: bmm_runtime::def::TaskSupport::Forbidden,
            rate_limit: None,
            handler: Handler::Rust(Arc::new(|_, _| {
                Box::pin(async { Ok(ToolOutput::Text("pong".into())) })
            })),
        }],
        resources: &[],
        prompts: Vec::new(),
        resource_templates: &[],
    }
}

/// Starts the server with `flags` (besides listen, issuer and JWKS); returns its origin.
async fn start(flags: impl Fn(&str) -> Vec<String>) -> Result<String, String> {
    let jwks = stand_in_issuer().await?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    drop(listener);
    let origin = format!("http://{addr}");
    let mut argv = vec![
        "layout".to_owned(),
        "--listen".into(),
        addr.to_string(),
        "--issuer".into(),
        ISSUER.into(),
        "--jwks-uri".into(),
        jwks,
    ];
    argv.extend(flags(&origin));
    let args = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
    let prepared = prepare(def(), &args, |_| None).map_err(|e| e.message)?;
    let server = bmm_middleware::Server::bind(addr, prepared.config.clone())
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(serve(prepared, server, std::future::pending()));
    Ok(origin)
}

async fn post(url: &str, token: Option<&str>) -> (u16, String, Value) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    let body = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .find_map(|d| serde_json::from_str(d.trim()).ok())
        .unwrap_or(Value::Null);
    (status, challenge, body)
}

#[tokio::test]
async fn mcp_path_serves_a_resource_identified_by_its_origin() {
    let origin = start(|origin| {
        vec![
            "--resource".into(),
            origin.to_owned(),
            "--mcp-path".into(),
            "/mcp".into(),
        ]
    })
    .await
    .unwrap();
    let endpoint = format!("{origin}/mcp");
    let (status, challenge, _) = post(&endpoint, None).await;
    assert_eq!(status, 401);
    let root_prm = format!("{origin}/.well-known/oauth-protected-resource");
    assert!(
        challenge.contains(&format!("resource_metadata=\"{root_prm}\"")),
        "RFC 9728: the metadata of a resource without a path is at the root: {challenge}"
    );
    let prm: Value = reqwest::get(&root_prm).await.unwrap().json().await.unwrap();
    assert_eq!(prm["resource"], origin.as_str());
    assert_eq!(prm["authorization_servers"], json!([ISSUER]));

    let token = stand_in_token(ISSUER, &origin, "notes:read").unwrap();
    let (status, _, body) = post(&endpoint, Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["serverInfo"]["name"], "layout");

    // The origin with a trailing slash is the same resource; the endpoint URL is not.
    let slash = stand_in_token(ISSUER, &format!("{origin}/"), "notes:read").unwrap();
    assert_eq!(post(&endpoint, Some(&slash)).await.0, 200);
    let endpoint_aud = stand_in_token(ISSUER, &endpoint, "notes:read").unwrap();
    let (status, challenge, _) = post(&endpoint, Some(&endpoint_aud)).await;
    assert_eq!(status, 401, "a token for another resource identifier");
    assert!(challenge.contains("invalid_token"));
    // MCP lives at /mcp only.
    assert_eq!(post(&format!("{origin}/"), Some(&token)).await.0, 404);
}

#[tokio::test]
async fn default_layout_is_unchanged_resource_path_is_the_endpoint() {
    let origin = start(|_| Vec::new()).await.unwrap();
    let endpoint = format!("{origin}/mcp");
    let (status, challenge, _) = post(&endpoint, None).await;
    assert_eq!(status, 401);
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"{origin}/.well-known/oauth-protected-resource/mcp\""
        )),
        "{challenge}"
    );
    let token = stand_in_token(ISSUER, &endpoint, "notes:read").unwrap();
    assert_eq!(post(&endpoint, Some(&token)).await.0, 200);
}

#[tokio::test]
async fn mcp_path_must_be_an_absolute_path() {
    let refused = start(|_| vec!["--mcp-path".into(), "mcp?x".into()]).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("--mcp-path")),
        "{refused:?}"
    );
}

/// Issue 12 item 19: the 401 challenge names the scopes to ask for (MCP: SHOULD) even
/// when the spec requires none server-wide but declares some.
#[tokio::test]
async fn challenge_carries_the_declared_scopes_when_none_are_required_server_wide() {
    let origin = start(|_| Vec::new()).await.unwrap();
    let (status, challenge, _) = post(&format!("{origin}/mcp"), None).await;
    assert_eq!(status, 401);
    assert!(
        challenge.contains("scope=\"notes:read notes:write\""),
        "{challenge}"
    );
}

/// Issue 12 item 19: `--require-at-jwt-typ` refuses a token without `typ: at+jwt`.
#[tokio::test]
async fn require_at_jwt_typ_flag_is_wired() {
    let origin = start(|_| vec!["--require-at-jwt-typ".into()])
        .await
        .unwrap();
    let endpoint = format!("{origin}/mcp");
    // The stand-in token carries typ at+jwt.
    let token = stand_in_token(ISSUER, &endpoint, "notes:read").unwrap();
    assert_eq!(post(&endpoint, Some(&token)).await.0, 200);
}
