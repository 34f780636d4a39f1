//! The resource-server rules of bmm-middleware, each against a real server on 127.0.0.1:0
//! with real keys and a JWKS served over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use bmm_middleware::{KeySettings, ScopeHierarchy, ScopePolicy};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

fn fast_keys() -> KeySettings {
    KeySettings::default()
        .refetch_cooldown(Duration::from_millis(300))
        .unknown_kid_ttl(Duration::from_millis(300))
}

#[tokio::test]
async fn missing_token_gets_401_with_resource_metadata_and_no_error() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| {
        c.scope_policy(ScopePolicy::new().require(["mcp:read"]).unwrap())
    })
    .await;
    let r = post(&server.url, None).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.www_authenticate().unwrap(),
        format!(
            "Bearer resource_metadata=\"{}\", scope=\"mcp:read\"",
            server.metadata_url()
        )
    );
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(r.body["error"], "unauthorized");
}

#[tokio::test]
async fn valid_token_reaches_the_service_with_auth_context_and_without_authorization_header() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let token = key.sign(&issuer.claims(&server.resource, "mcp:read mcp:write"));
    let r = post(&server.url, Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["subject"], "alice");
    assert_eq!(r.body["client_id"], "bmm_test_client");
    assert_eq!(r.body["scopes"], json!(["mcp:read", "mcp:write"]));
    assert_eq!(
        r.body["authorization_seen"], false,
        "the token must not reach the service"
    );
}

#[tokio::test]
async fn lowercase_bearer_scheme_is_accepted() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let token = key.sign(&issuer.claims(&server.resource, ""));
    let r = reply(
        client()
            .post(&server.url)
            .header("authorization", format!("bearer {token}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn two_authorization_headers_get_400_invalid_request() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let token = key.sign(&issuer.claims(&server.resource, ""));
    let response = raw(
        server.addr,
        &format!(
            "POST /mcp HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            server.addr
        ),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer error=\"invalid_request\""),
        "{response}"
    );
}

#[tokio::test]
async fn malformed_authorization_header_gets_400_invalid_request() {
    let issuer = TestIssuer::start(&[&TestKey::rsa_a()]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    for value in ["Bearer", "Bearer a b", "Bearer a,b"] {
        let r = reply(
            client()
                .post(&server.url)
                .header("authorization", value)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 400, "{value}");
        assert!(
            r.www_authenticate()
                .unwrap()
                .contains("error=\"invalid_request\""),
            "{value}"
        );
        assert!(
            r.www_authenticate().unwrap().contains("resource_metadata="),
            "{value}"
        );
    }
}

#[tokio::test]
async fn token_in_query_string_is_ignored() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let token = key.sign(&issuer.claims(&server.resource, ""));
    let r = post(&format!("{}?access_token={token}", server.url), None).await;
    assert_eq!(r.status, 401);
    assert!(!r.www_authenticate().unwrap().contains("error="));
}

#[tokio::test]
async fn other_scheme_is_treated_as_no_credentials() {
    let issuer = TestIssuer::start(&[&TestKey::rsa_a()]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let r = reply(
        client()
            .post(&server.url)
            .header("authorization", "Basic dXNlcjpwYXNz")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(!r.www_authenticate().unwrap().contains("error="));
}

async fn expect_invalid_token(server: &TestServer, token: &str, why: &str) -> Reply {
    let r = post(&server.url, Some(token)).await;
    assert_eq!(r.status, 401, "{why}: {}", r.text);
    let challenge = r.www_authenticate().unwrap_or_default().to_owned();
    assert!(
        challenge.starts_with("Bearer error=\"invalid_token\""),
        "{why}: {challenge}"
    );
    assert!(
        challenge.contains(&format!("resource_metadata=\"{}\"", server.metadata_url())),
        "{why}: {challenge}"
    );
    assert_eq!(r.body["error"], "invalid_token", "{why}");
    r
}

#[tokio::test]
async fn expired_token_is_rejected() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c.leeway(Duration::from_secs(5)).unwrap()).await;
    let mut claims = issuer.claims(&server.resource, "");
    claims["exp"] = json!(now() - 60);
    let r = expect_invalid_token(&server, &key.sign(&claims), "expired").await;
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    claims["exp"] = json!(now() - 2);
    let within_leeway = post(&server.url, Some(&key.sign(&claims))).await;
    assert_eq!(
        within_leeway.status, 200,
        "leeway is honoured: {}",
        within_leeway.text
    );
}

#[tokio::test]
async fn token_without_exp_is_rejected() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let mut claims = issuer.claims(&server.resource, "");
    claims.as_object_mut().unwrap().remove("exp");
    expect_invalid_token(&server, &key.sign(&claims), "no exp").await;
    claims["exp"] = json!("soon");
    expect_invalid_token(&server, &key.sign(&claims), "string exp").await;
}

