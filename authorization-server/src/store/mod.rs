//! Durable state behind one async interface, [`Store`], with two backends:
//! [`SqliteStore`] (one SQLite file in the data directory, the embedded default) and
//! `PgStore` (a shared PostgreSQL database, so several AS instances serve together).
//!
//! Store rules:
//! 1. Everything single-use or rotating is decided by the database, in one statement or
//!    transaction, never by one process's memory: authorization codes (one redemption wins),
//!    refresh rotation, reuse detection and its grace period, pending sign-ins, client
//!    assertion `jti`s, the first signing key and rotations. Several instances on one
//!    database are therefore correct under races.
//! 2. Codes, refresh tokens, pending-request ids and client secrets are stored as SHA-256
//!    hashes (hex); the caller hashes them. No method takes or returns a plain secret.
//! 3. Both backends run the same numbered migrations at start-up inside a transaction (and,
//!    on PostgreSQL, under an advisory lock, so instances starting together do not race); a
//!    database whose schema is newer than the binary knows is refused with a clear error,
//!    never written to.
//! 4. Methods are async; the SQLite backend runs its blocking calls on tokio's blocking pool,
//!    so no runtime thread ever waits on the database.
//! 5. Times are seconds since the epoch (`u64`), stored as 64-bit integers.
//!
//! The data directory is created `0700` and the SQLite files are `0600` whatever the umask;
//! a database readable by group or others, or a directory they may write to, refuses the
//! start with the `chmod` to run ([`SqliteStore::open`]): the database holds the signing key.

pub(crate) mod migrate;
mod postgres;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Whether a `--database-url` names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Connects to the PostgreSQL database at `url` with a pool of `pool_size` connections
/// and brings its schema up to date ([`PgStore::connect`]; with `sslmode=require`, the
/// server's certificate is verified against the system's roots plus `ca_file`).
pub async fn connect_postgres(
    url: &str,
    pool_size: usize,
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(PgStore::connect(url, pool_size, ca_file).await?))
}

/// `url` with its password (if any) replaced by `***`, for logs and errors.
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            // libpq-style query parameters may carry the password (or name its file).
            let secret =
                |k: &str| k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("passfile");
            if u.query_pairs().any(|(k, _)| secret(&k)) {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if secret(&k) {
                            "***".to_owned()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "<unparseable database URL>".to_owned(),
    }
}

use crate::error::StoreError;

/// A registered OAuth client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    /// `bmm_<random>`, or the CIMD URL for metadata-document clients.
    pub client_id: String,
    /// SHA-256 (hex) of the client secret, for confidential clients.
    pub secret_sha256: Option<String>,
    /// Registered redirect URIs, matched exactly (loopback ports excepted).
    pub redirect_uris: Vec<String>,
    /// Human-readable name shown on the consent page.
    pub client_name: Option<String>,
    /// `none`, `client_secret_basic`, `client_secret_post` or `private_key_jwt`.
    pub token_endpoint_auth_method: String,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Grant types the client registered (empty: `authorization_code` and
    /// `refresh_token`, what clients stored before this field existed could use).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grant_types: Vec<String>,
    /// An RFC 7517 JWK Set (JSON text) for `private_key_jwt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Where the client publishes its JWK Set for `private_key_jwt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Scope a `client_credentials` client registered (space-separated; empty: the
    /// default scopes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// A registered client with when it last completed an authorization or used a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSummary {
    /// The client.
    pub client: Client,
    /// Seconds since the epoch; `None` if it never completed an authorization.
    pub last_used: Option<u64>,
}

/// One refresh token (stored by hash), part of a rotation family (a grant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshRecord {
    /// SHA-256 (hex) of the token.
    pub token_sha256: String,
    /// Every token rotated from the same grant shares the family.
    pub family: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The user.
    pub subject: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// The resource (audience) of the grant.
    pub resource: String,
    /// Seconds since the epoch.
    pub issued_at: u64,
    /// Seconds since the epoch.
    pub expires_at: u64,
    /// The DPoP key thumbprint (RFC 7638) the family is bound to: a refresh needs a proof
    /// signed with that key. Every token of a family has the family's.
    pub jkt: Option<String>,
}

