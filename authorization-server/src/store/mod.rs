//! Durable state behind a trait: registered clients, refresh-token families and signing
//! keys. [`SqliteStore`] keeps them in one SQLite file in the data directory; another
//! implementation (a shared database) lets several AS instances serve together.
//! Authorization codes are short-lived and stay in memory.
//!
//! The data directory is created `0700` and the SQLite files are `0600` whatever the umask;
//! a database readable by group or others, or a directory they may write to, refuses the
//! start with the `chmod` to run ([`SqliteStore::open`]): the database holds the signing key.

mod sqlite;

use serde::{Deserialize, Serialize};

pub use sqlite::SqliteStore;

use crate::error::StoreError;

/// A registered OAuth client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    /// `bmm_<random>`, or the CIMD URL for metadata-document clients (never stored).
    pub client_id: String,
    /// SHA-256 (hex) of the client secret, for confidential clients.
    pub secret_sha256: Option<String>,
    /// Registered redirect URIs, matched exactly (loopback ports excepted).
    pub redirect_uris: Vec<String>,
    /// Human-readable name shown on the consent page.
    pub client_name: Option<String>,
    /// `none`, `client_secret_basic` or `client_secret_post`.
    pub token_endpoint_auth_method: String,
    /// Seconds since the epoch.
    pub created_at: u64,
}

/// One refresh token (stored by hash), part of a rotation family.
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
    pub expires_at: u64,
}

/// What using a refresh token found.
#[derive(Debug, PartialEq, Eq)]
pub enum RefreshUse {
    /// The token was live; it is now used up.
    Fresh(RefreshRecord),
    /// The token was already used: its family has been revoked (reuse detection).
    Reused,
    /// Unknown, expired or revoked.
    Invalid,
}

/// A signing key as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    /// The `kid`.
    pub kid: String,
    /// PKCS#8 DER of the private key.
    pub pkcs8: Vec<u8>,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Set when the key was replaced; it stays published until `retire_after`.
    pub retired_at: Option<u64>,
}

/// Durable AS state. Implementations must be safe to share between requests.
pub trait Store: Send + Sync + 'static {
    /// Saves a new client.
    fn put_client(&self, client: &Client) -> Result<(), StoreError>;
    /// Finds a client.
    fn client(&self, client_id: &str) -> Result<Option<Client>, StoreError>;
    /// Saves a new refresh token.
    fn put_refresh(&self, record: &RefreshRecord) -> Result<(), StoreError>;
    /// Reads a live refresh token (known, unused, unrevoked, unexpired) without using it.
    fn peek_refresh(
        &self,
        token_sha256: &str,
        now: u64,
    ) -> Result<Option<RefreshRecord>, StoreError>;
    /// Uses a refresh token once: marks it used, or revokes its family if it was used.
    /// Only a token issued to `client_id` is acted on: another client's is `Invalid` and
    /// left as it was (neither used up nor its family revoked).
    fn use_refresh(
        &self,
        token_sha256: &str,
        client_id: &str,
        now: u64,
    ) -> Result<RefreshUse, StoreError>;
    /// Revokes every token of a family.
    fn revoke_family(&self, family: &str) -> Result<(), StoreError>;
    /// Revokes the family of the given token if it is known and was issued to `client_id`
    /// (RFC 7009 section 2.1: only the owner may revoke). Returns whether it was.
    fn revoke_refresh(&self, token_sha256: &str, client_id: &str) -> Result<bool, StoreError>;
    /// All signing keys, newest first.
    fn keys(&self) -> Result<Vec<StoredKey>, StoreError>;
    /// Adds a new current key and retires the others at `now`.
    fn rotate_in(&self, key: &StoredKey, now: u64) -> Result<(), StoreError>;
    /// Deletes keys retired before `cutoff`.
    fn prune_keys(&self, cutoff: u64) -> Result<(), StoreError>;
    /// Records that a registered client completed an authorization (it then never expires
    /// as unused).
    fn mark_client_used(&self, client_id: &str) -> Result<(), StoreError>;
    /// Whether a registered client completed an authorization.
    fn client_used(&self, client_id: &str) -> Result<bool, StoreError>;
    /// How many registered clients have not completed an authorization.
    fn unused_clients(&self) -> Result<u64, StoreError>;
    /// Deletes a registered client if it never completed an authorization; returns whether
    /// it did (to make room in a full registration quota).
    fn delete_unused_client(&self, client_id: &str) -> Result<bool, StoreError>;
    /// Deletes the registered clients created before `cutoff` that never completed an
    /// authorization; returns how many.
    fn prune_unused_clients(&self, cutoff: u64) -> Result<usize, StoreError>;
}
