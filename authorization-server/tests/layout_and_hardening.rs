//! bmm-as on a real socket: an issuer under a path (the product page's layout, issue 13),
//! JSON token and revocation requests, code redemption checked before use, revocation
//! ownership, dev-mode CORS, and connection time limits (issue 12).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bmm_authorization_server::{AppState, Args, Settings, serve};
use clap::Parser;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// The page's resource: the MCP server's origin.
const RESOURCE: &str = "http://127.0.0.1:4103";
const LOOPBACK_REDIRECT: &str = "http://127.0.0.1:33418/callback";

struct TestAs {
    /// `http://127.0.0.1:PORT`
    origin: String,
    /// The issuer, exactly as configured.
    issuer: String,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestAs {
    /// Starts bmm-as on port 0; `issuer_path` (like `/oauth`) puts the issuer under a path.
    async fn start(data_dir: &Path, issuer_path: &str, extra: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listen = addr.to_string();
        let origin = format!("http://{addr}");
        let issuer = format!("{origin}{issuer_path}");
        let mut argv = vec![
            "bmm-as",
            "--listen",
            &listen,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--resource",
            RESOURCE,
        ];
        if !issuer_path.is_empty() {
            argv.extend_from_slice(&["--issuer", &issuer]);
        }
        argv.extend_from_slice(extra);
        let database = database_args(data_dir);
        argv.extend(database.iter().map(String::as_str));
        let settings = Settings::from_args(Args::try_parse_from(argv).unwrap()).unwrap();
        let state = AppState::open(settings).await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(listener, state, async move {
            let _ = rx.await;
        }));
        Self {
            origin,
            issuer,
            stop: Some(tx),
            handle,
        }
    }

