//! The OAuth client and the token caches against a stand-in authorization server on a real
//! socket (127.0.0.1:0) that records every request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use super::*;
use crate::def::{ClientAuthDef, OAuthDef, OAuthGrant, SecretDef};

/// A request the stand-in saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
    form: Vec<(String, String)>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

type Answer = Arc<dyn Fn(&Seen, usize) -> (u16, String) + Send + Sync>;

/// A stand-in authorization server: answers each request with `answer(request, n)` (n
/// counts token requests, from 0) and its metadata documents from `metadata`.
struct StandIn {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    tokens: Arc<AtomicUsize>,
}

impl StandIn {
    /// `metadata(url)` gives the documents it serves, by path.
    async fn start(
        metadata: impl FnOnce(&str) -> Vec<(&'static str, Value)>,
        answer: Answer,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let metadata = metadata(&url);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tokens = Arc::new(AtomicUsize::new(0));
        let (s, t) = (Arc::clone(&seen), Arc::clone(&tokens));
        let metadata = Arc::new(metadata);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, tokens, answer, metadata) = (
                    Arc::clone(&s),
                    Arc::clone(&t),
                    Arc::clone(&answer),
                    Arc::clone(&metadata),
                );
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (seen, tokens, answer, metadata) = (
                                Arc::clone(&seen),
                                Arc::clone(&tokens),
                                Arc::clone(&answer),
                                Arc::clone(&metadata),
                            );
                            async move {
                                use http_body_util::BodyExt;
                                let path = req.uri().path().to_owned();
                                let authorization = req
                                    .headers()
                                    .get("authorization")
                                    .map(|v| v.to_str().unwrap().to_owned());
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let form =
                                    url::form_urlencoded::parse(&body).into_owned().collect();
                                let request = Seen {
                                    path: path.clone(),
                                    authorization,
                                    form,
                                };
                                seen.lock().unwrap().push(request.clone());
                                let (status, text) = match metadata.iter().find(|(p, _)| *p == path)
                                {
                                    Some((_, doc)) => (200, doc.to_string()),
                                    None if path == "/token" => {
                                        let n = tokens.fetch_add(1, Ordering::SeqCst);
                                        // A little latency, so concurrent callers overlap.
                                        tokio::time::sleep(Duration::from_millis(30)).await;
                                        answer(&request, n)
                                    }
                                    None => (404, "{}".to_owned()),
                                };
                                let mut r = http::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from(text),
                                ));
                                *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                                r.headers_mut().insert(
                                    "content-type",
                                    http::HeaderValue::from_static("application/json"),
                                );
                                Ok::<_, std::convert::Infallible>(r)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url, seen, tokens }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn token_requests(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path == "/token")
            .collect()
    }
}

/// Answers every token request with a new token `tok-<n>` living `expires_in` seconds.
fn issuing(expires_in: u64) -> Answer {
    Arc::new(move |_, n| {
        (
            200,
            json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": expires_in})
                .to_string(),
        )
    })
}

static SECRET_DEFS: &[SecretDef] = &[
    SecretDef {
        name: "CLIENT_SECRET",
        description: "s",
    },
    SecretDef {
        name: "CLIENT_KEY",
        description: "k",
    },
];

const CLIENT_SECRET: &str = "s3cr3t:with/odd+chars";

fn secrets() -> Secrets {
    Secrets::load(SECRET_DEFS, |name| match name {
        "CLIENT_SECRET" => Some(CLIENT_SECRET.to_owned()),
        "CLIENT_KEY" => {
            Some(include_str!("../../../middleware/tests/fixtures/ec-p256.pem").to_owned())
        }
        _ => None,
    })
    .unwrap()
}

fn def(grant: OAuthGrant, client_auth: ClientAuthDef) -> &'static OAuthDef {
    Box::leak(Box::new(OAuthDef {
        grant,
        issuer: None,
        issuer_env: Some("AS_ISSUER"),
        token_url: None,
        token_url_env: Some("AS_TOKEN_URL"),
        authorization_url: None,
        authorization_url_env: None,
        client_id: "notes-server",
        client_id_env: None,
        client_auth,
        audience: Some("https://api.example.com"),
        resource: Some("https://api.example.com/"),
        scopes: &["calendar.read"],
    }))
}

