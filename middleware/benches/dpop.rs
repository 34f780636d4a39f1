//! DPoP proof verification (RFC 9449), in memory: `cargo bench -p bmm-middleware --bench dpop`.
//!
//! - `dpop/verify_proof_es256`, `dpop/verify_proof_rs256`: one proof checked by
//!   `bmm_middleware::dpop::verify_proof` (parse, key from the `jwk` header, signature,
//!   claims, `ath`).
//! - `dpop/jwk_thumbprint`: the RFC 7638 thumbprint of an EC key.
//! - `dpop/layer_bound_token_warm`: a full request with a DPoP-bound token through
//!   `AuthLayer` (token cache warm; proof, binding and replay cache checked), a fresh proof
//!   per request (signed outside the measurement).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bmm_middleware::dpop::{
    DEFAULT_PROOF_ALGORITHMS, ProofRequirements, access_token_hash, jwk_thumbprint, verify_proof,
};
use bmm_middleware::{AuthConfig, AuthLayer, DpopConfig, Issuer, Resource};
use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const ISSUER: &str = "https://as.example.com";
const RESOURCE: &str = "https://mcp.example.com/mcp";
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.e30.c2ln";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

struct ClientKey {
    alg: Algorithm,
    private: EncodingKey,
    jwk: Value,
}

fn client_key(name: &str, alg: Algorithm) -> ClientKey {
    let pem = read(&format!("{name}.pem"));
    let private = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let jwk = serde_json::from_slice(&read(&format!("{name}.jwk.json"))).unwrap();
    ClientKey { alg, private, jwk }
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn proof(key: &ClientKey, token: &str, jti: u64) -> String {
    let header = json!({"typ": "dpop+jwt", "alg": format!("{:?}", key.alg), "jwk": key.jwk});
    let claims = json!({
        "jti": format!("jti-{jti}"), "htm": "POST", "htu": RESOURCE, "iat": now(),
        "ath": access_token_hash(token),
    });
    let input = format!("{}.{}", b64(&header), b64(&claims));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key.private, key.alg).unwrap();
    format!("{input}.{sig}")
}

fn requirements(now: u64) -> ProofRequirements<'static> {
    ProofRequirements {
        method: "POST",
        url: RESOURCE,
        access_token: Some(TOKEN),
        nonce: None,
        now,
        max_age_secs: 300,
        algorithms: DEFAULT_PROOF_ALGORITHMS,
    }
}

fn benches(c: &mut Criterion) {
    let ec = client_key("ec-p256", Algorithm::ES256);
    let rsa = client_key("rsa-b", Algorithm::RS256);
    let mut group = c.benchmark_group("dpop");
    for (name, key) in [("verify_proof_es256", &ec), ("verify_proof_rs256", &rsa)] {
        let p = proof(key, TOKEN, 1);
        let req = requirements(now());
        assert!(
            verify_proof(&p, &req).is_ok(),
            "the bench proof must verify"
        );
        group.bench_function(name, |b| b.iter(|| verify_proof(&p, &req).unwrap()));
    }
    group.bench_function("jwk_thumbprint", |b| {
        b.iter(|| jwk_thumbprint(&ec.jwk).unwrap());
    });

    // The whole layer with a bound token.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut jwk: Value = serde_json::from_slice(&read("rsa-a.jwk.json")).unwrap();
    jwk["kid"] = json!("k1");
    jwk["alg"] = json!("RS256");
    let auth = AuthConfig::new(Resource::parse(RESOURCE).unwrap())
        .issuer_with_static_jwks(Issuer::parse(ISSUER).unwrap(), &json!({"keys": [jwk]}))
        .unwrap()
        .dpop(DpopConfig::new().replay_cache_capacity(10_000_000))
        .build()
        .unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let claims = json!({
        "iss": ISSUER, "sub": "alice", "aud": RESOURCE, "exp": now() + 3600, "iat": now(),
        "scope": "mcp:read", "cnf": {"jkt": jwk_thumbprint(&ec.jwk).unwrap()},
    });
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(&read("rsa-a.pem")).unwrap(),
    )
    .unwrap();
    let stack = ServiceBuilder::new()
        .layer(AuthLayer::new(auth))
        .service(tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        }));
    let request = |proof: String| {
        Request::post("/mcp")
            .header("authorization", format!("DPoP {token}"))
            .header("dpop", proof)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut jti = 0u64;
    let status = rt
        .block_on(stack.clone().oneshot(request(proof(&ec, &token, u64::MAX))))
        .unwrap()
        .status();
    assert_eq!(status, 200, "the bench request must be admitted");
    group.bench_function("layer_bound_token_warm", |b| {
        b.iter_batched(
            || {
                jti += 1;
                request(proof(&ec, &token, jti))
            },
            |req| {
                let response = rt.block_on(stack.clone().oneshot(req)).unwrap();
                assert_eq!(response.status(), 200);
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group!(dpop, benches);
criterion_main!(dpop);
