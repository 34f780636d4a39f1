//! Issue 12 (adversarial review), resource-server items, each over a real socket: connection
//! limits (item 15), readiness and key loading when the issuer comes up late (item 18), the
//! optional `typ: at+jwt` rule and the challenge's `scope` (item 19).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bmm_middleware::{ScopePolicy, ServeConfig, Server};
use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, Header};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Waits until the server closes `stream` (EOF or reset), up to `limit`; the elapsed time.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), stream.read(&mut buf))
            .await
        {
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

fn short_limits(s: ServeConfig) -> ServeConfig {
    s.idle_timeout(Duration::from_millis(400))
        .header_read_timeout(Duration::from_millis(400))
}

#[tokio::test]
async fn slow_client_cannot_hold_a_connection_past_the_idle_or_header_limit() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start_with(&issuer, |c| c, short_limits).await;
    let cases: [(&str, &[u8]); 4] = [
        ("connects and sends nothing", b""),
        ("a partial HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
        (
            "partial HTTP/1.1 headers",
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
        ),
        (
            "an HTTP/2 preface, then nothing",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let closed = closed_within(&mut stream, Duration::from_secs(5)).await;
        assert!(
            closed.is_some(),
            "{what}: the connection stayed open past 5 s"
        );
    }
    // An idle keep-alive connection after a complete request.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let closed = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "an idle keep-alive connection stayed open"
    );
}

/// An unauthenticated server with [`short_limits`] whose every response has the body
/// `make` returns; its address and the sender that stops it.
async fn serve_with_short_limits<B>(
    make: impl Fn() -> B + Clone + Send + 'static,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>)
where
    B: http_body::Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    let service = tower::service_fn(move |_req: Request<Full<Bytes>>| {
        let body = make();
        async move { Ok::<_, Infallible>(Response::new(body)) }
    });
    let config = short_limits(ServeConfig::unauthenticated("/mcp"));
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(service, async move {
        let _ = rx.await;
    }));
    (addr, tx)
}

/// A body that sends one frame every 150 ms, eight times: longer than the idle timeout.
struct Trickle {
    sent: u8,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for Trickle {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent == 8 {
            return Poll::Ready(None);
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.sent += 1;
        let next = tokio::time::Instant::now() + Duration::from_millis(150);
        self.timer.as_mut().reset(next);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"data: tick\n\n")))))
    }
}

#[tokio::test]
async fn a_streaming_response_is_not_idle() {
    let body_service = || Trickle {
        sent: 0,
        timer: Box::pin(tokio::time::sleep(Duration::from_millis(150))),
    };
    let (addr, tx) = serve_with_short_limits(body_service).await;
    let started = Instant::now();
    let text = client()
        .post(format!("http://{addr}/mcp"))
        .header("host", addr.to_string())
        .body("{}")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        text.matches("tick").count(),
        8,
        "the stream was cut: {text}"
    );
    assert!(started.elapsed() > Duration::from_millis(1000));
    let _ = tx.send(());
}

/// An endless body: as much as the client will read.
struct Endless;

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024])))))
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_cannot_hold_its_connection() {
    let body_service = || Endless;
    let (addr, tx) = serve_with_short_limits(body_service).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 2\r\n\r\n{{}}")
                .as_bytes(),
        )
        .await
        .unwrap();
    // Not reading: the server's writes back up and the body is no longer polled.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // What was buffered drains, then the stream ends; an open connection would go on.
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => {
                    total += n;
                    if total > 256 * 1024 * 1024 {
                        return false;
                    }
                }
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(
        ended,
        "the stalled connection was still served ({total} bytes)"
    );
    let _ = tx.send(());
}

