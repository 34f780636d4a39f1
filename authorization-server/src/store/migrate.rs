//! The numbered schema migrations both backends run at start-up (store rule 3).
//!
//! Migration rules:
//! 1. [`MIGRATIONS`] is one list, in version order, each with its SQLite and its
//!    PostgreSQL text; a backend applies, inside one transaction, every migration whose
//!    version is above the highest in `bmm_schema_migrations`, recording each with the time
//!    it was applied. A migration is never edited once released: a change is a new one.
//! 2. Migration 1 is the schema of the releases before migrations existed, written with
//!    `CREATE ... IF NOT EXISTS`: on a data directory made by such a release (its tables
//!    present, no `bmm_schema_migrations`), it changes nothing and is recorded, so clients,
//!    refresh tokens and keys carry over; migration 2 then converts them.
//! 3. A database whose highest version is above [`LATEST`] was written by a newer bmm-as;
//!    it is refused ([`too_new`]) before anything is written, never downgraded.

use crate::error::StoreError;

/// One schema migration, in the dialect of each backend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    /// Its number; versions are 1, 2, 3, ... without gaps.
    pub(crate) version: i64,
    /// What it does, for the log.
    pub(crate) name: &'static str,
    /// SQLite statements (run with `execute_batch`).
    pub(crate) sqlite: &'static str,
    /// PostgreSQL statements (run with `batch_execute`).
    pub(crate) postgres: &'static str,
}

/// The table recording applied migrations (the same text on both backends).
pub(crate) const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS bmm_schema_migrations (
    version BIGINT PRIMARY KEY,
    applied_at BIGINT NOT NULL
)";

/// Every migration, in order.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "the schema before migrations (clients, refresh tokens, signing keys)",
        sqlite: "
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_sha256 TEXT PRIMARY KEY,
    family TEXT NOT NULL,
    client_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    scope TEXT NOT NULL,
    resource TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens(family);
CREATE TABLE IF NOT EXISTS used_clients (
    client_id TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid TEXT PRIMARY KEY,
    pkcs8 BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER
);
",
        postgres: "
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_sha256 TEXT PRIMARY KEY,
    family TEXT NOT NULL,
    client_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    scope TEXT NOT NULL,
    resource TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS refresh_tokens_family ON refresh_tokens(family);
CREATE TABLE IF NOT EXISTS used_clients (
    client_id TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid TEXT PRIMARY KEY,
    pkcs8 BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);
