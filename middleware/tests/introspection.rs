//! RFC 7662 introspection (bmm_middleware::introspect rules), each against a real server on
//! 127.0.0.1:0 and a real introspection endpoint on 127.0.0.1:0 acting as the
//! authorization server (metadata, JWKS, `/introspect` with client authentication).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bmm_middleware::{
    AuthConfig, Authenticator, Introspection, IntrospectionAuth, Issuer, Resource, ScopeClaim,
    ScopePolicy, ServeConfig, Server, TokenKind, TrustedIssuer,
};
use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const CLIENT_ID: &str = "notes-rs";
const SECRET: &str = "s3cr:t é+/%";

/// How the stand-in's `/introspect` misbehaves.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Normal,
    Status(u16),
    Garbage,
    NoActive,
    Huge,
    Slow(Duration),
}

/// How the stand-in authenticates the resource server.
enum ClientCheck {
    Basic(String),
    PrivateKeyJwt(Vec<u8>),
}

struct AsState {
    issuer: String,
    client: ClientCheck,
    tokens: Mutex<HashMap<String, Value>>,
    mode: Mutex<Mode>,
    delay: Mutex<Duration>,
    /// Calls per path (`/introspect`, `/other-introspect`).
    calls: Mutex<HashMap<String, usize>>,
    metadata_fetches: AtomicUsize,
    /// The form parameter names of every introspection request.
    forms: Mutex<Vec<Vec<String>>>,
    jtis: Mutex<HashSet<String>>,
    refused_clients: AtomicUsize,
}

/// The authorization server stand-in: metadata, JWKS and `/introspect`.
struct TestAs {
    issuer: String,
    state: Arc<AsState>,
    _shutdown: oneshot::Sender<()>,
}

impl TestAs {
    async fn start(client: ClientCheck) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(AsState {
            issuer: issuer.clone(),
            client,
            tokens: Mutex::new(HashMap::new()),
            mode: Mutex::new(Mode::Normal),
            delay: Mutex::new(Duration::ZERO),
            calls: Mutex::new(HashMap::new()),
            metadata_fetches: AtomicUsize::new(0),
            forms: Mutex::new(Vec::new()),
            jtis: Mutex::new(HashSet::new()),
            refused_clients: AtomicUsize::new(0),
        });
        let (tx, mut rx) = oneshot::channel::<()>();
        let served = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let state = Arc::clone(&served);
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let state = Arc::clone(&state);
                                async move { Ok::<_, Infallible>(as_route(&state, req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    _ = &mut rx => break,
                }
            }
        });
        Self {
            issuer,
            state,
            _shutdown: tx,
        }
    }

    async fn basic() -> Self {
        Self::start(ClientCheck::Basic(SECRET.to_owned())).await
    }

    /// Registers `token` as active with `response` (merged over standard members).
    fn issue(&self, token: &str, resource: &str, extra: Value) {
        let mut response = json!({
            "active": true,
            "iss": self.issuer,
            "sub": "alice",
            "aud": [resource],
            "exp": now() + 3600,
            "iat": now(),
            "client_id": "bmm_test_client",
            "scope": "notes:read",
            "token_type": "Bearer",
            "jti": "j-1",
        });
        let map = response.as_object_mut().unwrap();
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                map.remove(k);
            } else {
                map.insert(k.clone(), v.clone());
            }
        }
        self.state
            .tokens
            .lock()
            .unwrap()
            .insert(token.to_owned(), response);
    }

    fn calls(&self) -> usize {
        self.state.calls.lock().unwrap().values().sum()
    }

    fn calls_at(&self, path: &str) -> usize {
        self.state
            .calls
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    fn issuer(&self) -> Issuer {
        Issuer::parse(&self.issuer).unwrap()
    }
}

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    response
}