#[tokio::test]
async fn connections_beyond_the_per_address_cap_are_closed_on_accept() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start_with(&issuer, |c| c, |s| s.max_connections_per_address(3)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Give the accept loop time to count them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    let closed = closed_within(&mut extra, Duration::from_secs(2)).await;
    assert!(
        closed.is_some(),
        "a fourth connection from the same address was served"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        post(&server.url, None).await.status,
        401,
        "slots are freed when connections close"
    );
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    reply(
        client()
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn readyz_is_not_ready_until_the_issuers_keys_are_loaded_and_healthz_stays_live() {
    let key = TestKey::rsa_a();
    let issuer_addr = dead_address();
    let issuer_url = format!("http://{issuer_addr}");
    let server = TestServer::start_for_issuer(&issuer_url, |c| c, |s| s).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = get(server.addr, "/readyz").await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.body["status"], "not_ready");
    assert_eq!(r.body["issuers"][0], issuer_url.as_str());
    assert_eq!(get(server.addr, "/healthz").await.status, 200);
    let issuer = TestIssuer::start_on(issuer_addr, &[&key]).await;
    // The background retry backs off to 5 s at most.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(server.addr, "/readyz").await;
        if r.status == 200 {
            assert_eq!(r.body["status"], "ready");
            break;
        }
        assert!(Instant::now() < deadline, "never became ready: {}", r.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(issuer.jwks_fetches() >= 1);
}

#[tokio::test]
async fn first_token_after_the_issuer_comes_up_is_accepted_at_once() {
    // The review's case: a server started before its AS answered 503 to the first valid
    // token after the AS was up (the next fetch was allowed only a second later).
    let key = TestKey::rsa_a();
    let issuer_addr = dead_address();
    let issuer_url = format!("http://{issuer_addr}");
    let server = TestServer::start_for_issuer(&issuer_url, |c| c, |s| s).await;
    let claims = json!({"iss": issuer_url, "aud": server.resource, "exp": now() + 60, "sub": "x"});
    assert_eq!(
        post(&server.url, Some(&key.sign(&claims))).await.status,
        503
    );
    let _issuer = TestIssuer::start_on(issuer_addr, &[&key]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = post(&server.url, Some(&key.sign(&claims))).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn typ_must_be_at_jwt_when_configured() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let strict = TestServer::start(&issuer, |c| c.require_at_jwt_typ(true)).await;
    let lenient = TestServer::start(&issuer, |c| c).await;
    let sign = |typ: Option<&str>, resource: &str| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(key.kid.clone());
        header.typ = typ.map(str::to_owned);
        key.sign_with_header(&header, &issuer.claims(resource, ""))
    };
    for typ in [Some("JWT"), None, Some("id_token+jwt")] {
        let r = post(&strict.url, Some(&sign(typ, &strict.resource))).await;
        assert_eq!(r.status, 401, "typ {typ:?} accepted: {}", r.text);
        assert!(r.www_authenticate().unwrap().contains("invalid_token"));
        let r = post(&lenient.url, Some(&sign(typ, &lenient.resource))).await;
        assert_eq!(r.status, 200, "typ {typ:?} refused without the option");
    }
    for typ in ["at+jwt", "application/at+JWT"] {
        let r = post(&strict.url, Some(&sign(Some(typ), &strict.resource))).await;
        assert_eq!(r.status, 200, "typ {typ} refused: {}", r.text);
    }
}

#[tokio::test]
async fn challenges_carry_scope_when_the_server_requires_scopes() {
    let key = TestKey::rsa_a();
    let issuer = TestIssuer::start(&[&key]).await;
    let server = TestServer::start(&issuer, |c| {
        c.scope_policy(ScopePolicy::new().require(["mcp:read"]).unwrap())
    })
    .await;
    let missing = post(&server.url, None).await;
    assert!(
        missing
            .www_authenticate()
            .unwrap()
            .contains("scope=\"mcp:read\"")
    );
    let bad = post(&server.url, Some("a.b.c")).await;
    assert_eq!(bad.status, 401);
    assert!(
        bad.www_authenticate()
            .unwrap()
            .contains("scope=\"mcp:read\"")
    );
    let token = key.sign(&issuer.claims(&server.resource, "other"));
    let forbidden = post(&server.url, Some(&token)).await;
    assert_eq!(forbidden.status, 403);
    assert!(
        forbidden
            .www_authenticate()
            .unwrap()
            .contains("scope=\"mcp:read\"")
    );
}
