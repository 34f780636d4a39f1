//! Connection limits of the accept loop: what one TCP connection may hold.
//!
//! Rules:
//! 1. A connection that is idle — no request being handled and no response body making
//!    progress — for the idle timeout is closed, whatever the protocol: an HTTP/1.1
//!    keep-alive connection between requests, an HTTP/2 connection without open streams, a
//!    connection whose protocol is still being detected (a client that connects and sends
//!    nothing, or a partial HTTP/2 preface), and one whose response bodies have not been
//!    polled for the idle timeout (a client that stops reading). A long response stream
//!    (SSE) that keeps sending, keep-alives included, is not idle; nor is a request whose
//!    response is still being computed (a slow tool), which the request timeout bounds.
//! 2. HTTP/1.1 request headers must arrive within the header-read timeout.
//! 3. HTTP/2 connections are pinged every keep-alive interval and closed when a ping is not
//!    answered within the keep-alive timeout; at most a bounded number of concurrent
//!    streams and header bytes per connection.
//! 4. One client address holds at most a bounded number of connections at once (IPv6
//!    counted per /64, see `bmm_netguard::caller_key`), and the server as a whole a bounded
//!    number; a connection beyond either is closed as soon as it is accepted (before any
//!    byte is read).
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
    /// Requests whose response head is not ready yet.
    computing: AtomicUsize,
    /// Milliseconds since `epoch` of the last sign of life: a request arriving, a response
    /// head, a response body polled or finished.
    last: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            computing: AtomicUsize::new(0),
            last: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Release);
    }

    fn begin(self: &Arc<Self>) -> ComputeGuard {
        self.computing.fetch_add(1, Ordering::AcqRel);
        self.touch();
        ComputeGuard(Arc::clone(self))
    }

    /// How long the connection has shown no sign of life (`None` while a response is being
    /// computed).
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        if self.computing.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.last.load(Ordering::Acquire));
        Some(self.epoch.elapsed().saturating_sub(since))
    }
}

/// Marks one request whose response head is being computed.
#[derive(Debug)]
struct ComputeGuard(Arc<Activity>);

impl Drop for ComputeGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.computing.fetch_sub(1, Ordering::AcqRel);
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
        guard: Option<ComputeGuard>,
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
        // The head is ready: from now on the body's polls are the connection's signs of life.
        let activity = this.guard.take().map(|guard| Arc::clone(&guard.0));
        Poll::Ready(Ok(response.map(|body| TrackedBody { body, activity })))
    }
}

pin_project! {
    /// A response body whose every poll is a sign of life of its connection.
    #[derive(Debug)]
    pub(crate) struct TrackedBody<B> {
        #[pin]
        body: B,
        activity: Option<Arc<Activity>>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(activity) = this.activity {
            activity.touch();
        }
        this.body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Counts open connections per client address and in all (rule 4). Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct PerAddress {
    max: usize,
    max_total: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    total: Arc<AtomicUsize>,
}

impl PerAddress {
    pub(crate) fn new(max: usize, max_total: usize) -> Self {
        Self {
            max,
            max_total,
            open: Arc::new(Mutex::new(HashMap::new())),
            total: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A slot for one more connection from `ip`, or `None` when its address (or the
    /// server) holds the maximum.
    pub(crate) fn acquire(&self, ip: IpAddr) -> Option<AddressSlot> {
        let ip = bmm_netguard::caller_key(ip);
        let mut open = self.open.lock().ok()?;
        if self.total.load(Ordering::Acquire) >= self.max_total {
            return None;
        }
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::AcqRel);
        Some(AddressSlot {
            ip,
            open: Arc::clone(&self.open),
            total: Arc::clone(&self.total),
        })
    }
}

/// One connection counted against its address; released on drop.
#[derive(Debug)]
pub(crate) struct AddressSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    total: Arc<AtomicUsize>,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Ordering::AcqRel);
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
        let limit = PerAddress::new(2, 100);
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
    fn per_address_cap_counts_ipv6_callers_per_64_and_the_total_is_capped() {
        let limit = PerAddress::new(1, 3);
        let a: IpAddr = "2001:db8::1".parse().unwrap_or(IpAddr::V4([0; 4].into()));
        let b: IpAddr = "2001:db8::2".parse().unwrap_or(a);
        let _first = limit.acquire(a);
        assert!(limit.acquire(b).is_none(), "same /64, same count");
        let _two = limit.acquire([127, 0, 0, 2].into());
        let _three = limit.acquire([127, 0, 0, 3].into());
        assert!(
            limit.acquire([127, 0, 0, 4].into()).is_none(),
            "the server-wide cap"
        );
    }

    #[test]
    fn idle_connection_is_not_idle_while_a_response_is_computed() {
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
