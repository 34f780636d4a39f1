//! Reloading without a restart: [`Reload`], a broadcast every part of a server can watch.
//!
//! Rules:
//! 1. [`Reload::trigger`] (on Unix: SIGHUP, see [`reload_on_sighup`]) wakes every
//!    subscriber; none of them closes a connection or a session.
//! 2. [`crate::Server::serve`] answers each reload by fetching every trusted issuer's JWKS
//!    at once (a rotated signing key is accepted without waiting for the cache to expire,
//!    and `kid`s remembered as unknown are forgotten) and logs what it reloaded; at most
//!    once a second, so a storm of signals cannot turn into a storm of JWKS fetches.
//! 3. Other parts (the audit log reopening its file, say) subscribe through
//!    [`crate::ServeConfig::reload_handle`] and do their own reload on each change of the
//!    generation; a burst of signals may be seen as one.

use std::sync::Arc;

use tokio::sync::watch;

/// A reload broadcast: cheap to clone; every clone triggers and watches the same one.
#[derive(Clone, Debug)]
pub struct Reload {
    tx: Arc<watch::Sender<u64>>,
}

impl Default for Reload {
    fn default() -> Self {
        Self::new()
    }
}

impl Reload {
    /// A broadcast nobody has triggered yet.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(0).0),
        }
    }

    /// Asks every subscriber to reload.
    pub fn trigger(&self) {
        self.tx
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// A receiver whose `changed()` completes at the next [`Reload::trigger`]; its value is
    /// the number of reloads so far.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

/// Triggers `reload` on every SIGHUP, for as long as the async runtime runs (a no-op off
/// Unix, or when the signal cannot be installed, which is logged).
pub fn reload_on_sighup(reload: Reload) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => {
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading");
                        reload.trigger();
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "SIGHUP handler not installed: no reload on SIGHUP");
            }
        }
    }
    #[cfg(not(unix))]
    drop(reload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn every_subscriber_sees_a_trigger() {
        let reload = Reload::new();
        let mut a = reload.subscribe();
        let mut b = reload.clone().subscribe();
        reload.trigger();
        assert!(a.changed().await.is_ok());
        assert!(b.changed().await.is_ok());
        assert_eq!(*a.borrow(), 1);
    }
}
