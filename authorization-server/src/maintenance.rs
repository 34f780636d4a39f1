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
//!    assertion `jti`s, metadata documents not fetched for [`CIMD_KEEP`], audit events
//!    older than `--audit-retention-days`; then registered clients never used within
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
                let more = [
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
            unused_clients = clients,
            "cleanup: expired state deleted"
        );
    }
}