async fn as_route(state: &AsState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/.well-known/oauth-authorization-server" => {
            state.metadata_fetches.fetch_add(1, Ordering::SeqCst);
            return json_response(
                200,
                &json!({
                    "issuer": state.issuer,
                    "jwks_uri": format!("{}/jwks", state.issuer),
                    "introspection_endpoint": format!("{}/introspect", state.issuer),
                    "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
                }),
            );
        }
        "/jwks" => return json_response(200, &json!({"keys": [TestKey::rsa_a().jwk]})),
        "/introspect" | "/other-introspect" if req.method() == http::Method::POST => {}
        _ => return json_response(404, &json!({"error": "not_found"})),
    }
    *state.calls.lock().unwrap().entry(path).or_default() += 1;
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_owned());
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let mut names: Vec<String> = url::form_urlencoded::parse(&body)
        .map(|(k, _)| k.into_owned())
        .collect();
    names.sort();
    state.forms.lock().unwrap().push(names);
    assert_eq!(
        content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    if !client_authenticated(state, authorization.as_deref(), &form) {
        state.refused_clients.fetch_add(1, Ordering::SeqCst);
        return json_response(401, &json!({"error": "invalid_client"}));
    }
    let mode = *state.mode.lock().unwrap();
    match mode {
        Mode::Normal => {}
        Mode::Status(code) => return json_response(code, &json!({"error": "server_error"})),
        Mode::Garbage => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"<html>oops</html>")));
            r.headers_mut()
                .insert(http::header::CONTENT_TYPE, "text/html".parse().unwrap());
            return r;
        }
        Mode::NoActive => return json_response(200, &json!({"sub": "alice"})),
        Mode::Huge => {
            return json_response(
                200,
                &json!({"active": true, "padding": "x".repeat(70 * 1024)}),
            );
        }
        Mode::Slow(d) => tokio::time::sleep(d).await,
    }
    let token = form.get("token").cloned().unwrap_or_default();
    let answer = state
        .tokens
        .lock()
        .unwrap()
        .get(&token)
        .cloned()
        .unwrap_or_else(|| json!({"active": false}));
    let mut r = json_response(200, &answer);
    r.headers_mut()
        .insert(http::header::CACHE_CONTROL, "no-store".parse().unwrap());
    r
}

/// What a real authorization server checks of the resource server's credentials.
fn client_authenticated(
    state: &AsState,
    authorization: Option<&str>,
    form: &HashMap<String, String>,
) -> bool {
    match &state.client {
        ClientCheck::Basic(secret) => {
            let Some(value) = authorization.and_then(|a| a.strip_prefix("Basic ")) else {
                return false;
            };
            let decoded = String::from_utf8(STANDARD.decode(value).unwrap()).unwrap();
            let Some((id, given)) = decoded.split_once(':') else {
                return false;
            };
            // RFC 6749 section 2.3.1: both parts are form-urlencoded.
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            decode(id) == CLIENT_ID
                && decode(given) == *secret
                && !form.contains_key("client_secret")
        }
        ClientCheck::PrivateKeyJwt(public_pem) => {
            if authorization.is_some() {
                return false;
            }
            if form.get("client_assertion_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return false;
            }
            let Some(assertion) = form.get("client_assertion") else {
                return false;
            };
            let mut validation = Validation::new(Algorithm::RS256);
            validation.set_audience(&[state.issuer.as_str()]);
            validation.set_issuer(&[CLIENT_ID]);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            let key = DecodingKey::from_rsa_pem(public_pem).unwrap();
            let Ok(data) = jsonwebtoken::decode::<Value>(assertion, &key, &validation) else {
                return false;
            };
            let claims = data.claims;
            let exp = claims["exp"].as_u64().unwrap_or(0);
            let iat = claims["iat"].as_u64().unwrap_or(0);
            let jti = claims["jti"].as_str().unwrap_or_default().to_owned();
            claims["sub"] == CLIENT_ID
                && exp > now()
                && exp.saturating_sub(iat) <= 60
                && jti.len() >= 16
                && state.jtis.lock().unwrap().insert(jti)
        }
    }
}