    /// An endpoint under the issuer.
    fn at(&self, endpoint: &str) -> String {
        format!("{}{endpoint}", self.issuer)
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
            .post(as_.at("/register"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn public_client(as_: &TestAs, redirect: &str) -> String {
    let (status, body) = register(
        as_,
        json!({"redirect_uris": [redirect], "token_endpoint_auth_method": "none"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["client_id"].as_str().unwrap().to_owned()
}

/// A dev-mode authorization request; returns the redirect's `Location`.
async fn authorize(as_: &TestAs, client: &str, p: &Pkce, redirect: Option<&str>) -> String {
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", client),
        ("code_challenge", p.challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", "s1"),
        ("scope", "mcp:read"),
        ("resource", RESOURCE),
    ];
    if let Some(r) = redirect {
        params.push(("redirect_uri", r));
    }
    let response = http()
        .get(as_.at("/authorize"))
        .query(&params)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_redirection(),
        "{}: {:?}",
        response.status(),
        response.text().await
    );
    response.headers()["location"].to_str().unwrap().to_owned()
}

fn query_of(location: &str) -> HashMap<String, String> {
    url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn code_for(as_: &TestAs, client: &str, p: &Pkce, redirect: Option<&str>) -> String {
    query_of(&authorize(as_, client, p, redirect).await)["code"].clone()
}

async fn token_form(as_: &TestAs, form: &[(&str, &str)]) -> (u16, Value) {
    json_of(
        http()
            .post(as_.at("/token"))
            .form(form)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn token_json(as_: &TestAs, body: &Value) -> (u16, Value) {
    let response = http()
        .post(as_.at("/token"))
        .json(body)
        .send()
        .await
        .unwrap();
    if response.status().is_success() {
        assert_eq!(response.headers()["cache-control"], "no-store");
    }
    json_of(response).await
}

// ---- issue 13.1: an issuer under a path --------------------------------------------------

#[tokio::test]
async fn issuer_with_a_path_serves_metadata_at_every_rfc8414_and_openid_location() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), "/oauth", &dev()).await;
    for location in [
        "/.well-known/oauth-authorization-server/oauth",
        "/.well-known/openid-configuration/oauth",
        "/oauth/.well-known/openid-configuration",
    ] {
        let response = http()
            .get(format!("{}{location}", as_.origin))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{location}");
        let text = response.text().await.unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            doc["issuer"], as_.issuer,
            "{location}: byte-identical issuer"
        );
        assert!(text.contains(&format!("\"issuer\":\"{}\"", as_.issuer)));
        for (field, endpoint) in [
            ("authorization_endpoint", "/authorize"),
            ("token_endpoint", "/token"),
            ("registration_endpoint", "/register"),
            ("revocation_endpoint", "/revoke"),
            ("jwks_uri", "/jwks"),
        ] {
            assert_eq!(doc[field], as_.at(endpoint), "{location}: {field}");
        }
    }
    // The root locations describe the issuer without a path: not this one.
    for location in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
        "/register",
        "/token",
        "/jwks",
        "/authorize",
    ] {
        let status = http()
            .get(format!("{}{location}", as_.origin))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404, "{location} is not served at the root");
    }
    let jwks = http().get(as_.at("/jwks")).send().await.unwrap();
    assert_eq!(jwks.status(), 200);
    assert!(
        jwks.json::<Value>().await.unwrap()["keys"]
            .as_array()
            .is_some_and(|k| !k.is_empty())
    );
    as_.stop().await;
}

#[tokio::test]
async fn issuer_without_a_path_keeps_serving_everything_at_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), "", &dev()).await;
    assert_eq!(as_.issuer, as_.origin);
    for location in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
        "/jwks",
    ] {
        let (status, doc) = json_of(
            http()
                .get(format!("{}{location}", as_.origin))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{location}");
        if location != "/jwks" {
            assert_eq!(doc["issuer"], as_.origin);
            assert_eq!(doc["token_endpoint"], format!("{}/token", as_.origin));
        }
    }
    let client = public_client(&as_, LOOPBACK_REDIRECT).await;
    let p = pkce();
    let code = code_for(&as_, &client, &p, Some(LOOPBACK_REDIRECT)).await;
    let (status, body) = token_form(
        &as_,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", LOOPBACK_REDIRECT),
            ("code_verifier", &p.verifier),
            ("client_id", &client),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    as_.stop().await;
}

/// The product page's walkthrough against an issuer under `/oauth`: its registration JSON
/// (with the non-standard `resource` member and `claude://oauth/callback`), the consent
/// redirect carrying `iss`, a JSON token request, a JSON revocation, and the token verified
/// by bmm's resource-server verifier, which finds the metadata where RFC 8414 says.
#[tokio::test]
async fn product_page_walkthrough_works_with_the_issuer_under_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), "/oauth", &dev()).await;
    let (status, registered) = register(
        &as_,
        json!({
            "client_name": "Claude Desktop",
            "redirect_uris": ["claude://oauth/callback"],
            "token_endpoint_auth_method": "none",
            "resource": RESOURCE
        }),
    )
    .await;
    assert_eq!(status, 201, "{registered}");
    let client = registered["client_id"].as_str().unwrap().to_owned();
    assert_eq!(
        registered["redirect_uris"],
        json!(["claude://oauth/callback"])
    );
    let p = pkce();
    let location = authorize(&as_, &client, &p, Some("claude://oauth/callback")).await;
    assert!(
        location.starts_with("claude://oauth/callback?"),
        "{location}"
    );
    let q = query_of(&location);
    assert_eq!(q["iss"], as_.issuer, "RFC 9207 iss is the exact issuer");
    let (status, tokens) = token_json(
        &as_,
        &json!({
            "grant_type": "authorization_code",
            "code": q["code"],
            "code_verifier": p.verifier,
            "client_id": client,
            "redirect_uri": "claude://oauth/callback",
            "resource": RESOURCE
        }),
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    let access = tokens["access_token"].as_str().unwrap();
    let auth = bmm_middleware::AuthConfig::new(bmm_middleware::Resource::parse(RESOURCE).unwrap())
        .issuer(bmm_middleware::Issuer::parse(&as_.issuer).unwrap())
        .build()
        .unwrap();
    let context = auth.verify_token(access).await.unwrap();
    assert_eq!(context.subject(), Some("alice"));
    assert_eq!(context.issuer(), as_.issuer);
    // A JSON refresh, then a JSON revocation under the issuer path ends the grant.
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let (status, refreshed) = token_json(
        &as_,
        &json!({"grant_type": "refresh_token", "refresh_token": refresh, "client_id": client}),
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    let newer = refreshed["refresh_token"].as_str().unwrap();
    let revoked = http()
        .post(as_.at("/revoke"))
        .json(&json!({"token": newer, "client_id": client}))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let (status, body) = token_json(
        &as_,
        &json!({"grant_type": "refresh_token", "refresh_token": newer, "client_id": client}),
    )
    .await;
    assert_eq!(status, 400, "revoked: {body}");
    as_.stop().await;
}

#[test]
fn issuer_that_is_not_canonical_or_has_a_path_of_other_than_plain_segments_is_refused() {
    for issuer in [
        "http://127.0.0.1:4000/:id",
        "http://127.0.0.1:4000/a//b",
        "http://127.0.0.1:4000/a/%7Bx%7D",
        "http://127.0.0.1:4000/.well-known",
        "http://127.0.0.1:4000/a/../oauth",
        "http://127.0.0.1:80/oauth",
        "HTTP://LOCALHOST:4000/oauth",
    ] {
        let args =
            Args::try_parse_from(["bmm-as", "--issuer", issuer, "--resource", RESOURCE]).unwrap();
        assert!(Settings::from_args(args).is_err(), "{issuer}");
    }
    for issuer in [
        "http://127.0.0.1:4000/oauth",
        "http://127.0.0.1:4000/realms/dev-1/",
    ] {
        let args =
            Args::try_parse_from(["bmm-as", "--issuer", issuer, "--resource", RESOURCE]).unwrap();
        let settings = Settings::from_args(args).unwrap();
        assert_eq!(settings.issuer, issuer, "kept byte for byte");
    }
}

// ---- issue 13.3: JSON bodies, unknown registration members -------------------------------

#[tokio::test]
async fn registration_ignores_unknown_metadata_members_rfc7591() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), "", &[]).await;
    let (status, body) = register(
        &as_,
        json!({
            "client_name": "Claude Desktop",
            "redirect_uris": ["claude://oauth/callback"],
            "token_endpoint_auth_method": "none",
            "resource": RESOURCE,
            "x_vendor_extension": {"nested": [1, 2, 3]}
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(body["client_id"].as_str().unwrap().starts_with("bmm_"));
    assert!(body.get("x_vendor_extension").is_none());
    as_.stop().await;
}

#[tokio::test]
async fn token_request_accepts_json_body() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), "", &dev()).await;
    let client = public_client(&as_, LOOPBACK_REDIRECT).await;
    let p = pkce();
    let code = code_for(&as_, &client, &p, Some(LOOPBACK_REDIRECT)).await;
    // The media type may carry parameters.
    let response = http()
        .post(as_.at("/token"))
        .header("content-type", "application/json; charset=utf-8")
        .body(
            json!({
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": p.verifier,
                "client_id": client,
                "redirect_uri": LOOPBACK_REDIRECT,
                "resource": RESOURCE
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string());
    as_.stop().await;
}

#[tokio::test]
async fn token_request_with_an_unsupported_media_type_gets_415_with_an_oauth_error() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), "", &dev()).await;
    for (endpoint, content_type) in [
        ("/token", "text/plain"),
        ("/token", "multipart/form-data; boundary=x"),
        ("/revoke", "application/xml"),
    ] {
        let (status, body) = json_of(
            http()
                .post(as_.at(endpoint))
                .header("content-type", content_type)
                .body("grant_type=refresh_token&refresh_token=x&client_id=y")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 415, "{endpoint} {content_type}: {body}");
        assert_eq!(body["error"], "invalid_request");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("application/json")
        );
    }
    as_.stop().await;
}

