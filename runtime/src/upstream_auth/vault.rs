//! The token vault: each caller's upstream tokens (per-user connections, `user_oauth`),
//! encrypted at rest, in one SQLite file (the default, `--vault bmm-vault.sqlite`) or a
//! PostgreSQL database (`--vault postgres://...`, the backends bmm-as uses).
//!
//! Rules:
//! 1. A row is keyed by the MCP caller's verified `iss` and `sub` and the upstream id, and
//!    holds `(key_id, nonce, ciphertext, updated_at)`. The plaintext (JSON of the access
//!    token, refresh token, expiry and scope) is sealed with AES-256-GCM (aws-lc-rs) under
//!    a key derived (HKDF-SHA256) from `BMM_VAULT_KEY`, with a random 96-bit nonce per
//!    write. The associated data binds the format version, the caller's issuer and
//!    subject, the upstream id and the key id, so a row copied to another caller or
//!    upstream, relabelled with another key id, or altered in any byte fails to decrypt
//!    (`a_row_copied_to_another_caller_or_upstream_is_refused`, `a_tampered_row_is_refused`).
//! 2. A row that fails to decrypt, or was written under a key that is neither
//!    `BMM_VAULT_KEY` nor one of `BMM_VAULT_PREVIOUS_KEYS`, is refused: the caller counts as
//!    not connected, and a warning names the upstream and the key id, never token
//!    material (`a_row_under_an_unknown_key_is_refused`).
//! 3. Rotation: put a new key in `BMM_VAULT_KEY` and move the old one to
//!    `BMM_VAULT_PREVIOUS_KEYS` (comma-separated, decrypt-only). A row read under a
//!    previous key is re-encrypted under the current one at once (a compare-and-swap on
//!    its nonce, so a concurrent write is never overwritten), and every write uses the
//!    current key; once no row names an old key id, drop that key
//!    (`rotation_re_encrypts_under_the_new_key`). Keys are base64 (standard or URL-safe,
//!    padded or not) of exactly 32 random bytes (`openssl rand -base64 32`).
//! 4. The vault never holds a plaintext token: not in a column, not in the SQLite file
//!    or its `-wal` (`the_sqlite_file_holds_no_plaintext_token`). The SQLite file (and its
//!    `-wal`/`-shm`) is created `0600` and refused when group or others may read it;
//!    deleted content is zeroed (`secure_delete`).
//! 5. Bounded: a plaintext over 64 KiB is refused at write, a stored ciphertext over that
//!    is refused at read; issuer and subject over 1 KiB are refused.
//! 6. Every writer that replaces what it read (a refresh, a re-encryption, the deletion of
//!    a refresh token the upstream refused) names the row's nonce and changes nothing
//!    when another write came first.
//! 7. The PostgreSQL URL is never logged; `sslmode=require` (or `verify-full`/`verify-ca`)
//!    verifies the server's certificate and host name against the system's CA
//!    certificates plus `--vault-ca-file`, like bmm-as's store. The table is
//!    `bmm_vault_entries` (created when missing), so the vault can share bmm-as's database.
//! 8. SQLite calls run on tokio's blocking pool; no runtime thread waits on the database.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use base64::Engine;
use serde::{Deserialize, Serialize};

/// The largest plaintext (and ciphertext, less its tag) of one entry (rule 5).
pub(crate) const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// The longest issuer or subject a row may have (rule 5).
const MAX_NAME_BYTES: usize = 1024;
/// The environment variable holding the current key.
pub(crate) const KEY_ENV: &str = "BMM_VAULT_KEY";
/// The environment variable holding the decrypt-only previous keys.
pub(crate) const PREVIOUS_KEYS_ENV: &str = "BMM_VAULT_PREVIOUS_KEYS";
/// Format version, bound into every entry's associated data.
const FORMAT: &str = "bmm-vault/1";

/// A database or crypto failure, worded for logs and tool errors: never a token, never
/// the database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VaultError(pub(crate) String);

impl std::fmt::Display for VaultError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "token vault: {}", self.0)
    }
}

impl std::error::Error for VaultError {}

impl From<rusqlite::Error> for VaultError {
    fn from(e: rusqlite::Error) -> Self {
        Self(format!("sqlite: {e}"))
    }
}

impl From<tokio_postgres::Error> for VaultError {
    fn from(e: tokio_postgres::Error) -> Self {
        // `{:#}`-less Display: the code and message, not the statement's parameters.
        match e.as_db_error() {
            Some(db) => Self(format!("postgres: {} ({})", db.message(), db.code().code())),
            None => Self(format!("postgres: {e}")),
        }
    }
}

impl From<deadpool_postgres::PoolError> for VaultError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => Self(format!("postgres pool: {other}")),
        }
    }
}

