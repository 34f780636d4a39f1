//! A bmm-as on a real socket with resource servers configured (introspection and DPoP
//! tests): one JWT resource, one opaque-token resource, a machine client, a public and a
//! confidential code-flow client, dev mode (bob approves everything).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bmm_authorization_server::{AppState, Args, Settings, serve};
use clap::Parser;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::common::{database_args, http, json_of, pkce};

/// Tokens are JWTs.
pub const RESOURCE: &str = "http://127.0.0.1:4103/mcp";
/// Tokens are opaque.
pub const OPAQUE_RESOURCE: &str = "http://127.0.0.1:4104/mcp";
pub const RS_SECRET: &str = "rs-jwt-secret-0123456789abcdef0123";
pub const RS_OPAQUE_SECRET: &str = "rs-opaque-secret-0123456789abcdef";
pub const MACHINE_SECRET: &str = "machine-secret-0123456789abcdef";
pub const WEB_SECRET: &str = "web-secret-0123456789abcdef";
pub const REDIRECT: &str = "http://127.0.0.1:33418/callback";
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn unique() -> String {
    let mut b = [0u8; 12];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    URL_SAFE_NO_PAD.encode(b)
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A P-256 key pair (DPoP proofs, client assertions).
pub struct EcKey(EcdsaKeyPair);

impl EcKey {
    pub fn new() -> Self {
        Self(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }

    /// The public JWK (no `kid`, no `alg`).
    pub fn jwk(&self) -> Value {
        let point = self.0.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
    }

    /// Its RFC 7638 thumbprint, computed here (not by the code under test).
    pub fn thumbprint(&self) -> String {
        let jwk = self.jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        );
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.0.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    /// A DPoP proof for `htm` `htu`, with a fresh `jti`.
    pub fn proof(&self, htm: &str, htu: &str, nonce: Option<&str>) -> String {
        let mut claims = json!({"htm": htm, "htu": htu, "iat": now(), "jti": unique()});
        if let Some(nonce) = nonce {
            claims["nonce"] = json!(nonce);
        }
        self.sign(
            &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()}),
            &claims,
        )
    }
}

/// The config file: resource servers (one with `private_key_jwt` keys of `rs_key`) and
/// clients.
pub fn config(rs_key: &EcKey) -> tempfile::NamedTempFile {
    let mut jwk = rs_key.jwk();
    jwk["kid"] = json!("rs-key-1");
    let jwks = json!({"keys": [jwk]}).to_string();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        r#"
[[resource_servers]]
resource = "{RESOURCE}"
client_id = "rs-jwt"
client_secret_sha256 = "{rs}"

[[resource_servers]]
resource = "{RESOURCE}"
client_id = "rs-jwt-key"
jwks = '{jwks}'

[[resource_servers]]
resource = "{OPAQUE_RESOURCE}"
client_id = "rs-opaque"
client_secret_sha256 = "{rs_opaque}"
token_format = "opaque"

[[clients]]
client_id = "svc"
client_secret = "{MACHINE_SECRET}"
grant_types = ["client_credentials"]

[[clients]]
client_id = "web-secret"
client_secret = "{WEB_SECRET}"
redirect_uris = ["{REDIRECT}"]

[[clients]]
client_id = "web-public"
redirect_uris = ["{REDIRECT}"]
"#,
        rs = sha256_hex(RS_SECRET),
        rs_opaque = sha256_hex(RS_OPAQUE_SECRET).to_ascii_uppercase(),
    )
    .unwrap();
    file
}

pub struct TestAs {
    pub url: String,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<std::io::Result<()>>,
    pub rs_key: EcKey,
    _config: tempfile::NamedTempFile,
    _dir: tempfile::TempDir,
}