#[tokio::test]
async fn token_json_body_must_be_an_object_of_distinct_string_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), "", &dev()).await;
    for body in [
        r#"{"grant_type": "refresh_token", "refresh_token": 5, "client_id": "x"}"#,
        r#"{"grant_type": "refresh_token", "grant_type": "refresh_token"}"#,
        r#"["grant_type", "refresh_token"]"#,
        r#"{"grant_type": "refresh_token""#,
    ] {
        let (status, answer) = json_of(
            http()
                .post(as_.at("/token"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"], "invalid_request", "{body}");
    }
    as_.stop().await;
}

// ---- issue 12 item 12: codes are checked before they are consumed -------------------------

#[tokio::test]
async fn wrong_code_verifier_does_not_burn_the_code() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), "", &dev()).await;
    let client = public_client(&as_, LOOPBACK_REDIRECT).await;
    let other = public_client(&as_, LOOPBACK_REDIRECT).await;
    let p = pkce();
    let wrong = pkce();
    let code = code_for(&as_, &client, &p, Some(LOOPBACK_REDIRECT)).await;
    let attempt = |client: &str, verifier: &str, redirect: &str| {
        vec![
            ("grant_type".to_owned(), "authorization_code".to_owned()),
            ("code".to_owned(), code.clone()),
            ("redirect_uri".to_owned(), redirect.to_owned()),
            ("code_verifier".to_owned(), verifier.to_owned()),
            ("client_id".to_owned(), client.to_owned()),
        ]
    };
    // An interceptor without the verifier, another client, a wrong redirect URI: each is
    // refused, and the code stays redeemable.
    for (why, form) in [
        (
            "wrong verifier",
            attempt(&client, &wrong.verifier, LOOPBACK_REDIRECT),
        ),
        (
            "another client",
            attempt(&other, &p.verifier, LOOPBACK_REDIRECT),
        ),
        (
            "wrong redirect",
            attempt(&client, &p.verifier, "http://127.0.0.1:33418/other"),
        ),
    ] {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (status, body) = token_form(&as_, &form).await;
        assert_eq!(status, 400, "{why}: {body}");
        assert_eq!(body["error"], "invalid_grant", "{why}");
    }
    let right = attempt(&client, &p.verifier, LOOPBACK_REDIRECT);
    let right: Vec<(&str, &str)> = right
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (status, body) = token_form(&as_, &right).await;
    assert_eq!(
        status, 200,
        "the right verifier still redeems the code: {body}"
    );
    // A replay by the right client is detected and revokes what the code produced.
    let (status, _) = token_form(&as_, &right).await;
    assert_eq!(status, 400);
    let (status, _) = token_form(
        &as_,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", body["refresh_token"].as_str().unwrap()),
            ("client_id", &client),
        ],
    )
    .await;
    assert_eq!(status, 400, "the replay revoked the grant");
    as_.stop().await;
}