/// One key: its id (public, stored with each row) and the two keys derived from it.
struct Key {
    id: String,
    entries: LessSafeKey,
    sealing: LessSafeKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn derive(raw: &[u8; 32], info: &'static [u8]) -> Result<LessSafeKey, String> {
    let prk = Salt::new(HKDF_SHA256, b"bmm-vault").extract(raw);
    let info = [info];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| "key derivation failed".to_owned())?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

impl Key {
    fn new(raw: &[u8; 32]) -> Result<Self, String> {
        let mut tagged = b"bmm-vault-key-id/1".to_vec();
        tagged.extend_from_slice(raw);
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &tagged);
        let id = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            id,
            entries: derive(raw, b"bmm-vault/entries/1")?,
            sealing: derive(raw, b"bmm-vault/connect-state/1")?,
        })
    }

    /// Decodes one key's text: base64 of exactly 32 bytes.
    fn parse(text: &str, name: &str) -> Result<Self, String> {
        let text = text.trim();
        let decoded = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ]
        .iter()
        .find_map(|engine| engine.decode(text).ok());
        let Some(bytes) = decoded else {
            return Err(format!(
                "{name} is not base64; make one with `openssl rand -base64 32`"
            ));
        };
        let raw: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "{name} decodes to {} bytes, not 32; make one with `openssl rand -base64 32`",
                b.len()
            )
        })?;
        Self::new(&raw)
    }
}

/// The vault's keys: the current one (every write) and the previous ones (reads only).
#[derive(Debug)]
pub(crate) struct Keys {
    current: Key,
    previous: Vec<Key>,
}

impl Keys {
    /// `BMM_VAULT_KEY` (required) and `BMM_VAULT_PREVIOUS_KEYS` (optional) from `env`.
    /// Errors name the variable, never its value.
    pub(crate) fn from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let Some(current) = env(KEY_ENV).filter(|v| !v.trim().is_empty()) else {
            return Err(format!(
                "{KEY_ENV} is not set: an upstream uses per-user connections (user_oauth), whose tokens the vault encrypts with it; set it to the base64 of 32 random bytes (`openssl rand -base64 32`)"
            ));
        };
        let current = Key::parse(&current, KEY_ENV)?;
        let mut previous: Vec<Key> = Vec::new();
        if let Some(list) = env(PREVIOUS_KEYS_ENV) {
            for (i, text) in list.split(',').filter(|t| !t.trim().is_empty()).enumerate() {
                let key = Key::parse(text, &format!("{PREVIOUS_KEYS_ENV} (key {})", i + 1))?;
                if key.id != current.id && previous.iter().all(|k| k.id != key.id) {
                    previous.push(key);
                }
            }
        }
        Ok(Self { current, previous })
    }

    /// Keys from raw bytes (tests).
    #[cfg(test)]
    pub(crate) fn from_raw(current: [u8; 32], previous: &[[u8; 32]]) -> Self {
        #[allow(clippy::expect_used)]
        let key = |raw: &[u8; 32]| Key::new(raw).expect("key derivation");
        Self {
            current: key(&current),
            previous: previous.iter().map(key).collect(),
        }
    }

    /// The current key's id.
    pub(crate) fn current_id(&self) -> &str {
        &self.current.id
    }

    fn by_id(&self, id: &str) -> Option<&Key> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
    }

    /// Seals `plaintext` for `purpose` (the connect pages' state and start links):
    /// base64url of `key id (8 bytes) | nonce | ciphertext+tag`, with `purpose` as the
    /// associated data. Opened by [`Keys::open`] under any of the keys.
    pub(crate) fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<String, VaultError> {
        let nonce = random_nonce()?;
        let mut data = plaintext.to_vec();
        self.current
            .sealing
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut data,
            )
            .map_err(|_| VaultError("cannot seal".to_owned()))?;
        let mut out = hex_decode(&self.current.id).unwrap_or_default();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens what [`Keys::seal`] sealed for `purpose`; `None` when it was altered, sealed
    /// for another purpose, under an unknown key, or is not such a value at all.
    pub(crate) fn open(&self, purpose: &str, sealed: &str) -> Option<Vec<u8>> {
        if sealed.len() > 4 * MAX_ENTRY_BYTES {
            return None;
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sealed)
            .ok()?;
        if raw.len() < 8 + NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let id: String = raw[..8].iter().map(|b| format!("{b:02x}")).collect();
        let key = self.by_id(&id)?;
        let nonce = Nonce::try_assume_unique_for_key(&raw[8..8 + NONCE_LEN]).ok()?;
        let mut data = raw[8 + NONCE_LEN..].to_vec();
        let plain = key
            .sealing
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut data)
            .ok()?;
        Some(plain.to_vec())
    }
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn random_nonce() -> Result<[u8; NONCE_LEN], VaultError> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| VaultError("no randomness".to_owned()))?;
    Ok(nonce)
}

/// A caller's tokens for one upstream: what a row decrypts to.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tokens {
    /// The upstream access token.
    pub(crate) access_token: String,
    /// The refresh token, when the upstream's authorization server gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) refresh_token: Option<String>,
    /// When the access token expires (seconds since the epoch), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) expires_at: Option<u64>,
    /// The scope granted, if the authorization server said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) scope: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &"..")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| ".."))
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish()
    }
}

/// Whose row: the MCP caller's verified issuer and subject, and the upstream id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner<'a> {
    pub(crate) issuer: &'a str,
    pub(crate) subject: &'a str,
    pub(crate) upstream: &'a str,
}