/// An opaque access token (stored by hash) with the claims introspection answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpaqueToken {
    /// SHA-256 (hex) of the token.
    pub token_sha256: String,
    /// The grant (refresh family) it was issued under; `None` for `client_credentials`.
    pub family: Option<String>,
    /// The client it was issued to.
    pub client_id: String,
    /// The user (or the client, for `client_credentials`).
    pub subject: String,
    /// Scopes, space-separated.
    pub scope: String,
    /// The resource (audience).
    pub resource: String,
    /// Its unique id.
    pub jti: String,
    /// The DPoP key thumbprint it is bound to.
    pub jkt: Option<String>,
    /// Seconds since the epoch.
    pub issued_at: u64,
    /// Seconds since the epoch.
    pub expires_at: u64,
}

/// How many times one used refresh token may be re-issued within the grace period (after
/// its first rotation): enough for parallel refreshes by one host, a bound on what a thief
/// holding a used token gets in the grace period.
pub const GRACE_REISSUES: i64 = 32;

/// What using a refresh token found.
#[derive(Debug, PartialEq, Eq)]
pub enum RefreshUse {
    /// The token was live; it is now used up (its use time recorded).
    Fresh(RefreshRecord),
    /// The token was used less than the grace period ago: the family stays alive and the
    /// caller issues another live pair in the same family (parallel refreshes by one host).
    Grace(RefreshRecord),
    /// The token was used longer ago than the grace period: its family has been revoked
    /// (reuse detection).
    Reused(RefreshRecord),
    /// The token was used less than the grace period ago but already re-issued
    /// [`GRACE_REISSUES`] times: refused, nothing revoked, nothing issued.
    GraceSpent,
    /// Unknown, expired, revoked, or issued to another client (then left as it was).
    Invalid,
}

/// A live grant (refresh family) for the admin page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The family id.
    pub family: String,
    /// The client.
    pub client_id: String,
    /// The user.
    pub subject: String,
    /// Scopes of the newest token.
    pub scope: String,
    /// The resource.
    pub resource: String,
    /// When the first token of the family was issued.
    pub created_at: u64,
    /// When a token of the family was last issued.
    pub last_used: u64,
    /// When the newest token expires.
    pub expires_at: u64,
}

/// An authorization code (stored by hash) waiting to be redeemed, or redeemed and kept a
/// while so a replay revokes what it produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCode {
    /// SHA-256 (hex) of the code.
    pub code_sha256: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The redirect URI it was issued for.
    pub redirect_uri: String,
    /// Whether the authorization request named `redirect_uri` (then `/token` must too).
    pub redirect_uri_given: bool,
    /// PKCE S256 challenge.
    pub code_challenge: String,
    /// The resource.
    pub resource: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// The user.
    pub subject: String,
    /// Seconds since the epoch.
    pub expires_at: u64,
    /// Set once redeemed: the refresh family it produced.
    pub redeemed_family: Option<String>,
}

/// A signing key as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    /// The `kid`.
    pub kid: String,
    /// PKCS#8 DER of the private key, or its encryption under the key-encryption key
    /// (see `keys`); the store does not look inside.
    pub pkcs8: Vec<u8>,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Set when the key was replaced; it stays published until `retire_after`.
    pub retired_at: Option<u64>,
}

/// One security-relevant event (the audit trail). Never holds a token, code or secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Store-assigned, increasing (0 when recording).
    #[serde(default)]
    pub id: i64,
    /// Seconds since the epoch.
    pub at: u64,
    /// The event type, one of `audit::KINDS` (`registration`, `sign_in`, ...).
    pub kind: String,
    /// The client, when known.
    pub client_id: Option<String>,
    /// The user (or the client, for `client_credentials`), when known.
    pub subject: Option<String>,
    /// The resource, when one is involved.
    pub resource: Option<String>,
    /// Scopes, space-separated, when involved.
    pub scope: Option<String>,
    /// The caller's address (as the per-address limits see it).
    pub address: Option<String>,
    /// `ok`, or the refusal (an OAuth error code or a short reason).
    pub outcome: String,
    /// A short free-form detail (never a secret).
    pub detail: Option<String>,
}