#[tokio::test]
async fn not_yet_valid_token_is_rejected() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let mut claims = issuer.claims(&server.resource, "");
    claims["nbf"] = json!(now() + 600);
    let r = expect_invalid_token(&server, &key.sign(&claims), "nbf").await;
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap()
            .contains("not valid yet")
    );
}

#[tokio::test]
async fn wrong_issuer_is_rejected_without_any_fetch() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = issuer.jwks_fetches();
    let mut claims = issuer.claims(&server.resource, "");
    claims["iss"] = json!("https://evil.example");
    expect_invalid_token(&server, &key.sign(&claims), "foreign iss").await;
    claims["iss"] = json!(format!("{}/", issuer.issuer));
    expect_invalid_token(
        &server,
        &key.sign(&claims),
        "iss with a trailing slash is another issuer",
    )
    .await;
    assert_eq!(issuer.jwks_fetches(), before);
}

#[tokio::test]
async fn token_without_aud_is_rejected() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let mut claims = issuer.claims(&server.resource, "");
    claims.as_object_mut().unwrap().remove("aud");
    let r = expect_invalid_token(&server, &key.sign(&claims), "no aud").await;
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap()
            .contains("aud")
    );
    claims["aud"] = json!([]);
    expect_invalid_token(&server, &key.sign(&claims), "empty aud").await;
}

#[tokio::test]
async fn aud_of_another_server_is_rejected() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let other = format!(
        "http://127.0.0.1:{}/mcp",
        server.addr.port().wrapping_add(1)
    );
    for aud in [
        json!(other),
        json!(format!("{}2", server.resource)),
        json!(format!("http://{}/", server.addr)),
    ] {
        let mut claims = issuer.claims(&server.resource, "");
        claims["aud"] = aud.clone();
        expect_invalid_token(&server, &key.sign(&claims), &format!("aud {aud}")).await;
    }
}

#[tokio::test]
async fn aud_array_containing_this_server_is_accepted() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let mut claims = issuer.claims(&server.resource, "");
    claims["aud"] = json!(["https://other.example/mcp", server.resource]);
    let r = post(&server.url, Some(&key.sign(&claims))).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn alg_none_is_rejected() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let claims = issuer.claims(&server.resource, "");
    for alg in ["none", "None", "NONE"] {
        let token = format!(
            "{}.{}.",
            b64(&json!({"alg": alg, "kid": key.kid})),
            b64(&claims)
        );
        expect_invalid_token(&server, &token, alg).await;
    }
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_rejected() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let claims = issuer.claims(&server.resource, "");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    for secret in [
        key.public_pem.clone(),
        key.jwk["n"].as_str().unwrap().as_bytes().to_vec(),
        Vec::new(),
    ] {
        let token =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&secret)).unwrap();
        expect_invalid_token(&server, &token, "HS256 confusion").await;
    }
}

#[tokio::test]
async fn tampered_payload_fails_the_signature_check() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let token = key.sign(&issuer.claims(&server.resource, "mcp:read"));
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(&issuer.claims(&server.resource, "mcp:admin")),
        parts[2]
    );
    let r = expect_invalid_token(&server, &forged, "forged payload").await;
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap()
            .contains("signature")
    );
    let other_key = TestKey::load("rsa-b", "rsa-a", Algorithm::RS256);
    expect_invalid_token(
        &server,
        &other_key.sign(&issuer.claims(&server.resource, "")),
        "signed by another key",
    )
    .await;
}

