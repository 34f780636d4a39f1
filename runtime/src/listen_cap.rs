//! 2026-07-28 `subscriptions/listen` streams: opened only when there is something to
//! listen to, and bounded.
//!
//! Rules:
//! 1. A server with no subscribable resource does not implement `subscriptions/listen`:
//!    the request is answered at once with method-not-found (-32601) and its stream
//!    closes, instead of staying open forever with nothing to carry
//!    (`listen_is_refused_when_nothing_is_subscribable`).
//! 2. At most [`MAX_LISTENS_PER_SUBJECT`] listen streams are open at once per subject (the
//!    verified token's `iss` and `sub`, or its `client_id` when it has no `sub`), and at
//!    most [`MAX_LISTENS`] over all callers. Beyond either, the stream is refused with a
//!    JSON-RPC error (-32000) right after rmcp's acknowledgment, and closes
//!    (`listen_streams_are_capped_per_subject_and_globally`). A stream counts until the
//!    client closes it. Without authentication only the global cap applies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bmm_middleware::AuthContext;
use rmcp::ErrorData;
use rmcp::model::ErrorCode;

/// Listen streams one subject may hold open at once.
pub(crate) const MAX_LISTENS_PER_SUBJECT: usize = 4;
/// Listen streams open at once over all callers.
pub(crate) const MAX_LISTENS: usize = 256;

/// Who holds a listen stream: issuer and subject (or client when there is no subject).
type Holder = (String, String);

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_holder: HashMap<Holder, usize>,
}

/// The open listen streams, shared by every session of a server.
#[derive(Debug, Clone)]
pub(crate) struct ListenCap {
    open: Arc<Mutex<Open>>,
    max: usize,
    per_subject: usize,
}

impl Default for ListenCap {
    fn default() -> Self {
        Self::new(MAX_LISTENS, MAX_LISTENS_PER_SUBJECT)
    }
}

/// One open stream, counted until dropped.
#[derive(Debug)]
pub(crate) struct ListenPermit {
    open: Arc<Mutex<Open>>,
    holder: Option<Holder>,
}

impl Drop for ListenPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(holder) = &self.holder
            && let Some(n) = open.by_holder.get_mut(holder)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_holder.remove(holder);
            }
        }
    }
}

fn refused(message: &'static str) -> ErrorData {
    ErrorData::new(ErrorCode(-32000), message, None)
}

impl ListenCap {
    pub(crate) fn new(max: usize, per_subject: usize) -> Self {
        Self {
            open: Arc::default(),
            max,
            per_subject,
        }
    }

    /// Counts a new stream for `auth`'s subject, or refuses it over a cap.
    pub(crate) fn acquire(&self, auth: Option<&AuthContext>) -> Result<ListenPermit, ErrorData> {
        let holder = auth.map(|a| {
            let who = match (a.subject(), a.client_id()) {
                (Some(sub), _) => format!("sub:{sub}"),
                (None, Some(client)) => format!("client:{client}"),
                (None, None) => String::new(),
            };
            (a.issuer().to_owned(), who)
        });
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.max {
            tracing::warn!(max = self.max, "listen stream limit reached");
            return Err(refused(
                "too many open subscriptions/listen streams; retry later",
            ));
        }
        if let Some(holder) = &holder {
            let n = open.by_holder.entry(holder.clone()).or_default();
            if *n >= self.per_subject {
                tracing::warn!(
                    per_subject = self.per_subject,
                    "per-subject listen stream limit reached"
                );
                return Err(refused(
                    "too many open subscriptions/listen streams for this caller; close one first",
                ));
            }
            *n += 1;
        }
        open.total += 1;
        Ok(ListenPermit {
            open: Arc::clone(&self.open),
            holder,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_streams_are_capped_globally_and_released_on_drop() {
        let cap = ListenCap::new(3, 2);
        let a = cap.acquire(None).unwrap();
        let b = cap.acquire(None).unwrap();
        let c = cap.acquire(None).unwrap();
        assert_eq!(cap.acquire(None).unwrap_err().code, ErrorCode(-32000));
        drop(b);
        let d = cap.acquire(None).unwrap();
        drop((a, c, d));
        assert_eq!(cap.open.lock().unwrap().total, 0);
    }
}
