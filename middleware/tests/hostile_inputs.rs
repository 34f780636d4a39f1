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

#[test]
fn hostile_tool_call_bodies_never_panic_and_fail_closed() {
    // Deep nesting: skipped arguments are read without recursion, anything else hits
    // serde_json's recursion limit; either way no stack overflow, and the tool is named.
    let deep_args = format!(
        r#"{{"method":"tools/call","params":{{"name":"a","arguments":{}{}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(matches!(
        fuzzing::tool_call_names(deep_args.as_bytes()),
        None | Some(1)
    ));
    let deep_batch = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(fuzzing::tool_call_names(deep_batch.as_bytes()), None);
    // Every truncation of a valid batch is either read whole or refused.
    let valid = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":[1,"\u00e9",{"y":null}]}}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"b"}}]"#;
    assert_eq!(fuzzing::tool_call_names(valid), Some(2));
    for end in 0..valid.len() {
        let found = fuzzing::tool_call_names(&valid[..end]);
        assert!(
            found.is_none() || valid[..end].iter().all(u8::is_ascii_whitespace),
            "a truncated body must be refused: {:?}",
            String::from_utf8_lossy(&valid[..end])
        );
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x746f6f6c);
    for _ in 0..5_000 {
        let mut bytes = valid.to_vec();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..bytes.len());
            bytes[at] = rng.random();
        }
        let _ = fuzzing::tool_call_names(&bytes);
    }
}
