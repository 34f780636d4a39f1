//! The shared store: a PostgreSQL database several bmm-as instances serve from.
//!
//! PostgreSQL rules:
//! 1. Every single-use or rotating decision is one statement or one transaction whose rows
//!    are locked before they are read (store rule 1): a code is redeemed by one
//!    `UPDATE ... WHERE redeemed_family IS NULL` (of concurrent updates PostgreSQL lets one
//!    win and re-checks the others against the committed row); a refresh token's family
//!    is locked (an advisory lock that revocations of the family take too), then the
//!    token is read `FOR UPDATE`, and its successor inserted in the same transaction; a
//!    client assertion's `jti` is an
//!    `INSERT ... ON CONFLICT`; the first signing key is an insert that the unique index on
//!    the current key turns into a no-op for every instance but one. Transactions that read
//!    a whole table and then write it (pending sign-ins' quotas, key rotation) take a
//!    transaction-scoped advisory lock first, so they run one at a time across instances.
//!    Transactions run at READ COMMITTED: nothing depends on a snapshot older than its lock.
//! 2. Migrations ([`super::migrate`]) run at connect in one transaction under
//!    `pg_advisory_xact_lock`, so instances starting together migrate once; a schema newer
//!    than this build is refused before anything is written.
//! 3. Connections come from a pool (`deadpool-postgres`) of `--database-pool-size`
//!    connections; waiting for one, or opening one, gives up after 10 s with an error (the
//!    request answers 500) rather than hanging.
//! 4. TLS follows the URL's `sslmode` ([`PgStore::connect`]), failing closed:
//!    - `sslmode=require` (`verify-full` and `verify-ca` are read as `require`): TLS 1.2+
//!      (rustls, aws-lc-rs) and bmm-as ALWAYS verifies the server's certificate chain and
//!      its host name (the URL's `host`, an IP address or a DNS name), against the system's
//!      CA certificates plus `--database-ca-file`. This is stricter than libpq's `require`,
//!      which encrypts without verifying: it is libpq's `verify-full`. A server without TLS,
//!      an unknown issuer or a certificate for another name is a start-up error naming the
//!      cause. Channel binding (`channel_binding=require`, SCRAM `tls-server-end-point`) works
//!      over it.
//!    - `sslmode=disable`, and `prefer` (the default when the URL says nothing): plain TCP,
//!      as before TLS support. `prefer` is not "TLS when the server offers it": verifying
//!      would break servers that work today with a self-signed certificate (Debian's default
//!      `ssl=on` with the snakeoil certificate), and not verifying protects from no active
//!      attacker while looking safe. Reach such a database over a Unix socket or a private
//!      network (the connection carries token hashes and the signing keys, encrypted only
//!      with a key-encryption key), or say `sslmode=require`. A plain connection to a host
//!      that is not loopback or a Unix socket logs a warning at start.
//!    - `--database-ca-file` with any mode but `require` is refused: it says TLS was meant.
//! 5. The database URL is never logged: it may carry a password. Errors name the failure,
//!    never the URL.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, Transaction,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::migrate;
use super::{
    AuditEvent, AuditFilter, Client, ClientSummary, Grant, OpaqueToken, Purged, RefreshRecord,
    RefreshUse, Store, StoredCode, StoredKey,
};
use crate::error::StoreError;

/// Advisory lock keys (any 64-bit numbers other applications on the database are unlikely
/// to use): "bmm-as" followed by a small number.
const MIGRATION_LOCK: i64 = 0x626d_6d2d_6173_0001;
const PENDING_LOCK: i64 = 0x626d_6d2d_6173_0002;
const KEYS_LOCK: i64 = 0x626d_6d2d_6173_0003;
/// The first key of a refresh family's advisory lock (the two-key form, a lock space apart
/// from the one-key locks above): "bmmr"; the second is `hashtext(family)`.
const FAMILY_LOCK_SPACE: i32 = 0x626d_6d72;

/// Takes the transaction-scoped lock of a refresh family: every rotation and every
/// revocation of the family takes it first (before any row lock, so they never deadlock)
/// and so runs alone; a revocation is never followed by a successor in the same family.
/// Two families whose hashes collide only wait for each other.
async fn lock_family(tx: &Transaction<'_>, family: &str) -> Result<(), StoreError> {
    let lock = tx
        .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .await?;
    tx.execute(&lock, &[&FAMILY_LOCK_SPACE, &family]).await?;
    Ok(())
}

/// How long a request waits for a pooled connection, or for a new one to open.
const POOL_TIMEOUT: Duration = Duration::from_secs(10);

/// Most rows a listing returns, whatever the caller asks.
const MAX_LIST: u32 = 1000;

/// Codes are kept this long past expiry, so a replay still finds what they produced.
const CODE_KEEP_SECS: u64 = 600;

/// Refresh tokens are kept this long past expiry or revocation.
const REFRESH_KEEP_SECS: u64 = 86_400;

/// The PostgreSQL store; cheap to share (a pool handle).
pub struct PgStore {
    pool: Pool,
    pool_size: usize,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

/// A driver error with its causes (a `DbError`'s message is in the source), never the URL.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self(format!("postgres: {}", describe(&error)))
    }
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Backend(e) => e.into(),
            PoolError::Timeout(_) => Self(format!(
                "postgres: no database connection within {}s (pool exhausted or database unreachable)",
                POOL_TIMEOUT.as_secs()
            )),
            other => Self(format!("postgres pool: {}", describe(&other))),
        }
    }
}