#[tokio::test]
async fn key_is_pinned_to_its_alg() {
    let rsa = TestKey::rsa_a().with_alg_in_jwk();
    let ec = TestKey::ec();
    let issuer = TestIssuer::start(&[&rsa, &ec]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let claims = issuer.claims(&server.resource, "");
    let es = post(&server.url, Some(&ec.sign(&claims))).await;
    assert_eq!(es.status, 200, "ES256 verifies: {}", es.text);
    // RS256 key used as PS256: the JWK pins RS256.
    let mut header = Header::new(Algorithm::PS256);
    header.kid = Some(rsa.kid.clone());
    expect_invalid_token(
        &server,
        &rsa.sign_with_header(&header, &claims),
        "alg other than the key's",
    )
    .await;
    // An RSA signature presented under the EC key's kid.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(ec.kid.clone());
    expect_invalid_token(
        &server,
        &rsa.sign_with_header(&header, &claims),
        "kid of a key of another type",
    )
    .await;
}

#[tokio::test]
async fn unknown_kid_triggers_one_refetch_then_cooldown() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| {
        c.key_settings(
            KeySettings::default()
                .refetch_cooldown(Duration::from_millis(700))
                .unknown_kid_ttl(Duration::from_secs(30)),
        )
    })
    .await;
    // Warm the cache with a good token, then let the cooldown of that fetch pass.
    let ok = post(
        &server.url,
        Some(&key.sign(&issuer.claims(&server.resource, ""))),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let warm = issuer.jwks_fetches();
    assert_eq!(warm, 1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let claims = issuer.claims(&server.resource, "");
    let stranger = TestKey::load("rsa-b", "unknown-1", Algorithm::RS256);
    // Fifty concurrent requests with random kids.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut k = stranger.clone();
        k.kid = format!("random-{i}");
        let token = k.sign(&claims);
        let url = server.url.clone();
        tasks.push(tokio::spawn(async move {
            post(&url, Some(&token)).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    assert_eq!(
        issuer.jwks_fetches(),
        warm + 1,
        "one refetch for a burst of unknown kids"
    );
    expect_invalid_token(&server, &stranger.sign(&claims), "unknown kid in cooldown").await;
    assert_eq!(
        issuer.jwks_fetches(),
        warm + 1,
        "no refetch during the cooldown"
    );
    // After the cooldown a kid that a fresh fetch proved absent is still not refetched.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut again = stranger.clone();
    again.kid = "random-3".to_owned();
    expect_invalid_token(&server, &again.sign(&claims), "negatively cached kid").await;
    assert_eq!(issuer.jwks_fetches(), warm + 1, "negative cache holds");
}

#[tokio::test]
async fn key_rotation_is_picked_up() {
    let a = TestKey::rsa_a();
    let b = TestKey::rsa_b();
    let issuer = TestIssuer::start(&[&a]).await;
    let server = TestServer::start(&issuer, |c| c.key_settings(fast_keys())).await;
    let claims = issuer.claims(&server.resource, "");
    assert_eq!(post(&server.url, Some(&a.sign(&claims))).await.status, 200);
    issuer.set_keys(&[&a, &b]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let rotated = post(&server.url, Some(&b.sign(&claims))).await;
    assert_eq!(rotated.status, 200, "new key picked up: {}", rotated.text);
    assert_eq!(
        post(&server.url, Some(&a.sign(&claims))).await.status,
        200,
        "old key still valid"
    );
}

#[tokio::test]
async fn jwks_host_down_with_keys_cached_still_serves() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| {
        c.token_cache_capacity(0)
            .key_settings(fast_keys().ttl_bounds(Duration::ZERO, Duration::ZERO, Duration::ZERO))
    })
    .await;
    let claims = issuer.claims(&server.resource, "");
    assert_eq!(
        post(&server.url, Some(&key.sign(&claims))).await.status,
        200
    );
    issuer.set_down(true);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(350)).await;
        let r = post(&server.url, Some(&key.sign(&claims))).await;
        assert_eq!(
            r.status, 200,
            "last good keys served while the issuer is down: {}",
            r.text
        );
    }
    assert!(
        issuer.jwks_fetches() >= 2,
        "expired keys were refreshed in the background"
    );
}

#[tokio::test]
async fn jwks_never_reached_answers_503_with_json_body() {
    let key = TestKey::rsa_a();
    let dead = format!("http://{}", dead_address());
    let server = TestServer::start_for_issuer(&dead, |c| c.key_settings(fast_keys()), |s| s).await;
    let claims = json!({"iss": dead, "aud": server.resource, "exp": now() + 60, "sub": "x"});
    let r = post(&server.url, Some(&key.sign(&claims))).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.body["error"], "temporarily_unavailable");
    assert!(r.headers.get("retry-after").is_some());
    assert!(r.www_authenticate().is_none());
}

