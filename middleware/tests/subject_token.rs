//! Rule 12 of `bmm_middleware::auth`: the caller's token reaches the service behind the
//! layer only as a `SubjectToken`, only when the configuration asks for it (RFC 8693 token
//! exchange), and never in the `Authorization` header nor in any printed form. Both ways a
//! request is admitted are covered: after a key fetch (the first request, verified later)
//! and at once (keys already loaded).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::convert::Infallible;

use bmm_middleware::{AuthConfig, AuthContext, AuthLayer, Issuer, Resource, SubjectToken};
use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};

const RESOURCE: &str = "http://127.0.0.1:4103/mcp";

/// What the service behind the layer could see of the token.
async fn seen(issuer: &TestIssuer, keep: bool, token: &str) -> Value {
    let auth = AuthConfig::new(Resource::parse(RESOURCE).unwrap())
        .issuer(Issuer::parse(&issuer.issuer).unwrap())
        .keep_subject_token(keep)
        .build()
        .unwrap();
    assert_eq!(auth.keeps_subject_token(), keep);
    let layer = AuthLayer::new(auth);
    let service = layer.layer(tower::service_fn(|req: Request<Full<Bytes>>| async move {
        let kept = req.extensions().get::<SubjectToken>().cloned();
        let report = json!({
            "subject": AuthContext::from_request(&req).ok().and_then(|c| c.subject().map(str::to_owned)),
            "authorization": req.headers().contains_key(http::header::AUTHORIZATION),
            "kept": kept.as_ref().map(|k| k.expose().to_owned()),
            "debug": kept.as_ref().map(|k| format!("{k:?}")),
            "request_debug": format!("{:?}", req.extensions()),
        });
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(report.to_string()))))
    }));
    let mut results = Vec::new();
    // First request: the keys are fetched (verified later); second: at once.
    for _ in 0..2 {
        let request = Request::post("/mcp")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        results.push(serde_json::from_slice::<Value>(&body).unwrap());
    }
    assert_eq!(results[0], results[1], "both admission paths agree");
    results.remove(0)
}

#[tokio::test]
async fn the_subject_token_is_kept_only_when_asked_for_and_never_printed() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let token = key.sign(&issuer.claims(RESOURCE, "mcp:read"));

    let off = seen(&issuer, false, &token).await;
    assert_eq!(off["subject"], "alice", "{off}");
    assert_eq!(off["authorization"], false, "{off}");
    assert_eq!(off["kept"], Value::Null, "off by default: {off}");

    let on = seen(&issuer, true, &token).await;
    assert_eq!(on["subject"], "alice", "{on}");
    assert_eq!(
        on["authorization"], false,
        "the header is still removed: {on}"
    );
    assert_eq!(on["kept"], token.as_str(), "kept for token exchange");
    assert_eq!(on["debug"], "SubjectToken(..)");
    assert!(
        !on["request_debug"].as_str().unwrap().contains(&token),
        "the extensions' Debug does not print it: {on}"
    );
    // Off is the default.
    let default = AuthConfig::new(Resource::parse(RESOURCE).unwrap())
        .issuer(Issuer::parse(&issuer.issuer).unwrap())
        .build()
        .unwrap();
    assert!(!default.keeps_subject_token());
}
