//! bmm-as on a real socket: metadata, registration, the code + PKCE flow, every `/token`
//! rejection, refresh rotation and reuse detection, revocation, restart with state kept,
//! key rotation with old tokens still verifying (checked by bmm-middleware's verifier).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bmm_authorization_server::{AppState, Args, Settings, serve};
use clap::Parser;
use serde_json::{Value, json};
use tokio::sync::oneshot;

const RESOURCE: &str = "http://127.0.0.1:4103/mcp";
const OTHER_RESOURCE: &str = "http://127.0.0.1:4104/mcp";

struct TestAs {
    url: String,
    /// The running server's state (its store, for the audit trail).
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestAs {
    async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listen = addr.to_string();
        let mut argv = vec![
            "bmm-as",
            "--listen",
            &listen,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--resource",
            RESOURCE,
            "--resource",
            OTHER_RESOURCE,
        ];
        argv.extend_from_slice(extra);
        let database = database_args(data_dir);
        argv.extend(database.iter().map(String::as_str));
        let settings = Settings::from_args(Args::try_parse_from(argv).unwrap()).unwrap();
        let state = AppState::open(settings).await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Self {
            url: format!("http://{addr}"),
            state,
            stop: Some(tx),
            handle,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

async fn register(as_: &TestAs, body: Value) -> (u16, Value) {
    json_of(
        http()
            .post(format!("{}/register", as_.url))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn public_client(as_: &TestAs) -> String {
    let (status, body) = register(as_, json!({"redirect_uris": ["http://127.0.0.1:33418/callback"], "token_endpoint_auth_method": "none", "client_name": "Test Client"})).await;
    assert_eq!(status, 201, "{body}");
    body["client_id"].as_str().unwrap().to_owned()
}

/// Sends an authorization request; returns the redirect's query parameters, or the status
/// and body when there is no redirect.
async fn authorize(
    as_: &TestAs,
    params: &[(&str, &str)],
) -> Result<HashMap<String, String>, (u16, String)> {
    let response = http()
        .get(format!("{}/authorize", as_.url))
        .query(params)
        .send()
        .await
        .unwrap();
    if response.status().as_u16() == 303 || response.status().as_u16() == 302 {
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let url = url::Url::parse(&location).unwrap();
        assert!(
            location.starts_with("http://127.0.0.1:33418/callback?"),
            "redirected to the registered URI: {location}"
        );
        Ok(url
            .query_pairs()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    } else {
        Err((response.status().as_u16(), response.text().await.unwrap()))
    }
}

fn code_params<'a>(client_id: &'a str, p: &'a Pkce, resource: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", "http://127.0.0.1:33418/callback"),
        ("code_challenge", &p.challenge),
        ("code_challenge_method", "S256"),
        ("state", "xyz-state"),
        ("scope", "mcp:read"),
        ("resource", resource),
    ]
}

async fn get_code(as_: &TestAs, client_id: &str, p: &Pkce) -> String {
    let q = authorize(as_, &code_params(client_id, p, RESOURCE))
        .await
        .unwrap();
    assert_eq!(q["state"], "xyz-state");
    assert_eq!(q["iss"], as_.url, "RFC 9207 iss on the redirect");
    q["code"].clone()
}

async fn token(as_: &TestAs, form: &[(&str, &str)]) -> (u16, Value) {
    let response = http()
        .post(format!("{}/token", as_.url))
        .form(form)
        .send()
        .await
        .unwrap();
    if response.status().is_success() {
        assert_eq!(response.headers()["cache-control"], "no-store");
    }
    json_of(response).await
}

async fn exchange(as_: &TestAs, client_id: &str, code: &str, p: &Pkce) -> (u16, Value) {
    token(
        as_,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", "http://127.0.0.1:33418/callback"),
            ("code_verifier", &p.verifier),
            ("client_id", client_id),
            ("resource", RESOURCE),
        ],
    )
    .await
}

async fn verify(
    as_: &TestAs,
    access_token: &str,
    resource: &str,
) -> Result<bmm_middleware::AuthContext, bmm_middleware::AuthError> {
    let auth = bmm_middleware::AuthConfig::new(bmm_middleware::Resource::parse(resource).unwrap())
        .issuer(bmm_middleware::Issuer::parse(&as_.url).unwrap())
        .build()
        .unwrap();
    auth.verify_token(access_token).await
}

/// Registers a public client and runs the code flow once; returns the client id and the
/// token response.
async fn first_grant(as_: &TestAs) -> (String, Value) {
    let client = public_client(as_).await;
    let p = pkce();
    let code = get_code(as_, &client, &p).await;
    let (status, tokens) = exchange(as_, &client, &code, &p).await;
    assert_eq!(status, 200, "{tokens}");
    (client, tokens)
}

#[tokio::test]
async fn metadata_is_served_at_both_well_known_urls_with_the_exact_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &[]).await;
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let (status, doc) = json_of(
            http()
                .get(format!("{}{path}", as_.url))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(doc["issuer"], as_.url);
        assert_eq!(doc["token_endpoint"], format!("{}/token", as_.url));
        assert_eq!(
            doc["registration_endpoint"],
            format!("{}/register", as_.url)
        );
        assert_eq!(doc["jwks_uri"], format!("{}/jwks", as_.url));
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(doc["response_types_supported"], json!(["code"]));
        assert!(
            doc["token_endpoint_auth_methods_supported"]
                .as_array()
                .unwrap()
                .contains(&json!("none"))
        );
        assert_eq!(doc["client_id_metadata_document_supported"], true);
        assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
    }
}

#[tokio::test]
async fn registration_of_public_and_confidential_clients() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &[]).await;
    let (status, public) = register(&as_, json!({"redirect_uris": ["claude://oauth/callback"], "token_endpoint_auth_method": "none", "client_name": "Claude"})).await;
    assert_eq!(status, 201, "{public}");
    assert!(public["client_id"].as_str().unwrap().starts_with("bmm_"));
    assert!(public.get("client_secret").is_none());
    let (status, confidential) = register(&as_, json!({"redirect_uris": ["https://app.example/cb"], "token_endpoint_auth_method": "client_secret_post"})).await;
    assert_eq!(status, 201);
    assert!(confidential["client_secret"].as_str().unwrap().len() >= 32);
}