impl Owner<'_> {
    fn aad(&self, key_id: &str) -> Vec<u8> {
        serde_json::json!([FORMAT, self.issuer, self.subject, self.upstream, key_id])
            .to_string()
            .into_bytes()
    }

    fn check(&self) -> Result<(), VaultError> {
        if self.issuer.len() > MAX_NAME_BYTES || self.subject.len() > MAX_NAME_BYTES {
            return Err(VaultError(
                "the caller's issuer or subject is longer than 1 KiB".to_owned(),
            ));
        }
        Ok(())
    }
}

/// A row as stored.
#[derive(Debug, Clone)]
struct Row {
    key_id: String,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

/// What [`Vault::get`] found: the tokens and the row's version (its nonce, rule 6).
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub(crate) tokens: Tokens,
    pub(crate) version: Vec<u8>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

enum Backend {
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    Postgres {
        pool: deadpool_postgres::Pool,
        schema: tokio::sync::OnceCell<()>,
    },
}

/// The vault: a database and the keys (see the module rules).
pub(crate) struct Vault {
    backend: Backend,
    keys: Arc<Keys>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres { .. } => "postgres",
        };
        f.debug_struct("Vault")
            .field("backend", &backend)
            .field("key_id", &self.keys.current_id())
            .finish_non_exhaustive()
    }
}

const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS bmm_vault_entries (
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    upstream TEXT NOT NULL,
    key_id TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (issuer, subject, upstream)
)";

const POSTGRES_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS bmm_vault_entries (
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    upstream TEXT NOT NULL,
    key_id TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject, upstream)
)";

/// Whether `--vault` names a PostgreSQL database.
pub(crate) fn is_postgres_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

impl Vault {
    /// Opens `--vault`: a PostgreSQL URL (connected lazily; [`Vault::ready`] checks it) or
    /// a SQLite file path (opened now). Blocking for SQLite.
    pub(crate) fn open(
        location: &str,
        ca_file: Option<&Path>,
        keys: Keys,
    ) -> Result<Self, VaultError> {
        if is_postgres_url(location) {
            Self::postgres(location, ca_file, keys)
        } else if ca_file.is_some() {
            Err(VaultError(
                "--vault-ca-file is for a PostgreSQL vault (--vault postgres://...)".to_owned(),
            ))
        } else {
            Self::sqlite(Path::new(location), keys)
        }
    }

