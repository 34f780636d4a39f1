//! The server's state: the note store the four tools share.
//!
//! Yours: created by bmm once, never overwritten by `bmm generate`.
//!
//! Notes live in memory, behind a mutex, and are gone when the server stops. A real
//! deployment would open its database in `State::start` and keep the pool here.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bmm_runtime::Startup;

/// One stored note.
#[derive(Debug, Clone)]
pub(crate) struct Note {
    pub(crate) title: String,
    pub(crate) text: String,
    pub(crate) tags: Vec<String>,
    /// Who wrote it (the token's subject), for the audit trail.
    pub(crate) author: Option<String>,
}

/// The store: note id -> note, plus the last id given out.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub(crate) notes: BTreeMap<i64, Note>,
    pub(crate) next_id: i64,
}

/// What every tool call shares.
#[derive(Debug, Default)]
pub(crate) struct State {
    store: Mutex<Store>,
}

impl State {
    /// The start-up hook: runs once, after the flags and secrets are checked and before
    /// the server accepts a connection. An error stops start-up with its message.
    pub(crate) async fn start(
        startup: Startup,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let _ = startup;
        Ok(Self::default())
    }

    /// Locks the store (a panic in another call cannot poison it for good).
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