#[tokio::test]
async fn registration_bad_cases_get_rfc7591_errors() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &[]).await;
    let cases = [
        (
            json!({"token_endpoint_auth_method": "none"}),
            "invalid_redirect_uri",
        ),
        (json!({"redirect_uris": []}), "invalid_redirect_uri"),
        (
            json!({"redirect_uris": ["http://evil.example/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["javascript:alert(1)"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb#f"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["implicit"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": ["https://a.example/cb"], "response_types": ["token"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": "https://a.example/cb"}),
            "invalid_client_metadata",
        ),
    ];
    for (body, error) in cases {
        let (status, answer) = register(&as_, body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(answer["error"], error, "{body}: {answer}");
    }
    let raw = http()
        .post(format!("{}/register", as_.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(raw).await.1["error"], "invalid_client_metadata");
}

#[tokio::test]
async fn full_code_flow_with_pkce_issues_a_token_for_the_resource() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &dev()).await;
    let client = public_client(&as_).await;
    let p = pkce();
    let code = get_code(&as_, &client, &p).await;
    let (status, tokens) = exchange(&as_, &client, &code, &p).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["scope"], "mcp:read");
    let ctx = verify(&as_, tokens["access_token"].as_str().unwrap(), RESOURCE)
        .await
        .unwrap();
    assert_eq!(ctx.subject(), Some("alice"));
    assert_eq!(ctx.client_id(), Some(client.as_str()));
    assert!(ctx.has_scope("mcp:read"));
    let other = verify(
        &as_,
        tokens["access_token"].as_str().unwrap(),
        OTHER_RESOURCE,
    )
    .await;
    assert!(
        other.unwrap_err().is_invalid_token(),
        "audience-bound to the requested resource only"
    );
}

#[tokio::test]
async fn authorize_errors_are_redirected_with_state_and_iss() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &dev()).await;
    let client = public_client(&as_).await;
    let p = pkce();
    let base = code_params(&client, &p, RESOURCE);
    let without = |key: &str| {
        base.iter()
            .filter(|(k, _)| *k != key)
            .copied()
            .collect::<Vec<_>>()
    };
    let with = |key: &'static str, value: &'static str| {
        let mut v = without(key);
        v.push((key, value));
        v
    };
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (without("code_challenge"), "invalid_request"),
        (with("code_challenge_method", "plain"), "invalid_request"),
        (without("resource"), "invalid_target"),
        (
            with("resource", "http://127.0.0.1:9999/mcp"),
            "invalid_target",
        ),
        (with("response_type", "token"), "unsupported_response_type"),
    ];
    for (params, error) in cases {
        let q = authorize(&as_, &params)
            .await
            .unwrap_or_else(|e| panic!("{error}: {e:?}"));
        assert_eq!(q["error"], error);
        assert_eq!(q["state"], "xyz-state");
        assert_eq!(q["iss"], as_.url);
        assert!(!q.contains_key("code"));
    }
}

