//! Connection limits of the accept loop: what one TCP connection may hold.
//!
//! Rules:
//! 1. A connection that is idle — no request in flight and no response body still being
//!    sent — for the idle timeout is closed, whatever the protocol: an HTTP/1.1 keep-alive
//!    connection between requests, an HTTP/2 connection without open streams, and a
//!    connection whose protocol is still being detected (a client that connects and sends
//!    nothing, or a partial HTTP/2 preface). A long response stream (SSE) is not idle.
//! 2. HTTP/1.1 request headers must arrive within the header-read timeout.
//! 3. HTTP/2 connections are pinged every keep-alive interval and closed when a ping is not
//!    answered within the keep-alive timeout; at most a bounded number of concurrent
//!    streams and header bytes per connection.
//! 4. One client address holds at most a bounded number of connections at once; a
//!    connection beyond it is closed as soon as it is accepted (before any byte is read).
//! 5. A closing connection (idle, or server shutdown) first gets a graceful shutdown, and
//!    is dropped if it has not finished within the shutdown grace.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_service::Service;

/// What one connection is doing, for the idle rule.
#[derive(Debug)]
pub(crate) struct Activity {
    epoch: Instant,
    active: AtomicUsize,
    /// Milliseconds since `epoch` when the connection last became idle.
    idle_since: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
        })
    }

    fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActivityGuard(Arc::clone(self))
    }

    /// How long the connection has been idle (`None` while something is in flight).
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since.load(Ordering::Acquire));
        Some(self.epoch.elapsed().saturating_sub(since))
    }
}

/// Marks one request (and then its response body) in flight.
#[derive(Debug)]
struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let now = u64::try_from(self.0.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since.store(now, Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The service of one connection: the stack, with every request and response body counted
/// as activity.
#[derive(Clone, Debug)]
pub(crate) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S, R, B> Service<R> for Tracked<S>
where
    S: Service<R, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let guard = self.activity.begin();
        TrackedFuture {
            inner: self.inner.call(request),
            guard: Some(guard),
        }
    }
}

pin_project! {
    /// The response future of [`Tracked`].
    #[derive(Debug)]
    pub(crate) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<ActivityGuard>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|body| TrackedBody {
            body,
            _guard: guard,
        })))
    }
}

pin_project! {
    /// A response body that keeps its connection active until it is dropped.
    #[derive(Debug)]
    pub(crate) struct TrackedBody<B> {
        #[pin]
        body: B,
        _guard: Option<ActivityGuard>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Counts open connections per client address (rule 4). Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct PerAddress {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerAddress {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it holds the maximum.
    pub(crate) fn acquire(&self, ip: IpAddr) -> Option<AddressSlot> {
        let mut open = self.open.lock().ok()?;
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            ip,
            open: Arc::clone(&self.open),
        })
    }
}

/// One connection counted against its address; released on drop.
#[derive(Debug)]
pub(crate) struct AddressSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock()
            && let Some(count) = open.get_mut(&self.ip)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Live connections, so shutdown can wait for them to drain.
#[derive(Clone, Debug, Default)]
pub(crate) struct Live {
    count: Arc<AtomicUsize>,
    drained: Arc<tokio::sync::Notify>,
}

impl Live {
    pub(crate) fn enter(&self) -> LiveGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        LiveGuard(self.clone())
    }

    /// Completes once no connection is left.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One live connection; released on drop.
#[derive(Debug)]
pub(crate) struct LiveGuard(Live);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_cap_refuses_beyond_the_maximum_and_frees_on_drop() {
        let limit = PerAddress::new(2);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let other: IpAddr = [127, 0, 0, 2].into();
        let a = limit.acquire(ip);
        let b = limit.acquire(ip);
        assert!(a.is_some() && b.is_some());
        assert!(limit.acquire(ip).is_none());
        assert!(
            limit.acquire(other).is_some(),
            "other addresses are not affected"
        );
        drop(a);
        assert!(limit.acquire(ip).is_some());
    }

    #[test]
    fn idle_connection_is_not_idle_while_a_request_or_body_is_in_flight() {
        let activity = Activity::new();
        assert!(activity.idle_for().is_some());
        let guard = activity.begin();
        assert!(activity.idle_for().is_none());
        drop(guard);
        assert!(
            activity
                .idle_for()
                .is_some_and(|d| d < Duration::from_secs(5))
        );
    }
}
