//! Legacy (initialize-based) sessions: bounded, and bound to the caller that opened them.
//!
//! rmcp keeps every session in memory until it is closed or idle for its keep-alive (5
//! minutes), and serves any request that names a session's id. Rules:
//! 1. At most `max` sessions are open at once (about 34 KiB each, measured with 10,000):
//!    a request that would open another is answered **503** with `Retry-After`; requests
//!    of open sessions and stateless 2026-07-28 requests (which open none) pass untouched
//!    (`legacy_sessions_are_capped_and_stateless_requests_are_not`).
//! 2. At most `per_subject` of them belong to one subject (the verified token's `iss` and
//!    `sub`, whichever client it used; a token without `sub` counts by its `client_id`):
//!    beyond it a new session is answered **429** with `Retry-After`, so one user cannot
//!    hold every session, not even by registering many clients
//!    (`sessions_are_capped_per_subject`,
//!    `sessions_are_capped_per_subject_across_clients`). Without authentication
//!    (`--no-auth`) there is no caller to count, and only rule 1 applies.
//! 3. Each session is bound at `initialize` to that caller. A POST, GET (stream) or DELETE
//!    naming a session that another caller opened — or that was not opened through this
//!    layer at all — is answered exactly like an unknown session (**404** `Session not
//!    found`), so another subject cannot use, read, close or even detect it
//!    (`session_is_refused_to_another_subject`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bmm_middleware::AuthContext;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use tower_service::Service;

type BoxResponse = Response<BoxBody<Bytes, Infallible>>;

/// Who opened a session: the verified token's issuer, subject and client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Owner {
    issuer: String,
    subject: Option<String>,
    client: Option<String>,
}

impl Owner {
    /// What the per-subject cap counts: issuer and subject, whichever client; a token
    /// without a subject counts by its client.
    fn counted(&self) -> Self {
        Self {
            issuer: self.issuer.clone(),
            subject: self.subject.clone(),
            client: if self.subject.is_some() {
                None
            } else {
                self.client.clone()
            },
        }
    }
}

/// The caller of a request (`None` without authentication).
fn caller<B>(req: &Request<B>) -> Option<Owner> {
    AuthContext::from_request(req).ok().map(|a| Owner {
        issuer: a.issuer().to_owned(),
        subject: a.subject().map(str::to_owned),
        client: a.client_id().map(str::to_owned),
    })
}

/// Session ids and their owners, and sessions being opened right now per counted subject
/// ([`Owner::counted`]).
#[derive(Debug, Default)]
struct Owners {
    by_session: HashMap<String, Option<Owner>>,
    opening: HashMap<Owner, usize>,
}

impl Owners {
    /// Open sessions counted against `who`'s subject.
    fn open_for(&self, who: &Owner) -> usize {
        let counted = who.counted();
        self.by_session
            .values()
            .filter(|o| o.as_ref().is_some_and(|o| o.counted() == counted))
            .count()
    }
}

type SharedOwners = Arc<Mutex<Owners>>;

fn lock(owners: &SharedOwners) -> std::sync::MutexGuard<'_, Owners> {
    owners.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A caller's session being opened: counted until the answer is in (or the request is
/// dropped), so concurrent `initialize` requests cannot overshoot the per-caller cap.
struct Opening {
    owners: SharedOwners,
    owner: Option<Owner>,
}

impl Drop for Opening {
    fn drop(&mut self) {
        if let Some(owner) = &self.owner {
            let counted = owner.counted();
            let mut owners = lock(&self.owners);
            if let Some(n) = owners.opening.get_mut(&counted) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    owners.opening.remove(&counted);
                }
            }
        }
    }
}

/// The capped, caller-bound service.
#[derive(Clone)]
pub(crate) struct SessionCap<S> {
    inner: S,
    manager: Arc<LocalSessionManager>,
    max: usize,
    per_subject: usize,
    owners: SharedOwners,
}

impl<S> SessionCap<S> {
    pub(crate) fn new(
        inner: S,
        manager: Arc<LocalSessionManager>,
        max: usize,
        per_subject: usize,
    ) -> Self {
        Self {
            inner,
            manager,
            max,
            per_subject,
            owners: SharedOwners::default(),
        }
    }
}

/// Whether a request may open a legacy session: a POST without a session id, from a
/// client not speaking 2026-07-28 (which always sends `MCP-Protocol-Version`).
fn may_open_session<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::POST
        && !req.headers().contains_key("mcp-session-id")
        && req
            .headers()
            .get("mcp-protocol-version")
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v < "2026-07-28")
}

