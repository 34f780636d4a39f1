//! Machine-to-machine clients over real sockets (the MCP client-credentials extension,
//! SEP-1046): `grant_type=client_credentials` with `client_secret_basic`/`_post` and
//! with `private_key_jwt` (RFC 7523) using keys the test generates, registered inline
//! (`jwks`) or served by a real HTTP server (`jwks_uri`); assertion checks (replay, aud,
//! iss, alg, expiry, key), audience binding checked by bmm-middleware's verifier, and the
//! clients that may not use the grant.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::*;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256, RSA_PSS_SHA256,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bmm_authorization_server::{AppState, Args, Settings, serve};
use clap::Parser;
use serde_json::{Value, json};
use tokio::sync::oneshot;

const RESOURCE: &str = "http://127.0.0.1:4103/mcp";
const OTHER_RESOURCE: &str = "http://127.0.0.1:4104/mcp";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const SECRET: &str = "machine-secret-0123456789abcdef";
const WEB_SECRET: &str = "web-secret-0123456789abcdef";

struct TestAs {
    url: String,
    /// The running server's state (its store, for the audit trail).
    state: AppState,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestAs {
    async fn start(data_dir: &Path, config: &Path, extra: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listen = addr.to_string();
        let mut argv: Vec<String> = [
            "bmm-as",
            "--listen",
            &listen,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--resource",
            RESOURCE,
            "--resource",
            OTHER_RESOURCE,
            "--config",
            config.to_str().unwrap(),
            "--allow-loopback-cimd",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        argv.extend(database_args(data_dir));
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        let settings = Settings::from_args(Args::try_parse_from(argv).unwrap()).unwrap();
        let state = AppState::open(settings).await.unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Self {
            url: format!("http://{addr}"),
            state,
            stop: Some(tx),
            handle,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    fn token_endpoint(&self) -> String {
        format!("{}/token", self.url)
    }

    /// The `client_credentials` audit events, newest first.
    async fn machine_events(&self) -> Vec<bmm_authorization_server::store::AuditEvent> {
        let filter = bmm_authorization_server::store::AuditFilter {
            kind: Some("client_credentials".to_owned()),
            limit: 100,
            ..Default::default()
        };
        self.state.store().events(&filter).await.unwrap()
    }
}

/// A key pair a machine client signs its assertions with.
enum Key {
    Rsa(KeyPair),
    Ec(EcdsaKeyPair),
}

impl Key {
    fn rsa() -> Self {
        Key::Rsa(KeyPair::generate(KeySize::Rsa2048).unwrap())
    }

    fn ec() -> Self {
        Key::Ec(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }

    fn jwk(&self, kid: &str) -> Value {
        match self {
            Key::Rsa(pair) => {
                let p = pair.public_key();
                json!({"kty": "RSA", "kid": kid, "use": "sig",
                    "n": URL_SAFE_NO_PAD.encode(p.modulus().big_endian_without_leading_zero()),
                    "e": URL_SAFE_NO_PAD.encode(p.exponent().big_endian_without_leading_zero())})
            }
            Key::Ec(pair) => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
            }
        }
    }

    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let signature = match self {
            Key::Rsa(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                if header["alg"] == "PS256" {
                    pair.sign(&RSA_PSS_SHA256, &rng, input.as_bytes(), &mut sig)
                } else {
                    pair.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig)
                }
                .unwrap();
                sig
            }
            Key::Ec(pair) => pair.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn unique() -> String {
    let mut b = [0u8; 12];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    URL_SAFE_NO_PAD.encode(b)
}

/// The claims of a good assertion by `client` for the server at `aud`.
fn claims(client: &str, aud: &str) -> Value {
    let t = now();
    json!({"iss": client, "sub": client, "aud": aud, "iat": t, "exp": t + 120, "jti": unique()})
}

/// A config file with the machine clients, `svc-uri` fetching its keys from `jwks_uri`.
fn config(rsa: &Key, jwks_uri: &str) -> tempfile::NamedTempFile {
    let jwks = json!({"keys": [rsa.jwk("svc-rsa-1")]}).to_string();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        r#"
scopes = ["mcp:read", "mcp:write", "mcp:admin"]
default_scopes = ["mcp:read"]

[[clients]]
client_id = "svc-secret"
client_secret = "{SECRET}"
grant_types = ["client_credentials"]
scope = "mcp:read mcp:write"

[[clients]]
client_id = "svc-jwks"
grant_types = ["client_credentials"]
scope = "mcp:read mcp:write"
jwks = '{jwks}'

[[clients]]
client_id = "svc-uri"
grant_types = ["client_credentials"]
jwks_uri = "{jwks_uri}"

[[clients]]
client_id = "web-secret"
client_secret = "{WEB_SECRET}"
redirect_uris = ["http://127.0.0.1:33418/callback"]

[[clients]]
client_id = "web-public"
redirect_uris = ["http://127.0.0.1:33418/callback"]
"#
    )
    .unwrap();
    file
}

/// A real HTTP server publishing a JWK Set that the test can change, counting fetches.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

async fn jwks_server(initial: Value) -> JwksServer {
    let keys = Arc::new(Mutex::new(initial));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (k, f) = (Arc::clone(&keys), Arc::clone(&fetches));
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let (k, f) = (Arc::clone(&k), Arc::clone(&f));
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                axum::Json(k.lock().unwrap().clone())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    JwksServer {
        url: format!("http://{addr}/jwks"),
        keys,
        fetches,
    }
}

async fn token(as_: &TestAs, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> (u16, Value) {
    let mut request = http().post(as_.token_endpoint()).form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.unwrap();
    if response.status().is_success() {
        assert_eq!(response.headers()["cache-control"], "no-store");
    }
    json_of(response).await
}

/// A client_credentials request authenticated by `assertion`.
async fn with_assertion(as_: &TestAs, assertion: &str, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion),
        ("resource", RESOURCE),
    ];
    form.extend_from_slice(extra);
    token(as_, &form, None).await
}

async fn verify(
    as_: &TestAs,
    access_token: &str,
    resource: &str,
) -> Result<bmm_middleware::AuthContext, bmm_middleware::AuthError> {
    let auth = bmm_middleware::AuthConfig::new(bmm_middleware::Resource::parse(resource).unwrap())
        .issuer(bmm_middleware::Issuer::parse(&as_.url).unwrap())
        .build()
        .unwrap();
    auth.verify_token(access_token).await
}

struct Setup {
    as_: TestAs,
    rsa: Key,
    ec: Key,
    server: JwksServer,
    _dir: tempfile::TempDir,
    _config: tempfile::NamedTempFile,
}

async fn setup() -> Setup {
    let (rsa, ec) = (Key::rsa(), Key::ec());
    let server = jwks_server(json!({"keys": [ec.jwk("svc-ec-1")]})).await;
    let config = config(&rsa, &server.url);
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), config.path(), &[]).await;
    Setup {
        as_,
        rsa,
        ec,
        server,
        _dir: dir,
        _config: config,
    }
}

#[tokio::test]
async fn metadata_advertises_the_grant_and_private_key_jwt() {
    let s = setup().await;
    let (status, doc) = json_of(
        http()
            .get(format!(
                "{}/.well-known/oauth-authorization-server",
                s.as_.url
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let has = |field: &str, value: &str| {
        doc[field]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v.as_str() == Some(value))
    };
    assert!(has("grant_types_supported", "client_credentials"), "{doc}");
    assert!(has(
        "token_endpoint_auth_methods_supported",
        "private_key_jwt"
    ));
    assert!(has(
        "token_endpoint_auth_methods_supported",
        "client_secret_basic"
    ));
    for alg in ["RS256", "PS256", "ES256"] {
        assert!(has("token_endpoint_auth_signing_alg_values_supported", alg));
    }
    s.as_.stop().await;
}

#[tokio::test]
async fn client_secret_clients_get_an_audience_bound_token_and_no_refresh_token() {
    let s = setup().await;
    let as_ = &s.as_;
    let (status, body) = token(
        as_,
        &[
            ("grant_type", "client_credentials"),
            ("resource", RESOURCE),
            ("scope", "mcp:read"),
        ],
        Some(("svc-secret", SECRET)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "mcp:read");
    assert!(
        body.get("refresh_token").is_none(),
        "no refresh token: {body}"
    );
    let at = body["access_token"].as_str().unwrap();
    let ctx = verify(as_, at, RESOURCE).await.unwrap();
    assert_eq!(ctx.subject(), Some("svc-secret"));
    assert_eq!(ctx.client_id(), Some("svc-secret"));
    assert!(ctx.has_scope("mcp:read") && !ctx.has_scope("mcp:write"));
    assert!(
        verify(as_, at, OTHER_RESOURCE).await.is_err(),
        "the token is bound to the resource it was asked for"
    );

    // client_secret_post works too; no scope asked: everything the client registered.
    let (status, body) = token(
        as_,
        &[
            ("grant_type", "client_credentials"),
            ("resource", OTHER_RESOURCE),
            ("client_id", "svc-secret"),
            ("client_secret", SECRET),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "mcp:read mcp:write");
    verify(as_, body["access_token"].as_str().unwrap(), OTHER_RESOURCE)
        .await
        .unwrap();

    // A scope the client did not register, a missing or foreign resource, a bad secret.
    // Extra form fields, the secret, the status and error expected.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, u16, &'a str);
    let cases: [Case<'_>; 4] = [
        (
            &[("resource", RESOURCE), ("scope", "mcp:read mcp:admin")],
            SECRET,
            400,
            "invalid_scope",
        ),
        (&[], SECRET, 400, "invalid_target"),
        (
            &[("resource", "http://127.0.0.1:4199/mcp")],
            SECRET,
            400,
            "invalid_target",
        ),
        (
            &[("resource", RESOURCE)],
            "wrong-secret",
            401,
            "invalid_client",
        ),
    ];
    for (extra, secret, want_status, want_error) in cases {
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend_from_slice(extra);
        let (status, body) = token(as_, &form, Some(("svc-secret", secret))).await;
        assert_eq!(status, want_status, "{extra:?}: {body}");
        assert_eq!(body["error"], want_error, "{extra:?}: {body}");
    }
    s.as_.stop().await;
}

#[tokio::test]
async fn public_clients_and_clients_not_registered_for_the_grant_are_refused() {
    let s = setup().await;
    let as_ = &s.as_;
    let form = [("grant_type", "client_credentials"), ("resource", RESOURCE)];
    let (status, body) = token(as_, &form, Some(("web-secret", WEB_SECRET))).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "unauthorized_client", "{body}");

    let mut public = form.to_vec();
    public.push(("client_id", "web-public"));
    let (status, body) = token(as_, &public, None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "unauthorized_client", "{body}");

    // A dynamically registered client cannot obtain the grant: registration is open, and a
    // token without a user must not be one anonymous request away.
    let (status, body) = json_of(
        http()
            .post(format!("{}/register", as_.url))
            .json(
                &json!({"redirect_uris": ["http://127.0.0.1:33418/callback"],
                "grant_types": ["client_credentials"],
                "token_endpoint_auth_method": "client_secret_basic"}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_client_metadata");
    s.as_.stop().await;
}

#[tokio::test]
async fn private_key_jwt_with_registered_jwks_verifies_and_refuses_bad_assertions() {
    let s = setup().await;
    let as_ = &s.as_;
    let endpoint = as_.token_endpoint();
    let header = json!({"alg": "RS256", "kid": "svc-rsa-1", "typ": "JWT"});

    let good = s.rsa.sign(&header, &claims("svc-jwks", &endpoint));
    let (status, body) = with_assertion(as_, &good, &[("scope", "mcp:write")]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("refresh_token").is_none());
    let ctx = verify(as_, body["access_token"].as_str().unwrap(), RESOURCE)
        .await
        .unwrap();
    assert_eq!(ctx.subject(), Some("svc-jwks"));
    assert!(ctx.has_scope("mcp:write") && !ctx.has_scope("mcp:read"));

    // The same assertion again: its jti is used up.
    let (status, body) = with_assertion(as_, &good, &[]).await;
    assert_eq!(status, 401, "replayed jti: {body}");
    assert_eq!(body["error"], "invalid_client");

    // The issuer as aud, PS256 with the same key, and a matching client_id are accepted.
    let mut at_issuer = claims("svc-jwks", &as_.url);
    at_issuer["aud"] = json!(as_.url);
    let ps = s
        .rsa
        .sign(&json!({"alg": "PS256", "kid": "svc-rsa-1"}), &at_issuer);
    let (status, body) = with_assertion(as_, &ps, &[("client_id", "svc-jwks")]).await;
    assert_eq!(status, 200, "{body}");

    let other = Key::rsa();
    let mut cases: Vec<(&str, String)> = Vec::new();
    let mut c = claims("svc-jwks", "https://elsewhere.example/token");
    cases.push(("wrong aud", s.rsa.sign(&header, &c)));
    c = claims("svc-jwks", &endpoint);
    c["iss"] = json!("svc-secret");
    cases.push(("wrong iss", s.rsa.sign(&header, &c)));
    c = claims("svc-jwks", &endpoint);
    c["exp"] = json!(now() - 120);
    c["iat"] = json!(now() - 300);
    cases.push(("expired", s.rsa.sign(&header, &c)));
    c = claims("svc-jwks", &endpoint);
    c["exp"] = json!(now() + 3600);
    cases.push(("exp an hour ahead", s.rsa.sign(&header, &c)));
    c = claims("svc-jwks", &endpoint);
    c.as_object_mut().unwrap().remove("jti");
    cases.push(("no jti", s.rsa.sign(&header, &c)));
    cases.push((
        "another key",
        other.sign(&header, &claims("svc-jwks", &endpoint)),
    ));
    let hs = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "kid": "svc-rsa-1"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims("svc-jwks", &endpoint).to_string()),
        URL_SAFE_NO_PAD.encode([7u8; 32])
    );
    cases.push(("HS256", hs));
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims("svc-jwks", &endpoint).to_string()),
    );
    cases.push(("alg none", none));
    cases.push((
        "a client_secret client",
        s.rsa.sign(&header, &claims("svc-secret", &endpoint)),
    ));
    for (what, assertion) in &cases {
        let (status, body) = with_assertion(as_, assertion, &[]).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"], "invalid_client", "{what}: {body}");
    }
    // A private_key_jwt client cannot pass for a public one by sending its id alone.
    let (status, body) = token(
        as_,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "svc-jwks"),
            ("resource", RESOURCE),
        ],
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client");
    // The trail has the two tokens and the refusals, never an assertion.
    let trail = as_.machine_events().await;
    let issued: Vec<_> = trail.iter().filter(|e| e.outcome == "ok").collect();
    assert_eq!(issued.len(), 2, "{trail:?}");
    assert!(
        issued
            .iter()
            .all(|e| e.client_id.as_deref() == Some("svc-jwks")
                && e.subject.as_deref() == Some("svc-jwks")
                && e.resource.as_deref() == Some(RESOURCE))
    );
    assert!(
        trail.iter().any(|e| e.outcome == "invalid_client"
            && e.detail.as_deref().is_some_and(|d| d.contains("jti"))),
        "the replay is recorded: {trail:?}"
    );
    let text = format!("{trail:?}");
    for (_, assertion) in &cases {
        let signature = assertion.rsplit('.').next().unwrap();
        assert!(signature.is_empty() || !text.contains(signature));
    }
    assert!(!text.contains(good.rsplit('.').next().unwrap()));
    // client_id in the body must be the assertion's subject.
    let good = s.rsa.sign(&header, &claims("svc-jwks", &endpoint));
    let (status, _) = with_assertion(as_, &good, &[("client_id", "svc-secret")]).await;
    assert_eq!(status, 401);
    // An assertion and a secret at once is two methods.
    let (status, body) = token(
        as_,
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &good),
            ("resource", RESOURCE),
        ],
        Some(("svc-secret", SECRET)),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    s.as_.stop().await;
}

#[tokio::test]
async fn private_key_jwt_with_a_jwks_uri_caches_the_keys_and_refetches_for_a_new_kid() {
    let s = setup().await;
    let as_ = &s.as_;
    let endpoint = as_.token_endpoint();
    let es = |key: &Key, kid: &str| {
        key.sign(
            &json!({"alg": "ES256", "kid": kid}),
            &claims("svc-uri", &endpoint),
        )
    };
    for _ in 0..3 {
        let (status, body) = with_assertion(as_, &es(&s.ec, "svc-ec-1"), &[]).await;
        assert_eq!(status, 200, "{body}");
        // No scope registered: the default scopes.
        assert_eq!(body["scope"], "mcp:read");
    }
    assert_eq!(
        s.server.fetches.load(Ordering::SeqCst),
        1,
        "the key set is fetched once and cached"
    );

    // The client rotates: a new key under a new kid. Refetches of one URL are at least
    // 2 s apart, so wait that long before presenting the new kid.
    let next = Key::ec();
    *s.server.keys.lock().unwrap() = json!({"keys": [next.jwk("svc-ec-2")]});
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = with_assertion(as_, &es(&next, "svc-ec-2"), &[]).await;
    assert_eq!(status, 200, "refetched on the unknown kid: {body}");
    assert_eq!(s.server.fetches.load(Ordering::SeqCst), 2);
    // The old key is gone from the refreshed set.
    let (status, _) = with_assertion(as_, &es(&s.ec, "svc-ec-1"), &[]).await;
    assert_eq!(status, 401);
    // A kid nobody publishes is refused without fetching again right away.
    let (status, _) = with_assertion(as_, &es(&next, "svc-ec-9"), &[]).await;
    assert_eq!(status, 401);
    assert!(s.server.fetches.load(Ordering::SeqCst) <= 3);
    s.as_.stop().await;
}

#[tokio::test]
async fn a_replayed_assertion_is_refused_by_another_instance_on_the_same_database() {
    let s = setup().await;
    let config = config(&s.rsa, &s.server.url);
    let dir = s._dir.path();
    let b = TestAs::start(dir, config.path(), &[]).await;
    // The two instances have their own issuers (their ports), so each assertion names its
    // instance as aud; the second carries the jti the first already used: a replay.
    let header = json!({"alg": "RS256", "kid": "svc-rsa-1"});
    let mut at_a = claims("svc-jwks", &s.as_.url);
    at_a["jti"] = json!("shared-jti");
    let mut at_b = claims("svc-jwks", &b.url);
    at_b["jti"] = json!("shared-jti");
    let (status, body) = with_assertion(&s.as_, &s.rsa.sign(&header, &at_a), &[]).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = with_assertion(&b, &s.rsa.sign(&header, &at_b), &[]).await;
    assert_eq!(status, 401, "the jti was used at A: {body}");
    assert_eq!(body["error"], "invalid_client");
    // A fresh jti works at B.
    let fresh = s.rsa.sign(&header, &claims("svc-jwks", &b.url));
    let (status, body) = with_assertion(&b, &fresh, &[]).await;
    assert_eq!(status, 200, "{body}");
    b.stop().await;
    s.as_.stop().await;
}

#[tokio::test]
async fn registration_accepts_private_key_jwt_with_jwks_xor_jwks_uri() {
    let s = setup().await;
    let as_ = &s.as_;
    let register = |body: Value| {
        let url = format!("{}/register", as_.url);
        async move { json_of(http().post(url).json(&body).send().await.unwrap()).await }
    };
    let jwks = json!({"keys": [s.rsa.jwk("k1")]});
    let (status, body) = register(json!({"redirect_uris": ["http://127.0.0.1:33418/callback"],
        "token_endpoint_auth_method": "private_key_jwt", "jwks": jwks}))
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(body.get("client_secret").is_none(), "{body}");
    assert_eq!(body["token_endpoint_auth_method"], "private_key_jwt");
    let (status, body) = register(json!({"redirect_uris": ["http://127.0.0.1:33418/callback"],
        "token_endpoint_auth_method": "private_key_jwt", "jwks_uri": s.server.url}))
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["jwks_uri"], s.server.url);
    for bad in [
        json!({"token_endpoint_auth_method": "private_key_jwt"}),
        json!({"token_endpoint_auth_method": "private_key_jwt", "jwks": jwks, "jwks_uri": s.server.url}),
        json!({"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}),
        json!({"token_endpoint_auth_method": "private_key_jwt", "jwks_uri": "http://machine.example/jwks"}),
        json!({"token_endpoint_auth_method": "none", "jwks": jwks}),
    ] {
        let mut body = bad.clone();
        body["redirect_uris"] = json!(["http://127.0.0.1:33418/callback"]);
        let (status, answer) = register(body).await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert_eq!(
            answer["error"], "invalid_client_metadata",
            "{bad}: {answer}"
        );
    }
    s.as_.stop().await;
}

#[test]
fn a_configured_client_credentials_client_must_be_confidential() {
    let dir = tempfile::tempdir().unwrap();
    for (client, why) in [
        (
            "client_id = \"svc\"\ngrant_types = [\"client_credentials\"]\n",
            "public",
        ),
        (
            "client_id = \"svc\"\ngrant_types = [\"client_credentials\"]\njwks_uri = \"https://a.example/jwks\"\njwks = '{\"keys\": []}'\n",
            "both",
        ),
        (
            "client_id = \"svc\"\ngrant_types = [\"client_credentials\"]\njwks = 'not json'\n",
            "bad jwks",
        ),
    ] {
        let mut config = tempfile::NamedTempFile::new().unwrap();
        write!(config, "[[clients]]\n{client}").unwrap();
        let args = Args::try_parse_from([
            "bmm-as",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--resource",
            RESOURCE,
            "--config",
            config.path().to_str().unwrap(),
        ])
        .unwrap();
        assert!(Settings::from_args(args).is_err(), "{why}");
    }
}

#[tokio::test]
async fn a_registered_private_key_jwt_client_runs_the_code_flow_refreshes_and_revokes() {
    let (rsa, ec) = (Key::rsa(), Key::ec());
    let server = jwks_server(json!({"keys": [ec.jwk("unused")]})).await;
    let config = config(&rsa, &server.url);
    let dir = tempfile::tempdir().unwrap();
    let as_ = TestAs::start(dir.path(), config.path(), &["--dev-user", "bob"]).await;
    let key = Key::ec();
    let (status, reg) = json_of(
        http()
            .post(format!("{}/register", as_.url))
            .json(
                &json!({"redirect_uris": ["http://127.0.0.1:33418/callback"],
                "token_endpoint_auth_method": "private_key_jwt",
                "jwks": {"keys": [key.jwk("app-1")]}}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{reg}");
    let client = reg["client_id"].as_str().unwrap().to_owned();
    let p = pkce();
    let response = http()
        .get(format!("{}/authorize", as_.url))
        .query(&[
            ("response_type", "code"),
            ("client_id", &client),
            ("redirect_uri", "http://127.0.0.1:33418/callback"),
            ("code_challenge", &p.challenge),
            ("code_challenge_method", "S256"),
            ("state", "s"),
            ("resource", RESOURCE),
        ])
        .send()
        .await
        .unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let code = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.to_string())
        .unwrap();
    let endpoint = as_.token_endpoint();
    let assertion = || {
        key.sign(
            &json!({"alg": "ES256", "kid": "app-1"}),
            &claims(&client, &endpoint),
        )
    };
    let code_form = |assertion: String| {
        vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.clone()),
            ("redirect_uri", "http://127.0.0.1:33418/callback".to_owned()),
            ("code_verifier", p.verifier.clone()),
            ("client_assertion_type", ASSERTION_TYPE.to_owned()),
            ("client_assertion", assertion),
        ]
    };
    let send = |form: Vec<(&'static str, String)>, path: &'static str| {
        let url = format!("{}/{path}", as_.url);
        async move {
            let response = http().post(url).form(&form).send().await.unwrap();
            json_of(response).await
        }
    };
    // The client id alone is not enough for this client, even with the right code.
    let mut bare = code_form(String::new());
    bare.truncate(4);
    bare.push(("client_id", client.clone()));
    let (status, body) = send(bare, "token").await;
    assert_eq!(status, 401, "{body}");
    let (status, tokens) = send(code_form(assertion()), "token").await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(
        verify(&as_, tokens["access_token"].as_str().unwrap(), RESOURCE)
            .await
            .unwrap()
            .subject(),
        Some("bob")
    );
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
    let (status, refreshed) = send(
        vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh_token.clone()),
            ("client_assertion_type", ASSERTION_TYPE.to_owned()),
            ("client_assertion", assertion()),
        ],
        "token",
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    let next = refreshed["refresh_token"].as_str().unwrap().to_owned();
    // Revocation authenticates the same way; the grant then ends.
    let response = http()
        .post(format!("{}/revoke", as_.url))
        .form(&[
            ("token", next.as_str()),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &assertion()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (status, body) = send(
        vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", next),
            ("client_assertion_type", ASSERTION_TYPE.to_owned()),
            ("client_assertion", assertion()),
        ],
        "token",
    )
    .await;
    assert_eq!(status, 400, "revoked: {body}");
    assert_eq!(body["error"], "invalid_grant");
    as_.stop().await;
}

#[tokio::test]
async fn registered_key_sets_refuse_private_members_and_keep_only_public_ones_within_8_kib() {
    let s = setup().await;
    let as_ = &s.as_;
    let register = |jwks: Value| {
        let url = format!("{}/register", as_.url);
        let body = json!({"redirect_uris": ["http://127.0.0.1:33418/callback"],
            "token_endpoint_auth_method": "private_key_jwt", "jwks": jwks});
        async move { json_of(http().post(url).json(&body).send().await.unwrap()).await }
    };
    for member in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
        let mut key = s.rsa.jwk("k1");
        key[member] = json!("c2VjcmV0");
        let (status, answer) = register(json!({"keys": [key]})).await;
        assert_eq!(status, 400, "{member}: {answer}");
        assert_eq!(answer["error"], "invalid_client_metadata");
    }
    // Unknown members are dropped: what is stored and echoed is the public key only.
    let mut key = s.rsa.jwk("k1");
    key["x-padding"] = json!("a".repeat(60_000));
    let (status, answer) = register(json!({"keys": [key], "x-more": "b".repeat(1000)})).await;
    assert_eq!(status, 201, "{answer}");
    let echoed = answer["jwks"].to_string();
    assert!(echoed.len() < 1024, "{echoed}");
    assert_eq!(answer["jwks"]["keys"][0]["n"], s.rsa.jwk("k1")["n"]);
    // Twenty 2048-bit keys with long `kid`s are more than 8 KiB of public members.
    let keys: Vec<Value> = (0..20)
        .map(|i| s.rsa.jwk(&format!("k{i}-{}", "x".repeat(200))))
        .collect();
    let (status, answer) = register(json!({ "keys": keys })).await;
    assert_eq!(status, 400, "{answer}");
    s.as_.stop().await;
}

#[test]
fn a_configured_key_set_with_a_private_member_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut key = Key::ec().jwk("svc-1");
    key["d"] = json!("c2VjcmV0");
    let jwks = json!({ "keys": [key] }).to_string();
    let mut config = tempfile::NamedTempFile::new().unwrap();
    write!(
        config,
        "[[clients]]\nclient_id = \"svc\"\ngrant_types = [\"client_credentials\"]\njwks = '{jwks}'\n"
    )
    .unwrap();
    let args = Args::try_parse_from([
        "bmm-as",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--resource",
        RESOURCE,
        "--config",
        config.path().to_str().unwrap(),
    ])
    .unwrap();
    let error = Settings::from_args(args).unwrap_err().to_string();
    assert!(error.contains("private member"), "{error}");
}

#[tokio::test]
async fn a_replayed_assertion_is_audited_under_the_client_it_names_at_token_and_revoke() {
    let s = setup().await;
    let as_ = &s.as_;
    let endpoint = as_.token_endpoint();
    let header = json!({"alg": "RS256", "kid": "svc-rsa-1"});
    let good = s.rsa.sign(&header, &claims("svc-jwks", &endpoint));
    let (status, body) = with_assertion(as_, &good, &[]).await;
    assert_eq!(status, 200, "{body}");
    // No client_id in the body: the replay is still the assertion's client's.
    let (status, _) = with_assertion(as_, &good, &[]).await;
    assert_eq!(status, 401);
    let replays = |events: Vec<bmm_authorization_server::store::AuditEvent>| {
        events
            .into_iter()
            .filter(|e| e.detail.as_deref().is_some_and(|d| d.contains("jti")))
            .collect::<Vec<_>>()
    };
    let trail = replays(as_.machine_events().await);
    assert_eq!(trail.len(), 1, "{trail:?}");
    assert_eq!(trail[0].client_id.as_deref(), Some("svc-jwks"));
    // A replay at /revoke is audited too, under the same client.
    let response = http()
        .post(format!("{}/revoke", as_.url))
        .form(&[
            ("token", "whatever"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &good),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let filter = bmm_authorization_server::store::AuditFilter {
        kind: Some("revocation".to_owned()),
        limit: 100,
        ..Default::default()
    };
    let trail = replays(as_.state.store().events(&filter).await.unwrap());
    assert_eq!(trail.len(), 1, "{trail:?}");
    assert_eq!(trail[0].client_id.as_deref(), Some("svc-jwks"));
    s.as_.stop().await;
}

/// A server whose `/slow/{n}` answers only once `release` is notified, counting the
/// requests it holds.
async fn slow_jwks_server() -> (String, Arc<AtomicUsize>, Arc<tokio::sync::Notify>) {
    let held = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let (h, r) = (Arc::clone(&held), Arc::clone(&release));
    let app = axum::Router::new().route(
        "/slow/{n}",
        axum::routing::get(move || {
            let (h, r) = (Arc::clone(&h), Arc::clone(&r));
            async move {
                let released = r.notified();
                h.fetch_add(1, Ordering::SeqCst);
                released.await;
                axum::Json(json!({"keys": []}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/slow", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, held, release)
}

#[tokio::test]
async fn jwks_uri_fetches_are_bounded_per_caller_and_never_starve_a_configured_client() {
    let s = setup().await;
    let as_ = &s.as_;
    let endpoint = as_.token_endpoint();
    let (slow, held, release) = slow_jwks_server().await;
    // Registered clients whose key sets never arrive, each at its own URL.
    let mut ids = Vec::new();
    for n in 0..17 {
        let (status, body) = json_of(
            http()
                .post(format!("{}/register", as_.url))
                .json(
                    &json!({"redirect_uris": ["http://127.0.0.1:33418/callback"],
                    "token_endpoint_auth_method": "private_key_jwt",
                    "jwks_uri": format!("{slow}/{n}")}),
                )
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["client_id"].as_str().unwrap().to_owned());
    }
    // Well-formed but unsigned assertions: the keys are fetched before the signature fails.
    let unsigned = |client: &str| {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "kid": "x"}).to_string());
        let body = URL_SAFE_NO_PAD.encode(claims(client, &endpoint).to_string());
        format!("{header}.{body}.c2ln")
    };
    let send = |from: &str, assertion: String| {
        let http = http_from(Some(from.parse().unwrap()));
        let url = endpoint.clone();
        tokio::spawn(async move {
            let form = [
                ("grant_type", "client_credentials"),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &assertion),
                ("resource", RESOURCE),
            ];
            http.post(url)
                .form(&form)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    // One caller: two fetches at a time; the third is refused at once, not queued.
    let first: Vec<_> = (0..2)
        .map(|i| send("127.0.0.1", unsigned(&ids[i])))
        .collect();
    while held.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let third = send("127.0.0.1", unsigned(&ids[2]));
    let third = tokio::time::timeout(Duration::from_secs(30), third)
        .await
        .expect("the third fetch of one caller is refused, not queued")
        .unwrap();
    assert_eq!(third, 503);
    // Callers at seven more addresses fill the registered clients' 16 fetches.
    let mut rest = Vec::new();
    for (i, id) in ids.iter().enumerate().skip(3) {
        let from = format!("127.0.0.{}", 10 + i / 2);
        rest.push(send(&from, unsigned(id)));
    }
    while held.load(Ordering::SeqCst) < 16 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The configured client's fetch has its own pool: it gets its keys and a token.
    let good = s.ec.sign(
        &json!({"alg": "ES256", "kid": "svc-ec-1"}),
        &claims("svc-uri", &endpoint),
    );
    let (status, body) = with_assertion(as_, &good, &[]).await;
    assert_eq!(status, 200, "{body}");
    release.notify_waiters();
    for task in first.into_iter().chain(rest) {
        assert_eq!(task.await.unwrap(), 401);
    }
    s.as_.stop().await;
}