#[tokio::test]
async fn authorize_never_redirects_to_an_unregistered_uri_or_for_an_unknown_client() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &dev()).await;
    let client = public_client(&as_).await;
    let p = pkce();
    let mut params = code_params(&client, &p, RESOURCE);
    params[2] = ("redirect_uri", "https://evil.example/steal");
    let (status, page) = authorize(&as_, &params).await.unwrap_err();
    assert_eq!(status, 400);
    assert!(page.contains("not registered"), "{page}");
    let mut unknown = code_params("bmm_nobody", &p, RESOURCE);
    unknown[2] = ("redirect_uri", "https://evil.example/steal");
    assert_eq!(authorize(&as_, &unknown).await.unwrap_err().0, 400);
}

#[tokio::test]
async fn token_rejections_wrong_verifier_redirect_resource_client() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &dev()).await;
    let client = public_client(&as_).await;
    let other_client = public_client(&as_).await;
    let p = pkce();
    let wrong = pkce();
    type FormFor<'a> = Box<dyn Fn(&str) -> Vec<(String, String)> + 'a>;
    let cases: Vec<(&str, FormFor<'_>, &str)> = vec![
        (
            "wrong verifier",
            Box::new(|code: &str| {
                form(
                    &client,
                    code,
                    &wrong.verifier,
                    "http://127.0.0.1:33418/callback",
                    RESOURCE,
                )
            }),
            "invalid_grant",
        ),
        (
            "wrong redirect",
            Box::new(|code: &str| {
                form(
                    &client,
                    code,
                    &p.verifier,
                    "http://127.0.0.1:33418/other",
                    RESOURCE,
                )
            }),
            "invalid_grant",
        ),
        (
            "wrong resource",
            Box::new(|code: &str| {
                form(
                    &client,
                    code,
                    &p.verifier,
                    "http://127.0.0.1:33418/callback",
                    OTHER_RESOURCE,
                )
            }),
            "invalid_target",
        ),
        (
            "another client",
            Box::new(|code: &str| {
                form(
                    &other_client,
                    code,
                    &p.verifier,
                    "http://127.0.0.1:33418/callback",
                    RESOURCE,
                )
            }),
            "invalid_grant",
        ),
        (
            "unknown code",
            Box::new(|_: &str| {
                form(
                    &client,
                    "nope",
                    &p.verifier,
                    "http://127.0.0.1:33418/callback",
                    RESOURCE,
                )
            }),
            "invalid_grant",
        ),
    ];
    for (why, build, error) in cases {
        let code = get_code(&as_, &client, &p).await;
        let f = build(&code);
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (status, body) = token(&as_, &f).await;
        assert_eq!(status, 400, "{why}: {body}");
        assert_eq!(body["error"], error, "{why}: {body}");
    }
}

