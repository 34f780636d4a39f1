//! DPoP (RFC 9449) at the resource server: the rules of `bmm_middleware::DpopConfig` and
//! `bmm_middleware::dpop`, each against a real server on 127.0.0.1:0, real access tokens
//! from a JWKS served over HTTP and real proofs signed by the client's key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bmm_middleware::dpop::{access_token_hash, jwk_thumbprint};
use bmm_middleware::{DpopConfig, DpopMode};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

/// A client's DPoP key.
struct ClientKey {
    alg: Algorithm,
    private: EncodingKey,
    jwk: Value,
}

impl ClientKey {
    fn load(name: &str, alg: Algorithm) -> Self {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let pem = std::fs::read(format!("{dir}/{name}.pem")).unwrap();
        let private = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        let jwk = serde_json::from_slice(&std::fs::read(format!("{dir}/{name}.jwk.json")).unwrap())
            .unwrap();
        Self { alg, private, jwk }
    }

    fn ec() -> Self {
        Self::load("ec-p256", Algorithm::ES256)
    }

    fn rsa() -> Self {
        Self::load("rsa-b", Algorithm::RS256)
    }

    fn jkt(&self) -> String {
        jwk_thumbprint(&self.jwk).unwrap()
    }

    /// A proof for `POST url` with `token`, fresh jti and iat = now; `edit` changes claims.
    fn proof(&self, url: &str, token: &str, edit: impl FnOnce(&mut Value)) -> String {
        let header = json!({"typ": "dpop+jwt", "alg": format!("{:?}", self.alg), "jwk": self.jwk});
        let mut claims = json!({
            "jti": URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>()),
            "htm": "POST",
            "htu": url,
            "iat": now(),
            "ath": access_token_hash(token),
        });
        edit(&mut claims);
        let input = format!("{}.{}", b64(&header), b64(&claims));
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &self.private, self.alg).unwrap();
        format!("{input}.{sig}")
    }
}

/// An access token of `issuer` for `server`, bound to `jkt` when given.
fn token(key: &TestKey, issuer: &TestIssuer, server: &TestServer, jkt: Option<&str>) -> String {
    let mut claims = issuer.claims(&server.resource, "mcp:read");
    if let Some(jkt) = jkt {
        claims["cnf"] = json!({"jkt": jkt});
    }
    key.sign(&claims)
}

async fn send(url: &str, authorization: Option<String>, proofs: &[&str]) -> Reply {
    let mut req = client()
        .post(url)
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
    if let Some(authorization) = authorization {
        req = req.header("authorization", authorization);
    }
    for proof in proofs {
        req = req.header("dpop", *proof);
    }
    reply(req.send().await.unwrap()).await
}

async fn dpop(url: &str, token: &str, proof: &str) -> Reply {
    send(url, Some(format!("DPoP {token}")), &[proof]).await
}

fn challenges(r: &Reply) -> Vec<String> {
    r.headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

fn dpop_challenge(r: &Reply) -> String {
    challenges(r)
        .into_iter()
        .find(|c| c.starts_with("DPoP "))
        .unwrap_or_else(|| panic!("no DPoP challenge in {:?}", challenges(r)))
}

/// 401, `error` in the body, and a DPoP challenge carrying that error.
fn assert_refused(r: &Reply, error: &str) {
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.body["error"], error, "{}", r.text);
    let c = dpop_challenge(r);
    assert!(c.contains(&format!("error=\"{error}\"")), "{c}");
    assert!(c.contains("algs=\""), "{c}");
}

struct Setup {
    key: TestKey,
    issuer: TestIssuer,
    server: TestServer,
    client: ClientKey,
}

async fn setup(config: DpopConfig) -> Setup {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| c.dpop(config)).await;
    Setup {
        key,
        issuer,
        server,
        client: ClientKey::ec(),
    }
}

impl Setup {
    fn bound_token(&self) -> String {
        token(
            &self.key,
            &self.issuer,
            &self.server,
            Some(&self.client.jkt()),
        )
    }
}