#[tokio::test]
async fn token_request_without_redirect_uri_is_refused_when_the_authorization_request_had_one() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), "", &dev()).await;
    let client = public_client(&as_, LOOPBACK_REDIRECT).await;
    let p = pkce();
    let code = code_for(&as_, &client, &p, Some(LOOPBACK_REDIRECT)).await;
    let (status, body) = token_form(
        &as_,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", &p.verifier),
            ("client_id", &client),
        ],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("redirect_uri")
    );
    // Refused without burning the code.
    let (status, body) = token_form(
        &as_,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", LOOPBACK_REDIRECT),
            ("code_verifier", &p.verifier),
            ("client_id", &client),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // When the authorization request named none (one registered URI), none is needed.
    let p = pkce();
    let code = code_for(&as_, &client, &p, None).await;
    let (status, body) = token_form(
        &as_,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", &p.verifier),
            ("client_id", &client),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    as_.stop().await;
}

#[tokio::test]
async fn concurrent_redemptions_of_one_code_have_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), "", &dev()).await;
    let client = public_client(&as_, LOOPBACK_REDIRECT).await;
    let p = pkce();
    let code = code_for(&as_, &client, &p, Some(LOOPBACK_REDIRECT)).await;
    let form = vec![
        ("grant_type", "authorization_code".to_owned()),
        ("code", code),
        ("redirect_uri", LOOPBACK_REDIRECT.to_owned()),
        ("code_verifier", p.verifier.clone()),
        ("client_id", client),
    ];
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = as_.at("/token");
        let form = form.clone();
        tasks.push(tokio::spawn(async move {
            http()
                .post(url)
                .form(&form)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    as_.stop().await;
}

// ---- issue 12 item 10: revocation ownership ----------------------------------------------

#[tokio::test]
async fn revocation_by_another_client_has_no_effect() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), "", &dev()).await;
    let owner = public_client(&as_, LOOPBACK_REDIRECT).await;
    let intruder = public_client(&as_, LOOPBACK_REDIRECT).await;
    let p = pkce();
    let code = code_for(&as_, &owner, &p, Some(LOOPBACK_REDIRECT)).await;
    let (status, tokens) = token_form(
        &as_,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", LOOPBACK_REDIRECT),
            ("code_verifier", &p.verifier),
            ("client_id", &owner),
        ],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let revoked = http()
        .post(as_.at("/revoke"))
        .form(&[("token", refresh), ("client_id", &intruder)])
        .send()
        .await
        .unwrap();
    assert_eq!(
        revoked.status(),
        200,
        "RFC 7009: answered like an unknown token"
    );
    let (status, body) = token_form(
        &as_,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", &owner),
        ],
    )
    .await;
    assert_eq!(status, 200, "the owner's token still works: {body}");
    // The owner can revoke its own.
    let newer = body["refresh_token"].as_str().unwrap();
    let revoked = http()
        .post(as_.at("/revoke"))
        .form(&[("token", newer), ("client_id", &owner)])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let (status, _) = token_form(
        &as_,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", newer),
            ("client_id", &owner),
        ],
    )
    .await;
    assert_eq!(status, 400);
    as_.stop().await;
}

// ---- issue 12 item 17: dev-mode CORS -------------------------------------------------------