impl TestAs {
    pub async fn start(extra: &[&str]) -> Self {
        let rs_key = EcKey::new();
        let config = config(&rs_key);
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut argv: Vec<String> = [
            "bmm-as",
            "--listen",
            &addr.to_string(),
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--resource",
            RESOURCE,
            "--resource",
            OPAQUE_RESOURCE,
            "--config",
            config.path().to_str().unwrap(),
            "--dev-user",
            "bob",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        argv.extend(database_args(dir.path()));
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
            rs_key,
            _config: config,
            _dir: dir,
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.url)
    }

    /// POST `form` to `/token` with optional Basic credentials and `DPoP` proof; the
    /// status, the body and the `DPoP-Nonce` header.
    pub async fn token(
        &self,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
        proof: Option<&str>,
    ) -> (u16, Value, Option<String>) {
        let mut request = http().post(self.token_endpoint()).form(form);
        if let Some((id, secret)) = basic {
            request = request.basic_auth(id, Some(secret));
        }
        if let Some(proof) = proof {
            request = request.header("DPoP", proof);
        }
        let response = request.send().await.unwrap();
        let nonce = response
            .headers()
            .get("dpop-nonce")
            .map(|v| v.to_str().unwrap().to_owned());
        let (status, body) = json_of(response).await;
        (status, body, nonce)
    }

    /// A `client_credentials` token of `svc` for `resource`.
    pub async fn machine_token(&self, resource: &str, proof: Option<&str>) -> Value {
        let (status, body, _) = self
            .token(
                &[("grant_type", "client_credentials"), ("resource", resource)],
                Some(("svc", MACHINE_SECRET)),
                proof,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// A code for `client_id` (dev mode approves), with its PKCE verifier.
    pub async fn code(&self, client_id: &str, resource: &str) -> (String, String) {
        let p = pkce();
        let response = http()
            .get(format!("{}/authorize", self.url))
            .query(&[
                ("response_type", "code"),
                ("client_id", client_id),
                ("redirect_uri", REDIRECT),
                ("code_challenge", &p.challenge),
                ("code_challenge_method", "S256"),
                ("state", "s"),
                ("resource", resource),
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
            .unwrap_or_else(|| panic!("no code in {location}"));
        (code, p.verifier)
    }

    /// Runs the code flow for `client_id` (`web-public` or `web-secret`) and exchanges the
    /// code, with a proof when given.
    pub async fn code_flow(
        &self,
        client_id: &str,
        resource: &str,
        proof: Option<&str>,
    ) -> (u16, Value) {
        let (code, verifier) = self.code(client_id, resource).await;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
        ];
        let basic = match client_id {
            "web-secret" => Some(("web-secret", WEB_SECRET)),
            _ => {
                form.push(("client_id", client_id));
                None
            }
        };
        let (status, body, _) = self.token(&form, basic, proof).await;
        (status, body)
    }

    /// Introspects `token` as `rs` (`rs-jwt` or `rs-opaque`, client_secret_basic).
    pub async fn introspect(&self, rs: &str, token: &str) -> (u16, Value) {
        let secret = if rs == "rs-opaque" {
            RS_OPAQUE_SECRET
        } else {
            RS_SECRET
        };
        let response = http()
            .post(format!("{}/introspect", self.url))
            .basic_auth(rs, Some(secret))
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["cache-control"], "no-store");
        json_of(response).await
    }

    /// The `introspection` audit events, newest first.
    pub async fn introspection_events(&self) -> Vec<bmm_authorization_server::store::AuditEvent> {
        let filter = bmm_authorization_server::store::AuditFilter {
            kind: Some("introspection".to_owned()),
            limit: 100,
            ..Default::default()
        };
        self.state.store().events(&filter).await.unwrap()
    }
}

/// The claims of a JWT (unverified; the tests check what bmm-as put in).
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// A data directory path, for tests that only build settings.
pub fn settings_error(config_text: &str) -> String {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(config_text.as_bytes()).unwrap();
    let path: &Path = file.path();
    let argv = [
        "bmm-as",
        "--resource",
        RESOURCE,
        "--config",
        path.to_str().unwrap(),
    ];
    Settings::from_args(Args::try_parse_from(argv).unwrap())
        .unwrap_err()
        .to_string()
}