/// A bmm server on 127.0.0.1:0 around [`echo_service`], configured by `configure`.
struct Rs {
    url: String,
    resource: String,
    auth: Authenticator,
    _shutdown: oneshot::Sender<()>,
}

async fn start_rs(configure: impl FnOnce(AuthConfig, &str) -> AuthConfig) -> Rs {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let resource = format!("http://{addr}/mcp");
    let config = AuthConfig::new(Resource::parse(&resource).unwrap());
    let auth = configure(config, &resource).build().unwrap();
    let server = Server::from_listener(listener, ServeConfig::new("/mcp", auth.clone()));
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(server.serve(echo_service(), async move {
        let _ = rx.await;
    }));
    Rs {
        url: resource.clone(),
        resource,
        auth,
        _shutdown: tx,
    }
}

fn basic() -> Introspection {
    Introspection::new(
        CLIENT_ID,
        IntrospectionAuth::ClientSecretBasic(SECRET.into()),
    )
}

/// A resource server trusting `as_` with introspection only (client_secret_basic).
async fn introspecting_rs(as_: &TestAs, introspection: Introspection) -> Rs {
    let issuer = as_.issuer();
    start_rs(move |c, _| c.trust(TrustedIssuer::new(issuer).introspection(introspection))).await
}

fn opaque(name: &str) -> String {
    format!("bmo_{name}_{}", rand::random::<u64>())
}

fn assert_unavailable(r: &Reply, why: &str) {
    assert_eq!(r.status, 503, "{why}: {}", r.text);
    assert!(r.headers.contains_key("retry-after"), "{why}");
    assert_eq!(r.body["error"], "temporarily_unavailable", "{why}");
}

fn assert_invalid_token(r: &Reply, why: &str) {
    assert_eq!(r.status, 401, "{why}: {}", r.text);
    assert!(
        r.www_authenticate()
            .unwrap_or_default()
            .contains("error=\"invalid_token\""),
        "{why}: {:?}",
        r.www_authenticate()
    );
}