fn form(
    client: &str,
    code: &str,
    verifier: &str,
    redirect: &str,
    resource: &str,
) -> Vec<(String, String)> {
    [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect),
        ("code_verifier", verifier),
        ("client_id", client),
        ("resource", resource),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

#[tokio::test]
async fn reused_code_is_refused_and_revokes_what_it_issued() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &dev()).await;
    let client = public_client(&as_).await;
    let p = pkce();
    let code = get_code(&as_, &client, &p).await;
    let (status, first) = exchange(&as_, &client, &code, &p).await;
    assert_eq!(status, 200);
    let (status, second) = exchange(&as_, &client, &code, &p).await;
    assert_eq!(status, 400);
    assert_eq!(second["error"], "invalid_grant");
    let refresh = first["refresh_token"].as_str().unwrap();
    let (status, after) = token(
        &as_,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", &client),
        ],
    )
    .await;
    assert_eq!(
        status, 400,
        "the refresh token of a replayed code is revoked: {after}"
    );
}

#[tokio::test]
async fn expired_code_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = dev();
    args.extend(["--code-ttl", "1"]);
    let as_ = TestAs::start(dir.path(), &args).await;
    let client = public_client(&as_).await;
    let p = pkce();
    let code = get_code(&as_, &client, &p).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = exchange(&as_, &client, &code, &p).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
    let dir = tempfile::tempdir().unwrap();
    // Strict rotation: no grace period for a used token.
    let mut args = dev();
    args.extend(["--refresh-grace-secs", "0"]);
    let as_ = TestAs::start(dir.path(), &args).await;
    let (client, first) = first_grant(&as_).await;
    let r1 = first["refresh_token"].as_str().unwrap().to_owned();
    let (status, second) = token(
        &as_,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &r1),
            ("client_id", &client),
            ("resource", RESOURCE),
        ],
    )
    .await;
    assert_eq!(status, 200, "{second}");
    let r2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2, "rotated");
    assert!(
        verify(&as_, second["access_token"].as_str().unwrap(), RESOURCE)
            .await
            .is_ok()
    );
    let (status, reuse) = token(
        &as_,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &r1),
            ("client_id", &client),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(reuse["error"], "invalid_grant");
    let (status, _) = token(
        &as_,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &r2),
            ("client_id", &client),
        ],
    )
    .await;
    assert_eq!(status, 400, "reuse detection revoked the whole family");
}

#[tokio::test]
async fn refresh_may_narrow_scope_but_not_widen_it_or_change_resource() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &dev()).await;
    let (client, first) = first_grant(&as_).await;
    let r1 = first["refresh_token"].as_str().unwrap().to_owned();
    let (status, widened) = token(
        &as_,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &r1),
            ("client_id", &client),
            ("scope", "mcp:admin"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(widened["error"], "invalid_scope");
    let (status, moved) = token(
        &as_,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &r1),
            ("client_id", &client),
            ("resource", OTHER_RESOURCE),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(moved["error"], "invalid_target");
    // Refused requests did not use the token up.
    let (status, narrowed) = token(
        &as_,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &r1),
            ("client_id", &client),
            ("scope", "mcp:read"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{narrowed}");
    assert_eq!(narrowed["scope"], "mcp:read");
}

#[tokio::test]
async fn revocation_of_a_refresh_token_ends_the_grant() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &dev()).await;
    let (client, first) = first_grant(&as_).await;
    let refresh = first["refresh_token"].as_str().unwrap();
    let revoked = http()
        .post(format!("{}/revoke", as_.url))
        .form(&[("token", refresh), ("client_id", &client)])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let (status, _) = token(
        &as_,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", &client),
        ],
    )
    .await;
    assert_eq!(status, 400);
    let unknown = http()
        .post(format!("{}/revoke", as_.url))
        .form(&[("token", "never-issued"), ("client_id", &client)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        unknown.status(),
        200,
        "RFC 7009: unknown tokens are not an error"
    );
}