",
    },
    Migration {
        version: 2,
        name: "shared state: codes, pending sign-ins, grace period, audit trail, metadata documents, client assertions",
        // Clients get columns for what was only in the JSON document or a side table;
        // `used`/`revoked` flags become times (a token used before this migration counts as
        // used long ago, so presenting it again is a reuse, not within the grace period).
        sqlite: "
ALTER TABLE clients ADD COLUMN created_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE clients ADD COLUMN last_used INTEGER;
UPDATE clients SET created_at = COALESCE(CAST(json_extract(document, '$.created_at') AS INTEGER), 0);
UPDATE clients SET last_used = CAST(strftime('%s', 'now') AS INTEGER)
    WHERE client_id IN (SELECT client_id FROM used_clients);
DROP TABLE used_clients;
CREATE INDEX clients_created_at ON clients(created_at);

ALTER TABLE refresh_tokens ADD COLUMN issued_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE refresh_tokens ADD COLUMN used_at INTEGER;
ALTER TABLE refresh_tokens ADD COLUMN revoked_at INTEGER;
UPDATE refresh_tokens SET used_at = 0 WHERE used <> 0;
UPDATE refresh_tokens SET revoked_at = CAST(strftime('%s', 'now') AS INTEGER) WHERE revoked <> 0;
ALTER TABLE refresh_tokens DROP COLUMN used;
ALTER TABLE refresh_tokens DROP COLUMN revoked;
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens(expires_at);
CREATE INDEX refresh_tokens_revoked_at ON refresh_tokens(revoked_at);
CREATE INDEX refresh_tokens_subject ON refresh_tokens(subject);
CREATE INDEX refresh_tokens_client_id ON refresh_tokens(client_id);

CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys((retired_at IS NULL))
    WHERE retired_at IS NULL;

CREATE TABLE codes (
    code_sha256 TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    redirect_uri_given INTEGER NOT NULL,
    code_challenge TEXT NOT NULL,
    resource TEXT NOT NULL,
    scope TEXT NOT NULL,
    subject TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    redeemed_family TEXT
);
CREATE INDEX codes_expires_at ON codes(expires_at);

CREATE TABLE pending_signins (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id_sha256 TEXT NOT NULL UNIQUE,
    caller TEXT NOT NULL,
    document TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX pending_signins_caller ON pending_signins(caller, seq);
CREATE INDEX pending_signins_expires_at ON pending_signins(expires_at);

CREATE TABLE assertion_jtis (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX assertion_jtis_expires_at ON assertion_jtis(expires_at);

CREATE TABLE cimd_documents (
    url TEXT PRIMARY KEY,
    document TEXT NOT NULL,
    fetched_at INTEGER NOT NULL
);
CREATE INDEX cimd_documents_fetched_at ON cimd_documents(fetched_at);

CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    client_id TEXT,
    subject TEXT,
    resource TEXT,
    scope TEXT,
    address TEXT,
    outcome TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_events_at ON audit_events(at);
CREATE INDEX audit_events_client ON audit_events(client_id, id);
CREATE INDEX audit_events_subject ON audit_events(subject, id);
CREATE INDEX audit_events_kind ON audit_events(kind, id);
",
        postgres: "
ALTER TABLE clients ADD COLUMN created_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE clients ADD COLUMN last_used BIGINT;
UPDATE clients SET created_at = COALESCE((document::jsonb ->> 'created_at')::BIGINT, 0);
UPDATE clients SET last_used = EXTRACT(EPOCH FROM now())::BIGINT
    WHERE client_id IN (SELECT client_id FROM used_clients);
DROP TABLE used_clients;
CREATE INDEX clients_created_at ON clients(created_at);

ALTER TABLE refresh_tokens ADD COLUMN issued_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE refresh_tokens ADD COLUMN used_at BIGINT;
ALTER TABLE refresh_tokens ADD COLUMN revoked_at BIGINT;
UPDATE refresh_tokens SET used_at = 0 WHERE used <> 0;
UPDATE refresh_tokens SET revoked_at = EXTRACT(EPOCH FROM now())::BIGINT WHERE revoked <> 0;
ALTER TABLE refresh_tokens DROP COLUMN used;
ALTER TABLE refresh_tokens DROP COLUMN revoked;
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens(expires_at);
CREATE INDEX refresh_tokens_revoked_at ON refresh_tokens(revoked_at);
CREATE INDEX refresh_tokens_subject ON refresh_tokens(subject);
CREATE INDEX refresh_tokens_client_id ON refresh_tokens(client_id);

CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys((retired_at IS NULL))
    WHERE retired_at IS NULL;

CREATE TABLE codes (
    code_sha256 TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    redirect_uri_given BOOLEAN NOT NULL,
    code_challenge TEXT NOT NULL,
    resource TEXT NOT NULL,
    scope TEXT NOT NULL,
    subject TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    redeemed_family TEXT
);
CREATE INDEX codes_expires_at ON codes(expires_at);

CREATE TABLE pending_signins (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id_sha256 TEXT NOT NULL UNIQUE,
    caller TEXT NOT NULL,
    document TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX pending_signins_caller ON pending_signins(caller, seq);
CREATE INDEX pending_signins_expires_at ON pending_signins(expires_at);

CREATE TABLE assertion_jtis (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX assertion_jtis_expires_at ON assertion_jtis(expires_at);

CREATE TABLE cimd_documents (
    url TEXT PRIMARY KEY,
    document TEXT NOT NULL,
    fetched_at BIGINT NOT NULL
);
CREATE INDEX cimd_documents_fetched_at ON cimd_documents(fetched_at);

CREATE TABLE audit_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    client_id TEXT,
    subject TEXT,
    resource TEXT,
    scope TEXT,
    address TEXT,
    outcome TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_events_at ON audit_events(at);
CREATE INDEX audit_events_client ON audit_events(client_id, id);
CREATE INDEX audit_events_subject ON audit_events(subject, id);
CREATE INDEX audit_events_kind ON audit_events(kind, id);
",
    },
    Migration {
        version: 3,
        name: "count re-issues of a used refresh token within the grace period",
        sqlite: "ALTER TABLE refresh_tokens ADD COLUMN grace_uses INTEGER NOT NULL DEFAULT 0;",
        postgres: "ALTER TABLE refresh_tokens ADD COLUMN grace_uses BIGINT NOT NULL DEFAULT 0;",
    },
    Migration {
        version: 4,
        name: "opaque access tokens (RFC 7662 introspection) and DPoP-bound refresh families",
        // `family` is the grant an opaque token was issued under (NULL for
        // client_credentials), revoked with it; `jkt` the DPoP key thumbprint it, or a
        // refresh family, is bound to.
        sqlite: "
CREATE TABLE opaque_tokens (
    token_sha256 TEXT PRIMARY KEY,
    family TEXT,
    client_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    scope TEXT NOT NULL,
    resource TEXT NOT NULL,
    jti TEXT NOT NULL,
    jkt TEXT,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX opaque_tokens_family ON opaque_tokens(family);
CREATE INDEX opaque_tokens_expires_at ON opaque_tokens(expires_at);
ALTER TABLE refresh_tokens ADD COLUMN jkt TEXT;
",
        postgres: "
CREATE TABLE opaque_tokens (
    token_sha256 TEXT PRIMARY KEY,
    family TEXT,
    client_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    scope TEXT NOT NULL,
    resource TEXT NOT NULL,
    jti TEXT NOT NULL,
    jkt TEXT,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX opaque_tokens_family ON opaque_tokens(family);
CREATE INDEX opaque_tokens_expires_at ON opaque_tokens(expires_at);
ALTER TABLE refresh_tokens ADD COLUMN jkt TEXT;
",
    },
];

/// The highest version this build knows.
pub(crate) const LATEST: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// For readers that must not migrate (`bmm-as audit`): refuses a database whose schema
/// version (`0`: none) is not [`LATEST`].
pub(crate) fn require_latest(found: i64) -> Result<(), StoreError> {
    match found {
        LATEST => Ok(()),
        0 => Err(StoreError(format!(
            "the database has no bmm-as schema version (not a bmm-as database, or one of a release before schema versions); this bmm-as reads version {LATEST}: use the bmm-as release that serves it, or start this bmm-as server on it to migrate it"
        ))),
        _ => Err(StoreError(format!(
            "the database schema is version {found}; this bmm-as reads version {LATEST}: use the bmm-as release that serves it"
        ))),
    }
}

/// The refusal of a database written by a newer bmm-as (migration rule 3).
pub(crate) fn too_new(found: i64) -> StoreError {
    StoreError(format!(
        "the database schema is version {found} but this bmm-as knows up to {LATEST}; upgrade bmm-as (do not downgrade over a newer database)"
    ))
}

/// The migrations to apply over a database at `current` (0: none applied), or the refusal
/// of rule 3.
pub(crate) fn pending(current: i64) -> Result<&'static [Migration], StoreError> {
    if current > LATEST {
        return Err(too_new(current));
    }
    let from = MIGRATIONS
        .iter()
        .position(|m| m.version > current)
        .unwrap_or(MIGRATIONS.len());
    Ok(&MIGRATIONS[from..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "{}", m.name);
            assert!(!m.sqlite.trim().is_empty() && !m.postgres.trim().is_empty());
        }
    }

    #[test]
    fn a_newer_schema_is_refused_and_an_older_one_gets_the_rest() {
        assert_eq!(pending(0).map(<[_]>::len).ok(), Some(MIGRATIONS.len()));
        assert_eq!(pending(LATEST).map(<[_]>::len).ok(), Some(0));
        let error = pending(LATEST + 1).err().map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("upgrade bmm-as")),
            "{error:?}"
        );
    }
}
