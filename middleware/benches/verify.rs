//! Token verification and the whole auth layer, in memory (no sockets), so the figures
//! are about bmm's own work: `cargo bench -p bmm-middleware`.
//!
//! - `verify/cold`: every call verifies the RSA signature and the claims (cache off).
//! - `verify/warm`: the verified-token cache answers.
//! - `layer/*`: a full request through `AuthLayer` + `ToolScopeLayer` around an in-memory
//!   service, against the same service called bare.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use bmm_middleware::{AuthConfig, AuthLayer, Authenticator, Issuer, Resource, ToolScopeLayer};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tower::{Service, ServiceBuilder, ServiceExt};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const ISSUER: &str = "https://as.example.com";
const RESOURCE: &str = "https://mcp.example.com/mcp";

fn authenticator(cache: usize) -> Authenticator {
    let mut jwk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{FIXTURES}/rsa-a.jwk.json")).unwrap())
            .unwrap();
    jwk["kid"] = json!("k1");
    jwk["alg"] = json!("RS256");
    AuthConfig::new(Resource::parse(RESOURCE).unwrap())
        .issuer_with_static_jwks(Issuer::parse(ISSUER).unwrap(), &json!({"keys": [jwk]}))
        .unwrap()
        .token_cache_capacity(cache)
        .build()
        .unwrap()
}

fn token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let key = EncodingKey::from_rsa_pem(&std::fs::read(format!("{FIXTURES}/rsa-a.pem")).unwrap())
        .unwrap();
    let claims = json!({
        "iss": ISSUER, "sub": "alice", "aud": RESOURCE, "exp": now + 3600, "iat": now,
        "scope": "mcp:read mcp:write", "client_id": "bench",
    });
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn request(token: &str) -> Request<Full<Bytes>> {
    Request::post("/mcp")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#,
        )))
        .unwrap()
}

fn inner()
-> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone {
    tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
            b"{\"ok\":true}",
        ))))
    })
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = token();
    let cold = authenticator(0);
    let warm = authenticator(1024);
    assert!(
        rt.block_on(cold.verify_token(&token)).is_ok(),
        "the bench token must verify"
    );

    let mut group = c.benchmark_group("verify");
    group.bench_function("cold", |b| {
        b.iter(|| rt.block_on(cold.verify_token(&token)).unwrap());
    });
    group.bench_function("warm", |b| {
        b.iter(|| rt.block_on(warm.verify_token(&token)).unwrap());
    });
    group.finish();

    let stack = ServiceBuilder::new()
        .layer(AuthLayer::new(warm.clone()))
        .layer(ToolScopeLayer::new(warm.clone(), 4 << 20))
        .service(inner());
    let mut group = c.benchmark_group("layer");
    group.bench_function("bare_service", |b| {
        b.iter(|| rt.block_on(inner().oneshot(request(&token))).unwrap());
    });
    group.bench_function("auth_warm", |b| {
        b.iter(|| {
            let response = rt.block_on(stack.clone().oneshot(request(&token))).unwrap();
            assert_eq!(response.status(), 200);
        });
    });
    group.bench_function("auth_rejected_bad_signature", |b| {
        // Flip one character in the middle of the signature: a full RSA verify that fails.
        let at = token.len() - 20;
        let flipped = if &token[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{flipped}{}", &token[..at], &token[at + 1..]);
        b.iter(|| {
            let response = rt
                .block_on(stack.clone().oneshot(request(&forged)))
                .unwrap();
            assert_eq!(response.status(), 401);
        });
    });
    group.finish();
}

criterion_group!(verify, benches);
criterion_main!(verify);
