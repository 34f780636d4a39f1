//! Background work `serve` runs while it serves, and stops with it.
//!
//! Maintenance rules:
//! 1. Every [`keys::RELOAD_INTERVAL`](crate::keys::RELOAD_INTERVAL) the signing keys are
//!    reloaded from the store, so a rotation by any instance is published by all (see
//!    `keys`). A failed reload keeps the keys the instance had and is logged.
//! 2. Every [`CLEANUP_INTERVAL`] expired state is deleted in bounded batches
//!    ([`PURGE_BATCH`] rows of each kind per statement, at most [`PURGE_ROUNDS`] rounds per
//!    run, the rest left for the next run): codes expired more than 10 minutes ago,
//!    pending sign-ins, refresh tokens expired or revoked more than a day ago, client
//!    assertion `jti`s (DPoP proof `jti`s too), opaque access tokens past their expiry,
//!    metadata documents not fetched for [`CIMD_KEEP`], audit events older than
//!    `--audit-retention-days`; then registered clients never used within
//!    `--unused-client-ttl`, and signing keys retired longer ago than the access-token
//!    lifetime plus 5 minutes. Several instances may clean at once: every deletion is
//!    idempotent.
//! 3. Both tasks hold only a handle to the shared state; they end when `serve` returns or
//!    its future is dropped.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::{AppState, now};

/// How often expired state is deleted.
pub(crate) const CLEANUP_INTERVAL: Duration = Duration::from_secs(60);
/// Rows of each kind one purge statement deletes at most.
pub(crate) const PURGE_BATCH: u32 = 1000;
/// Purge rounds per cleanup run at most.
pub(crate) const PURGE_ROUNDS: u32 = 100;
/// How long a fetched metadata document is kept after its last fetch.
pub(crate) const CIMD_KEEP: Duration = Duration::from_secs(24 * 3600);

/// The running tasks; aborted when dropped.
#[derive(Debug)]
pub(crate) struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Starts key reloading and cleanup (rules 1 and 2).
pub(crate) fn start(state: &AppState) -> Tasks {
    let keys = {
        let state = state.clone();
        tokio::spawn(async move {
            let period = crate::keys::RELOAD_INTERVAL;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tick.tick().await;
                if let Err(error) = state.inner.keys.reload(state.store(), now()).await {
                    tracing::error!(%error, "cannot reload the signing keys; keeping the ones loaded");
                }
            }
        })
    };
    let cleanup = {
        let state = state.clone();
        tokio::spawn(async move {
            let period = CLEANUP_INTERVAL;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tick.tick().await;
                cleanup(&state).await;
            }
        })
    };
    Tasks(vec![keys, cleanup])
}

/// One cleanup run (rule 2).
pub(crate) async fn cleanup(state: &AppState) {
    let settings = state.settings();
    let store = state.store();
    let t = now();
    let cimd_cutoff = t.saturating_sub(CIMD_KEEP.as_secs());
    let audit_cutoff = t.saturating_sub(settings.audit_retention_days.saturating_mul(86_400));
    let mut total = crate::store::Purged::default();
    for _ in 0..PURGE_ROUNDS {
        match store.purge(t, cimd_cutoff, audit_cutoff, PURGE_BATCH).await {
            Ok(p) => {
                total.codes += p.codes;
                total.pending += p.pending;
                total.refresh_tokens += p.refresh_tokens;
                total.assertions += p.assertions;
                total.cimd_documents += p.cimd_documents;
                total.audit_events += p.audit_events;
                total.opaque_tokens += p.opaque_tokens;
                let more = [
                    p.opaque_tokens,
                    p.codes,
                    p.pending,
                    p.refresh_tokens,
                    p.assertions,
                    p.cimd_documents,
                    p.audit_events,
                ]
                .iter()
                .any(|n| *n >= u64::from(PURGE_BATCH));
                if !more {
                    break;
                }
            }
            Err(error) => {
                tracing::error!(%error, "cleanup: purge failed");
                break;
            }
        }
    }
    let clients = match store
        .prune_unused_clients(t.saturating_sub(settings.unused_client_ttl))
        .await
    {
        Ok(n) => n,
        Err(error) => {
            tracing::error!(%error, "cleanup: cannot delete unused clients");
            0
        }
    };
    // Retired keys stay published (and stored) until every token they signed expired.
    let retain = settings.access_token_ttl + 300;
    if let Err(error) = store.prune_keys(t.saturating_sub(retain)).await {
        tracing::error!(%error, "cleanup: cannot delete retired signing keys");
    }
    if total != crate::store::Purged::default() || clients > 0 {
        tracing::info!(
            codes = total.codes,
            pending = total.pending,
            refresh_tokens = total.refresh_tokens,
            assertions = total.assertions,
            cimd_documents = total.cimd_documents,
            audit_events = total.audit_events,
            opaque_tokens = total.opaque_tokens,
            unused_clients = clients,
            "cleanup: expired state deleted"
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use clap::Parser;

    use super::*;
    use crate::store::{AuditEvent, AuditFilter, SqliteStore, Store, StoredCode};
    use crate::{Args, Settings};

    fn code(hash: &str, expires_at: u64) -> StoredCode {
        StoredCode {
            code_sha256: hash.to_owned(),
            client_id: "c".to_owned(),
            redirect_uri: "http://127.0.0.1/cb".to_owned(),
            redirect_uri_given: true,
            code_challenge: "x".to_owned(),
            resource: "https://mcp.example".to_owned(),
            scope: String::new(),
            subject: "alice".to_owned(),
            expires_at,
            redeemed_family: None,
        }
    }

    #[tokio::test]
    async fn cleanup_deletes_what_expired_and_keeps_the_rest() {
        let args = Args::try_parse_from([
            "bmm-as",
            "--resource",
            "https://mcp.example",
            "--audit-retention-days",
            "1",
        ])
        .unwrap();
        let settings = Settings::from_args(args).unwrap();
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let state = AppState::with_store(settings, store.clone()).await.unwrap();
        let t = now();
        store.put_code(&code("old", t - 700)).await.unwrap();
        store.put_code(&code("recent", t - 100)).await.unwrap();
        for (kind, at) in [("old_event", t - 2 * 86_400), ("new_event", t - 10)] {
            let event = AuditEvent {
                id: 0,
                at,
                kind: kind.to_owned(),
                client_id: None,
                subject: None,
                resource: None,
                scope: None,
                address: None,
                outcome: "ok".to_owned(),
                detail: None,
            };
            store.record_event(&event).await.unwrap();
        }
        store
            .put_pending("p", "192.0.2.1", "{}", t - 1, 16, 10_000)
            .await
            .unwrap();

        cleanup(&state).await;

        assert!(store.code("old").await.unwrap().is_none());
        assert!(
            store.code("recent").await.unwrap().is_some(),
            "kept 10 minutes past expiry for replay detection"
        );
        let events = store
            .events(&AuditFilter {
                limit: 10,
                ..AuditFilter::default()
            })
            .await
            .unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["new_event"]);
        assert_eq!(store.pending_len().await.unwrap(), 0);
        assert_eq!(store.keys().await.unwrap().len(), 1, "the live key stays");
    }
}
