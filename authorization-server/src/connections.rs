//! The accept loop: HTTP/1.1 and HTTP/2 (prior knowledge) on one listener, with limits no
//! client can hold a connection past.
//!
//! Rules:
//! 1. A client must send a request's headers within `--header-read-timeout` (default 10 s).
//! 2. A connection with no request in flight is closed after `--idle-timeout` (default
//!    60 s): a fresh connection that never sends a request (or only part of one), a
//!    keep-alive connection between requests, an HTTP/2 connection with no open stream.
//!    The watch runs from the accept, so it also covers the protocol detection that reads
//!    the first bytes. HTTP/2 connections are pinged at the same interval and closed when
//!    a ping goes unanswered for 20 s.
//! 3. One client address holds at most `--max-connections-per-address` (default 64) open
//!    connections; a connection past the cap is closed at once, before any byte is read.
//!    An IPv6 client is counted by its /64 prefix (one host usually has the whole /64), an
//!    IPv4-mapped IPv6 address as its IPv4 address.
//! 4. A request (headers, body and handler) must finish within 30 s ([`REQUEST_TIMEOUT`],
//!    answered 408 otherwise), so a slow body cannot keep a request in flight forever.
//! 5. Every accepted socket gets `TCP_NODELAY`; at shutdown the server stops accepting,
//!    asks every connection to finish gracefully, and waits at most 5 s for them.
//! 6. The connection cap (rule 3) counts the TCP peer, but handlers see the caller address
//!    of each request: the forwarded client when the peer is a `--trusted-proxy` (see
//!    `forwarded`), the peer otherwise.
//! 7. An HTTP/2 connection carries at most 16 concurrent streams.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::Settings;
use crate::forwarded::{self, Cidr};

/// The longest a single request may take, body and handler included (rule 4).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an HTTP/2 keep-alive ping may go unanswered.
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// How long shutdown waits for open connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Connection limits taken from the settings.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    header_read: Duration,
    idle: Duration,
    per_address: usize,
    trusted_proxies: Arc<[Cidr]>,
}

impl Limits {
    pub(crate) fn from_settings(settings: &Settings) -> Self {
        Self {
            header_read: settings.header_read_timeout,
            idle: settings.idle_timeout,
            per_address: settings.max_connections_per_address,
            trusted_proxies: settings.trusted_proxies.clone().into(),
        }
    }
}

/// Open connections per client address (rule 3).
#[derive(Clone, Default)]
struct Counts(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// Holds one slot of an address; frees it when dropped.
struct Slot {
    counts: Counts,
    ip: IpAddr,
}

/// The address a connection is counted under (rule 3).
fn counted_as(ip: IpAddr) -> IpAddr {
    bmm_netguard::caller_key(ip)
}

impl Counts {
    fn acquire(&self, ip: IpAddr, cap: usize) -> Option<Slot> {
        let ip = counted_as(ip);
        let mut map = self.0.lock().ok()?;
        let n = map.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.counts.0.lock()
            && let Some(n) = map.get_mut(&self.ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Requests in flight on one connection and when the last one ended (rule 2).
#[derive(Clone)]
struct Activity(Arc<Mutex<(usize, Instant)>>);

/// Marks one request in flight; ends it when dropped (also when the request is cancelled).
struct InFlight(Activity);

impl Activity {
    fn new() -> Self {
        Self(Arc::new(Mutex::new((0, Instant::now()))))
    }

    fn begin(&self) -> InFlight {
        if let Ok(mut a) = self.0.lock() {
            a.0 += 1;
        }
        InFlight(self.clone())
    }

    /// Completes once the connection has had no request in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let (in_flight, since) = self.0.lock().map_or((0, Instant::now()), |a| *a);
            let deadline = since + idle;
            if in_flight == 0 && Instant::now() >= deadline {
                return;
            }
            if in_flight == 0 {
                tokio::time::sleep_until(deadline).await;
            } else {
                tokio::time::sleep(idle).await;
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut a) = (self.0).0.lock() {
            a.0 = a.0.saturating_sub(1);
            a.1 = Instant::now();
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes.
pub(crate) async fn run(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.idle)
        .keep_alive_timeout(PING_TIMEOUT)
        .max_concurrent_streams(16);
    let builder = Arc::new(builder);
    let counts = Counts::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Reap finished connection tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
        let Some(slot) = counts.acquire(peer.ip(), limits.per_address) else {
            tracing::debug!(ip = %peer.ip(), "connection refused: per-address cap reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tasks.spawn(connection(
            stream,
            peer,
            router.clone(),
            Arc::clone(&builder),
            limits.clone(),
            stop_rx.clone(),
            slot,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    Ok(())
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    builder: Arc<Builder<TokioExecutor>>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    slot: Slot,
) {
    let activity = Activity::new();
    let tracker = activity.clone();
    let proxies = Arc::clone(&limits.trusted_proxies);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        // Handlers see the caller address (rule 6), which is the TCP peer unless the peer is
        // a trusted proxy.
        let caller = forwarded::caller(peer.ip(), request.headers(), &proxies);
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(caller, peer.port())));
        let in_flight = tracker.begin();
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await;
            drop(in_flight);
            response
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = activity.idle_for(limits.idle) => {
            tracing::debug!(%peer, "idle connection closed");
        }
        () = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await;
        }
    }
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_cap_counts_ipv6_clients_per_64_prefix_and_frees_slots_on_drop() {
        let counts = Counts::default();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        let b: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 16]));
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0u8; 16]));
        let first = counts.acquire(a, 2);
        let second = counts.acquire(b, 2);
        assert!(first.is_some() && second.is_some());
        assert!(counts.acquire(a, 2).is_none(), "same /64: cap reached");
        assert!(
            counts.acquire(other, 2).is_some(),
            "another /64 has its own cap"
        );
        drop(first);
        assert!(
            counts.acquire(b, 2).is_some(),
            "a dropped slot is free again"
        );
        let mapped: IpAddr = "::ffff:192.0.2.1"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 16]));
        assert_eq!(counted_as(mapped), IpAddr::from([192, 0, 2, 1]));
    }
}