#[tokio::test]
async fn bound_token_requires_dpop_scheme_and_matching_proof() {
    for client in [ClientKey::ec(), ClientKey::rsa()] {
        let mut s = setup(DpopConfig::new()).await;
        s.client = client;
        let token = s.bound_token();
        let url = &s.server.url;
        // The first request fetches the keys (the asynchronous path), the second does not.
        for _ in 0..2 {
            let r = dpop(url, &token, &s.client.proof(url, &token, |_| {})).await;
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(r.body["subject"], "alice");
            assert_eq!(r.body["authorization_seen"], false);
        }
    }
}

#[tokio::test]
async fn bound_token_requires_dpop_scheme_and_matching_proof_refusals() {
    let s = setup(DpopConfig::new()).await;
    let token = s.bound_token();
    let url = &s.server.url;

    // As Bearer, even with a valid proof: invalid_token on both challenges.
    let proof = s.client.proof(url, &token, |_| {});
    let r = send(url, Some(format!("Bearer {token}")), &[&proof]).await;
    assert_refused(&r, "invalid_token");
    assert!(challenges(&r)[0].starts_with("Bearer error=\"invalid_token\""));

    // Without a proof, with two proofs, with a malformed one.
    let r = send(url, Some(format!("DPoP {token}")), &[]).await;
    assert_refused(&r, "invalid_dpop_proof");
    let (a, b) = (
        s.client.proof(url, &token, |_| {}),
        s.client.proof(url, &token, |_| {}),
    );
    let r = send(url, Some(format!("DPoP {token}")), &[&a, &b]).await;
    assert_refused(&r, "invalid_dpop_proof");
    assert_refused(
        &dpop(url, &token, "this-is-not-a-jwt").await,
        "invalid_dpop_proof",
    );

    // A valid proof made with another key than the token's cnf.jkt.
    let other = ClientKey::rsa();
    let r = dpop(url, &token, &other.proof(url, &token, |_| {})).await;
    assert_refused(&r, "invalid_dpop_proof");
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap()
            .contains("bound")
    );

    // The Bearer challenge carries no DPoP-only error.
    assert!(
        !challenges(&r)[0].contains("error="),
        "{:?}",
        challenges(&r)
    );
}

