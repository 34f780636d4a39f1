//! RFC 8693 token exchange at bmm-as's `/token`, over real sockets against the built
//! binary (on PostgreSQL too when `BMM_AS_TEST_DATABASE_URL` is set): a resource server
//! with a `token_exchange` policy trades its caller's token (JWT or opaque) for a token of
//! an allowed resource, with `act`, `sid`, the subject's `sub` and `client_id`, narrowed
//! scopes and an `exp` capped at the subject's, signed with the published keys, DPoP-bound
//! when a proof is sent, inactive once the subject's grant is revoked. Refused: resource
//! servers without a policy, subject tokens of another resource, expired, revoked, of
//! another issuer or key, wrong token types, unregistered or disallowed targets, widened
//! scopes, unauthenticated callers; the config file's policy checks; the rate limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod as_harness;
mod common;

use as_harness::{ASSERTION_TYPE, EcKey, jwt_claims, now, unique};
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaPublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bmm_authorization_server::store::{AuditEvent, AuditFilter};
use bmm_authorization_server::{AppState, Args, Settings};
use clap::Parser;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// JWT tokens; served by `notes-rs` (may exchange), `notes-key-rs` (may exchange,
/// `private_key_jwt`) and `notes-plain` (may not).
const NOTES: &str = "http://127.0.0.1:4103/mcp";
/// Opaque tokens; served by `opaque-rs` (may exchange).
const OPAQUE: &str = "http://127.0.0.1:4104/mcp";
/// The upstream API: the allowed target, served by `api-rs` (may not exchange).
const API: &str = "https://api.example.com";
/// Registered, but in no policy.
const OTHER_API: &str = "https://other.example.com/v1";
const RS_SECRET: &str = "resource-server-secret-0123456789abcdef";
const MACHINE_SECRET: &str = "machine-secret-0123456789abcdef";
const CALLBACK: &str = "http://127.0.0.1:33418/callback";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The config file: scopes, a public code-flow client, a machine client and the resource
/// servers above.
fn config_toml(rs_key: &EcKey) -> String {
    let mut jwk = rs_key.jwk();
    jwk["kid"] = json!("rs-key-1");
    let jwks = json!({"keys": [jwk]}).to_string();
    let secret = sha256_hex(RS_SECRET);
    format!(
        r#"
scopes = ["notes:read", "notes:write", "calendar:read", "calendar:write"]
default_scopes = ["notes:read"]

[[clients]]
client_id = "web"
redirect_uris = ["{CALLBACK}"]

[[clients]]
client_id = "svc"
client_secret = "{MACHINE_SECRET}"
grant_types = ["client_credentials"]
scope = "notes:read"

[[resource_servers]]
resource = "{NOTES}"
client_id = "notes-rs"
client_secret_sha256 = "{secret}"
token_exchange = {{ audiences = ["{API}/"], scopes = ["notes:read", "calendar:read"] }}

[[resource_servers]]
resource = "{NOTES}"
client_id = "notes-key-rs"
jwks = '{jwks}'
token_exchange = {{ audiences = ["{API}"] }}

[[resource_servers]]
resource = "{NOTES}"
client_id = "notes-plain"
client_secret_sha256 = "{secret}"

[[resource_servers]]
resource = "{OPAQUE}"
client_id = "opaque-rs"
client_secret_sha256 = "{secret}"
token_format = "opaque"
token_exchange = {{ audiences = ["{API}"] }}

[[resource_servers]]
resource = "{API}"
client_id = "api-rs"
client_secret_sha256 = "{secret}"
"#
    )
}

/// A running bmm-as process (the built binary); killed when dropped.
struct As {
    child: Child,
    url: String,
    log: PathBuf,
    config: PathBuf,
    data_dir: PathBuf,
    rs_key: EcKey,
    _dir: tempfile::TempDir,
}

