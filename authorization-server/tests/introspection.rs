//! RFC 7662 introspection over real sockets: JWT and opaque access tokens active for the
//! resource server of their resource and inactive for another, unknown, expired, revoked
//! and malformed tokens inactive, unauthenticated callers refused, `private_key_jwt`
//! resource servers, opaque tokens revoked with their grant, rate limits (per resource
//! server once authenticated, per address for failed authentications), the config file's
//! checks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod as_harness;
mod common;

use as_harness::*;
use common::*;

use bmm_authorization_server::store::OpaqueToken;
use serde_json::json;

#[tokio::test]
async fn metadata_advertises_introspection_and_its_authentication() {
    let as_ = TestAs::start(&[]).await;
    let (status, doc) = json_of(
        http()
            .get(format!(
                "{}/.well-known/oauth-authorization-server",
                as_.url
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        doc["introspection_endpoint"],
        format!("{}/introspect", as_.url)
    );
    assert_eq!(
        doc["introspection_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "private_key_jwt"])
    );
    as_.stop().await;
}

#[tokio::test]
async fn jwt_and_opaque_tokens_are_active_for_their_resource_server_only() {
    let as_ = TestAs::start(&[]).await;
    let jwt = as_.machine_token(RESOURCE, None).await;
    let jwt = jwt["access_token"].as_str().unwrap().to_owned();
    assert_eq!(jwt.split('.').count(), 3);
    let opaque = as_.machine_token(OPAQUE_RESOURCE, None).await;
    assert_eq!(opaque["token_type"], "Bearer");
    let opaque = opaque["access_token"].as_str().unwrap().to_owned();
    assert!(opaque.starts_with("bmo_"), "{opaque}");
    assert_eq!(opaque.len(), 4 + 43);
    assert!(
        opaque[4..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );

    let (status, body) = as_.introspect("rs-jwt", &jwt).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], true);
    assert_eq!(body["iss"], as_.url);
    assert_eq!(body["sub"], "svc");
    assert_eq!(body["client_id"], "svc");
    assert_eq!(body["aud"], RESOURCE);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["jti"], jwt_claims(&jwt)["jti"]);
    assert!(body["exp"].as_u64().unwrap() > now());
    assert!(body["iat"].as_u64().unwrap() <= now());
    assert!(body.get("cnf").is_none());

    let (status, body) = as_.introspect("rs-opaque", &opaque).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], true);
    assert_eq!(body["aud"], OPAQUE_RESOURCE);
    assert_eq!(body["sub"], "svc");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["jti"].as_str().is_some_and(|j| !j.is_empty()));

    // Each resource server learns nothing of the other's tokens.
    for (rs, token) in [("rs-jwt", &opaque), ("rs-opaque", &jwt)] {
        let (status, body) = as_.introspect(rs, token).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"active": false}), "{rs}");
    }
    let events = as_.introspection_events().await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.iter().all(|e| e.outcome == "other_resource"));
    // Successes are not audited (the hot path).
    as_.stop().await;
}

