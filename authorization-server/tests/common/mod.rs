//! Helpers every bmm-as integration test uses: an HTTP client that never follows
//! redirects nor uses a proxy, JSON replies, PKCE pairs, dev mode.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A client bound to `local` (another loopback address stands for another caller).
pub fn http_from(local: Option<IpAddr>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(ip) = local {
        builder = builder.local_address(ip);
    }
    builder.build().unwrap()
}

pub fn http() -> reqwest::Client {
    http_from(None)
}

pub async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

pub fn pkce() -> Pkce {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    let verifier = format!("v{}", URL_SAFE_NO_PAD.encode(b));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    Pkce {
        verifier,
        challenge,
    }
}

/// bmm-as flags for dev mode (alice signed in, every consent approved).
pub fn dev() -> Vec<&'static str> {
    vec!["--dev-user", "alice"]
}