async fn preflight(url: &str, origin: &str) -> Option<String> {
    let response = http()
        .request(reqwest::Method::OPTIONS, url)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    response
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn dev_mode_answers_cors_on_register_token_and_revoke_only_for_loopback_origins() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), "/oauth", &dev()).await;
    for endpoint in ["/register", "/token", "/revoke"] {
        let url = as_.at(endpoint);
        assert_eq!(
            preflight(&url, "https://evil.example").await,
            None,
            "{endpoint}: no CORS for a remote page in dev mode"
        );
        assert_eq!(preflight(&url, "null").await, None, "{endpoint}");
        for local in [
            "http://localhost:6274",
            "http://127.0.0.1:3000",
            "http://[::1]:8080",
        ] {
            assert_eq!(
                preflight(&url, local).await.as_deref(),
                Some(local),
                "{endpoint}: {local}"
            );
        }
    }
    // A cross-origin registration from a remote page gets no readable answer.
    let response = http()
        .post(as_.at("/register"))
        .header("origin", "https://evil.example")
        .json(&json!({"redirect_uris": ["https://evil.example/cb"], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    // Metadata stays public.
    assert_eq!(
        preflight(
            &format!(
                "{}/.well-known/oauth-authorization-server/oauth",
                as_.origin
            ),
            "https://evil.example"
        )
        .await
        .as_deref(),
        Some("*")
    );
    as_.stop().await;
}

#[tokio::test]
async fn outside_dev_mode_token_and_register_answer_cors_for_any_origin() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), "", &[]).await;
    for endpoint in ["/register", "/token", "/revoke"] {
        assert_eq!(
            preflight(&as_.at(endpoint), "https://app.example")
                .await
                .as_deref(),
            Some("*"),
            "{endpoint}"
        );
    }
    as_.stop().await;
}

// ---- issue 12 item 15: connection time limits ----------------------------------------------

/// Reads until the server closes the connection; returns how long that took, or `None`
/// if it was still open after `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let result = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    result.ok().map(|()| start.elapsed())
}

#[tokio::test]
async fn slow_client_with_partial_headers_is_disconnected_within_the_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // A long idle limit: only the header deadline can end this connection.
    let as_ = TestAs::start(
        dir.path(),
        "",
        &["--header-read-timeout", "1", "--idle-timeout", "60"],
    )
    .await;
    let addr = as_.origin.trim_start_matches("http://").to_owned();
    let start = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    // Keep dripping a byte every 200 ms: the header deadline does not move.
    let (mut reader, mut writer) = stream.into_split();
    let drip = tokio::spawn(async move {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b"a").await.is_err() {
                break;
            }
        }
    });
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    drip.abort();
    assert!(closed.is_ok(), "a slow header sender is disconnected");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "within the 1 s limit (plus slack): {:?}",
        start.elapsed()
    );
    as_.stop().await;
}

#[tokio::test]
async fn idle_connection_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(
        dir.path(),
        "",
        &["--header-read-timeout", "30", "--idle-timeout", "1"],
    )
    .await;
    let addr = as_.origin.trim_start_matches("http://").to_owned();
    // A connection that never sends a byte.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let elapsed = closed_within(&mut silent, Duration::from_secs(4)).await;
    assert!(elapsed.is_some(), "a silent connection is closed");
    // A keep-alive connection after one request.
    let mut kept = tokio::net::TcpStream::connect(&addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let elapsed = closed_within(&mut kept, Duration::from_secs(4)).await;
    assert!(elapsed.is_some(), "an idle keep-alive connection is closed");
    as_.stop().await;
}

#[tokio::test]
async fn connections_past_the_per_address_cap_are_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), "", &["--max-connections-per-address", "2"]).await;
    let addr = as_.origin.trim_start_matches("http://").to_owned();
    let first = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let second = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // The server may see the write before closing; either way the third gets no answer.
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), third.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the third connection is closed");
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    drop(first);
    // Once a slot is free, a new connection is served.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = http()
        .get(format!("{}/healthz", as_.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(second);
    as_.stop().await;
}

#[tokio::test]
async fn idle_http2_connection_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), "", &["--idle-timeout", "1"]).await;
    let addr = as_.origin.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // HTTP/2 with prior knowledge: the preface and an empty SETTINGS frame, then nothing.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        n >= 9 && buf[3] == 4,
        "the server answers with its SETTINGS"
    );
    let elapsed = closed_within(&mut stream, Duration::from_secs(4)).await;
    assert!(
        elapsed.is_some(),
        "an HTTP/2 connection with no stream is closed"
    );
    as_.stop().await;
}