#[tokio::test]
async fn garbage_expired_foreign_and_refresh_tokens_are_inactive() {
    let as_ = TestAs::start(&[]).await;
    let t = now();
    let keys = as_.state.keys();
    let expired = keys
        .sign(
            &json!({"iss": as_.url, "sub": "svc", "aud": RESOURCE, "exp": t - 10,
            "iat": t - 100, "nbf": t - 100, "jti": "j1", "scope": "", "client_id": "svc"}),
        )
        .unwrap();
    let other_issuer = keys
        .sign(
            &json!({"iss": "http://127.0.0.1:1", "sub": "svc", "aud": RESOURCE,
            "exp": t + 100, "iat": t, "jti": "j2", "scope": "", "client_id": "svc"}),
        )
        .unwrap();
    let good = as_.machine_token(RESOURCE, None).await;
    let good = good["access_token"].as_str().unwrap().to_owned();
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, _) = rest.rsplit_once('.').unwrap();
    let forged = format!("{head}.{payload}.{}", "A".repeat(342));
    // An opaque token past its expiry, as the store holds it until the cleanup.
    let stale = "bmo_stale-token-0123456789abcdef0123456789abcde";
    as_.state
        .store()
        .put_opaque(&OpaqueToken {
            token_sha256: sha256_hex(stale),
            family: None,
            client_id: "svc".to_owned(),
            subject: "svc".to_owned(),
            scope: String::new(),
            resource: OPAQUE_RESOURCE.to_owned(),
            jti: "stale".to_owned(),
            jkt: None,
            issued_at: t - 100,
            expires_at: t - 1,
        })
        .await
        .unwrap();
    let (_, grant) = as_.code_flow("web-public", OPAQUE_RESOURCE, None).await;
    let refresh = grant["refresh_token"].as_str().unwrap().to_owned();
    let long = "x".repeat(9000);
    for (rs, token) in [
        ("rs-jwt", "garbage"),
        ("rs-jwt", ""),
        ("rs-jwt", "a.b.c"),
        ("rs-jwt", expired.as_str()),
        ("rs-jwt", other_issuer.as_str()),
        ("rs-jwt", forged.as_str()),
        ("rs-jwt", long.as_str()),
        ("rs-opaque", "bmo_unknown"),
        ("rs-opaque", stale),
        ("rs-opaque", refresh.as_str()),
    ] {
        let (status, body) = as_.introspect(rs, token).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({"active": false}), "{token:.40}");
    }
    // The body is bounded (16 KiB).
    let huge = "y".repeat(20 * 1024);
    let response = http()
        .post(format!("{}/introspect", as_.url))
        .basic_auth("rs-jwt", Some(RS_SECRET))
        .form(&[("token", huge.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    // No token at all is a bad request.
    let response = http()
        .post(format!("{}/introspect", as_.url))
        .basic_auth("rs-jwt", Some(RS_SECRET))
        .form(&[("token_type_hint", "access_token")])
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    as_.stop().await;
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn callers_that_are_not_authenticated_resource_servers_get_invalid_client() {
    let as_ = TestAs::start(&[]).await;
    let token = as_.machine_token(RESOURCE, None).await;
    let token = token["access_token"].as_str().unwrap().to_owned();
    let url = format!("{}/introspect", as_.url);
    let attempts = [
        http().post(&url).form(&[("token", token.as_str())]),
        http()
            .post(&url)
            .basic_auth("rs-jwt", Some("wrong"))
            .form(&[("token", token.as_str())]),
        http()
            .post(&url)
            .basic_auth("nobody", Some(RS_SECRET))
            .form(&[("token", token.as_str())]),
        // A client of [[clients]] is not a resource server.
        http()
            .post(&url)
            .basic_auth("svc", Some(MACHINE_SECRET))
            .form(&[("token", token.as_str())]),
        // client_secret_post is not offered.
        http().post(&url).form(&[
            ("token", token.as_str()),
            ("client_id", "rs-jwt"),
            ("client_secret", RS_SECRET),
        ]),
    ];
    for request in attempts {
        let response = request.send().await.unwrap();
        assert!(response.headers().contains_key("www-authenticate"));
        let (status, body) = json_of(response).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"], "invalid_client");
        assert!(body.get("active").is_none());
    }
    let events = as_.introspection_events().await;
    assert_eq!(events.len(), 5, "{events:?}");
    assert!(events.iter().all(|e| e.outcome == "invalid_client"));
    assert!(events.iter().any(|e| e.client_id.as_deref() == Some("svc")));
    as_.stop().await;
}

/// Rule 3 of `introspect`: an authenticated resource server's introspections do not count
/// against its address (the token endpoint's bucket, 600 a minute); failed authentications
/// still do.
#[tokio::test]
async fn an_authenticated_resource_server_is_not_limited_by_the_token_endpoints_address_bucket() {
    let as_ = TestAs::start(&[]).await;
    let opaque = as_.machine_token(OPAQUE_RESOURCE, None).await;
    let opaque = opaque["access_token"].as_str().unwrap().to_owned();
    let url = format!("{}/introspect", as_.url);
    // An address of its own, so the count below starts at zero.
    let client = http_from(Some("127.0.0.7".parse().unwrap()));
    let introspect = |token: String| {
        let request = client
            .post(&url)
            .basic_auth("rs-opaque", Some(RS_OPAQUE_SECRET))
            .form(&[("token", token)]);
        async move { json_of(request.send().await.unwrap()).await }
    };
    // A flood of made-up tokens relayed by the resource server, its real one among them.
    for i in 0..650 {
        let real = i % 100 == 0;
        let token = if real {
            opaque.clone()
        } else {
            format!("bmo_{i:043}")
        };
        let (status, body) = introspect(token).await;
        assert_eq!(status, 200, "introspection {i}: {body}");
        assert_eq!(body["active"], real, "introspection {i}");
    }
    // Failed authentications from that address are counted from zero, and limited.
    for i in 0..600 {
        let response = client
            .post(&url)
            .basic_auth("rs-opaque", Some("wrong"))
            .form(&[("token", opaque.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "failure {i}");
    }
    let (status, body) = json_of(
        client
            .post(&url)
            .form(&[("token", opaque.as_str())])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "slow_down");
    // The resource server itself, from the exhausted address, is still answered.
    let (status, body) = introspect(opaque.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], true);
    as_.stop().await;
}

#[tokio::test]
async fn a_private_key_jwt_resource_server_introspects_and_its_assertions_are_single_use() {
    let as_ = TestAs::start(&[]).await;
    let token = as_.machine_token(RESOURCE, None).await;
    let token = token["access_token"].as_str().unwrap().to_owned();
    let endpoint = format!("{}/introspect", as_.url);
    let t = now();
    let assertion = as_.rs_key.sign(
        &json!({"alg": "ES256", "kid": "rs-key-1"}),
        &json!({"iss": "rs-jwt-key", "sub": "rs-jwt-key", "aud": endpoint,
            "iat": t, "exp": t + 60, "jti": unique()}),
    );
    let send = |assertion: String| {
        let form = vec![
            ("token", token.clone()),
            ("client_assertion_type", ASSERTION_TYPE.to_owned()),
            ("client_assertion", assertion),
        ];
        let request = http().post(&endpoint).form(&form);
        async move { json_of(request.send().await.unwrap()).await }
    };
    let (status, body) = send(assertion.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], true);
    let (status, body) = send(assertion).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    // Another key signing for the same resource server is refused.
    let other = EcKey::new().sign(
        &json!({"alg": "ES256", "kid": "rs-key-1"}),
        &json!({"iss": "rs-jwt-key", "sub": "rs-jwt-key", "aud": as_.url,
            "iat": t, "exp": t + 60, "jti": unique()}),
    );
    let (status, _) = send(other).await;
    assert_eq!(status, 401);
    as_.stop().await;
}

#[tokio::test]
async fn revoking_a_grant_makes_its_opaque_and_jwt_access_tokens_inactive() {
    let as_ = TestAs::start(&[]).await;
    let revoke = |token: String, client: &'static str| {
        let request = http()
            .post(format!("{}/revoke", as_.url))
            .form(&[("token", token.as_str()), ("client_id", client)]);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // Opaque: revoking the refresh token revokes the access token.
    let (status, grant) = as_.code_flow("web-public", OPAQUE_RESOURCE, None).await;
    assert_eq!(status, 200, "{grant}");
    let access = grant["access_token"].as_str().unwrap().to_owned();
    assert!(access.starts_with("bmo_"));
    let (_, body) = as_.introspect("rs-opaque", &access).await;
    assert_eq!(body["active"], true);
    assert_eq!(body["sub"], "bob");
    assert_eq!(body["client_id"], "web-public");
    assert_eq!(
        revoke(
            grant["refresh_token"].as_str().unwrap().to_owned(),
            "web-public"
        )
        .await,
        200
    );
    let (_, body) = as_.introspect("rs-opaque", &access).await;
    assert_eq!(body, json!({"active": false}));

    // Opaque: revoking the access token revokes it and its grant.
    let (_, grant) = as_.code_flow("web-public", OPAQUE_RESOURCE, None).await;
    let access = grant["access_token"].as_str().unwrap().to_owned();
    assert_eq!(revoke(access.clone(), "web-public").await, 200);
    let (_, body) = as_.introspect("rs-opaque", &access).await;
    assert_eq!(body, json!({"active": false}));
    let (status, body, _) = as_
        .token(
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", grant["refresh_token"].as_str().unwrap()),
                ("client_id", "web-public"),
            ],
            None,
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // A refresh issues an opaque token again; reuse detection revokes it with the grant.
    let (_, grant) = as_.code_flow("web-public", OPAQUE_RESOURCE, None).await;
    let first_refresh = grant["refresh_token"].as_str().unwrap().to_owned();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", first_refresh.as_str()),
        ("client_id", "web-public"),
    ];
    let (status, refreshed, _) = as_.token(&form, None, None).await;
    assert_eq!(status, 200, "{refreshed}");
    let access = refreshed["access_token"].as_str().unwrap().to_owned();
    assert!(access.starts_with("bmo_"));
    let (_, body) = as_.introspect("rs-opaque", &access).await;
    assert_eq!(body["active"], true);

    // JWT: the token names its grant; revoking the grant makes it inactive.
    let (_, grant) = as_.code_flow("web-public", RESOURCE, None).await;
    let access = grant["access_token"].as_str().unwrap().to_owned();
    assert!(jwt_claims(&access)["sid"].is_string());
    let (_, body) = as_.introspect("rs-jwt", &access).await;
    assert_eq!(body["active"], true);
    assert_eq!(body["scope"], jwt_claims(&access)["scope"]);
    assert_eq!(
        revoke(
            grant["refresh_token"].as_str().unwrap().to_owned(),
            "web-public"
        )
        .await,
        200
    );
    let (_, body) = as_.introspect("rs-jwt", &access).await;
    assert_eq!(body, json!({"active": false}));
    as_.stop().await;
}

#[test]
fn resource_server_config_errors_name_the_file_the_entry_and_the_field() {
    let hex = "ab".repeat(32);
    let cases = [
        (
            format!(
                "[[resource_servers]]\nresource = \"http://127.0.0.1:9/other\"\nclient_id = \"rs\"\nclient_secret_sha256 = \"{hex}\"\n"
            ),
            "resource:",
        ),
        (
            format!(
                "[[resource_servers]]\nresource = \"{RESOURCE}\"\nclient_id = \"rs\"\nclient_secret_sha256 = \"not-hex\"\n"
            ),
            "client_secret_sha256:",
        ),
        (
            format!("[[resource_servers]]\nresource = \"{RESOURCE}\"\nclient_id = \"rs\"\n"),
            "client_secret_sha256 / jwks / jwks_uri:",
        ),
        (
            format!(
                "[[resource_servers]]\nresource = \"{RESOURCE}\"\nclient_id = \"rs\"\nclient_secret_sha256 = \"{hex}\"\n\n[[resource_servers]]\nresource = \"{RESOURCE}\"\nclient_id = \"rs2\"\nclient_secret_sha256 = \"{hex}\"\ntoken_format = \"opaque\"\n"
            ),
            "token_format:",
        ),
        (
            format!(
                "[[resource_servers]]\nresource = \"{RESOURCE}\"\nclient_id = \"rs\"\njwks = '{{\"keys\": []}}'\n"
            ),
            "jwks:",
        ),
    ];
    for (text, field) in cases {
        let error = settings_error(&text);
        assert!(error.contains("config "), "{error}");
        assert!(error.contains("resource_servers["), "{error}");
        assert!(error.contains(field), "{field}: {error}");
    }
    let duplicate = format!(
        "[[resource_servers]]\nresource = \"{RESOURCE}\"\nclient_id = \"rs\"\nclient_secret_sha256 = \"{hex}\"\n\n[[resource_servers]]\nresource = \"{RESOURCE}\"\nclient_id = \"rs\"\nclient_secret_sha256 = \"{hex}\"\n"
    );
    assert!(settings_error(&duplicate).contains("resource_servers[1] (client_id `rs`): client_id"));
    let bad_format = format!(
        "[[resource_servers]]\nresource = \"{RESOURCE}\"\nclient_id = \"rs\"\nclient_secret_sha256 = \"{hex}\"\ntoken_format = \"paseto\"\n"
    );
    assert!(settings_error(&bad_format).contains("token_format"));
}
