//! The fuzz entry points over hand-picked hostile inputs and a bounded, seeded stream of
//! random bytes, so every CI run exercises the parsing paths without a nightly toolchain.
//! (The coverage-guided runs are `cargo xtask fuzz`.)
#![allow(clippy::unwrap_used)]

use bmm_middleware::fuzzing;
use rand::{Rng, SeedableRng};

const SEEDS: &[&[u8]] = &[
    b"",
    b"Bearer",
    b"Bearer ",
    b"bearer a.b.c",
    b"Bearer eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwOi8vMTI3LjAuMC4xOjkifQ.",
    b"Bearer eyJhbGciOiJSUzI1NiIsImNyaXQiOlsieCJdfQ.e30.sig",
    b"Bearer eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwOi8vMTI3LjAuMC4xOjkiLCJleHAiOjFlMzA4fQ.c2ln",
    b"Bearer eyJhbGciOiJSUzI1NiJ9.WyJub3QiLCJhbiIsIm9iamVjdCJd.c2ln",
    b"Bearer ====",
    b"Bearer a.b.c.d.e",
    b"Basic dXNlcjpwYXNz",
    b"Bearer \xff\xfe",
    b"Bearer eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOnsiYSI6W1tbW1tbW1tbXV1dXV1dXV19fQ.c2ln",
];

#[test]
fn hostile_authorization_headers_never_panic() {
    for seed in SEEDS {
        fuzzing::authorization_header(seed);
        fuzzing::jwt(seed);
    }
    let deep = format!("Bearer {}", "W".repeat(20_000));
    fuzzing::authorization_header(deep.as_bytes());
}

#[test]
fn random_bytes_never_panic_the_header_jwt_or_jwks_parsers() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x626d6d);
    for _ in 0..5_000 {
        let len = rng.random_range(0..256);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if rng.random_bool(0.5) {
            let mut prefixed = b"Bearer ".to_vec();
            prefixed.append(&mut bytes);
            bytes = prefixed;
        }
        fuzzing::authorization_header(&bytes);
        fuzzing::jwt(&bytes);
        fuzzing::jwks(&bytes);
    }
}

#[test]
fn hostile_jwks_documents_never_panic() {
    for doc in [
        r#"{"keys": null}"#,
        r#"{"keys": [{"kty": "RSA", "n": "", "e": ""}]}"#,
        r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "!!", "y": "AA"}]}"#,
        r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]}"#,
        r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]}"#,
        r#"{"keys": [{"kty": "RSA", "alg": "none", "n": "AQAB", "e": "AQAB"}]}"#,
        r#"[[[[[[[[[[]]]]]]]]]]"#,
    ] {
        fuzzing::jwks(doc.as_bytes());
    }
}