#[tokio::test]
async fn introspection_token_shape_decides_jwt_or_opaque() {
    let as_ = TestAs::basic().await;
    let key = TestKey::rsa_a();
    // Keys and introspection: JWTs are verified locally, opaque tokens introspected.
    let issuer = as_.issuer();
    let both = start_rs(move |c, _| {
        c.trust(
            TrustedIssuer::new(issuer)
                .discover_keys()
                .introspection(basic()),
        )
    })
    .await;
    let token = opaque("a");
    as_.issue(&token, &both.resource, json!({}));
    let r = post(&both.url, Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(as_.calls(), 1);
    let jwt = key
        .sign(&json!({"iss": as_.issuer, "sub": "bob", "aud": both.resource, "exp": now() + 600}));
    let r = post(&both.url, Some(&jwt)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["subject"], "bob");
    assert_eq!(
        as_.calls(),
        1,
        "a JWT of an issuer with keys is not introspected"
    );

    // Introspection and no keys: the issuer's JWTs are introspected too.
    let only = introspecting_rs(&as_, basic()).await;
    let jwt = key.sign(
        &json!({"iss": as_.issuer, "sub": "carol", "aud": only.resource, "exp": now() + 600}),
    );
    as_.issue(&jwt, &only.resource, json!({"sub": "carol"}));
    let ctx = only.auth.verify_token(&jwt).await.unwrap();
    assert_eq!(ctx.token_kind(), TokenKind::Jwt);
    assert_eq!(ctx.subject(), Some("carol"));
    assert_eq!(as_.calls(), 2);
    // A JWT claiming another issuer is never sent to this one.
    let foreign = key.sign(
        &json!({"iss": "https://elsewhere.example", "aud": only.resource, "exp": now() + 600}),
    );
    let r = post(&only.url, Some(&foreign)).await;
    assert_invalid_token(&r, "foreign issuer");
    assert_eq!(as_.calls(), 2);

    // No issuer introspects: an opaque token is refused without any call.
    let issuer = as_.issuer();
    let jwks = format!("{}/jwks", as_.issuer);
    let jwt_only =
        start_rs(move |c, _| c.trust(TrustedIssuer::new(issuer).jwks_uri(&jwks).unwrap())).await;
    let r = post(&jwt_only.url, Some(&token)).await;
    assert_invalid_token(&r, "opaque without introspection");
    assert_eq!(as_.calls(), 2);
}

#[tokio::test]
async fn encrypted_tokens_are_refused_without_introspection() {
    let as_ = TestAs::basic().await;
    let rs = introspecting_rs(&as_, basic()).await;
    // A JWE compact serialisation, maybe another issuer's: never sent to this one, even
    // if it would answer for it.
    let header = b64(&json!({"alg": "RSA-OAEP-256", "enc": "A256GCM"}));
    for jwe in [
        format!("{header}.a2V5.aXY.Y2lwaGVy.dGFn"),
        format!("{header}..aXY.Y2lwaGVy.dGFn"), // direct encryption: no encrypted key
    ] {
        as_.issue(&jwe, &rs.resource, json!({}));
        let r = post(&rs.url, Some(&jwe)).await;
        assert_invalid_token(&r, "JWE");
        assert!(r.text.contains("encrypted"), "{}", r.text);
        let e = rs.auth.verify_token(&jwe).await.unwrap_err();
        assert!(e.is_invalid_token(), "{e}");
    }
    assert_eq!(as_.calls(), 0, "an encrypted token is never introspected");
    // Five dot-separated parts that are not a JWE stay opaque.
    let dotted = "a.b.c.d.e";
    as_.issue(dotted, &rs.resource, json!({}));
    let r = post(&rs.url, Some(dotted)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(as_.calls(), 1);
}

#[tokio::test]
async fn introspection_endpoint_comes_from_metadata_or_configuration() {
    let as_ = TestAs::basic().await;
    let discovered = introspecting_rs(&as_, basic()).await;
    let token = opaque("d");
    as_.issue(&token, &discovered.resource, json!({}));
    assert_eq!(post(&discovered.url, Some(&token)).await.status, 200);
    assert_eq!(as_.calls_at("/introspect"), 1);
    assert_eq!(as_.state.metadata_fetches.load(Ordering::SeqCst), 1);

    let endpoint = url::Url::parse(&format!("{}/other-introspect", as_.issuer)).unwrap();
    let configured = introspecting_rs(&as_, basic().endpoint(endpoint)).await;
    let token = opaque("c");
    as_.issue(&token, &configured.resource, json!({}));
    assert_eq!(post(&configured.url, Some(&token)).await.status, 200);
    assert_eq!(as_.calls_at("/other-introspect"), 1);
    assert_eq!(
        as_.state.metadata_fetches.load(Ordering::SeqCst),
        1,
        "a configured endpoint needs no metadata"
    );
}

#[tokio::test]
async fn introspection_request_carries_only_the_token_and_client_authentication() {
    // client_secret_basic, with characters that must be form-urlencoded.
    let as_ = TestAs::basic().await;
    let rs = introspecting_rs(&as_, basic()).await;
    let token = opaque("basic");
    as_.issue(&token, &rs.resource, json!({}));
    let r = post(&rs.url, Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(as_.state.refused_clients.load(Ordering::SeqCst), 0);
    assert_eq!(
        *as_.state.forms.lock().unwrap(),
        vec![vec!["token".to_owned()]]
    );
    // A wrong secret: the endpoint refuses the client, and the token is never accepted.
    let wrong = introspecting_rs(
        &as_,
        Introspection::new(
            CLIENT_ID,
            IntrospectionAuth::ClientSecretBasic("wrong".into()),
        ),
    )
    .await;
    let r = post(&wrong.url, Some(&token)).await;
    assert_unavailable(&r, "client refused by the endpoint");
    assert_eq!(as_.state.refused_clients.load(Ordering::SeqCst), 1);

    // private_key_jwt: an RFC 7523 assertion, verified by the endpoint with the public key.
    let client_key = TestKey::rsa_b();
    let as_jwt = TestAs::start(ClientCheck::PrivateKeyJwt(client_key.public_pem.clone())).await;
    let auth = IntrospectionAuth::PrivateKeyJwt {
        pem: String::from_utf8(client_key.private_pem.clone()).unwrap(),
        alg: Algorithm::RS256,
    };
    let rs = introspecting_rs(&as_jwt, Introspection::new(CLIENT_ID, auth)).await;
    for name in ["jwt-1", "jwt-2"] {
        let token = opaque(name);
        as_jwt.issue(&token, &rs.resource, json!({}));
        let r = post(&rs.url, Some(&token)).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(as_jwt.state.refused_clients.load(Ordering::SeqCst), 0);
    assert_eq!(
        as_jwt.state.jtis.lock().unwrap().len(),
        2,
        "a fresh jti per call"
    );
    for form in as_jwt.state.forms.lock().unwrap().iter() {
        assert_eq!(
            form,
            &["client_assertion", "client_assertion_type", "token"]
        );
    }
}

#[tokio::test]
async fn inactive_token_is_refused_with_401() {
    let as_ = TestAs::basic().await;
    let rs = introspecting_rs(&as_, basic()).await;
    let token = opaque("unknown");
    let r = post(&rs.url, Some(&token)).await;
    assert_invalid_token(&r, "inactive");
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap()
            .contains("not active")
    );
    // The refusal is remembered briefly: no second call.
    assert_invalid_token(&post(&rs.url, Some(&token)).await, "inactive again");
    assert_eq!(as_.calls(), 1);
}

#[tokio::test]
async fn introspection_response_claims_are_checked_like_a_jwt() {
    let as_ = TestAs::basic().await;
    let issuer = as_.issuer();
    let rs = start_rs(move |c, _| {
        c.trust(
            TrustedIssuer::new(issuer)
                .audience("api://notes")
                .introspection(basic()),
        )
    })
    .await;
    let cases = [
        ("aud-other", json!({"aud": "http://127.0.0.1:1/mcp"})),
        ("aud-absent", json!({"aud": null})),
        ("aud-api-other", json!({"aud": "api://calendar"})),
        ("iss-other", json!({"iss": "https://evil.example"})),
        ("exp-absent", json!({"exp": null})),
        ("expired", json!({"exp": now() - 3600})),
        ("nbf-future", json!({"nbf": now() + 3600})),
        ("refresh", json!({"token_type": "refresh_token"})),
    ];
    for (name, extra) in cases {
        let token = opaque(name);
        as_.issue(&token, &rs.resource, extra);
        assert_invalid_token(&post(&rs.url, Some(&token)).await, name);
    }
    let token = opaque("api");
    as_.issue(&token, &rs.resource, json!({"aud": "api://notes"}));
    let r = post(&rs.url, Some(&token)).await;
    assert_eq!(
        r.status, 200,
        "an audience configured for this issuer: {}",
        r.text
    );
    let token = opaque("no-iss");
    as_.issue(&token, &rs.resource, json!({"iss": null}));
    assert_eq!(post(&rs.url, Some(&token)).await.status, 200);

    // The same api:// audience is refused where it is not configured.
    let plain = introspecting_rs(&as_, basic()).await;
    let token = opaque("api-elsewhere");
    as_.issue(&token, &plain.resource, json!({"aud": "api://notes"}));
    assert_invalid_token(
        &post(&plain.url, Some(&token)).await,
        "api:// not configured",
    );
}

#[tokio::test]
async fn scope_claim_shape_is_chosen_per_issuer() {
    let as_ = TestAs::basic().await;
    let start = |claim: ScopeClaim| {
        let issuer = as_.issuer();
        start_rs(move |c, _| {
            c.trust(
                TrustedIssuer::new(issuer)
                    .scope_claim(claim)
                    .introspection(basic()),
            )
            .scope_policy(ScopePolicy::new().require(["notes:write"]).unwrap())
        })
    };
    let scp = start(ScopeClaim::Scp).await;
    let token = opaque("scp");
    as_.issue(
        &token,
        &scp.resource,
        json!({"scope": null, "scp": ["notes:read", "notes:write"]}),
    );
    let r = post(&scp.url, Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["scopes"], json!(["notes:read", "notes:write"]));

    let scope_only = start(ScopeClaim::Scope).await;
    let token = opaque("scp-ignored");
    as_.issue(
        &token,
        &scope_only.resource,
        json!({"scope": null, "scp": ["notes:read", "notes:write"]}),
    );
    let r = post(&scope_only.url, Some(&token)).await;
    assert_eq!(
        r.status, 403,
        "scp is ignored with ScopeClaim::Scope: {}",
        r.text
    );
}

#[tokio::test]
async fn introspection_outage_answers_503_never_200() {
    // The endpoint is down.
    let as_ = TestAs::basic().await;
    let dead = url::Url::parse(&format!("http://{}/introspect", dead_address())).unwrap();
    let down = introspecting_rs(&as_, basic().endpoint(dead)).await;
    let token = opaque("outage");
    as_.issue(&token, &down.resource, json!({}));
    assert_unavailable(&post(&down.url, Some(&token)).await, "endpoint down");

    let rs = introspecting_rs(&as_, basic().timeout(Duration::from_millis(300))).await;
    as_.issue(&token, &rs.resource, json!({}));
    for (mode, why) in [
        (Mode::Status(500), "500"),
        (Mode::Status(302), "redirect"),
        (Mode::Garbage, "not JSON"),
        (Mode::NoActive, "no active member"),
        (Mode::Huge, "over 64 KiB"),
        (
            Mode::Slow(Duration::from_secs(2)),
            "slower than the timeout",
        ),
    ] {
        as_.set_mode(mode);
        let started = std::time::Instant::now();
        assert_unavailable(&post(&rs.url, Some(&token)).await, why);
        assert!(started.elapsed() < Duration::from_millis(1500), "{why}");
    }
    // Outages are never cached: the next answer counts.
    as_.set_mode(Mode::Normal);
    let r = post(&rs.url, Some(&token)).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn introspection_results_are_cached_never_beyond_exp() {
    let as_ = TestAs::basic().await;
    let issuer = as_.issuer();
    let rs = start_rs(move |c, _| {
        c.leeway(Duration::ZERO)
            .unwrap()
            .trust(TrustedIssuer::new(issuer).introspection(basic()))
    })
    .await;
    let token = opaque("short");
    as_.issue(&token, &rs.resource, json!({"exp": now() + 2}));
    assert_eq!(post(&rs.url, Some(&token)).await.status, 200);
    assert_eq!(post(&rs.url, Some(&token)).await.status, 200);
    assert_eq!(as_.calls(), 1, "cached within exp");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    // Past exp: the cache is not used; the answer is checked again (and is expired).
    assert_invalid_token(&post(&rs.url, Some(&token)).await, "past exp");
    assert_eq!(as_.calls(), 2);

    // The ceiling bounds the reuse of a long-lived token's answer.
    let ceiling = introspecting_rs(&as_, basic().cache_ceiling(Duration::from_secs(1))).await;
    let token = opaque("long");
    as_.issue(&token, &ceiling.resource, json!({}));
    assert_eq!(post(&ceiling.url, Some(&token)).await.status, 200);
    assert_eq!(post(&ceiling.url, Some(&token)).await.status, 200);
    assert_eq!(as_.calls(), 3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(post(&ceiling.url, Some(&token)).await.status, 200);
    assert_eq!(as_.calls(), 4);
    assert_eq!(ceiling.auth.introspection_count(), 2);
}

#[tokio::test]
async fn concurrent_requests_with_one_token_share_one_introspection_call() {
    let as_ = TestAs::basic().await;
    as_.set_delay(Duration::from_millis(300));
    let rs = introspecting_rs(&as_, basic()).await;
    let token = opaque("burst");
    as_.issue(&token, &rs.resource, json!({}));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let url = rs.url.clone();
        let token = token.clone();
        tasks.spawn(async move { post(&url, Some(&token)).await.status });
    }
    let mut statuses = Vec::new();
    while let Some(status) = tasks.join_next().await {
        statuses.push(status.unwrap());
    }
    assert_eq!(statuses.len(), 50);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(as_.calls(), 1, "one introspection call for 50 requests");
}

#[tokio::test]
async fn introspection_never_logs_the_token() {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let as_ = TestAs::basic().await;
    let rs = introspecting_rs(&as_, basic()).await;
    let active = opaque("secret-active");
    as_.issue(&active, &rs.resource, json!({}));
    assert_eq!(post(&rs.url, Some(&active)).await.status, 200);
    let inactive = opaque("secret-inactive");
    assert_eq!(post(&rs.url, Some(&inactive)).await.status, 401);
    as_.set_mode(Mode::Status(500));
    let failing = opaque("secret-failing");
    assert_eq!(post(&rs.url, Some(&failing)).await.status, 503);

    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("introspect"),
        "the logs were captured: {logs}"
    );
    for token in [&active, &inactive, &failing] {
        assert!(!logs.contains(token.as_str()), "token in the logs: {logs}");
    }
    assert!(!logs.contains(SECRET), "client secret in the logs");
}

#[tokio::test]
async fn verified_introspection_response_becomes_the_auth_context() {
    let as_ = TestAs::basic().await;
    let rs = introspecting_rs(&as_, basic()).await;
    let token = opaque("ctx");
    let client = TestKey::ec();
    let jkt = bmm_middleware::dpop::jwk_thumbprint(&client.jwk).unwrap();
    as_.issue(
        &token,
        &rs.resource,
        json!({"cnf": {"jkt": jkt}, "token_type": "DPoP", "ext": {"tenant": "t1"}}),
    );
    // Bound: a token alone is refused; the whole request with its proof is accepted.
    let e = rs.auth.verify_token(&token).await.unwrap_err();
    assert!(e.is_invalid_token(), "{e}");
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": client.jwk});
    let claims = json!({
        "jti": "p-1", "htm": "POST", "htu": rs.resource, "iat": now(),
        "ath": bmm_middleware::dpop::access_token_hash(&token),
    });
    let input = format!("{}.{}", b64(&header), b64(&claims));
    let private = jsonwebtoken::EncodingKey::from_ec_pem(&client.private_pem).unwrap();
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &private, Algorithm::ES256).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("DPoP {token}").parse().unwrap());
    headers.insert("dpop", format!("{input}.{sig}").parse().unwrap());
    let ctx = rs
        .auth
        .verify_request(&http::Method::POST, "/mcp", &headers)
        .await
        .unwrap();
    assert_eq!(ctx.token_kind(), TokenKind::Opaque);
    assert_eq!(ctx.issuer(), as_.issuer);
    assert_eq!(ctx.subject(), Some("alice"));
    assert_eq!(ctx.client_id(), Some("bmm_test_client"));
    assert_eq!(ctx.token_id(), Some("j-1"));
    assert!(ctx.has_scope("notes:read"));
    assert_eq!(ctx.confirmation_jkt(), Some(jkt.as_str()));
    assert_eq!(ctx.claim("ext"), Some(&json!({"tenant": "t1"})));
    assert_eq!(ctx.claim("active"), Some(&json!(true)));
}