/// Which audit events to list; every set field must match. Newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Exact client id.
    pub client_id: Option<String>,
    /// Exact subject.
    pub subject: Option<String>,
    /// Exact event type.
    pub kind: Option<String>,
    /// At or after (seconds since the epoch).
    pub since: Option<u64>,
    /// Before (seconds since the epoch).
    pub until: Option<u64>,
    /// Events with an id below this one (paging); `None`: from the newest.
    pub before_id: Option<i64>,
    /// Most events returned (the store caps it at 1000).
    pub limit: u32,
}

/// How many rows a purge removed, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// Expired codes (kept 10 minutes past expiry for replay detection).
    pub codes: u64,
    /// Expired pending sign-ins.
    pub pending: u64,
    /// Refresh tokens expired, and families revoked, more than a day ago.
    pub refresh_tokens: u64,
    /// Expired client-assertion `jti`s.
    pub assertions: u64,
    /// Client metadata documents older than the cache time.
    pub cimd_documents: u64,
    /// Audit events older than the retention.
    pub audit_events: u64,
    /// Opaque access tokens past their expiry.
    pub opaque_tokens: u64,
}

/// Durable AS state. Implementations are shared between requests and between instances.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite` or `postgres` (logs, the bench).
    fn backend(&self) -> &'static str;

    // ---- clients ----
    /// Saves a new client.
    async fn put_client(&self, client: &Client) -> Result<(), StoreError>;
    /// Finds a registered client.
    async fn client(&self, client_id: &str) -> Result<Option<Client>, StoreError>;
    /// Registered clients, newest first, with their last use (admin page).
    async fn clients(&self, limit: u32, offset: u32) -> Result<Vec<ClientSummary>, StoreError>;
    /// Records that a registered client completed an authorization or used a token at
    /// `now` (it then never expires as unused; `last_used` is `now`).
    async fn mark_client_used(&self, client_id: &str, now: u64) -> Result<(), StoreError>;
    /// Whether a registered client completed an authorization.
    async fn client_used(&self, client_id: &str) -> Result<bool, StoreError>;
    /// Those of `ids` that are registered clients which completed an authorization (one
    /// query per few hundred ids, for the registration quota's bookkeeping).
    async fn used_clients_among(&self, ids: &[String]) -> Result<Vec<String>, StoreError>;
    /// How many registered clients have not completed an authorization.
    async fn unused_clients(&self) -> Result<u64, StoreError>;
    /// Deletes a registered client if it never completed an authorization; returns whether
    /// it did (to make room in a full registration quota).
    async fn delete_unused_client(&self, client_id: &str) -> Result<bool, StoreError>;
    /// Deletes the registered clients created before `cutoff` that never completed an
    /// authorization; returns how many.
    async fn prune_unused_clients(&self, cutoff: u64) -> Result<u64, StoreError>;

    // ---- authorization codes (rule 1) ----
    /// Saves a new code.
    async fn put_code(&self, code: &StoredCode) -> Result<(), StoreError>;
    /// Reads a code (redeemed or not, expired or not) without using it.
    async fn code(&self, code_sha256: &str) -> Result<Option<StoredCode>, StoreError>;
    /// Redeems a code: sets its family if it is unredeemed and `expires_at > now`, in one
    /// statement. Returns whether this call won; of concurrent calls at most one does.
    async fn redeem_code(
        &self,
        code_sha256: &str,
        family: &str,
        now: u64,
    ) -> Result<bool, StoreError>;

    // ---- pending sign-ins (rule 1 of `signin`) ----
    /// Keeps `document` (JSON) under `id_sha256` for `caller` (a caller key: an address,
    /// IPv6 by /64) until `expires_at`. In one transaction: expired entries go; a caller
    /// at `per_caller` loses its own oldest; a table at `global` loses the oldest entry of
    /// the caller holding the most (ties: the one whose oldest is newest).
    async fn put_pending(
        &self,
        id_sha256: &str,
        caller: &str,
        document: &str,
        expires_at: u64,
        per_caller: u32,
        global: u32,
    ) -> Result<(), StoreError>;
    /// Takes (deletes and returns) a live pending sign-in; single use.
    async fn take_pending(&self, id_sha256: &str, now: u64) -> Result<Option<String>, StoreError>;

    // ---- refresh tokens ----
    /// Saves a new refresh token.
    async fn put_refresh(&self, record: &RefreshRecord) -> Result<(), StoreError>;
    /// Reads a live refresh token (known, unrevoked, unexpired, unused or used less than
    /// `grace` seconds ago) without using it.
    async fn peek_refresh(
        &self,
        token_sha256: &str,
        now: u64,
        grace: u64,
    ) -> Result<Option<RefreshRecord>, StoreError>;
    /// Rotates a refresh token, in one transaction: unused → marked used at `now`,
    /// `Fresh`; used less than `grace` seconds ago → `Grace` (nothing revoked) while it
    /// has been re-issued fewer than [`GRACE_REISSUES`] times, `GraceSpent` (nothing
    /// revoked, nothing issued) after; used earlier → family revoked, `Reused`. Only a
    /// token issued to `client_id` is acted on: another client's is `Invalid` and left as
    /// it was. On `Fresh` and `Grace`, and only then, `successor` is inserted in the same
    /// transaction, with the family, client, subject, resource and `jkt` of the used token (its
    /// own values of those are ignored): a revocation of the family (by [`Store::revoke_family`],
    /// [`Store::revoke_refresh`] or reuse detection) either comes after the insertion and
    /// revokes the successor too, or before and the rotation answers `Invalid`; a revoked
    /// family never gets a live token again.
    async fn use_refresh(
        &self,
        token_sha256: &str,
        client_id: &str,
        now: u64,
        grace: u64,
        successor: &RefreshRecord,
    ) -> Result<RefreshUse, StoreError>;
    /// Revokes every token of a family (refresh tokens and opaque access tokens); returns
    /// whether a refresh token was live.
    async fn revoke_family(&self, family: &str) -> Result<bool, StoreError>;
    /// Revokes the family of the given token if it is known and was issued to `client_id`
    /// (RFC 7009 section 2.1: only the owner may revoke). Returns the family if it was.
    async fn revoke_refresh(
        &self,
        token_sha256: &str,
        client_id: &str,
    ) -> Result<Option<String>, StoreError>;
    /// Whether a token of `family` is revoked (the grant was revoked: by `/revoke`, the
    /// admin page, reuse detection or a code replay). An unknown family is not revoked.
    async fn family_revoked(&self, family: &str) -> Result<bool, StoreError>;

    // ---- opaque access tokens ----
    /// Saves a new opaque access token. A token of a family revoked meanwhile is saved
    /// revoked (never live after its grant's revocation).
    async fn put_opaque(&self, token: &OpaqueToken) -> Result<(), StoreError>;
    /// A live opaque access token (known, unrevoked, `expires_at > now`).
    async fn opaque(&self, token_sha256: &str, now: u64)
    -> Result<Option<OpaqueToken>, StoreError>;
    /// Revokes an opaque access token issued to `client_id` (RFC 7009: only its owner
    /// may); returns `Some(its family)` when it did (`Some(None)`: no grant).
    async fn revoke_opaque(
        &self,
        token_sha256: &str,
        client_id: &str,
    ) -> Result<Option<Option<String>>, StoreError>;

    /// Live grants (families with an unexpired, unrevoked token), newest use first,
    /// optionally of one subject and/or client (admin page).
    async fn grants(
        &self,
        subject: Option<&str>,
        client_id: Option<&str>,
        now: u64,
        limit: u32,
    ) -> Result<Vec<Grant>, StoreError>;

    // ---- client assertions (RFC 7523) ----
    /// Records a client assertion's `jti` for `client_id` until `expires_at`; returns
    /// `false` if it was already recorded (a replay), across instances.
    async fn use_assertion_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: u64,
    ) -> Result<bool, StoreError>;

    // ---- client metadata documents ----
    /// A cached metadata-document client and when it was fetched.
    async fn cimd_document(&self, url: &str) -> Result<Option<(Client, u64)>, StoreError>;
    /// Caches a fetched metadata-document client (replacing an older one).
    async fn put_cimd_document(
        &self,
        url: &str,
        client: &Client,
        fetched_at: u64,
    ) -> Result<(), StoreError>;

    // ---- signing keys ----
    /// All signing keys, newest first.
    async fn keys(&self) -> Result<Vec<StoredKey>, StoreError>;
    /// Adds `key` as the current key only if there is no current key; returns whether it
    /// did (instances starting together create one key, not one each).
    async fn create_first_key(&self, key: &StoredKey) -> Result<bool, StoreError>;
    /// Adds a new current key and retires the others at `now`, in one transaction.
    async fn rotate_in(&self, key: &StoredKey, now: u64) -> Result<(), StoreError>;
    /// Deletes keys retired before `cutoff`.
    async fn prune_keys(&self, cutoff: u64) -> Result<(), StoreError>;
    /// Replaces the stored private part of key `kid` with `new` if it is still `old` (the
    /// key is encrypted in place when a key-encryption key is first configured); returns
    /// whether it did.
    async fn replace_key(&self, kid: &str, old: &[u8], new: &[u8]) -> Result<bool, StoreError>;

    // ---- audit trail ----
    /// Appends an event (its `id` is ignored).
    async fn record_event(&self, event: &AuditEvent) -> Result<(), StoreError>;
    /// Events matching `filter`, newest first.
    async fn events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError>;

    // ---- cleanup ----
    /// Deletes what has expired, at most `batch` rows of each kind per call (the caller
    /// loops while a kind returns `batch`): codes expired more than 600 s ago, pending
    /// sign-ins, refresh tokens expired or revoked more than a day ago, assertion `jti`s,
    /// metadata documents fetched before `cimd_cutoff`, audit events before
    /// `audit_cutoff`, opaque access tokens expired at `now`.
    async fn purge(
        &self,
        now: u64,
        cimd_cutoff: u64,
        audit_cutoff: u64,
        batch: u32,
    ) -> Result<Purged, StoreError>;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use clap::Parser;

    use super::*;
    use crate::{Args, Settings};

    #[test]
    fn a_database_urls_password_never_reaches_a_message() {
        let url = "postgres://bmm:s3cret@db.internal:5432/bmm";
        assert!(is_postgres_url(url));
        assert!(is_postgres_url("postgresql://db/bmm"));
        assert!(!is_postgres_url("mysql://db/bmm"));
        let shown = redacted_url(url);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("bmm:***@db.internal"), "{shown}");
        for url in [
            "postgres://db/bmm?password=s3cret&sslmode=require",
            "postgres://db/bmm?sslmode=require&PASSFILE=%2Fhome%2Fs3cret",
        ] {
            let shown = redacted_url(url);
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("sslmode=require"), "{shown}");
        }
        assert_eq!(
            redacted_url("not a url s3cret"),
            "<unparseable database URL>"
        );

        let error = Settings::from_args(
            Args::try_parse_from([
                "bmm-as",
                "--resource",
                "https://mcp.example",
                "--database-url",
                "mysql://root:s3cret@db/bmm",
            ])
            .unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("postgres://") && !error.contains("s3cret"),
            "{error}"
        );
    }

    #[test]
    fn the_config_file_may_name_the_database_and_the_flag_wins() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "database_url = \"postgres://file-host/bmm\"").unwrap();
        let path = file.path().to_str().unwrap();
        let base = [
            "bmm-as",
            "--resource",
            "https://mcp.example",
            "--config",
            path,
        ];
        let from_file = Settings::from_args(Args::try_parse_from(base).unwrap()).unwrap();
        assert_eq!(
            from_file.database_url.as_deref(),
            Some("postgres://file-host/bmm")
        );
        let mut argv = base.to_vec();
        argv.extend(["--database-url", "postgresql://flag-host/bmm"]);
        let from_flag = Settings::from_args(Args::try_parse_from(argv).unwrap()).unwrap();
        assert_eq!(
            from_flag.database_url.as_deref(),
            Some("postgresql://flag-host/bmm")
        );
        assert_eq!(from_flag.database_pool_size, 8);
        assert_eq!(from_flag.refresh_grace_secs, 5);
        assert_eq!(from_flag.audit_retention_days, 90);
    }
}
