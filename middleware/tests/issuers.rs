//! Several trusted issuers (bmm_middleware::issuer rules): each token is verified only
//! against its own issuer, with that issuer's keys, algorithms, audiences and scope claim.
//! Real authorization-server stand-ins (metadata + JWKS) and a real server on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bmm_middleware::{
    Algorithm, AuthConfig, Introspection, IntrospectionAuth, Issuer, Resource, ScopeClaim,
    ScopePolicy, TrustedIssuer,
};
use common::*;
use serde_json::json;

fn trusted(issuer: &TestIssuer) -> TrustedIssuer {
    TrustedIssuer::new(Issuer::parse(&issuer.issuer).unwrap())
}

async fn two_issuers() -> (TestKey, TestIssuer, TestKey, TestIssuer) {
    // Distinct keys that share a kid: a lookup by kid alone would pick the wrong one.
    let key_a = TestKey::load("rsa-a", "k1", Algorithm::RS256);
    let key_b = TestKey::load("rsa-b", "k1", Algorithm::RS256);
    let a = TestIssuer::start(&[&key_a]).await;
    let b = TestIssuer::start(&[&key_b]).await;
    (key_a, a, key_b, b)
}

#[tokio::test]
async fn token_is_verified_only_against_the_issuer_named_in_iss() {
    let (key_a, a, key_b, b) = two_issuers().await;
    let b_url = b.issuer.clone();
    let server = TestServer::start(&a, |c| c.issuer(Issuer::parse(&b_url).unwrap())).await;
    // Each token is accepted under its own issuer.
    let from_a = key_a.sign(&a.claims(&server.resource, ""));
    let r = post(&server.url, Some(&from_a)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let from_b = key_b.sign(&b.claims(&server.resource, ""));
    let r = post(&server.url, Some(&from_b)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A's key never validates a token claiming B, and the other way round.
    let a_claiming_b = key_a.sign(&b.claims(&server.resource, ""));
    let r = post(&server.url, Some(&a_claiming_b)).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.body["error"], "invalid_token");
    let b_claiming_a = key_b.sign(&a.claims(&server.resource, ""));
    assert_eq!(post(&server.url, Some(&b_claiming_a)).await.status, 401);
    // Without a kid, too.
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = None;
    let no_kid = key_a.sign_with_header(&header, &b.claims(&server.resource, ""));
    assert_eq!(post(&server.url, Some(&no_kid)).await.status, 401);
    // The metadata lists both issuers.
    let prm = reply(client().get(server.metadata_url()).send().await.unwrap()).await;
    assert_eq!(
        prm.body["authorization_servers"],
        json!([a.issuer, b.issuer])
    );
}

#[tokio::test]
async fn extra_audience_is_accepted_only_for_the_issuer_configured_with_it() {
    let (key_a, a, key_b, b) = two_issuers().await;
    let b_url = b.issuer.clone();
    let a_trusted = trusted(&a).audience("api://notes");
    let s = start_server(move |c| {
        c.trust(a_trusted)
            .trust(TrustedIssuer::new(Issuer::parse(&b_url).unwrap()))
    })
    .await;
    let mut claims = a.claims("api://notes", "");
    let r = post(&s.url, Some(&key_a.sign(&claims))).await;
    assert_eq!(r.status, 200, "api:// accepted for A: {}", r.text);
    claims = b.claims("api://notes", "");
    let r = post(&s.url, Some(&key_b.sign(&claims))).await;
    assert_eq!(r.status, 401, "api:// refused for B: {}", r.text);
    assert_eq!(r.body["error"], "invalid_token");
    // The canonical resource stays accepted for both.
    assert_eq!(
        post(&s.url, Some(&key_b.sign(&b.claims(&s.resource, ""))))
            .await
            .status,
        200
    );
    assert_eq!(
        post(&s.url, Some(&key_a.sign(&a.claims(&s.resource, ""))))
            .await
            .status,
        200
    );
    // AuthConfig::extra_audience applies to every issuer.
    let b_url = b.issuer.clone();
    let a_url = a.issuer.clone();
    let shared = start_server(move |c| {
        c.issuer(Issuer::parse(&a_url).unwrap())
            .issuer(Issuer::parse(&b_url).unwrap())
            .extra_audience("shared-client")
    })
    .await;
    for (key, issuer) in [(&key_a, &a), (&key_b, &b)] {
        let r = post(
            &shared.url,
            Some(&key.sign(&issuer.claims("shared-client", ""))),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

#[tokio::test]
async fn audience_values_must_be_nonempty_and_bounded() {
    let resource = Resource::parse("https://rs.example/mcp").unwrap();
    let issuer = Issuer::parse("https://as.example").unwrap();
    for bad in ["", " ", &"x".repeat(1025)] {
        let e = AuthConfig::new(resource.clone())
            .trust(TrustedIssuer::new(issuer.clone()).audience(bad))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("audience"), "{e}");
        let e = AuthConfig::new(resource.clone())
            .issuer(issuer.clone())
            .extra_audience(bad)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("audience"), "{e}");
    }
}

#[tokio::test]
async fn algorithms_are_chosen_per_issuer() {
    let key_a = TestKey::rsa_a();
    let ec = TestKey::ec();
    let a = TestIssuer::start(&[&key_a, &ec]).await;
    let key_b = TestKey::rsa_b();
    let b = TestIssuer::start(&[&key_b]).await;
    let (a_url, b_url) = (a.issuer.clone(), b.issuer.clone());
    let s = start_server(move |c| {
        c.trust(
            TrustedIssuer::new(Issuer::parse(&a_url).unwrap())
                .algorithms(&[Algorithm::ES256])
                .unwrap(),
        )
        .trust(TrustedIssuer::new(Issuer::parse(&b_url).unwrap()))
    })
    .await;
    assert_eq!(
        post(&s.url, Some(&ec.sign(&a.claims(&s.resource, ""))))
            .await
            .status,
        200
    );
    let r = post(&s.url, Some(&key_a.sign(&a.claims(&s.resource, "")))).await;
    assert_eq!(r.status, 401, "RS256 is not on A's list: {}", r.text);
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap()
            .contains("algorithm")
    );
    assert_eq!(
        post(&s.url, Some(&key_b.sign(&b.claims(&s.resource, ""))))
            .await
            .status,
        200,
        "B keeps the default list"
    );
}

#[tokio::test]
async fn scope_claim_shape_is_chosen_per_issuer() {
    let (key_a, a, key_b, b) = two_issuers().await;
    let (a_url, b_url) = (a.issuer.clone(), b.issuer.clone());
    let s = start_server(move |c| {
        c.trust(TrustedIssuer::new(Issuer::parse(&a_url).unwrap()).scope_claim(ScopeClaim::Scp))
            .trust(
                TrustedIssuer::new(Issuer::parse(&b_url).unwrap()).scope_claim(ScopeClaim::Scope),
            )
            .scope_policy(ScopePolicy::new().require(["notes:read"]).unwrap())
    })
    .await;
    let with_scp = |issuer: &TestIssuer| {
        let mut claims = issuer.claims(&s.resource, "");
        claims.as_object_mut().unwrap().remove("scope");
        claims["scp"] = json!(["notes:read"]);
        claims
    };
    let r = post(&s.url, Some(&key_a.sign(&with_scp(&a)))).await;
    assert_eq!(r.status, 200, "scp mapped for A: {}", r.text);
    assert_eq!(r.body["scopes"], json!(["notes:read"]));
    let r = post(&s.url, Some(&key_b.sign(&with_scp(&b)))).await;
    assert_eq!(r.status, 403, "scp ignored for B: {}", r.text);
    let r = post(
        &s.url,
        Some(&key_b.sign(&b.claims(&s.resource, "notes:read"))),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn issuer_configured_twice_or_two_introspecting_issuers_are_refused() {
    let resource = Resource::parse("https://rs.example/mcp").unwrap();
    let a = Issuer::parse("https://a.example").unwrap();
    let b = Issuer::parse("https://b.example").unwrap();
    let e = AuthConfig::new(resource.clone())
        .issuer(a.clone())
        .trust(TrustedIssuer::new(a.clone()).audience("x"))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("configured twice"), "{e}");
    let introspection =
        || Introspection::new("rs", IntrospectionAuth::ClientSecretBasic("s".into()));
    let e = AuthConfig::new(resource)
        .trust(TrustedIssuer::new(a).introspection(introspection()))
        .trust(TrustedIssuer::new(b).introspection(introspection()))
        .build()
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("a.example") && text.contains("b.example"),
        "{text}"
    );
    assert!(text.contains("only one issuer may introspect"), "{text}");
}

#[tokio::test]
async fn opaque_token_without_an_introspecting_issuer_is_refused() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c).await;
    let r = post(&server.url, Some("bmo_dGhpcyBpcyBvcGFxdWU")).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.body["error"], "invalid_token");
}

/// A server on 127.0.0.1:0 whose configuration is built entirely by `configure`.
struct Started {
    url: String,
    resource: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

async fn start_server(configure: impl FnOnce(AuthConfig) -> AuthConfig) -> Started {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resource = format!("http://{}/mcp", listener.local_addr().unwrap());
    let auth = configure(AuthConfig::new(Resource::parse(&resource).unwrap()))
        .build()
        .unwrap();
    let server = bmm_middleware::Server::from_listener(
        listener,
        bmm_middleware::ServeConfig::new("/mcp", auth),
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(echo_service(), async move {
        let _ = rx.await;
    }));
    Started {
        url: resource.clone(),
        resource,
        _shutdown: tx,
    }
}