const BASIC: ClientAuthDef = ClientAuthDef::SecretBasic {
    secret: "CLIENT_SECRET",
};

/// A client of `def` whose token URL is the stand-in's `/token` (or, with `discover`, whose
/// issuer is the stand-in).
fn client_for(stand_in: &StandIn, def: &'static OAuthDef, discover: bool) -> Arc<OAuthClient> {
    let (issuer, token) = (stand_in.url.clone(), format!("{}/token", stand_in.url));
    let env = move |name: &str| match name {
        "AS_ISSUER" if discover => Some(issuer.clone()),
        "AS_TOKEN_URL" if !discover => Some(token.clone()),
        _ => None,
    };
    Arc::new(
        OAuthClient::new(
            "calendar",
            def,
            &secrets(),
            &env,
            reqwest::Client::new(),
            false,
        )
        .unwrap(),
    )
}

fn tokens_with(client: Arc<OAuthClient>) -> UpstreamTokens {
    UpstreamTokens {
        clients: [(client.upstream(), client)].into_iter().collect(),
        exchanged: cache::Exchanged::new(cache::MAX_EXCHANGED),
        machine: cache::Machine::default(),
    }
}

#[tokio::test]
async fn client_secret_basic_sends_form_encoded_credentials_and_reads_the_token() {
    let as_ = StandIn::start(|_| vec![], issuing(3600)).await;
    let client = client_for(&as_, def(OAuthGrant::ClientCredentials, BASIC), false);
    let response = client
        .token_request(&[("grant_type", "client_credentials")])
        .await
        .unwrap();
    assert_eq!(response.access_token.expose(), "tok-0");
    assert_eq!(response.expires_in, Some(3600));
    let seen = as_.token_requests();
    let basic = seen[0].authorization.as_deref().unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic.strip_prefix("Basic ").unwrap())
        .unwrap();
    // RFC 6749 section 2.3.1: form-urlencoded, then Base64.
    assert_eq!(
        String::from_utf8(decoded).unwrap(),
        "notes-server:s3cr3t%3Awith%2Fodd%2Bchars"
    );
    assert_eq!(seen[0].field("client_secret"), None);
    assert_eq!(seen[0].field("grant_type"), Some("client_credentials"));
}

#[tokio::test]
async fn client_secret_post_puts_the_secret_in_the_form() {
    let as_ = StandIn::start(|_| vec![], issuing(3600)).await;
    let def = def(
        OAuthGrant::ClientCredentials,
        ClientAuthDef::SecretPost {
            secret: "CLIENT_SECRET",
        },
    );
    let client = client_for(&as_, def, false);
    client
        .token_request(&[("grant_type", "client_credentials")])
        .await
        .unwrap();
    let seen = &as_.token_requests()[0];
    assert_eq!(seen.authorization, None);
    assert_eq!(seen.field("client_id"), Some("notes-server"));
    assert_eq!(seen.field("client_secret"), Some(CLIENT_SECRET));
}

/// With an issuer: discovery (RFC 8414) finds the token endpoint, and the assertion's
/// audience is the issuer.
#[tokio::test]
async fn private_key_jwt_signs_a_fresh_assertion_for_the_issuer() {
    let as_ = StandIn::start(|url| vec![rfc8414(url, url)], issuing(60)).await;
    let def = def(
        OAuthGrant::ClientCredentials,
        ClientAuthDef::PrivateKeyJwt { key: "CLIENT_KEY" },
    );
    let client = client_for(&as_, def, true);
    for _ in 0..2 {
        client
            .token_request(&[("grant_type", "client_credentials")])
            .await
            .unwrap();
    }
    let seen = as_.seen();
    assert_eq!(
        seen.iter()
            .filter(|s| s.path == "/.well-known/oauth-authorization-server")
            .count(),
        1,
        "discovered once: {seen:?}"
    );
    let requests = as_.token_requests();
    assert_eq!(requests.len(), 2);
    let key = jsonwebtoken::DecodingKey::from_ec_pem(include_bytes!(
        "../../../middleware/tests/fixtures/ec-p256.pub.pem"
    ))
    .unwrap();
    let mut jtis = Vec::new();
    for r in &requests {
        assert_eq!(r.authorization, None);
        assert_eq!(
            r.field("client_assertion_type"),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_audience(&[as_.url.as_str()]);
        let claims =
            jsonwebtoken::decode::<Value>(r.field("client_assertion").unwrap(), &key, &validation)
                .unwrap()
                .claims;
        assert_eq!(claims["iss"], "notes-server");
        assert_eq!(claims["sub"], "notes-server");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            60
        );
        jtis.push(claims["jti"].as_str().unwrap().to_owned());
    }
    assert_ne!(jtis[0], jtis[1], "each assertion has its own jti");
}