#[tokio::test]
async fn discovery_metadata_with_another_issuer_is_not_used() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    *issuer.state.metadata_issuer_override.lock().unwrap() =
        Some("https://impostor.example".into());
    let server = TestServer::start(&issuer, |c| c.key_settings(fast_keys())).await;
    let r = post(
        &server.url,
        Some(&key.sign(&issuer.claims(&server.resource, ""))),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(issuer.jwks_fetches(), 0);
}

#[tokio::test]
async fn discovery_uses_path_insertion_then_oidc_for_issuers_with_a_path() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start_at_path("/tenant", &[&key]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    assert_eq!(
        post(
            &server.url,
            Some(&key.sign(&issuer.claims(&server.resource, "")))
        )
        .await
        .status,
        200
    );
    let oidc_only = TestIssuer::start_at_path("/realms/dev", &[&key]).await;
    oidc_only
        .state
        .serve_rfc8414
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let server = TestServer::start(&oidc_only, |c| c).await;
    assert_eq!(
        post(
            &server.url,
            Some(&key.sign(&oidc_only.claims(&server.resource, "")))
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn jwks_uri_override_skips_discovery() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    issuer
        .state
        .serve_rfc8414
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let jwks = format!("http://{}/jwks", issuer.addr);
    let name = issuer.issuer.clone();
    // Build directly: the override replaces discovery entirely.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let resource = format!("http://{addr}/mcp");
    let auth = bmm_middleware::AuthConfig::new(bmm_middleware::Resource::parse(&resource).unwrap())
        .issuer_with_jwks_uri(bmm_middleware::Issuer::parse(&name).unwrap(), &jwks)
        .unwrap()
        .build()
        .unwrap();
    let r = auth
        .verify_token(&key.sign(&issuer.claims(&resource, "")))
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(
        issuer
            .state
            .metadata_fetches
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn insufficient_scope_gets_403_with_the_full_scope_list() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| {
        c.scope_policy(
            ScopePolicy::new()
                .require(["mcp:read", "mcp:write"])
                .unwrap(),
        )
    })
    .await;
    let r = post(
        &server.url,
        Some(&key.sign(&issuer.claims(&server.resource, "mcp:read"))),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let challenge = r.www_authenticate().unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"mcp:read mcp:write\""),
        "{challenge}"
    );
    assert!(
        challenge.contains(&format!("resource_metadata=\"{}\"", server.metadata_url())),
        "{challenge}"
    );
    assert_eq!(r.body["error"], "insufficient_scope");
}

#[tokio::test]
async fn scp_claim_array_grants_scopes() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| {
        c.scope_policy(ScopePolicy::new().require(["mcp:read"]).unwrap())
    })
    .await;
    let mut claims = issuer.claims(&server.resource, "");
    claims.as_object_mut().unwrap().remove("scope");
    claims["scp"] = json!(["mcp:read"]);
    assert_eq!(
        post(&server.url, Some(&key.sign(&claims))).await.status,
        200
    );
}