    /// The vault's keys.
    pub(crate) fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    fn sqlite(path: &Path, keys: Keys) -> Result<Self, VaultError> {
        let side = |suffix: &str| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            std::path::PathBuf::from(p)
        };
        private::prepare_file(path, true)?;
        for suffix in ["-wal", "-shm"] {
            private::prepare_file(&side(suffix), false)?;
        }
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.execute_batch(SQLITE_SCHEMA)?;
        for suffix in ["-wal", "-shm"] {
            private::prepare_file(&side(suffix), false)?;
        }
        Ok(Self {
            backend: Backend::Sqlite(Arc::new(Mutex::new(conn))),
            keys: Arc::new(keys),
        })
    }

    fn postgres(url: &str, ca_file: Option<&Path>, keys: Keys) -> Result<Self, VaultError> {
        use tokio_postgres::config::SslMode;
        let url = verify_modes_as_require(url);
        let mut config = tokio_postgres::Config::from_str(&url).map_err(|_| {
            VaultError("--vault is not a valid PostgreSQL connection URL".to_owned())
        })?;
        let tls = match config.get_ssl_mode() {
            SslMode::Require => Some(tls_connector(ca_file)?),
            SslMode::Disable | SslMode::Prefer if ca_file.is_none() => None,
            SslMode::Disable | SslMode::Prefer => {
                return Err(VaultError(
                    "--vault-ca-file is given but the vault URL does not ask for TLS: add `sslmode=require` to it".to_owned(),
                ));
            }
            _ => {
                return Err(VaultError(
                    "the vault URL's sslmode is not one bmm knows (use require or disable)"
                        .to_owned(),
                ));
            }
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("bmm-runtime-vault");
        }
        if config.get_options().is_none() {
            config.options("-c client_min_messages=warning");
        }
        if tls.is_none()
            && config.get_hosts().iter().any(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => {
                    !(name.eq_ignore_ascii_case("localhost")
                        || name
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback()))
                }
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(_) => false,
            })
        {
            tracing::warn!(
                "the vault's database connection is plain text (no sslmode=require) to a host that is not this machine"
            );
        }
        let manager_config = deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        };
        let manager = match tls {
            Some(tls) => deadpool_postgres::Manager::from_config(config, tls, manager_config),
            None => deadpool_postgres::Manager::from_config(
                config,
                tokio_postgres::NoTls,
                manager_config,
            ),
        };
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(8)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| VaultError(format!("postgres pool: {e}")))?;
        Ok(Self {
            backend: Backend::Postgres {
                pool,
                schema: tokio::sync::OnceCell::new(),
            },
            keys: Arc::new(keys),
        })
    }

    /// Connects (PostgreSQL) and makes sure the table exists; a no-op for SQLite.
    pub(crate) async fn ready(&self) -> Result<(), VaultError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres { pool, schema } => schema
                .get_or_try_init(|| async {
                    let conn = pool.get().await?;
                    conn.batch_execute(POSTGRES_SCHEMA).await?;
                    Ok::<(), VaultError>(())
                })
                .await
                .map(|_| ()),
        }
    }

    async fn sqlite_call<T, F>(
        conn: &Arc<Mutex<rusqlite::Connection>>,
        f: F,
    ) -> Result<T, VaultError>
    where
        F: FnOnce(&rusqlite::Connection) -> Result<T, rusqlite::Error> + Send + 'static,
        T: Send + 'static,
    {
        let conn = Arc::clone(conn);
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| VaultError("the SQLite connection is poisoned".to_owned()))?;
            f(&conn).map_err(VaultError::from)
        })
        .await
        .map_err(|_| VaultError("the SQLite call did not finish".to_owned()))?
    }

    async fn pg(&self) -> Result<deadpool_postgres::Object, VaultError> {
        self.ready().await?;
        match &self.backend {
            Backend::Postgres { pool, .. } => Ok(pool.get().await?),
            Backend::Sqlite(_) => Err(VaultError("not a PostgreSQL vault".to_owned())),
        }
    }

    async fn read_row(&self, owner: Owner<'_>) -> Result<Option<Row>, VaultError> {
        let (i, s, u) = (
            owner.issuer.to_owned(),
            owner.subject.to_owned(),
            owner.upstream.to_owned(),
        );
        match &self.backend {
            Backend::Sqlite(conn) => {
                Self::sqlite_call(conn, move |c| {
                    use rusqlite::OptionalExtension;
                    c.query_row(
                        "SELECT key_id, nonce, ciphertext FROM bmm_vault_entries WHERE issuer = ?1 AND subject = ?2 AND upstream = ?3",
                        rusqlite::params![i, s, u],
                        |r| Ok(Row { key_id: r.get(0)?, nonce: r.get(1)?, ciphertext: r.get(2)? }),
                    )
                    .optional()
                })
                .await
            }
            Backend::Postgres { .. } => {
                let conn = self.pg().await?;
                let row = conn
                    .query_opt(
                        "SELECT key_id, nonce, ciphertext FROM bmm_vault_entries WHERE issuer = $1 AND subject = $2 AND upstream = $3",
                        &[&i, &s, &u],
                    )
                    .await?;
                row.map(|r| {
                    Ok(Row {
                        key_id: r.try_get(0)?,
                        nonce: r.try_get(1)?,
                        ciphertext: r.try_get(2)?,
                    })
                })
                .transpose()
            }
        }
    }

    /// Writes `row` for `owner`: an upsert, or, with `expected`, only over the row whose
    /// nonce is `expected` (rule 6). Whether a row was written.
    async fn write_row(
        &self,
        owner: Owner<'_>,
        row: Row,
        expected: Option<Vec<u8>>,
    ) -> Result<bool, VaultError> {
        let (i, s, u) = (
            owner.issuer.to_owned(),
            owner.subject.to_owned(),
            owner.upstream.to_owned(),
        );
        let at = int(now());
        match &self.backend {
            Backend::Sqlite(conn) => {
                Self::sqlite_call(conn, move |c| {
                    let n = match expected {
                        None => c.execute(
                            "INSERT INTO bmm_vault_entries (issuer, subject, upstream, key_id, nonce, ciphertext, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                             ON CONFLICT (issuer, subject, upstream) DO UPDATE SET key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
                            rusqlite::params![i, s, u, row.key_id, row.nonce, row.ciphertext, at],
                        )?,
                        Some(old) => c.execute(
                            "UPDATE bmm_vault_entries SET key_id = ?4, nonce = ?5, ciphertext = ?6, updated_at = ?7 WHERE issuer = ?1 AND subject = ?2 AND upstream = ?3 AND nonce = ?8",
                            rusqlite::params![i, s, u, row.key_id, row.nonce, row.ciphertext, at, old],
                        )?,
                    };
                    Ok(n > 0)
                })
                .await
            }
            Backend::Postgres { .. } => {
                let conn = self.pg().await?;
                let n = match expected {
                    None => conn.execute(
                        "INSERT INTO bmm_vault_entries (issuer, subject, upstream, key_id, nonce, ciphertext, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (issuer, subject, upstream) DO UPDATE SET key_id = EXCLUDED.key_id, nonce = EXCLUDED.nonce, ciphertext = EXCLUDED.ciphertext, updated_at = EXCLUDED.updated_at",
                        &[&i, &s, &u, &row.key_id, &row.nonce, &row.ciphertext, &at],
                    ).await?,
                    Some(old) => conn.execute(
                        "UPDATE bmm_vault_entries SET key_id = $4, nonce = $5, ciphertext = $6, updated_at = $7 WHERE issuer = $1 AND subject = $2 AND upstream = $3 AND nonce = $8",
                        &[&i, &s, &u, &row.key_id, &row.nonce, &row.ciphertext, &at, &old],
                    ).await?,
                };
                Ok(n > 0)
            }
        }
    }

    fn encrypt(&self, owner: Owner<'_>, tokens: &Tokens) -> Result<Row, VaultError> {
        owner.check()?;
        let mut data = serde_json::to_vec(tokens)
            .map_err(|_| VaultError("the tokens could not be serialized".to_owned()))?;
        if data.len() > MAX_ENTRY_BYTES {
            return Err(VaultError(format!(
                "the upstream's tokens are larger than {} KiB",
                MAX_ENTRY_BYTES / 1024
            )));
        }
        let key = &self.keys.current;
        let nonce = random_nonce()?;
        key.entries
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(owner.aad(&key.id).as_slice()),
                &mut data,
            )
            .map_err(|_| VaultError("cannot encrypt".to_owned()))?;
        Ok(Row {
            key_id: key.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext: data,
        })
    }

    /// Decrypts a row (rules 1, 2, 5); `None` with a warning when it is refused.
    fn decrypt(&self, owner: Owner<'_>, row: &Row) -> Option<Tokens> {
        let refuse = |why: &str| {
            tracing::warn!(
                upstream = owner.upstream,
                key_id = %row.key_id.escape_default(),
                "a token vault entry is refused ({why}); the caller counts as not connected"
            );
            None
        };
        let Some(key) = self.keys.by_id(&row.key_id) else {
            return refuse(
                "written under a key that is neither BMM_VAULT_KEY nor in BMM_VAULT_PREVIOUS_KEYS",
            );
        };
        if row.ciphertext.len() > MAX_ENTRY_BYTES + AES_256_GCM.tag_len() {
            return refuse("larger than an entry may be");
        }
        let Ok(nonce) = Nonce::try_assume_unique_for_key(&row.nonce) else {
            return refuse("malformed nonce");
        };
        let mut data = row.ciphertext.clone();
        let Ok(plain) = key.entries.open_in_place(
            nonce,
            Aad::from(owner.aad(&row.key_id).as_slice()),
            &mut data,
        ) else {
            return refuse("it does not decrypt for this caller and upstream: altered or moved");
        };
        match serde_json::from_slice::<Tokens>(plain) {
            Ok(tokens) => Some(tokens),
            Err(_) => refuse("its content is not the vault's"),
        }
    }

    /// The caller's tokens for the upstream, if connected (rule 2: a refused row counts as
    /// none). A row under a previous key is re-encrypted under the current one (rule 3).
    pub(crate) async fn get(&self, owner: Owner<'_>) -> Result<Option<Found>, VaultError> {
        owner.check()?;
        let Some(row) = self.read_row(owner).await? else {
            return Ok(None);
        };
        let Some(tokens) = self.decrypt(owner, &row) else {
            return Ok(None);
        };
        if row.key_id != self.keys.current.id {
            let fresh = self.encrypt(owner, &tokens)?;
            let version = fresh.nonce.clone();
            if self
                .write_row(owner, fresh, Some(row.nonce.clone()))
                .await?
            {
                tracing::info!(
                    upstream = owner.upstream,
                    from = %row.key_id,
                    to = %self.keys.current.id,
                    "token vault entry re-encrypted under the current key"
                );
                return Ok(Some(Found { tokens, version }));
            }
        }
        Ok(Some(Found {
            tokens,
            version: row.nonce,
        }))
    }

    /// Stores the caller's tokens for the upstream (replacing any). Returns the row's
    /// version.
    pub(crate) async fn put(
        &self,
        owner: Owner<'_>,
        tokens: &Tokens,
    ) -> Result<Vec<u8>, VaultError> {
        let row = self.encrypt(owner, tokens)?;
        let version = row.nonce.clone();
        self.write_row(owner, row, None).await?;
        Ok(version)
    }

    /// Replaces the row whose version is `expected` (rule 6): `Some(new version)`, or
    /// `None` when another write came first.
    pub(crate) async fn replace(
        &self,
        owner: Owner<'_>,
        tokens: &Tokens,
        expected: &[u8],
    ) -> Result<Option<Vec<u8>>, VaultError> {
        let row = self.encrypt(owner, tokens)?;
        let version = row.nonce.clone();
        Ok(self
            .write_row(owner, row, Some(expected.to_vec()))
            .await?
            .then_some(version))
    }

    /// Deletes the caller's row for the upstream (only the one whose version is
    /// `expected`, when given); whether there was one.
    pub(crate) async fn delete(
        &self,
        owner: Owner<'_>,
        expected: Option<&[u8]>,
    ) -> Result<bool, VaultError> {
        owner.check()?;
        let (i, s, u) = (
            owner.issuer.to_owned(),
            owner.subject.to_owned(),
            owner.upstream.to_owned(),
        );
        let expected = expected.map(<[u8]>::to_vec);
        match &self.backend {
            Backend::Sqlite(conn) => {
                Self::sqlite_call(conn, move |c| {
                    let n = match expected {
                        None => c.execute(
                            "DELETE FROM bmm_vault_entries WHERE issuer = ?1 AND subject = ?2 AND upstream = ?3",
                            rusqlite::params![i, s, u],
                        )?,
                        Some(old) => c.execute(
                            "DELETE FROM bmm_vault_entries WHERE issuer = ?1 AND subject = ?2 AND upstream = ?3 AND nonce = ?4",
                            rusqlite::params![i, s, u, old],
                        )?,
                    };
                    Ok(n > 0)
                })
                .await
            }
            Backend::Postgres { .. } => {
                let conn = self.pg().await?;
                let n = match expected {
                    None => {
                        conn.execute(
                            "DELETE FROM bmm_vault_entries WHERE issuer = $1 AND subject = $2 AND upstream = $3",
                            &[&i, &s, &u],
                        )
                        .await?
                    }
                    Some(old) => {
                        conn.execute(
                            "DELETE FROM bmm_vault_entries WHERE issuer = $1 AND subject = $2 AND upstream = $3 AND nonce = $4",
                            &[&i, &s, &u, &old],
                        )
                        .await?
                    }
                };
                Ok(n > 0)
            }
        }
    }

    /// Runs `sql` on the SQLite connection (tests: tampering with rows).
    #[cfg(test)]
    async fn sqlite_exec(&self, sql: &'static str) -> usize {
        let Backend::Sqlite(conn) = &self.backend else {
            return 0;
        };
        Self::sqlite_call(conn, move |c| c.execute(sql, []))
            .await
            .unwrap_or(0)
    }
}