/// RFC 8414 metadata of the stand-in at `url` claiming `issuer`.
fn rfc8414(url: &str, issuer: &str) -> (&'static str, Value) {
    (
        "/.well-known/oauth-authorization-server",
        json!({"issuer": issuer, "token_endpoint": format!("{url}/token"),
            "authorization_endpoint": format!("{url}/authorize")}),
    )
}

#[tokio::test]
async fn discovery_falls_back_to_openid_configuration_and_checks_the_issuer() {
    let oidc = StandIn::start(
        |url| {
            vec![(
                "/.well-known/openid-configuration",
                json!({"issuer": url, "token_endpoint": format!("{url}/token")}),
            )]
        },
        issuing(60),
    )
    .await;
    let client = client_for(&oidc, def(OAuthGrant::ClientCredentials, BASIC), true);
    assert_eq!(
        client.token_endpoint().await.unwrap().as_str(),
        format!("{}/token", oidc.url)
    );
    let err = client.authorization_endpoint().await.unwrap_err();
    assert!(err.to_string().contains("authorization_endpoint"), "{err}");

    // Metadata claiming another issuer is not used (RFC 8414 section 3.3), and the
    // failure is remembered for a while instead of fetched again per call.
    let mixed = StandIn::start(
        |url| vec![rfc8414(url, "https://evil.example")],
        issuing(60),
    )
    .await;
    let client = client_for(&mixed, def(OAuthGrant::ClientCredentials, BASIC), true);
    let err = client
        .token_request(&[("grant_type", "client_credentials")])
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamAuthError::Discovery(_)), "{err:?}");
    assert!(err.to_string().contains("another issuer"), "{err}");
    let fetched = mixed.seen().len();
    assert!(client.token_endpoint().await.is_err());
    assert_eq!(mixed.seen().len(), fetched, "the failure is remembered");
    assert!(mixed.token_requests().is_empty());
}

#[tokio::test]
async fn refusals_name_the_oauth_error_and_never_echo_credentials() {
    const SUBJECT: &str = "eyJcaller.subject.token";
    let as_ = StandIn::start(
        |_| vec![],
        Arc::new(|seen: &Seen, _| {
            let echoed = format!(
                "bad subject_token {} from a client with secret {}\u{1b}[31m",
                seen.field("subject_token").unwrap_or(""),
                CLIENT_SECRET
            );
            (
                400,
                json!({"error": "invalid_grant", "error_description": echoed}).to_string(),
            )
        }),
    )
    .await;
    let client = client_for(&as_, def(OAuthGrant::TokenExchange, BASIC), false);
    let err = client
        .token_request(&[("grant_type", TOKEN_EXCHANGE), ("subject_token", SUBJECT)])
        .await
        .unwrap_err();
    let UpstreamAuthError::Refused { error, description } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(error, "invalid_grant");
    let description = description.as_deref().unwrap();
    assert!(description.contains("[redacted]"), "{description}");
    let tool = err.clone().into_tool_error("calendar", "token exchange");
    for text in [
        format!("{err}"),
        format!("{err:?}"),
        tool.message().to_owned(),
    ] {
        assert!(!text.contains(SUBJECT), "{text}");
        assert!(!text.contains(CLIENT_SECRET), "{text}");
        assert!(!text.contains('\u{1b}'), "{text:?}");
    }
    assert!(
        tool.message().contains("upstream `calendar`"),
        "{}",
        tool.message()
    );
    assert!(
        tool.message().contains("invalid_grant"),
        "{}",
        tool.message()
    );
}

