//! DPoP (RFC 9449) at bmm-as's token endpoint over real sockets, with real ES256 keys:
//! bound access tokens (`cnf.jkt`, `token_type: DPoP`, also through introspection and for
//! opaque tokens), replayed and mis-addressed proofs refused, public clients' refresh
//! tokens bound to their key and confidential clients' not, the optional server nonce.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod as_harness;
mod common;

use as_harness::*;
use common::*;

use serde_json::json;

#[tokio::test]
async fn metadata_lists_the_proof_algorithms() {
    let as_ = TestAs::start(&[]).await;
    let (_, doc) = json_of(
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
    let algs = doc["dpop_signing_alg_values_supported"].as_array().unwrap();
    for alg in ["ES256", "ES384", "RS256", "PS256", "EdDSA"] {
        assert!(algs.iter().any(|a| a == alg), "{alg}: {algs:?}");
    }
    assert!(!algs.iter().any(|a| a == "HS256" || a == "none"));
    as_.stop().await;
}

#[tokio::test]
async fn a_token_request_with_a_proof_gets_a_bound_token_that_introspection_reports() {
    let as_ = TestAs::start(&[]).await;
    let key = EcKey::new();
    let htu = as_.token_endpoint();
    let body = as_
        .machine_token(RESOURCE, Some(&key.proof("POST", &htu, None)))
        .await;
    assert_eq!(body["token_type"], "DPoP");
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(jwt_claims(token)["cnf"]["jkt"], key.thumbprint());
    let (_, info) = as_.introspect("rs-jwt", token).await;
    assert_eq!(info["active"], true);
    assert_eq!(info["token_type"], "DPoP");
    assert_eq!(info["cnf"], json!({"jkt": key.thumbprint()}));

    // Opaque tokens are bound the same way.
    let body = as_
        .machine_token(OPAQUE_RESOURCE, Some(&key.proof("POST", &htu, None)))
        .await;
    assert_eq!(body["token_type"], "DPoP");
    let (_, info) = as_
        .introspect("rs-opaque", body["access_token"].as_str().unwrap())
        .await;
    assert_eq!(info["token_type"], "DPoP");
    assert_eq!(info["cnf"]["jkt"], key.thumbprint());

    // Without a proof: Bearer, unbound.
    let body = as_.machine_token(RESOURCE, None).await;
    assert_eq!(body["token_type"], "Bearer");
    assert!(jwt_claims(body["access_token"].as_str().unwrap())["cnf"].is_null());
    as_.stop().await;
}

#[tokio::test]
async fn replayed_misaddressed_and_malformed_proofs_are_invalid_dpop_proof() {
    let as_ = TestAs::start(&[]).await;
    let key = EcKey::new();
    let htu = as_.token_endpoint();
    let form = [("grant_type", "client_credentials"), ("resource", RESOURCE)];
    let basic = Some(("svc", MACHINE_SECRET));
    let proof = key.proof("POST", &htu, None);
    let (status, _, _) = as_.token(&form, basic, Some(&proof)).await;
    assert_eq!(status, 200);
    let stale = key.sign(
        &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.jwk()}),
        &json!({"htm": "POST", "htu": htu, "iat": now() - 3600, "jti": unique()}),
    );
    let wrong_htu = key.proof("POST", &format!("{}/revoke", as_.url), None);
    let wrong_htm = key.proof("GET", &htu, None);
    for (name, bad) in [
        ("replayed", proof.as_str()),
        ("wrong htu", wrong_htu.as_str()),
        ("wrong htm", wrong_htm.as_str()),
        ("stale iat", stale.as_str()),
        ("garbage", "not-a-proof"),
    ] {
        let (status, body, _) = as_.token(&form, basic, Some(bad)).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["error"], "invalid_dpop_proof", "{name}: {body}");
    }
    as_.stop().await;
}

#[tokio::test]
async fn a_public_clients_refresh_token_needs_a_proof_of_the_same_key() {
    let as_ = TestAs::start(&[]).await;
    let key = EcKey::new();
    let htu = as_.token_endpoint();
    let (status, grant) = as_
        .code_flow("web-public", RESOURCE, Some(&key.proof("POST", &htu, None)))
        .await;
    assert_eq!(status, 200, "{grant}");
    assert_eq!(grant["token_type"], "DPoP");
    assert_eq!(
        jwt_claims(grant["access_token"].as_str().unwrap())["cnf"]["jkt"],
        key.thumbprint()
    );
    let refresh = grant["refresh_token"].as_str().unwrap().to_owned();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
        ("client_id", "web-public"),
    ];
    // No proof, or another key's: refused, and the refresh token is not used up.
    let (status, body, _) = as_.token(&form, None, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_dpop_proof"))
    );
    let other = EcKey::new().proof("POST", &htu, None);
    let (status, body, _) = as_.token(&form, None, Some(&other)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, body, _) = as_
        .token(&form, None, Some(&key.proof("POST", &htu, None)))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    // The successor is bound too.
    let next = body["refresh_token"].as_str().unwrap();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", next),
        ("client_id", "web-public"),
    ];
    let (status, _, _) = as_.token(&form, None, None).await;
    assert_eq!(status, 400);
    as_.stop().await;
}

#[tokio::test]
async fn a_confidential_clients_refresh_token_is_not_bound() {
    let as_ = TestAs::start(&[]).await;
    let key = EcKey::new();
    let htu = as_.token_endpoint();
    let (status, grant) = as_
        .code_flow("web-secret", RESOURCE, Some(&key.proof("POST", &htu, None)))
        .await;
    assert_eq!(status, 200, "{grant}");
    assert_eq!(grant["token_type"], "DPoP");
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", grant["refresh_token"].as_str().unwrap()),
    ];
    let (status, body, _) = as_
        .token(&form, Some(("web-secret", WEB_SECRET)), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    as_.stop().await;
}

#[tokio::test]
async fn with_dpop_nonce_a_proof_must_carry_the_servers_nonce() {
    let as_ = TestAs::start(&["--dpop-nonce"]).await;
    let key = EcKey::new();
    let htu = as_.token_endpoint();
    let form = [("grant_type", "client_credentials"), ("resource", RESOURCE)];
    let basic = Some(("svc", MACHINE_SECRET));
    let (status, body, nonce) = as_
        .token(&form, basic, Some(&key.proof("POST", &htu, None)))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("use_dpop_nonce"))
    );
    let nonce = nonce.expect("a DPoP-Nonce header");
    let (status, _, _) = as_
        .token(
            &form,
            basic,
            Some(&key.proof("POST", &htu, Some("made-up"))),
        )
        .await;
    assert_eq!(status, 400);
    let (status, body, next) = as_
        .token(&form, basic, Some(&key.proof("POST", &htu, Some(&nonce))))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    assert!(next.is_some());
    as_.stop().await;
}