#[tokio::test]
async fn dpop_scheme_with_unbound_token_is_refused() {
    let s = setup(DpopConfig::new()).await;
    let token = token(&s.key, &s.issuer, &s.server, None);
    let url = &s.server.url;
    let r = dpop(url, &token, &s.client.proof(url, &token, |_| {})).await;
    assert_refused(&r, "invalid_token");
    // The same token as Bearer is fine in the default (allowed) mode.
    let r = post(url, Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn htu_is_the_configured_resource_origin_plus_request_path() {
    let s = setup(DpopConfig::new()).await;
    let token = s.bound_token();
    let url = &s.server.url;
    let port = s.server.addr.port();
    for htu in [
        format!("http://localhost:{port}/mcp"), // what a Host-derived URL would say
        format!("http://127.0.0.1:{port}/other"),
        "https://wrong.example.com/mcp".to_owned(),
    ] {
        let r = dpop(
            url,
            &token,
            &s.client.proof(url, &token, |c| c["htu"] = json!(htu)),
        )
        .await;
        assert_refused(&r, "invalid_dpop_proof");
    }
    // Normalised forms and a query on the request are fine.
    let upper = format!("HTTP://127.0.0.1:{port}/mcp");
    let r = dpop(
        url,
        &token,
        &s.client.proof(url, &token, |c| c["htu"] = json!(upper)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let with_query = format!("{url}?session=1");
    let r = dpop(&with_query, &token, &s.client.proof(url, &token, |_| {})).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn proof_htm_equals_method() {
    let s = setup(DpopConfig::new()).await;
    let token = s.bound_token();
    let url = &s.server.url;
    let r = dpop(
        url,
        &token,
        &s.client.proof(url, &token, |c| c["htm"] = json!("GET")),
    )
    .await;
    assert_refused(&r, "invalid_dpop_proof");
}

#[tokio::test]
async fn proof_replay_is_refused() {
    let s = setup(DpopConfig::new()).await;
    let token = s.bound_token();
    let url = &s.server.url;
    let proof = s.client.proof(url, &token, |_| {});
    assert_eq!(dpop(url, &token, &proof).await.status, 200);
    let r = dpop(url, &token, &proof).await;
    assert_refused(&r, "invalid_dpop_proof");
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap()
            .contains("replay")
    );
    // A new proof (new jti) is fine.
    let r = dpop(url, &token, &s.client.proof(url, &token, |_| {})).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn proof_replay_is_refused_and_a_full_replay_cache_fails_closed() {
    let s = setup(DpopConfig::new().replay_cache_capacity(1)).await;
    let token = s.bound_token();
    let url = &s.server.url;
    let r = dpop(url, &token, &s.client.proof(url, &token, |_| {})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The one entry is live for the whole iat window: another key's proof cannot be
    // recorded (503), and this key is over its share (at most the capacity).
    let other = ClientKey::rsa();
    let other_token = token_for(&s, &other);
    let r = dpop(url, &other_token, &other.proof(url, &other_token, |_| {})).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.headers.contains_key("retry-after"));
    let r = dpop(url, &token, &s.client.proof(url, &token, |_| {})).await;
    assert_refused(&r, "invalid_dpop_proof");
}

fn token_for(s: &Setup, client: &ClientKey) -> String {
    token(&s.key, &s.issuer, &s.server, Some(&client.jkt()))
}

#[tokio::test]
async fn one_key_cannot_fill_the_replay_cache_for_others() {
    let s = setup(
        DpopConfig::new()
            .replay_cache_capacity(4)
            .replay_cache_per_key(2),
    )
    .await;
    let token = s.bound_token();
    let url = &s.server.url;
    for _ in 0..2 {
        let r = dpop(url, &token, &s.client.proof(url, &token, |_| {})).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // This key is over its share: its new proofs are refused, 401, not a 503 for all.
    let r = dpop(url, &token, &s.client.proof(url, &token, |_| {})).await;
    assert_refused(&r, "invalid_dpop_proof");
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap()
            .contains("too many proofs for this key"),
        "{}",
        r.text
    );
    // Another key is unaffected.
    let other = ClientKey::rsa();
    let other_token = token_for(&s, &other);
    for _ in 0..2 {
        let r = dpop(url, &other_token, &other.proof(url, &other_token, |_| {})).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

#[tokio::test]
async fn future_iat_is_accepted_only_within_a_small_skew() {
    let s = setup(DpopConfig::new()).await;
    let token = s.bound_token();
    let url = &s.server.url;
    // Past the 60 s skew (though within the 300 s window back): refused.
    for ahead in [90, 200, 299] {
        let r = dpop(
            url,
            &token,
            &s.client
                .proof(url, &token, |c| c["iat"] = json!(now() + ahead)),
        )
        .await;
        assert_refused(&r, "invalid_dpop_proof");
    }
    // A client clock a little ahead is fine.
    let r = dpop(
        url,
        &token,
        &s.client
            .proof(url, &token, |c| c["iat"] = json!(now() + 30)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn verify_token_refuses_bound_tokens() {
    let s = setup(DpopConfig::new()).await;
    let bound = s.bound_token();
    let auth = &s.server.auth;
    let e = auth.verify_token(&bound).await.unwrap_err();
    assert!(e.is_invalid_token(), "{e}");
    assert_eq!(e.status(), 401);
    // Any cnf, not only a DPoP jkt.
    let mut claims = s.issuer.claims(&s.server.resource, "mcp:read");
    claims["cnf"] = json!({"x5t#S256": "abc"});
    let e = auth.verify_token(&s.key.sign(&claims)).await.unwrap_err();
    assert!(e.is_invalid_token(), "{e}");
    // An unbound token still verifies.
    let unbound = token(&s.key, &s.issuer, &s.server, None);
    assert_eq!(
        auth.verify_token(&unbound).await.unwrap().subject(),
        Some("alice")
    );

    // verify_request applies the layer's binding check.
    let headers = |scheme: &str, proof: Option<&str>| {
        let mut h = http::HeaderMap::new();
        h.insert(
            "authorization",
            format!("{scheme} {bound}").parse().unwrap(),
        );
        if let Some(proof) = proof {
            h.insert("dpop", proof.parse().unwrap());
        }
        h
    };
    let post = http::Method::POST;
    let proof = s.client.proof(&s.server.url, &bound, |_| {});
    let ctx = auth
        .verify_request(&post, "/mcp", &headers("DPoP", Some(&proof)))
        .await
        .unwrap();
    assert_eq!(ctx.confirmation_jkt(), Some(s.client.jkt().as_str()));
    // The same proof again is a replay; as Bearer or without a proof it is refused.
    let e = auth
        .verify_request(&post, "/mcp", &headers("DPoP", Some(&proof)))
        .await
        .unwrap_err();
    assert!(e.is_invalid_dpop_proof(), "{e}");
    let e = auth
        .verify_request(&post, "/mcp", &headers("Bearer", None))
        .await
        .unwrap_err();
    assert!(e.is_invalid_token(), "{e}");
    let e = auth
        .verify_request(&post, "/mcp", &headers("DPoP", None))
        .await
        .unwrap_err();
    assert!(e.is_invalid_dpop_proof(), "{e}");
}

#[tokio::test]
async fn proof_iat_within_window() {
    let s = setup(DpopConfig::new()).await;
    let token = s.bound_token();
    let url = &s.server.url;
    for iat in [now() - 303, now() + 303] {
        let r = dpop(
            url,
            &token,
            &s.client.proof(url, &token, |c| c["iat"] = json!(iat)),
        )
        .await;
        assert_refused(&r, "invalid_dpop_proof");
    }
    let r = dpop(
        url,
        &token,
        &s.client
            .proof(url, &token, |c| c["iat"] = json!(now() - 290)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn proof_ath_matches_access_token() {
    let s = setup(DpopConfig::new()).await;
    let token = s.bound_token();
    let url = &s.server.url;
    let missing = s.client.proof(url, &token, |c| {
        c.as_object_mut().unwrap().remove("ath");
    });
    assert_refused(&dpop(url, &token, &missing).await, "invalid_dpop_proof");
    let wrong = s
        .client
        .proof(url, &token, |c| c["ath"] = json!("not-the-right-hash"));
    assert_refused(&dpop(url, &token, &wrong).await, "invalid_dpop_proof");
}

#[tokio::test]
async fn proof_alg_is_asymmetric_and_allowed() {
    let s = setup(DpopConfig::new().algorithms(&[Algorithm::ES256])).await;
    let token = token(&s.key, &s.issuer, &s.server, Some(&ClientKey::rsa().jkt()));
    let url = &s.server.url;
    let rsa = ClientKey::rsa();
    assert_refused(
        &dpop(url, &token, &rsa.proof(url, &token, |_| {})).await,
        "invalid_dpop_proof",
    );
    let none = format!(
        "{}.{}.",
        b64(&json!({"typ": "dpop+jwt", "alg": "none", "jwk": rsa.jwk})),
        b64(
            &json!({"jti": "x", "htm": "POST", "htu": url, "iat": now(), "ath": access_token_hash(&token)})
        )
    );
    assert_refused(&dpop(url, &token, &none).await, "invalid_dpop_proof");
}

#[tokio::test]
async fn nonce_required_answers_use_dpop_nonce() {
    let s = setup(DpopConfig::new().nonce(true)).await;
    let token = s.bound_token();
    let url = &s.server.url;
    let r = dpop(url, &token, &s.client.proof(url, &token, |_| {})).await;
    assert_refused(&r, "use_dpop_nonce");
    assert!(
        !challenges(&r)[0].contains("use_dpop_nonce"),
        "only the DPoP challenge names the nonce error: {:?}",
        challenges(&r)
    );
    let nonce = r.headers["dpop-nonce"].to_str().unwrap().to_owned();

    let r = dpop(
        url,
        &token,
        &s.client.proof(url, &token, |c| c["nonce"] = json!(nonce)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The nonce is good for more than one request.
    let r = dpop(
        url,
        &token,
        &s.client.proof(url, &token, |c| c["nonce"] = json!(nonce)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let forged = "definitely-not-the-server-nonce";
    let r = dpop(
        url,
        &token,
        &s.client.proof(url, &token, |c| c["nonce"] = json!(forged)),
    )
    .await;
    assert_refused(&r, "use_dpop_nonce");
    assert!(r.headers.contains_key("dpop-nonce"));

    // Other defects are reported as such, even without a nonce (the nonce is checked last).
    let r = dpop(
        url,
        &token,
        &s.client.proof(url, &token, |c| c["htm"] = json!("GET")),
    )
    .await;
    assert_refused(&r, "invalid_dpop_proof");
}

#[tokio::test]
async fn nonce_required_answers_use_dpop_nonce_and_renews_an_ageing_nonce() {
    let lifetime = std::time::Duration::from_secs(10);
    let s = setup(DpopConfig::new().nonce(true).nonce_lifetime(lifetime)).await;
    let token = s.bound_token();
    let url = &s.server.url;
    let r = dpop(url, &token, &s.client.proof(url, &token, |_| {})).await;
    let nonce = r.headers["dpop-nonce"].to_str().unwrap().to_owned();
    let r = dpop(
        url,
        &token,
        &s.client.proof(url, &token, |c| c["nonce"] = json!(nonce)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        !r.headers.contains_key("dpop-nonce"),
        "a fresh nonce is not renewed"
    );
    // Past half its lifetime the nonce still works and the answer carries a new one.
    tokio::time::sleep(lifetime / 2 + std::time::Duration::from_millis(100)).await;
    let r = dpop(
        url,
        &token,
        &s.client.proof(url, &token, |c| c["nonce"] = json!(nonce)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let renewed = r.headers["dpop-nonce"].to_str().unwrap().to_owned();
    assert_ne!(renewed, nonce);
    let r = dpop(
        url,
        &token,
        &s.client.proof(url, &token, |c| c["nonce"] = json!(renewed)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn required_mode_refuses_bearer() {
    let s = setup(DpopConfig::new().mode(DpopMode::Required)).await;
    let unbound = token(&s.key, &s.issuer, &s.server, None);
    let r = post(&s.server.url, Some(&unbound)).await;
    assert_refused(&r, "invalid_token");
    assert_eq!(
        challenges(&r).len(),
        1,
        "no Bearer challenge: {:?}",
        challenges(&r)
    );
    // A bound token with its proof is accepted.
    let token = s.bound_token();
    let url = &s.server.url;
    let r = dpop(url, &token, &s.client.proof(url, &token, |_| {})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The metadata says tokens must be bound.
    let prm: Value = client()
        .get(s.server.metadata_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(prm["dpop_bound_access_tokens_required"], true);
}

#[tokio::test]
async fn required_mode_refuses_bearer_and_off_mode_ignores_the_dpop_scheme() {
    let s = setup(DpopConfig::new().mode(DpopMode::Off)).await;
    let token = s.bound_token();
    let url = &s.server.url;
    let r = dpop(url, &token, &s.client.proof(url, &token, |_| {})).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(r.body["error"], "unauthorized");
    assert_eq!(challenges(&r).len(), 1);
    assert!(challenges(&r)[0].starts_with("Bearer resource_metadata="));
    // A bound token is never a bearer token, even with DPoP off.
    assert_eq!(post(url, Some(&token)).await.status, 401);
    let prm: Value = client()
        .get(s.server.metadata_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(prm.get("dpop_signing_alg_values_supported").is_none());
}

#[tokio::test]
async fn challenges_carry_dpop_algs() {
    let s = setup(DpopConfig::new().algorithms(&[Algorithm::ES256, Algorithm::PS256])).await;
    let r = post(&s.server.url, None).await;
    assert_eq!(r.status, 401);
    let c = challenges(&r);
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!(
        c[0],
        format!("Bearer resource_metadata=\"{}\"", s.server.metadata_url())
    );
    assert_eq!(
        c[1],
        format!(
            "DPoP algs=\"ES256 PS256\", resource_metadata=\"{}\"",
            s.server.metadata_url()
        )
    );
    let prm: Value = client()
        .get(s.server.metadata_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        prm["dpop_signing_alg_values_supported"],
        json!(["ES256", "PS256"])
    );
    assert!(prm.get("dpop_bound_access_tokens_required").is_none());
    // A token failure under the DPoP scheme carries the DPoP challenge too.
    let other_aud = {
        let mut claims = s
            .issuer
            .claims("https://not-this-server.example.com/mcp", "mcp:read");
        claims["cnf"] = json!({"jkt": s.client.jkt()});
        s.key.sign(&claims)
    };
    let url = &s.server.url;
    let r = dpop(url, &other_aud, &s.client.proof(url, &other_aud, |_| {})).await;
    assert_refused(&r, "invalid_token");
}