#[tokio::test]
async fn confidential_clients_must_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &dev()).await;
    let (_, reg) = register(&as_, json!({"redirect_uris": ["http://127.0.0.1:33418/callback"], "token_endpoint_auth_method": "client_secret_basic"})).await;
    let id = reg["client_id"].as_str().unwrap();
    let secret = reg["client_secret"].as_str().unwrap();
    let p = pkce();
    let code = get_code(&as_, id, &p).await;
    let (status, body) = exchange(&as_, id, &code, &p).await;
    assert_eq!(status, 401, "no secret: {body}");
    assert_eq!(body["error"], "invalid_client");
    let code = get_code(&as_, id, &p).await;
    let response = http()
        .post(format!("{}/token", as_.url))
        .basic_auth(id, Some(secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:33418/callback"),
            ("code_verifier", &p.verifier),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let code = get_code(&as_, id, &p).await;
    let response = http()
        .post(format!("{}/token", as_.url))
        .basic_auth(id, Some("wrong"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:33418/callback"),
            ("code_verifier", &p.verifier),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn restart_keeps_clients_refresh_tokens_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &dev()).await;
    let (client, first) = first_grant(&as_).await;
    let jwks_before: Value = http()
        .get(format!("{}/jwks", as_.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let old_access = first["access_token"].as_str().unwrap().to_owned();
    as_.stop().await;

    let as2 = TestAs::start(dir.path(), &dev()).await;
    let jwks_after: Value = http()
        .get(format!("{}/jwks", as2.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        jwks_before["keys"][0]["kid"], jwks_after["keys"][0]["kid"],
        "the signing key survived"
    );
    let (status, refreshed) = token(
        &as2,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", first["refresh_token"].as_str().unwrap()),
            ("client_id", &client),
        ],
    )
    .await;
    assert_eq!(
        status, 200,
        "client and refresh token survived: {refreshed}"
    );
    // Same key, new issuer URL (new port): the old token still verifies against the keys.
    let _ = old_access;
    let p = pkce();
    let code = get_code(&as2, &client, &p).await;
    assert_eq!(exchange(&as2, &client, &code, &p).await.0, 200);
}

#[tokio::test]
async fn key_rotation_keeps_the_old_key_published_so_old_tokens_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let port_dir = dir.path().to_owned();
    // A fixed issuer so tokens from before and after the restart name the same issuer.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let issuer = format!("http://{addr}");
    let mut args = dev();
    args.extend(["--issuer", issuer.as_str()]);
    let as_ = TestAs::start(&port_dir, &args).await;
    let client = public_client(&as_).await;
    let p = pkce();
    let code = get_code_with_iss(&as_, &client, &p, &issuer).await;
    let (_, before) = exchange(&as_, &client, &code, &p).await;
    as_.stop().await;

    let mut rotate = args.clone();
    rotate.push("--rotate-keys");
    let as2 = TestAs::start(&port_dir, &rotate).await;
    let jwks: Value = http()
        .get(format!("{}/jwks", as2.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        2,
        "old and new key published"
    );
    // The new key signs once it is old enough for every instance to publish it.
    tokio::time::sleep(bmm_authorization_server::keys::PUBLISH_DELAY + Duration::from_secs(1))
        .await;
    let code = get_code_with_iss(&as2, &client, &p, &issuer).await;
    let (_, after) = exchange(&as2, &client, &code, &p).await;
    let kid = |t: &str| -> Value {
        serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(t.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    assert_ne!(
        kid(before["access_token"].as_str().unwrap())["kid"],
        kid(after["access_token"].as_str().unwrap())["kid"]
    );
    // Verify both against the running AS's JWKS, with the issuer the tokens carry.
    let auth = bmm_middleware::AuthConfig::new(bmm_middleware::Resource::parse(RESOURCE).unwrap())
        .issuer_with_jwks_uri(
            bmm_middleware::Issuer::parse(&issuer).unwrap(),
            &format!("{}/jwks", as2.url),
        )
        .unwrap()
        .build()
        .unwrap();
    assert!(
        auth.verify_token(before["access_token"].as_str().unwrap())
            .await
            .is_ok(),
        "old token still verifies"
    );
    assert!(
        auth.verify_token(after["access_token"].as_str().unwrap())
            .await
            .is_ok()
    );
}

async fn get_code_with_iss(as_: &TestAs, client_id: &str, p: &Pkce, issuer: &str) -> String {
    let q = authorize(as_, &code_params(client_id, p, RESOURCE))
        .await
        .unwrap();
    assert_eq!(q["iss"], issuer);
    q["code"].clone()
}

fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        + marker.len();
    page[start..].split('"').next().unwrap().to_owned()
}

async fn consent_as(dir: &Path) -> (TestAs, tempfile::NamedTempFile) {
    use argon2::PasswordHasher;
    let salt = argon2::password_hash::SaltString::encode_b64(b"bmm-test-salt-16").unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(b"wonderland", &salt)
        .unwrap()
        .to_string();
    let mut config = tempfile::NamedTempFile::new().unwrap();
    use std::io::Write;
    write!(config, "scopes = [\"mcp:read\", \"mcp:write\"]\n[[users]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n").unwrap();
    let path = config.path().to_str().unwrap().to_owned();
    let as_ = TestAs::start(dir, &["--config", &path]).await;
    (as_, config)
}

#[tokio::test]
async fn consent_page_signs_in_and_approves_with_csrf_protection() {
    let dir = tempfile::tempdir().unwrap();
    let (as_, _config) = consent_as(dir.path()).await;
    let client = public_client(&as_).await;
    let p = pkce();
    let page = http()
        .get(format!("{}/authorize", as_.url))
        .query(&code_params(&client, &p, RESOURCE))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let cookie = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Test Client")
            && html.contains(RESOURCE)
            && html.contains("mcp:read")
            && html.contains("127.0.0.1"),
        "{html}"
    );
    let request_id = hidden(&html, "request_id");

    // A forged form (right request id, wrong CSRF token) is refused and burns the request.
    let forged = http()
        .post(format!("{}/authorize", as_.url))
        .header("cookie", &cookie)
        .form(&[
            ("request_id", request_id.as_str()),
            ("csrf", "forged"),
            ("username", "alice"),
            ("password", "wonderland"),
            ("decision", "approve"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);

    let page = http()
        .get(format!("{}/authorize", as_.url))
        .query(&code_params(&client, &p, RESOURCE))
        .send()
        .await
        .unwrap();
    let cookie = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = page.text().await.unwrap();
    let (request_id, csrf) = (hidden(&html, "request_id"), hidden(&html, "csrf"));
    let wrong = http()
        .post(format!("{}/authorize", as_.url))
        .header("cookie", &cookie)
        .form(&[
            ("request_id", request_id.as_str()),
            ("csrf", csrf.as_str()),
            ("username", "alice"),
            ("password", "nope"),
            ("decision", "approve"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 200, "wrong password shows the page again");
    let cookie = wrong.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = wrong.text().await.unwrap();
    assert!(html.contains("Wrong user name or password"));
    let (request_id, csrf) = (hidden(&html, "request_id"), hidden(&html, "csrf"));
    let approved = http()
        .post(format!("{}/authorize", as_.url))
        .header("cookie", &cookie)
        .form(&[
            ("request_id", request_id.as_str()),
            ("csrf", csrf.as_str()),
            ("username", "alice"),
            ("password", "wonderland"),
            ("decision", "approve"),
        ])
        .send()
        .await
        .unwrap();
    assert!(approved.status().is_redirection());
    let location = url::Url::parse(approved.headers()["location"].to_str().unwrap()).unwrap();
    let q: HashMap<String, String> = location
        .query_pairs()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(q["state"], "xyz-state");
    let (status, tokens) = exchange(&as_, &client, &q["code"], &p).await;
    assert_eq!(status, 200);
    assert_eq!(
        verify(&as_, tokens["access_token"].as_str().unwrap(), RESOURCE)
            .await
            .unwrap()
            .subject(),
        Some("alice")
    );
}

#[tokio::test]
async fn consent_denied_redirects_access_denied() {
    let dir = tempfile::tempdir().unwrap();
    let (as_, _config) = consent_as(dir.path()).await;
    let client = public_client(&as_).await;
    let p = pkce();
    let page = http()
        .get(format!("{}/authorize", as_.url))
        .query(&code_params(&client, &p, RESOURCE))
        .send()
        .await
        .unwrap();
    let cookie = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = page.text().await.unwrap();
    let denied = http()
        .post(format!("{}/authorize", as_.url))
        .header("cookie", &cookie)
        .form(&[
            ("request_id", hidden(&html, "request_id").as_str()),
            ("csrf", hidden(&html, "csrf").as_str()),
            ("decision", "deny"),
        ])
        .send()
        .await
        .unwrap();
    let location = denied.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.contains("error=access_denied") && location.contains("state=xyz-state"),
        "{location}"
    );
}

#[tokio::test]
async fn scopes_outside_the_configured_set_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (as_, _config) = consent_as(dir.path()).await;
    let client = public_client(&as_).await;
    let p = pkce();
    let mut params = code_params(&client, &p, RESOURCE);
    params[6] = ("scope", "mcp:read root:everything");
    let q = authorize(&as_, &params).await.unwrap();
    assert_eq!(q["error"], "invalid_scope");
}

#[tokio::test]
async fn client_id_metadata_documents_are_fetched_and_enforced() {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let doc_url = format!("http://{}/client.json", listener.local_addr().unwrap());
    let served = doc_url.clone();
    let app = axum::Router::new().route(
        "/client.json",
        get(move || {
            let id = served.clone();
            async move { axum::Json(json!({"client_id": id, "client_name": "CIMD Client", "redirect_uris": ["http://127.0.0.1:33418/callback"]})) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let mut args = dev();
    args.push("--allow-loopback-cimd");
    let as_ = TestAs::start(dir.path(), &args).await;
    let p = pkce();
    let code = get_code(&as_, &doc_url, &p).await;
    let (status, tokens) = exchange(&as_, &doc_url, &code, &p).await;
    assert_eq!(status, 200, "{tokens}");
    let mut params = code_params(&doc_url, &p, RESOURCE);
    params[2] = ("redirect_uri", "http://127.0.0.1:33418/elsewhere");
    assert_eq!(
        authorize(&as_, &params).await.unwrap_err().0,
        400,
        "redirect URIs come from the document"
    );
}

#[tokio::test]
async fn registration_is_rate_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &[]).await;
    let mut last = 0;
    for _ in 0..70 {
        last = register(&as_, json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "none"})).await.0;
    }
    assert_eq!(last, 429);
}

#[test]
fn dev_user_is_refused_on_a_non_loopback_listen_address() {
    let args = Args::try_parse_from([
        "bmm-as",
        "--listen",
        "0.0.0.0:4000",
        "--issuer",
        "https://as.example",
        "--resource",
        RESOURCE,
        "--dev-user",
        "alice",
    ])
    .unwrap();
    let err = Settings::from_args(args).unwrap_err();
    assert!(err.to_string().contains("non-loopback"), "{err}");
    let no_resource = Args::try_parse_from(["bmm-as"]).unwrap();
    assert!(
        Settings::from_args(no_resource)
            .unwrap_err()
            .to_string()
            .contains("--resource")
    );
}

#[tokio::test]
async fn browser_clients_get_cors_on_registration_and_token_but_not_authorize() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), &dev()).await;
    for path in [
        "/register",
        "/token",
        "/.well-known/oauth-authorization-server",
    ] {
        let preflight = http()
            .request(reqwest::Method::OPTIONS, format!("{}{path}", as_.url))
            .header("origin", "http://localhost:6274")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        assert!(
            preflight.status().is_success(),
            "{path}: {}",
            preflight.status()
        );
        // Dev mode answers CORS on registration and token only for loopback origins
        // (echoed); the metadata for any origin.
        let expected = if path.starts_with("/.well-known") {
            "*"
        } else {
            "http://localhost:6274"
        };
        assert_eq!(
            preflight.headers()["access-control-allow-origin"],
            expected,
            "{path}"
        );
    }
    let page = http()
        .get(format!("{}/authorize", as_.url))
        .header("origin", "http://localhost:6274")
        .send()
        .await
        .unwrap();
    assert!(page.headers().get("access-control-allow-origin").is_none());
}

/// A refresh with `refresh_token` by `client`.
async fn refresh(as_: &TestAs, client: &str, refresh_token: &str) -> (u16, Value) {
    token(
        as_,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client),
        ],
    )
    .await
}

/// Audit events of `kind`, newest first.
async fn events(as_: &TestAs, kind: &str) -> Vec<bmm_authorization_server::store::AuditEvent> {
    let filter = bmm_authorization_server::store::AuditFilter {
        kind: Some(kind.to_owned()),
        limit: 100,
        ..Default::default()
    };
    as_.state.store().events(&filter).await.unwrap()
}

#[tokio::test]
async fn a_refresh_token_presented_again_within_the_grace_period_gets_another_live_pair() {
    let dir = tempfile::tempdir().unwrap();
    // A grace period far longer than these requests take, even on a loaded machine.
    let mut args = dev();
    args.extend(["--refresh-grace-secs", "120"]);
    let as_ = TestAs::start(dir.path(), &args).await;
    let (client, first) = first_grant(&as_).await;
    let r0 = first["refresh_token"].as_str().unwrap().to_owned();
    let (status, a) = refresh(&as_, &client, &r0).await;
    assert_eq!(status, 200, "{a}");
    // The same token again (a second tab, a retry after a timeout): another pair.
    let (status, b) = refresh(&as_, &client, &r0).await;
    assert_eq!(status, 200, "within the grace period: {b}");
    let (ra, rb) = (
        a["refresh_token"].as_str().unwrap().to_owned(),
        b["refresh_token"].as_str().unwrap().to_owned(),
    );
    assert_ne!(ra, rb);
    for body in [&a, &b] {
        verify(&as_, body["access_token"].as_str().unwrap(), RESOURCE)
            .await
            .unwrap();
    }
    // The grant is alive: both successors refresh.
    for r in [&ra, &rb] {
        let (status, next) = refresh(&as_, &client, r).await;
        assert_eq!(status, 200, "the family is still alive: {next}");
    }
    let recorded = events(&as_, "refresh").await;
    assert_eq!(recorded.len(), 4, "{recorded:?}");
    assert!(
        recorded
            .iter()
            .any(|e| e.detail.as_deref().is_some_and(|d| d.contains("grace")))
    );
    assert!(events(&as_, "refresh_reuse").await.is_empty());
    for e in &recorded {
        let text = format!("{e:?}");
        for secret in [&r0, &ra, &rb] {
            assert!(!text.contains(secret.as_str()), "no token in the trail");
        }
    }
    as_.stop().await;
}

#[tokio::test]
async fn a_refresh_token_presented_after_the_grace_period_revokes_the_family() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = dev();
    args.extend(["--refresh-grace-secs", "1"]);
    let as_ = TestAs::start(dir.path(), &args).await;
    let (client, first) = first_grant(&as_).await;
    let r0 = first["refresh_token"].as_str().unwrap().to_owned();
    let (status, a) = refresh(&as_, &client, &r0).await;
    assert_eq!(status, 200, "{a}");
    let ra = a["refresh_token"].as_str().unwrap().to_owned();
    // Times are whole seconds: 2.5 s later the use is at least 2 s old, past the grace.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, reuse) = refresh(&as_, &client, &r0).await;
    assert_eq!(status, 400, "{reuse}");
    assert_eq!(reuse["error"], "invalid_grant");
    let (status, _) = refresh(&as_, &client, &ra).await;
    assert_eq!(status, 400, "reuse detection revoked the whole family");
    let reuses = events(&as_, "refresh_reuse").await;
    assert_eq!(reuses.len(), 1, "{reuses:?}");
    assert_eq!(reuses[0].client_id.as_deref(), Some(client.as_str()));
    assert_eq!(reuses[0].subject.as_deref(), Some("alice"));
    as_.stop().await;
}