#[tokio::test]
async fn unusable_token_responses_are_refused() {
    let big = "x".repeat(70 * 1024);
    let answers: Vec<(u16, String, &str)> = vec![
        (
            200,
            json!({"access_token": "t", "token_type": "DPoP"}).to_string(),
            "not Bearer",
        ),
        (
            200,
            json!({"token_type": "Bearer"}).to_string(),
            "no access_token",
        ),
        (200, "not json".to_owned(), "not a JSON object"),
        (
            200,
            json!({"access_token": "has space", "token_type": "bearer"}).to_string(),
            "usable bearer",
        ),
        (200, json!({"access_token": big}).to_string(), "64 KiB"),
        (500, "oops".to_owned(), "answered 500"),
    ];
    for (status, body, expected) in answers {
        let body = Arc::new(body);
        let as_ = StandIn::start(
            |_| vec![],
            Arc::new(move |_, _| (status, body.as_ref().clone())),
        )
        .await;
        let client = client_for(&as_, def(OAuthGrant::ClientCredentials, BASIC), false);
        let err = client
            .token_request(&[("grant_type", "client_credentials")])
            .await
            .unwrap_err();
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
    // Lowercase `bearer` and a string `expires_in` are fine.
    let as_ = StandIn::start(
        |_| vec![],
        Arc::new(|_, _| {
            (
                200,
                json!({"access_token": "tok", "token_type": "bearer", "expires_in": "120"})
                    .to_string(),
            )
        }),
    )
    .await;
    let client = client_for(&as_, def(OAuthGrant::ClientCredentials, BASIC), false);
    let ok = client
        .token_request(&[("grant_type", "client_credentials")])
        .await
        .unwrap();
    assert_eq!(ok.expires_in, Some(120));
    assert_eq!(format!("{ok:?}").matches("Secret(..)").count(), 1, "{ok:?}");
    assert!(!format!("{ok:?}").contains("\"tok\""), "{ok:?}");
}

#[test]
fn start_up_errors_name_the_upstream_and_the_field() {
    let build = |def: &'static OAuthDef, env: &[(&str, &str)], allow_http: bool| {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        OAuthClient::new(
            "calendar",
            def,
            &secrets(),
            &lookup,
            reqwest::Client::new(),
            allow_http,
        )
    };
    let cc = def(OAuthGrant::ClientCredentials, BASIC);
    let token = [("AS_TOKEN_URL", "https://as.example/token")];
    assert!(build(cc, &token, false).is_ok());

    /// A definition, its environment, whether plain http is allowed, the error expected.
    type Case = (
        &'static OAuthDef,
        Vec<(&'static str, &'static str)>,
        bool,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            def(
                OAuthGrant::ClientCredentials,
                ClientAuthDef::SecretBasic { secret: "UNSET" },
            ),
            token.to_vec(),
            false,
            "`client_secret` names secret `UNSET`",
        ),
        (
            cc,
            vec![("AS_TOKEN_URL", "as.example/token")],
            false,
            "`token_url` `as.example/token` is not an absolute URL",
        ),
        (
            cc,
            vec![("AS_TOKEN_URL", "http://as.example/token")],
            false,
            "`token_url` `http://as.example/token` uses plain http",
        ),
        (
            cc,
            vec![("AS_ISSUER", "http://as.example")],
            false,
            "`issuer` `http://as.example` uses plain http",
        ),
        (
            cc,
            vec![],
            false,
            "give `issuer` (discovery) or `token_url`",
        ),
        (
            def(OAuthGrant::ClientCredentials, ClientAuthDef::None),
            token.to_vec(),
            false,
            "`client_auth` is `none`",
        ),
        (
            def(
                OAuthGrant::ClientCredentials,
                ClientAuthDef::PrivateKeyJwt {
                    key: "CLIENT_SECRET",
                },
            ),
            token.to_vec(),
            false,
            "`private_key` (secret `CLIENT_SECRET`) is not a PEM private key",
        ),
        (
            Box::leak(Box::new(OAuthDef {
                audience: None,
                resource: None,
                ..*def(OAuthGrant::TokenExchange, BASIC)
            })),
            token.to_vec(),
            false,
            "token exchange needs `audience` or `resource`",
        ),
        (
            def(OAuthGrant::UserAuthorization, ClientAuthDef::None),
            token.to_vec(),
            false,
            "`authorization_url` is needed",
        ),
    ];
    for (def, env, allow_http, expected) in cases {
        let err = build(def, &env, allow_http).unwrap_err();
        assert!(err.starts_with("upstream `calendar`: "), "{err}");
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
        assert!(!err.contains(CLIENT_SECRET), "{err}");
    }
    // Plain http: a loopback host, or a `local` upstream.
    assert!(build(cc, &[("AS_TOKEN_URL", "http://127.0.0.1:9/token")], false).is_ok());
    assert!(build(cc, &[("AS_TOKEN_URL", "http://as.internal/token")], true).is_ok());
    // The client id's environment override.
    let overridden = Box::leak(Box::new(OAuthDef {
        client_id_env: Some("CLIENT_ID"),
        ..*cc
    }));
    let client = build(overridden, &[token[0], ("CLIENT_ID", "from-env")], false).unwrap();
    assert_eq!(client.client_id(), "from-env");
    assert!(!format!("{client:?}").contains(CLIENT_SECRET));
}

