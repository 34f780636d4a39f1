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

/// The PostgreSQL server the suite runs against (`cargo xtask test-postgres` sets it), if
/// any: `postgres://postgres@127.0.0.1:PORT/postgres`.
pub fn test_database_url() -> Option<String> {
    std::env::var("BMM_AS_TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
}

/// The databases made so far, by the data dir of the test AS they belong to: an AS
/// restarted on the same data dir finds its state again, a new data dir starts empty.
static DATABASES: std::sync::Mutex<Vec<(std::path::PathBuf, String)>> =
    std::sync::Mutex::new(Vec::new());

/// The `--database-url` arguments of the test AS whose data dir is `data_dir`: none on
/// SQLite (the default); with `BMM_AS_TEST_DATABASE_URL`, a fresh database
/// (`CREATE DATABASE bmm_t_<random>`) for each data dir, the same one for a restart.
pub fn database_args(data_dir: &std::path::Path) -> Vec<String> {
    let Some(admin) = test_database_url() else {
        return Vec::new();
    };
    let mut databases = DATABASES.lock().unwrap();
    let url = match databases.iter().find(|(dir, _)| dir == data_dir) {
        Some((_, url)) => url.clone(),
        None => {
            let url = create_database(&admin);
            databases.push((data_dir.to_path_buf(), url.clone()));
            url
        }
    };
    vec!["--database-url".to_owned(), url]
}

/// Creates an empty database on the server of `admin` and returns its URL.
pub fn create_database(admin: &str) -> String {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    let name = format!(
        "bmm_t_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    );
    let admin_owned = admin.to_owned();
    // FILE_COPY (PostgreSQL 15+): the template's files are copied, not written to the WAL
    // as well (WAL_LOG, the default, doubled the disk every test database took).
    let statement = format!("CREATE DATABASE {name}");
    // Its own thread and runtime: callers may be sync or inside a runtime.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&admin_owned, tokio_postgres::NoTls)
                .await
                .unwrap();
            let task = tokio::spawn(connection);
            let version: i32 = client
                .query_one("SELECT current_setting('server_version_num')::int", &[])
                .await
                .unwrap()
                .get(0);
            let statement = if version >= 150_000 {
                format!("{statement} STRATEGY = FILE_COPY")
            } else {
                statement
            };
            client.batch_execute(&statement).await.unwrap();
            drop(client);
            let _ = task.await;
        });
    })
    .join()
    .unwrap();
    let base = admin.rsplit_once('/').map_or(admin, |(base, _)| base);
    format!("{base}/{name}")
}