#[tokio::test]
async fn scope_hierarchy_lets_a_broader_scope_satisfy_a_narrower_one() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let hierarchy = ScopeHierarchy::new()
        .imply("mcp:admin", ["mcp:read"])
        .unwrap();
    let server = TestServer::start(&issuer, |c| {
        c.scope_policy(
            ScopePolicy::new()
                .require(["mcp:read"])
                .unwrap()
                .with_hierarchy(hierarchy),
        )
    })
    .await;
    let admin = post(
        &server.url,
        Some(&key.sign(&issuer.claims(&server.resource, "mcp:admin"))),
    )
    .await;
    assert_eq!(admin.status, 200, "{}", admin.text);
    let other = post(
        &server.url,
        Some(&key.sign(&issuer.claims(&server.resource, "mcp:other"))),
    )
    .await;
    assert_eq!(other.status, 403);
}

async fn call_tool(server: &TestServer, token: &str, tool: &str, mcp_name: Option<&str>) -> Reply {
    let mut req = client()
        .post(&server.url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": {}}}).to_string());
    if let Some(name) = mcp_name {
        req = req.header("mcp-name", name);
    }
    reply(req.send().await.unwrap()).await
}

#[tokio::test]
async fn per_tool_scopes_are_applied_to_tools_call() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| {
        c.scope_policy(
            ScopePolicy::new()
                .require(["mcp:read"])
                .and_then(|p| p.require_for_tool("delete_repo", ["repo:admin"]))
                .unwrap(),
        )
    })
    .await;
    let reader = key.sign(&issuer.claims(&server.resource, "mcp:read"));
    let admin = key.sign(&issuer.claims(&server.resource, "mcp:read repo:admin"));
    let free = call_tool(&server, &reader, "list_repos", None).await;
    assert_eq!(free.status, 200, "{}", free.text);
    assert!(
        free.body["body_len"].as_u64().unwrap() > 0,
        "the body reaches the service intact"
    );
    let denied = call_tool(&server, &reader, "delete_repo", None).await;
    assert_eq!(denied.status, 403, "{}", denied.text);
    assert!(
        denied
            .www_authenticate()
            .unwrap()
            .contains("scope=\"mcp:read repo:admin\"")
    );
    assert_eq!(
        call_tool(&server, &admin, "delete_repo", None).await.status,
        200
    );
}