fn refused(status: StatusCode, message: &'static str) -> BoxResponse {
    let body =
        format!(r#"{{"jsonrpc":"2.0","id":null,"error":{{"code":-32000,"message":"{message}"}}}}"#);
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("5"),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn full() -> BoxResponse {
    refused(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many open sessions; retry later or use stateless 2026-07-28 requests",
    )
}

fn too_many_for_caller() -> BoxResponse {
    refused(
        StatusCode::TOO_MANY_REQUESTS,
        "too many open sessions for this caller; close one (DELETE) or use stateless 2026-07-28 requests",
    )
}

/// rmcp's own answer to an unknown session id, byte for byte.
fn not_found() -> BoxResponse {
    let mut response =
        Response::new(Full::new(Bytes::from_static(b"Not Found: Session not found")).boxed());
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

/// The session id a response hands out.
fn session_of(response: &BoxResponse) -> Option<String> {
    response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl<S, B> Service<Request<B>> for SessionCap<S>
where
    S: Service<Request<B>, Response = BoxResponse, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = BoxResponse;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<BoxResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if let Some(id) = req.headers().get("mcp-session-id") {
            // Rule 3: only the caller that opened a session may use it.
            let owner = id
                .to_str()
                .ok()
                .and_then(|id| lock(&self.owners).by_session.get(id).cloned());
            return match owner {
                Some(owner) if owner == caller(&req) => Box::pin(self.inner.call(req)),
                _ => Box::pin(std::future::ready(Ok(not_found()))),
            };
        }
        if !may_open_session(&req) {
            if req.method() != http::Method::POST {
                return Box::pin(self.inner.call(req));
            }
            // A 2026-07-28-labelled POST is stateless, except that rmcp opens a legacy
            // session for an `initialize` body whatever the header says: such a session is
            // held to the same rules after the fact (closed again when over a cap).
            let owner = caller(&req);
            let future = self.inner.call(req);
            let manager = Arc::clone(&self.manager);
            let owners = Arc::clone(&self.owners);
            let (max, per_subject) = (self.max, self.per_subject);
            return Box::pin(async move {
                let Ok(response) = future.await;
                let Some(id) = session_of(&response) else {
                    return Ok(response);
                };
                let over = {
                    let live = manager.sessions.read().await;
                    let mut table = lock(&owners);
                    table
                        .by_session
                        .retain(|id, _| live.contains_key(id.as_str()));
                    let open = owner.as_ref().map_or(0, |who| table.open_for(who));
                    if live.len() > max {
                        Some(full())
                    } else if owner.is_some() && open >= per_subject {
                        Some(too_many_for_caller())
                    } else {
                        table.by_session.insert(id.clone(), owner);
                        None
                    }
                };
                match over {
                    Some(refusal) => {
                        use rmcp::transport::streamable_http_server::SessionManager;
                        let _ = manager.close_session(&id.into()).await;
                        Ok(refusal)
                    }
                    None => Ok(response),
                }
            });
        }
        // The readied inner service answers this request; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let manager = Arc::clone(&self.manager);
        let owners = Arc::clone(&self.owners);
        let (max, per_subject) = (self.max, self.per_subject);
        let owner = caller(&req);
        Box::pin(async move {
            let opening = {
                let live = manager.sessions.read().await;
                if live.len() >= max {
                    tracing::warn!(max, "legacy session limit reached; refusing a new session");
                    return Ok(full());
                }
                let mut table = lock(&owners);
                // Closed and expired sessions leave the table here.
                table
                    .by_session
                    .retain(|id, _| live.contains_key(id.as_str()));
                if let Some(who) = &owner {
                    let open = table.open_for(who);
                    let pending = table.opening.get(&who.counted()).copied().unwrap_or(0);
                    if open + pending >= per_subject {
                        tracing::warn!(
                            per_subject,
                            "per-caller legacy session limit reached; refusing a new session"
                        );
                        return Ok(too_many_for_caller());
                    }
                    *table.opening.entry(who.counted()).or_default() += 1;
                }
                Opening {
                    owners: Arc::clone(&owners),
                    owner: owner.clone(),
                }
            };
            let response = inner.call(req).await;
            if let Ok(r) = &response
                && let Some(id) = session_of(r)
            {
                lock(&owners).by_session.insert(id, owner);
            }
            drop(opening);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::post("/mcp");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap_or_default()
    }

    #[test]
    fn only_requests_that_can_open_a_session_are_counted() {
        assert!(may_open_session(&req(&[])));
        assert!(may_open_session(&req(&[(
            "mcp-protocol-version",
            "2025-11-25"
        )])));
        assert!(!may_open_session(&req(&[("mcp-session-id", "abc")])));
        assert!(!may_open_session(&req(&[(
            "mcp-protocol-version",
            "2026-07-28"
        )])));
        let get = Request::get("/mcp").body(()).unwrap_or_default();
        assert!(!may_open_session(&get));
    }
}