#[test]
fn upstream_tokens_build_a_client_per_oauth_upstream_and_allow_http_only_for_local_ones() {
    use crate::def::UpstreamDef;
    let oauth = def(OAuthGrant::ClientCredentials, BASIC);
    let upstream = |base_url: &'static str| UpstreamDef {
        id: "calendar",
        base_url,
        base_url_env: None,
        auth: Some(UpstreamAuthDef::OAuth(oauth)),
        allow_hosts: &[],
        timeout_ms: 1000,
        max_retries: 0,
    };
    let env = |name: &str| (name == "AS_TOKEN_URL").then(|| "http://as.internal/token".to_owned());
    let http = reqwest::Client::new();
    let err = UpstreamTokens::new(&[upstream("https://api.example")], &secrets(), &env, &http)
        .unwrap_err();
    assert!(err.contains("plain http"), "{err}");
    let tokens =
        UpstreamTokens::new(&[upstream("http://api.internal")], &secrets(), &env, &http).unwrap();
    assert!(tokens.client("calendar").is_some());
    assert!(tokens.client("other").is_none());
}

/// RFC 8693 fields, reuse for the same caller token, a new exchange for another caller or
/// scope, and one exchange for many concurrent calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_sends_the_subject_token_only_to_the_token_endpoint_and_caches_per_subject()
{
    let as_ = StandIn::start(|_| vec![], issuing(3600)).await;
    let client = client_for(&as_, def(OAuthGrant::TokenExchange, BASIC), false);
    let tokens = Arc::new(tokens_with(Arc::clone(&client)));
    let hour = Some(Duration::from_secs(3600));
    let mut calls = Vec::new();
    for _ in 0..20 {
        let (tokens, client) = (Arc::clone(&tokens), Arc::clone(&client));
        calls.push(tokio::spawn(async move {
            tokens
                .exchanged(&client, "subject-a", hour, "calendar.read")
                .await
                .unwrap()
                .0
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap().expose(), "tok-0");
    }
    let requests = as_.token_requests();
    assert_eq!(requests.len(), 1, "one exchange for 20 concurrent calls");
    let r = &requests[0];
    for (name, value) in [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", "subject-a"),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
        ("requested_token_type", ACCESS_TOKEN_TYPE),
        ("audience", "https://api.example.com"),
        ("resource", "https://api.example.com/"),
        ("scope", "calendar.read"),
    ] {
        assert_eq!(r.field(name), Some(value), "{name}: {r:?}");
    }
    // Another caller, another scope: their own exchanges; the first is still cached.
    let b = tokens
        .exchanged(&client, "subject-b", hour, "calendar.read")
        .await
        .unwrap()
        .0;
    let narrow = tokens
        .exchanged(&client, "subject-a", hour, "calendar.read calendar.free")
        .await
        .unwrap()
        .0;
    let again = tokens
        .exchanged(&client, "subject-a", hour, "calendar.read")
        .await
        .unwrap()
        .0;
    assert_eq!(
        [b.expose(), narrow.expose(), again.expose()],
        ["tok-1", "tok-2", "tok-0"]
    );
    // A caller token with 20 s left: the exchanged token is used once, never kept.
    let short = Some(Duration::from_secs(20));
    for expected in ["tok-3", "tok-4"] {
        let t = tokens
            .exchanged(&client, "subject-c", short, "calendar.read")
            .await
            .unwrap()
            .0;
        assert_eq!(t.expose(), expected);
    }
    // A token the upstream refused is dropped; the next call exchanges again.
    let (token, key) = tokens
        .exchanged(&client, "subject-a", hour, "calendar.read")
        .await
        .unwrap();
    tokens.exchanged.forget(&key, &token);
    let renewed = tokens
        .exchanged(&client, "subject-a", hour, "calendar.read")
        .await
        .unwrap()
        .0;
    assert_eq!(renewed.expose(), "tok-5");
    // The caller's tokens went to the token endpoint only, as `subject_token` only.
    for seen in as_.seen() {
        assert!(
            seen.authorization
                .as_deref()
                .is_some_and(|a| a.starts_with("Basic "))
        );
    }
}

/// 50 concurrent calls make one token request; a refused token is renewed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_make_one_request_for_50_concurrent_calls() {
    let as_ = StandIn::start(|_| vec![], issuing(3600)).await;
    let client = client_for(&as_, def(OAuthGrant::ClientCredentials, BASIC), false);
    let tokens = Arc::new(tokens_with(Arc::clone(&client)));
    let mut calls = Vec::new();
    for _ in 0..50 {
        let (tokens, client) = (Arc::clone(&tokens), Arc::clone(&client));
        calls.push(tokio::spawn(async move {
            tokens
                .machine_token(&client, "calendar.read")
                .await
                .unwrap()
        }));
    }
    let mut got = Vec::new();
    for call in calls {
        got.push(call.await.unwrap());
    }
    assert!(got.iter().all(|t| t.expose() == "tok-0"));
    assert_eq!(as_.tokens.load(Ordering::SeqCst), 1);
    let r = &as_.token_requests()[0];
    assert_eq!(r.field("grant_type"), Some("client_credentials"));
    assert_eq!(r.field("scope"), Some("calendar.read"));
    assert_eq!(r.field("subject_token"), None);
    // 50 calls refused with tok-0 at once: one renewal.
    let key = ("calendar", "calendar.read".to_owned());
    let mut calls = Vec::new();
    for _ in 0..50 {
        let (tokens, client, key) = (Arc::clone(&tokens), Arc::clone(&client), key.clone());
        let rejected = got[0].clone();
        calls.push(tokio::spawn(async move {
            tokens.machine.forget(&key, &rejected);
            tokens
                .machine_token(&client, "calendar.read")
                .await
                .unwrap()
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap().expose(), "tok-1");
    }
    assert_eq!(as_.tokens.load(Ordering::SeqCst), 2);
}

#[test]
fn secrets_never_print() {
    let s = Secret::new("the-token");
    assert_eq!(format!("{s:?}"), "Secret(..)");
    let response = TokenResponse {
        access_token: s.clone(),
        refresh_token: Some(Secret::new("the-refresh")),
        expires_in: Some(1),
        scope: None,
        issued_token_type: None,
    };
    let text = format!("{response:?}");
    assert!(
        !text.contains("the-token") && !text.contains("the-refresh"),
        "{text}"
    );
    assert!(s.same_as(&Secret::new("the-token")));
}

/// Review 16, finding 1: a server trusting several issuers hands a caller's token only to
/// the authorization server that issued it.
#[tokio::test]
async fn the_callers_token_is_exchanged_only_at_its_own_issuer() {
    let as_ = StandIn::start(|_| vec![], issuing(3600)).await;
    let by_url = client_for(&as_, def(OAuthGrant::TokenExchange, BASIC), false);
    assert!(by_url.may_receive_token_of(&as_.url));
    assert!(by_url.may_receive_token_of(&format!("{}/realms/a", as_.url)));
    assert!(!by_url.may_receive_token_of("http://127.0.0.1:1"));
    assert!(!by_url.may_receive_token_of("https://other.example.com"));
    assert!(!by_url.may_receive_token_of("not a url"));
    let by_issuer = client_for(&as_, def(OAuthGrant::TokenExchange, BASIC), true);
    assert!(by_issuer.may_receive_token_of(&as_.url));
    assert!(by_issuer.may_receive_token_of(&format!("{}/", as_.url)));
    assert!(!by_issuer.may_receive_token_of(&format!("{}/realms/a", as_.url)));
    assert!(!by_issuer.may_receive_token_of("https://other.example.com"));
}