#[tokio::test]
async fn mcp_name_header_must_agree_with_the_body() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| {
        c.scope_policy(
            ScopePolicy::new()
                .require_for_tool("delete_repo", ["repo:admin"])
                .unwrap(),
        )
    })
    .await;
    let reader = key.sign(&issuer.claims(&server.resource, ""));
    let lying = call_tool(&server, &reader, "delete_repo", Some("list_repos")).await;
    assert_eq!(lying.status, 400, "{}", lying.text);
    assert_eq!(lying.body["error"]["code"], -32020);
    assert_eq!(
        call_tool(&server, &reader, "list_repos", Some("list_repos"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn protected_resource_metadata_at_both_paths_uses_configured_resource_even_when_host_differs()
{
    let issuer = TestIssuer::start(&[&TestKey::rsa_a()]).await;
    let server = TestServer::start_with(
        &issuer,
        |c| c,
        |s| {
            s.metadata(
                bmm_middleware::ProtectedResourceMetadata::new(s_resource(), [])
                    .scopes_supported(["mcp:read"])
                    .unwrap(),
            )
        },
    )
    .await;
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let response = raw(
            server.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
        assert!(
            response.contains("\"resource\":\"https://rs.example/mcp\""),
            "{path}: {response}"
        );
        assert!(!response.contains("attacker"), "{path}: {response}");
        assert!(
            response.contains("\"bearer_methods_supported\":[\"header\"]"),
            "{response}"
        );
        assert!(
            response
                .to_ascii_lowercase()
                .contains("access-control-allow-origin: *"),
            "{response}"
        );
    }
}

fn s_resource() -> &'static bmm_middleware::Resource {
    static R: std::sync::OnceLock<bmm_middleware::Resource> = std::sync::OnceLock::new();
    R.get_or_init(|| bmm_middleware::Resource::parse("https://rs.example/mcp").unwrap())
}

#[tokio::test]
async fn protected_resource_metadata_lists_issuers_and_answers_head_options_and_405() {
    let issuer = TestIssuer::start(&[&TestKey::rsa_a()]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let get = reply(client().get(server.metadata_url()).send().await.unwrap()).await;
    assert_eq!(get.status, 200);
    assert_eq!(get.body["resource"], server.resource);
    assert_eq!(get.body["authorization_servers"], json!([issuer.issuer]));
    let head = client().head(server.metadata_url()).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let options = client()
        .request(reqwest::Method::OPTIONS, server.metadata_url())
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), 204);
    assert_eq!(options.headers()["access-control-allow-origin"], "*");
    let post = client().post(server.metadata_url()).send().await.unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD, OPTIONS");
}

#[tokio::test]
async fn bad_origin_is_refused_with_403_before_authentication() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let token = key.sign(&issuer.claims(&server.resource, ""));
    for origin in ["https://evil.example", "null"] {
        let r = reply(
            client()
                .post(&server.url)
                .header("origin", origin)
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 403, "{origin}");
        assert!(r.www_authenticate().is_none());
    }
    let allowed = reply(
        client()
            .post(&server.url)
            .header("origin", "http://localhost:6274")
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.headers["access-control-allow-origin"],
        "http://localhost:6274"
    );
    assert!(
        allowed.headers["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("WWW-Authenticate")
    );
}

#[tokio::test]
async fn cors_preflight_from_an_allowed_origin_is_answered_without_a_token() {
    let issuer = TestIssuer::start(&[&TestKey::rsa_a()]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let r = client()
        .request(reqwest::Method::OPTIONS, &server.url)
        .header("origin", "http://localhost:6274")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, mcp-protocol-version",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:6274"
    );
}

#[tokio::test]
async fn host_not_allowed_is_refused_with_403() {
    let issuer = TestIssuer::start(&[&TestKey::rsa_a()]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let response = raw(server.addr, "POST /mcp HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
}

#[tokio::test]
async fn request_body_over_the_limit_is_refused_with_413() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start_with(&issuer, |c| c, |s| s.max_body_bytes(1024)).await;
    let token = key.sign(&issuer.claims(&server.resource, ""));
    let r = client()
        .post(&server.url)
        .header("authorization", format!("Bearer {token}"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn healthz_answers_and_other_paths_are_404() {
    let issuer = TestIssuer::start(&[&TestKey::rsa_a()]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let health = client()
        .get(format!("http://{}/healthz", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let other = client()
        .post(format!("http://{}/admin", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

#[tokio::test]
async fn oversized_token_is_rejected_unread() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c.max_token_bytes(512)).await;
    let mut claims = issuer.claims(&server.resource, "");
    claims["pad"] = json!("x".repeat(1000));
    expect_invalid_token(&server, &key.sign(&claims), "too long").await;
}

#[tokio::test]
async fn graceful_shutdown_stops_the_server() {
    let issuer = TestIssuer::start(&[&TestKey::rsa_a()]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let addr = server.addr;
    assert_eq!(post(&server.url, None).await.status, 401);
    server.stop().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn server_started_before_its_issuer_recovers_within_seconds() {
    // The issuer's port is reserved but nothing listens yet.
    let key = TestKey::rsa_a();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let issuer_url = format!("http://{addr}");
    let server = TestServer::start_for_issuer(&issuer_url, |c| c, |s| s).await;
    let claims = json!({"iss": issuer_url, "aud": server.resource, "exp": now() + 60, "sub": "x"});
    assert_eq!(
        post(&server.url, Some(&key.sign(&claims))).await.status,
        503
    );
    // Now the issuer comes up on that address.
    let issuer = TestIssuer::start_on(addr, &[&key]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = post(&server.url, Some(&key.sign(&claims))).await;
    assert_eq!(
        r.status, 200,
        "keys fetched again after at most a second: {}",
        r.text
    );
    drop(issuer);
}