/// `url` with libpq's `sslmode=verify-full` or `verify-ca` (which tokio-postgres does not
/// parse) read as `require`, which verifies at least as much (rule 7).
fn verify_modes_as_require(url: &str) -> String {
    let is_verify = |p: &str| p == "sslmode=verify-full" || p == "sslmode=verify-ca";
    match url.split_once('?') {
        Some((base, query)) if query.split('&').any(is_verify) => {
            let query: Vec<&str> = query
                .split('&')
                .map(|p| if is_verify(p) { "sslmode=require" } else { p })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        _ => url.to_owned(),
    }
}

/// The TLS connector for `sslmode=require` (rule 7): TLS 1.2+, aws-lc-rs, the server's
/// certificate and name verified against the system's roots plus `ca_file`.
fn tls_connector(
    ca_file: Option<&Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, VaultError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    let _ = roots.add_parsable_certificates(system.certs);
    if let Some(path) = ca_file {
        let shown = path.display();
        let pem = std::fs::read(path)
            .map_err(|e| VaultError(format!("cannot read --vault-ca-file {shown}: {e}")))?;
        let mut found = 0usize;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert =
                cert.map_err(|e| VaultError(format!("--vault-ca-file {shown} is not PEM: {e}")))?;
            roots.add(cert).map_err(|e| {
                VaultError(format!(
                    "--vault-ca-file {shown} holds a certificate that cannot be a trust anchor: {e}"
                ))
            })?;
            found += 1;
        }
        if found == 0 {
            return Err(VaultError(format!(
                "--vault-ca-file {shown} holds no PEM certificate"
            )));
        }
    }
    if roots.is_empty() {
        return Err(VaultError(
            "sslmode=require but this system has no CA certificates: pass --vault-ca-file"
                .to_owned(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| VaultError(format!("TLS for the vault's database: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Owner-only files (rule 4).
mod private {
    use std::path::Path;

    use super::VaultError;

    /// Checks that `path` is a regular file only its owner may read or write; creates it
    /// `0600` when missing and `create` is set.
    #[cfg(unix)]
    pub(super) fn prepare_file(path: &Path, create: bool) -> Result<(), VaultError> {
        use std::io::ErrorKind;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                if !meta.file_type().is_file() {
                    return Err(VaultError(format!(
                        "{} is not a regular file (a symbolic link?); the vault refuses it",
                        path.display()
                    )));
                }
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(VaultError(format!(
                        "{} is readable or writable by other users (mode {mode:03o}); run `chmod 600 {}` (and rotate BMM_VAULT_KEY and the stored connections if others may have read it with the key)",
                        path.display(),
                        path.display()
                    )));
                }
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound && create => std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map(|_| ())
                .map_err(|e| VaultError(format!("cannot create {}: {e}", path.display()))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(VaultError(format!("cannot read {}: {e}", path.display()))),
        }
    }

    #[cfg(not(unix))]
    pub(super) fn prepare_file(_path: &Path, _create: bool) -> Result<(), VaultError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const ALICE: Owner<'static> = Owner {
        issuer: "https://as.example",
        subject: "alice",
        upstream: "github",
    };
    const TOKEN: &str = "gho_upstream-access-token-0123456789";
    const REFRESH: &str = "ghr_upstream-refresh-token-9876543210";

    fn tokens() -> Tokens {
        Tokens {
            access_token: TOKEN.to_owned(),
            refresh_token: Some(REFRESH.to_owned()),
            expires_at: Some(4_000_000_000),
            scope: Some("repo".to_owned()),
        }
    }

    fn vault(dir: &Path, keys: Keys) -> Vault {
        Vault::open(dir.join("vault.sqlite").to_str().unwrap(), None, keys).unwrap()
    }

    #[tokio::test]
    async fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path(), Keys::from_raw([1; 32], &[]));
        assert!(v.get(ALICE).await.unwrap().is_none());
        let version = v.put(ALICE, &tokens()).await.unwrap();
        let found = v.get(ALICE).await.unwrap().unwrap();
        assert_eq!(found.tokens, tokens());
        assert_eq!(found.version, version);
        // A stale version changes nothing; the current one does.
        let mut newer = tokens();
        newer.access_token = "second".to_owned();
        assert!(
            v.replace(ALICE, &newer, b"stale-nonce!")
                .await
                .unwrap()
                .is_none()
        );
        assert!(v.replace(ALICE, &newer, &version).await.unwrap().is_some());
        assert!(!v.delete(ALICE, Some(&version)).await.unwrap());
        assert_eq!(v.get(ALICE).await.unwrap().unwrap().tokens, newer);
        assert!(v.delete(ALICE, None).await.unwrap());
        assert!(!v.delete(ALICE, None).await.unwrap());
        assert!(v.get(ALICE).await.unwrap().is_none());
        assert!(!format!("{:?}", tokens()).contains(TOKEN));
        assert!(!format!("{:?}", tokens()).contains(REFRESH));
    }

    /// Rewrites the one row's ciphertext or nonce with `f`.
    fn tamper(v: &Vault, column: &str, f: impl FnOnce(&mut Vec<u8>)) {
        let Backend::Sqlite(conn) = &v.backend else {
            unreachable!()
        };
        let c = conn.lock().unwrap();
        let mut value: Vec<u8> = c
            .query_row(
                &format!("SELECT {column} FROM bmm_vault_entries"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        f(&mut value);
        c.execute(
            &format!("UPDATE bmm_vault_entries SET {column} = ?1"),
            rusqlite::params![value],
        )
        .unwrap();
    }

    #[tokio::test]
    async fn a_tampered_row_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path(), Keys::from_raw([1; 32], &[]));
        type Edit = (&'static str, fn(&mut Vec<u8>));
        let edits: [Edit; 5] = [
            ("ciphertext", |c| c[3] ^= 1),
            ("ciphertext", |c| {
                let last = c.len() - 1;
                c[last] ^= 0x80;
            }),
            ("ciphertext", |c| c.truncate(c.len() - 1)),
            ("ciphertext", |c| c.push(0)),
            ("nonce", |n| n[0] ^= 1),
        ];
        for (column, edit) in edits {
            v.put(ALICE, &tokens()).await.unwrap();
            assert!(v.get(ALICE).await.unwrap().is_some());
            tamper(&v, column, edit);
            assert!(v.get(ALICE).await.unwrap().is_none(), "{column}");
        }
    }

    #[tokio::test]
    async fn a_row_copied_to_another_caller_or_upstream_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path(), Keys::from_raw([1; 32], &[]));
        v.put(ALICE, &tokens()).await.unwrap();
        for sql in [
            "INSERT INTO bmm_vault_entries SELECT issuer, 'mallory', upstream, key_id, nonce, ciphertext, updated_at FROM bmm_vault_entries WHERE subject = 'alice'",
            "INSERT INTO bmm_vault_entries SELECT issuer, subject, 'gitlab', key_id, nonce, ciphertext, updated_at FROM bmm_vault_entries WHERE subject = 'alice' AND upstream = 'github'",
            "INSERT INTO bmm_vault_entries SELECT 'https://other-as.example', subject, upstream, key_id, nonce, ciphertext, updated_at FROM bmm_vault_entries WHERE subject = 'alice' AND upstream = 'github' AND issuer = 'https://as.example'",
        ] {
            assert_eq!(v.sqlite_exec(sql).await, 1, "{sql}");
        }
        for other in [
            Owner {
                subject: "mallory",
                ..ALICE
            },
            Owner {
                upstream: "gitlab",
                ..ALICE
            },
            Owner {
                issuer: "https://other-as.example",
                ..ALICE
            },
        ] {
            assert!(v.get(other).await.unwrap().is_none(), "{other:?}");
        }
        assert_eq!(v.get(ALICE).await.unwrap().unwrap().tokens, tokens());
    }

    #[tokio::test]
    async fn a_row_under_an_unknown_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        vault(dir.path(), Keys::from_raw([1; 32], &[]))
            .put(ALICE, &tokens())
            .await
            .unwrap();
        // Another key, the old one not listed as previous.
        let v = vault(dir.path(), Keys::from_raw([2; 32], &[]));
        assert!(v.get(ALICE).await.unwrap().is_none());
        // Relabelling the row with the known key's id does not help either.
        v.sqlite_exec("UPDATE bmm_vault_entries SET key_id = 'x'")
            .await;
        assert!(v.get(ALICE).await.unwrap().is_none());
        let id = v.keys().current_id().to_owned();
        let sql: &'static str =
            Box::leak(format!("UPDATE bmm_vault_entries SET key_id = '{id}'").into_boxed_str());
        v.sqlite_exec(sql).await;
        assert!(v.get(ALICE).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rotation_re_encrypts_under_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let old = vault(dir.path(), Keys::from_raw([1; 32], &[]));
        let old_id = old.keys().current_id().to_owned();
        old.put(ALICE, &tokens()).await.unwrap();
        drop(old);
        let v = vault(dir.path(), Keys::from_raw([2; 32], &[[1; 32]]));
        let new_id = v.keys().current_id().to_owned();
        assert_ne!(old_id, new_id);
        let key_id = |v: &Vault| {
            let Backend::Sqlite(conn) = &v.backend else {
                unreachable!()
            };
            conn.lock()
                .unwrap()
                .query_row("SELECT key_id FROM bmm_vault_entries", [], |r| {
                    r.get::<_, String>(0)
                })
                .unwrap()
        };
        assert_eq!(key_id(&v), old_id);
        assert_eq!(v.get(ALICE).await.unwrap().unwrap().tokens, tokens());
        assert_eq!(key_id(&v), new_id, "re-encrypted when read");
        drop(v);
        // The new key alone reads it now.
        let v = vault(dir.path(), Keys::from_raw([2; 32], &[]));
        assert_eq!(v.get(ALICE).await.unwrap().unwrap().tokens, tokens());
    }

    #[tokio::test]
    async fn the_sqlite_file_holds_no_plaintext_token() {
        let dir = tempfile::tempdir().unwrap();
        let v = vault(dir.path(), Keys::from_raw([1; 32], &[]));
        for i in 0..20 {
            let owner = Owner {
                subject: &format!("user-{i}"),
                ..ALICE
            };
            v.put(owner, &tokens()).await.unwrap();
            assert!(v.get(owner).await.unwrap().is_some());
        }
        let mut scanned = 0;
        for name in ["vault.sqlite", "vault.sqlite-wal"] {
            let Ok(bytes) = std::fs::read(dir.path().join(name)) else {
                continue;
            };
            scanned += bytes.len();
            for needle in [TOKEN, REFRESH, "upstream-access-token", "access_token"] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{name} holds {needle}"
                );
            }
        }
        assert!(scanned > 0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("vault.sqlite"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_vault_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.sqlite");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err =
            Vault::open(path.to_str().unwrap(), None, Keys::from_raw([1; 32], &[])).unwrap_err();
        assert!(err.0.contains("chmod 600"), "{err}");
    }

    #[test]
    fn keys_come_from_the_environment_and_errors_name_the_variable_only() {
        let b64 = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
        let err = Keys::from_env(&|_| None).unwrap_err();
        assert!(err.contains("BMM_VAULT_KEY"), "{err}");
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        let err = Keys::from_env(&|n| (n == KEY_ENV).then(|| short.clone())).unwrap_err();
        assert!(err.contains("16 bytes") && !err.contains(&short), "{err}");
        let err =
            Keys::from_env(&|n| (n == KEY_ENV).then(|| "not base64!".to_owned())).unwrap_err();
        assert!(err.contains("BMM_VAULT_KEY"), "{err}");
        let env = |n: &str| match n {
            KEY_ENV => Some(b64(2)),
            PREVIOUS_KEYS_ENV => Some(format!("{}, {},{}", b64(1), b64(2), b64(1))),
            _ => None,
        };
        let keys = Keys::from_env(&env).unwrap();
        assert_eq!(keys.previous.len(), 1);
        assert_eq!(keys.current_id(), Keys::from_raw([2; 32], &[]).current_id());
        let bad_previous = |n: &str| match n {
            KEY_ENV => Some(b64(2)),
            PREVIOUS_KEYS_ENV => Some("oops".to_owned()),
            _ => None,
        };
        let err = Keys::from_env(&bad_previous).unwrap_err();
        assert!(err.contains(PREVIOUS_KEYS_ENV), "{err}");
        assert!(!format!("{keys:?}").contains(&b64(2)));
    }

    #[test]
    fn sealed_values_open_only_for_their_purpose_and_keys() {
        let keys = Keys::from_raw([1; 32], &[]);
        let sealed = keys.seal("start", b"hello").unwrap();
        assert_eq!(keys.open("start", &sealed).unwrap(), b"hello");
        assert!(keys.open("state", &sealed).is_none());
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert!(
            keys.open("start", &String::from_utf8(altered).unwrap())
                .is_none()
        );
        assert!(keys.open("start", "").is_none());
        assert!(keys.open("start", "!!!").is_none());
        // The previous key still opens it after a rotation; an unrelated key does not.
        let rotated = Keys::from_raw([2; 32], &[[1; 32]]);
        assert_eq!(rotated.open("start", &sealed).unwrap(), b"hello");
        assert!(
            Keys::from_raw([2; 32], &[])
                .open("start", &sealed)
                .is_none()
        );
    }

    /// The PostgreSQL backend, when `BMM_VAULT_TEST_DATABASE_URL` names a database.
    #[tokio::test]
    async fn postgres_round_trip_and_refusals() {
        let Ok(url) = std::env::var("BMM_VAULT_TEST_DATABASE_URL") else {
            return;
        };
        let v = Vault::open(&url, None, Keys::from_raw([1; 32], &[])).unwrap();
        v.ready().await.unwrap();
        let owner = Owner {
            subject: "pg-alice",
            ..ALICE
        };
        v.delete(owner, None).await.unwrap();
        let version = v.put(owner, &tokens()).await.unwrap();
        assert_eq!(v.get(owner).await.unwrap().unwrap().tokens, tokens());
        assert!(
            v.replace(owner, &tokens(), b"stale-nonce!")
                .await
                .unwrap()
                .is_none()
        );
        let rotated = Vault::open(&url, None, Keys::from_raw([2; 32], &[[1; 32]])).unwrap();
        assert_eq!(rotated.get(owner).await.unwrap().unwrap().tokens, tokens());
        // Re-encrypted: the old key alone no longer reads it.
        assert!(v.get(owner).await.unwrap().is_none());
        assert!(!v.delete(owner, Some(&version)).await.unwrap());
        assert!(rotated.delete(owner, None).await.unwrap());
    }
}