fn to_db(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_db(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn json_error(error: serde_json::Error) -> StoreError {
    StoreError(format!("stored document: {error}"))
}

/// A refresh record from a row whose first eight columns are token_sha256, family,
/// client_id, subject, scope, resource, issued_at, expires_at.
fn refresh_record(row: &Row) -> Result<RefreshRecord, StoreError> {
    Ok(RefreshRecord {
        token_sha256: row.try_get(0)?,
        family: row.try_get(1)?,
        client_id: row.try_get(2)?,
        subject: row.try_get(3)?,
        scope: row.try_get(4)?,
        resource: row.try_get(5)?,
        issued_at: from_db(row.try_get(6)?),
        expires_at: from_db(row.try_get(7)?),
        jkt: row.try_get(8)?,
    })
}

const REFRESH_COLUMNS: &str =
    "token_sha256, family, client_id, subject, scope, resource, issued_at, expires_at, jkt";

const OPAQUE_COLUMNS: &str =
    "token_sha256, family, client_id, subject, scope, resource, jti, jkt, issued_at, expires_at";

fn opaque_token(row: &Row) -> Result<OpaqueToken, StoreError> {
    Ok(OpaqueToken {
        token_sha256: row.try_get(0)?,
        family: row.try_get(1)?,
        client_id: row.try_get(2)?,
        subject: row.try_get(3)?,
        scope: row.try_get(4)?,
        resource: row.try_get(5)?,
        jti: row.try_get(6)?,
        jkt: row.try_get(7)?,
        issued_at: from_db(row.try_get(8)?),
        expires_at: from_db(row.try_get(9)?),
    })
}

/// Revokes the opaque access tokens of `family` at `now` (inside the transaction holding
/// the family's lock).
async fn revoke_opaque_family(
    tx: &Transaction<'_>,
    family: &str,
    now: i64,
) -> Result<(), StoreError> {
    let revoke = tx
        .prepare_cached(
            "UPDATE opaque_tokens SET revoked_at = $2 WHERE family = $1 AND revoked_at IS NULL",
        )
        .await?;
    tx.execute(&revoke, &[&family, &now]).await?;
    Ok(())
}

fn stored_code(row: &Row) -> Result<StoredCode, StoreError> {
    Ok(StoredCode {
        code_sha256: row.try_get(0)?,
        client_id: row.try_get(1)?,
        redirect_uri: row.try_get(2)?,
        redirect_uri_given: row.try_get(3)?,
        code_challenge: row.try_get(4)?,
        resource: row.try_get(5)?,
        scope: row.try_get(6)?,
        subject: row.try_get(7)?,
        expires_at: from_db(row.try_get(8)?),
        redeemed_family: row.try_get(9)?,
    })
}

fn audit_event(row: &Row) -> Result<AuditEvent, StoreError> {
    Ok(AuditEvent {
        id: row.try_get(0)?,
        at: from_db(row.try_get(1)?),
        kind: row.try_get(2)?,
        client_id: row.try_get(3)?,
        subject: row.try_get(4)?,
        resource: row.try_get(5)?,
        scope: row.try_get(6)?,
        address: row.try_get(7)?,
        outcome: row.try_get(8)?,
        detail: row.try_get(9)?,
    })
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user[:password]@host[:port]/dbname`,
    /// or the key=value form) with a pool of at most `pool_size` connections, and brings
    /// its schema up to date (migration rules).
    ///
    /// TLS follows the URL's `sslmode` (rule 4): `require` (or `verify-full`, `verify-ca`)
    /// verifies the server's certificate and host name against the system's CA
    /// certificates plus the PEM certificates in `ca_file`; `disable` and `prefer` (the
    /// default) connect in plain text, and refuse a `ca_file`.
    pub async fn connect(
        url: &str,
        pool_size: usize,
        ca_file: Option<&Path>,
    ) -> Result<Self, StoreError> {
        Self::open(url, pool_size, ca_file, true).await
    }

    /// Like [`PgStore::connect`] but for readers (`bmm-as audit`): runs no migration,
    /// creates nothing, its sessions are read-only (`default_transaction_read_only`),
    /// and a schema that is absent or not the latest this binary knows is refused.
    pub async fn connect_existing(
        url: &str,
        pool_size: usize,
        ca_file: Option<&Path>,
    ) -> Result<Self, StoreError> {
        Self::open(url, pool_size, ca_file, false).await
    }

    async fn open(
        url: &str,
        pool_size: usize,
        ca_file: Option<&Path>,
        migrate: bool,
    ) -> Result<Self, StoreError> {
        let url = verify_modes_as_require(url);
        let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| {
            StoreError(format!(
                "the database URL is not a valid PostgreSQL connection string ({})",
                describe(&e)
            ))
        })?;
        let tls = match config.get_ssl_mode() {
            SslMode::Require => Some(tls_connector(ca_file)?),
            SslMode::Disable | SslMode::Prefer if ca_file.is_none() => None,
            SslMode::Disable | SslMode::Prefer => {
                return Err(StoreError(
                    "a database CA file is given but the database URL does not ask for TLS: add `sslmode=require` to it (or leave the CA file out)".to_owned(),
                ));
            }
            _ => {
                return Err(StoreError(
                    "the database URL's sslmode is not one bmm-as knows (use require or disable)"
                        .to_owned(),
                ));
            }
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POOL_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("bmm-as");
        }
        if config.get_options().is_none() {
            // The migrations' `IF NOT EXISTS` notices would be logged at every start.
            config.options(if migrate {
                "-c client_min_messages=warning"
            } else {
                "-c client_min_messages=warning -c default_transaction_read_only=on"
            });
        }
        let pool_size = pool_size.max(1);
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let verified = tls.is_some();
        if !verified && config.get_hosts().iter().any(is_remote) {
            tracing::warn!(
                "the database connection is plain text (no sslmode=require) to a host that is not this machine: token hashes and encrypted signing keys cross the network readable"
            );
        }
        let manager = match tls {
            Some(tls) => Manager::from_config(config, tls, manager_config),
            None => Manager::from_config(config, NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| StoreError(format!("postgres pool: {e}")))?;
        let store = Self { pool, pool_size };
        let mut client = store.pool.get().await.map_err(|e| {
            let error = StoreError::from(e);
            if verified && tls_failure(&error) {
                StoreError(format!(
                    "{}; bmm-as verifies the database server's certificate and host name (sslmode=require) against the system's CA certificates and --database-ca-file (BMM_AS_DATABASE_CA_FILE)",
                    error.0
                ))
            } else {
                error
            }
        })?;
        if migrate {
            migrate_schema(&mut client).await?;
        } else {
            // Two statements: a missing table would fail the parse of a single one.
            let versioned: bool = client
                .query_one(
                    "SELECT to_regclass('bmm_schema_migrations') IS NOT NULL",
                    &[],
                )
                .await?
                .try_get(0)?;
            let found: i64 = if versioned {
                client
                    .query_one(
                        "SELECT COALESCE(MAX(version), 0)::BIGINT FROM bmm_schema_migrations",
                        &[],
                    )
                    .await?
                    .try_get(0)?
            } else {
                0
            };
            migrate::require_latest(found)?;
        }
        Ok(store)
    }

    /// The most connections the pool opens.
    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    async fn conn(&self) -> Result<Object, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Runs one statement (prepared once per connection) and returns how many rows it
    /// changed.
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let conn = self.conn().await?;
        let statement = conn.prepare_cached(sql).await?;
        Ok(conn.execute(&statement, params).await?)
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let conn = self.conn().await?;
        let statement = conn.prepare_cached(sql).await?;
        Ok(conn.query_opt(&statement, params).await?)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let conn = self.conn().await?;
        let statement = conn.prepare_cached(sql).await?;
        Ok(conn.query(&statement, params).await?)
    }
}

/// Whether a database host is reached over the network: TCP to anything but a loopback
/// address or `localhost`.
fn is_remote(host: &tokio_postgres::config::Host) -> bool {
    match host {
        tokio_postgres::config::Host::Tcp(name) => {
            !(name.eq_ignore_ascii_case("localhost")
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback()))
        }
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => false,
    }
}

/// `url` with libpq's `sslmode=verify-full` or `verify-ca` (which tokio-postgres does not
/// parse) read as `require`, which verifies at least as much (rule 4). Only whole
/// `sslmode=...` parameters change: the URL's query, or key=value words.
fn verify_modes_as_require(url: &str) -> std::borrow::Cow<'_, str> {
    let is_verify = |p: &str| p == "sslmode=verify-full" || p == "sslmode=verify-ca";
    if let Some((base, query)) = url.split_once('?')
        && (url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        if !query.split('&').any(is_verify) {
            return url.into();
        }
        let query: Vec<&str> = query
            .split('&')
            .map(|p| if is_verify(p) { "sslmode=require" } else { p })
            .collect();
        return format!("{base}?{}", query.join("&")).into();
    }
    if !url.contains("://") && url.split(' ').any(is_verify) {
        let words: Vec<&str> = url
            .split(' ')
            .map(|p| if is_verify(p) { "sslmode=require" } else { p })
            .collect();
        return words.join(" ").into();
    }
    url.into()
}

/// The TLS connector for `sslmode=require`: TLS 1.2 or 1.3 with the aws-lc-rs provider,
/// the server's certificate and host name verified against the system's CA certificates
/// and those in `ca_file` (PEM). A CA file that cannot be read or holds no certificate is
/// an error; so is a system without CA certificates when no CA file is given.
fn tls_connector(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system files are skipped: the CA file may be all that is needed.
    let system = rustls_native_certs::load_native_certs();
    let (_added, _ignored) = roots.add_parsable_certificates(system.certs);
    if let Some(path) = ca_file {
        let shown = path.display();
        let pem = std::fs::read(path)
            .map_err(|e| StoreError(format!("cannot read the database CA file {shown}: {e}")))?;
        let mut found = 0usize;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert
                .map_err(|e| StoreError(format!("the database CA file {shown} is not PEM: {e}")))?;
            roots.add(cert).map_err(|e| {
                StoreError(format!(
                    "the database CA file {shown} holds a certificate that cannot be a trust anchor: {e}"
                ))
            })?;
            found += 1;
        }
        if found == 0 {
            return Err(StoreError(format!(
                "the database CA file {shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
            )));
        }
    }
    if roots.is_empty() {
        return Err(StoreError(
            "sslmode=require but this system has no CA certificates to verify the database server with: pass --database-ca-file (BMM_AS_DATABASE_CA_FILE)".to_owned(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError(format!("TLS for the database: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // What libpq 17 sends; required by servers for `sslnegotiation=direct`.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeRustlsConnect::new(config))
}

/// Whether a connection error comes from TLS (a rustls error somewhere in its causes, or
/// tokio-postgres's own TLS refusals), to add what bmm-as checks to the message.
fn tls_failure(error: &StoreError) -> bool {
    let text = &error.0;
    text.contains("invalid peer certificate")
        || text.contains("server does not support TLS")
        || text.contains("error performing TLS handshake")
        || text.contains("received fatal alert")
}

/// Applies the pending migrations in one transaction under the migration lock (rule 2).
async fn migrate_schema(client: &mut Object) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
        .await?;
    tx.batch_execute(migrate::VERSION_TABLE).await?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM bmm_schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    let pending = migrate::pending(current)?;
    let now = to_db(crate::now());
    for migration in pending {
        tx.batch_execute(migration.postgres).await.map_err(|e| {
            StoreError(format!(
                "postgres: migration {} ({}) failed: {}",
                migration.version,
                migration.name,
                describe(&e)
            ))
        })?;
        tx.execute(
            "INSERT INTO bmm_schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&migration.version, &now],
        )
        .await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "database migrated"
        );
    }
    tx.commit().await?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    // ---- clients ----

    async fn put_client(&self, client: &Client) -> Result<(), StoreError> {
        let document = serde_json::to_string(client).map_err(json_error)?;
        self.execute(
            "INSERT INTO clients (client_id, document, created_at) VALUES ($1, $2, $3)",
            &[&client.client_id, &document, &to_db(client.created_at)],
        )
        .await?;
        Ok(())
    }

    async fn client(&self, client_id: &str) -> Result<Option<Client>, StoreError> {
        let row = self
            .query_opt(
                "SELECT document FROM clients WHERE client_id = $1",
                &[&client_id],
            )
            .await?;
        row.map(|row| {
            let document: String = row.try_get(0)?;
            serde_json::from_str(&document).map_err(json_error)
        })
        .transpose()
    }

    async fn clients(&self, limit: u32, offset: u32) -> Result<Vec<ClientSummary>, StoreError> {
        let rows = self
            .query(
                "SELECT document, last_used FROM clients
                 ORDER BY created_at DESC, client_id LIMIT $1 OFFSET $2",
                &[&i64::from(limit.min(MAX_LIST)), &i64::from(offset)],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let document: String = row.try_get(0)?;
                Ok(ClientSummary {
                    client: serde_json::from_str(&document).map_err(json_error)?,
                    last_used: row.try_get::<_, Option<i64>>(1)?.map(from_db),
                })
            })
            .collect()
    }

    async fn mark_client_used(&self, client_id: &str, now: u64) -> Result<(), StoreError> {
        // Only when it changes: parallel refreshes of one client do not queue on its row.
        self.execute(
            "UPDATE clients SET last_used = $2
             WHERE client_id = $1 AND (last_used IS NULL OR last_used < $2)",
            &[&client_id, &to_db(now)],
        )
        .await?;
        Ok(())
    }

    async fn client_used(&self, client_id: &str) -> Result<bool, StoreError> {
        let row = self
            .query_opt(
                "SELECT 1 FROM clients WHERE client_id = $1 AND last_used IS NOT NULL",
                &[&client_id],
            )
            .await?;
        Ok(row.is_some())
    }

    async fn used_clients_among(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut used = Vec::new();
        for chunk in ids.chunks(500) {
            let chunk = chunk.to_vec();
            let rows = self
                .query(
                    "SELECT client_id FROM clients
                     WHERE last_used IS NOT NULL AND client_id = ANY($1)",
                    &[&chunk],
                )
                .await?;
            for row in rows {
                used.push(row.try_get(0)?);
            }
        }
        Ok(used)
    }

    async fn unused_clients(&self) -> Result<u64, StoreError> {
        let row = self
            .query_opt("SELECT COUNT(*) FROM clients WHERE last_used IS NULL", &[])
            .await?;
        Ok(match row {
            Some(row) => from_db(row.try_get(0)?),
            None => 0,
        })
    }

    async fn delete_unused_client(&self, client_id: &str) -> Result<bool, StoreError> {
        let n = self
            .execute(
                "DELETE FROM clients WHERE client_id = $1 AND last_used IS NULL",
                &[&client_id],
            )
            .await?;
        Ok(n > 0)
    }

    async fn prune_unused_clients(&self, cutoff: u64) -> Result<u64, StoreError> {
        self.execute(
            "DELETE FROM clients WHERE client_id IN (
                 SELECT client_id FROM clients WHERE last_used IS NULL AND created_at < $1
                 FOR UPDATE SKIP LOCKED)",
            &[&to_db(cutoff)],
        )
        .await
    }

    // ---- authorization codes ----

    async fn put_code(&self, code: &StoredCode) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO codes (code_sha256, client_id, redirect_uri, redirect_uri_given,
                 code_challenge, resource, scope, subject, expires_at, redeemed_family)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &code.code_sha256,
                &code.client_id,
                &code.redirect_uri,
                &code.redirect_uri_given,
                &code.code_challenge,
                &code.resource,
                &code.scope,
                &code.subject,
                &to_db(code.expires_at),
                &code.redeemed_family,
            ],
        )
        .await?;
        Ok(())
    }

    async fn code(&self, code_sha256: &str) -> Result<Option<StoredCode>, StoreError> {
        self.query_opt(
            "SELECT code_sha256, client_id, redirect_uri, redirect_uri_given, code_challenge,
                 resource, scope, subject, expires_at, redeemed_family
             FROM codes WHERE code_sha256 = $1",
            &[&code_sha256],
        )
        .await?
        .as_ref()
        .map(stored_code)
        .transpose()
    }

    async fn redeem_code(
        &self,
        code_sha256: &str,
        family: &str,
        now: u64,
    ) -> Result<bool, StoreError> {
        // Concurrent updates of the row wait for the first to commit, then re-check the
        // WHERE against the committed row: at most one sees `redeemed_family IS NULL`.
        let n = self
            .execute(
                "UPDATE codes SET redeemed_family = $2
                 WHERE code_sha256 = $1 AND redeemed_family IS NULL AND expires_at > $3",
                &[&code_sha256, &family, &to_db(now)],
            )
            .await?;
        Ok(n == 1)
    }

    // ---- pending sign-ins ----

    async fn put_pending(
        &self,
        id_sha256: &str,
        caller: &str,
        document: &str,
        expires_at: u64,
        per_caller: u32,
        global: u32,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        // Counting and evicting read the whole table: one instance at a time.
        tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({PENDING_LOCK})"))
            .await?;
        let now = to_db(crate::now());
        let expired = tx
            .prepare_cached("DELETE FROM pending_signins WHERE expires_at <= $1")
            .await?;
        tx.execute(&expired, &[&now]).await?;
        // The caller's own oldest go first, down to one below its quota.
        let own = tx
            .prepare_cached(
                "DELETE FROM pending_signins WHERE seq IN (
                     SELECT seq FROM pending_signins WHERE caller = $1 ORDER BY seq
                     LIMIT GREATEST(
                         (SELECT COUNT(*) FROM pending_signins WHERE caller = $1) - $2 + 1, 0))",
            )
            .await?;
        tx.execute(&own, &[&caller, &i64::from(per_caller)]).await?;
        let count = tx
            .prepare_cached("SELECT COUNT(*) FROM pending_signins")
            .await?;
        let mut total: i64 = tx.query_one(&count, &[]).await?.try_get(0)?;
        // A full table: the caller holding the most loses its oldest (ties: the one whose
        // oldest is newest), so one flooding caller cannot push everyone else out.
        let heaviest = tx
            .prepare_cached(
                "DELETE FROM pending_signins WHERE seq = (
                     SELECT MIN(seq) FROM pending_signins WHERE caller = (
                         SELECT caller FROM pending_signins GROUP BY caller
                         ORDER BY COUNT(*) DESC, MIN(seq) DESC LIMIT 1))",
            )
            .await?;
        while total > 0 && total >= i64::from(global) {
            if tx.execute(&heaviest, &[]).await? == 0 {
                break;
            }
            total -= 1;
        }
        let insert = tx
            .prepare_cached(
                "INSERT INTO pending_signins (id_sha256, caller, document, expires_at)
                 VALUES ($1, $2, $3, $4)",
            )
            .await?;
        tx.execute(
            &insert,
            &[&id_sha256, &caller, &document, &to_db(expires_at)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn take_pending(&self, id_sha256: &str, now: u64) -> Result<Option<String>, StoreError> {
        // One DELETE: of two instances taking the same id, one gets the row.
        let row = self
            .query_opt(
                "DELETE FROM pending_signins WHERE id_sha256 = $1 RETURNING document, expires_at",
                &[&id_sha256],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let expires_at: i64 = row.try_get(1)?;
        if expires_at <= to_db(now) {
            return Ok(None);
        }
        Ok(Some(row.try_get(0)?))
    }

    // ---- refresh tokens ----

    async fn put_refresh(&self, r: &RefreshRecord) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO refresh_tokens (token_sha256, family, client_id, subject, scope,
                 resource, issued_at, expires_at, jkt)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &r.token_sha256,
                &r.family,
                &r.client_id,
                &r.subject,
                &r.scope,
                &r.resource,
                &to_db(r.issued_at),
                &to_db(r.expires_at),
                &r.jkt,
            ],
        )
        .await?;
        Ok(())
    }

    async fn peek_refresh(
        &self,
        token_sha256: &str,
        now: u64,
        grace: u64,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        self.query_opt(
            &format!(
                "SELECT {REFRESH_COLUMNS} FROM refresh_tokens
                 WHERE token_sha256 = $1 AND revoked_at IS NULL AND expires_at > $2
                   AND (used_at IS NULL OR used_at > $2 - $3)"
            ),
            &[&token_sha256, &to_db(now), &to_db(grace)],
        )
        .await?
        .as_ref()
        .map(refresh_record)
        .transpose()
    }

    async fn use_refresh(
        &self,
        token_sha256: &str,
        client_id: &str,
        now: u64,
        grace: u64,
        successor: &RefreshRecord,
    ) -> Result<RefreshUse, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        // A token's family never changes: read it unlocked, then take the family's lock
        // before the token's row lock (the order revocations follow too).
        let family = tx
            .prepare_cached("SELECT family FROM refresh_tokens WHERE token_sha256 = $1")
            .await?;
        let Some(row) = tx.query_opt(&family, &[&token_sha256]).await? else {
            return Ok(RefreshUse::Invalid);
        };
        let family: String = row.try_get(0)?;
        lock_family(&tx, &family).await?;
        // The row lock makes concurrent uses of one token take turns; each sees the
        // committed `used_at` of the one before.
        let select = tx
            .prepare_cached(&format!(
                "SELECT {REFRESH_COLUMNS}, used_at, revoked_at, grace_uses FROM refresh_tokens
                 WHERE token_sha256 = $1 FOR UPDATE"
            ))
            .await?;
        let Some(row) = tx.query_opt(&select, &[&token_sha256]).await? else {
            return Ok(RefreshUse::Invalid);
        };
        let record = refresh_record(&row)?;
        let used_at: Option<i64> = row.try_get(9)?;
        let revoked_at: Option<i64> = row.try_get(10)?;
        let grace_uses: i64 = row.try_get(11)?;
        if record.client_id != client_id || revoked_at.is_some() || record.expires_at <= now {
            return Ok(RefreshUse::Invalid);
        }
        let outcome = match used_at.map(from_db) {
            None => {
                let mark = tx
                    .prepare_cached(
                        "UPDATE refresh_tokens SET used_at = $2 WHERE token_sha256 = $1",
                    )
                    .await?;
                tx.execute(&mark, &[&token_sha256, &to_db(now)]).await?;
                RefreshUse::Fresh(record)
            }
            Some(used) if now.saturating_sub(used) < grace => {
                if grace_uses >= super::GRACE_REISSUES {
                    // Dropping `tx` rolls back (nothing was written).
                    return Ok(RefreshUse::GraceSpent);
                }
                let count = tx
                    .prepare_cached(
                        "UPDATE refresh_tokens SET grace_uses = grace_uses + 1
                         WHERE token_sha256 = $1",
                    )
                    .await?;
                tx.execute(&count, &[&token_sha256]).await?;
                RefreshUse::Grace(record)
            }
            Some(_) => {
                let revoke = tx
                    .prepare_cached(
                        "UPDATE refresh_tokens SET revoked_at = $2
                         WHERE family = $1 AND revoked_at IS NULL",
                    )
                    .await?;
                tx.execute(&revoke, &[&record.family, &to_db(now)]).await?;
                revoke_opaque_family(&tx, &record.family, to_db(now)).await?;
                RefreshUse::Reused(record)
            }
        };
        if let RefreshUse::Fresh(record) | RefreshUse::Grace(record) = &outcome {
            // Under the family's lock: a family revoked before it stays revoked.
            let revoked = tx
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM refresh_tokens
                                    WHERE family = $1 AND revoked_at IS NOT NULL)",
                )
                .await?;
            let row = tx.query_one(&revoked, &[&record.family]).await?;
            if row.try_get::<_, bool>(0)? {
                // Dropping `tx` rolls back: the presented token is left as it was.
                return Ok(RefreshUse::Invalid);
            }
            let insert = tx
                .prepare_cached(
                    "INSERT INTO refresh_tokens (token_sha256, family, client_id, subject,
                         scope, resource, issued_at, expires_at, jkt)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .await?;
            tx.execute(
                &insert,
                &[
                    &successor.token_sha256,
                    &record.family,
                    &record.client_id,
                    &record.subject,
                    &successor.scope,
                    &record.resource,
                    &to_db(successor.issued_at),
                    &to_db(successor.expires_at),
                    &record.jkt,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn revoke_family(&self, family: &str) -> Result<bool, StoreError> {
        let now = to_db(crate::now());
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        lock_family(&tx, family).await?;
        let revoke = tx
            .prepare_cached(
                "WITH revoked AS (
                     UPDATE refresh_tokens SET revoked_at = $2
                     WHERE family = $1 AND revoked_at IS NULL RETURNING expires_at)
                 SELECT COUNT(*) FROM revoked WHERE expires_at > $2",
            )
            .await?;
        let row = tx.query_one(&revoke, &[&family, &now]).await?;
        let live = row.try_get::<_, i64>(0)? > 0;
        revoke_opaque_family(&tx, family, now).await?;
        tx.commit().await?;
        Ok(live)
    }

    async fn revoke_refresh(
        &self,
        token_sha256: &str,
        client_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = self
            .query_opt(
                "SELECT family FROM refresh_tokens WHERE token_sha256 = $1 AND client_id = $2",
                &[&token_sha256, &client_id],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let family: String = row.try_get(0)?;
        // Takes the family's lock, like a rotation.
        self.revoke_family(&family).await?;
        Ok(Some(family))
    }

    async fn family_revoked(&self, family: &str) -> Result<bool, StoreError> {
        let row = self
            .query_opt(
                "SELECT EXISTS (SELECT 1 FROM refresh_tokens
                                WHERE family = $1 AND revoked_at IS NOT NULL)",
                &[&family],
            )
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<_, bool>(0)?,
            None => false,
        })
    }

    // ---- opaque access tokens ----

    async fn put_opaque(&self, t: &OpaqueToken) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        // Under the family's lock, like a rotation: a family revoked before stays so.
        let revoked: Option<i64> = match &t.family {
            Some(family) => {
                lock_family(&tx, family).await?;
                let select = tx
                    .prepare_cached("SELECT MAX(revoked_at) FROM refresh_tokens WHERE family = $1")
                    .await?;
                tx.query_one(&select, &[family]).await?.try_get(0)?
            }
            None => None,
        };
        let insert = tx
            .prepare_cached(&format!(
                "INSERT INTO opaque_tokens ({OPAQUE_COLUMNS}, revoked_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ))
            .await?;
        tx.execute(
            &insert,
            &[
                &t.token_sha256,
                &t.family,
                &t.client_id,
                &t.subject,
                &t.scope,
                &t.resource,
                &t.jti,
                &t.jkt,
                &to_db(t.issued_at),
                &to_db(t.expires_at),
                &revoked,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn opaque(
        &self,
        token_sha256: &str,
        now: u64,
    ) -> Result<Option<OpaqueToken>, StoreError> {
        self.query_opt(
            &format!(
                "SELECT {OPAQUE_COLUMNS} FROM opaque_tokens
                 WHERE token_sha256 = $1 AND revoked_at IS NULL AND expires_at > $2"
            ),
            &[&token_sha256, &to_db(now)],
        )
        .await?
        .as_ref()
        .map(opaque_token)
        .transpose()
    }

    async fn revoke_opaque(
        &self,
        token_sha256: &str,
        client_id: &str,
    ) -> Result<Option<Option<String>>, StoreError> {
        let row = self
            .query_opt(
                "UPDATE opaque_tokens SET revoked_at = COALESCE(revoked_at, $3)
                 WHERE token_sha256 = $1 AND client_id = $2 RETURNING family",
                &[&token_sha256, &client_id, &to_db(crate::now())],
            )
            .await?;
        row.map(|row| Ok(row.try_get::<_, Option<String>>(0)?))
            .transpose()
    }

    async fn grants(
        &self,
        subject: Option<&str>,
        client_id: Option<&str>,
        now: u64,
        limit: u32,
    ) -> Result<Vec<Grant>, StoreError> {
        let rows = self
            .query(
                "SELECT family, MIN(client_id), MIN(subject),
                     (ARRAY_AGG(scope ORDER BY issued_at DESC, token_sha256))[1],
                     (ARRAY_AGG(resource ORDER BY issued_at DESC, token_sha256))[1],
                     MIN(issued_at), MAX(issued_at),
                     (ARRAY_AGG(expires_at ORDER BY issued_at DESC, token_sha256))[1]
                 FROM refresh_tokens
                 WHERE revoked_at IS NULL
                   AND ($1::TEXT IS NULL OR subject = $1)
                   AND ($2::TEXT IS NULL OR client_id = $2)
                 GROUP BY family
                 HAVING MAX(expires_at) > $3
                 ORDER BY MAX(issued_at) DESC, family
                 LIMIT $4",
                &[
                    &subject,
                    &client_id,
                    &to_db(now),
                    &i64::from(limit.min(MAX_LIST)),
                ],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Grant {
                    family: row.try_get(0)?,
                    client_id: row.try_get(1)?,
                    subject: row.try_get(2)?,
                    scope: row.try_get(3)?,
                    resource: row.try_get(4)?,
                    created_at: from_db(row.try_get(5)?),
                    last_used: from_db(row.try_get(6)?),
                    expires_at: from_db(row.try_get(7)?),
                })
            })
            .collect()
    }

    // ---- client assertions ----

    async fn use_assertion_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: u64,
    ) -> Result<bool, StoreError> {
        // A row left from an assertion that has expired (not yet purged) may be reused.
        let n = self
            .execute(
                "INSERT INTO assertion_jtis (client_id, jti, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (client_id, jti) DO UPDATE SET expires_at = EXCLUDED.expires_at
                 WHERE assertion_jtis.expires_at <= $4",
                &[&client_id, &jti, &to_db(expires_at), &to_db(crate::now())],
            )
            .await?;
        Ok(n == 1)
    }

    // ---- client metadata documents ----

    async fn cimd_document(&self, url: &str) -> Result<Option<(Client, u64)>, StoreError> {
        let row = self
            .query_opt(
                "SELECT document, fetched_at FROM cimd_documents WHERE url = $1",
                &[&url],
            )
            .await?;
        row.map(|row| {
            let document: String = row.try_get(0)?;
            let client = serde_json::from_str(&document).map_err(json_error)?;
            Ok((client, from_db(row.try_get(1)?)))
        })
        .transpose()
    }

    async fn put_cimd_document(
        &self,
        url: &str,
        client: &Client,
        fetched_at: u64,
    ) -> Result<(), StoreError> {
        let document = serde_json::to_string(client).map_err(json_error)?;
        self.execute(
            "INSERT INTO cimd_documents (url, document, fetched_at) VALUES ($1, $2, $3)
             ON CONFLICT (url) DO UPDATE
                 SET document = EXCLUDED.document, fetched_at = EXCLUDED.fetched_at
                 WHERE cimd_documents.fetched_at <= EXCLUDED.fetched_at",
            &[&url, &document, &to_db(fetched_at)],
        )
        .await?;
        Ok(())
    }

    // ---- signing keys ----

    async fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let rows = self
            .query(
                "SELECT kid, pkcs8, created_at, retired_at FROM signing_keys
                 ORDER BY created_at DESC, retired_at DESC NULLS FIRST, kid",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredKey {
                    kid: row.try_get(0)?,
                    pkcs8: row.try_get(1)?,
                    created_at: from_db(row.try_get(2)?),
                    retired_at: row.try_get::<_, Option<i64>>(3)?.map(from_db),
                })
            })
            .collect()
    }

    async fn create_first_key(&self, key: &StoredKey) -> Result<bool, StoreError> {
        // The unique index on the current key (migration 2) makes every insert but the
        // first a no-op, across instances.
        let n = self
            .execute(
                "INSERT INTO signing_keys (kid, pkcs8, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&key.kid, &key.pkcs8, &to_db(key.created_at)],
            )
            .await?;
        Ok(n == 1)
    }

    async fn rotate_in(&self, key: &StoredKey, now: u64) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        // Two rotations at once would each retire the key they saw and then collide on
        // the current-key index: take turns, each statement seeing the one before.
        tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({KEYS_LOCK})"))
            .await?;
        tx.execute(
            "UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL",
            &[&to_db(now)],
        )
        .await?;
        tx.execute(
            "INSERT INTO signing_keys (kid, pkcs8, created_at) VALUES ($1, $2, $3)",
            &[&key.kid, &key.pkcs8, &to_db(key.created_at)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn prune_keys(&self, cutoff: u64) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < $1",
            &[&to_db(cutoff)],
        )
        .await?;
        Ok(())
    }

    async fn replace_key(&self, kid: &str, old: &[u8], new: &[u8]) -> Result<bool, StoreError> {
        let n = self
            .execute(
                "UPDATE signing_keys SET pkcs8 = $3 WHERE kid = $1 AND pkcs8 = $2",
                &[&kid, &old, &new],
            )
            .await?;
        Ok(n == 1)
    }

    // ---- audit trail ----

    async fn record_event(&self, e: &AuditEvent) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO audit_events (at, kind, client_id, subject, resource, scope, address,
                 outcome, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &to_db(e.at),
                &e.kind,
                &e.client_id,
                &e.subject,
                &e.resource,
                &e.scope,
                &e.address,
                &e.outcome,
                &e.detail,
            ],
        )
        .await?;
        Ok(())
    }

    async fn events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        // Only the set conditions go into the statement, so each shape gets a plan that
        // uses its index.
        let since = filter.since.map(to_db);
        let until = filter.until.map(to_db);
        let limit = i64::from(filter.limit.min(MAX_LIST));
        let mut sql = String::from(
            "SELECT id, at, kind, client_id, subject, resource, scope, address, outcome, detail
             FROM audit_events WHERE TRUE",
        );
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        let conditions: [(&str, Option<&(dyn ToSql + Sync)>); 6] = [
            ("client_id =", filter.client_id.as_ref().map(|v| v as _)),
            ("subject =", filter.subject.as_ref().map(|v| v as _)),
            ("kind =", filter.kind.as_ref().map(|v| v as _)),
            ("at >=", since.as_ref().map(|v| v as _)),
            ("at <", until.as_ref().map(|v| v as _)),
            ("id <", filter.before_id.as_ref().map(|v| v as _)),
        ];
        for (condition, value) in conditions {
            if let Some(value) = value {
                params.push(value);
                sql.push_str(&format!(" AND {condition} ${}", params.len()));
            }
        }
        params.push(&limit);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
        let rows = self.query(&sql, &params).await?;
        rows.iter().map(audit_event).collect()
    }

    // ---- cleanup ----

    /// Each kind is one `DELETE` of a batch whose rows are locked `SKIP LOCKED`: instances
    /// purging at the same time take different rows instead of waiting on (or deadlocking
    /// over) each other's.
    async fn purge(
        &self,
        now: u64,
        cimd_cutoff: u64,
        audit_cutoff: u64,
        batch: u32,
    ) -> Result<Purged, StoreError> {
        let batch = i64::from(batch);
        let codes = self
            .execute(
                "DELETE FROM codes WHERE code_sha256 IN (
                     SELECT code_sha256 FROM codes WHERE expires_at < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&to_db(now.saturating_sub(CODE_KEEP_SECS)), &batch],
            )
            .await?;
        let pending = self
            .execute(
                "DELETE FROM pending_signins WHERE seq IN (
                     SELECT seq FROM pending_signins WHERE expires_at <= $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&to_db(now), &batch],
            )
            .await?;
        let refresh_tokens = self
            .execute(
                "DELETE FROM refresh_tokens WHERE token_sha256 IN (
                     SELECT token_sha256 FROM refresh_tokens
                     WHERE expires_at < $1 OR revoked_at < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&to_db(now.saturating_sub(REFRESH_KEEP_SECS)), &batch],
            )
            .await?;
        let assertions = self
            .execute(
                "DELETE FROM assertion_jtis WHERE (client_id, jti) IN (
                     SELECT client_id, jti FROM assertion_jtis WHERE expires_at <= $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&to_db(now), &batch],
            )
            .await?;
        let cimd_documents = self
            .execute(
                "DELETE FROM cimd_documents WHERE url IN (
                     SELECT url FROM cimd_documents WHERE fetched_at < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&to_db(cimd_cutoff), &batch],
            )
            .await?;
        let audit_events = self
            .execute(
                "DELETE FROM audit_events WHERE id IN (
                     SELECT id FROM audit_events WHERE at < $1
                     ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&to_db(audit_cutoff), &batch],
            )
            .await?;
        let opaque_tokens = self
            .execute(
                "DELETE FROM opaque_tokens WHERE token_sha256 IN (
                     SELECT token_sha256 FROM opaque_tokens WHERE expires_at <= $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&to_db(now), &batch],
            )
            .await?;
        Ok(Purged {
            codes,
            pending,
            refresh_tokens,
            assertions,
            cimd_documents,
            audit_events,
            opaque_tokens,
        })
    }
}

/// Run with `BMM_AS_TEST_DATABASE_URL` set (`cargo xtask test-postgres`, and CI); without
/// it they pass without checking anything, as the rest of the suite runs on SQLite.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A store on a fresh database, or `None` without a test server.
    async fn fresh() -> Option<(PgStore, String)> {
        let admin = std::env::var("BMM_AS_TEST_DATABASE_URL").ok()?;
        let mut b = [0u8; 8];
        aws_lc_rs::rand::fill(&mut b).unwrap();
        let name = format!(
            "bmm_u_{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        );
        let (client, connection) = tokio_postgres::connect(&admin, NoTls).await.unwrap();
        let task = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        drop(client);
        let _ = task.await;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Some((PgStore::connect(&url, 8, None).await.unwrap(), url))
    }

    fn code(hash: &str, expires_at: u64) -> StoredCode {
        StoredCode {
            code_sha256: hash.to_owned(),
            client_id: "c1".to_owned(),
            redirect_uri: "http://127.0.0.1/cb".to_owned(),
            redirect_uri_given: true,
            code_challenge: "x".to_owned(),
            resource: "http://r".to_owned(),
            scope: "s".to_owned(),
            subject: "alice".to_owned(),
            expires_at,
            redeemed_family: None,
        }
    }

    fn refresh(hash: &str, family: &str, now: u64) -> RefreshRecord {
        RefreshRecord {
            token_sha256: hash.to_owned(),
            family: family.to_owned(),
            client_id: "c1".to_owned(),
            subject: "alice".to_owned(),
            scope: "s".to_owned(),
            resource: "http://r".to_owned(),
            issued_at: now,
            expires_at: now + 3600,
            jkt: None,
        }
    }

    fn key(kid: &str, created_at: u64) -> StoredKey {
        StoredKey {
            kid: kid.to_owned(),
            pkcs8: vec![1, 2, 3],
            created_at,
            retired_at: None,
        }
    }

    /// Runs without a server too: a refused or failed connection never shows the password.
    #[tokio::test]
    async fn failed_connections_never_carry_the_password() {
        // Port 1 on loopback: nothing listens, the connection is refused (with and without
        // TLS: the TCP connection fails before any handshake).
        for url in [
            "postgres://bmm:s3cret-pw@127.0.0.1:1/x?sslmode=require",
            "postgres://bmm:s3cret-pw@127.0.0.1:1/x",
        ] {
            let error = PgStore::connect(url, 1, None)
                .await
                .unwrap_err()
                .to_string();
            assert!(error.contains("postgres"), "{error}");
            assert!(!error.contains("s3cret-pw"), "{error}");
        }
        let error = PgStore::connect("postgres://bmm:s3cret-pw@127.0.0.1:1/x?bogus=1", 1, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(!error.contains("s3cret-pw"), "{error}");
    }

    /// A CA file says TLS was meant: without `sslmode=require` it is refused, as is a CA
    /// file that cannot be read or holds no certificate (before anything is connected).
    #[tokio::test]
    async fn a_ca_file_without_require_or_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        for url in [
            "postgres://bmm@127.0.0.1:1/x",
            "postgres://bmm@127.0.0.1:1/x?sslmode=prefer",
            "postgres://bmm@127.0.0.1:1/x?sslmode=disable",
        ] {
            let error = PgStore::connect(url, 1, Some(&empty))
                .await
                .unwrap_err()
                .to_string();
            assert!(error.contains("sslmode=require"), "{url}: {error}");
        }
        let url = "postgres://bmm@127.0.0.1:1/x?sslmode=require";
        let error = PgStore::connect(url, 1, Some(&empty))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("holds no PEM certificate"), "{error}");
        let missing = dir.path().join("missing.pem");
        let error = PgStore::connect(url, 1, Some(&missing))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cannot read the database CA file"),
            "{error}"
        );
    }

    #[test]
    fn only_hosts_off_this_machine_are_remote() {
        let remote = |url: &str| {
            tokio_postgres::Config::from_str(url)
                .unwrap()
                .get_hosts()
                .iter()
                .any(is_remote)
        };
        assert!(remote("postgres://db.internal/bmm"));
        assert!(remote("postgres://127.0.0.1,10.0.0.5/bmm"));
        assert!(!remote("postgres://127.0.0.1/bmm"));
        assert!(!remote("postgres://[::1]/bmm"));
        assert!(!remote("postgres://LocalHost/bmm"));
        assert!(!remote("host=/run/postgresql dbname=bmm"));
    }

    #[test]
    fn libpq_verify_modes_are_read_as_require() {
        assert_eq!(
            verify_modes_as_require("postgres://h/db?sslmode=verify-full&application_name=a"),
            "postgres://h/db?sslmode=require&application_name=a"
        );
        assert_eq!(
            verify_modes_as_require("postgresql://h/db?x=1&sslmode=verify-ca"),
            "postgresql://h/db?x=1&sslmode=require"
        );
        assert_eq!(
            verify_modes_as_require("host=h sslmode=verify-full dbname=d"),
            "host=h sslmode=require dbname=d"
        );
        // Only a whole parameter: a password or another value is left alone.
        for url in [
            "postgres://u:sslmode=verify-full@h/db",
            "postgres://h/db?sslmode=verify-fullx",
            "postgres://h/db?sslmode=disable",
        ] {
            assert_eq!(verify_modes_as_require(url), url);
        }
        let mode = |url: &str| {
            tokio_postgres::Config::from_str(&verify_modes_as_require(url))
                .unwrap()
                .get_ssl_mode()
        };
        assert_eq!(
            mode("postgres://h/db?sslmode=verify-full"),
            SslMode::Require
        );
        assert_eq!(mode("postgres://h/db"), SslMode::Prefer);
    }

    #[tokio::test]
    async fn instances_starting_together_migrate_once_and_a_newer_schema_is_refused() {
        let Some((store, url)) = fresh().await else {
            return;
        };
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { PgStore::connect(&url, 2, None).await.map(|_| ()) })
            })
            .collect();
        for start in starts {
            start.await.unwrap().unwrap();
        }
        let conn = store.conn().await.unwrap();
        let versions: Vec<i64> = conn
            .query(
                "SELECT version FROM bmm_schema_migrations ORDER BY version",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, (1..=migrate::LATEST).collect::<Vec<_>>());
        conn.execute(
            "INSERT INTO bmm_schema_migrations (version, applied_at) VALUES ($1, 0)",
            &[&(migrate::LATEST + 1)],
        )
        .await
        .unwrap();
        let error = PgStore::connect(&url, 1, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("upgrade bmm-as"), "{error}");
        assert!(
            !error.contains(&url),
            "the URL stays out of errors: {error}"
        );
    }

    #[tokio::test]
    async fn of_fifty_concurrent_redemptions_one_wins() {
        let Some((store, _)) = fresh().await else {
            return;
        };
        let store = Arc::new(store);
        let now = crate::now();
        store.put_code(&code("h1", now + 60)).await.unwrap();
        let tries: Vec<_> = (0..50)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.redeem_code("h1", &format!("f{i}"), now).await })
            })
            .collect();
        let mut won = 0;
        for t in tries {
            won += usize::from(t.await.unwrap().unwrap());
        }
        assert_eq!(won, 1);
        let stored = store.code("h1").await.unwrap().unwrap();
        assert!(stored.redeemed_family.is_some());
        // Expired codes are never redeemed.
        store.put_code(&code("h2", now - 1)).await.unwrap();
        assert!(!store.redeem_code("h2", "f", now).await.unwrap());
    }

    #[tokio::test]
    async fn refresh_fresh_then_grace_then_reuse_revokes_and_another_client_changes_nothing() {
        let Some((store, _)) = fresh().await else {
            return;
        };
        let store = Arc::new(store);
        let now = crate::now();
        store.put_refresh(&refresh("t1", "fam", now)).await.unwrap();
        assert_eq!(
            store
                .use_refresh("t1", "other", now, 5, &refresh("x", "", now))
                .await
                .unwrap(),
            RefreshUse::Invalid
        );
        // Twenty at once within the grace: one Fresh, the rest Grace, nothing revoked.
        let uses: Vec<_> = (0..20)
            .map(|i| {
                let store = store.clone();
                let successor = refresh(&format!("s{i}"), "", now);
                tokio::spawn(async move { store.use_refresh("t1", "c1", now, 5, &successor).await })
            })
            .collect();
        let (mut fresh_uses, mut grace) = (0, 0);
        for u in uses {
            match u.await.unwrap().unwrap() {
                RefreshUse::Fresh(_) => fresh_uses += 1,
                RefreshUse::Grace(_) => grace += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((fresh_uses, grace), (1, 19));
        // Each got its successor, in the used token's family.
        let s7 = store.peek_refresh("s7", now, 5).await.unwrap().unwrap();
        assert_eq!((s7.family.as_str(), s7.subject.as_str()), ("fam", "alice"));
        // Re-issues within the grace are capped; past the cap nothing is revoked.
        for i in 19..crate::store::GRACE_REISSUES {
            let successor = refresh(&format!("g{i}"), "", now);
            assert!(matches!(
                store
                    .use_refresh("t1", "c1", now, 5, &successor)
                    .await
                    .unwrap(),
                RefreshUse::Grace(_)
            ));
        }
        assert_eq!(
            store
                .use_refresh("t1", "c1", now, 5, &refresh("over", "", now))
                .await
                .unwrap(),
            RefreshUse::GraceSpent
        );
        assert!(store.peek_refresh("over", now, 5).await.unwrap().is_none());
        assert!(store.peek_refresh("s7", now, 5).await.unwrap().is_some());
        assert!(
            store
                .peek_refresh("t1", now + 4, 5)
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .peek_refresh("t1", now + 5, 5)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store
                .grants(Some("alice"), None, now, 10)
                .await
                .unwrap()
                .len(),
            1
        );
        // After the grace: reuse, the family is revoked.
        store.put_refresh(&refresh("t2", "fam", now)).await.unwrap();
        assert!(matches!(
            store
                .use_refresh("t1", "c1", now + 5, 5, &refresh("y1", "", now))
                .await
                .unwrap(),
            RefreshUse::Reused(_)
        ));
        assert_eq!(
            store
                .use_refresh("t2", "c1", now + 5, 5, &refresh("y2", "", now))
                .await
                .unwrap(),
            RefreshUse::Invalid
        );
        assert!(
            store
                .grants(None, Some("c1"), now, 10)
                .await
                .unwrap()
                .is_empty()
        );
        // Strict mode: any second use is a reuse.
        store
            .put_refresh(&refresh("t3", "fam3", now))
            .await
            .unwrap();
        assert!(matches!(
            store
                .use_refresh("t3", "c1", now, 0, &refresh("y3", "", now))
                .await
                .unwrap(),
            RefreshUse::Fresh(_)
        ));
        assert!(matches!(
            store
                .use_refresh("t3", "c1", now, 0, &refresh("y4", "", now))
                .await
                .unwrap(),
            RefreshUse::Reused(_)
        ));
        // Revocation by the owner only.
        store
            .put_refresh(&refresh("t4", "fam4", now))
            .await
            .unwrap();
        assert_eq!(store.revoke_refresh("t4", "other").await.unwrap(), None);
        assert_eq!(
            store.revoke_refresh("t4", "c1").await.unwrap().as_deref(),
            Some("fam4")
        );
        assert!(!store.revoke_family("fam4").await.unwrap());
    }

    #[tokio::test]
    async fn one_first_key_and_rotations_leave_one_current_key() {
        let Some((store, _)) = fresh().await else {
            return;
        };
        let store = Arc::new(store);
        let creates: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.create_first_key(&key(&format!("k{i}"), 100)).await },
                )
            })
            .collect();
        let mut created = 0;
        for c in creates {
            created += usize::from(c.await.unwrap().unwrap());
        }
        assert_eq!(created, 1);
        let rotations: Vec<_> = (0..4)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move { store.rotate_in(&key(&format!("r{i}"), 200), 300).await })
            })
            .collect();
        for r in rotations {
            r.await.unwrap().unwrap();
        }
        let keys = store.keys().await.unwrap();
        assert_eq!(keys.len(), 5);
        assert_eq!(keys.iter().filter(|k| k.retired_at.is_none()).count(), 1);
        assert!(keys[0].retired_at.is_none(), "newest first: {keys:?}");
        store.prune_keys(301).await.unwrap();
        assert_eq!(store.keys().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn pending_sign_ins_are_single_use_and_bounded_per_caller_and_overall() {
        let Some((store, _)) = fresh().await else {
            return;
        };
        let later = crate::now() + 600;
        for i in 0..3 {
            store
                .put_pending(&format!("a{i}"), "A", "{}", later, 2, 4)
                .await
                .unwrap();
        }
        // A's oldest went when its third arrived.
        assert_eq!(store.take_pending("a0", later - 1).await.unwrap(), None);
        assert_eq!(
            store
                .take_pending("a1", later - 1)
                .await
                .unwrap()
                .as_deref(),
            Some("{}")
        );
        assert_eq!(store.take_pending("a1", later - 1).await.unwrap(), None);
        store
            .put_pending("a3", "A", "{}", later, 2, 4)
            .await
            .unwrap();
        store
            .put_pending("b0", "B", "{}", later, 2, 4)
            .await
            .unwrap();
        store
            .put_pending("c0", "C", "{}", later, 2, 4)
            .await
            .unwrap();
        // Full (4): the caller holding the most (A, two) loses its oldest.
        store
            .put_pending("d0", "D", "{}", later, 2, 4)
            .await
            .unwrap();
        assert_eq!(store.take_pending("a2", later - 1).await.unwrap(), None);
        for id in ["a3", "b0", "c0", "d0"] {
            assert!(
                store.take_pending(id, later - 1).await.unwrap().is_some(),
                "{id}"
            );
        }
        // Expired: gone.
        store
            .put_pending("e0", "E", "{}", later, 2, 4)
            .await
            .unwrap();
        assert_eq!(store.take_pending("e0", later).await.unwrap(), None);
    }

    #[tokio::test]
    async fn assertion_jtis_clients_cimd_audit_and_purge() {
        let Some((store, _)) = fresh().await else {
            return;
        };
        let now = crate::now();
        assert!(store.use_assertion_jti("c1", "j", now + 60).await.unwrap());
        assert!(!store.use_assertion_jti("c1", "j", now + 60).await.unwrap());
        assert!(store.use_assertion_jti("c2", "j", now + 60).await.unwrap());

        let client = Client {
            client_id: "c1".to_owned(),
            secret_sha256: None,
            redirect_uris: vec!["http://127.0.0.1/cb".to_owned()],
            client_name: Some("one".to_owned()),
            token_endpoint_auth_method: "none".to_owned(),
            created_at: now - 100,
            grant_types: vec![],
            jwks: None,
            jwks_uri: None,
            scope: None,
        };
        store.put_client(&client).await.unwrap();
        assert!(store.put_client(&client).await.is_err(), "ids are unique");
        assert_eq!(store.client("c1").await.unwrap().as_ref(), Some(&client));
        assert_eq!(store.unused_clients().await.unwrap(), 1);
        store.mark_client_used("c1", now).await.unwrap();
        assert!(store.client_used("c1").await.unwrap());
        assert!(!store.delete_unused_client("c1").await.unwrap());
        assert_eq!(store.prune_unused_clients(now).await.unwrap(), 0);
        let unused = Client {
            client_id: "c2".to_owned(),
            ..client.clone()
        };
        store.put_client(&unused).await.unwrap();
        assert_eq!(store.prune_unused_clients(now - 100).await.unwrap(), 0);
        assert_eq!(store.prune_unused_clients(now - 99).await.unwrap(), 1);
        assert_eq!(store.client("c2").await.unwrap(), None);
        let listed = store.clients(10, 0).await.unwrap();
        assert_eq!(listed[0].last_used, Some(now));

        store
            .put_cimd_document("https://x/c", &client, now)
            .await
            .unwrap();
        store
            .put_cimd_document("https://x/c", &client, now + 1)
            .await
            .unwrap();
        assert_eq!(
            store
                .cimd_document("https://x/c")
                .await
                .unwrap()
                .map(|(_, t)| t),
            Some(now + 1)
        );

        for (i, kind) in ["sign_in", "refresh", "sign_in"].iter().enumerate() {
            store
                .record_event(&AuditEvent {
                    id: 0,
                    at: now - 10 + i as u64,
                    kind: (*kind).to_owned(),
                    client_id: Some("c1".to_owned()),
                    subject: Some("alice".to_owned()),
                    resource: None,
                    scope: None,
                    address: Some("127.0.0.1".to_owned()),
                    outcome: "ok".to_owned(),
                    detail: None,
                })
                .await
                .unwrap();
        }
        let sign_ins = store
            .events(&AuditFilter {
                kind: Some("sign_in".to_owned()),
                limit: 10,
                ..AuditFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(sign_ins.len(), 2);
        assert!(sign_ins[0].id > sign_ins[1].id, "newest first");
        let page = store
            .events(&AuditFilter {
                before_id: Some(sign_ins[0].id),
                since: Some(now - 10),
                until: Some(now),
                subject: Some("alice".to_owned()),
                client_id: Some("c1".to_owned()),
                limit: 1,
                ..AuditFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].kind, "refresh");

        store.put_code(&code("old", now - 601)).await.unwrap();
        store.put_code(&code("new", now + 60)).await.unwrap();
        let purged = store.purge(now, now + 2, now - 9, 1000).await.unwrap();
        assert_eq!(purged.codes, 1);
        assert_eq!(purged.cimd_documents, 1);
        assert_eq!(purged.audit_events, 1);
        assert!(store.code("new").await.unwrap().is_some());
    }
}