impl Drop for As {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl As {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rs_key = EcKey::new();
        let config = dir.path().join("bmm-as.toml");
        std::fs::write(&config, config_toml(&rs_key)).unwrap();
        let data_dir = dir.path().join("as-data");
        let url = format!("http://127.0.0.1:{}", free_port());
        let log = dir.path().join("bmm-as.log");
        let child = Command::new(env!("CARGO_BIN_EXE_bmm-as"))
            .args(server_args(&url, &data_dir, &config))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut as_ = Self {
            child,
            url,
            log,
            config,
            data_dir,
            rs_key,
            _dir: dir,
        };
        as_.wait_ready().await;
        as_
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("bmm-as exited ({status}):\n{}", self.log_text());
            }
            if let Ok(r) = http()
                .get(format!("{}/jwks", self.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bmm-as did not answer within 60 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn token_endpoint(&self) -> String {
        format!("{}/token", self.url)
    }

    /// Another bmm-as instance on the same store (as behind a load balancer), in this
    /// process: it signs with the same keys (for tokens no request can make: expired
    /// ones, another issuer's) and reads the audit trail.
    async fn instance(&self) -> AppState {
        let mut argv = vec!["bmm-as".to_owned()];
        argv.extend(server_args(&self.url, &self.data_dir, &self.config));
        let settings = Settings::from_args(Args::try_parse_from(argv).unwrap()).unwrap();
        AppState::open(settings).await.unwrap()
    }

    /// The `token_exchange` audit events, newest first.
    async fn exchange_events(&self) -> Vec<AuditEvent> {
        let filter = AuditFilter {
            kind: Some("token_exchange".to_owned()),
            limit: 100,
            ..Default::default()
        };
        self.instance().await.store().events(&filter).await.unwrap()
    }

    /// Alice's tokens for `web` (code flow, dev mode approves) for `resource`.
    async fn user_tokens(&self, resource: &str, scope: &str) -> Value {
        let p = pkce();
        let response = http()
            .get(format!("{}/authorize", self.url))
            .query(&[
                ("response_type", "code"),
                ("client_id", "web"),
                ("redirect_uri", CALLBACK),
                ("code_challenge", &p.challenge),
                ("code_challenge_method", "S256"),
                ("state", "s"),
                ("scope", scope),
                ("resource", resource),
            ])
            .send()
            .await
            .unwrap();
        let location = response
            .headers()
            .get("location")
            .unwrap_or_else(|| panic!("no redirect: {}", self.log_text()))
            .to_str()
            .unwrap()
            .to_owned();
        let code = url::Url::parse(&location)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| panic!("no code in {location}"));
        let (status, body) = json_of(
            http()
                .post(self.token_endpoint())
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", CALLBACK),
                    ("code_verifier", &p.verifier),
                    ("client_id", "web"),
                ])
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Alice's access token for `resource` with `scope`.
    async fn user_token(&self, resource: &str, scope: &str) -> String {
        self.user_tokens(resource, scope).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Revokes `web`'s grant through its refresh token (RFC 7009).
    async fn revoke_grant(&self, tokens: &Value) {
        let response = http()
            .post(format!("{}/revoke", self.url))
            .form(&[
                ("token", tokens["refresh_token"].as_str().unwrap()),
                ("client_id", "web"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    /// POSTs an exchange form to `/token` as `rs` (client_secret_basic with `secret`;
    /// `None`: no credentials) with `extra` parameters; the status and body.
    async fn exchange_as(
        &self,
        rs: Option<(&str, &str)>,
        form: &[(&str, &str)],
        dpop: Option<&str>,
    ) -> (u16, Value) {
        let mut request = http().post(self.token_endpoint()).form(form);
        if let Some((id, secret)) = rs {
            request = request.basic_auth(id, Some(secret));
        }
        if let Some(proof) = dpop {
            request = request.header("DPoP", proof);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.headers()["cache-control"], "no-store");
        json_of(response).await
    }

    /// Exchanges `subject` as `rs` for `audience` (scope `scope`, if any).
    async fn exchange(
        &self,
        rs: &str,
        subject: &str,
        audience: &str,
        scope: Option<&str>,
    ) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", GRANT),
            ("subject_token", subject),
            ("subject_token_type", ACCESS),
            ("audience", audience),
        ];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        self.exchange_as(Some((rs, RS_SECRET)), &form, None).await
    }

    /// A fresh `private_key_jwt` assertion of `notes-key-rs` for the token endpoint.
    fn assertion(&self) -> String {
        let t = now();
        self.rs_key.sign(
            &json!({"alg": "ES256", "kid": "rs-key-1"}),
            &json!({"iss": "notes-key-rs", "sub": "notes-key-rs", "aud": self.token_endpoint(),
                "iat": t, "exp": t + 60, "jti": unique()}),
        )
    }

    /// Exchanges `subject` as `notes-key-rs` (whose policy has no `scopes`) for the API.
    async fn exchange_with_key(&self, subject: &str, scope: Option<&str>) -> (u16, Value) {
        let assertion = self.assertion();
        let mut form = vec![
            ("grant_type", GRANT),
            ("subject_token", subject),
            ("subject_token_type", ACCESS),
            ("audience", API),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion.as_str()),
        ];
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }
        self.exchange_as(None, &form, None).await
    }

    async fn introspect(&self, rs: &str, token: &str) -> Value {
        let (status, body) = json_of(
            http()
                .post(format!("{}/introspect", self.url))
                .basic_auth(rs, Some(RS_SECRET))
                .form(&[("token", token)])
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

fn server_args(url: &str, data_dir: &Path, config: &Path) -> Vec<String> {
    let port = url.rsplit(':').next().unwrap();
    let mut args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--issuer",
        url,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--dev-user",
        "alice",
        "--resource",
        NOTES,
        "--resource",
        OPAQUE,
        "--resource",
        API,
        "--resource",
        OTHER_API,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(database_args(data_dir));
    args
}

/// Checks `token`'s RS256 signature against the key of its `kid` in `<issuer>/jwks`.
async fn verify_with_jwks(issuer: &str, token: &str) {
    let (status, jwks) = json_of(http().get(format!("{issuer}/jwks")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "at+jwt");
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap_or_else(|| panic!("kid {} not in {jwks}", header["kid"]));
    let part = |name: &str| URL_SAFE_NO_PAD.decode(key[name].as_str().unwrap()).unwrap();
    RsaPublicKeyComponents {
        n: part("n"),
        e: part("e"),
    }
    .verify(
        &RSA_PKCS1_2048_8192_SHA256,
        signed.as_bytes(),
        &URL_SAFE_NO_PAD.decode(signature).unwrap(),
    )
    .expect("the exchanged token's signature verifies with the published key");
}

fn assert_refused(status_body: (u16, Value), status: u16, error: &str, what: &str) {
    let (got, body) = status_body;
    assert_eq!(
        (got, body["error"].as_str()),
        (status, Some(error)),
        "{what}: {body}"
    );
    assert!(body.get("access_token").is_none(), "{what}: {body}");
}

#[tokio::test]
async fn metadata_advertises_the_token_exchange_grant() {
    let as_ = As::start().await;
    let (status, doc) = json_of(
        http()
            .get(format!(
                "{}/.well-known/oauth-authorization-server",
                as_.url
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let grants = doc["grant_types_supported"].as_array().unwrap();
    assert!(grants.iter().any(|g| g == GRANT), "{doc}");
    assert!(grants.iter().any(|g| g == "authorization_code"), "{doc}");
}

#[tokio::test]
async fn a_users_token_is_exchanged_for_the_api_with_act_sid_and_narrowed_scopes() {
    let as_ = As::start().await;
    let subject = as_
        .user_token(NOTES, "notes:read notes:write calendar:read")
        .await;
    let subject_claims = jwt_claims(&subject);
    // Without `scope`: the subject's, narrowed to the policy's (no notes:write).
    let (status, body) = as_.exchange("notes-rs", &subject, API, None).await;
    assert_eq!(status, 200, "{body}\n{}", as_.log_text());
    assert_eq!(body["issued_token_type"], ACCESS);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "notes:read calendar:read");
    assert!(body.get("refresh_token").is_none(), "{body}");
    let token = body["access_token"].as_str().unwrap();
    verify_with_jwks(&as_.url, token).await;
    let claims = jwt_claims(token);
    assert_eq!(claims["iss"], as_.url);
    assert_eq!(claims["aud"], API);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["client_id"], "web");
    assert_eq!(claims["scope"], "notes:read calendar:read");
    assert_eq!(claims["act"], json!({"sub": "notes-rs"}));
    assert_eq!(claims["sid"], subject_claims["sid"]);
    assert!(claims["sid"].as_str().is_some_and(|s| !s.is_empty()));
    assert_ne!(claims["jti"], subject_claims["jti"]);
    assert!(claims.get("cnf").is_none());
    let exp = claims["exp"].as_u64().unwrap();
    assert!(exp <= subject_claims["exp"].as_u64().unwrap());
    assert!(exp > now());
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!(expires_in > 0 && now() + expires_in <= exp + 2, "{body}");

    // `scope` narrows further, and `resource` names the target as well as `audience`.
    let (status, body) = as_
        .exchange_as(
            Some(("notes-rs", RS_SECRET)),
            &[
                ("grant_type", GRANT),
                ("subject_token", &subject),
                ("subject_token_type", ACCESS),
                ("requested_token_type", ACCESS),
                ("resource", "https://API.example.com/"),
                ("audience", API),
                ("scope", "calendar:read"),
            ],
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "calendar:read");
    assert_eq!(
        jwt_claims(body["access_token"].as_str().unwrap())["aud"],
        API
    );

    // The API's resource server sees it active, with the actor; the caller's does not.
    let answer = as_.introspect("api-rs", token).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["sub"], "alice");
    assert_eq!(answer["client_id"], "web");
    assert_eq!(answer["act"], json!({"sub": "notes-rs"}));
    assert_eq!(
        as_.introspect("notes-rs", token).await,
        json!({"active": false})
    );

    let events = as_.exchange_events().await;
    let ok: Vec<_> = events.iter().filter(|e| e.outcome == "ok").collect();
    assert_eq!(ok.len(), 2, "{events:?}");
    assert_eq!(ok[0].client_id.as_deref(), Some("notes-rs"));
    assert_eq!(ok[0].subject.as_deref(), Some("alice"));
    assert_eq!(ok[0].resource.as_deref(), Some(API));
    assert_eq!(ok[0].scope.as_deref(), Some("calendar:read"));
    for event in &events {
        let text = format!("{event:?}");
        assert!(!text.contains(&subject) && !text.contains(token), "{text}");
    }
}

#[tokio::test]
async fn the_exchanged_token_lives_no_longer_than_its_subject_and_keeps_an_earlier_actor() {
    let as_ = As::start().await;
    let other = as_.instance().await;
    let t = now();
    // A subject token that expires in 100 s (the access-token lifetime is an hour),
    // already exchanged once by a gateway.
    let subject = other
        .keys()
        .sign(
            &json!({"iss": as_.url, "sub": "alice", "aud": NOTES, "exp": t + 100,
            "iat": t, "nbf": t, "jti": unique(), "scope": "notes:read", "client_id": "web",
            "act": {"sub": "gateway"}}),
        )
        .unwrap();
    let (status, body) = as_.exchange("notes-rs", &subject, API, None).await;
    assert_eq!(status, 200, "{body}");
    let claims = jwt_claims(body["access_token"].as_str().unwrap());
    assert_eq!(claims["exp"], t + 100);
    assert!(body["expires_in"].as_u64().unwrap() <= 100, "{body}");
    assert_eq!(
        claims["act"],
        json!({"sub": "notes-rs", "act": {"sub": "gateway"}})
    );
    // No grant, no `sid`.
    assert!(claims.get("sid").is_none(), "{claims}");
}

#[tokio::test]
async fn an_opaque_subject_token_is_looked_up_in_the_store_and_dies_with_its_grant() {
    let as_ = As::start().await;
    let tokens = as_.user_tokens(OPAQUE, "notes:read").await;
    let subject = tokens["access_token"].as_str().unwrap().to_owned();
    assert!(subject.starts_with("bmo_"), "{subject}");
    let (status, body) = as_.exchange("opaque-rs", &subject, API, None).await;
    assert_eq!(status, 200, "{body}\n{}", as_.log_text());
    // An exchanged token is a JWT, whatever the subject's format.
    let token = body["access_token"].as_str().unwrap().to_owned();
    verify_with_jwks(&as_.url, &token).await;
    let claims = jwt_claims(&token);
    assert_eq!(
        (
            &claims["sub"],
            &claims["client_id"],
            &claims["aud"],
            &claims["scope"]
        ),
        (
            &json!("alice"),
            &json!("web"),
            &json!(API),
            &json!("notes:read")
        )
    );
    assert_eq!(claims["act"], json!({"sub": "opaque-rs"}));
    assert!(claims["sid"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(as_.introspect("api-rs", &token).await["active"], true);

    as_.revoke_grant(&tokens).await;
    assert_eq!(
        as_.introspect("api-rs", &token).await,
        json!({"active": false})
    );
    assert_refused(
        as_.exchange("opaque-rs", &subject, API, None).await,
        400,
        "invalid_grant",
        "revoked opaque subject",
    );
}

#[tokio::test]
async fn an_exchanged_token_introspects_inactive_once_its_subjects_grant_is_revoked() {
    let as_ = As::start().await;
    let tokens = as_.user_tokens(NOTES, "notes:read").await;
    let subject = tokens["access_token"].as_str().unwrap().to_owned();
    let (status, body) = as_.exchange("notes-rs", &subject, API, None).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(as_.introspect("api-rs", &token).await["active"], true);

    as_.revoke_grant(&tokens).await;
    assert_eq!(
        as_.introspect("api-rs", &token).await,
        json!({"active": false})
    );
    // The revoked subject token (a JWT: it still verifies) exchanges no more.
    let (status, body) = as_.exchange("notes-rs", &subject, API, None).await;
    assert_refused(
        (status, body.clone()),
        400,
        "invalid_grant",
        "revoked subject",
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
}

#[tokio::test]
async fn resource_servers_may_exchange_only_with_a_policy_and_only_their_own_resources_tokens() {
    let as_ = As::start().await;
    let subject = as_.user_token(NOTES, "notes:read").await;
    // Same resource, authenticated, but no token_exchange policy.
    assert_refused(
        as_.exchange("notes-plain", &subject, API, None).await,
        400,
        "unauthorized_client",
        "resource server without a policy",
    );
    // The target's own resource server has no policy either.
    let api_token = {
        let other = as_.instance().await;
        let t = now();
        other
            .keys()
            .sign(
                &json!({"iss": as_.url, "sub": "alice", "aud": API, "exp": t + 300,
                "iat": t, "jti": unique(), "scope": "notes:read", "client_id": "web"}),
            )
            .unwrap()
    };
    assert_refused(
        as_.exchange("api-rs", &api_token, API, None).await,
        400,
        "unauthorized_client",
        "api-rs",
    );
    // A resource server with a policy, presenting a token of another resource.
    let opaque = as_.user_token(OPAQUE, "notes:read").await;
    for (rs, token) in [
        ("notes-rs", opaque.as_str()),
        ("opaque-rs", subject.as_str()),
        ("notes-rs", api_token.as_str()),
    ] {
        assert_refused(
            as_.exchange(rs, token, API, None).await,
            400,
            "invalid_grant",
            &format!("{rs} with another resource's token"),
        );
    }
    // Refusals are audited under the resource server.
    let events = as_.exchange_events().await;
    assert!(
        events
            .iter()
            .any(|e| e.client_id.as_deref() == Some("notes-plain")
                && e.outcome == "unauthorized_client"),
        "{events:?}"
    );
    assert!(events.iter().all(|e| e.outcome != "ok"), "{events:?}");
}

#[tokio::test]
async fn the_target_must_be_a_registered_resource_in_the_callers_policy() {
    let as_ = As::start().await;
    let subject = as_.user_token(NOTES, "notes:read").await;
    for (audience, what) in [
        ("https://unknown.example.com", "unregistered audience"),
        ("not a url", "not a resource"),
        (OTHER_API, "registered, but not in the policy"),
        (NOTES, "the caller's own resource, not in the policy"),
    ] {
        assert_refused(
            as_.exchange("notes-rs", &subject, audience, None).await,
            400,
            "invalid_target",
            what,
        );
    }
    // `resource` is checked the same way, and must agree with `audience`.
    let base = [
        ("grant_type", GRANT),
        ("subject_token", subject.as_str()),
        ("subject_token_type", ACCESS),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut form = base.to_vec();
        form.extend_from_slice(extra);
        form
    };
    for (form, error, what) in [
        (
            with(&[("resource", OTHER_API)]),
            "invalid_target",
            "resource not in the policy",
        ),
        (
            with(&[("resource", API), ("audience", OTHER_API)]),
            "invalid_target",
            "audience and resource disagree",
        ),
        (with(&[]), "invalid_request", "no target"),
    ] {
        assert_refused(
            as_.exchange_as(Some(("notes-rs", RS_SECRET)), &form, None)
                .await,
            400,
            error,
            what,
        );
    }
    // The unregistered audience would have been fine as a registered one.
    let (status, body) = as_.exchange("notes-rs", &subject, API, None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn scopes_may_only_narrow() {
    let as_ = As::start().await;
    let subject = as_.user_token(NOTES, "notes:read notes:write").await;
    for (scope, what) in [
        (
            "notes:read calendar:read",
            "a scope the subject token does not hold",
        ),
        ("calendar:write", "a scope the subject token does not hold"),
        ("notes:write", "held, but not in the policy's scopes"),
    ] {
        let (status, body) = as_.exchange("notes-rs", &subject, API, Some(scope)).await;
        assert_refused((status, body), 400, "invalid_scope", what);
    }
    let (status, body) = as_
        .exchange("notes-rs", &subject, API, Some("notes:read"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        jwt_claims(body["access_token"].as_str().unwrap())["scope"],
        "notes:read"
    );
    // Without a policy `scopes`, the subject's scopes pass whole.
    let (status, body) = as_.exchange_with_key(&subject, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "notes:read notes:write");
}

#[tokio::test]
async fn expired_revoked_foreign_and_malformed_subject_tokens_are_invalid_grant() {
    let as_ = As::start().await;
    let other = as_.instance().await;
    let t = now();
    let claims = |iss: &str, exp: u64| {
        json!({"iss": iss, "sub": "alice", "aud": NOTES, "exp": exp, "iat": t - 200,
            "nbf": t - 200, "jti": unique(), "scope": "notes:read", "client_id": "web"})
    };
    let expired = other.keys().sign(&claims(&as_.url, t - 1)).unwrap();
    let other_issuer = other
        .keys()
        .sign(&claims("https://as.example.com", t + 300))
        .unwrap();
    // Signed by a key bmm-as never had, under the kid of the one it has.
    let kid = other.keys().current_kid();
    let foreign_key = {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD
                .encode(json!({"alg": "RS256", "typ": "at+jwt", "kid": kid}).to_string()),
            URL_SAFE_NO_PAD.encode(claims(&as_.url, t + 300).to_string())
        );
        let mut signature = vec![0; pair.public_modulus_len()];
        pair.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            input.as_bytes(),
            &mut signature,
        )
        .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    };
    // A token of another bmm-as (its own keys) for the same resource.
    let another_as = As::start().await;
    let from_another_as = another_as.user_token(NOTES, "notes:read").await;
    // A revoked grant's access token, and a refresh token.
    let tokens = as_.user_tokens(NOTES, "notes:read").await;
    as_.revoke_grant(&tokens).await;
    let revoked = tokens["access_token"].as_str().unwrap();
    let live = as_.user_tokens(NOTES, "notes:read").await;
    let refresh = live["refresh_token"].as_str().unwrap();
    let long = "x".repeat(9000);
    for (token, what) in [
        (expired.as_str(), "expired"),
        (other_issuer.as_str(), "another issuer"),
        (foreign_key.as_str(), "another key"),
        (from_another_as.as_str(), "another bmm-as"),
        (revoked, "revoked grant"),
        (refresh, "a refresh token"),
        (
            "bmo_unknown-0123456789abcdef0123456789abcdef012",
            "unknown opaque",
        ),
        ("garbage", "garbage"),
        (long.as_str(), "too long"),
    ] {
        assert_refused(
            as_.exchange("notes-rs", token, API, None).await,
            400,
            "invalid_grant",
            what,
        );
    }
    // The same request with a live token passes: the refusals were the tokens'.
    let (status, body) = as_
        .exchange(
            "notes-rs",
            live["access_token"].as_str().unwrap(),
            API,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn callers_that_are_not_authenticated_resource_servers_get_invalid_client() {
    let as_ = As::start().await;
    let subject = as_.user_token(NOTES, "notes:read").await;
    let form = [
        ("grant_type", GRANT),
        ("subject_token", subject.as_str()),
        ("subject_token_type", ACCESS),
        ("audience", API),
    ];
    let with_post = {
        let mut f = form.to_vec();
        f.extend([("client_id", "notes-rs"), ("client_secret", RS_SECRET)]);
        f
    };
    let with_id = {
        let mut f = form.to_vec();
        f.push(("client_id", "notes-rs"));
        f
    };
    for (basic, form, what) in [
        (None, &form[..], "no credentials"),
        (None, &with_id[..], "a client_id alone"),
        (
            Some(("notes-rs", "wrong-secret")),
            &form[..],
            "a wrong secret",
        ),
        (Some(("nobody", RS_SECRET)), &form[..], "an unknown id"),
        (None, &with_post[..], "client_secret_post"),
        (
            Some(("svc", MACHINE_SECRET)),
            &form[..],
            "a [[clients]] client",
        ),
    ] {
        let mut request = http().post(as_.token_endpoint()).form(form);
        if let Some((id, secret)) = basic {
            request = request.basic_auth(id, Some(secret));
        }
        let response = request.send().await.unwrap();
        assert!(
            response.headers().contains_key("www-authenticate"),
            "{what}"
        );
        assert_refused(json_of(response).await, 401, "invalid_client", what);
    }
    let events = as_.exchange_events().await;
    assert_eq!(events.len(), 6, "{events:?}");
    assert!(events.iter().all(|e| e.outcome == "invalid_client"));
    assert!(
        events
            .iter()
            .all(|e| e.address.as_deref() == Some("127.0.0.1"))
    );
    // The right secret passes.
    let (status, body) = as_
        .exchange_as(Some(("notes-rs", RS_SECRET)), &form, None)
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_private_key_jwt_resource_server_exchanges_with_an_assertion() {
    let as_ = As::start().await;
    let subject = as_.user_token(NOTES, "notes:read").await;
    let assertion = as_.assertion();
    let form = [
        ("grant_type", GRANT),
        ("subject_token", subject.as_str()),
        ("subject_token_type", ACCESS),
        ("audience", API),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", assertion.as_str()),
    ];
    let (status, body) = as_.exchange_as(None, &form, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        jwt_claims(body["access_token"].as_str().unwrap())["act"],
        json!({"sub": "notes-key-rs"})
    );
    // Single use.
    assert_refused(
        as_.exchange_as(None, &form, None).await,
        401,
        "invalid_client",
        "replayed assertion",
    );
}

#[tokio::test]
async fn wrong_token_types_and_missing_parameters_are_invalid_request() {
    let as_ = As::start().await;
    let subject = as_.user_token(NOTES, "notes:read").await;
    let refresh_type = "urn:ietf:params:oauth:token-type:refresh_token";
    let jwt_type = "urn:ietf:params:oauth:token-type:jwt";
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![
                ("subject_token", &subject),
                ("subject_token_type", jwt_type),
            ],
            "jwt subject type",
        ),
        (
            vec![
                ("subject_token", &subject),
                ("subject_token_type", refresh_type),
            ],
            "refresh subject type",
        ),
        (vec![("subject_token", &subject)], "no subject_token_type"),
        (vec![("subject_token_type", ACCESS)], "no subject_token"),
        (
            vec![
                ("subject_token", &subject),
                ("subject_token_type", ACCESS),
                ("requested_token_type", refresh_type),
            ],
            "a refresh token requested",
        ),
        (
            vec![
                ("subject_token", &subject),
                ("subject_token_type", ACCESS),
                ("actor_token", &subject),
                ("actor_token_type", ACCESS),
            ],
            "an actor token",
        ),
    ];
    for (mut form, what) in cases {
        form.extend([("grant_type", GRANT), ("audience", API)]);
        assert_refused(
            as_.exchange_as(Some(("notes-rs", RS_SECRET)), &form, None)
                .await,
            400,
            "invalid_request",
            what,
        );
    }
}

#[tokio::test]
async fn a_dpop_proof_binds_the_exchanged_token() {
    let as_ = As::start().await;
    let subject = as_.user_token(NOTES, "notes:read").await;
    let key = EcKey::new();
    let proof = key.proof("POST", &as_.token_endpoint(), None);
    let form = [
        ("grant_type", GRANT),
        ("subject_token", subject.as_str()),
        ("subject_token_type", ACCESS),
        ("audience", API),
    ];
    let (status, body) = as_
        .exchange_as(Some(("notes-rs", RS_SECRET)), &form, Some(&proof))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(jwt_claims(token)["cnf"], json!({"jkt": key.thumbprint()}));
    let answer = as_.introspect("api-rs", token).await;
    assert_eq!(answer["token_type"], "DPoP");
    assert_eq!(answer["cnf"]["jkt"], key.thumbprint());
    // The proof is single use; a bad one refuses the exchange.
    assert_refused(
        as_.exchange_as(Some(("notes-rs", RS_SECRET)), &form, Some(&proof))
            .await,
        400,
        "invalid_dpop_proof",
        "replayed proof",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_resource_server_is_not_held_to_one_addresss_token_bucket() {
    let as_ = As::start().await;
    let subject = as_.user_token(NOTES, "notes:read").await;
    let client = http_from(Some("127.0.0.7".parse().unwrap()));
    let form = [
        ("grant_type", GRANT),
        ("subject_token", subject.as_str()),
        ("subject_token_type", ACCESS),
        ("audience", API),
    ];
    // More than the token endpoint's 600 a minute per address: a busy server exchanges
    // for many users from one address.
    for i in 0..650 {
        let response = client
            .post(as_.token_endpoint())
            .basic_auth("notes-rs", Some(RS_SECRET))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "request {i}");
    }
    // Failed authentications count against the address, in the token endpoint's bucket.
    let mut limited = None;
    for i in 0..700 {
        let response = client
            .post(as_.token_endpoint())
            .basic_auth("notes-rs", Some("a wrong secret"))
            .form(&form)
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(i);
            break;
        }
        assert_eq!(response.status(), 401, "request {i}");
    }
    assert_eq!(limited, Some(600));
    let (status, body) = json_of(
        client
            .post(as_.token_endpoint())
            .basic_auth("notes-rs", Some("a wrong secret"))
            .form(&form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (429, Some("slow_down")));
    // The address is spent, the authenticated resource server still exchanges.
    let response = client
        .post(as_.token_endpoint())
        .basic_auth("notes-rs", Some(RS_SECRET))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// The binary's start-up error for a config whose `notes-rs` entry has `policy` as its
/// `token_exchange` table.
fn start_error(policy: &str) -> (Option<i32>, String, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        format!(
            r#"
scopes = ["notes:read"]

[[resource_servers]]
resource = "{NOTES}"
client_id = "notes-rs"
client_secret_sha256 = "{}"
token_exchange = {policy}
"#,
            sha256_hex(RS_SECRET)
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_bmm-as"))
        .args(server_args(
            &format!("http://127.0.0.1:{}", free_port()),
            &dir.path().join("data"),
            &config,
        ))
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        config,
        dir,
    )
}

#[test]
fn the_config_files_policies_are_checked_at_start_up() {
    for (policy, expected) in [
        (
            r#"{ audiences = ["https://unknown.example.com"] }"#,
            "resource_servers[0] (client_id `notes-rs`): token_exchange.audiences[0]: `https://unknown.example.com` is not one of the configured resources",
        ),
        (
            &format!(r#"{{ audiences = ["{API}", "{NOTES}"] }}"#),
            "resource_servers[0] (client_id `notes-rs`): token_exchange.audiences[1]: `http://127.0.0.1:4103/mcp` is this resource server's own resource",
        ),
        (
            r#"{ audiences = [] }"#,
            "resource_servers[0] (client_id `notes-rs`): token_exchange.audiences: give at least one",
        ),
        (
            &format!(r#"{{ audiences = ["{API}"], scopes = ["notes:admin"] }}"#),
            "resource_servers[0] (client_id `notes-rs`): token_exchange.scopes[0]: scope `notes:admin` is not offered",
        ),
        (
            &format!(r#"{{ audiences = ["{API}"], scopes = [] }}"#),
            "token_exchange.scopes: give at least one scope",
        ),
        (
            &format!(r#"{{ audience = ["{API}"] }}"#),
            "unknown field `audience`",
        ),
        (
            &format!(r#"{{ audiences = ["{API}"], may_act = true }}"#),
            "unknown field `may_act`",
        ),
    ] {
        let (code, stderr, config, _dir) = start_error(policy);
        assert_eq!(code, Some(2), "{policy}: {stderr}");
        assert!(stderr.contains(expected), "{policy}: {stderr}");
        assert!(
            stderr.contains(&format!("config {}", config.display())),
            "{policy}: {stderr}"
        );
    }
}
